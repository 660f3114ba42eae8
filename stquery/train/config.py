"""Training configuration: a YAML file over built-in defaults, then ``--set key=value`` overrides.

The config is a plain nested dict. ``load_config(path, overrides)`` merges, in order:
:data:`DEFAULTS`, the YAML file, each override (``a.b.c=value``; the value is parsed as YAML, so
``--set train.lr=3e-4``, ``--set model.temporal=false`` and ``--set data.frames=8`` all get the
right type). A key that is not in the defaults is refused (a typo should not train silently with
the default), except under the free-form sections listed in :data:`OPEN_SECTIONS`. Every problem
with the file, a key or a value raises :class:`ConfigError` naming it (the ``stquery`` command
prints it as one line, without a traceback).

Defaults follow MTransLLaMA §6.1: AdamW, lr 1e-4, betas (0.9, 0.95), weight decay 0.05, 4 frames
(set ``data.frames: 8`` for MUStARD), batch 2.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .._optional import require


def _yaml():
    """PyYAML, imported on use: ``stquery --help`` imports this module for :class:`ConfigError`."""
    return require("yaml", extra="train", feature="stquery train's configs")


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/default",
    "data": {
        # JSONL manifests (docs/training.md §5) or, for the synthetic set, a `shapes:` section instead.
        "train": None,
        "val": None,
        "frames": 4,
        "image_size": 224,
        "mean": [0.48145466, 0.4578275, 0.40821073],  # CLIP / BLIP-2 EVA ViT normalisation
        "std": [0.26862954, 0.26130258, 0.27577711],
        "on_error": "raise",  # "raise" | "skip"
        "num_workers": 0,
        "shapes": None,  # moving-shapes generator options, see stquery.train.shapes
    },
    "model": {
        "kind": "video_lmm",  # "video_lmm" (the LLM head, default for real data) | "shapes_classifier"
        "temporal": True,
        "dar": False,
        # video_lmm only (stquery/train/lmm.py); all paths local, nothing is downloaded:
        "instructblip": None,  # InstructBLIP or InstructBLIP-Video directory (vision + Q-Former + projection + LLM)
        "llava": None,  # or: a LLaVA(-NeXT) directory (tokenizer_kind pool / linvt)
        "language_model": None,  # or: a causal LM directory (tokenizer_kind linvt / pool)
        "vision_model": None,  # with language_model: a vision model directory (None: precomputed features)
        "tokenizer_kind": "qformer",  # video tokenizer: "qformer" | "linvt" | "pool"
        "tokenizer": None,  # LLM text tokenizer directory (default: instructblip / language_model)
        "qformer_tokenizer": None,  # Q-Former tokenizer (default: <instructblip>/qformer_tokenizer)
        "features_only": False,  # manifests hold precomputed features: drop the vision encoder
        "drop_cls": None,  # drop each frame's first (CLS) token; None: the builder's choice
        "dtype": None,  # None / "float32" | "bfloat16" | "float16" for the frozen checkpoints (trainable weights stay float32; training rejects float16)
        "prompt_template": None,  # prompt around the instruction ("{prompt}"); None: the model family's
        "max_prompt_tokens": None,  # keep only the last N prompt tokens; None: all
        "options": {},  # passed to the model builder (sizes, LoRA rank, video-tokenizer kwargs ...)
    },
    "train": {
        "epochs": 25,
        "batch_size": 2,  # global batch per optimizer step (all ranks, all accumulation steps)
        "grad_accum": 1,
        "lr": 1e-4,
        "betas": [0.9, 0.95],
        "weight_decay": 0.05,
        "warmup_steps": 0,
        "scheduler": "cosine",  # "cosine" | "constant"
        "max_grad_norm": None,
        "amp": "auto",  # "auto" (bf16 on GPU, off on CPU) | "bf16" | "off"
        "activation_checkpointing": False,
        "deterministic": True,
        "stop_after": None,  # absolute step: a run starting before it stops (and checkpoints) there; ignored on a --resume at/after it
        "log_every": 10,
        "checkpoint_every": None,  # optimizer steps; a checkpoint is also written each epoch end
        "keep_checkpoints": 2,  # keep the N newest checkpoints; None keeps all
        "eval_every_epoch": True,
        "progress": True,
        "threads": None,  # torch.set_num_threads on CPU; None leaves torch's choice
    },
    "eval": {
        "batch_size": 16,
        "max_new_tokens": 32,
    },
}

OPEN_SECTIONS = ("model.options", "data.shapes")


class ConfigError(ValueError):
    """A config file that is missing or malformed, an unknown key or a bad value."""


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    for key, value in update.items():
        path = f"{prefix}{key}"
        open_section = any(path == s or path.startswith(s + ".") for s in OPEN_SECTIONS)
        if key not in base and not open_section and not any(prefix.startswith(s + ".") for s in OPEN_SECTIONS):
            raise ConfigError(f"unknown config key {path!r}; known keys here: {sorted(base)}")
        if isinstance(base.get(key), dict) and not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping (keys: {sorted(base[key])}), got {value!r}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, path + ".")
        else:
            base[key] = copy.deepcopy(value)
    return base


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    value = _yaml().safe_load(raw) if raw != "" else None
    # YAML 1.1 reads "1e-4" as a string; accept it as the float everyone means.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults, then the YAML file at ``path``, then each ``key=value`` override."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        yaml = _yaml()
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
            raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping, got {type(loaded).__name__}")
        _merge(cfg, _fix_floats(loaded))
    for item in overrides:
        keys, value = parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested)
    _validate(cfg)
    return cfg


def _fix_floats(obj: Any) -> Any:
    """YAML 1.1 (PyYAML) leaves ``1e-4`` a string; turn such strings into floats."""
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    if isinstance(obj, str):
        try:
            return float(obj) if any(c in obj for c in "eE") and obj.strip()[0] in "0123456789.-+" else obj
        except ValueError:
            return obj
    return obj


def _validate(cfg: dict) -> None:
    t = cfg["train"]
    if cfg["data"]["on_error"] not in ("raise", "skip"):
        raise ConfigError(f"data.on_error must be 'raise' or 'skip', got {cfg['data']['on_error']!r}")
    if t["amp"] not in ("auto", "bf16", "off"):
        raise ConfigError(f"train.amp must be 'auto', 'bf16' or 'off', got {t['amp']!r}")
    if t["scheduler"] not in ("cosine", "constant"):
        raise ConfigError(f"train.scheduler must be 'cosine' or 'constant', got {t['scheduler']!r}")
    for key in ("batch_size", "grad_accum", "epochs", "keep_checkpoints"):
        if key == "keep_checkpoints" and t[key] is None:
            continue
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
    if cfg["model"]["kind"] not in ("video_lmm", "shapes_classifier"):
        raise ConfigError(f"model.kind must be 'video_lmm' or 'shapes_classifier', got {cfg['model']['kind']!r}")
    if cfg["model"]["tokenizer_kind"] not in ("qformer", "linvt", "pool"):
        raise ConfigError(f"model.tokenizer_kind must be 'qformer', 'linvt' or 'pool', got {cfg['model']['tokenizer_kind']!r}")
    if not isinstance(cfg["data"]["frames"], int) or cfg["data"]["frames"] < 1:
        raise ConfigError(f"data.frames must be a positive integer, got {cfg['data']['frames']!r}")


def dump_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(_yaml().safe_dump(cfg, sort_keys=False))
