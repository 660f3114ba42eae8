"""Per-call host overhead of stquery's ops on tiny inputs: ``stq.temporal_attention`` against PyTorch's
SDPA, then ``stq.topk_tokens``, ``stq.multiscale_pool`` and ``stq.st_pool``.

    python bench/host_overhead.py [--rounds N]

q/k/v ``[2*4, 2, 2, 16]`` float32 on CPU (T = 4 frames, one thread): the arithmetic is negligible,
so a call's time is what Python spends validating, dispatching and entering autograd. Each case runs
in interleaved rounds of 200 calls and keeps its best round (other processes only ever slow a round
down). Besides the cpu and torch backends, a ``null`` backend that returns preallocated outputs isolates
stquery's own layers (checks, dispatch, autograd wiring) from the backend's work. The last rows
repeat the calls with inputs that require grad (autograd recorded, forward only), each against SDPA
doing the same. The top-k and pool rows (x ``[2, 16, 8]``, scores ``[2, 16]``, k = 4, sigmoid gate,
scales ``(1, 2)``; st_pool's x ``[2, 4, 4, 8]``) have no SDPA column; they run on the cpu and torch
backends, and recording autograd on the cpu backend. A speed is shown here, never asserted in a test.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import stquery as stq
from stquery import backends


class NullBackend:
    """Returns preallocated outputs at once: what is left of a call is stquery's own overhead."""

    name = "null"
    devices = frozenset()

    def __init__(self, q, p):
        self.out = torch.empty_like(q)
        self.stats = {w: q.new_empty((*q.shape[:3], w)) for w in (1, p)}

    def supports(self, op, *args):
        return []

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        return self.out, self.stats[prob.stats_width]


def best_us(cases: dict, rounds: int, calls: int = 200) -> dict:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / calls / 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    B, T, L, H, d = 2, 4, 2, 2, 16
    q, k, v = (torch.randn(B * T, L, H, d) for _ in range(3))
    qf, kf, vf = (t.view(B, T, L * H, d).transpose(1, 2) for t in (q, k, v))  # [B, L*H, T, d]
    dar = stq.MaskSet([stq.masks.window(1), stq.masks.window(None)])
    alpha = torch.softmax(torch.randn(B, L, 2), -1)  # [B, L, p]
    backends.register(NullBackend(q, len(dar)))
    cases = {"F.scaled_dot_product_attention (head-fold view)": lambda: F.scaled_dot_product_attention(qf, kf, vf)}
    for backend in [n for n in ("cpu", "torch") if n in backends.names()] + ["null"]:
        cases[f"stq.temporal_attention, {backend}"] = lambda b=backend: stq.temporal_attention(q, k, v, T, backend=b)
        cases[f"stq.temporal_attention + 2-mask DAR, {backend}"] = (
            lambda b=backend: stq.temporal_attention(q, k, v, T, masks=dar, alpha=alpha, backend=b)
        )
    # The same calls recording autograd (inputs require grad): forward only, through the Function.
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    qgf, kgf, vgf = (t.view(B, T, L * H, d).transpose(1, 2) for t in (qg, kg, vg))
    alpha_g = alpha.clone().requires_grad_()
    cases["F.scaled_dot_product_attention, requires grad"] = lambda: F.scaled_dot_product_attention(qgf, kgf, vgf)
    if "cpu" in backends.names():
        cases["stq.temporal_attention, cpu, requires grad"] = lambda: stq.temporal_attention(qg, kg, vg, T, backend="cpu")
        cases["stq.temporal_attention + 2-mask DAR, cpu, requires grad"] = (
            lambda: stq.temporal_attention(qg, kg, vg, T, masks=dar, alpha=alpha_g, backend="cpu")
        )
    # The top-k and pool ops on the same footing (the null backend implements attention only).
    x, scores, frames = torch.randn(2, 16, 8), torch.randn(2, 16), torch.randn(2, 4, 4, 8)
    xg, scores_g, frames_g = (t.clone().requires_grad_() for t in (x, scores, frames))
    for backend in [n for n in ("cpu", "torch") if n in backends.names()]:
        for grad, (xs, ss, fs) in ((False, (x, scores, frames)), (True, (xg, scores_g, frames_g))):
            if grad and backend != "cpu":
                continue
            tail = f", {backend}" + (", requires grad" if grad else "")
            cases["stq.topk_tokens" + tail] = (
                lambda b=backend, xs=xs, ss=ss: stq.topk_tokens(xs, ss, 4, gate="sigmoid", scales=(1, 2), backend=b)
            )
            cases["stq.multiscale_pool" + tail] = lambda b=backend, xs=xs: stq.multiscale_pool(xs, (1, 2), backend=b)
            cases["stq.st_pool" + tail] = lambda b=backend, fs=fs: stq.st_pool(fs, backend=b)
    best = best_us(cases, args.rounds)
    sdpa = {False: best[next(iter(cases))], True: best["F.scaled_dot_product_attention, requires grad"]}
    for name, us in best.items():
        ratio = f"{us / sdpa['requires grad' in name]:6.2f}x SDPA" if "attention" in name else ""
        print(f"{name:58s} {us:8.1f} us/call  {ratio}".rstrip())


if __name__ == "__main__":
    main()
