"""The ``stquery`` command: ``profile`` (frame-count scaling), ``train``, ``evaluate``, ``convert``."""
from __future__ import annotations

import argparse
import logging
import sys


class _Parser(argparse.ArgumentParser):
    """Help as plain text: the docstrings' RST literals (````name````) print without the backticks.
    Subcommand parsers are made of this class too (argparse's default ``parser_class``)."""

    def format_help(self) -> str:
        return super().format_help().replace("``", "")

    def format_usage(self) -> str:
        return super().format_usage().replace("``", "")


def _add_verbose(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` on ``parser`` and every subcommand below it, so it is accepted before or after the
    subcommand; below the top it defaults to SUPPRESS so an absent ``-v`` keeps the top's value."""
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="log backend choices and progress details")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_verbose(sub, top=False)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .profile import cli as profile_cli
    from .train import cli as train_cli

    parser = _Parser(prog="stquery", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stquery {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    profile_cli.register(sub)
    train_cli.register(sub)
    _add_verbose(parser, top=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        result = args.func(args)
    except (ConfigError, CheckpointError) as e:  # the user's config, command line or checkpoint: one line
        print(f"stquery {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
