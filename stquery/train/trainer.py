"""The training loop (docs/training.md §5): LoRA-only AdamW, accumulation, bf16 autocast on GPU, DDP, exact resume.

Batching. ``train.batch_size`` is the **global** batch of one optimizer step, over all ranks and
accumulation steps; each rank runs ``grad_accum`` micro-batches of ``batch_size / (world ×
grad_accum)`` clips. Each micro-batch loss is a mean over its clips and is divided by
``grad_accum``; DDP averages over ranks, so the gradient is the mean over the global batch whatever
the split (micro-batches are equal-sized). Hence the same loss curve for 1 process or N (to float
rounding). Task models with ``supports_sum_reduction`` (the LLM head: a token loss) instead return
the summed loss and its item count (answer tokens); the gradient is divided by the item count of
the whole step, all-reduced over ranks (transformers' ``num_items_in_batch``), so it is the mean
over the global batch's answer tokens whatever the split. A micro-batch whose clips were all
skipped still runs through the (DDP) model, which returns a zero loss connected to every trainable
parameter, so the all-reduce stays in step; it is left out of the logged loss.

``train.stop_after``: an absolute optimizer step; a run that starts before it stops (and
checkpoints) there; a run resumed at or after it ignores it and goes on to the end.

Determinism. Everything random is seeded from ``seed`` (model init, data order per epoch:
``seed, epoch``); ``train.deterministic`` turns on ``torch.use_deterministic_algorithms``. A
checkpoint stores the RNG state of every rank and the position in the epoch, so ``--resume``
continues with bitwise the same numbers as an uninterrupted run (on CPU; GPU kernels may still be
non-deterministic where PyTorch says so).

Optimiser. AdamW over the parameters with ``requires_grad`` only; weight decay on tensors with ≥ 2
dims (LoRA matrices, router weights, position embeddings), none on biases and norms (the usual
BLIP-2 / LAVIS grouping). Linear warm-up, then cosine decay to 0 (or constant).

Output. ``output_dir`` gets ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (see
:mod:`stquery.train.checkpoint`: written atomically, the newest ``train.keep_checkpoints`` kept). A
run refuses an ``output_dir`` that already holds one unless it resumes it or is told to overwrite it.

Log. ``OUTPUT/metrics.jsonl`` (rank 0): one JSON object per line: ``{"event": "train", "step",
"epoch", "loss", "lr", "clips_per_s"}`` every ``log_every`` steps, ``{"event": "eval", ...metrics}``
each epoch, ``{"event": "skipped", "where", "reason", "split", "rank"}`` for each bad record dropped under
``data.on_error: skip`` (training skips of every rank are gathered to rank 0 at each log point and
epoch end) and ``{"event": "skip_summary", "split", "count"}`` (over all ranks).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .._optional import require
from . import checkpoint as ckpt
from . import distributed as D
from .config import ConfigError, dump_config
from .data import GlobalBatchSampler, VideoQADataset, collate, eval_shards, read_manifest
from .metrics import evaluate_predictions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsLog:
    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.path is None:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def prepare_data(cfg: dict, info: D.DistInfo) -> dict:
    """Resolve ``data.train`` / ``data.val``: generate the moving-shapes set if configured."""
    data = cfg["data"]
    if data.get("shapes"):
        from .shapes import generate

        opts = dict(data["shapes"])
        out = Path(opts.pop("dir", None) or Path(cfg["output_dir"]) / "data")
        opts.setdefault("frames", data["frames"])
        opts.setdefault("seed", cfg["seed"])
        if info.is_main:
            paths = generate(out, **opts)
        D.barrier(info)
        if not info.is_main:
            paths = generate(out, **opts)  # reuses what rank 0 wrote (same options stamp)
        data = dict(data, train=str(paths["train"]), val=str(paths["val"]))
    if not data.get("train"):
        raise ValueError("data.train: no training manifest given (and no data.shapes section)")
    return data


def _loader(dataset, batches, num_workers: int, seed: int = 0):
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG,
    # which would shift the dropout stream of a resumed run against an uninterrupted one.
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler(optimizer, warmup: int, total: int, kind: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(cfg: dict, device: torch.device):
    amp = cfg["train"]["amp"]
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _report_skips(log: MetricsLog, info: D.DistInfo, split: str, skipped: list, counter: dict) -> None:
    for where, reason in skipped:
        counter[split] = counter.get(split, 0) + 1
        log.write(event="skipped", split=split, where=where, reason=reason, rank=info.rank)
        print(f"[stquery] skipped {where}: {reason}", file=sys.stderr)


def evaluate_model(model, dataset: VideoQADataset, cfg: dict, info: D.DistInfo, log: MetricsLog,
                   skip_counter: dict, split: str = "val") -> dict:
    """Predictions on ``dataset`` (sharded over ranks), metrics on rank 0 (returned on every rank)."""
    module = model.module if hasattr(model, "module") else model
    was_training = module.training
    module.eval()
    preds: list[tuple[int, str]] = []
    skipped: list = []
    batches = eval_shards(len(dataset), info.world_size, info.rank, cfg["eval"]["batch_size"])
    with torch.no_grad(), _autocast(cfg, info.device):
        for batch in _loader(dataset, batches, cfg["data"]["num_workers"]):
            skipped += batch["skipped"]
            if batch["records"]:
                preds += list(zip(batch["index"].tolist(), module.predict(batch)))
    module.train(was_training)
    gathered = D.gather_objects(info, (preds, skipped))
    all_preds = sorted(p for part, _ in gathered for p in part)
    all_skipped = [s for _, part in gathered for s in part]
    if info.is_main:
        _report_skips(log, D.DistInfo(), split, all_skipped, skip_counter)
    metrics = evaluate_predictions([p for _, p in all_preds], [dataset.records[i] for i, _ in all_preds])
    metrics["skipped"] = len(all_skipped)
    return metrics


def train(cfg: dict, resume: str | Path | None = None, overwrite: bool = False) -> dict:
    """Train as configured; return ``{"step", "epoch", "eval": last metrics, "checkpoint": path}``.

    An ``output_dir`` that already holds a run (anything but ``config.yaml`` and the generated
    ``data/``) is refused unless ``resume`` continues it or ``overwrite`` deletes its
    ``metrics.jsonl`` and ``checkpoints/`` first (other files are left alone)."""
    if resume is not None and overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                         "overwrite deletes it")
    info = D.init()
    try:
        return _train(cfg, resume, overwrite, info)
    finally:
        D.shutdown(info)


# What a run writes at the top of output_dir and overwrite deletes; config.yaml is rewritten anyway
# and data/ is the moving-shapes cache, reused while its options match.
RUN_OUTPUTS = ("metrics.jsonl", "checkpoints")


def _check_output_dir(out_dir: Path, resume, overwrite: bool, info: D.DistInfo) -> None:
    existing = list(out_dir.iterdir()) if out_dir.is_dir() else []
    held = sorted(p.name for p in existing if p.name not in ("config.yaml", "data"))
    if held and resume is None and not overwrite:
        raise ConfigError(f"output_dir {out_dir} already holds a run ({', '.join(held)}): continue it with "
                          "--resume, replace it with --overwrite, or choose another with --set output_dir=DIR")
    D.barrier(info)  # every rank has looked before rank 0 deletes
    if info.is_main and overwrite:
        for name in RUN_OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _train(cfg: dict, resume, overwrite: bool, info: D.DistInfo) -> dict:
    t = cfg["train"]
    if cfg["model"].get("kind") == "video_lmm" and str(cfg["model"].get("dtype")) in ("float16", "fp16"):
        raise ValueError("model.dtype float16: training has no loss scaling (GradScaler), so small gradients "
                         "underflow; train with bfloat16 or float32 (float16 is fine for evaluate)")
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    if t["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=info.device.type == "cuda")
    out_dir = Path(cfg["output_dir"])
    _check_output_dir(out_dir, resume, overwrite, info)
    log = MetricsLog(out_dir / "metrics.jsonl" if info.is_main else None)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out_dir / "config.yaml")
        keep = f"the last {t['keep_checkpoints']}" if t["keep_checkpoints"] else "all"
        print(f"[stquery] writing to {out_dir}/: config.yaml, metrics.jsonl, checkpoints/ ({keep} kept)",
              file=sys.stderr)

    data_cfg = prepare_data(cfg, info)
    on_error = data_cfg["on_error"]
    skip_counter: dict[str, int] = {}
    train_manifest = read_manifest(data_cfg["train"], on_error)
    val_manifest = read_manifest(data_cfg["val"], on_error) if data_cfg.get("val") else None
    if info.is_main:
        _report_skips(log, D.DistInfo(), "train", train_manifest.skipped, skip_counter)
        if val_manifest:
            _report_skips(log, D.DistInfo(), "val", val_manifest.skipped, skip_counter)
    ds_kwargs = dict(frames=data_cfg["frames"], image_size=data_cfg["image_size"], mean=data_cfg["mean"],
                     std=data_cfg["std"], on_error=on_error)
    train_set = VideoQADataset(train_manifest.records, **ds_kwargs)
    val_set = VideoQADataset(val_manifest.records, **ds_kwargs) if val_manifest else None
    if not len(train_set):
        raise ValueError(f"{data_cfg['train']}: no usable training records")

    seed_everything(cfg["seed"])
    from .tasks import build_task_model

    model = build_task_model(cfg, train_manifest.records).to(info.device)
    if t["activation_checkpointing"]:
        if not hasattr(model, "set_activation_checkpointing"):
            raise ValueError(f"train.activation_checkpointing: {type(model).__name__} does not support it")
        model.set_activation_checkpointing(True)
    optimizer = torch.optim.AdamW(_param_groups(model, t["weight_decay"]), lr=t["lr"], betas=tuple(t["betas"]))
    sampler = GlobalBatchSampler(len(train_set), t["batch_size"], t["grad_accum"], info.world_size, info.rank,
                                 cfg["seed"])
    steps_per_epoch = sampler.steps_per_epoch()
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size {t['batch_size']} exceeds the {len(train_set)} training clips")
    total_steps = steps_per_epoch * t["epochs"]
    scheduler = _scheduler(optimizer, t["warmup_steps"], total_steps, t["scheduler"])

    step, epoch, step_in_epoch = 0, 0, 0
    if resume is not None:
        where = ckpt.resolve(resume)
        ckpt.load_weights(where, model)
        state = ckpt.load_state(where)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        if len(state["rng"]) != info.world_size:
            print(f"[stquery] resuming a {len(state['rng'])}-process run on {info.world_size}: RNG streams differ",
                  file=sys.stderr)
        ckpt.set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        if info.is_main and where.parent.resolve() == (out_dir / "checkpoints").resolve():
            ckpt.mark_latest(where)  # resumed from an older checkpoint: later ones are now abandoned
        log.write(event="resume", checkpoint=str(where), step=step)

    ddp = model
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    model.train()

    def save_checkpoint() -> Path | None:
        rngs = D.gather_objects(info, ckpt.rng_state())
        path = None
        if info.is_main:
            path = ckpt.save(out_dir / "checkpoints" / f"step_{step:06d}", model, optimizer, scheduler, step=step,
                             epoch=epoch, step_in_epoch=step_in_epoch, rng_states=rngs, config=cfg,
                             keep=t["keep_checkpoints"])
        D.barrier(info)
        return path

    show = t["progress"] and info.is_main
    tqdm = require("tqdm", extra="train", feature="stquery train's progress bar").tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not show, dynamic_ncols=True, desc="train")
    last_eval: dict = {}
    last_ckpt = None
    stop_after = t["stop_after"]
    # stop_after is an absolute optimizer step; it applies only to a run that starts before it, so a
    # --resume of the stopped run (same config) goes on to the end instead of stopping at once.
    stop_at = stop_after if stop_after is not None and step < stop_after else None
    clips_window, time_window = 0, time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    sum_reduction = bool(getattr(model, "supports_sum_reduction", False))
    pending_skips: list = []  # this rank's skipped clips since the last flush

    def flush_skips() -> None:
        # Collective (every rank calls it at the same points): rank 0 logs the skips of all ranks.
        gathered = D.gather_objects(info, list(pending_skips))
        pending_skips.clear()
        if info.is_main:
            for r, part in enumerate(gathered):
                _report_skips(log, D.DistInfo(rank=r, world_size=info.world_size), "train", part, skip_counter)

    stopped = False
    while epoch < t["epochs"] and not stopped:
        micro_batches = [mb for group in sampler.epoch(epoch, step_in_epoch) for mb in group]
        loader = iter(_loader(train_set, micro_batches, data_cfg["num_workers"], cfg["seed"] * 1000003 + epoch))
        for _ in range(steps_per_epoch - step_in_epoch):
            loss_total, loss_count, items = 0.0, 0.0, 0.0
            for micro in range(t["grad_accum"]):
                batch = next(loader)
                pending_skips += batch["skipped"]
                sync = micro == t["grad_accum"] - 1
                ctx = ddp.no_sync() if (info.enabled and not sync) else nullcontext()
                with ctx, _autocast(cfg, info.device):
                    # Always through the (DDP) model, even when every clip was skipped: the task model
                    # then returns a zero loss over all trainable parameters, so this rank still
                    # takes part in the gradient all-reduce.
                    if sum_reduction:
                        loss, n = ddp(batch, reduction="sum")
                        items += float(n)
                        if n:
                            loss_total += float(loss.detach())
                            loss_count += float(n)
                        loss.backward()  # normalised by the step's item count below
                    else:
                        loss = ddp(batch)
                        if batch["records"]:  # an empty micro-batch is not part of the logged mean
                            loss_total += float(loss.detach())
                            loss_count += 1.0
                        (loss / t["grad_accum"]).backward()
                clips_window += len(batch["records"])
            if sum_reduction:
                loss_total, loss_count, items = D.totals(info, [loss_total, loss_count, items])
                # DDP averaged over ranks: × world / (items over all micro-batches and ranks).
                scale = info.world_size / max(items, 1.0)
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            else:
                loss_total, loss_count = D.totals(info, [loss_total, loss_count])
            loss_value = loss_total / loss_count if loss_count else float("nan")
            if t["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            step_in_epoch += 1
            bar.update(1)
            if step % t["log_every"] == 0 or step == total_steps:
                flush_skips()
                elapsed = time.perf_counter() - time_window
                clips_per_s = D.total(info, clips_window) / max(elapsed, 1e-9)
                clips_window, time_window = 0, time.perf_counter()
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss_value:.4f}", clips_s=f"{clips_per_s:.1f}")
                log.write(event="train", step=step, epoch=epoch, loss=loss_value, lr=lr, clips_per_s=clips_per_s)
            # (at an epoch's last step, the epoch-end checkpoint below stands for this one)
            if t["checkpoint_every"] and step % t["checkpoint_every"] == 0 and step_in_epoch < steps_per_epoch:
                last_ckpt = save_checkpoint()
            if stop_at is not None and step >= stop_at and step < total_steps:
                stopped = True
                break
        flush_skips()
        if stopped:
            if last_ckpt is None or not str(last_ckpt).endswith(f"{step:06d}"):
                last_ckpt = save_checkpoint()
            log.write(event="stopped", step=step)
            break
        epoch += 1
        step_in_epoch = 0
        if val_set is not None and (t["eval_every_epoch"] or epoch == t["epochs"]):
            last_eval = evaluate_model(ddp, val_set, cfg, info, log, skip_counter)
            if info.is_main:
                log.write(event="eval", step=step, epoch=epoch, **last_eval)
                bar.write(f"epoch {epoch}: " + _summary(last_eval))
        last_ckpt = save_checkpoint()
    bar.close()
    if info.is_main:
        for split, count in sorted(skip_counter.items()):
            log.write(event="skip_summary", split=split, count=count)
    return {"step": step, "epoch": epoch, "eval": last_eval, "checkpoint": last_ckpt, "skipped": skip_counter}


def _summary(metrics: dict) -> str:
    parts = [f"accuracy {metrics.get('accuracy', float('nan')):.4f} (n={metrics.get('n')})"]
    for key in ("rouge_l", "meteor"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    for task, m in metrics.get("tasks", {}).items():
        parts.append(f"{task} {m['accuracy']:.4f}")
    if metrics.get("skipped"):
        parts.append(f"skipped {metrics['skipped']}")
    return ", ".join(parts)


def evaluate(cfg: dict, checkpoint_path: str | Path, manifest: str | None = None) -> dict:
    """Load trainable weights from a checkpoint and evaluate on ``manifest`` (default ``data.val``)."""
    info = D.init()
    try:
        out_dir = Path(cfg["output_dir"])
        log = MetricsLog(out_dir / "metrics.jsonl" if info.is_main else None)
        data_cfg = prepare_data(cfg, info)
        on_error = data_cfg["on_error"]
        path = manifest or data_cfg.get("val")
        if not path:
            raise ValueError("evaluate: no manifest (give --manifest or data.val)")
        m = read_manifest(path, on_error)
        skip_counter: dict[str, int] = {}
        if info.is_main:
            _report_skips(log, D.DistInfo(), "eval", m.skipped, skip_counter)
        seed_everything(cfg["seed"])
        from .tasks import build_task_model

        train_records = read_manifest(data_cfg["train"], "skip").records if data_cfg.get("train") else m.records
        model = build_task_model(cfg, train_records).to(info.device)
        ckpt.load_weights(ckpt.resolve(checkpoint_path), model)
        ds = VideoQADataset(m.records, frames=data_cfg["frames"], image_size=data_cfg["image_size"],
                            mean=data_cfg["mean"], std=data_cfg["std"], on_error=on_error)
        metrics = evaluate_model(model, ds, cfg, info, log, skip_counter, split="eval")
        metrics["skipped"] += len(m.skipped)
        if info.is_main:
            log.write(event="evaluate", manifest=str(path), checkpoint=str(checkpoint_path), **metrics)
        return metrics
    finally:
        D.shutdown(info)
