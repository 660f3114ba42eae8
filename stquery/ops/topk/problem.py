"""Token selection's enums: the one home that checks, kernels and benchmarks import."""
from __future__ import annotations

# Gate names as backends receive them -> the code the Triton kernels take (``gate=None`` -> "none").
GATES = {"none": 0, "sigmoid": 1, "softmax": 2, "identity": 3}
# order="time": indices ascending; "score": descending score, ties by index.
ORDERS = ("time", "score")

# order="score" up to this k: the O(k^2) rank kernels (Triton, csrc/topk/topk.h kRankMaxK); beyond
# it, a stable sort of the selected scores (:func:`sort_by_score`) is cheaper.
RANK_MAX_K = 8192


def sort_by_score(scores, time_idx, out):
    """``out[b] = time_idx[b]`` reordered by descending score. ``time_idx`` ``[B, k]`` is ascending,
    so a stable sort keeps equal scores lowest index first."""
    import torch

    perm = torch.sort(scores.gather(1, time_idx), dim=1, descending=True, stable=True).indices
    torch.gather(time_idx, 1, perm, out=out)
