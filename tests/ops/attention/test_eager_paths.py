"""The eager paths of the attention ops (stquery/ops/attention/op.py): straight to the backend when
no gradient is recorded, otherwise through the backend's own autograd node (the cpu backend's, in
C++) or the Python autograd.Function. They agree; forward-mode tangents go to the Function, which
refuses them with an error instead of dropping them; functorch transforms go through the custom
ops, which torch.vmap runs once per sample."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import stquery as stq
from stquery.backends.cpu_backend import CpuBackend

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


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_forward_ad_is_refused_not_dropped(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, v = qkv((2 * T, 3, 2, 8), dtype=dtype)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        stq.temporal_attention(fwAD.make_dual(q, torch.ones_like(q)), k, v, T, backend=backend)


def _cpu_call(op, dtype=torch.float32):
    """(inputs that require grad, a function of them running ``op`` on the cpu backend): routed,
    with padding, alpha of its smallest broadcast shape ``[p]`` in another dtype than q's."""
    alpha = torch.rand(2, dtype=torch.float16) + 0.1
    if op == "temporal":
        q, k, v = qkv((2 * T, 3, 2, 8), dtype=dtype)
        lengths = torch.tensor([T, T - 1])
        call = lambda q, k, v, a: stq.temporal_attention(  # noqa: E731
            q, k, v, T, masks=MASKS, alpha=a, frame_lengths=lengths, backend="cpu")
    else:
        q, k, v = qkv((2, 5, 2, 8), (2, 7, 2, 8), dtype=dtype)
        padding = torch.rand(2, 7) > 0.7
        call = lambda q, k, v, a: stq.attention(  # noqa: E731
            q, k, v, masks=MASKS, alpha=a, key_padding=padding, backend="cpu")
    return [t.requires_grad_() for t in (q, k, v, alpha)], call


@pytest.mark.parametrize("op", ["temporal", "spatial"])
def test_cpu_records_in_cpp_what_the_python_function_records(op, monkeypatch):
    """The cpu backend's recorded call is its C++ autograd node; without ``attention_recorded`` the
    call goes through the Python Function around the same kernels: the same numbers, bit for bit
    (their accuracy: tests/kernels/test_attention.py), for ``loss.sum()``'s expanded gradient too."""
    inputs, call = _cpu_call(op)
    native = call(*inputs)
    assert "AttentionCpu" in native.grad_fn.name()
    native_grads = torch.autograd.grad(native.sum(), inputs)
    monkeypatch.delattr(CpuBackend, "attention_recorded")
    python = call(*inputs)
    assert type(python.grad_fn).__name__ == "_AttentionBackward"
    python_grads = torch.autograd.grad(python.sum(), inputs)
    assert torch.equal(native, python)
    for native_grad, python_grad, x in zip(native_grads, python_grads, inputs):
        assert native_grad.dtype == x.dtype and native_grad.shape == x.shape
        assert torch.equal(native_grad, python_grad)


def test_cpu_node_runs_backward_twice_and_only_what_requires_grad():
    inputs, call = _cpu_call("temporal")
    out = call(*inputs)
    grad_out = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, inputs, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    q, k, v, alpha = inputs
    out = call(q, k.detach(), v.detach(), alpha.detach())
    out.backward(grad_out)
    assert torch.equal(q.grad, first[0])


def test_cpu_node_refuses_inputs_modified_after_the_call():
    (q, k, v, alpha), call = _cpu_call("temporal")
    q2 = q * 1  # a non-leaf, so it may be modified in place
    out = call(q2, k, v, alpha)
    q2.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_cpu_node_saves_through_saved_tensor_hooks():
    inputs, call = _cpu_call("spatial")
    expected = torch.autograd.grad(call(*inputs).sum(), inputs)
    packed = []

    def pack(t):
        packed.append(t)
        return t.clone()  # backward must read what unpack returns, not the original

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call(*inputs)
    assert any(t is inputs[0] for t in packed)  # q is saved through the hook
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out.sum(), inputs), expected))


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
