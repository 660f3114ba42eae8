"""The ``cuda`` backend: CUDA C++ in ``csrc/`` (installed as ``stquery.csrc``), bound with pybind11.

Built just in time on first use with ``torch.utils.cpp_extension.load`` (ninja) into a directory
named after the hash of the sources, so an edit rebuilds and an unchanged tree never does
(stylegan3's ``custom_ops`` scheme). It implements ``st_pool`` so far; for every other op
``supports()`` says so and dispatch uses another backend.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch.utils import cpp_extension

from ..ops.common import KERNEL_DTYPES as DTYPES

SOURCES = ("bindings.cpp", "st_pool.cu")
HEADERS = ("st_pool.h",)
OPS = frozenset({"st_pool"})


def source_dir() -> Path:
    import stquery.csrc

    return Path(next(iter(stquery.csrc.__path__)))


def build_name() -> str:
    """``stquery_cuda_<hash of every source and header>``."""
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((source_dir() / name).read_bytes())
    return f"stquery_cuda_{h.hexdigest()[:16]}"


@functools.cache
def module():
    """The compiled extension (built on first call, then loaded from the cache directory)."""
    name = build_name()
    root = os.environ.get("STQUERY_CUDA_CACHE")
    build_dir = Path(root) / name if root else Path(cpp_extension._get_build_directory(name, verbose=False))
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(source_dir() / s) for s in SOURCES],
        extra_include_paths=[str(source_dir())],
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        build_directory=str(build_dir),
    )


class CudaBackend:
    name = "cuda"
    devices = frozenset({"cuda"})

    def supports(self, op, *args) -> list[str]:
        if op not in OPS:
            return [f"no CUDA kernel for {op} (the cuda backend implements {', '.join(sorted(OPS))})"]
        if not torch.cuda.is_available():
            return ["CUDA is not available"]
        x = next(a for a in args if isinstance(a, torch.Tensor))
        why = []
        if x.device.type != "cuda":
            why.append(f"tensors are on {x.device.type}, the cuda backend needs CUDA tensors")
        if x.dtype not in DTYPES:
            why.append(f"dtype {x.dtype} is not one of float32, float16, bfloat16")
        if cpp_extension.CUDA_HOME is None:
            why.append("no CUDA toolkit found to build the extension (set CUDA_HOME)")
        return why

    def st_pool(self, x):
        with torch.cuda.device(x.device):
            temporal, spatial = module().st_pool_fwd(x, torch.cuda.current_stream().cuda_stream)
        return temporal, spatial

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        with torch.cuda.device(grad_temporal.device):
            return module().st_pool_bwd(grad_temporal, grad_spatial, torch.cuda.current_stream().cuda_stream)


backend = CudaBackend()
