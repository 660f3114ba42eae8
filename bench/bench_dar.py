"""Temporal Dynamic Attention Routing with p = 3 masks {window(1), window(2), global} and alpha
``[B, L, 3]`` (docs/ops.md §2.3), in mix mode (p SDPA / flex / flash calls summed, for the peers) and in
scale mode (matmul + masked softmax, or FlexAttention's ``score_mod`` carrying alpha)."""
import pytest

from stquery.profile.cases import impl_names
from stquery.profile.config import PASSES

MODES = ("temporal-mix", "temporal-scale")


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("case,impl", [(c, i) for c in MODES for i in impl_names(c)])
def test_dar(run_case, case, impl, passes):
    run_case(case, impl, passes)
