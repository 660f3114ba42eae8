"""The torch reference of ``stq.topk_tokens``: the truth kernels are tested against.
:func:`select` / :func:`gather_gate` are what the torch backend runs; :func:`topk_tokens` (public
arguments) is what tests and benchmarks call."""
from __future__ import annotations

import torch

from ..pool.reference import window_means
from .checks import topk_args


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
    y = window_means(rows, scales) if scales else rows
    return y.to(x.dtype)


def topk_tokens(x, scores, k, *, order="time", gate=None, scales=None):
    """Reference for :func:`stquery.topk_tokens`: returns ``(y, idx)``."""
    gate, scales = topk_args(x, scores, k, order, gate, scales)
    idx = select(scores, k, order)
    return gather_gate(x, scores if gate != "none" else scores.detach(), idx, gate, scales), idx

