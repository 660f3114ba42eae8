"""LinVT's Linear Video Tokenizer (docs/models.md §4.2; Gao et al. 2024, arXiv:2412.05185, Sec. 3.2).

SVR (spatio-temporal visual token refiner): spatio-temporal significance scoring, top-k selection
in temporal order and multi-scale token pooling, fused in :func:`stquery.topk_tokens`.
TTA (text-conditioned token aggregation, "Multi-C"): one learnable query set per scale; the output
tokens are softmax-weighted averages of that scale's raw pooled tokens. Every output token is thus
a linear combination of input frame tokens (LinVT's linearity principle), so the image LLM's
connector can consume them unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import stquery as stq
from stquery.ops.attention.problem import MAX_HEAD_DIM

from .common import Attention, FeedForward, frame_validity, parameter_counts


class _SVRLayer(nn.Module):
    """Pre-LN block: spatial attention within each frame, temporal attention per patch, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(dim)
        self.spatial = Attention(dim, num_heads)
        self.norm_temporal = nn.LayerNorm(dim)
        self.temporal = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, h: Tensor, frames: int, frame_lengths: Tensor | None) -> Tensor:
        # h: [B*T, P, C]
        h = h + self.spatial(self.norm_spatial(h))
        h = h + self.temporal(self.norm_temporal(h), frames=frames, frame_lengths=frame_lengths)
        return h + self.mlp(self.norm_mlp(h))


class _TTALayer(nn.Module):
    """Pre-LN decoder block: query self-attention, cross-attention to visual tokens, to text, MLP."""

    def __init__(self, dim: int, num_heads: int, text_dim: int | None, mlp_ratio: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm_visual = nn.LayerNorm(dim)
        self.visual_attn = Attention(dim, num_heads)
        self.text_attn = Attention(dim, num_heads, kv_dim=text_dim) if text_dim else None
        self.norm_text = nn.LayerNorm(dim) if text_dim else None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, visual: Tensor, text: Tensor | None, text_padding: Tensor | None) -> Tensor:
        # q: [B, M, C], visual: [B, Nk, C] (already normalised), text: [B, n, Ct]
        q = q + self.self_attn(self.norm_self(q))
        q = q + self.visual_attn(self.norm_visual(q), visual)
        if self.text_attn is not None and text is not None:
            q = q + self.text_attn(self.norm_text(q), text, key_padding=text_padding)
        return q + self.mlp(self.norm_mlp(q))


@dataclass
class Refined:
    """What SVR produced: ``tokens`` ``[B, sum ceil(k/s), C]`` (scales concatenated in order),
    ``index`` int64 ``[B, k]`` (ascending: temporal order), ``scores`` ``[B, T*P]``."""

    tokens: Tensor
    index: Tensor
    scores: Tensor


class LinVTTokenizer(nn.Module):
    """LinVT video tokenizer (docs/models.md §4.2): frame tokens ``[B, T, P, C]`` → video tokens ``[B, M, C]``.

    SVR: ``svr_layers`` blocks of spatial attention within each frame (``stq.attention``, G = B·T
    over P patches) and temporal attention across frames per patch position
    (``stq.temporal_attention`` on ``[B*T, P, H, d]``); significance ``s = Linear(C, 1)(LN(h))``;
    ``y, idx = stq.topk_tokens(x, s, k, order="time", gate="sigmoid", scales)``, i.e.
    ``y = multiscale_pool(x[idx] · sigmoid(s[idx]))`` on the **raw** frame tokens x, so the score
    head is trained through the gate.

    TTA (Multi-C): for scale i, queries ``Q_i`` ``[M_i, C]`` pass ``tta_layers`` decoder blocks (self-,
    visual cross-, text cross-attention, MLP; layers shared across scales) attending to scale i's
    pooled tokens ``Y_i``; then output ``O_i = softmax(W_q Q_i (W_k Y_i)ᵀ / √d_a) Y_i`` (values are
    the raw ``Y_i``: linearity). ``O = concat_i O_i``, ``M = sum(num_queries)``.

    The aggregation runs ``stq.attention`` with ``H_a`` heads whose q/k are one shared projection
    expanded (stride 0) across heads and whose values are ``Y_i`` split into ``H_a`` channel groups
    of width ``d_a = C / H_a ≤ 256``: every head computes the same weights, so each output token is
    one weighted average of whole input tokens.

    Trainable: everything here (it is new). At the paper's depth (C = 1408 EVA-ViT tokens,
    text_dim = 4096, 4 SVR + 4 TTA layers, 8 heads, mlp_ratio 4, 64/32/16 queries):
    316,660,961 parameters (LinVT reports 267 M; its exact block layout is not published);
    :meth:`parameter_counts` gives the count of any configuration.

    Args:
        dim: C, the frame-token width (the vision encoder's).
        text_dim: width of the text embeddings TTA attends to (e.g. the LLM's hidden size); None
            disables the text cross-attention.
        num_heads: heads of every SVR/TTA attention (C / num_heads ≤ 256).
        k: tokens kept by top-k (≤ T·P; a video with fewer real tokens is filled with zero tokens).
        scales: multi-scale pooling windows, e.g. ``(1, 2, 4)``.
        num_queries: queries per scale (same length as ``scales``).
    """

    def __init__(
        self,
        dim: int,
        *,
        text_dim: int | None = None,
        num_heads: int = 8,
        svr_layers: int = 2,
        tta_layers: int = 2,
        k: int = 256,
        scales: Sequence[int] = (1, 2, 4),
        num_queries: Sequence[int] = (32, 16, 16),
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if len(num_queries) != len(scales):
            raise ValueError(f"num_queries: expected one count per scale ({len(scales)}), got {tuple(num_queries)}")
        self.dim, self.k, self.scales, self.num_queries = dim, k, tuple(scales), tuple(num_queries)
        self.svr = nn.ModuleList(_SVRLayer(dim, num_heads, mlp_ratio) for _ in range(svr_layers))
        self.score_norm = nn.LayerNorm(dim)
        self.score_head = nn.Linear(dim, 1)  # significance score
        self.queries = nn.ParameterList(nn.Parameter(torch.randn(m, dim) * 0.02) for m in num_queries)
        self.tta = nn.ModuleList(_TTALayer(dim, num_heads, text_dim, mlp_ratio) for _ in range(tta_layers))
        self.visual_norm = nn.LayerNorm(dim)
        self.agg_heads = next(h for h in range(1, dim + 1) if dim % h == 0 and dim // h <= MAX_HEAD_DIM)
        agg_dim = dim // self.agg_heads
        self.agg_q = nn.Linear(dim, agg_dim)
        self.agg_k = nn.Linear(dim, agg_dim)
        self.text_dim = text_dim

    @property
    def out_features(self) -> int:
        return self.dim

    @property
    def num_tokens(self) -> int:
        return sum(self.num_queries)

    def parameter_counts(self) -> tuple[int, int]:
        return parameter_counts(self)

    def refine(self, frame_features: Tensor, frame_lengths: Tensor | None = None) -> Refined:
        """SVR: significance scores, top-k in temporal order, multi-scale pooling (see class doc)."""
        if frame_features.dim() != 4 or frame_features.shape[-1] != self.dim:
            raise ValueError(f"frame_features: expected [B, T, P, {self.dim}], got {tuple(frame_features.shape)}")
        B, T, P, C = frame_features.shape
        valid = frame_validity(frame_lengths, B, T, frame_features.device)  # [B, T] | None
        fl = None if frame_lengths is None else frame_lengths.to(device=frame_features.device, dtype=torch.int64)
        h = frame_features.reshape(B * T, P, C)
        for layer in self.svr:
            h = layer(h, T, fl)
        scores = self.score_head(self.score_norm(h)).reshape(B, T * P)  # [B, N]
        if valid is not None:  # padded tokens rank last and their gate sigmoid(min) is exactly 0
            pad = ~valid[:, :, None].expand(B, T, P).reshape(B, T * P)
            scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        x = frame_features.reshape(B, T * P, C)
        y, idx = stq.topk_tokens(x, scores, self.k, order="time", gate="sigmoid", scales=self.scales)
        return Refined(y, idx, scores)

    def forward(
        self,
        frame_features: Tensor,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        frame_lengths: Tensor | None = None,
    ) -> Tensor:
        """Video tokens.

        Args:
            frame_features: ``[B, T, P, C]`` frame tokens (frame-major).
            text: ``[B, n, text_dim]`` instruction embeddings (e.g. the LLM's input embeddings), or None.
            text_mask: ``[B, n]``, 1 = real token; None = all real.
            frame_lengths: int ``[B]``, clipped to ``[0, T]``; frames ``t >= frame_lengths[b]`` are
                padding: they are selected only where a video has fewer than k real tokens, and then
                count as zero tokens (their gate is 0); a video of 0 frames gives zeros.

        Returns:
            ``[B, sum(num_queries), C]``, the scales' aggregated tokens in scale order.
        """
        refined = self.refine(frame_features, frame_lengths)
        B = frame_features.shape[0]
        text_padding = None
        if text is not None and text_mask is not None:
            text_padding = text_mask == 0  # [B, n]
        outs, start = [], 0
        for s, queries in zip(self.scales, self.queries):
            n_s = -(-self.k // s)
            y = refined.tokens[:, start:start + n_s]  # [B, n_s, C], raw (linear in the input)
            start += n_s
            visual = self.visual_norm(y)
            q = queries[None].expand(B, -1, -1)  # [B, M_s, C]
            for layer in self.tta:
                q = layer(q, visual, text, text_padding)
            outs.append(self._aggregate(q, y))
        return torch.cat(outs, dim=1)

    def _aggregate(self, q: Tensor, y: Tensor) -> Tensor:
        """``softmax(W_q q (W_k y)ᵀ / √d_a) · y``: q ``[B, M, C]``, y ``[B, n, C]`` → ``[B, M, C]``."""
        B, M, C = q.shape
        n, Ha = y.shape[1], self.agg_heads
        da = C // Ha
        # the weights follow the raw tokens' dtype (under autocast the projections come out in
        # bf16 while y stays float32): the output stays a full-precision combination of y
        qa = self.agg_q(q).to(y.dtype)[:, :, None].expand(B, M, Ha, da)  # same logits in every head
        ka = self.agg_k(y).to(y.dtype)[:, :, None].expand(B, n, Ha, da)
        v = y.reshape(B, n, Ha, da)  # channel groups of the raw tokens
        return stq.attention(qa, ka, v).reshape(B, M, C)

    def visual_tokens(self, frame_features, frame_lengths=None, *, text=None, text_mask=None):
        """``(tokens [B, M, C], mask [B, M])``: every token visible except for a video of 0 frames."""
        out = self(frame_features, text, text_mask, frame_lengths)
        B, T = frame_features.shape[:2]
        valid = frame_validity(frame_lengths, B, T, out.device)
        seen = torch.ones(B, dtype=torch.bool, device=out.device) if valid is None else valid.any(1)
        return out, seen[:, None].expand(B, out.shape[1])
