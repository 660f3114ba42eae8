"""A kernel-only install: ``import stquery`` and the ops need only the core dependencies; every optional part names
the extra that brings what it misses (pyproject's [models], [train], [video], [bench], [test])."""
import subprocess
import sys

import pytest

from stquery._optional import require

OPTIONAL = ("transformers", "safetensors", "yaml", "tqdm", "nltk", "rouge_score", "av", "matplotlib")


def _without_optional(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which every optional dependency fails to import."""
    block = f"import sys\nfor m in {OPTIONAL!r}: sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300)


def test_require_names_the_extra():
    assert require("json", extra="models").dumps([]) == "[]"
    with pytest.raises(ImportError, match=r"stquery\[video\]"):
        require("no_such_module_here", extra="video", feature="decoding videos")
    with pytest.raises(ValueError, match="extra"):
        require("json", extra="everything")


def test_ops_and_help_run_without_the_extras_which_are_named_when_missing():
    r = _without_optional(
        "import torch, stquery as stq\n"
        "x = torch.randn(1, 2, 3, 4)\n"
        "t, s = stq.st_pool(x, backend='torch')\n"
        "assert torch.allclose(t, x.mean(2)) and torch.allclose(s, x.mean(1))\n"
        "from stquery.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "from stquery.train.config import load_config\n"
        "from stquery.profile.report import plot\n"
        "missing = (('models', lambda: __import__('stquery.models')), ('train', lambda: load_config('any.yaml')),\n"
        "           ('bench', lambda: plot([], None, 'x.png')))\n"
        "for extra, use in missing:\n"
        "    try:\n"
        "        use()\n"
        "    except ImportError as e:\n"
        "        assert f'stquery[{extra}]' in str(e), (extra, str(e))\n"
        "    else:\n"
        "        raise AssertionError(f'[{extra}] used without it installed')\n"
        "print('ok')\n")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "ok", r.stderr[-3000:]
    assert "profile" in r.stdout and "train" in r.stdout  # the help of every subcommand
