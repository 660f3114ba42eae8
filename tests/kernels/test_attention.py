"""The attention kernels (Triton ``kernels/attention``, C++ ``csrc/attention``) against the torch
reference.

Every case runs the public op (``stq.attention`` / ``stq.temporal_attention``) on each kernel
backend (``triton``, ``cpu``, ``cuda``: on CPU under the CUDA emulation) forward and backward (``torch.autograd.grad`` for q, k, v and alpha)
and compares with ``stquery.ops.reference`` in float64. The bound is flash-attention's: the kernel's
error against float64 must be at most 2x (3x for gradients) the error of the same reference run in
the input dtype, plus a tiny absolute eps. Outputs and gradients are NaN-poisoned before every
launch (``tests/conftest.py``), so an element a kernel forgets to write fails.

The cases combine the parameters pairwise rather than as a full product (the interpreter is
slow): both ops, modes none/mix/scale, p = 1..4 over window/causal/dense, global tokens,
key_padding, frame_lengths (including empty videos), T in {1, 3, 8, 17} (and > 64 for the looping
kernels), L in {1, 5}, d in {16, 40, 64}, Nq != Nk, inputs whose only contiguous dim is the last,
float32, float16 and bfloat16 (bfloat16 not under the Triton interpreter, whose bfloat16
arithmetic is wrong). The emulated CUDA backend runs its own smaller list (``CUDA_CASES``: every
emulated thread is an OS thread), which adds T = 64, d in {128, 200} and tile loops.
"""
from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import torch

import stquery as stq
from stquery.ops import reference

from ..conftest import DEVICE, TRITON, assert_same_with_1_and_2_threads
from ..conftest import KERNEL_BACKENDS as BACKENDS
# Absolute slack, relative to the largest reference value. The reference computes in float32 even
# for float16 inputs, so its "same dtype" error is only the final rounding (flash-attention's
# reference multiplies in float16); the kernels round P and dS to float16 for the tensor-core
# products, about one more float16 ulp of the result: eps = 1e-3 (~2 ulps), 8e-3 for bfloat16. In
# float32 the reference's error is ~1e-7 and the kernels' ~1e-6 (exp2/log2, reduction order):
# eps = 1e-5.
EPS = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_bounded(names, got, exact, same_dtype):
    """Flash-attention's bound, tensor by tensor (``out`` first, then gradients): the kernel's error
    against the float64 ``exact`` at most 2x (3x for a gradient) the same-dtype reference's, plus
    EPS relative to the largest exact value."""
    for name, g, e, r in zip(names, got, exact, same_dtype, strict=True):
        assert g.shape == e.shape and g.dtype == r.dtype, f"{name}: {g.dtype} {tuple(g.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err = (g.double() - e).abs().max().item()
        ref_err = (r.double() - e).abs().max().item()
        factor = 2 if name == "out" else 3
        bound = factor * ref_err + EPS[g.dtype] * max(1.0, e.abs().max().item())
        assert err <= bound, f"{name}: error {err:.3g} > {factor} x reference error {ref_err:.3g} + eps"


def _skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter's bfloat16 arithmetic is inexact")


@dataclass(frozen=True)
class Case:
    op: str  # "spatial" | "temporal"
    mode: str  # "none" | "mix" | "scale"
    kinds: tuple = ()  # mask kinds, "window" | "causal" | "dense"
    n: int = 8  # T (temporal) or Nq (spatial)
    nk: int = 0  # Nk (spatial; 0 = Nq)
    groups: int = 2  # B (temporal) or G (spatial)
    L: int = 1
    H: int = 2
    d: int = 16
    dtype: torch.dtype = torch.float32
    glob: bool = False  # global tokens (0, 2)
    pad: bool = False  # key_padding (spatial) / frame_lengths (temporal)
    alpha: str = "full"  # "p" | "group" | "full": the broadcast shape of the routing weights
    scale: float = 0.0  # softmax scale (0: the op's default 1/sqrt(d))

    def __str__(self):
        dt = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        size = f"T{self.n}L{self.L}" if self.op == "temporal" else f"N{self.n}x{self.nk or self.n}"
        masks = "+".join(self.kinds) or "nomask"
        extra = ("-glob" if self.glob else "") + ("-pad" if self.pad else "") + (f"-a{self.alpha}" if self.kinds else "")
        extra += f"-scale{self.scale:.3g}" if self.scale else ""
        return f"{self.op}-{self.mode}-{masks}-{size}-H{self.H}-d{self.d}-{dt}{extra}"


T, S = "temporal", "spatial"
BF16 = torch.bfloat16
TRITON_CASES = [
    # temporal, packed tiles (T <= 64)
    Case(T, "none", n=1, L=1, d=16),
    Case(T, "none", n=6, L=5, d=40, dtype=torch.float16, pad=True),  # few keys: cpu's transposed score tiles
    Case(T, "mix", ("window",), n=3, groups=3, L=5, d=40, dtype=torch.float16, pad=True, alpha="group"),
    Case(T, "mix", ("window", "causal", "dense", "window"), n=8, groups=3, L=5, d=64, glob=True, pad=True),
    Case(T, "scale", ("causal", "dense"), n=17, L=1, d=16, dtype=torch.float16),
    Case(T, "scale", ("window", "window", "causal"), n=8, L=1, d=40, glob=True, pad=True, alpha="p"),
    Case(T, "none", n=17, L=5, d=64, dtype=torch.float16, pad=True),
    Case(T, "none", n=40, groups=2, L=2, d=64, dtype=torch.float16, pad=True),  # plain bwd packs T <= 64
    Case(T, "mix", ("dense", "dense"), n=3, L=1, d=64, alpha="p"),
    Case(T, "mix", ("causal",), n=8, L=5, d=16, dtype=torch.float16, alpha="group"),
    Case(T, "scale", ("window",), n=1, L=5, d=16, dtype=torch.float16, pad=True),
    Case(T, "mix", ("causal", "window", "dense"), n=17, L=1, d=40, dtype=torch.float16, glob=True),
    Case(T, "mix", ("causal", "window"), n=8, L=1, d=100, dtype=torch.float16, pad=True),
    Case(T, "mix", ("window", "window", "window"), n=8, groups=3, L=5, d=64, dtype=torch.bfloat16, pad=True),
    Case(T, "none", n=17, L=5, d=40, dtype=torch.bfloat16),
    # temporal, looping kernels (T > 64)
    Case(T, "mix", ("window", "causal"), n=70, groups=1, L=1, H=1, d=16, pad=True),
    Case(T, "scale", ("window", "dense"), n=70, groups=2, L=1, H=2, d=16, dtype=torch.float16, glob=True,
         alpha="group"),  # cpu: two query blocks a sequence, the heads of a (b, l) sharing alpha
    Case(T, "none", n=66, groups=2, L=1, H=1, d=40, pad=True),
    # spatial / cross, packed
    Case(S, "none", n=9, groups=3, d=16, pad=True),
    Case(S, "none", n=70, nk=7, groups=2, H=1, d=64, pad=True),  # few keys, two blocks of cpu query rows
    Case(S, "mix", ("causal", "dense", "window"), n=70, nk=7, groups=2, H=1, d=64, pad=True, alpha="group"),
    Case(S, "mix", ("window", "dense"), n=7, nk=13, d=40, dtype=torch.float16, alpha="group"),
    Case(S, "scale", ("window", "causal", "dense"), n=12, d=64, glob=True, pad=True),
    Case(S, "scale", ("dense",), n=5, nk=11, d=16, dtype=torch.float16, alpha="p"),
    Case(S, "mix", ("window", "causal", "dense", "causal"), n=20, d=40, glob=True, pad=True),
    Case(S, "none", n=30, nk=60, d=64),
    Case(S, "scale", ("window", "dense"), n=40, d=128, dtype=torch.float16, glob=True),
    Case(S, "none", n=20, nk=24, H=1, d=200, dtype=torch.float16),
    # spatial / cross, looping kernels
    Case(S, "mix", ("window", "dense"), n=70, nk=90, groups=1, H=1, d=16, pad=True),
    Case(S, "scale", ("causal", "window", "dense", "window"), n=80, groups=1, H=1, d=16,
         dtype=torch.float16, glob=True, pad=True),
    Case(S, "none", n=67, nk=33, groups=2, H=1, d=16, dtype=torch.float16),
    Case(S, "scale", ("window", "dense"), n=9, nk=9, d=40, dtype=torch.bfloat16, glob=True, pad=True),
    Case(S, "none", n=5, nk=1030, groups=1, H=1, d=16, pad=True),  # cpu: query blocks under a vector, by rows
]
# The CUDA kernels hold whole sequences of up to 64 (d <= 64), 32 (d <= 128) or 16 rows per block
# and loop over tiles beyond; every emulated CUDA thread is an OS thread, so groups stay small.
CUDA_CASES = [
    Case(T, "none", n=1, L=1, d=16),
    Case(T, "mix", ("window", "causal", "dense", "window"), n=3, groups=3, L=2, d=40, dtype=torch.float16,
         glob=True, pad=True, alpha="group"),
    Case(T, "scale", ("causal", "dense"), n=17, L=1, d=64, dtype=BF16, pad=True),
    Case(T, "mix", ("causal", "window"), n=64, groups=1, L=1, d=16, pad=True),
    Case(T, "none", n=64, groups=1, L=1, H=1, d=128, dtype=BF16, pad=True),
    Case(T, "scale", ("window", "window", "causal"), n=8, L=1, d=40, glob=True, pad=True, alpha="p"),
    Case(T, "mix", ("dense", "dense"), n=3, L=1, d=64, dtype=BF16, alpha="p"),
    Case(T, "mix", ("window",), n=17, groups=1, L=1, d=128, dtype=torch.float16),
    Case(S, "none", n=9, nk=13, groups=3, d=16, dtype=torch.float16, pad=True),
    Case(S, "mix", ("window", "dense"), n=7, nk=13, d=40, dtype=BF16, alpha="group"),
    Case(S, "scale", ("window", "causal", "dense"), n=12, d=64, glob=True, pad=True),
    Case(S, "mix", ("window", "causal", "dense", "causal"), n=20, d=128, dtype=torch.float16, glob=True, pad=True),
    Case(S, "mix", ("window", "dense"), n=70, nk=90, groups=1, H=1, d=16, pad=True),
    Case(S, "scale", ("dense",), n=5, nk=11, d=200, alpha="p"),
]
# (backend, case) pairs: each backend of KERNEL_BACKENDS (with its skip marks) on its case list.
CASES = [pytest.param(b.values[0], c, marks=b.marks, id=f"{b.values[0]}-{c}")
         for b in BACKENDS for c in (CUDA_CASES if b.values[0] == "cuda" else TRITON_CASES)]


def _strided(shape, dtype, pad=3):
    """Random values whose only contiguous dim is the last (a slice of a wider buffer)."""
    *lead, d = shape
    return torch.randn(*lead, d + pad, device=DEVICE).to(dtype)[..., :d]


def _mask_set(case: Case, nq: int, nk: int) -> stq.MaskSet | None:
    if not case.kinds:
        return None
    masks = []
    for j, kind in enumerate(case.kinds):
        if kind == "window":
            masks.append(stq.masks.window((None, 1, 2)[j % 3]))
        elif kind == "causal":
            masks.append(stq.masks.causal((2, None)[j % 2]))
        else:
            masks.append(stq.masks.dense(torch.rand(nq, nk, device=DEVICE) > 0.6))
    return stq.MaskSet(masks, global_tokens=(0, 2) if case.glob else None)


def _inputs(case: Case):
    """(args, kwargs, differentiable tensors) for the op of ``case``."""
    p = len(case.kinds)
    if case.op == T:
        B, n = case.groups, case.n
        q, k, v = (_strided((B * n, case.L, case.H, case.d), case.dtype) for _ in range(3))
        groups = {"p": (p,), "group": (B, case.L, p), "full": (B, case.L, case.H, p)}[case.alpha]
        masks = _mask_set(case, n, n)
        kwargs = {}
        if case.pad:  # partial, empty and full videos
            lengths = [max(n - 1, 1), 0, n] * B if B > 1 else [max(n - 5, 1)]
            kwargs["frame_lengths"] = torch.tensor(lengths[:B], device=DEVICE)
        args = (q, k, v, n)
    else:
        G, nq, nk = case.groups, case.n, case.nk or case.n
        q = _strided((G, nq, case.H, case.d), case.dtype)
        k, v = (_strided((G, nk, case.H, case.d), case.dtype) for _ in range(2))
        groups = {"p": (p,), "group": (G, p), "full": (G, case.H, p)}[case.alpha]
        masks = _mask_set(case, nq, nk)
        kwargs = {}
        if case.pad:  # random padding, and group 0 with every key padded (rows with no visible key)
            kp = torch.rand(G, nk, device=DEVICE) > 0.7
            kp[0] = True if G > 1 else kp[0]
            kwargs["key_padding"] = kp
        args = (q, k, v)
    kwargs["masks"] = masks
    if case.scale:
        kwargs["scale"] = case.scale
    if masks is not None:
        kwargs["alpha"] = (torch.rand(*groups, device=DEVICE) + 0.1).to(case.dtype)
        kwargs["mode"] = case.mode
    diff = [q, k, v] + ([kwargs["alpha"]] if masks is not None else [])
    return args, kwargs, diff


def _run(case: Case, fn, args, kwargs, diff, dtype, grad_out, **extra):
    """Output and gradients of ``fn`` with every float input cast to ``dtype``."""
    cast = [t.detach().to(dtype).requires_grad_() for t in diff]
    it = iter(cast)
    args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = dict(kwargs)
    if "alpha" in kwargs:
        kwargs["alpha"] = cast[3]
    out = fn(*args, **kwargs, **extra)
    grads = torch.autograd.grad(out, cast, grad_out.to(dtype))
    return [out] + list(grads)


# Logits far from unit variance (issue 14): scale in {1/sqrt(d), 0.3, 1, 2} puts the standard
# deviation of s = scale * q.k up to 2 * sqrt(64) = 16 (spatial) and 2 * sqrt(40) ~ 12.6
# (temporal); float32, both ops, every mode, on every kernel backend (for Triton: the packed
# (temporal) and looping (spatial, N > 16) float32 kernels).
SCALE_CASES = [
    pytest.param(b.values[0], c, marks=b.marks, id=f"{b.values[0]}-{c}")
    for b in BACKENDS
    for c in (
        Case(op, mode, kinds, **shape, scale=scale)
        for op, shape in ((S, dict(n=20, nk=18, d=64, alpha="group")), (T, dict(n=5, L=3, d=40)))
        for mode, kinds in (("none", ()), ("mix", ("dense", "window")), ("scale", ("window", "causal")))
        for scale in (1 / math.sqrt(shape["d"]), 0.3, 1.0, 2.0)
    )
]


@pytest.mark.parametrize("backend, case", CASES + SCALE_CASES)
def test_matches_reference(backend: str, case: Case):
    _skip_unsupported(backend, case.dtype)
    args, kwargs, diff = _inputs(case)
    public = stq.temporal_attention if case.op == T else stq.attention
    naive = reference.temporal_attention if case.op == T else reference.attention
    grad_out = _strided(args[0].shape, case.dtype)

    got = _run(case, public, args, kwargs, diff, case.dtype, grad_out, backend=backend)
    exact = _run(case, naive, args, kwargs, diff, torch.float64, grad_out)
    same_dtype = _run(case, naive, args, kwargs, diff, case.dtype, grad_out)

    names = ["out", "dq", "dk", "dv", "dalpha"]
    assert_bounded(names[: len(got)], got, exact, same_dtype)

    if case.op == T and "frame_lengths" in kwargs:  # padded frames: output and gradients exactly 0
        B, n = case.groups, case.n
        padded = torch.arange(n, device=DEVICE)[None, :] >= kwargs["frame_lengths"][:, None]
        padded = padded.reshape(B * n)
        for name, t in zip(names, got[:4]):
            assert (t[padded] == 0).all(), f"{name}: padded frames not zero"


@pytest.mark.skipif(not TRITON, reason="needs triton with CUDA or TRITON_INTERPRET=1")
def test_supports_reasons():
    from stquery.ops.attention.problem import AttnProblem
    from stquery.kernels import attention as kernels

    q = torch.randn(2, 4, 1, 16)
    if os.environ.get("TRITON_INTERPRET") == "1":
        half = torch.randn(2, 4, 1, 16, dtype=torch.bfloat16)
        reasons = kernels.supports("attention", half, half, half, None, None, None, None, AttnProblem(0, (), (), 0, 0, 0, 0.1))
        assert any("bfloat16" in r for r in reasons)
    wide = torch.randn(1, 4, 1, 128)
    reasons = kernels.supports("attention", wide, wide, wide, None, None, None, None, AttnProblem(0, (), (), 0, 0, 0, 0.1))
    assert any("float32" in r and "d=128" in r for r in reasons)
    assert kernels.supports("attention", q, q, q, None, None, None, None, AttnProblem(0, (), (), 0, 0, 0, 0.25)) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N, nats", [(16, 124.5 * math.log(2)), (6, 124.5 * math.log(2)), (6, 100.0)])
def test_mix_with_a_mask_far_below_the_others_stays_finite(backend, N, nats):
    """The diagonal mask's only score sits `nats` below the global mask's: the backward must not
    overflow its normaliser into inf · 0 = NaN (docs/ops.md §1), and its share of the output and of
    dv stays right. With 6 keys the cpu forward normalises transposed tiles against the union's max,
    where 100 nats underflow the diagonal mask's sum: those rows must go to the per-row path."""
    d = 32
    gap = math.sqrt(nats)
    q = torch.zeros(1, N, 1, d, device=DEVICE)
    k = torch.zeros(1, N, 1, d, device=DEVICE)
    idx = torch.arange(N, device=DEVICE)
    q[0, idx, 0, idx + 1] = -gap
    k[0, idx, 0, idx + 1] = gap
    v = torch.randn(1, N, 1, d, device=DEVICE)
    masks = stq.MaskSet([stq.masks.window(0), stq.masks.window(None)])
    alpha = torch.tensor([0.5, 0.5], device=DEVICE)

    def run(fn, dtype, **kw):
        xs = [t.to(dtype).requires_grad_() for t in (q, k, v, alpha)]
        out = fn(*xs[:3], masks=masks, alpha=xs[3], mode="mix", scale=1.0, **kw)
        return [out, *torch.autograd.grad(out, xs, torch.ones_like(out))]

    got = run(stq.attention, torch.float32, backend=backend)
    assert_bounded(["out", "dq", "dk", "dv", "dalpha"], got, run(reference.attention, torch.float64),
                   run(reference.attention, torch.float32))


# N = 12 is held whole by every backend's forward and backward tile; N = 90 loops over key tiles
# (Triton float32: tiles of 16 to 32 keys; CUDA d <= 64: 32 keys, 64 query rows per block).
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N", [12, 90])
def test_mix_with_a_mask_spread_far_below_the_others(backend, N):
    """The first mask sees only "low" keys (every other key, a different subset per row), whose
    scores sit ~100 nats below the "high" keys the second mask also sees: every row's first-mask
    softmax lies entirely outside the float32 exponent range of the union's maximum. Output and
    gradients must keep its share (the forward normalises it against its own maximum)."""
    d, gap = 32, 10.0
    gen = torch.Generator().manual_seed(0)
    low = torch.arange(N) % 2 == 0
    # [N, d]: column 0 carries the gap (s = -100 on low keys), the rest small O(1) logits
    q = torch.randn(N, d, generator=gen) * 0.3
    k = torch.randn(N, d, generator=gen) * 0.3
    q[:, 0] = -gap
    k[:, 0] = torch.where(low, gap, 0.0)
    v = torch.randn(N, d, generator=gen)
    far = low[None, :] & (torch.rand(N, N, generator=gen) < 0.6)
    far[:, 0] = True  # every row sees at least one low key
    masks = stq.MaskSet([stq.masks.dense(far.to(DEVICE)), stq.masks.window(None)])
    alpha = torch.tensor([0.7, 0.3])

    def run(fn, dtype, **kw):
        xs = [t.to(DEVICE, dtype)[None, :, None].requires_grad_() for t in (q, k, v)]
        xs.append(alpha.to(DEVICE, dtype).requires_grad_())
        out = fn(*xs[:3], masks=masks, alpha=xs[3], mode="mix", scale=1.0, **kw)
        return [out, *torch.autograd.grad(out, xs, torch.ones_like(out))]

    got = run(stq.attention, torch.float32, backend=backend)
    assert_bounded(["out", "dq", "dk", "dv", "dalpha"], got, run(reference.attention, torch.float64),
                   run(reference.attention, torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_width_one_takes_the_gradient_of_a_sum(backend):
    """d = 1: ``out.sum()`` hands back an expanded scalar whose last stride is 0, legal for a dim of
    size 1 (stquery.ops.common.rows_readable keeps it): every kernel must read it as rows."""
    x = [torch.randn(2 * 3, 2, 2, 1, device=DEVICE) for _ in range(3)]

    def grads(fn, dtype, **kw):
        xs = [t.to(dtype).requires_grad_() for t in x]
        return torch.autograd.grad(fn(*xs, 3, **kw).sum(), xs)

    got = grads(stq.temporal_attention, torch.float32, backend=backend)
    assert_bounded(["dq", "dk", "dv"], got, grads(reference.temporal_attention, torch.float64),
                   grads(reference.temporal_attention, torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_beyond_the_sequence_is_unbounded(backend):
    """A huge radius must neither overflow the int32 mask descriptor nor change the result."""
    q, k, v = (torch.randn(2 * 5, 3, 2, 16, device=DEVICE) for _ in range(3))
    for huge in (2 ** 29, 2 ** 40):
        masks = stq.MaskSet([stq.masks.window(huge), stq.masks.causal(huge)])
        got = stq.temporal_attention(q, k, v, 5, masks=masks, backend=backend)
        exact = reference.temporal_attention(q.double(), k.double(), v.double(), 5, masks=masks)
        assert_bounded(["out"], [got], [exact], [reference.temporal_attention(q, k, v, 5, masks=masks)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["none", "mix", "scale"])
def test_a_nan_query_poisons_its_row_and_stays_in_its_sequence(backend, mode):
    """NaN in, NaN out (docs/ops.md §1): a NaN in one query makes that query's output and dq rows NaN,
    not a silent 0, and its sequence's dk and dv; every other sequence's output, dq and dv are
    bitwise those of the clean input. dk too on the cpu backend (one sequence at a time); the GPU
    kernels pack short sequences block-diagonally into one tile, where dk = dS^T Q multiplies the
    NaN query by its dS row's zeros at the neighbours' keys."""
    B, T, L, H, d = 2, 5, 3, 2, 16
    masks = stq.MaskSet([stq.masks.window(1), stq.masks.causal(None)]) if mode != "none" else None
    kw = dict(masks=masks, alpha=torch.rand(B, L, 2, device=DEVICE) + 0.1, mode=mode) if masks else {}
    x = [torch.randn(B * T, L, H, d, device=DEVICE) for _ in range(3)]
    grad = torch.randn(B * T, L, H, d, device=DEVICE)
    row = (1 * T + 2, 1, 0)  # query t = 2 of video b = 1, token l = 1, head 0: sequence (1, 1, 0)

    def run(poison):
        xs = [t.clone() for t in x]
        if poison:
            xs[0][row + (3,)] = float("nan")
        xs = [t.requires_grad_() for t in xs]
        out = stq.temporal_attention(*xs, T, backend=backend, **kw)
        return dict(zip(["out", "dq", "dk", "dv"], [out, *torch.autograd.grad(out, xs, grad)]))

    clean, poisoned = run(False), run(True)
    assert torch.isnan(poisoned["out"][row]).all() and torch.isnan(poisoned["dq"][row]).all()
    for name in ("dk", "dv"):
        assert torch.isnan(poisoned[name][T:2 * T, 1, 0]).any(), name
    others = torch.ones(B * T, L, H, dtype=torch.bool, device=DEVICE)
    others[T:2 * T, 1, 0] = False  # every sequence but the poisoned one
    for name in ["out", "dq", "dv"] + (["dk"] if backend == "cpu" else []):
        assert torch.equal(clean[name][others], poisoned[name][others]), f"{name}: the NaN reached another sequence"


@pytest.mark.skipif(DEVICE != "cpu", reason="the cpu backend runs CPU tensors")
@pytest.mark.parametrize("mode", ["none", "mix", "scale"])
def test_cpu_results_do_not_depend_on_the_thread_count(mode):
    """Forward, dq/dk/dv and dalpha are bitwise the same with 1 and 2 threads (one task per sequence,
    dalpha summed per sequence in row order)."""
    B, T, L, H, d = 3, 6, 5, 2, 24
    q, k, v = (_strided((B * T, L, H, d), torch.float32) for _ in range(3))
    masks = alpha = None
    if mode != "none":
        masks = stq.MaskSet([stq.masks.window(1), stq.masks.causal(None), stq.masks.dense(torch.rand(T, T) > 0.5)])
        alpha = torch.rand(B, L, 3) + 0.1
    grad = torch.randn(B * T, L, H, d)

    def run():
        xs = [t.detach().clone().requires_grad_() for t in (q, k, v)] + ([alpha.clone().requires_grad_()] if masks else [])
        kw = dict(masks=masks, alpha=xs[3], mode=mode) if masks else {}
        out = stq.temporal_attention(*xs[:3], T, frame_lengths=torch.tensor([6, 4, 0]), backend="cpu", **kw)
        return [out, *torch.autograd.grad(out, xs, grad)]

    assert_same_with_1_and_2_threads(run)


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None,
                    reason="reads the cpu extension's x86-64 code with objdump")
def test_cpu_attention_kernels_keep_their_prefetches():
    """GCC judges a function whose only effect is prefetching to be const and deletes the calls to it,
    so the prefetches must be inlined into the kernels (csrc/common/cpu_math.h ``prefetch_rows``).
    Before they were, none reached the binary and the forward at issue 13's headline shape took 1.7x
    as long at T = 16."""
    from stquery.backends import cpu_backend

    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", cpu_backend.module().__file__],
                         capture_output=True, text=True, check=True).stdout
    with_prefetch, function = set(), None
    for line in asm.splitlines():
        header = re.match(r"[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif function and "prefetch" in line:
            with_prefetch.add(function)
    for kernel in ("fwd_impl<float>", "bwd_impl<float>"):
        assert any(kernel in f for f in with_prefetch), f"no prefetch instruction in {kernel}"
