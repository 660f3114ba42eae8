"""The repository root on ``sys.path`` (``python -m``, torchrun, pytest) must not shadow other
packages: the top-level ``kernels/`` folder is not an importable package, so Hugging Face's
``kernels`` (imported by transformers) is the one ``import kernels`` finds."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_kernels_folder_is_not_a_package():
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_import_kernels_from_root_is_not_ours():
    code = (
        "import importlib.util\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec and spec.origin else '')\n"
    )
    r = _run_from_root("-c", code)
    assert r.returncode == 0, r.stderr
    origin = r.stdout.strip()
    assert not origin.startswith(str(ROOT / "kernels")), f"`import kernels` from the repository root finds {origin}"


def test_transformers_and_cli_import_from_root():
    r = _run_from_root("-c", "import transformers.activations, stquery.kernels.topk")
    assert r.returncode == 0, r.stderr
    r = _run_from_root("-m", "stquery", "--help")
    assert r.returncode == 0, r.stderr
    assert "profile" in r.stdout
