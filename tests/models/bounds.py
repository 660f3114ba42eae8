"""The error bound of every model comparison: flash-attention's rule, as in tests/kernels.

A model run in a low dtype is compared with the float64 run of a reference (the HF model, or the
same model on another path) taken as the truth. Its error may be at most ``factor`` times the
error of that reference run in the same low dtype, plus ``c · eps(dtype) · max|truth|``: the
bound scales with the dtype and with what the computation itself loses, never a bare atol.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# eps multiple for the absolute slack: a few dozen roundings of the largest value, the reordering
# of sums between two implementations of one function (stquery ops vs. torch matmuls).
C_EPS = 32


def error_bound(truth: torch.Tensor, same_dtype: torch.Tensor, *, factor: float = 2.0, c: float = C_EPS) -> float:
    """``factor · |same_dtype − truth|_max + c · eps(same_dtype.dtype) · max|truth|``."""
    ref_err = (same_dtype.double() - truth).abs().max().item()
    return factor * ref_err + c * torch.finfo(same_dtype.dtype).eps * truth.abs().max().item()


def assert_within_bound(got: torch.Tensor, truth: torch.Tensor, same_dtype: torch.Tensor, *, factor: float = 2.0,
                        c: float = C_EPS, name: str = "output") -> None:
    """``got`` (low dtype) within :func:`error_bound` of ``truth`` (float64); ``same_dtype``: the
    reference computation in ``got``'s dtype."""
    assert got.shape == truth.shape == same_dtype.shape, (name, got.shape, truth.shape, same_dtype.shape)
    assert truth.dtype == torch.float64 and got.dtype == same_dtype.dtype, (name, got.dtype, truth.dtype, same_dtype.dtype)
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got.double() - truth).abs().max().item()
    bound = error_bound(truth, same_dtype, factor=factor, c=c)
    ref_err = (same_dtype.double() - truth).abs().max().item()
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (same-dtype reference error {ref_err:.3g})"


def assert_within_eps(got: torch.Tensor, truth: torch.Tensor, *, c: float, name: str = "output") -> None:
    """For a run with no same-dtype reference (a whole model cast to bfloat16): ``got`` within
    ``c · eps(got.dtype) · max|truth|`` of the float64 ``truth``."""
    assert truth.dtype == torch.float64 and got.shape == truth.shape, (name, truth.dtype, got.shape, truth.shape)
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got.double() - truth).abs().max().item()
    bound = c * torch.finfo(got.dtype).eps * truth.abs().max().item()
    assert err <= bound, f"{name}: error {err:.3g} > {c} eps(dtype) max|truth| = {bound:.3g}"


def float64_copy(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` (the truth run)."""
    return copy.deepcopy(module).double()
