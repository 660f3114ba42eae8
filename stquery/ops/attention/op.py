"""``stq.attention`` and ``stq.temporal_attention`` (docs/ops.md §2.1–2.3).

Each call validates its arguments, resolves a backend (docs/backends.md §3) and runs the backend's
``attention_fwd`` / ``attention_bwd``:

- under ``torch.compile`` or a functorch transform (:func:`stquery.ops.common.dispatched`), through
  the custom ops ``stquery::attention_fwd`` / ``attention_bwd``, so dynamo and AOTAutograd see one
  opaque op per direction whatever backend runs it, and ``torch.vmap`` runs it per sample;
- in eager mode, straight to ``attention_fwd`` when no gradient is recorded
  (:func:`stquery.ops.common.records_autograd`); else through the backend's own
  ``attention_recorded`` where it has one (the cpu backend's autograd node in C++), otherwise through
  :class:`_Attention`, a plain ``torch.autograd.Function`` calling the same primitives: the
  dispatcher's Python layers around a custom op cost several times a small attention call, and a
  Python Function still costs more than the kernel there (see ``bench/host_overhead.py``). Under
  forward-mode AD the call always goes to :class:`_Attention`, which refuses it with an error.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ... import backends
from ..common import device_type, dispatched, forward_ad_active, records_autograd, rows_readable
from .checks import attention_problem
from .masks import MaskSet
from .problem import AttnProblem


def _problem(frames, kinds, radii, global_start, global_end, mode, scale) -> AttnProblem:
    return AttnProblem(frames, tuple(kinds), tuple(radii), global_start, global_end, mode, scale)


@torch.library.custom_op("stquery::attention_fwd", mutates_args=())
def _attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, alpha: Optional[Tensor], dense: Optional[Tensor],
    key_padding: Optional[Tensor], frame_lengths: Optional[Tensor], frames: int, kinds: List[int],
    radii: List[int], global_start: int, global_end: int, mode: int, scale: float, backend: str,
) -> Tuple[Tensor, Tensor]:
    prob = _problem(frames, kinds, radii, global_start, global_end, mode, scale)
    return backends.get(backend).attention_fwd(q, k, v, alpha, dense, key_padding, frame_lengths, prob)


@_attention_fwd.register_fake
def _(q, k, v, alpha, dense, key_padding, frame_lengths, frames, kinds, radii, global_start, global_end, mode, scale, backend):
    width = _problem(frames, kinds, radii, global_start, global_end, mode, scale).stats_width
    return q.new_empty(q.shape), q.new_empty((*q.shape[:3], width), dtype=torch.float32)


@torch.library.custom_op("stquery::attention_bwd", mutates_args=())
def _attention_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, stats: Tensor, alpha: Optional[Tensor],
    dense: Optional[Tensor], key_padding: Optional[Tensor], frame_lengths: Optional[Tensor], frames: int,
    kinds: List[int], radii: List[int], global_start: int, global_end: int, mode: int, scale: float, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    prob = _problem(frames, kinds, radii, global_start, global_end, mode, scale)
    dq, dk, dv, dalpha = backends.get(backend).attention_bwd(
        grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob
    )
    return dq, dk, dv, dalpha if dalpha is not None else q.new_empty(0)


@_attention_bwd.register_fake
def _(grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, *static):
    dalpha = q.new_empty(0) if alpha is None else alpha.new_empty(alpha.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dalpha


def _setup_context(ctx, inputs, output):
    q, k, v, alpha, dense, key_padding, frame_lengths, *static = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], alpha, dense, key_padding, frame_lengths)
    ctx.static = static


def _attention_grads(ctx, grad_out, bwd):
    """``(dq, dk, dv, dalpha or None)`` on both paths: ``bwd(grad_out, *saved tensors)`` is the custom
    op ``_attention_bwd`` under compile, the backend's ``attention_bwd`` in eager."""
    q, k, v, out, stats, alpha, dense, key_padding, frame_lengths = ctx.saved_tensors
    dq, dk, dv, dalpha = bwd(rows_readable(grad_out), q, k, v, out, stats, alpha, dense, key_padding, frame_lengths)
    return dq, dk, dv, (dalpha if alpha is not None else None)


def _backward(ctx, grad_out, grad_stats):
    grads = _attention_grads(ctx, grad_out, lambda *tensors: _attention_bwd(*tensors, *ctx.static))
    return *grads, *([None] * (3 + len(ctx.static)))


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _Attention(torch.autograd.Function):
    """Eager autograd around the same backend primitives as the custom ops above."""

    @staticmethod
    def forward(ctx, q, k, v, alpha, dense, key_padding, frame_lengths, prob, name):
        out, stats = backends.get(name).attention_fwd(q, k, v, alpha, dense, key_padding, frame_lengths, prob)
        ctx.save_for_backward(q, k, v, out, stats, alpha, dense, key_padding, frame_lengths)
        ctx.prob, ctx.name = prob, name
        return out

    @staticmethod
    def backward(ctx, grad_out):
        bwd = backends.get(ctx.name).attention_bwd
        grads = _attention_grads(ctx, grad_out, lambda *tensors: bwd(*tensors, ctx.prob))
        return *grads, None, None, None, None, None


def _run(q, k, v, frames, masks, alpha, mode, scale, key_padding, frame_lengths, backend):
    alpha, dense, frame_lengths, prob = attention_problem(
        q, k, v, frames, masks, alpha, mode, scale, key_padding, frame_lengths
    )
    tensors = (q, k, v, alpha, dense, key_padding, frame_lengths)
    name = backends.resolve("attention", backend, device_type(q), *tensors, prob)
    if not dispatched():
        backend = backends.get(name)
        if not records_autograd(q, k, v, alpha):
            return backend.attention_fwd(*tensors, prob)[0]
        recorded = getattr(backend, "attention_recorded", None)
        if recorded is None or forward_ad_active():
            return _Attention.apply(*tensors, prob, name)
        return recorded(*tensors, prob)
    out, _ = _attention_fwd(
        *tensors, prob.frames, list(prob.kinds), list(prob.radii), prob.global_start, prob.global_end,
        prob.mode, prob.scale, name,
    )
    return out


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, masks: MaskSet | None = None, alpha: Tensor | None = None,
    mode: str = "mix", scale: float | None = None, key_padding: Tensor | None = None, backend: str | None = None,
) -> Tensor:
    """Spatial / cross attention along dim 1, with optional routed masks (docs/ops.md §2.1, §2.3).

    Args:
        q: ``[G, Nq, H, d]`` (``[G, Nq, H*d]`` packed heads is the same memory: ``q.view(G, Nq, H, d)``).
        k, v: ``[G, Nk, H, d]``. Only ``stride(-1) == 1`` is required; nothing is copied.
        masks: a :class:`stq.MaskSet` of p masks over the ``Nq × Nk`` grid, or None (plain attention).
        alpha: routing weights broadcastable to ``[G, H, p]`` (``[p]``, ``[G, p]`` or ``[G, H, p]``),
            used as given; None means uniform ``1/p``. Receives gradients.
        mode: ``"mix"``: ``o_i = Σ_j α_j Σ_{k∈M_j(i)} softmax_{k∈M_j(i)}(s_ik) v_k`` (one softmax per mask,
            as in TRAR); ``"scale"``: ``o_i = Σ_k softmax_{k: w_ik>0}(s_ik · w_ik) v_k`` with
            ``w = Σ_j α_j M_j`` (MTransLLaMA eq. 9).
        scale: softmax scale, default ``1/sqrt(d)``; ``s_ik = scale · q_i·k_k``.
        key_padding: bool ``[G, Nk]``, True = padded key, never attended.
        backend: ``"torch"``, ``"triton"``, ``"cuda"`` or None (``$STQUERY_BACKEND``, else auto).

    Returns ``[G, Nq, H, d]`` in q's dtype. A query row with no visible key gives 0.
    """
    return _run(q, k, v, None, masks, alpha, mode, scale, key_padding, None, backend)


def temporal_attention(
    q: Tensor, k: Tensor, v: Tensor, frames: int, *, masks: MaskSet | None = None, alpha: Tensor | None = None,
    mode: str = "mix", scale: float | None = None, frame_lengths: Tensor | None = None, backend: str | None = None,
) -> Tensor:
    """Attention across frames in the native ``[B*T, L, H, d]`` layout: the BT×L ↔ BL×T channel swap
    fused into attention (docs/ops.md §2.2; MTransLLaMA eq. 7).

    ``o[b*T+t, l, h] = Σ_s softmax_s(q[b*T+t, l, h] · k[b*T+s, l, h] · scale) v[b*T+s, l, h]``, i.e.
    reshaping to ``[B*L, T, H, d]``, attending and reshaping back, without the two permute copies.

    Args:
        q, k, v: ``[B*T, L, H, d]``, row ``b*T + t`` is frame t of video b. Only ``stride(-1) == 1``.
        frames: T; must divide dim 0.
        masks: a :class:`stq.MaskSet` over the ``T × T`` frame grid, or None.
        alpha: routing weights broadcastable to ``[B, L, H, p]`` (``[p]``, ``[B, p]``, ``[B, L, p]``
            or ``[B, L, H, p]``); None means uniform. Modes as in :func:`attention`.
        frame_lengths: int ``[B]``: frames ``t >= frame_lengths[b]`` are padding, never attended,
            and their outputs are 0 (values are clipped to ``[0, T]``).

    Returns ``[B*T, L, H, d]`` in q's dtype.
    """
    return _run(q, k, v, frames, masks, alpha, mode, scale, None, frame_lengths, backend)
