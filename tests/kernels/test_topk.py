"""``stq.topk_tokens`` on each kernel backend (``triton``, ``cpu``, ``cuda``) against the torch reference
(docs/ops.md §2.4). On CPU, Triton runs in its interpreter and the cuda backend under its emulation
(``STQUERY_CUDA_EMULATE=1``: the kernels' own source, one OS thread per CUDA thread).

Indices must match exactly. Values and gradients: the kernel's error against the float64
reference is at most 2x (3x for gradients) the error of the same-dtype reference, plus a tiny eps.
Every output the kernels allocate is NaN-poisoned (index tensors: -1; ``tests/conftest.py``: the
one allocator's hook ``stquery.kernels._fill``), so an element a kernel forgets to write fails the comparison.
"""
import pytest
import torch

import stquery as stq
from stquery.ops import reference as ref
from stquery.ops.topk import problem as topk_problem

from ..conftest import DEVICE, TRITON, assert_same_with_1_and_2_threads
from ..conftest import KERNEL_BACKENDS as BACKENDS

if TRITON:
    from stquery.kernels import topk as topk_kernels
needs_triton = pytest.mark.skipif(not TRITON, reason="needs triton with CUDA or TRITON_INTERPRET=1")

GATES = (None, "sigmoid", "softmax", "identity")
DTYPES = (torch.float32, torch.float16)  # the interpreter's bfloat16 is broken; AOT covers bf16


def skip_unsupported(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter's bfloat16 arithmetic is inexact")


def strided(*shape, dtype, scale=1.0):
    """Random ``shape`` whose only contiguous dim is the last (a slice of a wider buffer)."""
    *lead, d = shape
    buf = torch.randn(*lead, d + 3, dtype=torch.float32, device=DEVICE) * scale
    return buf.to(dtype)[..., :d]


def assert_bounded(got, same, exact, factor, what):
    """|got - exact| <= factor * |same - exact| + eps, elementwise maxima (flash-attention's bound)."""
    assert got.dtype == same.dtype, f"{what}: dtype {got.dtype}, expected {same.dtype}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten, poisoned elements?)"
    err = (got.double() - exact).abs().max().item()
    ref_err = (same.double() - exact).abs().max().item()
    eps = 1e-7 * (1.0 + exact.abs().max().item())
    assert err <= factor * ref_err + eps, f"{what}: error {err:.3g} > {factor} x reference's {ref_err:.3g}"


def check_topk(backend, x, scores, k, order="time", gate=None, scales=None):
    """Forward and backward of ``backend`` vs the reference at x's dtype and in float64."""
    kw = dict(order=order, gate=gate, scales=scales)
    x = x.requires_grad_()
    scores = scores.requires_grad_(gate is not None)
    x64 = x.detach().double().requires_grad_()
    s64 = scores.detach().double().requires_grad_(gate is not None)

    y, idx = stq.topk_tokens(x, scores, k, backend=backend, **kw)
    y_same, idx_same = ref.topk_tokens(x, scores, k, **kw)
    y_exact, idx_exact = ref.topk_tokens(x64, s64, k, **kw)
    assert torch.equal(idx, idx_same) and torch.equal(idx, idx_exact), "indices differ"
    assert_bounded(y, y_same, y_exact, 2, "y")

    grad = torch.randn_like(y_exact).to(y.dtype)
    inputs = (x, scores) if gate is not None else (x,)
    got = torch.autograd.grad(y, inputs, grad)
    same = torch.autograd.grad(y_same, inputs, grad)
    exact = torch.autograd.grad(y_exact, (x64, s64) if gate is not None else (x64,), grad.double())
    for name, g, gs, ge in zip(("dx", "dscores"), got, same, exact):
        assert_bounded(g, gs, ge, 3, name)
    return idx


# ----------------------------------------------------------------------------- selection
def _scores(kind, B, N, dtype):
    if kind == "random":
        return strided(B, N, dtype=dtype)
    if kind == "ties":  # few distinct values: the k-th value is shared across selection chunks
        return (torch.randint(0, 4, (B, N), device=DEVICE) - 2).to(dtype)
    if kind == "signed_zeros":  # -0.0 and +0.0 tie (as in the reference's stable sort)
        s = torch.zeros(B, N, device=DEVICE)
        s[:, ::3] = -0.0
        s[:, 1::7] = -1.5
        s[:, 2::11] = 2.0
        return s.to(dtype)
    if kind == "constant":
        return torch.full((B, N), 0.25, device=DEVICE, dtype=dtype)
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ("time", "score"))
@pytest.mark.parametrize("kind,N,k", [
    ("random", 203, 1),
    ("random", 203, 203),
    ("random", 4099, 777),          # 3 selection chunks, N not a power of two
    ("ties", 4500, 1234),           # the tie group at the threshold spans chunks
    ("ties", 97, 97),
    ("signed_zeros", 301, 150),
    ("constant", 2050, 2049),       # every key equal: pure index tie-breaking
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_select_matches_reference(kind, N, k, order, dtype, backend):
    B, C = 3, 2
    scores = _scores(kind, B, N, dtype)
    x = strided(B, N, C, dtype=dtype)
    _, idx = stq.topk_tokens(x, scores, k, order=order, backend=backend)
    assert torch.equal(idx, ref.select(scores, k, order))


@pytest.mark.parametrize("kind", ("ties", "signed_zeros", "random"))
@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values != ("cpu",)])
def test_score_order_beyond_the_rank_kernel(kind, backend, monkeypatch):
    """Past RANK_MAX_K, score order comes from a stable sort of the selected scores."""
    monkeypatch.setattr(topk_problem, "RANK_MAX_K", 16)
    scores = _scores(kind, 2, 301, torch.float32)
    x = strided(2, 301, 2, dtype=torch.float32)
    _, idx = stq.topk_tokens(x, scores, 150, order="score", backend=backend)
    assert torch.equal(idx, ref.select(scores, 150, "score"))


@needs_triton
def test_select_is_deterministic():
    scores = _scores("ties", 2, 3000, torch.float32)
    first = topk_kernels.topk_select(scores, 1500, "score")
    for _ in range(2):
        assert torch.equal(topk_kernels.topk_select(scores, 1500, "score"), first)


# ----------------------------------------------------------------------------- gather and gate
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + (torch.bfloat16,))
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("order", ("time", "score"))
def test_gather_gate(order, gate, dtype, backend):
    skip_unsupported(backend, dtype)
    B, N, C, k = 2, 203, 40, 37
    check_topk(backend, strided(B, N, C, dtype=dtype), strided(B, N, dtype=dtype), k, order, gate)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("scales", [(1, 2, 4), (16, 4), (3, 1, 5)])  # last: unfused path
@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_gate_scales(scales, gate, dtype, backend):
    B, N, C, k = 2, 113, 40, 45  # k not a multiple of any scale > 1: partial last windows
    check_topk(backend, strided(B, N, C, dtype=dtype), strided(B, N, dtype=dtype), k, "time", gate, scales)


@pytest.mark.parametrize("gate", ("sigmoid", "softmax"))
@pytest.mark.parametrize("k", [1, 59])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_gate_k_extremes(k, gate, backend):
    B, N, C = 2, 59, 24
    for scales in (None, (1, 2, 4)):
        check_topk(backend, strided(B, N, C, dtype=torch.float32), strided(B, N, dtype=torch.float32),
                   k, "score", gate, scales)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_gate_large_scales(backend):
    # LinVT's scales (64, 32, 16): 64-token tiles; k spans two tiles with a partial last window.
    B, N, C, k = 1, 300, 24, 100
    check_topk(backend, strided(B, N, C, dtype=torch.float16), strided(B, N, dtype=torch.float16), k,
               "time", "sigmoid", (64, 32, 16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_gate_ties_with_gradients(backend):
    B, N, C, k = 2, 150, 130, 60  # C spans several C blocks (forward and backward loops)
    scores = _scores("ties", B, N, torch.float32)
    check_topk(backend, strided(B, N, C, dtype=torch.float32), scores, k, "score", "softmax", (1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_gate_over_many_selected(backend):
    # k > the softmax statistics block (1024): the online max/sum rescales across blocks.
    B, N, C, k = 1, 2100, 3, 1100
    check_topk(backend, strided(B, N, C, dtype=torch.float32), strided(B, N, dtype=torch.float32, scale=4.0),
               k, "score", "softmax")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dx_zero_off_selected_rows(backend):
    B, N, C, k = 2, 90, 8, 20
    x = strided(B, N, C, dtype=torch.float32).requires_grad_()
    scores = strided(B, N, dtype=torch.float32).requires_grad_()
    y, idx = stq.topk_tokens(x, scores, k, gate="sigmoid", backend=backend)
    dx, ds = torch.autograd.grad(y, (x, scores), torch.randn_like(y))
    off = torch.ones(B, N, dtype=torch.bool, device=DEVICE)
    off.scatter_(1, idx, False)
    assert (dx[off] == 0).all() and (ds[off] == 0).all()
    assert (dx[~off] != 0).any()


@pytest.mark.parametrize("scales", [None, (1, 4)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_gate_of_very_negative_scores_stays_finite(scales, backend):
    """exp(0 - m) overflows when every score is far below 0: padded and unselected rows must not
    turn that into 0 * inf = NaN (docs/ops.md §1: finite inputs never give NaN)."""
    scores = strided(1, 40, dtype=torch.float32) - 200
    check_topk(backend, strided(1, 40, 8, dtype=torch.float32), scores, 10, gate="softmax", scales=scales)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs CPU tensors")
def test_cpu_topk_does_not_depend_on_the_thread_count():
    x = strided(3, 300, 40, dtype=torch.float32)
    scores = _scores("ties", 3, 300, torch.float32)

    def run():
        xs, ss = x.detach().clone().requires_grad_(), scores.detach().clone().requires_grad_()
        y, idx = stq.topk_tokens(xs, ss, 70, order="score", gate="softmax", scales=(1, 2, 4), backend="cpu")
        return [y, idx, *torch.autograd.grad(y, (xs, ss), torch.ones_like(y))]

    assert_same_with_1_and_2_threads(run)
