"""``stq.multiscale_pool`` and ``stq.st_pool`` (docs/ops.md §2.5)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ... import backends
from ..common import rows_readable
from .checks import pool_args, st_pool_args
from .problem import pooled_length


@torch.library.custom_op("stquery::multiscale_pool", mutates_args=())
def _multiscale_pool(y: Tensor, scales: List[int], backend: str) -> Tensor:
    return backends.get(backend).multiscale_pool(y, tuple(scales))


@_multiscale_pool.register_fake
def _(y, scales, backend):
    return y.new_empty((y.shape[0], pooled_length(y.shape[1], scales), y.shape[2]))


@torch.library.custom_op("stquery::multiscale_pool_bwd", mutates_args=())
def _multiscale_pool_bwd(grad: Tensor, k: int, scales: List[int], backend: str) -> Tensor:
    return backends.get(backend).multiscale_pool_bwd(grad, k, tuple(scales))


@_multiscale_pool_bwd.register_fake
def _(grad, k, scales, backend):
    return grad.new_empty((grad.shape[0], k, grad.shape[2]))


def _setup_multiscale(ctx, inputs, output):
    y, scales, backend = inputs
    ctx.static = (y.shape[1], scales, backend)


_multiscale_pool.register_autograd(
    lambda ctx, grad: (_multiscale_pool_bwd(rows_readable(grad), *ctx.static), None, None),
    setup_context=_setup_multiscale,
)


@torch.library.custom_op("stquery::st_pool", mutates_args=())
def _st_pool(x: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    return backends.get(backend).st_pool(x)


@_st_pool.register_fake
def _(x, backend):
    B, T, P, C = x.shape
    return x.new_empty((B, T, C)), x.new_empty((B, P, C))


@torch.library.custom_op("stquery::st_pool_bwd", mutates_args=())
def _st_pool_bwd(grad_temporal: Tensor, grad_spatial: Tensor, backend: str) -> Tensor:
    return backends.get(backend).st_pool_bwd(grad_temporal, grad_spatial)


@_st_pool_bwd.register_fake
def _(grad_temporal, grad_spatial, backend):
    (B, T, C), P = grad_temporal.shape, grad_spatial.shape[1]
    return grad_temporal.new_empty((B, T, P, C))


def _setup_st(ctx, inputs, output):
    ctx.backend = inputs[1]


_st_pool.register_autograd(
    lambda ctx, g_t, g_s: (
        _st_pool_bwd(rows_readable(g_t), rows_readable(g_s), ctx.backend),
        None,
    ),
    setup_context=_setup_st,
)


def multiscale_pool(y: Tensor, scales: tuple[int, ...] = (1, 2, 4), *, backend: str | None = None) -> Tensor:
    """LinVT's multi-scale token pooling (§3.2): window means of ``y`` at several scales.

    For each s in ``scales``: the mean over consecutive non-overlapping windows of s tokens (a last
    partial window averages what it has). Linear in y.

    Args:
        y: ``[B, k, C]``.
        scales: positive ints, e.g. ``(1, 2, 4)``.
    Returns ``[B, Σ_s ceil(k/s), C]``, the scales concatenated in order.
    """
    scales = pool_args(y, scales)
    return _multiscale_pool(y, list(scales), backends.resolve("multiscale_pool", backend, y.device.type, y, scales))


def st_pool(x: Tensor, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Spatio-temporal pooling of frame features (RED-VILLM / Video-ChatGPT), one pass over x.

    Args:
        x: ``[B, T, P, C]`` (T frames of P patch tokens).
    Returns ``(temporal [B, T, C] = mean over P, spatial [B, P, C] = mean over T)``.
    """
    st_pool_args(x)
    return _st_pool(x, backends.resolve("st_pool", backend, x.device.type, x))
