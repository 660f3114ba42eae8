"""Per-element loop implementation of docs/ops.md §2.5: an independent check of the pool reference.

Written from the formulas of docs/ops.md, sharing no code with the reference. Slow: tiny inputs only.
"""
import torch


def multiscale_pool(y, scales):
    B, k, C = y.shape
    rows = []
    for s in scales:
        for start in range(0, k, s):
            rows.append(y[:, start : start + s].double().sum(1) / len(range(start, min(start + s, k))))
    return torch.stack(rows, dim=1)


def st_pool(x):
    B, T, P, C = x.shape
    temporal = torch.stack([torch.stack([sum(x[b, t, p].double() for p in range(P)) / P for t in range(T)]) for b in range(B)])
    spatial = torch.stack([torch.stack([sum(x[b, t, p].double() for t in range(T)) / T for p in range(P)]) for b in range(B)])
    return temporal, spatial
