"""``stq.topk_tokens`` (docs/ops.md §2.4): LinVT's score-based token selection with gating.

Two steps, each a backend primitive: ``topk_select`` (integer selection, no gradient) and
``gather_gate`` (the fused gather · gate · optional multi-scale pooling, differentiable in x and,
with a gate, in scores), with ``gather_gate_bwd`` for its backward. As for attention
(stquery/ops/attention/op.py), they run:

- under ``torch.compile`` or a functorch transform (:func:`stquery.ops.common.dispatched`), through
  the custom ops ``stquery::topk_select``, ``stquery::gather_gate`` and ``stquery::gather_gate_bwd``;
- in eager mode, through :class:`_GatherGate` (a plain ``torch.autograd.Function``) when autograd
  records the gather, and straight to the primitives otherwise
  (:func:`stquery.ops.common.records_autograd`).
"""
from __future__ import annotations

import functools
from typing import List, Tuple

import torch
from torch import Tensor

from ... import backends
from ..common import device_type, dispatched, records_autograd, rows_readable
from ..pool.problem import pooled_length
from .checks import topk_args


@torch.library.custom_op("stquery::topk_select", mutates_args=())
def _topk_select(scores: Tensor, k: int, order: str, backend: str) -> Tensor:
    return backends.get(backend).topk_select(scores, k, order)


@_topk_select.register_fake
def _(scores, k, order, backend):
    return scores.new_empty((scores.shape[0], k), dtype=torch.int64)


@torch.library.custom_op("stquery::gather_gate", mutates_args=())
def _gather_gate(x: Tensor, scores: Tensor, idx: Tensor, gate: str, scales: List[int], backend: str) -> Tensor:
    return backends.get(backend).gather_gate(x, scores, idx, gate, tuple(scales))


@_gather_gate.register_fake
def _(x, scores, idx, gate, scales, backend):
    return x.new_empty((x.shape[0], pooled_length(idx.shape[1], scales), x.shape[2]))


@torch.library.custom_op("stquery::gather_gate_bwd", mutates_args=())
def _gather_gate_bwd(
    grad_y: Tensor, x: Tensor, scores: Tensor, idx: Tensor, gate: str, scales: List[int], backend: str
) -> Tuple[Tensor, Tensor]:
    dx, dscores = backends.get(backend).gather_gate_bwd(grad_y, x, scores, idx, gate, tuple(scales))
    return dx, dscores if dscores is not None else scores.new_empty(0)


@_gather_gate_bwd.register_fake
def _(grad_y, x, scores, idx, gate, scales, backend):
    return x.new_empty(x.shape), scores.new_empty(0 if gate == "none" else scores.shape)


def _save_gather(ctx, inputs, output):
    x, scores, idx, ctx.gate, ctx.scales, ctx.backend = inputs
    ctx.save_for_backward(x, scores, idx)


def _gather_grads(ctx, grad_y, bwd):
    """The gradients of ``(x, scores, idx, gate, scales, backend)`` on both paths: ``bwd`` is the
    custom op ``_gather_gate_bwd`` under compile, the backend's ``gather_gate_bwd`` in eager."""
    x, scores, idx = ctx.saved_tensors
    dx, dscores = bwd(rows_readable(grad_y), x, scores, idx, ctx.gate, ctx.scales)
    return dx, (None if ctx.gate == "none" else dscores), None, None, None, None


_gather_gate.register_autograd(
    lambda ctx, grad_y: _gather_grads(ctx, grad_y, functools.partial(_gather_gate_bwd, backend=ctx.backend)),
    setup_context=_save_gather,
)


class _GatherGate(torch.autograd.Function):
    """Eager autograd around the same backend primitives as the custom ops above."""

    @staticmethod
    def forward(ctx, x, scores, idx, gate, scales, backend):
        _save_gather(ctx, (x, scores, idx, gate, scales, backend), None)
        return backends.get(backend).gather_gate(x, scores, idx, gate, scales)

    @staticmethod
    def backward(ctx, grad_y):
        return _gather_grads(ctx, grad_y, backends.get(ctx.backend).gather_gate_bwd)


def topk_tokens(
    x: Tensor, scores: Tensor, k: int, *, order: str = "time", gate: str | None = None,
    scales: tuple[int, ...] | None = None, backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Keep the k most significant tokens of each video (LinVT §3.2, score-based selection).

    Args:
        x: ``[B, N, C]`` tokens, N = T·P frame-major. Only ``stride(-1) == 1`` is required.
        scores: float ``[B, N]`` significance scores.
        k: tokens kept per video, ``1 <= k <= N``.
        order: ``"time"``: idx ascending (temporal order kept); ``"score"``: descending score.
            Ties go to the lower index; the result is deterministic.
        gate: None (scores get no gradient, as in LinVT's code), ``"sigmoid"``, ``"softmax"``
            (over the k selected) or ``"identity"``: ``y = x[idx] * g(scores[idx])``.
        scales: e.g. ``(1, 2, 4)``: fuse :func:`multiscale_pool` into the gather.

    Returns ``(y, idx)``: idx int64 ``[B, k]``; y ``[B, k, C]``, or ``[B, Σ ceil(k/s), C]`` with scales.
    dx is zero except at the selected rows.

    Differences from LinVT's released code (docs/linvt.md): it pools the kept tokens in score-rank
    order (here ``order="score"``; the default ``"time"`` pools tokens close in time) and its
    ``avg_pool1d`` drops a trailing partial window (``floor(k/s)`` rows per scale), where this op
    averages what the window has (``ceil(k/s)``). For LinVT's exact output use ``order="score"``,
    no gate, and either a k divisible by every scale, or keep the first ``k // s`` rows of each
    scale's block (block i starts at row ``Σ_{j<i} ceil(k/s_j)``).
    """
    gate, scales = topk_args(x, scores, k, order, gate, scales)
    dev, through_ops = device_type(x), dispatched()
    name = backends.resolve("topk_select", backend, dev, scores, k, order)
    if through_ops:
        idx = _topk_select(scores.detach(), k, order, name)
    else:
        idx = backends.get(name).topk_select(scores.detach(), k, order)
    name = backends.resolve("gather_gate", backend, dev, x, scores, idx, gate, scales)
    if gate == "none":
        scores = scores.detach()
    if not through_ops:
        if records_autograd(x, scores):
            return _GatherGate.apply(x, scores, idx, gate, scales, name), idx
        return backends.get(name).gather_gate(x, scores, idx, gate, scales), idx
    return _gather_gate(x, scores, idx, gate, list(scales), name), idx
