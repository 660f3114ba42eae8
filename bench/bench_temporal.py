"""Temporal attention (plain softmax) in the native ``[B*T, L, H, d]`` layout (SPEC §2.2), against
eager permute + SDPA, head-fold SDPA, FlexAttention, xformers and flash-attn."""
import pytest

from stquery.profile import PASSES, impl_names

CASE = "temporal"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_temporal(run_case, impl, passes):
    run_case(CASE, impl, passes)
