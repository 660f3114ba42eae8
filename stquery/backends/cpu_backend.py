"""The ``cpu`` backend: fused C++ kernels in ``csrc/<op>/*_cpu.cpp`` for CPU tensors (SPEC §3).

Built just in time on first use with the host compiler and ninja (``torch.utils.cpp_extension.load``)
into a directory named after a hash of the sources, the compiler flags and the CPU's ISA (ATen's
CPU capability and the ``/proc/cpuinfo`` flags), so an edit or another machine rebuilds and an
unchanged tree never does. The kernels run on ATen's thread pool (``at::parallel_for``, governed by
``torch.set_num_threads``), one attention sequence (or row) per task, on ``at::vec::Vectorized``
float32 registers: fp16/bf16 are converted on load, accumulation is float32, and every output
element is computed by one task in a fixed order, so results do not depend on the thread count.

Outputs are allocated here (NaN-filled when ``STQUERY_POISON=1``, for tests) and filled in place.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch

from ..ops.attention.problem import NONE
from ..ops.common import KERNEL_DTYPES as DTYPES
from ..ops.pool.problem import pooled_length

SOURCES = ("cpu_bindings.cpp", "attention/attention_cpu.cpp")
HEADERS = ("common/cpu_math.h", "attention/attention_cpu.h")
OPS = frozenset({"attention"})


def source_dir() -> Path:
    import stquery.csrc

    return Path(next(iter(stquery.csrc.__path__)))


def _isa() -> tuple[str, str]:
    """(ATen's CPU capability, a hash of the CPU's feature flags)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability(), hashlib.sha256(flags.encode()).hexdigest()[:12]


def cflags() -> list[str]:
    """``-O3 -march=native -fopenmp`` and the ``at::vec`` ISA matching ATen's capability."""
    capability = _isa()[0]
    isa = {"AVX512": "AVX512", "AVX2": "AVX2"}.get(capability, "DEFAULT")
    defs = [f"-DCPU_CAPABILITY={isa}"] + ([f"-DCPU_CAPABILITY_{isa}"] if isa != "DEFAULT" else [])
    return ["-O3", "-march=native", "-fopenmp", *defs]


def build_name() -> str:
    """``stquery_cpu_<hash of sources, headers, flags and ISA>``."""
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((source_dir() / name).read_bytes())
    h.update(" ".join(cflags()).encode())
    h.update(" ".join(_isa()).encode())
    h.update(torch.__version__.encode())
    return f"stquery_cpu_{h.hexdigest()[:16]}"


@functools.cache
def module():
    """The compiled extension (built on first call, then loaded from the cache directory)."""
    from torch.utils import cpp_extension

    name = build_name()
    root = os.environ.get("STQUERY_CPU_CACHE")
    build_dir = Path(root) / name if root else Path(cpp_extension._get_build_directory(name, verbose=False))
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(source_dir() / s) for s in SOURCES],
        extra_include_paths=[str(source_dir())],
        extra_cflags=cflags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
    )


@functools.cache
def _build_error() -> str | None:
    """Why the extension can't be built here (no compiler, no ninja), or None; tried once."""
    try:
        module()
    except Exception as e:  # noqa: BLE001  (any build failure is a reason to pass this backend over)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"the C++ extension failed to build ({type(e).__name__}: {first})"
    return None


def _empty(shape, dtype) -> torch.Tensor:
    """``torch.empty`` on CPU; NaN-filled when ``STQUERY_POISON=1`` (tests), so an element a
    kernel forgets to write shows up."""
    out = torch.empty(shape, dtype=dtype)
    if os.environ.get("STQUERY_POISON", "0") == "1" and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


def _alpha4(alpha, prob):
    """Routing weights as float32 ``[B, L, H, p]`` (spatial ``[G, H, p]`` -> ``[G, 1, H, p]``), a view."""
    if alpha is None:
        return None
    alpha = alpha if alpha.dtype == torch.float32 else alpha.float()
    return alpha if prob.frames else alpha.unsqueeze(1)


def _static(prob):
    return (prob.frames, list(prob.kinds), list(prob.radii), prob.global_start, prob.global_end, prob.mode, prob.scale)


class CpuBackend:
    name = "cpu"
    devices = frozenset({"cpu"})

    def supports(self, op, *args) -> list[str]:
        if op not in OPS:
            return [f"no CPU kernel for {op} (the cpu backend implements {', '.join(sorted(OPS))})"]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        why = []
        if any(t.device.type != "cpu" for t in tensors):
            why.append(f"tensors are on {tensors[0].device.type}, the cpu backend needs CPU tensors")
        x = tensors[0]
        if x.dtype not in DTYPES:
            why.append(f"dtype {x.dtype} is not one of float32, float16, bfloat16")
        if not why and _build_error():
            why.append(_build_error())
        return why

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        out = _empty(q.shape, q.dtype)
        stats = _empty((*q.shape[:3], prob.stats_width), torch.float32)
        module().attention_fwd(q, k, v, out, stats, _alpha4(alpha, prob), dense, key_padding, frame_lengths,
                               *_static(prob))
        return out, stats

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        dq, dk, dv = _empty(q.shape, q.dtype), _empty(k.shape, k.dtype), _empty(v.shape, v.dtype)
        routed = prob.mode != NONE
        dalpha = _empty((alpha.shape[:-1].numel(), prob.p), torch.float32) if routed else None
        module().attention_bwd(grad_out, q, k, v, stats, _alpha4(alpha, prob), dense, key_padding, frame_lengths,
                               dq, dk, dv, dalpha, *_static(prob))
        if not routed:
            return dq, dk, dv, None
        return dq, dk, dv, dalpha.view(alpha.shape).to(alpha.dtype)


backend = CpuBackend()
