"""The torch reference of ``stq.multiscale_pool`` and ``stq.st_pool``: the truth kernels are
tested against. :func:`pool` / :func:`st_means` are what the torch backend runs; the public-argument
functions below them are what tests and benchmarks call."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import pool_args, st_pool_args


def window_means(y: torch.Tensor, scales) -> torch.Tensor:
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
    return window_means(y.to(cdt), scales).to(y.dtype)


def st_means(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean over P [B, T, C], mean over T [B, P, C])`` of ``x [B, T, P, C]``."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.mean(2, dtype=cdt).to(x.dtype), x.mean(1, dtype=cdt).to(x.dtype)


def multiscale_pool(y: torch.Tensor, scales=(1, 2, 4)) -> torch.Tensor:
    """Reference for :func:`stquery.multiscale_pool`."""
    return pool(y, pool_args(y, scales))


def st_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`stquery.st_pool`."""
    st_pool_args(x)
    return st_means(x)
