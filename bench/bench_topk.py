"""Top-k token selection (docs/ops.md §2.4: ``order="time"``, ``gate="sigmoid"``, k = N/4 of N = T·P tokens)
against ``torch.topk`` + sort + gather."""
import pytest

from stquery.profile.cases import impl_names
from stquery.profile.config import PASSES

CASE = "topk"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_topk(run_case, impl, passes):
    run_case(CASE, impl, passes)
