"""The two eager paths of the attention ops (stquery/ops/attention/op.py): straight to the backend
when no gradient is recorded, through the autograd.Function otherwise. They agree; forward-mode
tangents go to the Function, which refuses them with an error instead of dropping them; functorch
transforms go through the custom ops, which torch.vmap runs once per sample."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import stquery as stq

from ..helpers import qkv

T = 3
MASKS = stq.MaskSet([stq.masks.window(1), stq.masks.causal()])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_direct_and_recorded_paths_agree(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = qkv((2 * T, 3, 2, 8), dtype=dtype)
    alpha = torch.rand(2, 3, 2, dtype=dtype)
    kw = dict(masks=MASKS, alpha=alpha, backend=backend)
    direct = stq.temporal_attention(q, k, v, T, **kw)
    assert direct.grad_fn is None
    recorded = stq.temporal_attention(q.requires_grad_(), k, v, T, **kw)
    assert recorded.grad_fn is not None
    with torch.no_grad():
        no_grad = stq.temporal_attention(q, k, v, T, **kw)
    assert torch.equal(direct, recorded) and torch.equal(direct, no_grad)


def test_forward_ad_is_refused_not_dropped():
    q, k, v = qkv((2 * T, 3, 2, 8))
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        stq.temporal_attention(fwAD.make_dual(q, torch.ones_like(q)), k, v, T, backend="torch")


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_vmap_runs_the_custom_op_per_sample(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = qkv((2 * T, 3, 2, 8), dtype=dtype)
    qs = torch.stack([q, q.flip(0)])
    f = lambda x: stq.temporal_attention(x, k, v, T, masks=MASKS, backend=backend)  # noqa: E731
    assert torch.equal(torch.vmap(f)(qs), torch.stack([f(x) for x in qs]))
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda x: f(x).sum())(q)
