"""docs/backends.md §3: the attention ops are custom ops with a fake implementation, so torch.compile(fullgraph=True) traces it."""
import torch

import stquery as stq

from ..helpers import compiled as _compiled
from ..helpers import mask_set


def test_attention_ops_compile_fullgraph():
    masks = mask_set(("window", "dense"), 4, 4)
    q, k, v = (torch.randn(2 * 4, 3, 2, 8, requires_grad=True) for _ in range(3))
    alpha = torch.rand(2, 3, 2, requires_grad=True)
    kp = torch.zeros(8, 3, dtype=torch.bool)

    def f(q, k, v, alpha):
        t = stq.temporal_attention(q, k, v, 4, masks=masks, alpha=alpha, mode="scale")
        s = stq.attention(t, k, v, key_padding=kp)
        return stq.temporal_attention(s, k, v, 4) + s

    got = _compiled(f)(q, k, v, alpha)
    want = f(q, k, v, alpha)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), (q, alpha))
    want_grads = torch.autograd.grad(want.sum(), (q, alpha))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)


def test_compile_with_inductor():
    q, k, v = (torch.randn(4 * 3, 2, 2, 8) for _ in range(3))
    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v: stq.temporal_attention(q, k, v, 3) * 2, fullgraph=True)
    torch.testing.assert_close(f(q, k, v), stq.temporal_attention(q, k, v, 3) * 2)
