"""``stq.multiscale_pool`` and ``stq.st_pool`` (docs/ops.md §2.5).

Each runs its backend's primitives (``multiscale_pool`` / ``multiscale_pool_bwd``, ``st_pool`` /
``st_pool_bwd``) as attention does (stquery/ops/attention/op.py):

- under ``torch.compile`` or a functorch transform (:func:`stquery.ops.common.dispatched`), through
  the custom ops ``stquery::multiscale_pool`` / ``st_pool`` and their ``_bwd`` ops;
- in eager mode, through :class:`_MultiscalePool` / :class:`_StPool` (plain
  ``torch.autograd.Function`` classes) when autograd records the call, and straight to the
  primitive otherwise (:func:`stquery.ops.common.records_autograd`).
"""
from __future__ import annotations

import functools
from typing import List, Tuple

import torch
from torch import Tensor

from ... import backends
from ..common import device_type, dispatched, records_autograd, rows_readable
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


def _save_multiscale(ctx, inputs, output):
    y, ctx.scales, ctx.backend = inputs
    ctx.k = y.shape[1]


def _multiscale_grads(ctx, grad, bwd):
    """The gradients of ``(y, scales, backend)`` on both paths: ``bwd`` is the custom op
    ``_multiscale_pool_bwd`` under compile, the backend's ``multiscale_pool_bwd`` in eager."""
    return bwd(rows_readable(grad), ctx.k, ctx.scales), None, None


_multiscale_pool.register_autograd(
    lambda ctx, grad: _multiscale_grads(ctx, grad, functools.partial(_multiscale_pool_bwd, backend=ctx.backend)),
    setup_context=_save_multiscale,
)


class _MultiscalePool(torch.autograd.Function):
    """Eager autograd around the same backend primitives as the custom ops."""

    @staticmethod
    def forward(ctx, y, scales, backend):
        _save_multiscale(ctx, (y, scales, backend), None)
        return backends.get(backend).multiscale_pool(y, scales)

    @staticmethod
    def backward(ctx, grad):
        return _multiscale_grads(ctx, grad, backends.get(ctx.backend).multiscale_pool_bwd)


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


def _save_st(ctx, inputs, output):
    ctx.backend = inputs[1]


def _st_grads(ctx, grad_temporal, grad_spatial, bwd):
    """The gradients of ``(x, backend)`` on both paths: ``bwd`` is the custom op ``_st_pool_bwd``
    under compile, the backend's ``st_pool_bwd`` in eager."""
    return bwd(rows_readable(grad_temporal), rows_readable(grad_spatial)), None


_st_pool.register_autograd(
    lambda ctx, g_t, g_s: _st_grads(ctx, g_t, g_s, functools.partial(_st_pool_bwd, backend=ctx.backend)),
    setup_context=_save_st,
)


class _StPool(torch.autograd.Function):
    """Eager autograd around the same backend primitives as the custom ops."""

    @staticmethod
    def forward(ctx, x, backend):
        _save_st(ctx, (x, backend), None)
        return backends.get(backend).st_pool(x)

    @staticmethod
    def backward(ctx, grad_temporal, grad_spatial):
        return _st_grads(ctx, grad_temporal, grad_spatial, backends.get(ctx.backend).st_pool_bwd)


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
    name = backends.resolve("multiscale_pool", backend, device_type(y), y, scales)
    if not dispatched():
        if records_autograd(y):
            return _MultiscalePool.apply(y, scales, name)
        return backends.get(name).multiscale_pool(y, scales)
    return _multiscale_pool(y, list(scales), name)


def st_pool(x: Tensor, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Spatio-temporal pooling of frame features (RED-VILLM / Video-ChatGPT), one pass over x.

    Args:
        x: ``[B, T, P, C]`` (T frames of P patch tokens).
    Returns ``(temporal [B, T, C] = mean over P, spatial [B, P, C] = mean over T)``.
    """
    st_pool_args(x)
    name = backends.resolve("st_pool", backend, device_type(x), x)
    if not dispatched():
        if records_autograd(x):
            return _StPool.apply(x, name)
        return backends.get(name).st_pool(x)
    return _st_pool(x, name)
