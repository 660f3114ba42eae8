"""A video LMM: frozen vision encoder → video tokenizer → language projection → frozen causal LM (SPEC §4.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import freeze, parameter_counts
from .linvt import LinVTTokenizer
from .temporal_pool import TemporalPoolAdapter
from .video_qformer import VideoQFormer

TOKENIZERS = ("qformer", "linvt", "pool")


@dataclass
class VideoLMMOutput:
    """``loss``: answer-token cross-entropy (None without labels); ``logits`` ``[B, M + n, vocab]``
    over ``[visual tokens; text]``; ``visual_tokens``: M."""

    loss: Tensor | None
    logits: Tensor
    visual_tokens: int


class VideoLMM(nn.Module):
    """Video LMM (SPEC §4.4): the LLM reads ``[projection(tokenizer(frames)); text]``.

    ``vision_model`` (frozen, run without grad; None when frame features are precomputed) maps
    ``pixel_values [B, T, 3, H, W]`` to frame tokens ``[B, T, N, Cv]``; ``video_tokenizer`` (a
    :class:`VideoQFormer`, :class:`LinVTTokenizer` or :class:`TemporalPoolAdapter`) makes visual
    tokens ``[B, M, C]`` and a validity mask; ``projection`` maps them to the LLM width K (for
    :class:`TemporalPoolAdapter`, whose alignment already does, ``nn.Identity``); the frozen
    ``language_model`` (``AutoModelForCausalLM``) reads the visual tokens before the text.
    Padded visual tokens (padded frames) are masked out of the LLM's attention, and position ids
    are the running count of real tokens, so padding changes nothing.

    Loss (MTransLLaMA eq. 11–12): mean token cross-entropy on the positions whose ``labels`` are not
    −100 (build them with :meth:`answer_labels`: the answer tokens only).

    Trainable parameters: the tokenizer's trainable ones plus the projection's when it is new
    (``projection_trainable``). With InstructBLIP-Vicuna-7B (:meth:`from_instructblip`,
    ``tokenizer="qformer"``): VideoQFormer's 3.33 M of ≈ 7.9 B, about 0.04 %;
    :meth:`parameter_counts` gives the exact numbers for a loaded model.

    Args:
        language_model: a causal LM (frozen here).
        video_tokenizer: one of the three tokenizers.
        projection: tokenizer width → LLM width; None = ``nn.Identity``.
        vision_model: a transformers vision model (frozen here), or None for precomputed features.
        vision_feature_layer: None = ``last_hidden_state``, else an index into ``hidden_states``.
        drop_cls: drop the first vision token (CLS) of every frame.
        projection_trainable: train ``projection`` (for a freshly initialised one).
    """

    def __init__(
        self,
        language_model: nn.Module,
        video_tokenizer: nn.Module,
        projection: nn.Module | None = None,
        vision_model: nn.Module | None = None,
        *,
        vision_feature_layer: int | None = None,
        drop_cls: bool = False,
        projection_trainable: bool = False,
    ):
        super().__init__()
        if not isinstance(video_tokenizer, (VideoQFormer, LinVTTokenizer, TemporalPoolAdapter)):
            raise TypeError(f"video_tokenizer: expected VideoQFormer, LinVTTokenizer or TemporalPoolAdapter, got {type(video_tokenizer).__name__}")
        self.language_model = freeze(language_model)
        self.vision_model = None if vision_model is None else freeze(vision_model)
        self.video_tokenizer = video_tokenizer
        self.projection = nn.Identity() if projection is None else projection
        if not projection_trainable:
            freeze(self.projection)
        self.vision_feature_layer, self.drop_cls = vision_feature_layer, drop_cls

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_instructblip(
        cls,
        model_or_path,
        *,
        tokenizer: str = "qformer",
        dtype: torch.dtype | None = None,
        tokenizer_kwargs: dict | None = None,
    ) -> "VideoLMM":
        """From an InstructBLIP model (``InstructBlipForConditionalGeneration``) or its local directory.

        ``tokenizer="qformer"``: :class:`VideoQFormer` over InstructBLIP's Q-Former and queries,
        InstructBLIP's (frozen) ``language_projection``, all vision tokens.
        ``"linvt"`` / ``"pool"``: InstructBLIP has no token-wise connector from vision width to the
        LLM, so a new ``Linear(Cv, K)`` is created and trained (LinVT: the projection after the
        tokenizer; pool: the alignment module of :class:`TemporalPoolAdapter`); CLS is dropped.
        """
        model = model_or_path
        if not isinstance(model, nn.Module):
            from transformers import InstructBlipForConditionalGeneration

            model = InstructBlipForConditionalGeneration.from_pretrained(model_or_path, local_files_only=True, dtype=dtype)
        if not model.config.use_decoder_only_language_model:
            raise ValueError("from_instructblip: only decoder-only language models (e.g. Vicuna) are supported")
        kw = dict(tokenizer_kwargs or {})
        cv = model.config.vision_config.hidden_size
        lm = model.language_model
        K = lm.config.hidden_size
        ref = next(model.vision_model.parameters())
        if tokenizer == "qformer":
            tok = VideoQFormer.from_qformer(model.qformer, model.query_tokens, **kw)
            return cls(lm, tok, model.language_projection, model.vision_model)
        if tokenizer == "linvt":
            tok = LinVTTokenizer(cv, text_dim=K, **kw).to(ref.device, ref.dtype)
            proj = nn.Linear(cv, K).to(ref.device, ref.dtype)
            return cls(lm, tok, proj, model.vision_model, drop_cls=True, projection_trainable=True)
        if tokenizer == "pool":
            tok = TemporalPoolAdapter(nn.Linear(cv, K).to(ref.device, ref.dtype), train_alignment=True, **kw)
            return cls(lm, tok, None, model.vision_model, drop_cls=True)
        raise ValueError(f"tokenizer: expected one of {TOKENIZERS}, got {tokenizer!r}")

    @classmethod
    def from_pretrained(
        cls,
        language_model,
        video_tokenizer: nn.Module,
        *,
        projection: nn.Module | None = None,
        vision_model=None,
        dtype: torch.dtype | None = None,
        vision_feature_layer: int | None = None,
        drop_cls: bool = False,
        projection_trainable: bool = False,
    ) -> "VideoLMM":
        """Load the LLM (and vision encoder) from local paths; modules are used as given.

        ``language_model``: a directory for ``AutoModelForCausalLM`` (e.g. Vicuna) or a module.
        ``vision_model``: a directory for ``AutoModel`` (the ``.vision_model`` of a CLIP/SigLIP/BLIP
        checkpoint is taken), a module, or None for precomputed frame features.
        """
        from transformers import AutoModel, AutoModelForCausalLM

        if not isinstance(language_model, nn.Module):
            language_model = AutoModelForCausalLM.from_pretrained(language_model, local_files_only=True, dtype=dtype)
        if vision_model is not None and not isinstance(vision_model, nn.Module):
            vision_model = AutoModel.from_pretrained(vision_model, local_files_only=True, dtype=dtype)
            vision_model = getattr(vision_model, "vision_model", vision_model)
        return cls(
            language_model, video_tokenizer, projection, vision_model,
            vision_feature_layer=vision_feature_layer, drop_cls=drop_cls, projection_trainable=projection_trainable,
        )

    # ------------------------------------------------------------------ helpers
    def parameter_counts(self) -> tuple[int, int]:
        """``(trainable, total)``."""
        return parameter_counts(self)

    @staticmethod
    def answer_labels(input_ids: Tensor, answer_mask: Tensor) -> Tensor:
        """Labels for the loss: ``input_ids`` where ``answer_mask`` (bool/0-1 ``[B, n]``) is set, −100 elsewhere."""
        return input_ids.masked_fill(~answer_mask.bool(), -100)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval mode (no dropout): they are fixed feature extractors.
        self.language_model.eval()
        if self.vision_model is not None:
            self.vision_model.eval()
        return self

    def keep_trainable_float32(self) -> "VideoLMM":
        """Trainable weights in float32 while the frozen LLM / vision encoder stay in their (low)
        dtype: :meth:`VideoQFormer.keep_trainable_float32`; a LinVT / pooling tokenizer (new modules)
        wholly float32; a trainable projection float32. :meth:`forward` casts at the boundaries."""
        tok = self.video_tokenizer
        if isinstance(tok, VideoQFormer):
            tok.keep_trainable_float32()
        else:
            tok.float()
        if any(p.requires_grad for p in self.projection.parameters()):
            self.projection.float()
        return self

    def _tokenizer_dtype(self) -> torch.dtype:
        """The dtype the video tokenizer takes its frame features in."""
        tok = self.video_tokenizer
        return next((tok.qformer if isinstance(tok, VideoQFormer) else tok).parameters()).dtype

    def encode_frames(self, pixel_values: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` → frame tokens ``[B, T, N, Cv]`` with the frozen vision model."""
        if self.vision_model is None:
            raise ValueError("pixel_values: this VideoLMM has no vision model; pass frame_features")
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values: expected [B, T, 3, H, W], got {tuple(pixel_values.shape)}")
        B, T = pixel_values.shape[:2]
        with torch.no_grad():
            out = self.vision_model(
                pixel_values=pixel_values.flatten(0, 1),
                output_hidden_states=self.vision_feature_layer is not None,
            )
            feats = out.last_hidden_state if self.vision_feature_layer is None else out.hidden_states[self.vision_feature_layer]
        return feats.reshape(B, T, *feats.shape[1:])

    def _prefix(self, input_ids, attention_mask, labels, pixel_values, frame_features, frame_lengths,
                qformer_input_ids, qformer_attention_mask):
        """``(inputs_embeds [B, M+n, K], attention_mask [B, M+n], labels [B, M+n] | None, M)``."""
        if (pixel_values is None) == (frame_features is None):
            raise ValueError("pass exactly one of pixel_values [B, T, 3, H, W] and frame_features [B, T, N, C]")
        if frame_features is None:
            frame_features = self.encode_frames(pixel_values)
        if self.drop_cls:
            frame_features = frame_features[:, :, 1:]
        frame_features = frame_features.to(self._tokenizer_dtype())
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embed = self.language_model.get_input_embeddings()
        text = embed(input_ids)  # [B, n, K]
        tok = self.video_tokenizer
        if isinstance(tok, VideoQFormer):
            vis, vis_mask = tok.visual_tokens(
                frame_features, frame_lengths, input_ids=qformer_input_ids, attention_mask=qformer_attention_mask
            )
        elif isinstance(tok, LinVTTokenizer):
            # The text condition is the instruction: the prompt tokens, never the answer being learned.
            cond = attention_mask.bool() if labels is None else attention_mask.bool() & (labels == -100)
            vis, vis_mask = tok.visual_tokens(
                frame_features, frame_lengths, text=text.to(frame_features.dtype) if tok.text_dim else None,
                text_mask=cond,
            )
        else:
            vis, vis_mask = tok.visual_tokens(frame_features, frame_lengths)
        proj = next(self.projection.parameters(), None)
        vis = self.projection(vis if proj is None else vis.to(proj.dtype)).to(text.dtype)  # [B, M, K]
        M = vis.shape[1]
        inputs_embeds = torch.cat([vis, text], dim=1)
        mask = torch.cat([vis_mask.to(attention_mask.dtype), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((labels.shape[0], M), -100), labels], dim=1)
        return inputs_embeds, mask, labels, M

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        pixel_values: Tensor | None = None,
        frame_features: Tensor | None = None,
        frame_lengths: Tensor | None = None,
        qformer_input_ids: Tensor | None = None,
        qformer_attention_mask: Tensor | None = None,
    ) -> VideoLMMOutput:
        """Teacher-forced pass.

        Args:
            input_ids: ``[B, n]`` LLM tokens (prompt and answer); attention_mask ``[B, n]`` (1 = real).
            labels: ``[B, n]``, the answer tokens and −100 elsewhere (:meth:`answer_labels`).
            pixel_values: ``[B, T, 3, H, W]``, or frame_features ``[B, T, N, Cv]`` (precomputed).
            frame_lengths: int ``[B]``, real frames per video (the rest is padding).
            qformer_input_ids / qformer_attention_mask: ``[B, n_q]`` Q-Former (BERT) tokens of the
                instruction, for the ``VideoQFormer`` tokenizer's early fusion.
        """
        inputs_embeds, mask, full_labels, M = self._prefix(
            input_ids, attention_mask, labels, pixel_values, frame_features, frame_lengths,
            qformer_input_ids, qformer_attention_mask,
        )
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, labels=full_labels
        )
        return VideoLMMOutput(out.loss, out.logits, M)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        pixel_values: Tensor | None = None,
        frame_features: Tensor | None = None,
        frame_lengths: Tensor | None = None,
        qformer_input_ids: Tensor | None = None,
        qformer_attention_mask: Tensor | None = None,
        **generate_kwargs,
    ) -> Tensor:
        """Answer tokens ``[B, new]`` for the prompts ``input_ids`` (left-padded for batches).

        ``generate_kwargs`` go to the LLM's ``generate`` (``max_new_tokens``, ``do_sample``, …).
        """
        inputs_embeds, mask, _, _ = self._prefix(
            input_ids, attention_mask, None, pixel_values, frame_features, frame_lengths,
            qformer_input_ids, qformer_attention_mask,
        )
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=mask, **generate_kwargs)
