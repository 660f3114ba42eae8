"""Roofline counts (docs/profiling.md §6) and the device rates they are compared against.

Bytes are the traffic of an ideal kernel: every input read once, every output written once.
Masks computed in-kernel from integers (windows, causal) cost nothing; dense bool masks
(1 byte per element), routing weights ``alpha``, ``key_padding`` and ``frame_lengths`` are inputs.
FLOPs count the useful dense work: attention forward ``4·G·H·Nq·Nk·d`` (two matmuls, a multiply
and an add each), backward ``2.5×`` that (five matmuls), so forward+backward is ``3.5×``. Masks
and DAR modes do not change the FLOP count (a window skips work; the roofline stays the dense one,
so a kernel that skips masked tiles can exceed 100 % of it).

Backward traffic (attention): read q, k, v, o, dO and the softmax statistics written by the
forward (float32 ``[G, Nq, H, P]``, P = p in mix mode, else 1) plus the inputs above; write
dq, dk, dv (and dalpha when alpha is given). A forward that feeds a backward also writes those
statistics; an inference forward does not, so ``"fwd"`` counts no statistics.

The device rates are measured, not looked up: :func:`copy_bandwidth` (a large device-to-device
copy, read + write) and :func:`matmul_rate` (a square matmul in the profiled dtype), each the
fastest of a few calls.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .ops.pool.problem import pooled_length

PASSES = ("fwd", "bwd", "fwd+bwd")
INDEX_BYTES = 8  # int64 indices and frame lengths
BOOL_BYTES = 1
STATS_BYTES = 4  # float32 softmax statistics


@dataclass(frozen=True)
class Cost:
    """Bytes moved and floating-point operations of one call."""

    bytes: int
    flops: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


def _check_pass(passes: str) -> None:
    if passes not in PASSES:
        raise ValueError(f"passes: expected one of {PASSES}, got {passes!r}")


def attention_cost(
    G: int, Nq: int, Nk: int, H: int, d: int, *, itemsize: int, mode: str = "none", p: int = 0,
    alpha_numel: int = 0, alpha_itemsize: int = 4, dense_masks: int = 0, key_padding: bool = False,
    frame_lengths: int = 0, passes: str = "fwd",
) -> Cost:
    """Roofline cost of ``stq.attention`` on q ``[G, Nq, H, d]``, k/v ``[G, Nk, H, d]``.

    ``mode``: "none" (no masks), "mix" or "scale"; ``p`` masks, ``dense_masks`` of them dense
    (``[Nq, Nk]`` bool each); ``alpha_numel`` elements of alpha as the caller passes it (its
    broadcast shape, not the expanded one); ``key_padding``: a bool ``[G, Nk]`` is given;
    ``frame_lengths``: number of int64 frame lengths (B) given. ``passes``: "fwd", "bwd" or "fwd+bwd".
    """
    _check_pass(passes)
    if mode not in ("none", "mix", "scale"):
        raise ValueError(f"mode: expected 'none', 'mix' or 'scale', got {mode!r}")
    q_bytes = G * Nq * H * d * itemsize  # q, o, dO, dq each
    kv_bytes = G * Nk * H * d * itemsize  # k, v, dk, dv each
    stat_bytes = G * Nq * H * (p if mode == "mix" else 1) * STATS_BYTES
    side = (alpha_numel * alpha_itemsize + dense_masks * Nq * Nk * BOOL_BYTES
            + (G * Nk * BOOL_BYTES if key_padding else 0) + frame_lengths * INDEX_BYTES)
    fwd_flops = 4 * G * H * Nq * Nk * d
    fwd = Cost(q_bytes + 2 * kv_bytes + q_bytes + side, fwd_flops)  # read q, k, v, side; write o
    # read q, k, v, o, dO, stats, side; write dq, dk, dv, dalpha
    bwd = Cost(3 * q_bytes + 2 * kv_bytes + stat_bytes + side + q_bytes + 2 * kv_bytes + alpha_numel * alpha_itemsize,
               fwd_flops * 5 // 2)
    if passes == "fwd":
        return fwd
    if passes == "bwd":
        return bwd
    return fwd + Cost(stat_bytes, 0) + bwd  # the training forward also writes the statistics


def temporal_attention_cost(B: int, T: int, L: int, H: int, d: int, **kw) -> Cost:
    """``stq.temporal_attention`` on ``[B*T, L, H, d]``: attention over T frames for each of B·L groups."""
    return attention_cost(B * L, T, T, H, d, **kw)


def topk_cost(
    B: int, N: int, C: int, k: int, *, itemsize: int, score_itemsize: int = 4, gate: bool = True,
    scales=(), passes: str = "fwd",
) -> Cost:
    """``stq.topk_tokens`` on x ``[B, N, C]``, scores ``[B, N]``.

    Forward: read all scores and only the k selected rows of x (a gather touches nothing else),
    write idx ``[B, k]`` (int64) and y ``[B, M, C]`` (M = k, or ``pooled_length(k, scales)``).
    FLOPs: one gate multiply per selected element (if gated) and one add per element per scale.
    Backward: read dy, idx, and (gated) the selected scores and rows of x for dscores; write the
    whole dx ``[B, N, C]`` (zeros off the selected rows are outputs too) and dscores ``[B, N]``.
    """
    _check_pass(passes)
    M = pooled_length(k, scales)
    rows = B * k * C
    fwd = Cost(B * N * score_itemsize + rows * itemsize + B * k * INDEX_BYTES + B * M * C * itemsize,
               (rows if gate else 0) + rows * len(scales))
    gated_reads = (B * k * score_itemsize + rows * itemsize) if gate else 0
    bwd = Cost(B * M * C * itemsize + B * k * INDEX_BYTES + gated_reads
               + B * N * C * itemsize + (B * N * score_itemsize if gate else 0),
               rows * len(scales) + (2 * rows if gate else 0))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[passes]


def st_pool_cost(B: int, T: int, P: int, C: int, *, itemsize: int, passes: str = "fwd") -> Cost:
    """``stq.st_pool`` on x ``[B, T, P, C]``: read x once, write ``[B, T, C]`` and ``[B, P, C]``;
    each element is added into two sums. Backward reads both gradients, writes dx (two adds per element)."""
    _check_pass(passes)
    x = B * T * P * C
    outs = (B * T * C + B * P * C) * itemsize
    fwd = Cost(x * itemsize + outs, 2 * x)
    bwd = Cost(outs + x * itemsize, 2 * x)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[passes]


# ---------------------------------------------------------------------------------------------
# Device rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, reps: int) -> float:
    """The fastest of ``reps`` calls: a peak is what the device reaches, and on a shared machine
    every slower call is a neighbour's time slice."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_bandwidth(device, nbytes: int | None = None, reps: int = 10) -> float:
    """Measured copy bandwidth in GB/s (1e9 bytes): a ``dst.copy_(src)`` of ``nbytes`` moves 2·nbytes.

    Default size: 1 GiB on CUDA (far beyond L2), 64 MiB on CPU.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, reps)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_rate(device, dtype: torch.dtype = torch.float32, n: int | None = None, reps: int = 10) -> float:
    """Measured dense matmul rate in TFLOP/s of an ``n × n`` by ``n × n`` product (2·n³ FLOPs).

    Default n: 8192 on CUDA, 512 on CPU. On CPU a half-precision matmul is emulated slowly, so it is
    measured in float32 there unless asked otherwise.
    """
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _best_seconds(lambda: a @ b, device, reps)
    return 2 * n ** 3 / seconds / 1e12


def roofline_fraction(cost: Cost, seconds: float, bandwidth_gbps: float, tflops: float) -> float:
    """How close a call of ``seconds`` is to its roofline bound ``max(bytes / BW, FLOPs / peak)`` (1.0 = at it)."""
    bound = max(cost.bytes / (bandwidth_gbps * 1e9), cost.flops / (tflops * 1e12))
    return bound / seconds
