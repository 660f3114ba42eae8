"""float64 gradcheck of stq.topk_tokens on the torch backend: x, scores (every gate)."""
import pytest
import torch
from torch.autograd import gradcheck

import stquery as stq

from ..helpers import leaf as _leaf
from ..helpers import strided


@pytest.mark.parametrize("gate", [None, "sigmoid", "softmax", "identity"])
@pytest.mark.parametrize("scales", [None, (1, 3)])
def test_topk_tokens(gate, scales):
    x = _leaf(strided((2, 9, 3)))
    scores = _leaf(torch.randn(2, 9, dtype=torch.float64))
    inputs = (x, scores) if gate else (x,)

    def f(x, s=scores):
        return stq.topk_tokens(x, s, 4, gate=gate, scales=scales, backend="torch")[0]

    assert gradcheck(f, inputs)
    if gate is None:  # docs/ops.md §2.4: no gate, no gradient to scores
        stq.topk_tokens(x, scores, 4)[0].sum().backward()
        assert scores.grad is None
