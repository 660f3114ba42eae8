"""``stq.multiscale_pool`` and ``stq.st_pool`` on each kernel backend (``triton``, ``cpu``, ``cuda``)
against the torch reference (docs/ops.md §2.5), outputs NaN-poisoned; same error bound as
tests/kernels/test_topk.py."""
import pytest
import torch

import stquery as stq
from stquery.ops import reference as ref

from ..conftest import assert_same_with_1_and_2_threads
from .test_topk import BACKENDS, DEVICE, DTYPES, assert_bounded, skip_unsupported, strided


def check(fn, ref_fn, x, n_out):
    """Outputs and input gradient of ``fn`` (a kernel backend) vs ``ref_fn`` at x's dtype and in float64."""
    x = x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    got, same, exact = fn(x), ref_fn(x), ref_fn(x64)
    if n_out == 1:
        got, same, exact = (got,), (same,), (exact,)
    grads = [torch.randn_like(e).to(x.dtype) for e in exact]
    for i, (g, s, e) in enumerate(zip(got, same, exact)):
        assert g.shape == e.shape
        assert_bounded(g, s, e, 2, f"output {i}")
    dx = torch.autograd.grad(got, x, grads)[0]
    dx_same = torch.autograd.grad(same, x, grads)[0]
    dx_exact = torch.autograd.grad(exact, x64, [g.double() for g in grads])[0]
    assert_bounded(dx, dx_same, dx_exact, 3, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,scales", [
    (45, (1, 2, 4)),        # tree pooling, partial last windows
    (45, (4, 2, 1)),        # scale order is output order
    (300, (256, 64, 32)),   # largest tree tile (256 tokens), two tiles
    (45, (3, 5, 1)),        # non-power-of-two: one window-mean launch per scale
    (7, (300,)),            # scale > k: one partial window
    (1, (1, 2)),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_multiscale_pool(k, scales, dtype, backend):
    y = strided(2, k, 40, dtype=dtype)
    check(lambda t: stq.multiscale_pool(t, scales, backend=backend),
          lambda t: ref.multiscale_pool(t, scales), y, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + (torch.bfloat16,))
@pytest.mark.parametrize("shape", [
    (2, 3, 5, 40),      # one patch block: temporal means stored directly
    (1, 4, 70, 24),     # two patch blocks: fp32 partials + fixed-order reduction
    (2, 1, 1, 3),
    (1, 9, 129, 65),    # three patch blocks, C not a multiple of the C block
])
def test_st_pool(shape, dtype, backend):
    skip_unsupported(backend, dtype)
    x = strided(*shape, dtype=dtype)
    check(lambda t: stq.st_pool(t, backend=backend), ref.st_pool, x, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_st_pool_non_contiguous_frames(backend):
    # x[:, ::2] (every other frame) and a patch slice: only the last dim is contiguous.
    x = torch.randn(2, 6, 80, 24, device=DEVICE)[:, ::2, 5:75]
    check(lambda t: stq.st_pool(t, backend=backend), ref.st_pool, x, 2)


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs CPU tensors")
def test_cpu_pool_does_not_depend_on_the_thread_count():
    # one video: st_pool splits its channels by the thread count (widths 160 and 80, partial vectors)
    x = strided(1, 6, 40, 300, dtype=torch.float32)
    y = strided(2, 45, 40, dtype=torch.float32)

    def run():
        xs, ys = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
        temporal, spatial = stq.st_pool(xs, backend="cpu")
        pooled = stq.multiscale_pool(ys, (1, 2, 4), backend="cpu")
        grads = torch.autograd.grad((temporal, spatial, pooled), (xs, ys),
                                    (torch.ones_like(temporal), torch.ones_like(spatial), torch.ones_like(pooled)))
        return [temporal, spatial, pooled, *grads]

    assert_same_with_1_and_2_threads(run)
