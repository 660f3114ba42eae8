"""The ``cpu`` backend: fused C++ kernels in ``csrc/<op>/*_cpu.cpp`` for CPU tensors (docs/backends.md §3).

Built just in time on first use with the host compiler and ninja (:mod:`stquery.backends.jit`),
cached under a hash of the sources, the compiler flags and the CPU's ISA (ATen's CPU capability and
the ``/proc/cpuinfo`` flags), so an edit or another machine rebuilds and an unchanged tree never
does. The kernels run on ATen's thread pool (``at::parallel_for``, governed by
``torch.set_num_threads``), one attention sequence (or row) per task, on ``at::vec::Vectorized``
float32 registers: fp16/bf16 are converted on load, accumulation is float32, and every output
element is computed by one task in a fixed order, so results do not depend on the thread count.

Outputs come from the extension's output cache (``csrc/common/output_cache.h``: freed output buffers
are kept for the next call instead of being handed back to the OS and faulted in again; see
:func:`empty_cache`), poisoned under the tests, and are filled in place. Attention's are allocated in
C++ by ``csrc/attention/attention_autograd_cpu.cpp`` (poisoned when :func:`stquery.kernels.poisoned`),
which, for the eager call that records autograd, :meth:`CpuBackend.attention_recorded`, also records
the backward as a C++ autograd node. On a small call the Python allocations and
``torch.autograd.Function`` cost more than the kernel (``bench/host_overhead.py``).
"""
from __future__ import annotations

import functools

import torch

from . import jit
from ..kernels import poison, poisoned
from ..ops.common import KERNEL_DTYPES as DTYPES
from ..ops.pool.problem import pooled_length

SOURCES = ("cpu_bindings.cpp", "attention/attention_cpu.cpp", "attention/attention_autograd_cpu.cpp",
           "pool/pool_cpu.cpp", "topk/topk_cpu.cpp")
OPS = frozenset({"attention", "topk_select", "gather_gate", "multiscale_pool", "st_pool"})
CACHE_ENV = "STQUERY_CPU_CACHE"  # the build cache's folder (default: torch's extensions folder)


def cflags() -> list[str]:
    """``-O3 -march=native -fopenmp`` and the ``at::vec`` ISA matching ATen's capability."""
    isa = {"AVX512": "AVX512", "AVX2": "AVX2"}.get(jit.cpu_isa()[0], "DEFAULT")
    defs = [f"-DCPU_CAPABILITY={isa}"] + ([f"-DCPU_CAPABILITY_{isa}"] if isa != "DEFAULT" else [])
    return ["-O3", "-march=native", "-fopenmp", *defs]


def build_name() -> str:
    """``stquery_cpu_<hash of the sources, the headers they include, the flags and the ISA>``."""
    files = jit.closure(jit.source_dir() / f for f in SOURCES)
    return jit.build_name("stquery_cpu", files, [*cflags(), *jit.cpu_isa()])


@functools.cache
def module():
    """The compiled extension (built on first call, then loaded from its cache directory)."""
    name = build_name()
    return jit.load(name, jit.build_dir(name, CACHE_ENV), [jit.source_dir() / s for s in SOURCES],
                    extra_cflags=cflags(), extra_ldflags=["-fopenmp"])


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
    """An output the kernels write in full, from the extension's output cache (``csrc/common/output_cache.h``)."""
    return poison(module().empty(shape, dtype))


def empty_cache() -> None:
    """Frees the buffers the cpu backend's output cache holds (``STQUERY_CPU_OUTPUT_CACHE_MB`` caps it;
    outputs still alive go back to it when freed). Does nothing if the extension was never built."""
    if module.cache_info().currsize:
        module().empty_cache()


class CpuBackend:
    name = "cpu"
    devices = frozenset({"cpu"})

    def supports(self, op, *args) -> list[str]:
        if op not in OPS:
            return [f"no CPU kernel for {op} (the cpu backend implements {', '.join(sorted(OPS))})"]
        x = args[0]  # the op's checks have put every tensor argument on x's device
        why = []
        if not x.is_cpu:
            why.append(f"tensors are on {x.device.type}, the cpu backend needs CPU tensors")
        if x.dtype not in DTYPES:
            why.append(f"dtype {x.dtype} is not one of float32, float16, bfloat16")
        if op == "gather_gate" and args[1].dtype != x.dtype:
            why.append(f"scores dtype {args[1].dtype} differs from x's {x.dtype}")
        # dynamo can't trace the build; the eager call that precedes compiling has tried it
        if not why and not torch.compiler.is_compiling() and _build_error():
            why.append(_build_error())
        return why

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        return module().attention_fwd_alloc(q, k, v, alpha, dense, key_padding, frame_lengths,
                                            *jit.problem_args(prob), poisoned())

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        return module().attention_bwd_alloc(grad_out, q, k, v, stats, alpha, dense, key_padding, frame_lengths,
                                            *jit.problem_args(prob), poisoned())

    def attention_recorded(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        """``attention_fwd``'s out, its backward recorded by a C++ autograd node (see the module docstring)."""
        return module().attention_recorded(q, k, v, alpha, dense, key_padding, frame_lengths,
                                           *jit.problem_args(prob), poisoned())

    def topk_select(self, scores, k, order):
        idx = _empty((scores.shape[0], k), torch.int64)
        module().topk_select(scores, k, order, idx)
        return idx

    def gather_gate(self, x, scores, idx, gate, scales):
        y = _empty((x.shape[0], pooled_length(idx.shape[1], scales), x.shape[2]), x.dtype)
        module().gather_gate_fwd(x, scores, idx, gate, list(scales), y)
        return y

    def gather_gate_bwd(self, grad_y, x, scores, idx, gate, scales):
        dx = _empty(x.shape, x.dtype)
        dscores = None if gate == "none" else _empty(scores.shape, scores.dtype)
        module().gather_gate_bwd(grad_y, x, scores, idx, gate, list(scales), dx, dscores)
        return dx, dscores

    def multiscale_pool(self, y, scales):
        pooled = _empty((y.shape[0], pooled_length(y.shape[1], scales), y.shape[2]), y.dtype)
        module().multiscale_pool_fwd(y, list(scales), pooled)
        return pooled

    def multiscale_pool_bwd(self, grad, k, scales):
        dy = _empty((grad.shape[0], k, grad.shape[2]), grad.dtype)
        module().multiscale_pool_bwd(grad, list(scales), dy)
        return dy

    def st_pool(self, x):
        B, T, P, C = x.shape
        temporal, spatial = _empty((B, T, C), x.dtype), _empty((B, P, C), x.dtype)
        module().st_pool_fwd(x, temporal, spatial)
        return temporal, spatial

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        (B, T, C), P = grad_temporal.shape, grad_spatial.shape[1]
        dx = _empty((B, T, P, C), grad_temporal.dtype)
        module().st_pool_bwd(grad_temporal, grad_spatial, dx)
        return dx


backend = CpuBackend()
