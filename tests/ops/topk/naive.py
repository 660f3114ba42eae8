"""Per-element loop implementation of docs/ops.md §2.4: an independent check of the topk reference.

Written from the formulas of docs/ops.md, sharing no code with the reference. Slow: tiny inputs only.
"""
import math

import torch

from ..pool.naive import multiscale_pool


def topk_tokens(x, scores, k, order="time", gate=None, scales=None):
    B, N, C = x.shape
    idx = torch.zeros(B, k, dtype=torch.int64)
    ys = []
    for b in range(B):
        ranked = sorted(range(N), key=lambda n: (-float(scores[b, n]), n))[:k]
        chosen = sorted(ranked) if order == "time" else ranked
        idx[b] = torch.tensor(chosen)
        sel = [float(scores[b, n]) for n in chosen]
        if gate == "sigmoid":
            g = [1 / (1 + math.exp(-s)) for s in sel]
        elif gate == "softmax":
            m = max(sel)
            e = [math.exp(s - m) for s in sel]
            g = [x_ / sum(e) for x_ in e]
        elif gate == "identity":
            g = sel
        else:
            g = [1.0] * k
        ys.append(torch.stack([x[b, n].double() * g[i] for i, n in enumerate(chosen)]))
    y = torch.stack(ys)
    return (multiscale_pool(y, scales) if scales else y), idx
