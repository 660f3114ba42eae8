"""MTransLLaMA's video Q-Former (docs/models.md §4.1): an InstructBLIP Q-Former turned into a video tokenizer.

Early text fusion (eq. 5), per-frame cross-attention (eq. 6) and temporal self-attention that reuses
the spatial self-attention's own Wq/Wk/Wv, output dense and LayerNorm (eq. 7) with separate LoRA
(eq. 8) and Dynamic Attention Routing (eq. 9–10). The Q-Former's modules are used as they are (the
frozen weights and their state-dict keys stay the Q-Former's); only the attention core is replaced
by :func:`stquery.attention` / :func:`stquery.temporal_attention`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import stquery as stq

from .common import (
    LoRA, Router, attend, frame_validity, freeze, grid_neighbourhood_masks, masked_mean, parameter_counts, run_in_own_dtype,
)


INSTRUCTBLIP_CLASSES = ("InstructBlipForConditionalGeneration", "InstructBlipVideoForConditionalGeneration")


def load_instructblip(model_or_path, dtype=None) -> nn.Module:
    """An ``InstructBlip[Video]ForConditionalGeneration`` as given, or loaded from a local directory
    (nothing is downloaded)."""
    model = model_or_path
    if not isinstance(model, nn.Module):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(str(model_or_path), local_files_only=True, dtype=dtype)
    if type(model).__name__ not in INSTRUCTBLIP_CLASSES:
        raise TypeError(f"model_or_path: expected one of {INSTRUCTBLIP_CLASSES}, got {type(model).__name__}")
    return model


class _LayerAdapters(nn.Module):
    """The trainable additions of one Q-Former layer: LoRA on Wq/Wv (spatial and temporal sets) and routers."""

    def __init__(self, dim: int, rank: int, lora_alpha, hidden: int, p_spatial: int, p_cross: int, p_temporal: int):
        super().__init__()
        self.lora_q_spatial = LoRA(dim, dim, rank, lora_alpha)
        self.lora_v_spatial = LoRA(dim, dim, rank, lora_alpha)
        self.lora_q_temporal = LoRA(dim, dim, rank, lora_alpha) if p_temporal else None
        self.lora_v_temporal = LoRA(dim, dim, rank, lora_alpha) if p_temporal else None
        # A router only where there is something to route (p > 1); p == 1 means alpha ≡ 1.
        self.router_spatial = Router(dim, p_spatial, hidden) if p_spatial > 1 else None
        self.router_cross = Router(dim, p_cross, hidden) if p_cross > 1 else None
        self.router_temporal = Router(dim, p_temporal, hidden) if p_temporal > 1 else None


class VideoQFormer(nn.Module):
    """Video Q-Former of MTransLLaMA (docs/models.md §4.1) over a frozen ``InstructBlipQFormerModel``.

    Queries are replicated per frame, ``q[t, l] = query_tokens[l] + e_t[t] + e_s[l]`` (eq. 4), and
    concatenated with the instruction text ``[queries; text]`` (text shared by the T frames). Each
    Q-Former layer then runs, post-LayerNorm as the Q-Former does:

    1. spatial self-attention over ``[queries; text]`` of each frame (``G = B·T``, eq. 5), with
       ``Wq + LoRA_s``, ``Wv + LoRA_s``;
    2. cross-attention of the queries to that frame's visual tokens (layers with
       ``index % cross_attention_frequency == 0``, eq. 6), DAR over patch-grid neighbourhoods;
    3. temporal self-attention of the queries across frames (``stq.temporal_attention`` on
       ``[B*T, L, H, d]``, eq. 7) through the **same** ``query``/``key``/``value``/``output.dense``/
       ``output.LayerNorm`` modules as step 1, with ``Wq + LoRA_t``, ``Wv + LoRA_t`` and its own router;
    4. the Q-Former's query feed-forward (queries) and text feed-forward (text).

    DAR (eq. 9–10, docs/ops.md §2.3): ``alpha = softmax(MLP(avgpool(x)))`` per routed attention, pooled
    per frame (spatial, cross: ``[B*T, p]``) or per query over the real frames (temporal:
    ``[B, L, p]``). Default mask sets: temporal ``{window(1), window(2), global}``; cross
    ``{grid radius 2, grid radius 4, global}`` (:func:`grid_neighbourhood_masks`); spatial global
    only (no router).

    Trainable: LoRA, routers, ``e_t``, ``e_s``; the Q-Former and ``query_tokens`` are frozen.
    At the real InstructBLIP size (default ``InstructBlipQFormerConfig``: 12 layers, D = 768,
    6 cross-attention layers, 32 queries) with the defaults (``lora_rank=8``, ``max_frames=64``,
    ``router_hidden=D/4``): **3,331,638 trainable of 189,015,606 parameters = 1.763 %**
    (LoRA 589,824; 18 routers 2,668,086; e_t 49,152; e_s 24,576). With ``router_hidden=D/2``
    it would be 5,999,670 / 191,683,638 = 3.13 %; see ``router_hidden``.

    Differences from the Q-Former in training mode: attention-probability dropout
    (``attention_probs_dropout_prob``) is not applied (the stquery ops have none); hidden-state
    dropout is. In eval mode the two compute the same function.

    Args:
        qformer: a ``transformers.InstructBlipQFormerModel``; used in place (not copied) and frozen.
        query_tokens: ``[1, L, D]`` or ``[L, D]``, InstructBLIP's learned queries (copied, frozen).
        temporal: add the temporal self-attention (step 3).
        dar: route attention over mask sets; False gives plain global attention everywhere.
        lora_rank, lora_alpha: LoRA rank r and scale numerator (scaling ``lora_alpha / r``, default 1).
        max_frames: length of ``e_t``; longer clips raise ``ValueError``.
        temporal_masks, spatial_masks: lists of ``stq.masks`` masks (None: the defaults above).
            Spatial masks are over ``[queries; text]`` with the text tokens global.
        cross_radii: patch-grid radii of the cross-attention masks (a global mask is appended).
        router_hidden: router MLP width; default ``D // 4``, which keeps the trainable share under
            2 % (at ``D // 2`` the 18 routers alone are 2.8 % of the model).
        dar_mode: ``"mix"`` or ``"scale"`` (docs/ops.md §2.3).
    """

    def __init__(
        self,
        qformer: nn.Module,
        query_tokens: Tensor,
        *,
        temporal: bool = True,
        dar: bool = True,
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        max_frames: int = 64,
        temporal_masks: Sequence | None = None,
        spatial_masks: Sequence | None = None,
        cross_radii: Sequence[int] = (2, 4),
        router_hidden: int | None = None,
        dar_mode: str = "mix",
    ):
        super().__init__()
        cfg = qformer.config
        D = cfg.hidden_size
        if query_tokens.dim() == 2:
            query_tokens = query_tokens[None]
        if query_tokens.dim() != 3 or query_tokens.shape[0] != 1 or query_tokens.shape[2] != D:
            raise ValueError(f"query_tokens: expected [1, L, {D}] or [L, {D}], got {tuple(query_tokens.shape)}")
        self.qformer = freeze(qformer)
        ref = next(qformer.parameters())
        self.query_tokens = nn.Parameter(query_tokens.detach().clone(), requires_grad=False)  # [1, L, D]
        L = query_tokens.shape[1]
        self.num_query_tokens, self.hidden_size, self.max_frames = L, D, max_frames
        self.temporal, self.dar, self.dar_mode = temporal, dar, dar_mode

        if dar:
            tm = [stq.masks.window(1), stq.masks.window(2), stq.masks.window(None)] if temporal_masks is None else list(temporal_masks)
            self.temporal_masks = stq.MaskSet(tm) if temporal else None
            self.spatial_mask_list = None if spatial_masks is None or len(spatial_masks) < 2 else list(spatial_masks)
            self.cross_radii = tuple(cross_radii)
        else:
            self.temporal_masks, self.spatial_mask_list, self.cross_radii = None, None, None
        p_spatial = len(self.spatial_mask_list) if self.spatial_mask_list else 1
        p_cross = len(self.cross_radii) + 1 if self.cross_radii is not None else 1
        p_temporal = (len(self.temporal_masks) if self.temporal_masks is not None else 1) if temporal else 0
        hidden = router_hidden if router_hidden is not None else D // 4
        self.adapters = nn.ModuleList()
        for layer in qformer.encoder.layer:
            pc = p_cross if layer.has_cross_attention else 1
            self.adapters.append(_LayerAdapters(D, lora_rank, lora_alpha, hidden, p_spatial, pc, p_temporal))
        self.adapters.to(device=ref.device, dtype=ref.dtype)
        # Position embeddings of eq. 4, zero at init so the model starts as the image Q-Former.
        self.e_t = nn.Parameter(torch.zeros(max_frames, D, device=ref.device, dtype=ref.dtype))  # [T_max, D]
        self.e_s = nn.Parameter(torch.zeros(L, D, device=ref.device, dtype=ref.dtype))  # [L, D]
        self._mask_cache: dict = {}

    def keep_trainable_float32(self) -> "VideoQFormer":
        """Trainable parts (LoRA, routers, ``e_t``, ``e_s``) in float32 whatever the frozen Q-Former's
        dtype: with a bfloat16 / float16 Q-Former the optimizer then updates float32 weights (updates
        of ~1e-4 do not round away); activations are cast at the adapters' boundaries."""
        self.adapters.float()
        for name in ("e_t", "e_s"):
            getattr(self, name).data = getattr(self, name).data.float()
        return self

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, qformer_config, num_query_tokens: int = 32, **kwargs) -> "VideoQFormer":
        """Random init from an ``InstructBlipQFormerConfig`` (queries ~ N(0, initializer_range²))."""
        from transformers import InstructBlipQFormerModel

        qformer = InstructBlipQFormerModel(qformer_config)
        query_tokens = torch.randn(1, num_query_tokens, qformer_config.hidden_size) * qformer_config.initializer_range
        return cls(qformer, query_tokens, **kwargs)

    @classmethod
    def from_instructblip(cls, model_or_path, *, dtype=None, **kwargs) -> "VideoQFormer":
        """From an InstructBLIP or InstructBLIP-Video model (``InstructBlip[Video]ForConditionalGeneration``)
        or its local directory: ``qformer.*`` → :attr:`qformer` (same keys, frozen), ``query_tokens``
        → :attr:`query_tokens` (frozen). The two families share the Q-Former; InstructBLIP-Video is
        the image model run frame by frame, which is this class with ``temporal=False, dar=False``.

        Loading by path reads the whole checkpoint (vision model and LLM too); prefer
        :meth:`VideoLMM.from_instructblip` when the rest is needed as well.
        """
        model = load_instructblip(model_or_path, dtype)
        return cls(model.qformer, model.query_tokens, **kwargs)

    def load_qformer_state_dict(self, state_dict: dict, strict: bool = True):
        """Load frozen weights: an ``InstructBlipQFormerModel`` state dict (bare keys, optionally with
        ``query_tokens``) or an InstructBLIP checkpoint's (``qformer.*`` and ``query_tokens`` keys)."""
        if any(k.startswith("qformer.") for k in state_dict):
            qf = {k[len("qformer."):]: v for k, v in state_dict.items() if k.startswith("qformer.")}
        else:
            qf = {k: v for k, v in state_dict.items() if k != "query_tokens"}
        result = self.qformer.load_state_dict(qf, strict=strict)
        if "query_tokens" in state_dict:
            with torch.no_grad():
                self.query_tokens.copy_(state_dict["query_tokens"].reshape(self.query_tokens.shape))
        elif strict:
            raise KeyError("load_qformer_state_dict: state_dict has no 'query_tokens'")
        return result

    def parameter_counts(self) -> tuple[int, int]:
        """``(trainable, total)``."""
        return parameter_counts(self)

    # ------------------------------------------------------------------ masks
    def _cross_maskset(self, num_keys: int, device) -> "stq.MaskSet":
        key = (num_keys, str(device))
        if key not in self._mask_cache:
            grids = grid_neighbourhood_masks(self.num_query_tokens, num_keys, self.cross_radii)
            masks = [stq.masks.dense(g.to(device)) for g in grids] + [stq.masks.window(None)]
            self._mask_cache[key] = stq.MaskSet(masks)
        return self._mask_cache[key]

    def _spatial_maskset(self, num_text: int) -> "stq.MaskSet":
        key = ("spatial", num_text)
        if key not in self._mask_cache:
            L = self.num_query_tokens
            self._mask_cache[key] = stq.MaskSet(self.spatial_mask_list, global_tokens=(L, L + num_text))
        return self._mask_cache[key]

    # ------------------------------------------------------------------ attention
    def _attend(self, block, hidden, lora_q, lora_v, *, context=None, frames=None, **op_kwargs) -> Tensor:
        """One Q-Former attention block (``InstructBlipQFormerAttention``) with the core on a stquery op.

        ``block.attention.query/key/value`` and ``block.output`` (dense, dropout, LayerNorm(h + x))
        are the Q-Former's own modules, whichever branch (spatial, cross, temporal) calls them.
        """
        mha = block.attention
        src = hidden if context is None else context
        q = mha.query(hidden)
        v = mha.value(src)
        if lora_q is not None:
            q = q + run_in_own_dtype(lora_q, hidden).to(q.dtype)
        if lora_v is not None:
            v = v + run_in_own_dtype(lora_v, src).to(v.dtype)
        if op_kwargs.get("masks") is not None:
            op_kwargs["mode"] = self.dar_mode
        o = attend(q, mha.key(src), v, mha.num_attention_heads, frames=frames, scale=mha.scaling, **op_kwargs)
        return block.output(o, hidden)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        frame_features: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        frame_lengths: Tensor | None = None,
    ) -> Tensor:
        """Video queries.

        Args:
            frame_features: ``[B, T, Nv, Dv]`` visual tokens of each frame (``Dv`` the Q-Former's
                ``encoder_hidden_size``).
            input_ids: ``[B, n]`` Q-Former (BERT) token ids of the instruction, or None (queries only).
            attention_mask: ``[B, n]``, 1 = real token, 0 = padding (keys only, as the Q-Former).
            frame_lengths: int ``[B]``, clipped to ``[0, T]`` (the ops' rule); frames
                ``t >= frame_lengths[b]`` are padding: they never influence real frames and their
                output is 0 (all of a video of length 0).

        Returns:
            ``[B, T, L, D]``: the L query outputs of every frame.
        """
        if frame_features.dim() != 4:
            raise ValueError(f"frame_features: expected [B, T, Nv, Dv], got shape {tuple(frame_features.shape)}")
        B, T, Nv, Dv = frame_features.shape
        cfg = self.qformer.config
        if Dv != cfg.encoder_hidden_size:
            raise ValueError(f"frame_features: last dim must be encoder_hidden_size {cfg.encoder_hidden_size}, got {Dv}")
        if T > self.max_frames:
            raise ValueError(f"frame_features: {T} frames exceed max_frames {self.max_frames}")
        L, D = self.num_query_tokens, self.hidden_size
        valid = frame_validity(frame_lengths, B, T, frame_features.device)  # [B, T] | None
        emb = self.qformer.embeddings

        queries = self.query_tokens[0] + self.e_s  # [L, D]
        queries = (queries[None] + self.e_t[:T, None]).expand(B, T, L, D)  # [B, T, L, D]
        queries = queries.to(emb.layernorm.weight.dtype)  # float32 e_t / e_s on a low-precision Q-Former
        n = 0 if input_ids is None else input_ids.shape[1]
        key_padding = None
        if n:
            if input_ids.shape[0] != B:
                raise ValueError(f"input_ids: expected batch {B}, got shape {tuple(input_ids.shape)}")
            text = emb.word_embeddings(input_ids) + emb.position_embeddings(emb.position_ids[:, :n])  # [B, n, D]
            x = torch.cat([queries, text[:, None].expand(B, T, n, D)], dim=2).reshape(B * T, L + n, D)
            if attention_mask is not None:
                if attention_mask.shape != input_ids.shape:
                    raise ValueError(f"attention_mask: expected {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
                pad = torch.cat([attention_mask.new_ones(B, L), attention_mask], dim=1) == 0  # [B, L+n]
                key_padding = pad[:, None].expand(B, T, L + n).reshape(B * T, L + n)
        else:
            x = queries.reshape(B * T, L, D)
        x = emb.dropout(emb.layernorm(x.to(emb.layernorm.weight.dtype)))  # [B*T, L+n, D]

        vis = frame_features.reshape(B * T, Nv, Dv)
        frame_lengths_op = None if frame_lengths is None else frame_lengths.to(device=x.device, dtype=torch.int64)
        spatial_masks = self._spatial_maskset(n) if self.spatial_mask_list else None
        for layer, ad in zip(self.qformer.encoder.layer, self.adapters):
            # 1. spatial self-attention over [queries; text] of each frame (eq. 5)
            alpha = None
            if ad.router_spatial is not None:
                tok_valid = None if key_padding is None else ~key_padding[:, :, None]
                alpha = run_in_own_dtype(ad.router_spatial, masked_mean(x, tok_valid, dim=1)).to(x.dtype)  # [B*T, p]
            x = self._attend(
                layer.attention, x, ad.lora_q_spatial, ad.lora_v_spatial,
                masks=spatial_masks, alpha=alpha, key_padding=key_padding,
            )
            q, text_h = x[:, :L], x[:, L:]  # [B*T, L, D], [B*T, n, D]
            # 2. cross-attention to this frame's visual tokens (eq. 6)
            if layer.has_cross_attention:
                masks = alpha = None
                if ad.router_cross is not None:
                    masks = self._cross_maskset(Nv, x.device)
                    alpha = run_in_own_dtype(ad.router_cross, q.mean(dim=1)).to(q.dtype)  # [B*T, p]
                q = self._attend(layer.crossattention, q, None, None, context=vis, masks=masks, alpha=alpha)
            # 3. temporal self-attention, same Wq/Wk/Wv/dense/LayerNorm as step 1 (eq. 7)
            if self.temporal:
                alpha = None
                if ad.router_temporal is not None:
                    pooled = masked_mean(q.view(B, T, L, D), None if valid is None else valid[:, :, None, None], dim=1)
                    alpha = run_in_own_dtype(ad.router_temporal, pooled).to(q.dtype)  # [B, L, p]
                q = self._attend(
                    layer.attention, q, ad.lora_q_temporal, ad.lora_v_temporal, frames=T,
                    masks=self.temporal_masks, alpha=alpha, frame_lengths=frame_lengths_op,
                )
            # 4. query and text feed-forward blocks
            q = layer.feed_forward_chunk_query(q)
            x = torch.cat([q, layer.feed_forward_chunk(text_h)], dim=1) if n else q

        out = x[:, :L].reshape(B, T, L, D)
        if valid is not None:
            out = out * valid[:, :, None, None].to(out.dtype)
        return out

    def visual_tokens(self, frame_features, frame_lengths=None, *, input_ids=None, attention_mask=None):
        """``(tokens [B, T*L, D], mask [B, T*L] bool)`` for a language model; padded frames masked out."""
        out = self(frame_features, input_ids, attention_mask, frame_lengths)
        B, T, L, D = out.shape
        valid = frame_validity(frame_lengths, B, T, out.device)
        mask = torch.ones(B, T, L, dtype=torch.bool, device=out.device) if valid is None else valid[:, :, None].expand(B, T, L)
        return out.reshape(B, T * L, D), mask.reshape(B, T * L)

    @property
    def out_features(self) -> int:
        return self.hidden_size
