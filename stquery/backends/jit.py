"""Just-in-time builds of the compiled backends' extensions (``cpu``, ``cuda``): one helper, one cache rule.

An extension is built by ``torch.utils.cpp_extension.load`` (ninja) into a folder named
``<prefix>_<16 hex digits>``: a hash of its sources and every header they include (:func:`closure`;
path under ``csrc/`` and bytes),
the build's key (compiler flags and target: the CPU's ISA, the CUDA architectures) and torch's
version. An edit, another flag or another machine rebuilds; an unchanged tree loads the cached
build. The folder lies under ``$<cache_env>`` when that is set, else under torch's extensions folder.

``torch.utils.cpp_extension`` (which imports setuptools, about a third of a second) is imported
only to build or to ask about the toolchain, never by ``import stquery``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import torch


def source_dir() -> Path:
    """``csrc/``, installed as the package ``stquery.csrc``."""
    import stquery.csrc

    return Path(next(iter(stquery.csrc.__path__)))


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def closure(sources) -> list[Path]:
    """``sources`` and every file they ``#include "..."``, transitively (a name is looked up beside
    the including file, then in ``csrc/``): what a build's hash covers. A header the build never
    includes rebuilds nothing; one it comes to include is never missed."""
    root = source_dir()
    seen, todo = set(), [Path(s).resolve() for s in sources]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _INCLUDE.findall(path.read_text()):
            found = next((base / name for base in (path.parent, root) if (base / name).is_file()), None)
            if found is not None:
                todo.append(found.resolve())
    return sorted(seen)


def cpp_extension():
    """``torch.utils.cpp_extension``, imported on first use."""
    from torch.utils import cpp_extension

    return cpp_extension


@functools.cache
def cpu_isa() -> tuple[str, str]:
    """(ATen's CPU capability, a hash of the CPU's feature flags in ``/proc/cpuinfo``)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability(), hashlib.sha256(flags.encode()).hexdigest()[:12]


def build_name(prefix: str, files, key) -> str:
    """``<prefix>_<hash of files (paths under csrc/ and bytes), key (flags, target) and torch's version>``."""
    root = source_dir().resolve()
    h = hashlib.sha256()
    for path in files:
        h.update(str(Path(path).resolve().relative_to(root)).encode())
        h.update(Path(path).read_bytes())
    h.update(repr(list(key)).encode())
    h.update(torch.__version__.encode())
    return f"{prefix}_{h.hexdigest()[:16]}"


def build_dir(name: str, cache_env: str) -> Path:
    """The folder of build ``name`` (created): ``$cache_env/name``, else torch's extensions folder."""
    root = os.environ.get(cache_env)
    path = Path(root) / name if root else Path(cpp_extension()._get_build_directory(name, verbose=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(name: str, directory: Path, sources, **options):
    """Build (or load the cached build of) extension ``name`` in ``directory`` from ``sources``,
    with ``csrc/`` on the include path; ``options`` go to ``cpp_extension.load`` (flags, with_cuda)."""
    return cpp_extension().load(name=name, sources=[str(s) for s in sources], extra_include_paths=[str(source_dir())],
                                build_directory=str(directory), **options)


@functools.cache
def ninja_available() -> bool:
    """Asked once: ``cpp_extension.is_ninja_available`` runs ``ninja --version`` in a subprocess."""
    return cpp_extension().is_ninja_available()


def problem_args(prob) -> tuple:
    """The :class:`stquery.ops.attention.problem.AttnProblem` fields the bindings of both compiled
    backends take after the tensors, in their order (pybind11 reads the tuples as vectors)."""
    return prob.frames, prob.kinds, prob.radii, prob.global_start, prob.global_end, prob.mode, prob.scale
