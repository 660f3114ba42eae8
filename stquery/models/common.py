"""Building blocks shared by the video tokenizers: LoRA, DAR routers, attention layers, masks.

Every attention here runs through :func:`stquery.attention` / :func:`stquery.temporal_attention`;
this file only holds the projections around them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import stquery as stq
from stquery.ops.attention.problem import MAX_HEAD_DIM


class LoRA(nn.Module):
    """Low-rank update ``x -> (alpha / r) · x Aᵀ Bᵀ`` (Hu et al. 2021), added to a frozen Linear.

    ``down`` (A, ``[r, in_features]``) is Kaiming-initialised, ``up`` (B, ``[out_features, r]``) is
    zero-initialised, so the adapted layer equals the frozen one at init (MTransLLaMA eq. 8).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA: rank must be >= 1, got {rank}")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scaling = (rank if alpha is None else alpha) / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)) * self.scaling


class Router(nn.Module):
    """Dynamic Attention Routing weights (MTransLLaMA eq. 10): ``alpha = softmax(MLP(pooled))``.

    MLP = Linear(dim, hidden) → ReLU → Linear(hidden, p), the last layer zero-initialised so that
    alpha starts uniform (``1/p`` each). The caller average-pools the attention's sequence into
    ``pooled`` (``[..., dim]``); the output is ``[..., p]``.
    """

    def __init__(self, dim: int, num_masks: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, num_masks)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.softmax(self.fc2(torch.relu(self.fc1(pooled))), dim=-1)


def masked_mean(x: Tensor, valid: Tensor | None, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``valid`` (bool, broadcastable) is True."""
    if valid is None:
        return x.mean(dim)
    w = valid.to(x.dtype)
    return (x * w).sum(dim) / w.sum(dim).clamp(min=1)


def frame_validity(frame_lengths: Tensor | None, batch: int, frames: int, device) -> Tensor | None:
    """bool ``[B, T]``: True for real frames (``t < frame_lengths[b]``); None when nothing is padded.

    The one ``frame_lengths`` rule of the models, the ops' rule (docs/ops.md §2.2): an integer tensor
    ``[B]`` whose values are clipped to ``[0, T]``; 0 is a fully padded video (its outputs are 0
    and its visual tokens masked out). Values are never read on the host (no sync).
    """
    if frame_lengths is None:
        return None
    if frame_lengths.shape != (batch,):
        raise ValueError(f"frame_lengths: expected shape ({batch},), got {tuple(frame_lengths.shape)}")
    if frame_lengths.dtype.is_floating_point or frame_lengths.dtype.is_complex or frame_lengths.dtype == torch.bool:
        raise TypeError(f"frame_lengths: expected an integer tensor, got {frame_lengths.dtype}")
    return torch.arange(frames, device=device)[None, :] < frame_lengths.to(device)[:, None]


def grid_neighbourhood_masks(num_queries: int, num_keys: int, radii) -> list[Tensor]:
    """Cross-attention DAR masks (docs/models.md §4.1): bool ``[num_queries, num_keys]``, one per radius.

    The ``num_queries`` queries are laid out row-major on a ``gh × gw`` grid (``gh`` the largest
    divisor of L not above √L); the keys end with a ``side × side`` row-major patch grid
    (``side = isqrt(num_keys)``) and any leading extra tokens (a ViT's CLS token) are visible to
    every query. Query cell ``(i, j)`` maps to patch ``(⌊(i + ½)·side/gh⌋, ⌊(j + ½)·side/gw⌋)`` and
    sees the patches within Chebyshev distance ``r`` of it.
    """
    side = math.isqrt(num_keys)
    extra = num_keys - side * side
    gh = max(d for d in range(1, math.isqrt(num_queries) + 1) if num_queries % d == 0)
    gw = num_queries // gh
    cell = torch.arange(num_queries)
    ci = ((cell // gw + 0.5) * side / gh).floor()  # [L]
    cj = ((cell % gw + 0.5) * side / gw).floor()  # [L]
    patch = torch.arange(side * side)
    pi, pj = (patch // side).float(), (patch % side).float()  # [side²]
    di = (ci[:, None] - pi[None, :]).abs()  # [L, side²]
    dj = (cj[:, None] - pj[None, :]).abs()
    out = []
    for r in radii:
        grid = (di <= r) & (dj <= r)
        out.append(torch.cat([torch.ones(num_queries, extra, dtype=torch.bool), grid], dim=1))
    return out


def attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int, *, frames: int | None = None, **op_kwargs) -> Tensor:
    """The core of every attention block here: heads split, a stquery op, heads merged.

    ``q`` ``[G, N, H·d]``, ``k``/``v`` ``[G, M, H·d]`` (already projected) are viewed as
    ``[G, N, H, d]`` and run by ``stq.attention`` (``frames`` None: along dim 1) or
    ``stq.temporal_attention`` over ``frames`` (``G = B·T``, ``N = M = L``); ``op_kwargs`` go to the
    op (``scale``, ``masks``, ``alpha``, ``mode``, ``key_padding``, ``frame_lengths``).
    Returns ``[G, N, H·d]``.
    """
    G, N, width = q.shape
    d = width // num_heads
    q = q.view(G, N, num_heads, d)
    k = k.view(G, k.shape[1], num_heads, d)
    v = v.view(G, v.shape[1], num_heads, d)
    if frames is None:
        o = stq.attention(q, k, v, **op_kwargs)
    else:
        o = stq.temporal_attention(q, k, v, frames, **op_kwargs)
    return o.reshape(G, N, width)


class Attention(nn.Module):
    """Multi-head attention with its own projections, run by a stquery op (:func:`attend`).

    ``forward(x [G, N, dim], context [G, M, kv_dim] | None)``. Spatial/cross attention along dim 1
    (``stq.attention``), or temporal attention over ``frames`` (``stq.temporal_attention``, x
    ``[B*T, N, dim]``). Output ``[G, N, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        if dim // num_heads > MAX_HEAD_DIM:
            raise ValueError(f"Attention: head width dim/num_heads = {dim // num_heads} exceeds {MAX_HEAD_DIM}; use more heads")
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        frames: int | None = None,
        frame_lengths: Tensor | None = None,
        key_padding: Tensor | None = None,
    ) -> Tensor:
        src = x if context is None else context
        kw = {"key_padding": key_padding} if frames is None else {"frame_lengths": frame_lengths}
        return self.o(attend(self.q(x), self.k(src), self.v(src), self.num_heads, frames=frames, **kw))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module`` (shared parameters counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def run_in_own_dtype(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with ``x`` cast to the module's parameter dtype (float32 trainable parts next to
    a bfloat16 frozen model: ``keep_trainable_float32``)."""
    return module(x.to(next(module.parameters()).dtype))


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
