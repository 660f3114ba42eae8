"""What a profile run measures: problem sizes and run settings (GPU, CPU and ``--quick`` defaults)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

PASSES = ("fwd", "fwd+bwd")
SWEEPS = ("fixed-B", "fixed-BT")
CASES = ("temporal", "temporal-mix", "temporal-scale", "topk", "st_pool")
ALL_CASES = CASES[:3] + ("spatial",) + CASES[3:]  # spatial attention does not scale with T: bench/ only
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


@dataclass(frozen=True)
class Shape:
    """One problem size. Attention: q/k/v ``[B*T, L, H, d]``; selection: x ``[B, T*P, C]``,
    k = T·P // topk_div; st_pool: x ``[B, T, P, C]``."""

    B: int
    T: int
    L: int
    H: int
    d: int
    P: int
    C: int
    topk_div: int = 4

    @property
    def k(self) -> int:
        return max(1, self.T * self.P // self.topk_div)


@dataclass(frozen=True)
class Config:
    """A run: the sizes, the sweeps, and the timing.

    Timing: each implementation is called in batches of ``batch_ms`` or more (enough calls that a
    scheduler time slice of a few ms is a small part of one batch), ``samples`` batches each, the
    implementations of one shape taking turns batch by batch, so that a neighbour's load falls on
    all of them alike. A row whose p20–p80 spread exceeds ``max_spread`` of its median is marked
    wide (:func:`stquery.profile.report.rank`).
    """

    dtype: str = "bf16"
    L: int = 32
    H: int = 12
    d: int = 64
    P: int = 64
    C: int = 1024
    topk_div: int = 4
    frames_total: int = 2048  # B·T of the fixed-B·T sweep (2048 frames: 100 MB per bf16 q/k/v)
    batch: int = 2  # B of the fixed-B sweep (meets the other sweep at the largest T)
    T: tuple = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    cases: tuple = CASES
    passes: tuple = PASSES
    sweeps: tuple = SWEEPS
    batch_ms: float = 20.0  # least wall time of one timed batch
    samples: int = 7  # timed batches per implementation and shape
    max_spread: float = 0.25  # (p80 - p20) / median above this: the row is marked wide (report.rank)
    flex_dynamic: bool = True
    quick: bool = False
    cpu_threads: int = 0  # 0: torch's default

    def shapes(self, sweep: str):
        for T in self.T:
            B = self.batch if sweep == "fixed-B" else max(1, self.frames_total // T)
            yield Shape(B, T, self.L, self.H, self.d, self.P, self.C, self.topk_div)


GPU = Config()
# The default on a machine without a GPU: the same sweeps at shapes a CPU finishes in minutes.
CPU = Config(dtype="fp32", L=8, H=4, d=32, P=32, C=128, frames_total=256, batch=2,
             T=(4, 8, 16, 32, 64, 128, 256), batch_ms=20.0, samples=7)
# --quick: tiny float32 shapes, one thread (tiny ops on a shared CPU otherwise stall in OpenMP barriers).
QUICK = Config(dtype="fp32", L=4, H=2, d=16, P=8, C=32, frames_total=32, batch=2, T=(4, 16),
               batch_ms=20.0, samples=7, quick=True, cpu_threads=1)


def defaults(device: torch.device, quick: bool = False) -> Config:
    """The settings a run on ``device`` starts from."""
    return QUICK if quick else GPU if device.type == "cuda" else CPU
