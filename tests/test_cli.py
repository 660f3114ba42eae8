"""The ``stquery`` command itself: --version, -v anywhere, plain help, one-line config errors."""
import argparse

import pytest

from stquery import __version__
from stquery.cli import build_parser, main


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"stquery {__version__}"


@pytest.mark.parametrize("argv, verbose", [
    (["train", "c.yaml"], False),
    (["-v", "train", "c.yaml"], True),
    (["train", "c.yaml", "-v"], True),
    (["train", "-v", "c.yaml", "--resume"], True),
    (["convert", "mustard", "a.json", "--videos", "v", "--out", "o", "--verbose"], True),
    (["profile", "-v"], True),
])
def test_verbose_before_or_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_help_is_plain_text():
    parsers = list(_parsers(build_parser()))
    assert len(parsers) >= 9  # stquery, profile, train, evaluate, convert and its 5 datasets
    for parser in parsers:
        text = parser.format_help()
        assert "``" not in text, parser.prog


@pytest.mark.parametrize("content, message", [
    (None, r"cannot read the config file .*missing\.yaml: No such file"),
    ("train:\n  lr: [1,\n", r"bad\.yaml: not valid YAML \(line 3, column 1\)"),
    ("- a\n- b\n", r"bad\.yaml: the config must be a YAML mapping, got list"),
    ("train: 5\n", r"train must be a mapping"),
    ("train:\n  lrr: 1\n", r"unknown config key 'train\.lrr'"),
    ("train:\n  keep_checkpoints: 0\n", r"train\.keep_checkpoints must be a positive integer, got 0"),
])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_config_is_one_line(tmp_path, capsys, content, message, command):
    import re

    path = tmp_path / ("missing.yaml" if content is None else "bad.yaml")
    if content is not None:
        path.write_text(content)
    argv = [command, str(path)] + (["--checkpoint", str(tmp_path)] if command == "evaluate" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.match(rf"stquery {command}: error: .*{message}", err), err
