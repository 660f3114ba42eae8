"""Kernel tests on a CPU run the cuda backend's kernels under the CUDA emulation (the Triton kernels
run in Triton's interpreter, tests/conftest.py). Only here: elsewhere ``backend="cuda"`` on CPU
tensors is refused, as for users. Outputs are poisoned by ``tests/conftest.py``; the interpreter
evaluates both sides of ``tl.where``, so numpy's floating-point warnings are silenced here."""
import numpy as np
import pytest

from stquery.backends import cuda_backend

from ..conftest import DEVICE


@pytest.fixture(autouse=True)
def _cuda_emulation(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv(cuda_backend.EMULATE_ENV, "1")


@pytest.fixture(autouse=True)
def _quiet_interpreter():
    with np.errstate(all="ignore"):
        yield
