"""Offline resource gate of the CUDA kernels (no GPU needed): every ``csrc/*/*.cu`` compiled by nvcc
with the JIT build's flags for sm_80 and sm_90a with ``-Xptxas -v``; every instantiation of every kernel must compile with
0 spill bytes, no stack frame, at most 255 registers and static shared memory within 48 KiB; every
kernel declares ``__launch_bounds__``, so registers x threads fit the 64K register file. The table
(printed with ``-s``) is the one quoted in the notes. Skipped when nvcc is absent.

Time: about 20 s of nvcc per kernel file (both architectures in one run), files in parallel.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch.utils import cpp_extension

from stquery.backends import cuda_backend

ARCHS = ("80", "90a")
MAX_REGISTERS = 255
MAX_STATIC_SHARED = 48 * 1024
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# a kernel with a stack frame also reports "N bytes cumulative stack size" before its smem
_USED = re.compile(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, \d+ bytes cumulative stack size)?"
                   r"(?:, (\d+) bytes smem)?")


def ptxas_report(cu, tmp_path) -> list[dict]:
    """One row per (kernel instantiation, arch): registers, smem, stack, spill stores/loads."""
    gencode = [a for arch in ARCHS for a in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    # torch's own nvcc flags (e.g. __CUDA_NO_HALF_CONVERSIONS__) and the backend's, as the JIT build uses
    cmd = ["nvcc", "-c", *cpp_extension.COMMON_NVCC_FLAGS, *cuda_backend.CUDA_FLAGS, "-Xptxas", "-v", *gencode,
           f"-I{cuda_backend.source_dir()}",
           str(cu), "-o", str(tmp_path / f"{cu.parent.name}_{cu.stem}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows, row = [], None
    for line in proc.stderr.splitlines():
        if m := _ENTRY.search(line):
            row = dict(file=f"{cu.parent.name}/{cu.name}", mangled=m[1], arch=m[2])
            rows.append(row)
        elif row is not None and (m := _PROPS.search(line)):
            row.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif row is not None and (m := _USED.search(line)):
            row.update(registers=int(m[1]), smem=int(m[2] or 0))
    return rows


def demangle(rows) -> None:
    names = [r["mangled"] for r in rows]
    if shutil.which("c++filt"):
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
        names = [re.sub(r"\(.*", "", n.replace("(anonymous namespace)::", "").replace("stq::", "")).removeprefix("void ")
                 for n in out]
    for r, n in zip(rows, names):
        r["name"] = n


def format_table(rows) -> str:
    head = f"{'kernel':<56} {'arch':>5} {'regs':>5} {'smem(B)':>8} {'stack':>6} {'spill st/ld':>12}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["file"], r["name"], r["arch"])):
        lines.append(f"{r['name'][:56]:<56} {r['arch']:>5} {r['registers']:>5} {r['smem']:>8} {r['stack']:>6} "
                     f"{r['spill_stores']:>5}/{r['spill_loads']:<6}")
    return "\n".join(lines)


def test_kernels_fit_sm80_and_sm90a(tmp_path):
    kernels = sorted(cuda_backend.source_dir().glob("*/*.cu"))
    with ThreadPoolExecutor(2) as pool:
        rows = [r for rs in pool.map(lambda cu: ptxas_report(cu, tmp_path), kernels) for r in rs]
    demangle(rows)
    print("\n" + format_table(rows))
    assert {r["arch"] for r in rows} == set(ARCHS) and rows
    bad = []
    for r in rows:
        where = f"{r['name']} sm_{r['arch']}"
        if r["spill_stores"] or r["spill_loads"] or r["stack"]:
            bad.append(f"{where}: {r['spill_stores']}/{r['spill_loads']} B spilled, {r['stack']} B stack")
        if r["registers"] > MAX_REGISTERS or r["smem"] > MAX_STATIC_SHARED:
            bad.append(f"{where}: {r['registers']} registers, {r['smem']} B static shared")
    assert not bad, "\n".join(bad)


def test_every_kernel_declares_its_block_size():
    """``__launch_bounds__`` makes ptxas fit registers x threads in the register file (spilling
    otherwise, which the gate above catches)."""
    for path in cuda_backend.source_dir().glob("*/*.cu*"):
        for decl in re.findall(r"__global__[^(]*\(", path.read_text()):
            assert "__launch_bounds__" in decl, f"{path.name}: {decl!r} has no __launch_bounds__"
