"""Top-k token selection (SPEC §2.4: ``order="time"``, ``gate="sigmoid"``, k = N/4 of N = T·P tokens)
against ``torch.topk`` + sort + gather."""
import pytest

from stquery.profile import PASSES, impl_names

CASE = "topk"


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("impl", impl_names(CASE))
def test_topk(run_case, impl, passes):
    run_case(CASE, impl, passes)
