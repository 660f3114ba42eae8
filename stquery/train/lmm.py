"""The LLM head (``model.kind: video_lmm``, docs/models.md §4.4 / docs/training.md §5) as a trainer task model.

:class:`LMMTask` wraps a :class:`stquery.models.VideoLMM` and its text tokenizer(s) so that the
trainer can call ``forward(batch) -> loss`` and ``predict(batch) -> list[str]``.

**Model** (config keys under ``model:``, all paths local; nothing is downloaded):

- ``instructblip: DIR``: an ``InstructBlipForConditionalGeneration`` or
  ``InstructBlipVideoForConditionalGeneration`` directory → :meth:`VideoLMM.from_instructblip` with
  ``tokenizer_kind`` ``qformer`` (VideoQFormer over its Q-Former and queries, its frozen
  ``language_projection``), ``linvt`` or ``pool`` (new trainable ``Linear(Cv, K)``; CLS dropped);
- ``llava: DIR``: a ``LlavaForConditionalGeneration`` (or LLaVA-NeXT) directory →
  :meth:`VideoLMM.from_llava` with ``tokenizer_kind`` ``pool`` (RED-VILLM: the temporal copy of its
  projector trains) or ``linvt`` (LinVT over the projected frame tokens); its vision tower, feature
  layer and selection strategy; the prompt in LLaVA-1.5's template (``prompt_template``);
- or ``language_model: DIR`` (``AutoModelForCausalLM``, e.g. Vicuna) with ``tokenizer_kind``
  ``linvt`` or ``pool`` and either ``vision_model: DIR`` (``AutoModel``; its ``.vision_model`` is
  taken for CLIP/SigLIP/BLIP checkpoints) or precomputed features, whose width is then
  ``model.options.visual_dim``. (``qformer`` needs the InstructBLIP Q-Former: use ``instructblip``.)
- ``features_only: true`` drops the vision encoder (manifests with precomputed ``features``).
- ``tokenizer: DIR``: the LLM's ``AutoTokenizer`` (default: the ``instructblip`` /
  ``language_model`` directory); ``qformer_tokenizer: DIR``: the Q-Former's BERT tokenizer
  (default ``<instructblip>/qformer_tokenizer`` when it exists; without one the Q-Former gets no
  instruction text, only its queries).
- ``temporal`` / ``dar`` go to the VideoQFormer; ``options`` are the video tokenizer's keyword
  arguments (``lora_rank``, ``max_frames``, LinVT's ``k``, ``num_queries`` ...; ``visual_dim``
  is taken out for the precomputed-feature width).
- ``dtype``: ``float32`` (default), ``bfloat16`` or ``float16`` for the loaded (frozen) checkpoints;
  the trainable weights stay float32 whatever it is (:meth:`VideoLMM.keep_trainable_float32`).
  Training rejects ``float16`` (no loss scaling: small gradients would underflow); it is for
  evaluation.
- ``prompt_template``: the prompt around the instruction below, ``{prompt}`` marking where it goes
  (default: the model family's, e.g. ``"USER: <image>\\n{prompt} ASSISTANT:"`` for LLaVA, whose
  ``<image>`` the visual tokens replace; plain ``{prompt}`` for InstructBLIP, whose visual tokens
  go before the text);
- ``max_prompt_tokens``: keep only the last N prompt tokens (the question and options survive a
  long context); None keeps all.

**Prompt** (also the Q-Former's instruction text, as in InstructBLIP; inside ``prompt_template``)::

    {context}
    Question: {question}
    Options:
    (A) {option 1}
    (B) {option 2}
    Answer:

(the context and option lines only when present). The target is `` {answer}`` followed by the
tokenizer's EOS; for multiple choice it is the option text (``parse_choice`` in
:mod:`stquery.train.metrics` accepts the text or its letter). Labels are −100 everywhere except the
answer and EOS tokens (:meth:`VideoLMM.answer_labels`). Training batches are right-padded;
generation batches left-padded (the LLM continues right after each prompt). Predictions are the
greedy continuation (``eval.max_new_tokens``), decoded without special tokens.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from .distributed import zero_loss

DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_prompt(record) -> str:
    """Context, question, lettered options, "Answer:" (see the module docstring)."""
    lines = []
    if record.context:
        lines.append(record.context.strip())
    lines.append(f"Question: {record.question.strip()}")
    if record.options:
        lines.append("Options:")
        lines += [f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(record.options)]
    lines.append("Answer:")
    return "\n".join(lines)


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class LMMTask(nn.Module):
    """``forward(batch) -> loss``, ``predict(batch) -> answers`` over a :class:`VideoLMM`.

    Args:
        lmm: the video LMM.
        tokenizer: the LLM's text tokenizer (``PreTrainedTokenizerBase``).
        qformer_tokenizer: the Q-Former's tokenizer (VideoQFormer early fusion), or None.
        max_new_tokens: generation length in :meth:`predict`.
        max_prompt_tokens: keep only the last N prompt tokens (None: all).
    """

    def __init__(self, lmm, tokenizer, qformer_tokenizer=None, *, max_new_tokens: int = 32,
                 max_prompt_tokens: int | None = None):
        super().__init__()
        from stquery.models import VideoQFormer

        self.lmm = lmm
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer if isinstance(lmm.video_tokenizer, VideoQFormer) else None
        if self.qformer_tokenizer is not None:
            # Too long an instruction loses its beginning (the context), never the question, options
            # and "Answer:" at its end, as in the LLM prompt (max_prompt_tokens).
            self.qformer_tokenizer.truncation_side = "left"
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.eos_id = tokenizer.eos_token_id
        self.qformer_max_len = None
        if self.qformer_tokenizer is not None:
            qcfg = getattr(lmm.video_tokenizer.qformer, "config", None)
            self.qformer_max_len = getattr(qcfg, "max_position_embeddings", None)
        self.activation_checkpointing = False

    # ------------------------------------------------------------------ tokenisation
    def _truncate(self, ids: list[int]) -> list[int]:
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            keep_bos = self.tokenizer.bos_token_id is not None and ids[0] == self.tokenizer.bos_token_id
            ids = ([ids[0]] if keep_bos else []) + ids[len(ids) - (self.max_prompt_tokens - int(keep_bos)):]
        return ids

    def _prompt_answer_ids(self, prompt: str, answer: str | None) -> tuple[list[int], list[int]]:
        """Prompt ids (with BOS) and answer ids (with EOS). The answer is tokenised as it follows the
        prompt (``prompt + " " + answer`` in one pass, split where the prompt's ids end), so that a
        SentencePiece tokenizer does not add a spurious word-start token; if the joint ids do not
        start with the prompt's, the answer is tokenised on its own."""
        p = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if answer is None:
            return self._truncate(p), []
        full = self.tokenizer(prompt + " " + answer.strip(), add_special_tokens=True)["input_ids"]
        if self.eos_id is not None and full and full[-1] == self.eos_id:
            full = full[:-1]  # tokenizers that append EOS themselves
        a = full[len(p):] if full[:len(p)] == p and len(full) > len(p) else \
            self.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        return self._truncate(p), a + ([self.eos_id] if self.eos_id is not None else [])

    def encode(self, records, with_answers: bool):
        """``(input_ids, attention_mask, labels | None)``; right-padded with answers, left-padded without."""
        seqs, answer_masks = [], []
        placeholder = self.lmm.placeholder_token_id
        for r in records:
            prompt = self.lmm.prompt_template.format(prompt=build_prompt(r))
            p, a = self._prompt_answer_ids(prompt, r.answer if with_answers else None)
            if placeholder is not None and self.lmm.prompt_template != "{prompt}" and placeholder not in p:
                raise ValueError(f"model.prompt_template {self.lmm.prompt_template!r}: the tokenizer does not turn its "
                                 f"placeholder into the model's token id {placeholder} (or max_prompt_tokens cut it)")
            seqs.append(p + a)
            answer_masks.append([0] * len(p) + [1] * len(a))
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        amask = torch.zeros(len(seqs), n, dtype=torch.bool)
        for i, (s, am) in enumerate(zip(seqs, answer_masks)):
            sl = slice(0, len(s)) if with_answers else slice(n - len(s), n)
            ids[i, sl] = torch.tensor(s)
            mask[i, sl] = 1
            amask[i, sl] = torch.tensor(am, dtype=torch.bool)
        labels = self.lmm.answer_labels(ids, amask) if with_answers else None
        return ids, mask, labels

    def encode_qformer(self, records):
        if self.qformer_tokenizer is None:
            return None, None
        kw = dict(padding=True, return_tensors="pt")
        if self.qformer_max_len:
            kw.update(truncation=True, max_length=self.qformer_max_len)
        enc = self.qformer_tokenizer([build_prompt(r) for r in records], **kw)
        return enc["input_ids"], enc["attention_mask"]

    # ------------------------------------------------------------------ trainer interface
    def _device(self) -> torch.device:
        return next(self.lmm.parameters()).device

    def _visual(self, batch: dict, device) -> dict:
        # Pixels in the vision encoder's dtype (model.dtype); features as they are (VideoLMM casts
        # them to the video tokenizer's dtype).
        key = "frame_features" if batch["visual_kind"] == "features" else "pixel_values"
        if key == "pixel_values" and self.lmm.vision_model is None:
            raise ValueError("this video_lmm has no vision encoder (model.features_only / no vision_model): "
                             "the manifest must give precomputed 'features'")
        dtype = next(self.lmm.vision_model.parameters()).dtype if key == "pixel_values" else None
        x = batch["visual"].to(device, dtype=dtype)
        return {key: x, "frame_lengths": batch["frame_lengths"].to(device)}

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Checkpoint the frozen LLM's decoder layers (gradients still flow through them to the
        visual tokens). VideoLMM keeps the LLM in eval mode, and transformers only checkpoints in
        training mode, so the decoder layers' own ``training`` flag (not their submodules', hence
        no dropout) is switched on in :meth:`forward`."""
        lm = self.lmm.language_model
        new_api = hasattr(lm, "activation_checkpointing_enable")  # transformers >= 5.x; the old name warns
        if enabled:
            if new_api:
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(lm, "is_activation_checkpointing", getattr(lm, "is_gradient_checkpointing", False)):
            (lm.activation_checkpointing_disable if new_api else lm.gradient_checkpointing_disable)()
        self.activation_checkpointing = enabled

    def _checkpoint_layers(self, on: bool) -> None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        for m in self.lmm.language_model.modules():
            if isinstance(m, GradientCheckpointingLayer):
                m.training = on

    supports_sum_reduction = True  # the trainer normalises by the answer tokens of the whole optimizer step

    def forward(self, batch: dict, reduction: str = "mean"):
        """``reduction="mean"``: the mean cross-entropy over the batch's answer tokens (a scalar).
        ``"sum"``: ``(summed cross-entropy, number of answer tokens)``; the trainer divides by the
        answer tokens of the whole optimizer step (all accumulation steps and ranks), so that the
        gradient does not depend on how the global batch is split (like transformers'
        ``num_items_in_batch``). A batch with no records gives a zero loss connected to every
        trainable parameter (and 0 tokens)."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        records = batch["records"]
        if not records:
            zero = zero_loss(self)
            return (zero, 0) if reduction == "sum" else zero
        device = self._device()
        ids, mask, labels = self.encode(records, with_answers=True)
        qids, qmask = self.encode_qformer(records)
        if qids is not None:
            qids, qmask = qids.to(device), qmask.to(device)
        ckpt = self.activation_checkpointing and self.training
        if ckpt:
            self._checkpoint_layers(True)
        try:
            out = self.lmm(ids.to(device), mask.to(device), labels.to(device), qformer_input_ids=qids,
                           qformer_attention_mask=qmask, **self._visual(batch, device))
        finally:
            if ckpt:
                self._checkpoint_layers(False)
        # Next-token cross-entropy on the answer tokens (VideoLMM aligns the labels with its input).
        if reduction == "sum":
            return out.loss_sum, int(out.answer_tokens)
        return out.loss

    @torch.no_grad()
    def generate_ids(self, batch: dict, **kwargs) -> torch.Tensor:
        records = batch["records"]
        device = self._device()
        ids, mask, _ = self.encode(records, with_answers=False)
        qids, qmask = self.encode_qformer(records)
        if qids is not None:
            qids, qmask = qids.to(device), qmask.to(device)
        kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("num_beams", 1)
        kwargs.setdefault("pad_token_id", self.pad_id)
        if self.eos_id is not None:
            kwargs.setdefault("eos_token_id", self.eos_id)
        return self.lmm.generate(ids.to(device), mask.to(device), qformer_input_ids=qids,
                                 qformer_attention_mask=qmask, **self._visual(batch, device), **kwargs)

    @torch.no_grad()
    def predict(self, batch: dict) -> list[str]:
        out = self.generate_ids(batch)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------
# Builder


def _hidden_size(path) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return cfg.hidden_size


def build_lmm(m: dict):
    """The :class:`VideoLMM` of the ``model`` config section (see the module docstring)."""
    from stquery.models import LinVTTokenizer, TemporalPoolAdapter, VideoLMM

    kind = m["tokenizer_kind"]
    if kind not in ("qformer", "linvt", "pool"):
        raise ValueError(f"model.tokenizer_kind: expected qformer, linvt or pool, got {kind!r}")
    if m["dtype"] not in DTYPES:
        raise ValueError(f"model.dtype: expected one of float32, bfloat16, float16, got {m['dtype']!r}")
    dtype = DTYPES[m["dtype"]]
    kw = dict(m.get("options") or {})
    visual_dim = kw.pop("visual_dim", None)
    if kind == "qformer":
        kw.setdefault("temporal", m["temporal"])
        kw.setdefault("dar", m["dar"])
    sources = [key for key in ("instructblip", "llava", "language_model") if m.get(key)]
    if len(sources) > 1:
        raise ValueError(f"model: give one of instructblip, llava and language_model, got {sources}")
    if m.get("llava"):
        if kind == "qformer":
            raise ValueError("model.tokenizer_kind=qformer needs a Q-Former (model.instructblip); a LLaVA model "
                             "takes linvt or pool")
        lmm = VideoLMM.from_llava(str(m["llava"]), tokenizer=kind, dtype=dtype, tokenizer_kwargs=kw)
    elif m.get("instructblip"):
        lmm = VideoLMM.from_instructblip(str(m["instructblip"]), tokenizer=kind, dtype=dtype, tokenizer_kwargs=kw)
        if m.get("drop_cls") is not None:
            lmm.drop_cls = bool(m["drop_cls"])
    elif m.get("language_model"):
        if kind == "qformer":
            raise ValueError("model.tokenizer_kind=qformer needs InstructBLIP's Q-Former: set model.instructblip "
                             "(or use tokenizer_kind linvt / pool with model.language_model)")
        K = _hidden_size(m["language_model"])
        vision = None
        if m.get("vision_model") and not m.get("features_only"):
            from transformers import AutoModel

            vision = AutoModel.from_pretrained(str(m["vision_model"]), local_files_only=True, dtype=dtype)
            vision = getattr(vision, "vision_model", vision)
            cv = vision.config.hidden_size
        elif visual_dim:
            cv = int(visual_dim)
        else:
            raise ValueError("model.language_model without a vision_model: set model.options.visual_dim "
                             "(the width of the precomputed frame features)")
        if kind == "linvt":
            tok = LinVTTokenizer(cv, text_dim=K, **kw)
            proj, proj_trainable = nn.Linear(cv, K), True
        else:
            tok = TemporalPoolAdapter(nn.Linear(cv, K), train_alignment=True, **kw)
            proj, proj_trainable = None, False
        if dtype is not None:
            tok = tok.to(dtype)
            proj = proj.to(dtype) if proj is not None else None
        drop_cls = m.get("drop_cls")
        lmm = VideoLMM.from_pretrained(
            str(m["language_model"]), tok, projection=proj, vision_model=vision, dtype=dtype,
            drop_cls=bool(drop_cls) if drop_cls is not None else vision is not None,
            projection_trainable=proj_trainable,
        )
    else:
        raise ValueError("model.kind=video_lmm needs model.instructblip (an InstructBLIP(-Video) directory), "
                         "model.llava (a LLaVA directory) or model.language_model (a causal LM directory)")
    if m.get("prompt_template"):
        lmm.prompt_template = m["prompt_template"]
    if m.get("features_only"):
        lmm.vision_model = None  # precomputed features only: free the encoder
    if dtype in (torch.bfloat16, torch.float16):
        # Frozen parts in model.dtype, trainable ones (LoRA, routers, e_t, e_s, new projections)
        # in float32: the optimizer's updates do not round away (no separate master copy needed).
        lmm.keep_trainable_float32()
    return lmm


def build_lmm_task(cfg: dict) -> LMMTask:
    m = cfg["model"]
    lmm = build_lmm(m)
    tok_path = m.get("tokenizer") or m.get("instructblip") or m.get("llava") or m.get("language_model")
    tokenizer = _load_tokenizer(tok_path)
    qtok = None
    if m["tokenizer_kind"] == "qformer":
        qpath = m.get("qformer_tokenizer")
        if qpath is None and m.get("instructblip") and (Path(m["instructblip"]) / "qformer_tokenizer").is_dir():
            qpath = Path(m["instructblip"]) / "qformer_tokenizer"
        if qpath is not None:
            qtok = _load_tokenizer(qpath)
        else:
            print("[stquery] no Q-Former tokenizer (model.qformer_tokenizer): the Q-Former gets its queries "
                  "only, no instruction text", file=sys.stderr)
    return LMMTask(lmm, tokenizer, qtok, max_new_tokens=cfg["eval"]["max_new_tokens"],
                   max_prompt_tokens=m.get("max_prompt_tokens"))
