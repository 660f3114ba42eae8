"""How a profile is measured: build each implementation, check it, and time it in interleaved batches.

Timing on a shared machine: a call of 0.05 ms timed alone measures the scheduler (a neighbour's
time slice of several ms lands on some calls and not others). So each implementation is called in
batches of at least ``Config.batch_ms`` (the per-call time is the batch's over its count), and the
implementations of one shape take turns batch by batch (in a new order each round), so that a
neighbour's load falls on all of them alike and their ratios hold. Each batch follows one untimed
call, after the heap earlier batches freed went back to the OS (:func:`settle`), so it runs in its
own steady state. ms, p20 and p80 are over the batches. On CUDA each call is timed with events
after an L2 flush (as ``triton.testing.do_bench``).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import roofline
from .cases import Case, Impl, make_cases
from .config import DTYPES, Config, Shape
from .peers import Unavailable, dynamo_limits, first_line


@dataclass
class Row:
    """One implementation on one shape and pass: its times (ms per call) or the reason it has none.
    The rates, %roof and speedup are filled in by :func:`stquery.profile.report.rank`."""

    case: str
    sweep: str
    passes: str
    T: int
    B: int
    impl: str
    kind: str  # "stquery" or "peer"
    ok: bool
    reason: str = ""
    note: str = ""
    ms: float | None = None  # median over the timed batches
    p20: float | None = None
    p80: float | None = None
    reps: int = 0  # calls timed in all
    bytes: int = 0
    flops: int = 0
    gbps: float | None = None
    pct_bw: float | None = None
    tflops: float | None = None
    pct_roofline: float | None = None
    peak_mib: float | None = None
    rel_err: float | None = None
    speedup: float | None = None  # the fastest peer's ms over this row's; None when either is wide
    wide: bool = False  # p20–p80 spread above Config.max_spread: no speedup from or against it
    at_least: float | None = None  # the other peers' fastest p20 over this row's p80, wide or not


@dataclass
class DeviceInfo:
    """The device and the rates %BW and %roof are taken against (see :func:`stquery.profile.report.rank`)."""

    name: str
    type: str
    copy_gbps: float  # measured: a large copy
    matmul_tflops: float  # measured: a square matmul with the threads the rows use
    matmul_dtype: str
    timer: str = ""  # what the ms are (see harness.timer)
    peak_gbps: float = 0.0  # max(copy_gbps, the best GB/s of any row)
    peak_tflops: float = 0.0  # max(matmul_tflops, the best TFLOP/s of any row)
    peak_note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def training_step(fwd: Callable[[], Any], inputs: list) -> Callable[[], Any]:
    """Forward then backward (``torch.autograd.grad`` with fixed random output gradients, so nothing accumulates)."""
    outs = [o for o in _as_tuple(fwd()) if isinstance(o, torch.Tensor) and o.requires_grad]
    if not outs:
        raise Unavailable("its output carries no gradient")
    grads = [torch.randn_like(o) for o in outs]

    def step():
        outs = [o for o in _as_tuple(fwd()) if isinstance(o, torch.Tensor) and o.requires_grad]
        return torch.autograd.grad(outs, inputs, grads, allow_unused=True)

    return step


def make_inputs(case: Case, s: Shape, device, dtype, passes: str) -> dict:
    """The case's inputs; for a backward pass, the ones in ``case.grad_inputs`` require grad."""
    inp = case.make_inputs(s, torch.device(device), dtype)
    if passes != "fwd":
        for n in case.grad_inputs:
            inp[n].requires_grad_(True)
    return inp


def prepare(case: Case, impl: Impl, inp: dict, s: Shape, passes: str):
    """Build ``impl`` on ``inp`` and run it once (compiling what compiles).

    Returns ``(call, note, out)``: ``call()`` runs the pass (forward under ``no_grad``, or forward and
    backward), ``out`` is the forward output of that first run (None for fwd+bwd). Raises
    :class:`Unavailable` (or whatever the implementation raises) when it can't run.
    """
    built = impl.build(inp, s)
    fn = built.fn
    if passes == "fwd":
        with torch.no_grad():
            out = fn()

        def call():
            with torch.no_grad():
                return fn()
        return call, built.note, out
    step = training_step(fn, [inp[n] for n in case.grad_inputs])
    step()
    return step, built.note, None


def check(out, ref, dtype: torch.dtype) -> tuple:
    """``(relative max error, within tolerance)`` of a forward output against the reference's."""
    errs = []
    for o, r in zip(_as_tuple(out), _as_tuple(ref)):
        if o.shape != r.shape:
            return float("inf"), False
        r = r.float()
        errs.append(((o.float() - r).abs().max() / r.abs().max().clamp_min(1e-6)).item())
    err = max(errs)
    return err, err <= (1e-3 if dtype == torch.float32 else 3e-2)


# --- timing ------------------------------------------------------------------------------------

_flush_buffer: dict = {}


def timer(device: torch.device) -> str:
    """What a run's times are: on a CPU run with one thread, the CPU time of the calling thread
    (every op runs on it; a neighbour's time slice is not counted); with more threads, wall clock;
    on CUDA, events."""
    if device.type == "cuda":
        return "CUDA events"
    return "thread CPU time" if torch.get_num_threads() == 1 else "wall clock"


def run_batch(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """ms per call of ``n`` calls of ``fn``, by :func:`timer`; on CUDA after an L2 flush (a 256 MB
    write) before each call."""
    if device.type != "cuda":
        clock = time.thread_time if timer(device) == "thread CPU time" else time.perf_counter
        t0 = clock()
        for _ in range(n):
            fn()
        return (clock() - t0) * 1e3 / n
    if device not in _flush_buffer:
        _flush_buffer[device] = torch.empty(256 << 20, dtype=torch.int8, device=device)
    flush = _flush_buffer[device]
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return sum(start.elapsed_time(end) for start, end in events) / n


def calls_per_batch(fn: Callable[[], Any], device: torch.device, batch_ms: float) -> int:
    """How many calls make a batch of at least ``batch_ms`` (from the fastest of three single calls)."""
    est = min(run_batch(fn, 1, device) for _ in range(3))
    return max(1, min(100_000, math.ceil(batch_ms / max(est, 1e-4))))


def quantile(xs: list, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def settle(fn: Callable[[], Any], device: torch.device) -> None:
    """Before each timed batch: on CPU, give the heap that earlier batches left free back to the OS
    (glibc's ``malloc_trim``); then call ``fn`` once, untimed. The batch then runs in ``fn``'s own
    steady state, as in a user's loop, and pays for no other implementation's garbage."""
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is not None:
        trim(0)
    fn()
    sync(device)


def interleaved(fns: dict, device: torch.device, batch_ms: float, samples: int) -> dict:
    """``{name: [ms per call of each batch]}``: every fn calibrated to ``batch_ms`` batches, then
    ``samples`` rounds in which each fn runs one batch after :func:`settle`, in a new order each
    round (shuffled, with a fixed seed, so no fn always follows the same neighbour).
    Unsettled, glibc gave the heap one fn had freed back to the OS during the next one's calls,
    which then took the cost (docs/profiling.md §6.3 has the numbers)."""
    counts = {name: calls_per_batch(fn, device, batch_ms) for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    names, order = list(fns), random.Random(0)
    for _ in range(samples if names else 0):
        for name in order.sample(names, len(names)):
            settle(fns[name], device)
            times[name].append(run_batch(fns[name], counts[name], device))
    return {name: (times[name], counts[name] * samples) for name in names}


def peak_mib(fn: Callable[[], Any], device: torch.device, input_bytes: int) -> float | None:
    """Inputs plus the most the call allocates beyond what is live before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base + input_bytes) / 2 ** 20


def device_info(device: torch.device, dtype: torch.dtype, quick: bool) -> DeviceInfo:
    """The device's measured copy bandwidth and matmul rate (float32 on CPU, with the threads the rows use)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bw = roofline.copy_bandwidth(device, (256 << 20) if quick else None)
        return DeviceInfo(name, "cuda", bw, roofline.matmul_rate(device, dtype, 2048 if quick else None),
                          str(dtype).replace("torch.", ""), timer(device))
    name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) on {os.cpu_count()} cores"
    bw = roofline.copy_bandwidth(device, (16 << 20) if quick else None, reps=5)
    mm = roofline.matmul_rate(device, torch.float32, 256 if quick else None, reps=5)
    return DeviceInfo(name, "cpu", bw, mm, "float32", timer(device))


# --- a run ---------------------------------------------------------------------------------------


def units(cfg: Config) -> list:
    """The (case, passes, shape) triples a run measures, each once (the sweeps share a shape at their ends),
    with the sweeps each belongs to."""
    out: dict = {}
    for case in cfg.cases:
        for passes in cfg.passes:
            for sweep in cfg.sweeps:
                for s in cfg.shapes(sweep):
                    out.setdefault((case, passes, s), []).append(sweep)
    return list(out.items())


def measure_shape(case: Case, impls: list, s: Shape, passes: str, device: torch.device, cfg: Config,
                  status: Callable[[str], None] = lambda text: None) -> list:
    """Rows (sweep left empty) for every implementation of ``case`` on one shape and pass."""
    dtype = DTYPES[cfg.dtype]
    torch.manual_seed(0)
    cost = case.cost(s, torch.tensor([], dtype=dtype).element_size(), passes)
    rows = {i.name: Row(case.name, "", passes, s.T, s.B, i.name, i.kind, False, bytes=cost.bytes, flops=cost.flops)
            for i in impls}
    try:
        inp = make_inputs(case, s, device, dtype, passes)
    except Exception as e:  # e.g. out of memory at the largest shapes
        for r in rows.values():
            r.reason = f"inputs: {first_line(e)}"
        return list(rows.values())
    ref = None
    if passes == "fwd":
        try:
            with torch.no_grad():
                ref = case.reference(inp, s)
        except Exception as e:
            print(f"profile: {case.name} B={s.B} T={s.T}: reference failed, outputs unchecked: {first_line(e, 200)}",
                  file=sys.stderr)
    calls = {}
    for impl in impls:
        row = rows[impl.name]
        status(f"{case.name} {passes} T={s.T} B={s.B}: {impl.name}")
        try:
            calls[impl.name], row.note, out = prepare(case, impl, inp, s, passes)
            if out is not None and ref is not None:
                row.rel_err, ok = check(out, ref, dtype)
                if not ok:
                    row.note = (row.note + "; " if row.note else "") + f"MISMATCH vs reference: rel err {row.rel_err:.1e}"
            del out
            sync(device)
        except Exception as e:  # a peer or backend that can't run says why, in its row
            row.reason = str(e) if isinstance(e, Unavailable) else first_line(e)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    status(f"{case.name} {passes} T={s.T} B={s.B}: timing {len(calls)} in turn")
    input_bytes = sum(t.numel() * t.element_size() for t in inp.values())
    for name, (times, reps) in interleaved(calls, device, cfg.batch_ms, cfg.samples).items():
        row = rows[name]
        row.ok, row.reps = True, reps
        row.ms, row.p20, row.p80 = quantile(times, 0.5), quantile(times, 0.2), quantile(times, 0.8)
        row.peak_mib = peak_mib(calls[name], device, input_bytes)
    del inp, ref, calls
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def profile(cfg: Config, device: torch.device, *, impl_filter=None, status=None, advance=None) -> tuple:
    """Run every (case, sweep, pass, T, implementation) of ``cfg``; returns ``(DeviceInfo, rows)`` with
    times only (:func:`stquery.profile.report.rank` adds the rates). ``status(text)`` is told what runs,
    ``advance()`` after each of :func:`units`."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    status = status or (lambda text: None)
    status("loading torch.compile (for FlexAttention)")
    try:
        with dynamo_limits():
            status("measuring the device's copy bandwidth and matmul rate")
            dev = device_info(device, DTYPES[cfg.dtype], cfg.quick)
            cases = make_cases(cfg.flex_dynamic)
            rows = []
            for (case_name, passes, s), sweeps in units(cfg):
                case = cases[case_name]
                impls = [i for i in case.impls if not impl_filter or any(f in i.name for f in impl_filter)]
                measured = measure_shape(case, impls, s, passes, device, cfg, status)
                rows += [dataclasses.replace(r, sweep=sweep) for sweep in sweeps for r in measured]
                if advance:
                    advance()
            order = {name: i for i, name in enumerate(cfg.cases + cfg.sweeps + cfg.passes)}
            return dev, sorted(rows, key=lambda r: (order[r.case], order[r.sweep], order[r.passes], r.T))
    finally:
        torch.set_num_threads(threads)
