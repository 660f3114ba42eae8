"""A classification head over any video tokenizer (for small CPU demos and probes)."""
from __future__ import annotations

from torch import Tensor, nn

from .common import masked_mean, parameter_counts


class VideoClassifier(nn.Module):
    """``logits = Linear(LN(masked_mean(tokens)))`` over a tokenizer's visual tokens.

    ``tokenizer``: a :class:`VideoQFormer`, :class:`LinVTTokenizer` or :class:`TemporalPoolAdapter`
    (anything with ``visual_tokens(frame_features, frame_lengths, **text) -> (tokens [B, M, C],
    mask [B, M])``); ``dim``: C (default ``tokenizer.out_features``). Trainable: the tokenizer's
    trainable parameters plus ``2·C + C·num_classes + num_classes``.
    """

    def __init__(self, tokenizer: nn.Module, num_classes: int, dim: int | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        dim = tokenizer.out_features if dim is None else dim
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def parameter_counts(self) -> tuple[int, int]:
        return parameter_counts(self)

    def forward(self, frame_features: Tensor, frame_lengths: Tensor | None = None, **text) -> Tensor:
        """frame_features ``[B, T, N, C]`` (+ the tokenizer's text arguments) → logits ``[B, num_classes]``."""
        tokens, mask = self.tokenizer.visual_tokens(frame_features, frame_lengths, **text)
        pooled = masked_mean(tokens, mask[..., None], dim=1)  # [B, C]
        return self.head(self.norm(pooled))
