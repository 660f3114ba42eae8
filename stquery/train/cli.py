"""``stquery train`` / ``stquery evaluate`` / ``stquery convert``.

    stquery train configs/moving_shapes.yaml [--set key=value ...] [--resume [CHECKPOINT] | --overwrite]
    stquery evaluate configs/moving_shapes.yaml --checkpoint runs/moving_shapes [--manifest M.jsonl]
    stquery convert mustard sarcasm_data.json --videos DIR --out mustard.jsonl
    torchrun --standalone --nproc_per_node 2 -m stquery.train.cli train configs/moving_shapes.yaml

``register(subparsers)`` adds the subcommands to the main ``stquery`` parser; ``main(argv)`` runs
them on their own (tests call it in-process).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see stquery/train/config.py for every key and default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 --set model.temporal=false")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a video model (LoRA / adapters only) from a YAML config")
    _add_config_args(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", nargs="?", const="__latest__", default=None, metavar="CHECKPOINT",
                       help="continue exactly where a run stopped: a checkpoint directory, or none for "
                            "OUTPUT_DIR/checkpoints/latest")
    again.add_argument("--overwrite", action="store_true",
                       help="output_dir already holds a run: delete its metrics.jsonl and checkpoints/ and "
                            "train from scratch (without this or --resume, such an output_dir is refused)")
    p.set_defaults(func=_run_train)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint (accuracy, ROUGE-L, METEOR)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run output directory")
    p.add_argument("--manifest", default=None, help="JSONL manifest to evaluate (default: data.val)")
    p.set_defaults(func=_run_evaluate)

    from .converters import register as register_convert

    register_convert(subparsers)


def _run_train(args) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.overrides)
    resume = args.resume
    if resume == "__latest__":
        resume = cfg["output_dir"]
    start = time.perf_counter()
    result = train(cfg, resume=resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(summary_line(result, cfg["output_dir"], time.perf_counter() - start))
    return 0


def summary_line(result: dict, output_dir: str, seconds: float) -> str:
    """One line for a person; the numbers are also in ``OUTPUT/metrics.jsonl``."""
    from .trainer import _summary

    minutes, secs = divmod(round(seconds), 60)
    parts = [f"trained to step {result['step']} (epoch {result['epoch']}) in {minutes}m{secs:02d}s"]
    if result["eval"]:
        parts.append("val " + _summary(result["eval"]))
    parts.append(f"checkpoint {result['checkpoint']}")
    parts.append(f"log {Path(output_dir) / 'metrics.jsonl'}")
    return "; ".join(parts)


def _run_evaluate(args) -> int:
    from .config import load_config
    from .trainer import evaluate

    cfg = load_config(args.config, args.overrides)
    metrics = evaluate(cfg, args.checkpoint, args.manifest)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(metrics, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stquery")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
