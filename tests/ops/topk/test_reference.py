"""The topk reference against per-element loops written from docs/ops.md §2.4 (naive.py here)."""
import pytest
import torch

from stquery.ops import reference as ref

from . import naive
from ..helpers import strided


@pytest.mark.parametrize("order", ["time", "score"])
@pytest.mark.parametrize("gate", [None, "sigmoid", "softmax", "identity"])
@pytest.mark.parametrize("scales", [None, (1, 2, 3)])
def test_topk_matches_loops(order, gate, scales):
    B, N, C = 2, 13, 5
    x = strided((B, N, C))
    scores = torch.randint(0, 4, (B, N)).double()  # many ties
    for k in (1, 7, N):
        y, idx = ref.topk_tokens(x, scores, k, order=order, gate=gate, scales=scales)
        y_want, idx_want = naive.topk_tokens(x, scores, k, order, gate, scales)
        assert torch.equal(idx, idx_want)
        torch.testing.assert_close(y, y_want, rtol=1e-12, atol=1e-12)
