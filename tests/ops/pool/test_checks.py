"""docs/ops.md §1 for the pool ops: each bad input raises ValueError/TypeError naming the argument and the shapes."""
import pytest
import torch

import stquery as stq

from ..helpers import assert_error_names

x3 = torch.randn(2, 10, 4)
s2 = torch.randn(2, 10)
CASES = [
    (lambda: stq.multiscale_pool(x3, ()), ValueError, ["scales"]),
    (lambda: stq.multiscale_pool(s2, (1,)), ValueError, ["y", "[B, k, C]", "[2, 10]"]),
    (lambda: stq.st_pool(x3), ValueError, ["x", "[B, T, P, C]", "[2, 10, 4]"]),
    (lambda: stq.st_pool(torch.randn(2, 3, 4, 0)), ValueError, ["x", "at least 1", "[2, 3, 4, 0]"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_names_the_argument(case):
    assert_error_names(*CASES[case])
