"""RED-VILLM's temporal adapter (docs/models.md §4.3; "Resource-efficient development of video LLMs", Sec. 3.2–3.3)."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

import stquery as stq

from .common import freeze, frame_validity, parameter_counts, run_in_own_dtype


class TemporalPoolAdapter(nn.Module):
    """Spatial/temporal pooling of frame tokens, each aligned to the LLM (docs/models.md §4.3).

    ``temporal, spatial = stq.st_pool(x)``: ``t_i = mean_p x[:, i]`` (``[B, T, C]``) and
    ``z_p = mean_t x[:, :, p]`` (``[B, P, C]``), RED-VILLM's spatial/temporal pooling.
    ``z`` goes through the image LMM's alignment module ``g_z`` (frozen), ``t`` through
    ``g_t``, a copy of it initialised from its weights (the only trainable part; RED-VILLM Tab. 5:
    a fresh module hurts). Output ``[B, T + P, K] = concat(g_t(t), g_z(z))``.

    ``alignment`` must map tokens ``[B, N, C] → [B, N, K]`` independently per token (a LLaVA-style
    Linear or MLP projector). Trainable count = that module's size (e.g. LLaVA-1.5's 2-layer
    projector, 1024→4096→4096: 21.0 M; ``train_alignment=True`` doubles it).

    Args:
        alignment: the image LMM's token-wise alignment module; used in place (not copied) and frozen
            unless ``train_alignment``.
        train_alignment: also train ``alignment`` (for a freshly initialised one).
    """

    def __init__(self, alignment: nn.Module, *, train_alignment: bool = False):
        super().__init__()
        self.temporal_alignment = copy.deepcopy(alignment)
        for p in self.temporal_alignment.parameters():
            p.requires_grad_(True)
        self.alignment = alignment if train_alignment else freeze(alignment)

    @property
    def out_features(self) -> int:
        """K, the output width of the alignment module (its last ``nn.Linear``)."""
        linears = [m for m in self.alignment.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise AttributeError("out_features: the alignment module has no nn.Linear; pass dim explicitly")
        return linears[-1].out_features

    def parameter_counts(self) -> tuple[int, int]:
        return parameter_counts(self)

    def forward(self, frame_features: Tensor, frame_lengths: Tensor | None = None) -> Tensor:
        """frame_features ``[B, T, P, C]`` → ``[B, T + P, K]`` (see :meth:`visual_tokens`)."""
        return self.visual_tokens(frame_features, frame_lengths)[0]

    def visual_tokens(self, frame_features: Tensor, frame_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(tokens [B, T + P, K], mask [B, T + P] bool)``.

        frame_lengths: int ``[B]``, clipped to ``[0, T]``; padded frames (``t >= frame_lengths[b]``)
        are left out of the spatial mean, and their temporal tokens are 0 and masked out. A video of
        0 frames has all its tokens 0 and masked out.
        """
        if frame_features.dim() != 4:
            raise ValueError(f"frame_features: expected [B, T, P, C], got {tuple(frame_features.shape)}")
        B, T, P, C = frame_features.shape
        valid = frame_validity(frame_lengths, B, T, frame_features.device)  # [B, T] | None
        x = frame_features
        if valid is not None:
            x = x * valid[:, :, None, None].to(x.dtype)  # zero the padding (a copy, only when padded)
        temporal, spatial = stq.st_pool(x)  # [B, T, C], [B, P, C]
        t = run_in_own_dtype(self.temporal_alignment, temporal)  # [B, T, K]
        if valid is None:
            z = run_in_own_dtype(self.alignment, spatial)  # [B, P, K]
            mask = torch.ones(B, T + P, dtype=torch.bool, device=x.device)
            return torch.cat([t.to(z.dtype), z], dim=1), mask
        real = valid.sum(1)  # [B]: the clipped lengths
        spatial = spatial * (T / real.clamp(min=1).to(spatial.dtype))[:, None, None]  # mean over the real frames
        z = run_in_own_dtype(self.alignment, spatial)
        z = z * (real > 0)[:, None, None].to(z.dtype)
        t = t * valid[:, :, None].to(t.dtype)
        mask = torch.cat([valid, (real > 0)[:, None].expand(B, P)], dim=1)
        return torch.cat([t.to(z.dtype), z], dim=1), mask
