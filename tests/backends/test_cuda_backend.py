"""The cuda backend's dispatch and build plumbing. Its kernels are tested against the reference in
tests/kernels/ (through the CPU emulation without a GPU), their races in tests/cuda/test_tsan.py and
their resources in tests/cuda/test_nvcc.py."""
import re

import pytest
import torch

from stquery import backends
from stquery.backends import cuda_backend


def test_build_name_is_keyed_by_target():
    name = cuda_backend.build_name(emulate=True)
    assert re.fullmatch(r"stquery_cudaemu_[0-9a-f]{16}", name)
    assert name == cuda_backend.build_name(emulate=True)


def test_build_covers_every_op_folder():
    folders = {p.parent.name for p in cuda_backend.sources() if p.suffix == ".cu"}
    assert {"attention", "pool", "topk"} <= folders
    assert all(p.exists() for p in cuda_backend.sources())


def test_supports_names_what_it_lacks(monkeypatch):
    assert "no CUDA kernel for no_such_op" in cuda_backend.backend.supports("no_such_op", torch.zeros(1))[0]
    monkeypatch.delenv(cuda_backend.EMULATE_ENV, raising=False)
    why = cuda_backend.backend.supports("st_pool", torch.zeros(1, 1, 1, 1))
    assert any("STQUERY_CUDA_EMULATE=1" in w for w in why)
    assert any("float64" in w for w in cuda_backend.backend.supports("st_pool", torch.zeros(1, 1, 1, 1, dtype=torch.float64)))


def test_emulation_is_never_picked_by_auto(monkeypatch):
    monkeypatch.setenv(cuda_backend.EMULATE_ENV, "1")
    monkeypatch.delenv(backends.ENV, raising=False)
    x = torch.randn(1, 2, 3, 4)
    assert cuda_backend.backend.supports("st_pool", x) == cuda_backend.toolchain_reasons(emulate=True)
    assert backends.resolve("st_pool", None, "cpu", x) != "cuda"
