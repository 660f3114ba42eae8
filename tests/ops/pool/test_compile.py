"""docs/backends.md §3: the pool ops are custom ops with fake implementations, so torch.compile(fullgraph=True) traces them."""
import torch

import stquery as stq

from ..helpers import compiled as _compiled


def test_pool_ops_compile_fullgraph():
    y = torch.randn(2, 6, 5, requires_grad=True)
    frames = torch.randn(2, 3, 4, 5, requires_grad=True)

    def f(y, frames):
        pooled = stq.multiscale_pool(y, (1, 3))
        temporal, spatial = stq.st_pool(frames)
        return pooled.sum() + temporal.sum() + spatial.sum()

    got = _compiled(f)(y, frames)
    torch.testing.assert_close(got, f(y, frames))
    got.backward()
    assert y.grad is not None and frames.grad is not None
