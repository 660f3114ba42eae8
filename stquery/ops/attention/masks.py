"""Mask sets for Dynamic Attention Routing (docs/ops.md §2.3).

A mask is a rule over the ``Nq × Nk`` score grid (sequence positions; for temporal attention,
frame indices). Structured masks (``window``, ``causal``) are integers that kernels turn into
visibility on the fly; only ``dense`` masks carry a tensor, and all dense masks of a set share one
``[n_dense, Nq, Nk]`` buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .problem import CAUSAL, DENSE, MAX_MASKS, WINDOW


@dataclass(frozen=True, eq=False)
class Mask:
    """One routed mask. Build it with :func:`window`, :func:`causal` or :func:`dense`."""

    kind: int
    radius: int  # -1: unbounded
    matrix: torch.Tensor | None = None  # bool [Nq, Nk], dense masks only

    def __repr__(self) -> str:
        if self.kind == DENSE:
            return f"dense({tuple(self.matrix.shape)})"
        r = None if self.radius < 0 else self.radius
        return f"{'window' if self.kind == WINDOW else 'causal'}({r})"


def _radius(r: int | None, name: str) -> int:
    if r is None:
        return -1
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"{name}: radius must be a non-negative int or None, got {r!r}")
    return r


def window(r: int | None) -> Mask:
    """Key ``j`` is visible from query ``i`` iff ``|i - j| <= r``; ``window(None)`` sees everything."""
    return Mask(WINDOW, _radius(r, "window"))


def causal(r: int | None = None) -> Mask:
    """Key ``j`` is visible from query ``i`` iff ``0 <= i - j`` (and ``i - j <= r`` when r is given)."""
    return Mask(CAUSAL, _radius(r, "causal"))


def dense(m: torch.Tensor) -> Mask:
    """An arbitrary mask: bool ``[Nq, Nk]``, True = visible; shared by every group and head."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"dense: m must be a bool tensor [Nq, Nk], got {type(m).__name__}")
    if m.dim() != 2:
        raise ValueError(f"dense: m must be a bool tensor [Nq, Nk], got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        raise TypeError(f"dense: m must have dtype torch.bool, got {m.dtype}")
    return Mask(DENSE, -1, m.detach())


class MaskSet:
    """The p masks that Dynamic Attention Routing mixes with per-sample weights ``alpha``.

    ``masks``: a list of :func:`window` / :func:`causal` / :func:`dense` masks (1 ≤ p ≤ ``MAX_MASKS`` = 8).
    ``global_tokens``: ``(start, end)``; tokens in ``[start, end)`` see and are seen by every token
    under every mask (the text tokens of early fusion). Self-attention (Nq == Nk) only.
    """

    def __init__(self, masks, global_tokens: tuple[int, int] | None = None):
        masks = list(masks)
        if not 1 <= len(masks) <= MAX_MASKS:
            raise ValueError(f"MaskSet: needs 1..{MAX_MASKS} masks, got {len(masks)}")
        for i, m in enumerate(masks):
            if not isinstance(m, Mask):
                raise TypeError(
                    f"MaskSet: masks[{i}] must come from stq.masks.window/causal/dense, got {type(m).__name__}"
                )
        shapes = {tuple(m.matrix.shape) for m in masks if m.kind == DENSE}
        if len(shapes) > 1:
            raise ValueError(f"MaskSet: dense masks must share one [Nq, Nk] shape, got {sorted(shapes)}")
        if global_tokens is None:
            global_tokens = (0, 0)
        if not isinstance(global_tokens, (tuple, list)) or len(global_tokens) != 2:
            raise ValueError(f"MaskSet: global_tokens must be a pair (start, end), got {global_tokens!r}")
        start, end = global_tokens
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError(f"MaskSet: global_tokens must be (start, end) with 0 <= start <= end, got {global_tokens!r}")
        self.masks = tuple(masks)
        self.global_tokens = (start, end)
        self.dense_shape = shapes.pop() if shapes else None
        # The encoding backends receive, built once here rather than on every call.
        self.kinds = tuple(m.kind for m in masks)
        self.radii = tuple(m.radius for m in masks)
        self._dense = {}  # torch.device -> bool [n_dense, Nq, Nk], built once per device

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        g = "" if self.global_tokens == (0, 0) else f", global_tokens={self.global_tokens}"
        return f"MaskSet([{', '.join(map(repr, self.masks))}]{g})"

    def dense_buffer(self, device: torch.device) -> torch.Tensor | None:
        """The dense masks stacked in set order: bool ``[n_dense, Nq, Nk]`` on ``device``, or None."""
        if self.dense_shape is None:
            return None
        buffer = self._dense.get(device)
        if buffer is None:
            buffer = self._dense[device] = torch.stack([m.matrix for m in self.masks if m.kind == DENSE]).to(device)
        return buffer
