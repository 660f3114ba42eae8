"""ThreadSanitizer on the CUDA emulation: the kernels of ``csrc/`` compiled with ``-fsanitize=thread``
and run (1-4 blocks per launch) by the cases of ``tests/cuda/tsan_*.cpp``. A data race between CUDA
threads of a block (a missing ``__syncthreads``, a shared-memory buffer reused too early) is a race
between OS threads here, which TSan reports; any report fails. The second test removes one barrier
from a copy of a kernel and checks that TSan does catch it, so the first test can fail.

Time (2 shared cores): about 1 minute to build the driver, seconds to run it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stquery.backends import cuda_backend

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "c++")
FLAGS = ["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-DSTQ_CUDA_EMULATE", "-Wno-unknown-pragmas", "-pthread"]
TSAN_OPTIONS = "halt_on_error=1 exitcode=66 second_deadlock_stack=1"
pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler {CXX!r}")


def build(csrc: Path, cases: list[Path], kernels: list[Path], out: Path) -> Path:
    cmd = [CXX, *FLAGS, f"-I{csrc}", f"-I{HERE}", str(HERE / "tsan_main.cpp"), *map(str, cases),
           "-x", "c++", *map(str, kernels), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "fsanitize=thread" in proc.stderr:
        pytest.skip(f"this compiler cannot build with ThreadSanitizer: {proc.stderr[-500:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def run(driver: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TSAN_OPTIONS=TSAN_OPTIONS)
    return subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=600, env=env)


def test_every_kernel_is_race_free(tmp_path):
    csrc = cuda_backend.source_dir()
    kernels = sorted(csrc.glob("*/*.cu"))
    cases = sorted(p for p in HERE.glob("tsan_*.cpp") if p.name != "tsan_main.cpp")
    proc = run(build(csrc, cases, kernels, tmp_path / "tsan_driver"))
    report = proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in report and proc.returncode == 0, report[-6000:]
    assert "0 failed" in proc.stdout, proc.stdout


def test_tsan_catches_a_removed_barrier(tmp_path):
    """st_pool's per-frame barrier separates the 8 rows' writes of frame_sum from row 0's reads."""
    csrc = tmp_path / "csrc"
    shutil.copytree(cuda_backend.source_dir(), csrc)
    kernel = csrc / "pool" / "pool.cu"
    text = kernel.read_text()
    barrier = "    frame_sum[t & 1][row][lane] = part;\n    __syncthreads();\n"
    assert barrier in text, "st_pool_fwd_kernel changed: update the barrier this test removes"
    kernel.write_text(text.replace(barrier, "    frame_sum[t & 1][row][lane] = part;\n"))
    proc = run(build(csrc, [HERE / "tsan_pool.cpp"], [kernel], tmp_path / "tsan_mutant"), "st_pool")
    assert proc.returncode == 66, f"TSan missed the race (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "data race" in proc.stderr and "st_pool_fwd_kernel" in proc.stderr, proc.stderr[-3000:]
