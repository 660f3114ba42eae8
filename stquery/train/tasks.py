"""Task models: what the trainer trains. A task model is an ``nn.Module`` with

- ``forward(batch) -> loss`` (a scalar tensor, the mean over the batch's clips; ``batch`` from
  :func:`stquery.train.data.collate`; a batch with no records, all skipped, must give a zero loss
  connected to every trainable parameter: :func:`stquery.train.distributed.zero_loss`),
- optionally ``supports_sum_reduction = True`` and ``forward(batch, reduction="sum") -> (summed
  loss, item count)``: the trainer then divides by the item count of the whole optimizer step over
  all accumulation steps and ranks (e.g. answer tokens, :class:`stquery.train.lmm.LMMTask`),
- ``predict(batch) -> list[str]`` (one answer per record),
- optionally ``set_activation_checkpointing(bool)``.

Trainable parameters are those with ``requires_grad``; the trainer optimises and checkpoints
exactly those. ``model.kind`` picks the builder: ``shapes_classifier`` (the CPU-sized moving-shapes
demo below) or ``video_lmm`` (the LLM head, docs/models.md §4.4; see :mod:`stquery.train.lmm`).
"""
from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .distributed import zero_loss
from .lmm import build_lmm_task


class HashTokenizer:
    """Words -> ids by CRC32 (stable across processes and runs, unlike ``hash``); 0 is padding.
    For the tiny random Q-Former of the demo, which has no pretrained vocabulary to match."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in t.lower().split()] or [1] for t in texts]
        n = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        return input_ids, mask


class ShapesClassifier(nn.Module):
    """Video Q-Former + classifier head, for the moving-shapes demo (precomputed frame features).

    ``frame features [B, T, Nv, Dv]`` → :class:`stquery.models.VideoQFormer` (a small random
    ``InstructBlipQFormerConfig``; the question is its early-fusion text) → ``[B, T, L, D]`` → mean
    over the L queries → mean over the T frames → LayerNorm → Linear over the label vocabulary;
    logits outside a record's ``options`` are masked out (loss and prediction).

    The head pools over time symmetrically, so with ``temporal=False`` (and ``e_t`` frozen at zero,
    which this class enforces) the whole model is a symmetric function of the set of frames: only
    the temporal attention can see order. That makes the temporal / no-temporal accuracy gap a
    measurement of the temporal attention alone.

    ``train_base``: also train the (random) Q-Former weights. Off by default, as in the paper (LoRA,
    routers and position embeddings only). ``position_init_std``: random init of ``e_t`` instead of
    the documented zeros (only with ``temporal``; see the comment in ``__init__``).
    """

    def __init__(self, labels: list[str], *, temporal: bool = True, dar: bool = False, hidden_size: int = 64,
                 num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 128, num_queries: int = 8,
                 visual_dim: int = 108, vocab_size: int = 128, cross_attention_frequency: int = 1,
                 lora_rank: int = 8, max_frames: int = 16, dropout: float = 0.0, train_base: bool = False,
                 position_init_std: float = 0.0):
        super().__init__()
        from transformers import InstructBlipQFormerConfig

        from stquery.models.video_qformer import VideoQFormer

        cfg = InstructBlipQFormerConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size, encoder_hidden_size=visual_dim,
            cross_attention_frequency=cross_attention_frequency, max_position_embeddings=64,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )
        self.tokenizer = HashTokenizer(vocab_size)
        self.labels = list(labels)
        self.label_index = {l: i for i, l in enumerate(self.labels)}
        self.qformer = VideoQFormer.from_config(cfg, num_query_tokens=num_queries, temporal=temporal, dar=dar,
                                                lora_rank=lora_rank, max_frames=max_frames)
        if train_base:
            for p in self.qformer.qformer.parameters():
                p.requires_grad_(True)
        if position_init_std and temporal:
            # docs/models.md §4.1 zero-initialises e_t so that a pretrained Q-Former starts unchanged. From a
            # random Q-Former there is nothing to preserve, and e_t = 0 is a saddle for order tasks:
            # every frame looks alike to temporal attention, the symmetric head gets no gradient
            # towards order, and training waits for noise to break the tie.
            with torch.no_grad():
                self.qformer.e_t.normal_(0.0, position_init_std)
        if not temporal:
            # e_t would tag each frame with its index and let a symmetric head read order without
            # any temporal attention; the ablation must not see order, so keep e_t at zero.
            self.qformer.e_t.requires_grad_(False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, len(self.labels))
        self.activation_checkpointing = False

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    def _option_mask(self, records) -> torch.Tensor:
        mask = torch.zeros(len(records), len(self.labels), dtype=torch.bool)
        for i, r in enumerate(records):
            opts = r.options or self.labels
            for o in opts:
                if o not in self.label_index:
                    raise ValueError(f"{r.where}: option {o!r} is not in the classifier's labels {self.labels}")
                mask[i, self.label_index[o]] = True
        return mask

    def logits(self, batch: dict) -> torch.Tensor:
        records = batch["records"]
        device = self.head.weight.device
        features = batch["visual"].to(device)  # [B, T, Nv, Dv]
        if batch["visual_kind"] != "features":
            raise ValueError("ShapesClassifier takes precomputed features (manifest 'features'), not decoded video")
        ids, mask = self.tokenizer([r.question for r in records])
        ids, mask = ids.to(device), mask.to(device)
        lengths = batch["frame_lengths"].to(device)
        if self.activation_checkpointing and self.training:
            out = checkpoint(self.qformer, features, ids, mask, lengths, use_reentrant=False)
        else:
            out = self.qformer(features, ids, mask, lengths)  # [B, T, L, D]
        pooled = out.float().mean(dim=2).mean(dim=1)  # [B, D]: symmetric over queries, then frames
        logits = self.head(self.norm(pooled))  # [B, labels]
        return logits.masked_fill(~self._option_mask(records).to(device), float("-inf"))

    def forward(self, batch: dict) -> torch.Tensor:
        if not batch["records"]:
            # Every clip of the micro-batch was skipped (data.on_error: skip): a zero loss connected to
            # every trainable parameter, so that under DDP this rank still joins the gradient all-reduce.
            return zero_loss(self)
        targets = torch.tensor([self.label_index[r.answer] for r in batch["records"]], device=self.head.weight.device)
        return F.cross_entropy(self.logits(batch), targets)

    @torch.no_grad()
    def predict(self, batch: dict) -> list[str]:
        return [self.labels[i] for i in self.logits(batch).argmax(dim=-1).tolist()]


def build_task_model(cfg: dict, train_records) -> nn.Module:
    kind = cfg["model"]["kind"]
    options = dict(cfg["model"].get("options") or {})
    if kind == "shapes_classifier":
        labels = options.pop("labels", None)
        if labels is None:  # every option / answer seen in training, in first-seen order
            seen: dict[str, None] = {}
            for r in train_records:
                for o in (r.options or [r.answer]):
                    seen.setdefault(o, None)
            labels = list(seen)
        options.setdefault("max_frames", max(16, cfg["data"]["frames"]))
        return ShapesClassifier(labels, temporal=cfg["model"]["temporal"], dar=cfg["model"]["dar"], **options)
    if kind == "video_lmm":
        return build_lmm_task(cfg)
    raise ValueError(f"unknown model.kind {kind!r}; known: shapes_classifier, video_lmm")
