"""The CUDA emulation's own primitives (``csrc/common/cuda_emu.h``), which every emulated kernel test
relies on: 16-bit float conversions against torch's (every half bit pattern; float32 values around
every rounding boundary, subnormals, overflow, NaN), and each warp intrinsic against CUDA's
documented semantics (``width`` segments; out-of-segment sources return the caller's value), and
atomicMax / atomicMin (the extreme is kept; a call returns the value held before it).
Time: a few seconds (one small host build).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from stquery.backends import cuda_backend

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "c++")
THREADS = 64
pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler {CXX!r}")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emu")
    exe = tmp / "emu_selftest"
    build = [CXX, "-std=c++20", "-O1", "-DSTQ_CUDA_EMULATE", "-Wno-unknown-pragmas", "-pthread",
             f"-I{cuda_backend.source_dir()}", str(HERE / "emu_selftest.cpp"), "-o", str(exe)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    floats = _probe_floats()
    floats.numpy().tofile(tmp / "in.bin")
    outs = [tmp / n for n in ("h2f.bin", "f2h.bin", "f2b.bin", "shfl.bin")]
    proc = subprocess.run([str(exe), str(tmp / "in.bin"), *map(str, outs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return dict(floats=floats, h2f=np.fromfile(outs[0], np.float32), f2h=np.fromfile(outs[1], np.uint16),
                f2b=np.fromfile(outs[2], np.uint16), shfl=np.fromfile(outs[3], np.int32).reshape(-1, THREADS))


def _probe_floats() -> torch.Tensor:
    """Every half value, the midpoints between neighbours (ties) and one float32 ulp either side;
    the same for a bfloat16 sample; random floats of every magnitude; inf, NaN, signed zeros."""
    h = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    h = h[torch.isfinite(h)].unique()
    mid = (h[:-1].double() + h[1:].double()) / 2
    b = torch.randint(-(2**15), 2**15, (20000,), dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    b = b[torch.isfinite(b)].unique()
    bmid = (b[:-1].double() + b[1:].double()) / 2
    mids = torch.cat([mid, bmid]).float()
    wide = torch.randn(20000) * torch.exp2(torch.randint(-140, 128, (20000,)).float())
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8])
    return torch.cat([h, mids, torch.nextafter(mids, torch.tensor(float("inf"))),
                      torch.nextafter(mids, torch.tensor(float("-inf"))), b, wide, special])


def test_half_to_float_is_exact(results):
    want = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float().numpy()
    got = results["h2f"]
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} half patterns convert differently, e.g. {np.flatnonzero(~same)[:5]}"


@pytest.mark.parametrize("dtype,key", [(torch.float16, "f2h"), (torch.bfloat16, "f2b")])
def test_float_to_16_bits_rounds_to_nearest_even(results, dtype, key):
    x = results["floats"]
    want = x.to(dtype).view(torch.int16).numpy().view(np.uint16)
    got = results[key]
    nan = torch.isnan(x).numpy()
    assert (got[~nan] == want[~nan]).all(), f"{(got[~nan] != want[~nan]).sum()} of {len(x)} values round differently"
    assert torch.isnan(torch.from_numpy(got[nan].view(np.int16)).view(dtype)).all()


def test_warp_intrinsics_follow_cuda_semantics(results):
    tid = np.arange(THREADS)
    lane, base = tid % 32, tid - tid % 32
    v = 100 * tid

    def seg(width):
        return lane - lane % width

    def pick(src_lane, valid):
        return np.where(valid, 100 * (base + src_lane), v)

    want = [
        pick((lane * 7 + 3) % 32, True),
        pick(seg(8) + (lane + 5) % 8, True),
        pick(lane + 3, lane + 3 < 32),
        pick(lane + 3, (lane + 3) // 16 == lane // 16),
        pick(lane - 5, lane >= 5),
        pick(lane ^ 9, True),
    ]
    ballot = [sum(1 << i for i in range(32) if i % 3 == 0 or w * 32 + i == 40) for w in (0, 1)]
    want.append(np.array([ballot[t // 32] for t in tid], dtype=np.int64).astype(np.uint32).view(np.int32))
    want.append((tid // 32 == 1).astype(np.int32))
    want.append((tid // 32 == 1).astype(np.int32))
    for op, w in enumerate(want):
        assert (results["shfl"][op] == w).all(), f"intrinsic {op}: got {results['shfl'][op]}, want {w}"


def test_atomic_max_min_keep_the_extreme_and_return_the_old_value(results):
    x = np.arange(THREADS) * 37 % THREADS - 20
    # rows 9, 10: after every thread's call, starting from 0; rows 11, 12: a second round's returns
    for row, want in zip(range(9, 13), (x.max(), x.min(), x.max(), x.min())):
        assert (results["shfl"][row] == want).all(), f"row {row}: got {results['shfl'][row]}, want {want}"
