"""Argument checks of ``stq.topk_tokens`` (docs/ops.md §1, §2.4)."""
from __future__ import annotations

from ..common import FLOATS, nonempty, same_device, shape, tensor
from ..pool.checks import scales_arg
from .problem import GATES, ORDERS


def topk_args(x, scores, k, order, gate, scales):
    """Validate ``topk_tokens``; returns ``(gate name, scales tuple (empty: no pooling))``."""
    tensor("x", x, 3, "[B, N, C]")
    tensor("scores", scores, 2, "[B, N]", dtypes=FLOATS)
    B, N, C = x.shape
    if tuple(scores.shape) != (B, N):
        raise ValueError(f"scores: expected shape [{B}, {N}] ([B, N] of x), got {shape(scores)}")
    same_device("x", x, scores=scores)
    nonempty("x", x, "[B, N, C]")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int in 1..N = 1..{N}, got {k!r}")
    if not 1 <= k <= N:
        raise ValueError(f"k: expected 1 <= k <= N = {N} (x is {shape(x)}), got k = {k}")
    if order not in ORDERS:
        raise ValueError(f"order: expected 'time' or 'score', got {order!r}")
    if gate == "none" or (gate is not None and gate not in GATES):
        raise ValueError(f"gate: expected None, 'sigmoid', 'softmax' or 'identity', got {gate!r}")
    return ("none" if gate is None else gate), (() if scales is None else scales_arg(scales))
