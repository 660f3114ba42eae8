"""Ahead-of-time compile of every configuration the top-k and pooling launchers can launch, for
sm_90 and sm_80, on the CPU (no GPU needed): the compile must succeed (the interpreter accepts
programs a GPU compile rejects) and no kernel may spill to local memory (``cuobjdump -res-usage``
and STL/LDL in the SASS). The configurations come from ``aot_configs()`` in ``kernels/topk/`` and
``kernels/pool/``: fp16/bf16/fp32 x every block config x every gate/pool specialisation.
"""
import pytest

from .aot import format_table, measure_in_subprocess, spills

pytest.importorskip("triton")


@pytest.mark.parametrize("module", ["stquery.kernels.topk", "stquery.kernels.pool"])
def test_compiles_without_spills(module):
    rows = measure_in_subprocess(module, "aot_configs", archs=(90, 80), jobs=2)
    print("\n" + format_table(rows))
    assert rows, "no configurations compiled"
    spilled = spills(rows)
    assert not spilled, "local-memory spills:\n" + "\n".join(spilled)
