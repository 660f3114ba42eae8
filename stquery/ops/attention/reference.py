"""The torch reference of ``stq.attention`` / ``stq.temporal_attention``: the truth kernels are
tested against.

Plain PyTorch, readable before fast. Temporal attention uses views, never a permute copy: the plain
case runs SDPA on the head-fold view ``[B, T, L*H, d]`` (docs/ops.md §2.2); masked cases build per-mask
score matrices, which is fine here and nowhere else.

- :func:`attend` takes the decomposed problem (tensors + :class:`AttnProblem`): what the torch
  backend runs;
- :func:`attention` / :func:`temporal_attention` take the public arguments (MaskSet, alpha in any
  broadcast shape): what tests and benchmarks call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import attention_problem
from .problem import CAUSAL, DENSE, MIX, NONE, SCALE, WINDOW, AttnProblem


def _visible(prob: AttnProblem, j: int, dense, nq: int, nk: int, device) -> torch.Tensor:
    """bool [Nq, Nk]: mask j of the set, with the global tokens added."""
    i = torch.arange(nq, device=device)[:, None]
    c = torch.arange(nk, device=device)[None, :]
    kind, r = prob.kinds[j], prob.radii[j]
    if kind == WINDOW:
        vis = (i - c).abs() <= r if r >= 0 else torch.ones(nq, nk, dtype=torch.bool, device=device)
    elif kind == CAUSAL:
        vis = (i - c >= 0) & ((i - c <= r) if r >= 0 else True)
    else:
        assert kind == DENSE
        vis = dense[sum(1 for kk in prob.kinds[:j] if kk == DENSE)]
    gs, ge = prob.global_start, prob.global_end
    if ge > gs:
        vis = vis | ((i >= gs) & (i < ge)) | ((c >= gs) & (c < ge))
    return vis


def _masked_softmax(s: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim restricted to ``allowed``; a row with nothing allowed is all 0."""
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    l = e.sum(dim=-1, keepdim=True)
    return e / torch.where(l > 0, l, torch.ones_like(l))


def _head_fold_sdpa(q, k, v, prob: AttnProblem):
    """Plain attention through SDPA on views; returns None when the strides allow no such view."""
    if prob.frames:
        T = prob.frames
        B, L, H, d = q.shape[0] // T, *q.shape[1:]
        try:  # [B*T, L, H, d] -> [B, L*H, T, d]: a view iff L and H merge
            qf, kf, vf = (t.view(B, T, L * H, d).transpose(1, 2) for t in (q, k, v))
        except RuntimeError:
            return None
        o = F.scaled_dot_product_attention(qf, kf, vf, scale=prob.scale)
        return o.transpose(1, 2).reshape(B * T, L, H, d)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=prob.scale)
    return o.transpose(1, 2)


def attend(q, k, v, alpha, dense, key_padding, frame_lengths, prob: AttnProblem) -> torch.Tensor:
    """Attention on the decomposed problem (see :mod:`stquery.backends`); returns ``q.shape``."""
    if prob.mode == NONE and key_padding is None and frame_lengths is None:
        o = _head_fold_sdpa(q, k, v, prob)
        if o is not None:
            return o

    if prob.frames:
        T = prob.frames
        B = q.shape[0] // T

        def split(t):  # [B*T, L, H, d] -> [B, L, H, T, d] (a view)
            return t.unflatten(0, (B, T)).permute(0, 2, 3, 1, 4)

        def merge(t):  # [B, L, H, T, d] -> [B*T, L, H, d]
            return t.permute(0, 3, 1, 2, 4).reshape(q.shape)

        nq = nk = T
    else:

        def split(t):  # [G, N, H, d] -> [G, H, N, d]
            return t.transpose(1, 2)

        def merge(t):
            return t.transpose(1, 2)

        nq, nk = q.shape[1], k.shape[1]

    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs, ks, vs = (split(t).to(cdt) for t in (q, k, v))
    s = prob.scale * (qs @ ks.transpose(-1, -2))  # [..., Nq, Nk]

    key_ok = query_ok = None
    if key_padding is not None:  # [G, Nk] -> [G, 1, 1, Nk]
        key_ok = ~key_padding[:, None, None, :]
    if frame_lengths is not None:
        valid = torch.arange(T, device=q.device)[None, :] < frame_lengths[:, None]  # [B, T]
        key_ok = valid[:, None, None, None, :]
        query_ok = valid[:, None, None, :, None]

    def both(a, b):
        return a if b is None else (b if a is None else a & b)

    def weight(j):  # alpha[..., j] -> [..., 1, 1]
        return alpha[..., j].to(cdt)[..., None, None]

    if prob.mode == NONE:
        o = _masked_softmax(s, key_ok) @ vs
    elif prob.mode == MIX:
        o = sum(
            weight(j) * (_masked_softmax(s, both(_visible(prob, j, dense, nq, nk, q.device), key_ok)) @ vs)
            for j in range(prob.p)
        )
    else:
        assert prob.mode == SCALE
        w = sum(weight(j) * _visible(prob, j, dense, nq, nk, q.device) for j in range(prob.p))
        o = _masked_softmax(s * w, both(w > 0, key_ok)) @ vs
    if query_ok is not None:
        o = o * query_ok
    return merge(o).to(q.dtype)


def attention(q, k, v, *, masks=None, alpha=None, mode="mix", scale=None, key_padding=None):
    """Reference for :func:`stquery.attention` (same arguments, no ``backend``)."""
    alpha, dense, _, prob = attention_problem(q, k, v, None, masks, alpha, mode, scale, key_padding, None)
    return attend(q, k, v, alpha, dense, key_padding, None, prob)


def temporal_attention(q, k, v, frames, *, masks=None, alpha=None, mode="mix", scale=None, frame_lengths=None):
    """Reference for :func:`stquery.temporal_attention` (same arguments, no ``backend``)."""
    alpha, dense, frame_lengths, prob = attention_problem(
        q, k, v, frames, masks, alpha, mode, scale, None, frame_lengths
    )
    return attend(q, k, v, alpha, dense, None, frame_lengths, prob)
