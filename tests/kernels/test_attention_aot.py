"""Ahead-of-time compile of every configuration the attention launchers can launch, for sm_90 and
sm_80, on the CPU (no GPU needed; see ``tests/kernels/aot.py``).

The configurations come from ``aot_configs()`` in ``kernels/attention/``: the five kernels
(forward packed / looping, backward packed / dq / dk-dv) x float16, bfloat16, float32 x modes
none / mix / scale x every head-width bucket (BLOCK_D 16 .. 256) with its block configuration.
Each must compile (the interpreter accepts programs a GPU compile rejects, e.g. ``tl.dot`` on
blocks under 16), must not spill to local memory (``cuobjdump -res-usage`` and STL/LDL in the
SASS), and must fit the 99 KiB of shared memory of the smallest sm_8x part. The registers and
shared memory of every configuration are printed (``pytest -s``).
"""
import pytest

from .aot import format_table, measure_in_subprocess, spills

pytest.importorskip("triton")

SHARED_LIMIT = 99 * 1024  # sm_86 / sm_89 per-block maximum (sm_80: 163 KiB, sm_90: 227 KiB)


def test_attention_compiles_without_spills():
    rows = measure_in_subprocess("stquery.kernels.attention", "aot_configs", archs=(90, 80), jobs=2)
    print("\n" + format_table(rows))
    assert rows, "no configurations compiled"
    spilled = spills(rows)
    assert not spilled, "local-memory spills:\n" + "\n".join(spilled)
    too_big = [f"{r['name']} sm_{r['arch']}: {r['shared']} B" for r in rows if r["shared"] > SHARED_LIMIT]
    assert not too_big, "shared memory over 99 KiB:\n" + "\n".join(too_big)
