"""No N x N tensor: the Triton attention op, forward and backward, never allocates a tensor with
``G * H * Nq * Nk`` elements (or bytes), in a case where that size dwarfs the inputs.

Every allocation, including those inside the custom ops, is read from ``torch.profiler``
(``profile_memory=True`` attributes each allocation to the op that made it). A positive control
runs the torch reference, which does materialise the scores, through the same instrument.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import stquery as stq
from stquery.ops import reference

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _largest_allocation(fn) -> int:
    """Bytes of the largest allocation while running ``fn`` (forward + backward): the largest
    memory an op allocates itself (``self_*_memory_usage``, not counting the ops it calls)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with np.errstate(all="ignore"), profile(activities=activities, profile_memory=True) as prof:
        fn()
    sizes = [0]
    for e in prof.events():
        sizes.append(e.self_cpu_memory_usage)
        sizes.append(getattr(e, "self_device_memory_usage", 0))
    return max(sizes)


def _spatial(op):
    G, N, H, d = 2, 256, 2, 16
    q, k, v = (torch.randn(G, N, H, d, device=DEVICE, requires_grad=True) for _ in range(3))
    alpha = torch.rand(G, H, 2, device=DEVICE, requires_grad=True)
    masks = stq.MaskSet([stq.masks.window(3), stq.masks.dense(torch.rand(N, N, device=DEVICE) > 0.5)])

    def run(mode):
        def step():
            out = op(q, k, v, masks=masks, alpha=alpha, mode=mode)
            torch.autograd.grad(out, (q, k, v, alpha), torch.randn_like(out))
        return step
    return run, G * H * N * N, q.numel()


def _temporal(op):
    B, T, L, H, d = 1, 256, 2, 1, 16
    q, k, v = (torch.randn(B * T, L, H, d, device=DEVICE, requires_grad=True) for _ in range(3))
    alpha = torch.rand(B, L, H, 2, device=DEVICE, requires_grad=True)
    masks = stq.MaskSet([stq.masks.window(2), stq.masks.causal(None)])

    def run(mode):
        def step():
            out = op(q, k, v, T, masks=masks, alpha=alpha, mode=mode, frame_lengths=torch.tensor([200], device=DEVICE))
            torch.autograd.grad(out, (q, k, v, alpha), torch.randn_like(out))
        return step
    return run, B * L * H * T * T, q.numel()


@pytest.mark.parametrize("mode", ["mix", "scale"])
@pytest.mark.parametrize("which", ["spatial", "temporal"])
def test_no_quadratic_allocation(which, mode):
    make = _spatial if which == "spatial" else _temporal
    public = stq.attention if which == "spatial" else stq.temporal_attention
    triton_op = lambda *a, **kw: public(*a, **kw, backend="triton")  # noqa: E731
    run, quadratic, n_input = make(triton_op)
    assert quadratic >= 16 * n_input  # the N x N size dwarfs the inputs
    largest = _largest_allocation(run(mode))
    assert 0 < largest < quadratic, f"largest allocation {largest} B >= G*H*Nq*Nk = {quadratic}"

    # positive control: the reference materialises the scores, and the instrument sees it
    ref_op = reference.attention if which == "spatial" else reference.temporal_attention
    run, quadratic, _ = make(ref_op)
    assert _largest_allocation(run(mode)) >= quadratic
