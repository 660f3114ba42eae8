"""docs/ops.md §1 for stq.topk_tokens: each bad input raises ValueError/TypeError naming the argument and the shapes."""
import pytest
import torch

import stquery as stq

from ..helpers import assert_error_names

x3 = torch.randn(2, 10, 4)
s2 = torch.randn(2, 10)
CASES = [
    (lambda: stq.topk_tokens(x3, s2, 11), ValueError, ["k", "N = 10", "11"]),
    (lambda: stq.topk_tokens(x3, s2, 0), ValueError, ["k", "0"]),
    (lambda: stq.topk_tokens(x3, s2, 2.0), TypeError, ["k"]),
    (lambda: stq.topk_tokens(x3[0], s2, 2), ValueError, ["x", "[B, N, C]", "[10, 4]"]),
    (lambda: stq.topk_tokens(x3, s2[:, :9], 2), ValueError, ["scores", "[2, 10]", "[2, 9]"]),
    (lambda: stq.topk_tokens(x3, s2, 2, order="random"), ValueError, ["order", "'random'"]),
    (lambda: stq.topk_tokens(x3, s2, 2, gate="relu"), ValueError, ["gate", "'relu'"]),
    (lambda: stq.topk_tokens(x3, s2, 2, scales=(1, 0)), ValueError, ["scales", "(1, 0)"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_names_the_argument(case):
    assert_error_names(*CASES[case])
