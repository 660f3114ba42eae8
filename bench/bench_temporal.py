"""Temporal attention (plain softmax) in the native ``[B*T, L, H, d]`` layout (docs/ops.md §2.2), against
eager permute + SDPA, head-fold SDPA, FlexAttention, xformers and flash-attn."""
import pytest

from stquery.profile.cases import impl_names
from stquery.profile.config import PASSES

CASE = "temporal"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_temporal(run_case, impl, passes):
    run_case(CASE, impl, passes)
