"""``stquery train`` / ``stquery evaluate`` / ``stquery convert``.

    stquery train configs/moving_shapes.yaml [--set key=value ...] [--resume [CHECKPOINT]]
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


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see stquery/train/config.py for every key and default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 --set model.temporal=false")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a video model (LoRA / adapters only) from a YAML config")
    _add_config_args(p)
    p.add_argument("--resume", nargs="?", const="__latest__", default=None, metavar="CHECKPOINT",
                   help="continue exactly where a run stopped: a checkpoint directory, or none for "
                        "OUTPUT_DIR/checkpoints/latest")
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
    result = train(cfg, resume=resume)
    if result["eval"] and os.environ.get("RANK", "0") == "0":
        print(json.dumps({"step": result["step"], "eval": result["eval"]}, default=str))
    return 0


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
