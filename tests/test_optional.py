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
        "from stquery.cli import build_parser\n"
        "build_parser()\n"
        "for module, extra in (('stquery.models', 'models'), ('stquery.train.config', 'train'),\n"
        "                      ('stquery.profile.report', 'bench')):\n"
        "    try:\n"
        "        __import__(module)\n"
        "        if module == 'stquery.profile.report':\n"
        "            from stquery.profile.report import plot\n"
        "            plot([], None, 'x.png')\n"
        "    except ImportError as e:\n"
        "        assert f'stquery[{extra}]' in str(e), (module, str(e))\n"
        "    else:\n"
        "        raise AssertionError(module + ' imported without its extra')\n"
        "print('ok')\n")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
