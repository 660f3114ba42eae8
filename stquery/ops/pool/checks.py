"""Argument checks of ``stq.multiscale_pool`` and ``stq.st_pool`` (docs/ops.md §1, §2.5); ``scales`` is
shared with ``stq.topk_tokens``."""
from __future__ import annotations

from ..common import nonempty, tensor


def scales_arg(scales) -> tuple[int, ...]:
    try:
        scales = tuple(scales)
    except TypeError:
        raise TypeError(f"scales: expected a tuple of positive ints such as (1, 2, 4), got {scales!r}") from None
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"scales: expected a non-empty tuple of positive ints such as (1, 2, 4), got {scales!r}")
    return scales


def pool_args(y, scales) -> tuple[int, ...]:
    tensor("y", y, 3, "[B, k, C]")
    nonempty("y", y, "[B, k, C]")
    return scales_arg(scales)


def st_pool_args(x) -> None:
    tensor("x", x, 4, "[B, T, P, C]")
    nonempty("x", x, "[B, T, P, C]")
