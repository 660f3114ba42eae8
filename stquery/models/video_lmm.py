"""A video LMM: frozen vision encoder → video tokenizer → language projection → frozen causal LM (docs/models.md §4.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import freeze, parameter_counts, run_in_own_dtype
from .linvt import LinVTTokenizer
from .temporal_pool import TemporalPoolAdapter
from .video_qformer import VideoQFormer, load_instructblip

TOKENIZERS = ("qformer", "linvt", "pool")
LLAVA_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"  # LLaVA-1.5's conversation template


@dataclass
class VideoLMMOutput:
    """``loss``: mean next-token cross-entropy of the answer tokens (None without labels), i.e.
    ``loss_sum / max(answer_tokens, 1)``; ``logits`` ``[B, n', vocab]`` over the LLM's input (the text
    with the visual tokens placed, n' = n − r + M); ``labels`` ``[B, n']`` aligned with ``logits``
    (−100 on visual tokens); ``visual_tokens``: M."""

    loss: Tensor | None
    logits: Tensor
    visual_tokens: int
    labels: Tensor | None = None
    loss_sum: Tensor | None = None
    answer_tokens: Tensor | None = None


class VideoLMM(nn.Module):
    """Video LMM (docs/models.md §4.4): the LLM reads the text with the video's visual tokens placed in it.

    ``vision_model`` (frozen, run without grad; None when frame features are precomputed) maps
    ``pixel_values [B, T, 3, H, W]`` to frame tokens ``[B, T, N, Cv]``; ``frame_projection``
    (frozen, token-wise; LLaVA + LinVT: LLaVA's projector) maps each frame token to the tokenizer's
    width; ``video_tokenizer`` (a :class:`VideoQFormer`, :class:`LinVTTokenizer` or
    :class:`TemporalPoolAdapter`) makes visual tokens ``[B, M, C]`` and a validity mask;
    ``projection`` maps them to the LLM width K (``nn.Identity`` when the tokenizer's output is
    already aligned); the frozen ``language_model`` (a causal LM taking ``inputs_embeds``) reads them.

    **Placement.** With ``placeholder_token_id`` set and present in ``input_ids``, each row's one
    contiguous run of it (one token, or a processor's expansion of any length r) is replaced by the
    M visual tokens: LLaVA's ``<image>`` (its processor expands it to the image's patch count),
    InstructBLIP-Video's ``<video>`` run (L queries × frames). Without placeholders the visual
    tokens go before the text, which is where InstructBLIP(-Video) puts them (before BOS). The LLM
    input is then what the HF model builds from the same ``input_ids``. Padded visual tokens
    (padded frames) are masked out of the LLM's attention, and position ids are the running count of
    real tokens, so padding changes nothing. The run length is read on the host (it sets the
    sequence length).

    Loss (MTransLLaMA eq. 11–12): mean next-token cross-entropy on the positions whose ``labels``
    are not −100 (build them with :meth:`answer_labels`: the answer tokens only).

    Trainable parameters: the tokenizer's trainable ones plus the projection's when it is new
    (``projection_trainable``). With InstructBLIP-Vicuna-7B (:meth:`from_instructblip`,
    ``tokenizer="qformer"``): VideoQFormer's 3.33 M of ≈ 7.9 B, about 0.04 %;
    :meth:`parameter_counts` gives the exact numbers for a loaded model.

    Args:
        language_model: a causal LM (frozen here).
        video_tokenizer: one of the three tokenizers.
        projection: tokenizer width → LLM width; None = ``nn.Identity``.
        vision_model: a transformers vision model (frozen here), or None for precomputed features.
        vision_feature_layer: None = ``last_hidden_state``, an index into ``hidden_states``, or a
            list of indices whose hidden states are concatenated along channels (as LLaVA does).
        drop_cls: drop the first vision token (CLS) of every frame (LLaVA's ``"default"`` strategy).
        projection_trainable: train ``projection`` (for a freshly initialised one).
        frame_projection: frozen token-wise module applied to the frame tokens before the tokenizer.
        placeholder_token_id: the token id whose run in ``input_ids`` the visual tokens replace.
        prompt_template: the family's prompt around an instruction (``{prompt}``), for the trainer.
    """

    def __init__(
        self,
        language_model: nn.Module,
        video_tokenizer: nn.Module,
        projection: nn.Module | None = None,
        vision_model: nn.Module | None = None,
        *,
        vision_feature_layer: int | list[int] | None = None,
        drop_cls: bool = False,
        projection_trainable: bool = False,
        frame_projection: nn.Module | None = None,
        placeholder_token_id: int | None = None,
        prompt_template: str = "{prompt}",
    ):
        super().__init__()
        if not isinstance(video_tokenizer, (VideoQFormer, LinVTTokenizer, TemporalPoolAdapter)):
            raise TypeError(f"video_tokenizer: expected VideoQFormer, LinVTTokenizer or TemporalPoolAdapter, got {type(video_tokenizer).__name__}")
        if "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template: expected a string with '{{prompt}}', got {prompt_template!r}")
        self.language_model = freeze(language_model)
        self.vision_model = None if vision_model is None else freeze(vision_model)
        self.frame_projection = None if frame_projection is None else freeze(frame_projection)
        self.video_tokenizer = video_tokenizer
        self.projection = nn.Identity() if projection is None else projection
        if not projection_trainable:
            freeze(self.projection)
        self.vision_feature_layer, self.drop_cls = vision_feature_layer, drop_cls
        self.placeholder_token_id, self.prompt_template = placeholder_token_id, prompt_template

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
        """From an InstructBLIP or InstructBLIP-Video model (``InstructBlip[Video]ForConditionalGeneration``)
        or its local directory.

        Weights: ``vision_model`` → :attr:`vision_model`, ``qformer`` and ``query_tokens`` → the
        :class:`VideoQFormer` (:meth:`VideoQFormer.from_instructblip`), ``language_projection`` →
        :attr:`projection`, ``language_model`` → :attr:`language_model`; all frozen. The placeholder
        is the checkpoint's ``video_token_id`` (Video) or ``image_token_id``; without one in the
        prompt the L·T query tokens go before the text, as the InstructBLIP-Video processor puts them.

        ``tokenizer="qformer"``: :class:`VideoQFormer` over the Q-Former, all vision tokens; with
        ``temporal=False, dar=False`` it is InstructBLIP-Video itself.
        ``"linvt"`` / ``"pool"``: InstructBLIP has no token-wise connector from vision width to the
        LLM, so a new ``Linear(Cv, K)`` is created and trained (LinVT: the projection after the
        tokenizer; pool: the alignment module of :class:`TemporalPoolAdapter`); CLS is dropped. For
        these two tokenizers prefer a LLaVA-style model (:meth:`from_llava`).
        """
        model = load_instructblip(model_or_path, dtype)
        if not model.config.use_decoder_only_language_model:
            raise ValueError("from_instructblip: only decoder-only language models (e.g. Vicuna) are supported")
        kw = dict(tokenizer_kwargs or {})
        cv = model.config.vision_config.hidden_size
        lm = model.language_model
        K = lm.config.hidden_size
        ref = next(model.vision_model.parameters())
        place = dict(placeholder_token_id=getattr(model.config, "video_token_id", None) or model.config.image_token_id)
        if tokenizer == "qformer":
            tok = VideoQFormer(model.qformer, model.query_tokens, **kw)
            return cls(lm, tok, model.language_projection, model.vision_model, **place)
        if tokenizer == "linvt":
            tok = LinVTTokenizer(cv, text_dim=K, **kw).to(ref.device, ref.dtype)
            proj = nn.Linear(cv, K).to(ref.device, ref.dtype)
            return cls(lm, tok, proj, model.vision_model, drop_cls=True, projection_trainable=True, **place)
        if tokenizer == "pool":
            tok = TemporalPoolAdapter(nn.Linear(cv, K).to(ref.device, ref.dtype), train_alignment=True, **kw)
            return cls(lm, tok, None, model.vision_model, drop_cls=True, **place)
        raise ValueError(f"tokenizer: expected one of {TOKENIZERS}, got {tokenizer!r}")

    @classmethod
    def from_llava(
        cls,
        model_or_path,
        *,
        tokenizer: str = "pool",
        dtype: torch.dtype | None = None,
        tokenizer_kwargs: dict | None = None,
        prompt_template: str = LLAVA_PROMPT,
    ) -> "VideoLMM":
        """From a LLaVA-style model (``LlavaForConditionalGeneration``; ``LlavaNextForConditionalGeneration``
        too, each frame at the base resolution, no any-res tiling) or its local directory.

        Frames go through the model's own ``vision_tower`` with its ``vision_feature_layer`` and
        ``vision_feature_select_strategy`` (``"default"`` drops CLS), as LLaVA's
        ``get_image_features`` does. The model's ``multi_modal_projector`` is the alignment module:

        - ``tokenizer="pool"`` (RED-VILLM): :class:`TemporalPoolAdapter` with the projector as the
          frozen spatial alignment ``g_z`` and a trainable copy of it, initialised from its weights,
          as the temporal ``g_t`` (the only trainable part);
        - ``tokenizer="linvt"``: the projector (frozen) maps every frame token to the LLM width K and
          :class:`LinVTTokenizer` (``dim = text_dim = K``, all trainable) condenses the projected
          tokens: its outputs are convex combinations of them, which the LLM already understands.

        The whole LLaVA model, frozen, is the language model (called with ``inputs_embeds`` only);
        the placeholder is its ``image_token_id``; ``prompt_template`` is LLaVA-1.5's by default.
        """
        model = model_or_path
        if not isinstance(model, nn.Module):
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(str(model_or_path), local_files_only=True, dtype=dtype)
        inner = model.model if hasattr(getattr(model, "model", None), "vision_tower") else model  # transformers < 4.52: flat
        if not all(hasattr(inner, a) for a in ("vision_tower", "multi_modal_projector")):
            raise TypeError(f"model_or_path: expected a LLaVA-style model (vision_tower, multi_modal_projector), got {type(model).__name__}")
        cfg = model.config
        strategy = cfg.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy: expected 'default' or 'full', got {strategy!r}")
        kw = dict(tokenizer_kwargs or {})
        projector = inner.multi_modal_projector
        common = dict(vision_feature_layer=cfg.vision_feature_layer, drop_cls=strategy == "default",
                      placeholder_token_id=cfg.image_token_id, prompt_template=prompt_template)
        if tokenizer == "pool":
            return cls(model, TemporalPoolAdapter(projector, **kw), None, inner.vision_tower, **common)
        if tokenizer == "linvt":
            K = cfg.text_config.hidden_size
            ref = next(projector.parameters())
            tok = LinVTTokenizer(K, text_dim=K, **kw).to(ref.device, ref.dtype)
            return cls(model, tok, None, inner.vision_tower, frame_projection=projector, **common)
        raise ValueError(f"tokenizer: expected 'pool' or 'linvt' for a LLaVA model, got {tokenizer!r}")

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
        for frozen in (self.language_model, self.vision_model, self.frame_projection):
            if frozen is not None:
                frozen.eval()
        return self

    def keep_trainable_float32(self) -> "VideoLMM":
        """Trainable weights in float32 while the frozen parts stay in their (low) dtype:
        :meth:`VideoQFormer.keep_trainable_float32`, a pooling adapter's trainable alignment copies,
        a LinVT tokenizer (new) wholly, a trainable projection. :meth:`forward` casts at the boundaries."""
        tok = self.video_tokenizer
        if isinstance(tok, VideoQFormer):
            tok.keep_trainable_float32()
        elif isinstance(tok, TemporalPoolAdapter):
            for module in (tok.temporal_alignment, tok.alignment):
                if any(p.requires_grad for p in module.parameters()):
                    module.float()
        else:
            tok.float()
        if any(p.requires_grad for p in self.projection.parameters()):
            self.projection.float()
        return self

    def _tokenizer_dtype(self) -> torch.dtype:
        """The dtype the video tokenizer takes its frame features in."""
        tok = self.video_tokenizer
        if isinstance(tok, VideoQFormer):
            return next(tok.qformer.parameters()).dtype
        if isinstance(tok, TemporalPoolAdapter):
            return next(tok.alignment.parameters()).dtype
        return next(tok.parameters()).dtype

    def encode_frames(self, pixel_values: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` → frame tokens ``[B, T, N, Cv]`` with the frozen vision model
        (``vision_feature_layer`` selects them; CLS is not dropped here)."""
        if self.vision_model is None:
            raise ValueError("pixel_values: this VideoLMM has no vision model; pass frame_features")
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values: expected [B, T, 3, H, W], got {tuple(pixel_values.shape)}")
        B, T = pixel_values.shape[:2]
        layer = self.vision_feature_layer
        with torch.no_grad():
            out = self.vision_model(pixel_values=pixel_values.flatten(0, 1), output_hidden_states=layer is not None)
            if layer is None:
                feats = out.last_hidden_state
            elif isinstance(layer, int):
                feats = out.hidden_states[layer]
            else:
                feats = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        return feats.reshape(B, T, *feats.shape[1:])

    def visual_embeds(
        self,
        *,
        pixel_values: Tensor | None = None,
        frame_features: Tensor | None = None,
        frame_lengths: Tensor | None = None,
        qformer_input_ids: Tensor | None = None,
        qformer_attention_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(tokens [B, M, K], mask [B, M] bool)``: the visual tokens the LLM reads (before placement).

        ``text`` ``[B, n, K]`` / ``text_mask`` ``[B, n]``: the instruction's LLM embeddings, LinVT's
        text condition; ``qformer_input_ids`` / ``qformer_attention_mask``: the VideoQFormer's.
        """
        if (pixel_values is None) == (frame_features is None):
            raise ValueError("pass exactly one of pixel_values [B, T, 3, H, W] and frame_features [B, T, N, C]")
        if frame_features is None:
            frame_features = self.encode_frames(pixel_values)
        if self.drop_cls:
            frame_features = frame_features[:, :, 1:]
        if self.frame_projection is not None:
            with torch.no_grad():
                frame_features = run_in_own_dtype(self.frame_projection, frame_features)
        frame_features = frame_features.to(self._tokenizer_dtype())
        tok = self.video_tokenizer
        if isinstance(tok, VideoQFormer):
            vis, mask = tok.visual_tokens(
                frame_features, frame_lengths, input_ids=qformer_input_ids, attention_mask=qformer_attention_mask
            )
        elif isinstance(tok, LinVTTokenizer):
            cond = text.to(frame_features.dtype) if tok.text_dim and text is not None else None
            vis, mask = tok.visual_tokens(frame_features, frame_lengths, text=cond, text_mask=text_mask)
        else:
            vis, mask = tok.visual_tokens(frame_features, frame_lengths)
        proj = next(self.projection.parameters(), None)
        return self.projection(vis if proj is None else vis.to(proj.dtype)), mask

    def _placement(self, input_ids: Tensor, M: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(is_visual [B, n'], text_index [B, n'], visual_index [B, n'])``: where each LLM input
        position takes its embedding from (see the class doc, Placement)."""
        B, n = input_ids.shape
        pos = torch.arange(n, device=input_ids.device)[None, :]
        if self.placeholder_token_id is None:
            ph = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            ph = input_ids == self.placeholder_token_id
        counts = ph.sum(1)  # [B]
        first = torch.where(counts > 0, ph.int().argmax(1), 0)  # [B]
        run = (pos >= first[:, None]) & (pos < (first + counts)[:, None])
        lo, hi, contiguous = torch.stack([counts.min(), counts.max(), (run == ph).all()]).tolist()
        if lo != hi or not contiguous:
            raise ValueError(
                f"input_ids: every row needs one contiguous run of the placeholder token {self.placeholder_token_id}, "
                f"the same length in every row (or none anywhere), got run lengths {counts.tolist()}"
            )
        r = int(hi)
        j = torch.arange(n - r + M, device=input_ids.device)[None, :]
        s = first[:, None]
        is_visual = (j >= s) & (j < s + M)  # [B, n']
        text_index = torch.where(j < s, j, j - M + r).clamp(0, n - 1)
        visual_index = (j - s).clamp(0, max(M - 1, 0))
        return is_visual, text_index, visual_index

    def _inputs(self, input_ids, attention_mask, labels, visual_kwargs):
        """``(inputs_embeds [B, n', K], attention_mask [B, n'], labels [B, n'] | None, M)``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.language_model.get_input_embeddings()(input_ids)  # [B, n, K]
        # LinVT's text condition is the instruction: prompt tokens (never the answer being learned),
        # not the placeholder.
        cond = attention_mask.bool() if labels is None else attention_mask.bool() & (labels == -100)
        if self.placeholder_token_id is not None:
            cond = cond & (input_ids != self.placeholder_token_id)
        vis, vis_mask = self.visual_embeds(**visual_kwargs, text=text, text_mask=cond)
        vis = vis.to(text.dtype)
        B, M, K = vis.shape
        is_vis, ti, vi = self._placement(input_ids, M)

        def pick(v, t):
            if v.dim() == 3:
                return torch.where(is_vis[..., None], v.gather(1, vi[..., None].expand(-1, -1, K)),
                                   t.gather(1, ti[..., None].expand(-1, -1, K)))
            return torch.where(is_vis, v.gather(1, vi), t.gather(1, ti))

        embeds = pick(vis, text)
        mask = pick(vis_mask.to(attention_mask.dtype), attention_mask)
        if labels is not None:
            labels = pick(torch.full_like(vis_mask, -100, dtype=labels.dtype), labels)
        return embeds, mask, labels, M

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
            input_ids: ``[B, n]`` LLM tokens (prompt and answer, with or without the placeholder
                run); attention_mask ``[B, n]`` (1 = real).
            labels: ``[B, n]``, the answer tokens and −100 elsewhere (:meth:`answer_labels`).
            pixel_values: ``[B, T, 3, H, W]``, or frame_features ``[B, T, N, Cv]`` (precomputed).
            frame_lengths: int ``[B]``, real frames per video (the rest is padding), clipped to
                ``[0, T]``; a video of 0 frames gives no visible visual tokens.
            qformer_input_ids / qformer_attention_mask: ``[B, n_q]`` Q-Former (BERT) tokens of the
                instruction, for the ``VideoQFormer`` tokenizer's early fusion.
        """
        visual = dict(pixel_values=pixel_values, frame_features=frame_features, frame_lengths=frame_lengths,
                      qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask)
        inputs_embeds, mask, full_labels, M = self._inputs(input_ids, attention_mask, labels, visual)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.language_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids).logits
        if full_labels is None:
            return VideoLMMOutput(None, logits, M)
        target = full_labels[:, 1:]
        loss_sum = nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="sum"
        )
        count = (target != -100).sum()
        return VideoLMMOutput(loss_sum / count.clamp(min=1), logits, M, full_labels, loss_sum, count)

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
        visual = dict(pixel_values=pixel_values, frame_features=frame_features, frame_lengths=frame_lengths,
                      qformer_input_ids=qformer_input_ids, qformer_attention_mask=qformer_attention_mask)
        inputs_embeds, mask, _, _ = self._inputs(input_ids, attention_mask, None, visual)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=mask, **generate_kwargs)
