"""Kernel tests on a CPU run the cuda backend's kernels under the CUDA emulation (the Triton kernels
run in Triton's interpreter, tests/conftest.py). Only here: elsewhere ``backend="cuda"`` on CPU
tensors is refused, as for users."""
import pytest

from stquery.backends import cuda_backend

from ..conftest import DEVICE


@pytest.fixture(autouse=True)
def _cuda_emulation(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv(cuda_backend.EMULATE_ENV, "1")
