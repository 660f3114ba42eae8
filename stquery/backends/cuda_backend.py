"""The ``cuda`` backend: CUDA C++ in ``csrc/`` (installed as ``stquery.csrc``), bound with pybind11.

Two builds of the same sources, each just in time (:mod:`stquery.backends.jit`: ninja, cached under
a hash of the sources, headers, compiler flags and target, so an edit rebuilds and an unchanged tree
never does):

- the CUDA build (nvcc, the architectures torch targets) for CUDA tensors;
- the emulation build (the host C++ compiler, ``-DSTQ_CUDA_EMULATE``: ``csrc/common/cuda_emu.h``
  runs every CUDA thread as an OS thread) for CPU tensors, only when ``STQUERY_CUDA_EMULATE=1`` is
  set. It exists to test the kernels' own source without a GPU (as ``TRITON_INTERPRET=1`` does for
  Triton); it is slow, and auto never picks it (``devices`` is CUDA only).

Layout: ``csrc/bindings.cpp`` (the module), ``csrc/common/`` (emulation, helpers), one folder per
op with its kernels (``*.cu``), launcher header and ``*_bindings.cpp``; every ``csrc/*/*.cu`` and
``csrc/*/*_bindings.cpp`` is compiled. Outputs are allocated through :func:`stquery.kernels.empty` (poisoned
under the tests) and written by the kernels.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import torch

from . import jit
from .jit import source_dir
from ..kernels import empty
from ..ops.attention.problem import NONE
from ..ops.common import KERNEL_DTYPES as DTYPES
from ..ops.pool.problem import pooled_length
from ..ops.topk import problem as topk_problem
from ..ops.topk.problem import GATES  # the codes of csrc/pool/pool.h's Gate

EMULATE_ENV = "STQUERY_CUDA_EMULATE"
CACHE_ENV = "STQUERY_CUDA_CACHE"  # the build cache's folder (default: torch's extensions folder)
OPS = frozenset({"attention", "topk_select", "gather_gate", "multiscale_pool", "st_pool"})
MAX_SCALES = 8  # csrc/pool/pool.h kMaxScales
HOST_FLAGS = ["-O2", "-std=c++20"]
EMULATE_FLAGS = HOST_FLAGS + ["-DSTQ_CUDA_EMULATE", "-pthread", "-Wno-unknown-pragmas"]
CUDA_FLAGS = ["-O3", "-std=c++20"]


def sources() -> list[Path]:
    """The module (bindings.cpp), every op's ``*_bindings.cpp`` and every kernel file (``*.cu``);
    not the cpu backend's ``*_cpu.cpp``, which share the op folders."""
    src = source_dir()
    return [src / "bindings.cpp", *sorted(src.glob("*/*_bindings.cpp")), *sorted(src.glob("*/*.cu"))]


def emulating() -> bool:
    return os.environ.get(EMULATE_ENV) == "1"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


@functools.cache
def _compiler_version(cmd: str) -> str:
    try:
        return subprocess.run([cmd, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def _target(emulate: bool) -> list[str]:
    """What the binary is built for: the host compiler (emulation) or the CUDA architectures."""
    if emulate:
        return ["host-emulation", _compiler_version(_compiler()), *EMULATE_FLAGS]
    return ["cuda", str(torch.version.cuda), *jit.cpp_extension()._get_cuda_arch_flags(), *CUDA_FLAGS, *HOST_FLAGS]


def build_name(emulate: bool = False) -> str:
    """``stquery_cuda[emu]_<hash of the sources, the headers they include, flags and target>``."""
    return jit.build_name(f"stquery_cuda{'emu' if emulate else ''}", jit.closure(sources()), _target(emulate))


def _emulation_units(build_dir: Path) -> list[str]:
    """One host C++ file per kernel file, ``#include``-ing it (the .cu extension selects nvcc)."""
    units = []
    for path in sources():
        if path.suffix == ".cu":
            unit = build_dir / f"emu_{path.parent.name}_{path.stem}.cpp"
            text = f'#include "{path}"\n'
            if not unit.exists() or unit.read_text() != text:
                unit.write_text(text)
            units.append(str(unit))
        else:
            units.append(str(path))
    return units


@functools.cache
def module(emulate: bool = False):
    """The compiled extension (built on first call, then loaded from its cache directory)."""
    name = build_name(emulate)
    directory = jit.build_dir(name, CACHE_ENV)
    if emulate:
        return jit.load(name, directory, _emulation_units(directory), extra_cflags=EMULATE_FLAGS,
                        extra_ldflags=["-pthread"], with_cuda=False)
    return jit.load(name, directory, sources(), extra_cflags=HOST_FLAGS, extra_cuda_cflags=CUDA_FLAGS, with_cuda=True)


def toolchain_reasons(emulate: bool) -> list[str]:
    """Why the extension can't be built here ([] = it can); looked up once per compiler."""
    return list(_toolchain_reasons(emulate, _compiler()))


@functools.cache
def _toolchain_reasons(emulate: bool, compiler: str) -> tuple[str, ...]:
    why = []
    if not jit.ninja_available():
        why.append("ninja is not installed (pip install ninja): the extension is built just in time with it")
    if shutil.which(compiler) is None:
        why.append(f"no host C++ compiler {compiler!r} found (set CXX)")
    if not emulate:
        if torch.version.cuda is None:
            why.append("this torch build has no CUDA support")
        elif jit.cpp_extension().CUDA_HOME is None:
            why.append("no CUDA toolkit (nvcc) found to build the extension (set CUDA_HOME)")
    return tuple(why)


def _run(fn: str, device: torch.device, *args):
    """``module().fn(*args, stream)`` on ``device`` (its current stream; 0 under the emulation)."""
    mod = module(emulate=device.type == "cpu")
    if device.type != "cuda":
        return getattr(mod, fn)(*args, 0)
    with torch.cuda.device(device):
        return getattr(mod, fn)(*args, torch.cuda.current_stream(device).cuda_stream)


def _geometry(q, k, prob):
    """(sequences, Nq, Nk): sequences are (b, l, h) (temporal) or (g, h) (spatial)."""
    if prob.frames:
        return q.shape[0] // prob.frames * q.shape[1] * q.shape[2], prob.frames, prob.frames
    return q.shape[0] * q.shape[2], q.shape[1], k.shape[1]


def _alpha32(alpha):
    """Routing weights as float32 (tiny: [G, H, p]); the kernels read one dtype."""
    return alpha if alpha is None or alpha.dtype == torch.float32 else alpha.float()


class CudaBackend:
    name = "cuda"
    devices = frozenset({"cuda"})

    def supports(self, op, *args) -> list[str]:
        if op not in OPS:
            return [f"no CUDA kernel for {op} (the cuda backend implements {', '.join(sorted(OPS))})"]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device = tensors[0].device
        why = []
        if device.type == "cpu":
            if not emulating():
                why.append(f"tensors are on cpu: the cuda backend needs CUDA tensors ({EMULATE_ENV}=1 runs "
                           "its kernels under the CPU emulation, for tests)")
        elif device.type != "cuda":
            why.append(f"tensors are on {device.type}: the cuda backend needs CUDA tensors")
        elif not torch.cuda.is_available():
            why.append("CUDA is not available")
        for t in tensors:
            if t.is_floating_point() and t.dtype not in DTYPES:
                why.append(f"dtype {t.dtype} is not one of float32, float16, bfloat16")
                break
        if any(n >= 2**31 for t in tensors for n in t.shape):
            why.append(f"a dim of {[list(t.shape) for t in tensors]} is >= 2**31; the kernels index dims with int32")
        scales = next((a for a in args if isinstance(a, (tuple, list))), ())
        if len(scales) > MAX_SCALES:
            why.append(f"{len(scales)} scales; the kernels take at most {MAX_SCALES}")
        return why + toolchain_reasons(emulate=device.type == "cpu")

    # --- selection and gather (csrc/topk) -------------------------------------------------
    def topk_select(self, scores, k, order):
        B, N = scores.shape
        dev = scores.device
        idx = empty((B, k), torch.int64, dev)
        if B == 0 or k == 0:
            return idx
        chunks = module(emulate=dev.type == "cpu").select_chunks(N)
        hist = torch.zeros((B, 4, 256), dtype=torch.int32, device=dev)
        state = torch.empty((B, 2), dtype=torch.int32, device=dev)
        counts = torch.empty((B, chunks, 2), dtype=torch.int32, device=dev)
        time_idx = idx if order == "time" else empty((B, k), torch.int64, dev)
        _run("topk_select_time", dev, scores, k, hist, state, counts, time_idx)
        if order == "score" and k <= topk_problem.RANK_MAX_K:
            _run("topk_rank_by_score", dev, scores, time_idx, idx)
        elif order == "score":
            topk_problem.sort_by_score(scores, time_idx, idx)
        return idx

    def _softmax_stats(self, scores, idx, gate):
        stats = torch.empty((scores.shape[0], 2), dtype=torch.float32, device=scores.device)
        if gate == "softmax" and idx.shape[1] > 0:
            _run("softmax_stats", scores.device, scores, idx, stats)
        return stats

    def gather_gate(self, x, scores, idx, gate, scales):
        B, N, C = x.shape
        k = idx.shape[1]
        y = empty((B, pooled_length(k, scales), C), x.dtype, x.device)
        stats = self._softmax_stats(scores, idx, gate)
        _run("gather_gate_fwd", x.device, x, scores, idx, GATES[gate], list(scales), stats, y)
        return y

    def gather_gate_bwd(self, grad_y, x, scores, idx, gate, scales):
        B, N, C = x.shape
        k = idx.shape[1]
        dx = empty((B, N, C), x.dtype, x.device)
        ds = empty((B, N), scores.dtype, scores.device) if gate != "none" else None
        pos = torch.full((B, N), -1, dtype=torch.int32, device=x.device)
        _run("topk_inverse", x.device, idx, pos)
        stats = self._softmax_stats(scores, idx, gate)
        dg = torch.empty((B, k if gate == "softmax" else 0), dtype=torch.float32, device=x.device)
        _run("gather_gate_bwd", x.device, grad_y, x, scores, idx, GATES[gate], list(scales), stats, pos, dx,
             ds if ds is not None else dg, dg)
        return dx, ds

    # --- attention (csrc/attention) -----------------------------------------------------------
    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        out = empty(q.shape, q.dtype, q.device)
        stats = empty(tuple(q.shape[:3]) + (prob.stats_width,), torch.float32, q.device)
        if _geometry(q, k, prob)[2] == 0:
            return out.zero_(), stats.fill_(float("-inf"))
        _run("attention_fwd", q.device, q, k, v, _alpha32(alpha), dense, key_padding, frame_lengths, out, stats,
             *jit.problem_args(prob))
        return out, stats

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        dq, dk, dv = (empty(t.shape, t.dtype, t.device) for t in (q, k, v))
        routed = prob.mode != NONE
        if q.numel() == 0 or k.numel() == 0:
            return dq.zero_(), dk.zero_(), dv.zero_(), torch.zeros_like(alpha) if routed else None
        n_seq, nq, nk = _geometry(q, k, prob)
        _, n_qtiles, _ = module(emulate=q.device.type == "cpu").attention_bwd_plan(n_seq, nq, nk, q.shape[-1])
        delta, coef = torch.empty((2, *stats.shape), dtype=torch.float32, device=q.device).unbind(0)
        # per (query tile, sequence) sums of the alpha gradient, added here in a fixed order
        partial = empty((n_qtiles, n_seq, prob.p), torch.float32, q.device) if routed else None
        _run("attention_bwd", q.device, grad_out, q, k, v, out, stats, _alpha32(alpha), dense, key_padding,
             frame_lengths, dq, dk, dv, delta, coef, partial, *jit.problem_args(prob))
        return dq, dk, dv, partial.sum(0).view(alpha.shape).to(alpha.dtype) if routed else None

    # --- pooling (csrc/pool) ---------------------------------------------------------------
    def st_pool(self, x):
        B, T, P, C = x.shape
        temporal = empty((B, T, C), x.dtype, x.device)
        spatial = empty((B, P, C), x.dtype, x.device)
        if x.numel() == 0:
            return temporal, spatial
        n_partial = module(emulate=x.device.type == "cpu").st_pool_partial_size(B, T, P, C)
        partial = torch.empty(n_partial, dtype=torch.float32, device=x.device)
        _run("st_pool_fwd", x.device, x, temporal, spatial, partial)
        return temporal, spatial

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        (B, T, C), P = grad_temporal.shape, grad_spatial.shape[1]
        dx = empty((B, T, P, C), grad_temporal.dtype, grad_temporal.device)
        _run("st_pool_bwd", dx.device, grad_temporal, grad_spatial, dx)
        return dx

    def multiscale_pool(self, y, scales):
        B, k, C = y.shape
        out = empty((B, pooled_length(k, scales), C), y.dtype, y.device)
        _run("multiscale_pool_fwd", y.device, y, list(scales), out)
        return out

    def multiscale_pool_bwd(self, grad, k, scales):
        B, _, C = grad.shape
        dy = empty((B, k, C), grad.dtype, grad.device)
        _run("multiscale_pool_bwd", dy.device, grad, k, list(scales), dy)
        return dy


backend = CudaBackend()
