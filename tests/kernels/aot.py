"""Ahead-of-time compilation of Triton kernels for a GPU this machine does not have.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole toolchain
(ttir -> ttgir -> llir -> ptx -> ptxas -> cubin) on the CPU, so every kernel configuration a
launcher can pick is compiled for sm_90 and sm_80 in CI, and its resource usage is read from the
cubin with ``cuobjdump`` from Triton's own wheel:

- ``registers``: registers per thread (``REG``);
- ``shared``: bytes of shared memory Triton allocates (dynamic, from the compiled metadata);
- ``local``: bytes of per-thread local memory (``LOCAL``; > 0 means spills or a stack frame);
- ``spill_stores`` / ``spill_loads``: ``STL`` / ``LDL`` instructions in the SASS.

Stable API (other kernel tests reuse it):

    compile_and_measure(jit_fn, signature, constexprs, arch, num_warps=4, num_stages=3,
                        divisible_by_16=()) -> dict
    measure_in_subprocess(module, configs_attr, archs=(90, 80), jobs=2) -> list[dict]

``compile_and_measure`` needs the real ``triton.JITFunction``: under ``TRITON_INTERPRET=1``
``@triton.jit`` returns an interpreter object, and every jitted helper the kernel calls would be
one too. ``measure_in_subprocess`` therefore imports the kernel module in a fresh Python without
``TRITON_INTERPRET``; the module's ``configs_attr`` function returns the configurations its
launcher can launch, each a dict ``{"name", "fn", "signature", "constexprs", "num_warps",
"num_stages"}`` plus optionally ``"divisible_by_16"`` (``fn`` the JITFunction, ``signature``
Triton's ``{"arg": "*fp16" | "i32" | "fp32" | "constexpr", ...}``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def cuobjdump_path() -> Path:
    """``cuobjdump`` shipped in Triton's wheel (no CUDA toolkit needed)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path}")
    return path


def _res_usage(cubin: bytes, name: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        tool = str(cuobjdump_path())
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    block = res.split(f"Function {name}:", 1)
    if len(block) != 2:
        raise RuntimeError(f"function {name} not found in cuobjdump output:\n{res}")
    fields = dict(re.findall(r"(\w+):(\d+)", block[1].split("Function ", 1)[0]))
    return {
        "registers": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "local": int(fields["LOCAL"]),
        "spill_stores": len(re.findall(r"\bSTL(\.\w+)*\b", sass)),
        "spill_loads": len(re.findall(r"\bLDL(\.\w+)*\b", sass)),
    }


def compile_and_measure(jit_fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                        num_stages: int = 3, divisible_by_16=()) -> dict:
    """Compile ``jit_fn`` for ``sm_{arch}`` and return its resource usage.

    ``divisible_by_16``: names of pointer / integer arguments to specialise as multiples of 16
    (what Triton's launcher does at run time for aligned pointers and strides).
    Returns ``{"registers", "shared", "local", "stack", "spill_stores", "spill_loads"}``.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(jit_fn, triton.runtime.jit.JITFunction):
        raise TypeError(f"compile_and_measure needs a triton.JITFunction, got {type(jit_fn).__name__} "
                        "(is TRITON_INTERPRET=1 set? use measure_in_subprocess)")
    sig = dict(signature)
    for key in constexprs:
        sig[key] = "constexpr"
    attrs = {(jit_fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible_by_16}
    src = ASTSource(jit_fn, sig, dict(constexprs), attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    usage = _res_usage(compiled.asm["cubin"], compiled.metadata.name)
    usage["shared"] = int(compiled.metadata.shared)
    return usage


def _measure_one(job):
    module, configs_attr, index, arch = job
    import importlib

    cfg = getattr(importlib.import_module(module), configs_attr)()[index]
    usage = compile_and_measure(cfg["fn"], cfg["signature"], cfg["constexprs"], arch,
                                cfg.get("num_warps", 4), cfg.get("num_stages", 3),
                                cfg.get("divisible_by_16", ()))
    return {"name": cfg["name"], "arch": arch, "num_warps": cfg.get("num_warps", 4),
            "num_stages": cfg.get("num_stages", 3), **usage}


def _main(module: str, configs_attr: str, archs: list[int], jobs: int) -> None:
    import importlib
    from multiprocessing import get_context

    n = len(getattr(importlib.import_module(module), configs_attr)())
    work = [(module, configs_attr, i, arch) for arch in archs for i in range(n)]
    if jobs > 1:
        with get_context("spawn").Pool(jobs) as pool:
            rows = pool.map(_measure_one, work, chunksize=1)
    else:
        rows = [_measure_one(w) for w in work]
    print("AOT-JSON " + json.dumps(rows))


def measure_in_subprocess(module: str, configs_attr: str, archs=(90, 80), jobs: int = 2,
                          timeout: float = 3600) -> list[dict]:
    """Compile every configuration ``module.configs_attr()`` lists, for each arch, in a fresh Python
    with ``TRITON_INTERPRET`` unset; returns one row per (configuration, arch)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    code = ("import sys; from tests.kernels.aot import _main; "
            f"_main({module!r}, {configs_attr!r}, {list(archs)!r}, {jobs!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compile failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("AOT-JSON ")][-1]
    return json.loads(line[len("AOT-JSON "):])


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of ``measure_in_subprocess`` rows, one line per configuration."""
    by_name: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], {})[row["arch"]] = row
    archs = sorted({row["arch"] for row in rows}, reverse=True)
    head = f"{'config':<48}" + "".join(f" | sm_{a}: regs  smem(B) spill(st/ld)" for a in archs)
    lines = [head, "-" * len(head)]
    for name, per_arch in by_name.items():
        cells = []
        for a in archs:
            r = per_arch.get(a)
            cells.append(" |        -        -       -" if r is None else
                         f" | {r['registers']:>12} {r['shared']:>8} {r['spill_stores']:>6}/{r['spill_loads']:<5}")
        lines.append(f"{name:<48}" + "".join(cells))
    return "\n".join(lines)


def spills(rows: list[dict]) -> list[str]:
    """One line per (configuration, arch) that spills to local memory; empty when none does."""
    return [f"{r['name']} sm_{r['arch']}: {r['spill_stores']} spill stores, "
            f"{r['spill_loads']} spill loads, {r['local']} B local"
            for r in rows if r["spill_stores"] or r["spill_loads"] or r["local"]]
