"""The direction of imports between the layers (docs/architecture.md):

    consumers (models, train, cli, profile) -> public API (stquery, stquery.ops)
    ops (stquery/ops/<op>/)  -> registry (stquery.backends)  <- backends (stquery/backends/*_backend.py)
    backends -> kernels (stquery.kernels.<op>, csrc) -> each op's problem home (stquery.ops.<op>.problem)

Read from the source with ``ast``; imports inside functions count too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# An op's home modules that lower layers may import: problem type, enums and limits; shared dtypes.
HOMES = {"stquery.ops.common", "stquery.ops.attention.problem", "stquery.ops.topk.problem", "stquery.ops.pool.problem"}
REFERENCES = {"stquery.ops.attention.reference", "stquery.ops.topk.reference", "stquery.ops.pool.reference"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":  # kernels/<op>/ is installed as stquery.kernels.<op>
        parts = ["stquery"] + parts
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["stquery", "kernels"] and len(parts) > 2:
        base = ROOT / "kernels" / Path(*parts[2:])
    else:
        base = ROOT / Path(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """Absolute names of the stquery modules ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
            found |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {m for m in found if m == "stquery" or m.startswith("stquery.")}


def _files(*folders: str):
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_the_reader_finds_every_import():
    """The parser above sees relative, absolute and in-function imports."""
    got = imports(ROOT / "stquery" / "backends" / "triton_backend.py")
    assert {"stquery.kernels", "stquery.kernels.attention", "stquery.kernels.pool"} <= got


def test_registry_imports_no_op():
    assert {m for m in imports(ROOT / "stquery" / "backends" / "__init__.py") if m.startswith("stquery.ops")} == set()


@pytest.mark.parametrize("path", _files("stquery/backends"), ids=_rel)
def test_backends_import_only_problem_homes_and_references(path):
    """A backend implements primitives: it may read an op's problem type and (the torch backend)
    its reference, never the public op, its checks or its custom ops."""
    ops = {m for m in imports(path) if m.startswith("stquery.ops")}
    assert ops <= HOMES | REFERENCES


@pytest.mark.parametrize("path", _files("kernels"), ids=_rel)
def test_kernels_import_only_problem_homes(path):
    got = imports(path)
    assert {m for m in got if m.startswith("stquery.ops")} <= HOMES
    assert not {m for m in got if m.startswith("stquery.backends") or m.startswith("stquery.models")}


@pytest.mark.parametrize("path", _files("stquery/ops"), ids=_rel)
def test_ops_reach_backends_only_through_the_registry(path):
    got = imports(path)
    assert {m for m in got if m.startswith("stquery.backends")} <= {"stquery.backends"}
    assert not {m for m in got if m.startswith("stquery.kernels")}


@pytest.mark.parametrize("path", _files("stquery/models", "stquery/train") + [ROOT / "stquery" / "cli.py"], ids=_rel)
def test_consumers_use_the_public_api(path):
    """Models, trainer and CLI call ``stq.*`` (plus the limits an op publishes), nothing lower."""
    lower = {m for m in imports(path) if m.startswith(("stquery.ops", "stquery.backends", "stquery.kernels"))}
    assert lower <= HOMES


@pytest.mark.parametrize("path", _files("stquery/ops", "stquery/backends"), ids=_rel)
def test_no_hidden_dispatch(path):
    """Every way from an op to a kernel is a plain import: no importlib, no module __getattr__."""
    tree = ast.parse(path.read_text())
    assert "importlib" not in {m for n in ast.walk(tree) if isinstance(n, ast.Import) for m in (a.name for a in n.names)}
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
