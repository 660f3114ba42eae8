"""docs/backends.md §3: backend= > $STQUERY_BACKEND > auto; reasons; no silent fallback."""
import logging

import pytest
import torch

import stquery as stq
from stquery import backends
from stquery.backends import torch_backend


class Refusing:
    """A backend that runs on cpu and refuses every call with a fixed reason."""

    devices = frozenset({"cpu"})

    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def supports(self, op, *args):
        return [self.reason]


class Counting(torch_backend.TorchBackend):
    """The torch backend under another name, counting forward calls."""

    def __init__(self, name):
        self.name, self.calls = name, 0

    def attention_fwd(self, *args):
        self.calls += 1
        return super().attention_fwd(*args)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(backends, "_registry", dict(backends._registry))
    monkeypatch.setattr(backends, "_plans", {})
    monkeypatch.setattr(backends, "PREFERENCE", ("refusing", "counting") + backends.PREFERENCE)
    monkeypatch.delenv(backends.ENV, raising=False)
    return backends._registry


q = torch.randn(4, 3, 2, 8)


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(ValueError, match="backend.*'fast'.*torch"):
        stq.attention(q, q, q, backend="fast")


def test_explicit_backend_that_cannot_run_raises_its_reasons(registry):
    backends.register(Refusing("refusing", "needs a quantum computer"))
    with pytest.raises(stq.BackendUnavailable, match="backend='refusing'.*needs a quantum computer"):
        stq.attention(q, q, q, backend="refusing")


def test_environment_variable_chooses_and_argument_overrides(registry, monkeypatch):
    counting = Counting("counting")
    backends.register(counting)
    monkeypatch.setenv(backends.ENV, "counting")
    stq.attention(q, q, q)
    assert counting.calls == 1
    stq.attention(q, q, q, backend="torch")
    assert counting.calls == 1
    backends.register(Refusing("refusing", "switched off"))
    monkeypatch.setenv(backends.ENV, "refusing")
    with pytest.raises(stq.BackendUnavailable, match="STQUERY_BACKEND=.*switched off"):
        stq.attention(q, q, q)


def test_auto_passes_over_with_a_log_line(registry, caplog):
    backends.register(Refusing("refusing", "out of order"))
    counting = Counting("counting")
    backends.register(counting)
    with caplog.at_level(logging.INFO, logger="stquery"):
        stq.attention(q, q, q)
    assert counting.calls == 1
    assert "passed over refusing: out of order" in caplog.text


def test_auto_with_no_backend_lists_every_reason(registry, monkeypatch):
    monkeypatch.setattr(backends, "_registry", {})
    backends.register(Refusing("refusing", "reason one"))
    backends.register(Refusing("counting", "reason two"))
    with pytest.raises(stq.BackendUnavailable, match="(?s)refusing: reason one.*counting: reason two"):
        stq.attention(q, q, q)


def test_auto_on_cpu_picks_cpu_and_says_why_not_triton():
    assert backends.resolve("attention", None, "cpu", q) == "cpu"
    why = backends._plan("cpu")[1]["triton"]
    assert "cuda" in why[0]


def test_auto_on_cpu_falls_back_to_torch_where_cpu_refuses():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert any("float64" in r for r in backends.get("cpu").supports("st_pool", x))
    assert backends.resolve("st_pool", None, "cpu", x) == "torch"


def test_triton_on_cpu_without_interpreter_gives_a_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reasons = backends.reasons("st_pool", torch.randn(1, 2, 3, 4))
    assert reasons["torch"] == []
    assert any("cpu" in r for r in reasons["triton"])


class StrictRows(torch_backend.TorchBackend):
    """The torch backend, asserting the backend contract on what backward passes hand over."""

    name = "strict"

    def _check(self, *grads):
        for g in grads:
            assert g.stride(-1) == 1, g.stride()

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        self._check(grad_out)
        assert frame_lengths is None or frame_lengths.dtype == torch.int64
        return super().attention_bwd(grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob)

    def gather_gate_bwd(self, grad_y, *args):
        self._check(grad_y)
        return super().gather_gate_bwd(grad_y, *args)

    def multiscale_pool_bwd(self, grad, *args):
        self._check(grad)
        return super().multiscale_pool_bwd(grad, *args)

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        self._check(grad_temporal, grad_spatial)
        return super().st_pool_bwd(grad_temporal, grad_spatial)


def test_backends_get_row_readable_gradients_from_sum(registry):
    """loss.sum() hands back an expanded scalar (strides 0); backends must get stride(-1) == 1."""
    backends.register(StrictRows())
    x = torch.randn(2, 12, 4, requires_grad=True)
    scores = torch.randn(2, 12, requires_grad=True)
    frames = torch.randn(2, 3, 4, 5, requires_grad=True)
    qt = torch.randn(6, 3, 2, 8, requires_grad=True)
    losses = [
        stq.temporal_attention(qt, qt, qt, 3, frame_lengths=torch.tensor([3, 1], dtype=torch.int32), backend="strict").sum(),
        stq.topk_tokens(x, scores, 5, gate="sigmoid", scales=(1, 2), backend="strict")[0].sum(),
        stq.multiscale_pool(x, (1, 4), backend="strict").mean(),
        sum(t.sum() for t in stq.st_pool(frames, backend="strict")),
    ]
    torch.autograd.backward(losses)
    assert all(t.grad is not None for t in (x, scores, frames, qt))


def test_auto_prefers_triton_for_cuda_tensors_it_supports(monkeypatch):
    """On CUDA tensors auto takes triton first when its supports() is empty (simulated here: the
    interpreter makes triton's supports() accept these CPU tensors, the device type says cuda)."""
    monkeypatch.delenv(backends.ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(2, 3, 4, 5)
    assert backends.get("triton").supports("st_pool", x) == []
    assert backends.resolve("st_pool", None, "cuda", x) == "triton"
    assert backends.resolve("st_pool", None, "cpu", x) == "cpu"


@pytest.mark.parametrize("name", ["torch", "triton", "cpu"])
def test_complete_backends_define_every_primitive(name):
    """backends.OPS names each op's primitives; torch, triton and cpu implement all of them."""
    backend = backends.get(name)
    missing = [p for primitives in backends.OPS.values() for p in primitives if not callable(getattr(backend, p, None))]
    assert missing == []
