"""Shared test setup.

Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before any
``@triton.jit`` function is defined, i.e. before ``stquery.kernels`` is imported.
"""
import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)


def _cuda_missing() -> str:
    """Why the cuda backend can't run the kernel tests here ('' = it can: on CPU, under its emulation)."""
    from stquery.backends import cuda_backend

    return "; ".join(cuda_backend.toolchain_reasons(emulate=DEVICE == "cpu"))


CUDA_MISSING = _cuda_missing()


# The kernel backends the kernel tests run on this machine's test device (tests/kernels). On CPU
# the cuda backend runs its kernels' own source under the CUDA emulation (STQUERY_CUDA_EMULATE=1,
# set for tests/kernels by its conftest.py).
KERNEL_BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="needs triton with CUDA or TRITON_INTERPRET=1")),
    pytest.param("cpu", marks=pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs CPU tensors")),
    pytest.param("cuda", marks=pytest.mark.skipif(bool(CUDA_MISSING), reason=CUDA_MISSING or "runs")),
]


def assert_same_with_1_and_2_threads(run) -> None:
    """``run()`` returns tensors that must be bitwise equal with 1 and with 2 ATen threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _nan_fill(t):
    t.fill_(float("nan") if t.dtype.is_floating_point else -1)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    """Every output buffer a kernel backend allocates is poisoned, NaN for floats and -1 for
    integers, so an element a kernel forgets to write fails the comparison: the Triton launchers
    all through the one allocator's hook ``stquery.kernels._fill``."""
    import stquery.kernels

    monkeypatch.setattr(stquery.kernels, "_fill", _nan_fill)
