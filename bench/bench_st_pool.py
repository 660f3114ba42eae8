"""``st_pool`` (docs/ops.md §2.5): x ``[B, T, P, C]`` to its means over P and over T in one pass, against two
``torch.mean`` calls."""
import pytest

from stquery.profile.cases import impl_names
from stquery.profile.config import PASSES

CASE = "st_pool"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_st_pool(run_case, impl, passes):
    run_case(CASE, impl, passes)
