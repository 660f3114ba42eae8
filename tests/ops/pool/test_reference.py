"""The pool references against per-element loops written from docs/ops.md §2.5 (naive.py here)."""
import pytest
import torch

from stquery.ops import reference as ref

from . import naive
from ..helpers import strided


@pytest.mark.parametrize("k,scales", [(8, (1, 2, 4)), (7, (3,)), (1, (1, 5)), (5, (5, 6))])
def test_multiscale_pool_matches_loops(k, scales):
    y = strided((2, k, 3))
    torch.testing.assert_close(ref.multiscale_pool(y, scales), naive.multiscale_pool(y, scales))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 7, 3), (2, 5, 1, 2)])
def test_st_pool_matches_loops(shape):
    x = strided(shape)
    for got, want in zip(ref.st_pool(x), naive.st_pool(x)):
        torch.testing.assert_close(got, want)
