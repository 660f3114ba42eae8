"""The ``stquery`` command: ``profile`` (frame-count scaling), ``train``, ``evaluate``, ``convert``."""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import profile
    from .train import cli as train_cli

    parser = argparse.ArgumentParser(prog="stquery", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices and progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    profile.register(sub)
    train_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
