"""The eager paths of stq.topk_tokens (stquery/ops/topk/op.py): straight to the backend when no
gradient is recorded, through the autograd.Function otherwise. Both give the custom ops' outputs and
gradients; forward-mode tangents go to the Function, which refuses them with an error instead of
dropping them; functorch transforms go through the custom ops, which torch.vmap runs once per
sample."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import stquery as stq
from stquery.ops.topk import op

from ..helpers import leaf, strided

K = 4


def _inputs(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    return strided((2, 9, 5), dtype=dtype), torch.randn(2, 9, dtype=dtype)


def _custom_ops(x, scores, gate, scales, backend):
    """topk_tokens through its custom ops, as torch.compile sees it."""
    idx = op._topk_select(scores.detach(), K, "time", backend)
    gate_scores = scores if gate else scores.detach()
    return op._gather_gate(x, gate_scores, idx, gate or "none", list(scales or ()), backend), idx


def _grad_rows_strided(y):
    """An incoming gradient with stride(-1) != 1 (the backward makes it readable as rows)."""
    return torch.randn(y.shape[::-1], dtype=y.dtype).permute(2, 1, 0)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("gate", [None, "sigmoid", "softmax", "identity"])
@pytest.mark.parametrize("scales", [None, (1, 2)])
def test_eager_paths_agree_with_the_custom_ops(backend, gate, scales):
    x, scores = _inputs(backend)
    kw = dict(gate=gate, scales=scales, backend=backend)
    direct, idx = stq.topk_tokens(x, scores, K, **kw)
    assert direct.grad_fn is None
    with torch.no_grad():
        no_grad, _ = stq.topk_tokens(leaf(x), leaf(scores), K, **kw)
    xr, sr, xc, sc = leaf(x), leaf(scores), leaf(x), leaf(scores)
    recorded, idx_r = stq.topk_tokens(xr, sr, K, **kw)
    assert type(recorded.grad_fn).__name__ == "_GatherGateBackward"
    custom, idx_c = _custom_ops(xc, sc, gate, scales, backend)
    for y in (direct, no_grad, recorded):
        assert torch.equal(y, custom)
    assert torch.equal(idx, idx_c) and torch.equal(idx_r, idx_c)

    g = _grad_rows_strided(custom)
    recorded.backward(g)
    custom.backward(g)
    assert torch.equal(xr.grad, xc.grad)
    if gate is None:  # docs/ops.md §2.4: no gate, no gradient to scores
        assert sr.grad is None and sc.grad is None
    else:
        assert torch.equal(sr.grad, sc.grad)


def test_scores_alone_requiring_grad_are_recorded_only_with_a_gate():
    x, scores = _inputs("torch")
    assert stq.topk_tokens(x, leaf(scores), K, backend="torch")[0].grad_fn is None
    assert stq.topk_tokens(x, leaf(scores), K, gate="sigmoid", backend="torch")[0].grad_fn is not None


@pytest.mark.parametrize("dual", ["x", "scores"])
def test_forward_ad_is_refused_not_dropped(dual):
    x, scores = _inputs("torch")
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        if dual == "x":
            x = fwAD.make_dual(x, torch.ones_like(x))
        else:
            scores = fwAD.make_dual(scores, torch.ones_like(scores))
        stq.topk_tokens(x, scores, K, gate="sigmoid", backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_vmap_runs_the_custom_ops_per_sample(backend):
    x, scores = _inputs(backend)
    ss, xs = torch.stack([scores, -scores]), torch.stack([x, 2 * x])
    by_scores = lambda s: stq.topk_tokens(x, s, K, gate="sigmoid", scales=(1, 2), backend=backend)[0]  # noqa: E731
    by_x = lambda t: stq.topk_tokens(t, scores, K, backend=backend)[0]  # noqa: E731
    assert torch.equal(torch.vmap(by_scores)(ss), torch.stack([by_scores(s) for s in ss]))
    assert torch.equal(torch.vmap(by_x)(xs), torch.stack([by_x(t) for t in xs]))
