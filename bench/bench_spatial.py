"""Spatial self-attention over the L tokens of each frame, ``G = B·T`` (docs/ops.md §2.1), against SDPA on
transposed views, FlexAttention, xformers and flash-attn."""
import pytest

from stquery.profile.cases import impl_names
from stquery.profile.config import PASSES

CASE = "spatial"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_spatial(run_case, impl, passes):
    run_case(CASE, impl, passes)
