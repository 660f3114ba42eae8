"""The eager paths of stq.multiscale_pool and stq.st_pool (stquery/ops/pool/op.py): straight to
the backend when no gradient is recorded, through the autograd.Function otherwise. Both give the
custom ops' outputs and gradients; forward-mode tangents go to the Function, which refuses them
with an error instead of dropping them; functorch transforms go through the custom ops, which
torch.vmap runs once per sample."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import stquery as stq
from stquery.ops.pool import op

from ..helpers import leaf, strided

SCALES = (1, 2, 4)


def _dtype(backend):
    return torch.float64 if backend == "torch" else torch.float32


def _strided_like(t):
    """An incoming gradient with stride(-1) != 1 (the backward makes it readable as rows)."""
    return torch.randn(t.shape[::-1], dtype=t.dtype).permute(*reversed(range(t.dim())))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_multiscale_pool_eager_paths_agree_with_the_custom_op(backend):
    y = strided((2, 7, 5), dtype=_dtype(backend))
    direct = stq.multiscale_pool(y, SCALES, backend=backend)
    assert direct.grad_fn is None
    with torch.no_grad():
        no_grad = stq.multiscale_pool(leaf(y), SCALES, backend=backend)
    yr, yc = leaf(y), leaf(y)
    recorded = stq.multiscale_pool(yr, SCALES, backend=backend)
    assert type(recorded.grad_fn).__name__ == "_MultiscalePoolBackward"
    custom = op._multiscale_pool(yc, list(SCALES), backend)
    for out in (direct, no_grad, recorded):
        assert torch.equal(out, custom)
    g = _strided_like(custom)
    recorded.backward(g)
    custom.backward(g)
    assert torch.equal(yr.grad, yc.grad)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("used", ["both", "temporal", "spatial"])
def test_st_pool_eager_paths_agree_with_the_custom_op(backend, used):
    x = strided((2, 3, 4, 5), dtype=_dtype(backend))
    direct = stq.st_pool(x, backend=backend)
    assert direct[0].grad_fn is None
    with torch.no_grad():
        no_grad = stq.st_pool(leaf(x), backend=backend)
    xr, xc = leaf(x), leaf(x)
    recorded = stq.st_pool(xr, backend=backend)
    assert type(recorded[0].grad_fn).__name__ == "_StPoolBackward"
    custom = op._st_pool(xc, backend)
    for outs in (direct, no_grad, recorded):
        assert all(torch.equal(a, b) for a, b in zip(outs, custom))
    # an output left out of the loss gets no incoming gradient; autograd passes zeros for it
    pick = {"both": [0, 1], "temporal": [0], "spatial": [1]}[used]
    grads = [_strided_like(custom[i]) for i in pick]
    torch.autograd.backward([recorded[i] for i in pick], grads)
    torch.autograd.backward([custom[i] for i in pick], grads)
    assert torch.equal(xr.grad, xc.grad)


def test_forward_ad_is_refused_not_dropped():
    y = strided((2, 7, 5))
    x = strided((2, 3, 4, 5))
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="jvp"):
            stq.multiscale_pool(fwAD.make_dual(y, torch.ones_like(y)), SCALES, backend="torch")
        with pytest.raises(NotImplementedError, match="jvp"):
            stq.st_pool(fwAD.make_dual(x, torch.ones_like(x)), backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_runs_the_custom_ops_per_sample(backend):
    y = torch.randn(2, 2, 7, 5, dtype=_dtype(backend))
    pool = lambda t: stq.multiscale_pool(t, SCALES, backend=backend)  # noqa: E731
    st = lambda t: stq.st_pool(t, backend=backend)  # noqa: E731
    x = y.view(2, 2, 7, 5, 1)
    assert torch.equal(torch.vmap(pool)(y), torch.stack([pool(t) for t in y]))
    for got, want in zip(torch.vmap(st)(x), zip(*[st(t) for t in x])):
        assert torch.equal(got, torch.stack(want))
