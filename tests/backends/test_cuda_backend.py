"""The cuda backend: its sources compile for sm_80/sm_90 without spills here (no GPU needed), and on
a GPU its ops match the reference."""
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

import stquery as stq
from stquery.backends import cuda_backend
from stquery.ops import reference as ref

from ..ops.helpers import strided

SRC = cuda_backend.source_dir()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_without_spills(arch, tmp_path):
    for cu in (p for p in cuda_backend.sources() if p.suffix == ".cu"):
        out = subprocess.run(
            ["nvcc", "-c", "-std=c++20", f"-arch=sm_{arch}", "-O3", "--use_fast_math", "-Xptxas", "-v",
             f"-I{SRC}", str(cu), "-o", str(tmp_path / f"{cu.stem}.o")],
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", out.stderr)]
        assert spills and not any(spills), out.stderr


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_bindings_compile_against_torch_headers():
    inc = Path(torch.__file__).parent / "include"
    out = subprocess.run(
        ["c++", "-fsyntax-only", "-std=c++20", f"-I{inc}", f"-I{inc}/torch/csrc/api/include",
         f"-I{sysconfig.get_paths()['include']}", f"-I{SRC}", "-DTORCH_EXTENSION_NAME=stquery_cuda_check",
         str(SRC / "bindings.cpp")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_build_name_follows_the_sources():
    assert re.fullmatch(r"stquery_cudaemu_[0-9a-f]{16}", cuda_backend.build_name(emulate=True))


def test_supports_names_what_it_lacks():
    assert "no CUDA kernel for no_such_op" in cuda_backend.backend.supports("no_such_op", torch.zeros(1))[0]
    if not torch.cuda.is_available():
        assert "STQUERY_CUDA_EMULATE=1" in cuda_backend.backend.supports("st_pool", torch.zeros(1, 1, 1, 1))[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_st_pool_matches_reference_on_gpu(dtype):
    x = strided((3, 5, 17, 40), dtype=dtype, device="cuda").requires_grad_()
    got = stq.st_pool(x, backend="cuda")
    want = ref.st_pool(x.detach().double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=2e-2, atol=2e-2)
    grads = [torch.randn_like(g) for g in got]
    (dx,) = torch.autograd.grad(got, x, grads)
    x64 = x.detach().double().requires_grad_()
    (want_dx,) = torch.autograd.grad(ref.st_pool(x64), x64, [g.double() for g in grads])
    torch.testing.assert_close(dx.double(), want_dx, rtol=2e-2, atol=2e-2)
