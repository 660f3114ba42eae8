"""The cpu backend against its peers at issue #13's headline shape (fp32, L=32, H=12, d=64, B·T=256;
top-k/st_pool: P=64, C=1024, k=T·P/4), minimum of repeats: ``python bench/cpu_headline.py [T,...]``.

Peers: head-fold SDPA (plain), p masked SDPA calls summed with alpha (DAR mix), matmul + masked
softmax (DAR scale, SDPA can't scale logits), torch.topk + sort + gather + sigmoid + avg_pool1d
(top-k), two means (st_pool). Prints one line per case and T: ms and the speed-up.
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

import stquery as stq

L, H, D, BT, P, C = 32, 12, 64, 256, 64, 1024


def best_ms(fn, reps=7):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def row(name, T, peer, ours, peer_bwd=None, ours_bwd=None):
    a, b = best_ms(peer), best_ms(ours)
    line = f"{name:7s} T={T:3d} fwd peer {a:8.2f} cpu {b:8.2f} x{a / b:5.2f}"
    if peer_bwd is not None:
        c, d = best_ms(peer_bwd), best_ms(ours_bwd)
        line += f" | fwd+bwd peer {c:8.2f} cpu {d:8.2f} x{c / d:5.2f}"
    print(line, flush=True)


def attention_rows(T):
    B = BT // T
    q, k, v, g = (torch.randn(BT, L, H, D) for _ in range(4))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    fold = lambda t: t.view(B, T, L * H, D).transpose(1, 2)  # noqa: E731
    unfold = lambda o: o.transpose(1, 2).reshape(BT, L, H, D)  # noqa: E731

    def sdpa(q, k, v):
        return unfold(F.scaled_dot_product_attention(fold(q), fold(k), fold(v)))

    def ours(q, k, v, **kw):
        return stq.temporal_attention(q, k, v, T, backend="cpu", **kw)

    grad = lambda f, xs: lambda: torch.autograd.grad(f(*xs), xs, g)  # noqa: E731
    row("plain", T, lambda: sdpa(q, k, v), lambda: ours(q, k, v), grad(sdpa, (qr, kr, vr)), grad(ours, (qr, kr, vr)))

    masks = stq.MaskSet([stq.masks.window(1), stq.masks.window(2), stq.masks.window(None)])
    i = torch.arange(T)
    vis = [(i[:, None] - i[None, :]).abs() <= r for r in (1, 2, T)]
    alpha = torch.softmax(torch.randn(B, L, 3), -1)
    ar = alpha.clone().requires_grad_()

    def per_head(a, j):  # [B, L, p] -> [B, L*H, 1, 1]
        return a[..., j].repeat_interleave(H, 1)[:, :, None, None]

    def mix_peer(q, k, v, a):
        return unfold(sum(per_head(a, j) * F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=vis[j])
                          for j in range(3)))

    def scale_peer(q, k, v, a):
        w = sum(per_head(a, j) * vis[j] for j in range(3))
        s = (fold(q) @ fold(k).transpose(-1, -2)) * D ** -0.5 * w
        return unfold(torch.softmax(s.masked_fill(w <= 0, float("-inf")), -1) @ fold(v))

    for mode, peer in (("mix", mix_peer), ("scale", scale_peer)):
        def mine(q, k, v, a, mode=mode):
            return ours(q, k, v, masks=masks, alpha=a, mode=mode)

        row(mode, T, lambda: peer(q, k, v, alpha), lambda: mine(q, k, v, alpha),
            grad(peer, (qr, kr, vr, ar)), grad(mine, (qr, kr, vr, ar)))


def selection_rows(T):
    B, N, k = BT // T, T * P, T * P // 4
    x, s = torch.randn(B, N, C), torch.randn(B, N)
    xr, sr = x.clone().requires_grad_(), s.clone().requires_grad_()

    def peer(x, s):
        idx = torch.topk(s, k).indices.sort().values
        y = x.gather(1, idx[:, :, None].expand(-1, -1, C)) * torch.sigmoid(s.gather(1, idx))[:, :, None]
        return torch.cat([F.avg_pool1d(y.transpose(1, 2), sc).transpose(1, 2) for sc in (1, 2, 4)], 1)

    def ours(x, s):
        return stq.topk_tokens(x, s, k, gate="sigmoid", scales=(1, 2, 4), backend="cpu")[0]

    g = torch.randn_like(peer(x, s))
    row("topk", T, lambda: peer(x, s), lambda: ours(x, s),
        lambda: torch.autograd.grad(peer(xr, sr), (xr, sr), g), lambda: torch.autograd.grad(ours(xr, sr), (xr, sr), g))
    frames = torch.randn(B, T, P, C)
    row("st_pool", T, lambda: (frames.mean(2), frames.mean(1)), lambda: stq.st_pool(frames, backend="cpu"))


if __name__ == "__main__":
    Ts = [int(t) for t in sys.argv[1].split(",")] if len(sys.argv) > 1 else [4, 8, 16, 32, 64]
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    for T in Ts:
        attention_rows(T)
        selection_rows(T)
    print(f"load average {os.getloadavg()}", flush=True)
