"""Triton kernels and their launchers, one package per op: ``attention``, ``topk``, ``pool``.

The sources live in the repository's top-level ``kernels/<op>/`` folders (the project layout) and
are installed here by ``pyproject.toml``. ``kernels/`` itself has no ``__init__.py`` on purpose:
a top-level package named ``kernels`` would shadow Hugging Face's ``kernels`` (imported by
transformers) whenever the repository root is on ``sys.path``.

This file holds the one rule about where Triton runs, the Triton-version switch and the one rule
about poisoning kernel outputs; it imports no Triton. Every buffer a launcher hands to a kernel to
overwrite completely comes from :func:`empty`; the kernel tests install a fill
(``tests/conftest.py``: NaN, -1 for integers) as ``_fill``, so an element a kernel forgets
to write shows up. Nothing reads it from the environment. Outputs allocated in C++ instead (the
cpu backend's attention: all float) are poisoned there when their caller passes :func:`poisoned`,
with NaN, as ``_fill`` would.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

_fill: Optional[Callable[[torch.Tensor], None]] = None


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: Triton's interpreter then runs the kernels on CPU tensors
    (a correctness tool for tests, never a speed)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def device_reason(device_type: str) -> str | None:
    """Why the Triton kernels can't run on tensors of ``device_type`` (None: they can).

    Triton runs CUDA tensors; under ``TRITON_INTERPRET=1`` it runs CPU tensors instead.
    """
    if interpreting():
        if device_type == "cpu":
            return None
        return f"tensors are on {device_type}: TRITON_INTERPRET=1 runs the interpreter on CPU tensors"
    if device_type == "cuda":
        return None
    hint = " (TRITON_INTERPRET=1 runs the interpreter, for tests)" if device_type == "cpu" else ""
    return f"tensors are on {device_type}: Triton needs CUDA tensors{hint}"


def triton36() -> bool:
    """True under Triton 3.6 (what torch 2.11 ships), which allocates registers differently from
    the newest: the few launch configurations that spill there have a 3.6 variant (the AOT test
    runs under both in CI). Called by the kernel modules, which import Triton anyway."""
    import triton

    return tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty(shape)`` for an output a kernel writes in full (poisoned under the tests).

    The sizes go to ``torch.empty`` as separate ints: its argument parser reads a ``torch.Size`` or
    a tuple at twice the cost, which shows on small calls (``bench/host_overhead.py``)."""
    out = torch.empty(*shape, dtype=dtype, device=device) if len(shape) else torch.empty((), dtype=dtype, device=device)
    return poison(out)


def poison(out: torch.Tensor) -> torch.Tensor:
    """``out``, filled with the installed poison under the tests (a kernel must then write it in full)."""
    if _fill is not None:
        _fill(out)
    return out


def poisoned() -> bool:
    """Whether kernel outputs are poisoned (a fill is installed): the flag of outputs allocated in C++."""
    return _fill is not None
