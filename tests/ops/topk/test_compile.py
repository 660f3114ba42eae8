"""docs/backends.md §3: topk_tokens is a custom op with a fake implementation, so torch.compile(fullgraph=True) traces it."""
import torch

import stquery as stq

from ..helpers import compiled as _compiled


def test_selection_compiles_fullgraph():
    x = torch.randn(2, 12, 5, requires_grad=True)
    scores = torch.randn(2, 12, requires_grad=True)

    def f(x, scores):
        y, idx = stq.topk_tokens(x, scores, 6, gate="sigmoid", scales=(1, 2))
        return y.sum() + idx.sum()

    got = _compiled(f)(x, scores)
    torch.testing.assert_close(got, f(x, scores))
    got.backward()
    assert x.grad is not None and scores.grad is not None
