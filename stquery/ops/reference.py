"""The torch implementation of every op: the truth that kernels are tested against.

Composed of plain PyTorch ops and readable before fast. Temporal attention uses views, never a
permute copy: the plain case runs SDPA on the head-fold view ``[B, T, L*H, d]`` (SPEC §2.2); masked
cases build per-mask score matrices, which is fine here and nowhere else.

Two layers:
- ``attend``, ``select``, ``gather_gate``, ``pool``, ``st_means`` take the decomposed
  problem of :mod:`stquery.backends.base` (what the torch backend runs);
- ``attention``, ``temporal_attention``, ``topk_tokens`` take the public arguments (MaskSet, alpha
  in any broadcast shape) and are what tests and benchmarks call as the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..backends.base import CAUSAL, DENSE, MIX, NONE, SCALE, WINDOW, AttnProblem
from . import _checks

# ----------------------------------------------------------------------------- attention


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
    """Attention on the decomposed problem (see :mod:`stquery.backends.base`); returns ``q.shape``."""
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
    alpha, dense, _, prob = _checks.attention_problem(q, k, v, None, masks, alpha, mode, scale, key_padding, None)
    return attend(q, k, v, alpha, dense, key_padding, None, prob)


def temporal_attention(q, k, v, frames, *, masks=None, alpha=None, mode="mix", scale=None, frame_lengths=None):
    """Reference for :func:`stquery.temporal_attention` (same arguments, no ``backend``)."""
    alpha, dense, frame_lengths, prob = _checks.attention_problem(
        q, k, v, frames, masks, alpha, mode, scale, None, frame_lengths
    )
    return attend(q, k, v, alpha, dense, None, frame_lengths, prob)


# ----------------------------------------------------------------------------- selection


def select(scores: torch.Tensor, k: int, order: str) -> torch.Tensor:
    """int64 ``[B, k]``: the k largest scores per row, ties to the lower index (a stable sort)."""
    idx = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return idx.sort(dim=-1).values if order == "time" else idx


def gate_values(selected_scores: torch.Tensor, gate: str) -> torch.Tensor | None:
    """The gate g applied to the selected scores ``[B, k]`` (float32 or float64), None for no gate."""
    if gate == "none":
        return None
    if gate == "sigmoid":
        return torch.sigmoid(selected_scores)
    if gate == "softmax":
        return torch.softmax(selected_scores, dim=-1)
    assert gate == "identity"
    return selected_scores


def gather_gate(x, scores, idx, gate: str, scales) -> torch.Tensor:
    """``x[b, idx] * g(scores[b, idx])``, then multi-scale pooled when ``scales`` is non-empty."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2])).to(cdt)  # [B, k, C]
    g = gate_values(scores.gather(1, idx).to(cdt), gate)
    if g is not None:
        rows = rows * g[:, :, None]
    y = _window_means(rows, scales) if scales else rows
    return y.to(x.dtype)


def topk_tokens(x, scores, k, *, order="time", gate=None, scales=None):
    """Reference for :func:`stquery.topk_tokens`: returns ``(y, idx)``."""
    gate, scales = _checks.topk_args(x, scores, k, order, gate, scales)
    idx = select(scores, k, order)
    return gather_gate(x, scores if gate != "none" else scores.detach(), idx, gate, scales), idx


# ----------------------------------------------------------------------------- pooling


def _window_means(y: torch.Tensor, scales) -> torch.Tensor:
    """Window means of ``y [B, k, C]`` at each scale, concatenated: ``[B, sum ceil(k/s), C]``."""
    B, k, C = y.shape
    out = []
    for s in scales:
        n = math.ceil(k / s)
        padded = F.pad(y, (0, 0, 0, n * s - k))  # zero rows past the end
        count = torch.full((n,), float(s), dtype=y.dtype, device=y.device)
        count[-1] = k - (n - 1) * s  # the last window averages what it has
        out.append(padded.view(B, n, s, C).sum(2) / count[:, None])
    return torch.cat(out, dim=1)


def pool(y: torch.Tensor, scales) -> torch.Tensor:
    """Multi-scale window means of ``y [B, k, C]``, accumulated in float32 (float64 for float64)."""
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    return _window_means(y.to(cdt), scales).to(y.dtype)


def st_means(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean over P [B, T, C], mean over T [B, P, C])`` of ``x [B, T, P, C]``."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.mean(2, dtype=cdt).to(x.dtype), x.mean(1, dtype=cdt).to(x.dtype)


def multiscale_pool(y: torch.Tensor, scales=(1, 2, 4)) -> torch.Tensor:
    """Reference for :func:`stquery.multiscale_pool`."""
    return pool(y, _checks.pool_args(y, scales))


def st_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`stquery.st_pool`."""
    _checks.st_pool_args(x)
    return st_means(x)
