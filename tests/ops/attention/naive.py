"""Per-element loop implementation of docs/ops.md §2.1–2.3: an independent check of the attention reference.

Written from the formulas of docs/ops.md, sharing no code with the reference. Slow: tiny inputs only.
"""
import math

import torch

from stquery.ops.attention.problem import CAUSAL, WINDOW


def visible(mask, i, j, global_tokens):
    gs, ge = global_tokens
    if gs <= i < ge or gs <= j < ge:
        return True
    r = mask.radius
    if mask.kind == WINDOW:
        return r < 0 or abs(i - j) <= r
    if mask.kind == CAUSAL:
        return 0 <= i - j and (r < 0 or i - j <= r)
    return bool(mask.matrix[i, j])


def _softmax_rows(logits, allowed):
    """Softmax of a python list over allowed entries; None when nothing is allowed."""
    keep = [z for z, a in zip(logits, allowed) if a]
    if not keep:
        return None
    m = max(keep)
    e = [math.exp(z - m) if a else 0.0 for z, a in zip(logits, allowed)]
    total = sum(e)
    return [x / total for x in e]


def _one_row(qi, keys, values, i, key_ok, masks, alpha_row, mode, scale):
    """Output row for query i: keys/values [Nk, d] float64, alpha_row list of p weights."""
    nk, d = keys.shape
    s = [scale * float(qi @ keys[j]) for j in range(nk)]
    out = torch.zeros(d, dtype=torch.float64)
    if masks is None:
        w = _softmax_rows(s, key_ok)
        return out if w is None else sum(w[j] * values[j] for j in range(nk))
    vis = [[visible(m, i, j, masks.global_tokens) for j in range(nk)] for m in masks.masks]
    if mode == "mix":
        for a, v_j in zip(alpha_row, vis):
            w = _softmax_rows(s, [v and ok for v, ok in zip(v_j, key_ok)])
            if w is not None:
                out = out + a * sum(w[j] * values[j] for j in range(nk))
        return out
    mix = [sum(a * v_j[j] for a, v_j in zip(alpha_row, vis)) for j in range(nk)]
    w = _softmax_rows([s[j] * mix[j] for j in range(nk)], [mix[j] > 0 and key_ok[j] for j in range(nk)])
    return out if w is None else sum(w[j] * values[j] for j in range(nk))


def _alpha_at(alpha, full, index, p):
    if alpha is None:
        return [1.0 / p] * p
    a = alpha.double()
    while a.dim() < len(full) + 1:
        a = a.unsqueeze(-2)
    a = a.expand(*full, p)
    return [float(x) for x in a[index]]


def attention(q, k, v, masks=None, alpha=None, mode="mix", scale=None, key_padding=None):
    G, Nq, H, d = q.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    p = len(masks) if masks is not None else 0
    out = torch.zeros(G, Nq, H, d, dtype=torch.float64)
    for g in range(G):
        key_ok = [True] * k.shape[1] if key_padding is None else [not bool(x) for x in key_padding[g]]
        for h in range(H):
            keys, values = k[g, :, h].double(), v[g, :, h].double()
            a = _alpha_at(alpha, (G, H), (g, h), p) if masks is not None else None
            for i in range(Nq):
                out[g, i, h] = _one_row(q[g, i, h].double(), keys, values, i, key_ok, masks, a, mode, scale)
    return out


def temporal_attention(q, k, v, frames, masks=None, alpha=None, mode="mix", scale=None, frame_lengths=None):
    BT, L, H, d = q.shape
    T, B = frames, BT // frames
    scale = 1 / math.sqrt(d) if scale is None else scale
    p = len(masks) if masks is not None else 0
    out = torch.zeros(BT, L, H, d, dtype=torch.float64)
    for b in range(B):
        n = T if frame_lengths is None else int(frame_lengths[b])
        key_ok = [t < n for t in range(T)]
        for l in range(L):
            for h in range(H):
                keys = torch.stack([k[b * T + t, l, h] for t in range(T)]).double()
                values = torch.stack([v[b * T + t, l, h] for t in range(T)]).double()
                a = _alpha_at(alpha, (B, L, H), (b, l, h), p) if masks is not None else None
                for t in range(min(n, T)):
                    out[b * T + t, l, h] = _one_row(q[b * T + t, l, h].double(), keys, values, t, key_ok, masks, a, mode, scale)
    return out
