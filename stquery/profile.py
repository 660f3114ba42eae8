"""``stquery profile``: frame-count scaling of stquery's backends against the peers, in one run.

For each case (temporal attention plain / DAR mix p=3 / DAR scale p=3, top-k selection, st_pool),
each sweep (T = 4 … 1024 at fixed B, and at fixed B·T), each pass (forward, forward+backward) and
each implementation, it reports ms (median, p20, p80), GB/s and % of the device's measured copy
bandwidth, TFLOP/s, % of the roofline bound, peak memory and the speedup over the best peer.
Byte and FLOP counts are :mod:`stquery.roofline`'s (SPEC §6). Every implementation gets a row:
one that can't run says why (no silent omission); every forward output is checked against
``stquery.ops.reference`` and a mismatch is flagged in the row.

Peers (what people write today):
- eager permute + SDPA: TimeSformer-style, permute ``[B*T, L, H, d]`` to a contiguous
  ``[B*L, T, H, d]``, SDPA, permute back (two copies in, one out);
- head-fold SDPA: view ``[B*T, L, H, d]`` as ``[B, T, L*H, d]`` (L·H "heads"), no copy;
- FlexAttention (compiled): ``mask_mod`` block masks for the windows (mix), a ``score_mod``
  carrying alpha for DAR scale mode;
- xformers and flash-attn on the head-fold view, when importable (windows through their local
  attention; neither can scale logits, so no scale mode);
- ``torch.topk`` + sort + gather for selection, two ``mean`` calls for st_pool.
DAR mix with SDPA-style peers is p calls (one per mask) summed with alpha; scale mode, which SDPA
cannot express, is written as matmul + masked softmax + matmul on the same layouts.

The module also holds the case definitions the pytest-benchmark files of ``bench/`` parametrize over.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import roofline
from .roofline import Cost

SPEC_BACKENDS = ("torch", "triton", "cuda")
RADII = (1, 2, None)  # DAR mask set: window(1), window(2), global (VideoQFormer's temporal default)
PASSES = ("fwd", "fwd+bwd")
SWEEPS = ("fixed-B", "fixed-BT")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class Unavailable(Exception):
    """An implementation can't run this problem; the message is the reason shown in the table."""


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Shape:
    """One problem size. Attention: q/k/v ``[B*T, L, H, d]``; selection: x ``[B, T*P, C]``, k = T·P // topk_div;
    st_pool: x ``[B, T, P, C]``."""

    B: int
    T: int
    L: int
    H: int
    d: int
    P: int
    C: int
    topk_div: int = 4

    @property
    def k(self) -> int:
        return max(1, self.T * self.P // self.topk_div)


@dataclass
class Config:
    dtype: str = "bf16"
    L: int = 32
    H: int = 12
    d: int = 64
    P: int = 64
    C: int = 1024
    topk_div: int = 4
    frames_total: int = 2048  # B·T of the fixed-B·T sweep (2048 frames: 100 MB per bf16 q/k/v)
    batch: int = 2  # B of the fixed-B sweep (meets the other sweep at the largest T)
    T: tuple = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    cases: tuple = ("temporal", "temporal-mix", "temporal-scale", "topk", "st_pool")
    passes: tuple = PASSES
    sweeps: tuple = SWEEPS
    budget_ms: float = 100.0  # timing budget per measurement
    min_reps: int = 5
    max_reps: int = 200
    flex_dynamic: bool = True
    quick: bool = False
    cpu_threads: int = 0  # 0: torch's default

    def shapes(self, sweep: str):
        for T in self.T:
            B = self.batch if sweep == "fixed-B" else max(1, self.frames_total // T)
            yield Shape(B, T, self.L, self.H, self.d, self.P, self.C, self.topk_div)


FULL = Config()
QUICK = Config(dtype="fp32", L=4, H=2, d=16, P=8, C=32, frames_total=32, batch=2, T=(4, 16),
               budget_ms=12.0, min_reps=3, max_reps=20, quick=True,
               cpu_threads=1)
# The default on a machine without a GPU: the same sweeps at shapes a CPU finishes in minutes.
CPU = Config(dtype="fp32", L=8, H=4, d=32, P=32, C=128, frames_total=256, batch=2,
             T=(4, 8, 16, 32, 64, 128, 256), budget_ms=30.0, min_reps=3, max_reps=50)


# ---------------------------------------------------------------------------------------------
# Cases and implementations


@dataclass
class Built:
    fn: Callable[[], Any]
    note: str = ""


@dataclass
class Impl:
    name: str
    kind: str  # "stquery" or "peer"
    build: Callable[[dict, Shape], Built]  # may raise Unavailable


@dataclass
class Case:
    name: str
    title: str
    make_inputs: Callable[[Shape, torch.device, torch.dtype], dict]
    grad_inputs: tuple  # names of the inputs that receive gradients in fwd+bwd
    cost: Callable[[Shape, int, str], Cost]
    reference: Callable[[dict, Shape], Any]
    impls: list = field(default_factory=list)


def _first_line(e: BaseException, limit: int = 2000) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Inductor's C++ errors put the useful line after a header; keep up to two lines.
    msg = " | ".join(lines[:2]) if lines else ""
    return f"{type(e).__name__}: {msg}"[:limit]


def _stquery_backend(name: str, call: Callable[[dict, Shape, str], Any]) -> Impl:
    def build(inp: dict, s: Shape) -> Built:
        try:
            import stquery.backends as sb
        except Exception as e:  # pragma: no cover - the package itself is broken
            raise Unavailable(f"stquery.backends not importable: {_first_line(e)}")
        registered = list(sb.names())
        if name not in registered:
            raise Unavailable(f"backend {name!r} is not registered (stquery.backends.names() = {registered})")
        device = next(t.device for t in inp.values() if isinstance(t, torch.Tensor))
        if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            raise Unavailable("TRITON_INTERPRET=1: on CPU Triton only runs in its interpreter, a correctness tool, not a speed")
        if name == "cuda" and device.type == "cpu":
            raise Unavailable("on CPU the cuda backend runs only under its emulation, a correctness tool, not a speed")
        return Built(lambda: call(inp, s, name))

    return Impl(f"stquery-{name}", "stquery", build)


def stquery_impls(call: Callable[[dict, Shape, str], Any]) -> list[Impl]:
    """One row per backend: the registered ones in auto's order, then SPEC's backends not registered."""
    try:
        import stquery.backends as sb

        order = list(sb.names())
    except Exception:
        order = []
    order += [n for n in SPEC_BACKENDS if n not in order]
    return [_stquery_backend(n, call) for n in order]


# --- attention helpers -----------------------------------------------------------------------


def _head_fold(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``[B*T, L, H, d]`` -> ``[B, L*H, T, d]``: a view (SDPA/flex layout), no copy."""
    _, L, H, d = x.shape
    return x.view(B, T, L * H, d).transpose(1, 2)


def _head_unfold(o: torch.Tensor, B: int, T: int, L: int, H: int) -> torch.Tensor:
    """``[B, L*H, T, d]`` -> ``[B*T, L, H, d]`` (free when o is laid out ``[B, T, L*H, d]``, else a copy)."""
    return o.transpose(1, 2).reshape(B * T, L, H, o.shape[-1])


def _permute_in(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """TimeSformer-style: ``[B*T, L, H, d]`` -> contiguous ``[B*L, T, H, d]`` (a copy), seen as ``[B*L, H, T, d]``."""
    _, L, H, d = x.shape
    return x.view(B, T, L, H, d).permute(0, 2, 1, 3, 4).contiguous().view(B * L, T, H, d).transpose(1, 2)


def _permute_out(o: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``[B*L, H, T, d]`` -> ``[B*T, L, H, d]`` (the copy back)."""
    BL, H, _, d = o.shape
    L = BL // B
    return o.transpose(1, 2).reshape(B, L, T, H, d).permute(0, 2, 1, 3, 4).reshape(B * T, L, H, d)


def _window_masks(T: int, device) -> list:
    """bool ``[T, T]`` per DAR mask (True = visible), None for the global one."""
    i = torch.arange(T, device=device)
    dist = (i[:, None] - i[None, :]).abs()
    return [None if r is None else dist <= r for r in RADII]


def _mask_stack(T: int, device) -> torch.Tensor:
    """float ``[p, T, T]``: the DAR masks as 0/1."""
    return torch.stack([torch.ones(T, T, device=device, dtype=torch.bool) if m is None else m
                        for m in _window_masks(T, device)]).float()


@functools.lru_cache(maxsize=None)
def _stq_maskset():
    """Built once: peers get their masks prepared outside the timed call, and so does stquery."""
    import stquery as stq

    return stq.MaskSet([stq.masks.window(r) for r in RADII])


def _scale_mode_math(q, k, v, w):
    """``softmax_{w>0}(s · w) v`` with ``s = q kᵀ / sqrt(d)``; q/k/v ``[..., T, d]``, w broadcastable to the scores."""
    s = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    logits = torch.where(w > 0, s * w, float("-inf"))
    return torch.matmul(logits.softmax(-1).to(v.dtype), v)


# --- FlexAttention ---------------------------------------------------------------------------

_flex_fns: dict = {}


def _flex(dynamic: bool):
    key = bool(dynamic)
    if key not in _flex_fns:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_fns[key] = torch.compile(flex_attention, dynamic=dynamic)
    return _flex_fns[key]


@contextlib.contextmanager
def dynamo_limits():
    """Room for one compiled graph per shape and variant, and an error (shown in the row) instead of
    dynamo's silent fall back to eager when the recompile limit is hit anyway. Restored on exit."""
    cfg = torch._dynamo.config
    saved = {}
    for attr in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, attr):
            saved[attr] = getattr(cfg, attr)
            setattr(cfg, attr, max(saved[attr], 1024))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        saved["fail_on_recompile_limit_hit"] = cfg.fail_on_recompile_limit_hit
        cfg.fail_on_recompile_limit_hit = True
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(cfg, attr, value)


def _flex_built(make_fn: Callable[[Callable], Callable[[], Any]], dynamic: bool) -> Built:
    """Compile (first call) with dynamic shapes when asked; if that compile fails, compile for static
    shapes and say so in the row's note."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as e:
        raise Unavailable(f"FlexAttention not importable: {_first_line(e)}")
    t0 = time.perf_counter()
    if dynamic:
        fn = make_fn(_flex(True))
        try:
            with torch.no_grad():
                fn()
            return Built(fn, f"dynamic shapes; first call {time.perf_counter() - t0:.1f} s")
        except Exception as e:
            first = _first_line(e, 160)
    fn = make_fn(_flex(False))
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    return Built(fn, f"static shapes; first call {time.perf_counter() - t0:.1f} s"
                 + (f" (dynamic compile failed: {first})" if dynamic else ""))


# --- the temporal attention family -----------------------------------------------------------


def _temporal_inputs(mode):
    def make(s: Shape, device, dtype) -> dict:
        shape = (s.B * s.T, s.L, s.H, s.d)
        inp = {n: torch.randn(shape, device=device, dtype=dtype) for n in "qkv"}
        if mode:
            inp["alpha"] = torch.randn(s.B, s.L, len(RADII), device=device).softmax(-1)  # [B, L, p], float32
        return inp

    return make


def _temporal_case(name: str, title: str, mode: str | None, flex_dynamic: bool = True) -> Case:
    p = len(RADII) if mode else 0

    def cost(s: Shape, itemsize: int, passes: str) -> Cost:
        return roofline.temporal_attention_cost(
            s.B, s.T, s.L, s.H, s.d, itemsize=itemsize, mode=mode or "none", p=p,
            alpha_numel=s.B * s.L * p, alpha_itemsize=4, passes=passes)

    def reference(inp, s):
        from stquery.ops import reference as ref

        f = {n: inp[n].detach().float() for n in "qkv"}
        kw = dict(masks=_stq_maskset(), alpha=inp["alpha"].detach(), mode=mode) if mode else {}
        return ref.temporal_attention(f["q"], f["k"], f["v"], s.T, **kw)

    def stq_call(inp, s, backend):
        import stquery as stq

        kw = dict(masks=_stq_maskset(), alpha=inp["alpha"], mode=mode) if mode else {}
        return stq.temporal_attention(inp["q"], inp["k"], inp["v"], s.T, backend=backend, **kw)

    def alpha_headfold(alpha, j, B, L, H, dtype):  # [B, L, p] -> [B, L*H, 1, 1]
        return alpha[..., j][:, :, None].expand(B, L, H).reshape(B, L * H, 1, 1).to(dtype)

    def eager(inp, s):
        B, T = s.B, s.T
        q, k, v = (inp[n] for n in "qkv")
        if not mode:
            return Built(lambda: _permute_out(F.scaled_dot_product_attention(
                _permute_in(q, B, T), _permute_in(k, B, T), _permute_in(v, B, T)), B, T), "SDPA")
        masks = _window_masks(T, q.device)
        alpha = inp["alpha"]
        if mode == "mix":
            def fn():
                qe, ke, ve = _permute_in(q, B, T), _permute_in(k, B, T), _permute_in(v, B, T)
                a = alpha.reshape(B * s.L, p, 1, 1, 1).to(q.dtype)
                o = sum(a[:, j] * F.scaled_dot_product_attention(qe, ke, ve, attn_mask=m) for j, m in enumerate(masks))
                return _permute_out(o, B, T)
            return Built(fn, f"{p} SDPA calls")
        stack = _mask_stack(T, q.device)

        def fn():
            w = torch.einsum("np,pqk->nqk", alpha.reshape(B * s.L, p), stack)[:, None]  # [B*L, 1, T, T]
            return _permute_out(_scale_mode_math(_permute_in(q, B, T), _permute_in(k, B, T), _permute_in(v, B, T), w), B, T)
        return Built(fn, "matmul+softmax (SDPA can't scale logits)")

    def head_fold(inp, s):
        B, T, L, H = s.B, s.T, s.L, s.H
        q, k, v = (inp[n] for n in "qkv")
        if not mode:
            return Built(lambda: _head_unfold(F.scaled_dot_product_attention(
                _head_fold(q, B, T), _head_fold(k, B, T), _head_fold(v, B, T)), B, T, L, H), "SDPA")
        masks = _window_masks(T, q.device)
        alpha = inp["alpha"]
        if mode == "mix":
            def fn():
                qf, kf, vf = _head_fold(q, B, T), _head_fold(k, B, T), _head_fold(v, B, T)
                o = sum(alpha_headfold(alpha, j, B, L, H, q.dtype) * F.scaled_dot_product_attention(qf, kf, vf, attn_mask=m)
                        for j, m in enumerate(masks))
                return _head_unfold(o, B, T, L, H)
            return Built(fn, f"{p} SDPA calls")
        stack = _mask_stack(T, q.device)

        def fn():
            w = torch.einsum("blp,pqk->blqk", alpha, stack)[:, :, None]  # [B, L, 1, T, T]
            qf, kf, vf = (_head_fold(x, B, T).unflatten(1, (L, H)) for x in (q, k, v))  # [B, L, H, T, d]
            return _head_unfold(_scale_mode_math(qf, kf, vf, w).flatten(1, 2), B, T, L, H)
        return Built(fn, "matmul+softmax (SDPA can't scale logits)")

    def flex(inp, s):
        B, T, L, H = s.B, s.T, s.L, s.H
        q, k, v = (inp[n] for n in "qkv")
        if q.device.type == "cpu" and q.requires_grad:
            raise Unavailable("FlexAttention has no backward on CPU (torch raises NotImplementedError)")
        qf, kf, vf = _head_fold(q, B, T), _head_fold(k, B, T), _head_fold(v, B, T)
        if not mode:
            return _flex_built(lambda flex_fn: lambda: _head_unfold(flex_fn(qf, kf, vf), B, T, L, H), flex_dynamic)
        alpha = inp["alpha"]
        if mode == "mix":
            from torch.nn.attention.flex_attention import create_block_mask

            def window(r):
                def mask_mod(b, h, qi, ki):
                    return (qi - ki).abs() <= r
                return mask_mod

            blocks = [None if r is None else create_block_mask(window(r), None, None, T, T, device=q.device) for r in RADII]

            def make(flex_fn):
                def fn():
                    o = sum(alpha_headfold(alpha, j, B, L, H, q.dtype) * flex_fn(qf, kf, vf, block_mask=bm)
                            for j, bm in enumerate(blocks))
                    return _head_unfold(o, B, T, L, H)
                return fn
            return _flex_built(make, flex_dynamic)
        r0, r1 = RADII[0], RADII[1]

        def score_mod(score, b, h, qi, ki):  # w = sum_j alpha_j M_j; logits * w where w > 0
            l = h // H
            dist = (qi - ki).abs()
            w = alpha[b, l, 0] * (dist <= r0) + alpha[b, l, 1] * (dist <= r1) + alpha[b, l, 2]
            return torch.where(w > 0, score * w, -float("inf"))

        # Inductor's CPU flex template (torch 2.13) emits C++ that does not compile for a score_mod
        # reading a captured tensor under dynamic shapes; compile per shape there instead of failing.
        cpu_static = q.device.type == "cpu" and flex_dynamic
        built = _flex_built(lambda flex_fn: lambda: _head_unfold(flex_fn(qf, kf, vf, score_mod=score_mod), B, T, L, H),
                            flex_dynamic and not cpu_static)
        if cpu_static:
            built.note += " (CPU: the dynamic-shape score_mod template fails to compile)"
        return built

    def xformers(inp, s):
        try:
            import xformers.ops as xops
        except Exception as e:
            raise Unavailable(f"xformers not importable: {_first_line(e)}")
        if mode == "scale":
            raise Unavailable("xformers has no logit-scaling score modifier (DAR scale mode)")
        B, T, L, H, d = s.B, s.T, s.L, s.H, s.d
        q, k, v = (x.view(B, T, L * H, d) for x in (inp[n] for n in "qkv"))  # [B, T, L*H, d]: its layout
        if not mode:
            return Built(lambda: xops.memory_efficient_attention(q, k, v).view(B * T, L, H, d))
        try:
            from xformers.ops.fmha.attn_bias import LocalAttentionFromBottomRightMask as Local
        except Exception as e:
            raise Unavailable(f"xformers has no LocalAttentionFromBottomRightMask: {_first_line(e)}")
        biases = [None if r is None else Local(window_left=r, window_right=r) for r in RADII]
        alpha = inp["alpha"]

        def fn():
            o = sum(alpha[:, None, :, None, j, None].to(q.dtype)
                    * xops.memory_efficient_attention(q, k, v, attn_bias=bias).view(B, T, L, H, d)
                    for j, bias in enumerate(biases))
            return o.view(B * T, L, H, d)
        return Built(fn, f"{p} calls, local attention bias")

    def flash(inp, s):
        try:
            from flash_attn import flash_attn_func
        except Exception as e:
            raise Unavailable(f"flash-attn not importable: {_first_line(e)}")
        if mode == "scale":
            raise Unavailable("flash-attn has no logit-scaling score modifier (DAR scale mode)")
        B, T, L, H, d = s.B, s.T, s.L, s.H, s.d
        q, k, v = (x.view(B, T, L * H, d) for x in (inp[n] for n in "qkv"))
        if not mode:
            return Built(lambda: flash_attn_func(q, k, v).view(B * T, L, H, d))
        alpha = inp["alpha"]
        windows = [(-1, -1) if r is None else (r, r) for r in RADII]

        def fn():
            o = sum(alpha[:, None, :, None, j, None].to(q.dtype)
                    * flash_attn_func(q, k, v, window_size=w).view(B, T, L, H, d) for j, w in enumerate(windows))
            return o.view(B * T, L, H, d)
        return Built(fn, f"{p} calls, window_size")

    case = Case(name, title, _temporal_inputs(mode), ("q", "k", "v", "alpha") if mode else ("q", "k", "v"), cost, reference)
    case.impls = stquery_impls(stq_call) + [
        Impl("eager-permute", "peer", eager),
        Impl("head-fold", "peer", head_fold),
        Impl("flex", "peer", flex),
        Impl("xformers", "peer", xformers),
        Impl("flash-attn", "peer", flash),
    ]
    return case


# --- spatial attention (bench only: it does not scale with T) ---------------------------------


def _spatial_case(flex_dynamic: bool = True) -> Case:
    def make(s: Shape, device, dtype):
        return {n: torch.randn(s.B * s.T, s.L, s.H, s.d, device=device, dtype=dtype) for n in "qkv"}

    def cost(s, itemsize, passes):
        return roofline.attention_cost(s.B * s.T, s.L, s.L, s.H, s.d, itemsize=itemsize, passes=passes)

    def reference(inp, s):
        from stquery.ops import reference as ref

        return ref.attention(*(inp[n].detach().float() for n in "qkv"))

    def stq_call(inp, s, backend):
        import stquery as stq

        return stq.attention(inp["q"], inp["k"], inp["v"], backend=backend)

    def sdpa(inp, s):
        q, k, v = (inp[n].transpose(1, 2) for n in "qkv")  # [G, H, L, d] views
        return Built(lambda: F.scaled_dot_product_attention(q, k, v).transpose(1, 2), "SDPA on transposed views")

    def flex(inp, s):
        q, k, v = (inp[n].transpose(1, 2) for n in "qkv")
        if q.device.type == "cpu" and q.requires_grad:
            raise Unavailable("FlexAttention has no backward on CPU (torch raises NotImplementedError)")
        return _flex_built(lambda flex_fn: lambda: flex_fn(q, k, v).transpose(1, 2), flex_dynamic)

    def xformers(inp, s):
        try:
            import xformers.ops as xops
        except Exception as e:
            raise Unavailable(f"xformers not importable: {_first_line(e)}")
        return Built(lambda: xops.memory_efficient_attention(inp["q"], inp["k"], inp["v"]))

    def flash(inp, s):
        try:
            from flash_attn import flash_attn_func
        except Exception as e:
            raise Unavailable(f"flash-attn not importable: {_first_line(e)}")
        return Built(lambda: flash_attn_func(inp["q"], inp["k"], inp["v"]))

    case = Case("spatial", "Spatial self-attention over the L tokens of each frame, G = B·T", make, ("q", "k", "v"),
                cost, reference)
    case.impls = stquery_impls(stq_call) + [Impl("sdpa", "peer", sdpa), Impl("flex", "peer", flex),
                                            Impl("xformers", "peer", xformers), Impl("flash-attn", "peer", flash)]
    return case


# --- selection and pooling -------------------------------------------------------------------


def _topk_case() -> Case:
    def make(s: Shape, device, dtype):
        return {"x": torch.randn(s.B, s.T * s.P, s.C, device=device, dtype=dtype),
                "scores": torch.randn(s.B, s.T * s.P, device=device)}

    def cost(s, itemsize, passes):
        return roofline.topk_cost(s.B, s.T * s.P, s.C, s.k, itemsize=itemsize, gate=True, passes=passes)

    def reference(inp, s):
        from stquery.ops import reference as ref

        return ref.topk_tokens(inp["x"].detach().float(), inp["scores"].detach(), s.k, order="time", gate="sigmoid")[0]

    def stq_call(inp, s, backend):
        import stquery as stq

        return stq.topk_tokens(inp["x"], inp["scores"], s.k, order="time", gate="sigmoid", backend=backend)[0]

    def torch_topk(inp, s):
        x, scores, k = inp["x"], inp["scores"], s.k

        def fn():
            idx = scores.topk(k, dim=1).indices.sort(dim=1).values  # [B, k], time order
            gate = torch.sigmoid(scores.gather(1, idx))  # [B, k]
            return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2])) * gate[:, :, None].to(x.dtype)
        return Built(fn, "topk + sort + gather")

    case = Case("topk", "Top-k token selection, order='time', gate='sigmoid': x [B, T·P, C], k = T·P/4", make,
                ("x", "scores"), cost, reference)
    case.impls = stquery_impls(stq_call) + [Impl("torch-topk", "peer", torch_topk)]
    return case


def _st_pool_case() -> Case:
    def make(s: Shape, device, dtype):
        return {"x": torch.randn(s.B, s.T, s.P, s.C, device=device, dtype=dtype)}

    def cost(s, itemsize, passes):
        return roofline.st_pool_cost(s.B, s.T, s.P, s.C, itemsize=itemsize, passes=passes)

    def reference(inp, s):
        from stquery.ops import reference as ref

        return ref.st_pool(inp["x"].detach().float())

    def stq_call(inp, s, backend):
        import stquery as stq

        return stq.st_pool(inp["x"], backend=backend)

    def torch_mean(inp, s):
        x = inp["x"]
        return Built(lambda: (x.mean(2), x.mean(1)), "two means")

    case = Case("st_pool", "st_pool: x [B, T, P, C] -> means over P and over T", make, ("x",), cost, reference)
    case.impls = stquery_impls(stq_call) + [Impl("torch-mean", "peer", torch_mean)]
    return case


def impl_names(case_name: str) -> list:
    """The implementations of a case, stquery's backends first (what ``bench/`` parametrizes over)."""
    return [i.name for i in make_cases()[case_name].impls]


def make_cases(flex_dynamic: bool = True) -> dict:
    """Every case by name (the profile's defaults and ``spatial``, which bench/ uses)."""
    return {c.name: c for c in (
        _temporal_case("temporal", "Temporal attention (plain softmax) on [B*T, L, H, d]", None, flex_dynamic),
        _temporal_case("temporal-mix", "Temporal DAR mix, p=3 {window(1), window(2), global}, alpha [B, L, 3]", "mix",
                       flex_dynamic),
        _temporal_case("temporal-scale", "Temporal DAR scale, p=3 {window(1), window(2), global}, alpha [B, L, 3]",
                       "scale", flex_dynamic),
        _spatial_case(flex_dynamic),
        _topk_case(),
        _st_pool_case(),
    )}


# ---------------------------------------------------------------------------------------------
# Measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def training_step(fwd: Callable[[], Any], inputs: list) -> Callable[[], Any]:
    """Forward then backward (``torch.autograd.grad`` with fixed random output gradients, so nothing accumulates)."""
    outs = [o for o in _as_tuple(fwd()) if isinstance(o, torch.Tensor) and o.requires_grad]
    if not outs:
        raise Unavailable("its output carries no gradient")
    grads = [torch.randn_like(o) for o in outs]

    def step():
        outs = [o for o in _as_tuple(fwd()) if isinstance(o, torch.Tensor) and o.requires_grad]
        return torch.autograd.grad(outs, inputs, grads, allow_unused=True)

    return step


_flush_buffer: dict = {}


def time_ms(fn: Callable[[], Any], device: torch.device, *, budget_ms: float, min_reps: int, max_reps: int) -> list:
    """Per-call times in ms. CUDA: events, with L2 flushed (a 256 MB write) before each call, as
    ``triton.testing.do_bench`` does; CPU: wall clock. ``fn`` has been called once (compiled) already."""
    if device.type == "cuda":
        if device not in _flush_buffer:
            _flush_buffer[device] = torch.empty(256 << 20, dtype=torch.int8, device=device)
        flush = _flush_buffer[device]
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        est = max((time.perf_counter() - t0) * 1e3, 1e-3)
        reps = int(min(max_reps, max(min_reps, budget_ms / est)))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    t_end = time.perf_counter() + budget_ms / 1e3
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _quantile(xs: list, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _peak_mib(fn: Callable[[], Any], device: torch.device, input_bytes: int) -> float | None:
    """Inputs plus the most the call allocates beyond what is live before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base + input_bytes) / 2 ** 20


def _max_rel_err(out, ref) -> float:
    errs = []
    for o, r in zip(_as_tuple(out), _as_tuple(ref)):
        if o.shape != r.shape:
            return float("inf")
        r = r.float()
        errs.append(((o.float() - r).abs().max() / r.abs().max().clamp_min(1e-6)).item())
    return max(errs)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-3 if dtype == torch.float32 else 3e-2


@dataclass
class Row:
    case: str
    sweep: str
    passes: str
    T: int
    B: int
    impl: str
    kind: str
    ok: bool
    reason: str = ""
    note: str = ""
    ms: float | None = None
    p20: float | None = None
    p80: float | None = None
    reps: int = 0
    bytes: int = 0
    flops: int = 0
    gbps: float | None = None
    pct_bw: float | None = None
    tflops: float | None = None
    pct_roofline: float | None = None
    peak_mib: float | None = None
    rel_err: float | None = None
    speedup: float | None = None


@dataclass
class DeviceInfo:
    name: str
    type: str
    copy_gbps: float
    matmul_tflops: float
    matmul_dtype: str


def device_info(device: torch.device, dtype: torch.dtype, quick: bool) -> DeviceInfo:
    """Measure the device's copy bandwidth and matmul rate (on CPU, float32 matmul)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        mm_dtype = dtype
        bw = roofline.copy_bandwidth(device, (256 << 20) if quick else None)
        mm = roofline.matmul_rate(device, mm_dtype, 2048 if quick else None)
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) on {os.cpu_count()} cores"
        mm_dtype = torch.float32
        bw = roofline.copy_bandwidth(device, (16 << 20) if quick else None, reps=5)
        mm = roofline.matmul_rate(device, mm_dtype, 256 if quick else None, reps=5)
    return DeviceInfo(name, device.type, bw, mm, str(mm_dtype).replace("torch.", ""))


def make_inputs(case: Case, s: Shape, device, dtype, passes: str) -> dict:
    """The case's inputs; for a backward pass, the ones in ``case.grad_inputs`` require grad."""
    inp = case.make_inputs(s, torch.device(device), dtype)
    if passes != "fwd":
        for n in case.grad_inputs:
            inp[n].requires_grad_(True)
    return inp


def prepare(case: Case, impl: Impl, inp: dict, s: Shape, passes: str):
    """Build ``impl`` on ``inp`` and run it once (compiling what compiles).

    Returns ``(call, note, out)``: ``call()`` runs the pass (forward under ``no_grad``, or forward and
    backward), ``out`` is the forward output of that first run (None for fwd+bwd). Raises
    :class:`Unavailable` (or whatever the implementation raises) when it can't run.
    """
    built = impl.build(inp, s)
    fn = built.fn
    if passes == "fwd":
        with torch.no_grad():
            out = fn()

        def call():
            with torch.no_grad():
                return fn()
        return call, built.note, out
    step = training_step(fn, [inp[n] for n in case.grad_inputs])
    step()
    return step, built.note, None


def check(out, ref, dtype: torch.dtype) -> tuple:
    """``(relative max error, within tolerance)`` of a forward output against the reference's."""
    err = _max_rel_err(out, ref)
    return err, err <= _tolerance(dtype)


def measure(case: Case, impl: Impl, inp: dict, s: Shape, passes: str, device: torch.device, dtype: torch.dtype,
            cfg: Config, dev: DeviceInfo, ref=None) -> Row:
    """One row: build the implementation, run it once (compile, check against the reference), time it."""
    cost = case.cost(s, torch.tensor([], dtype=dtype).element_size(), passes)
    row = Row(case.name, "", passes, s.T, s.B, impl.name, impl.kind, False, bytes=cost.bytes, flops=cost.flops)
    try:
        timed, row.note, out = prepare(case, impl, inp, s, passes)
        if out is not None and ref is not None:
            row.rel_err, ok = check(out, ref, dtype)
            if not ok:
                row.note = (row.note + "; " if row.note else "") + f"MISMATCH vs reference: rel err {row.rel_err:.1e}"
        del out
        _sync(device)
        times = time_ms(timed, device, budget_ms=cfg.budget_ms, min_reps=cfg.min_reps, max_reps=cfg.max_reps)
        input_bytes = sum(t.numel() * t.element_size() for t in inp.values())
        row.peak_mib = _peak_mib(timed, device, input_bytes)
    except Unavailable as e:
        row.reason = str(e)
        return row
    except Exception as e:  # a peer or backend that fails says why, in its row
        row.reason = _first_line(e)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row
    row.ok = True
    row.reps = len(times)
    row.ms, row.p20, row.p80 = _quantile(times, 0.5), _quantile(times, 0.2), _quantile(times, 0.8)
    seconds = row.ms / 1e3
    row.gbps = cost.bytes / seconds / 1e9
    row.pct_bw = 100 * row.gbps / dev.copy_gbps
    row.tflops = cost.flops / seconds / 1e12
    row.pct_roofline = 100 * roofline.roofline_fraction(cost, seconds, dev.copy_gbps, dev.matmul_tflops)
    return row


def _fill_speedups(rows: list) -> None:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.case, r.sweep, r.passes, r.T, r.B), []).append(r)
    for group in groups.values():
        peers = [r.ms for r in group if r.ok and r.kind == "peer"]
        if peers:
            best = min(peers)
            for r in group:
                if r.ok:
                    r.speedup = best / r.ms


def profile(cfg: Config, device: torch.device, *, impl_filter=None, progress=None) -> tuple[DeviceInfo, list]:
    """Run every (case, sweep, pass, T, implementation) of ``cfg``; returns the device rates and the rows."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        with dynamo_limits():
            return _profile(cfg, device, impl_filter, progress)
    finally:
        torch.set_num_threads(threads)


def _profile(cfg: Config, device: torch.device, impl_filter, progress) -> tuple[DeviceInfo, list]:
    dtype = DTYPES[cfg.dtype]
    dev = device_info(device, dtype, cfg.quick)
    cases = make_cases(cfg.flex_dynamic)
    rows, done = [], {}
    for case_name in cfg.cases:
        case = cases[case_name]
        impls = [i for i in case.impls if not impl_filter or any(f in i.name for f in impl_filter)]
        for sweep in cfg.sweeps:
            for passes in cfg.passes:
                t0 = time.perf_counter()
                for s in cfg.shapes(sweep):
                    key = (case_name, passes, s)
                    if key not in done:  # the sweeps share a shape at their ends
                        done[key] = _measure_shape(case, impls, s, passes, device, dtype, cfg, dev)
                    rows += [dataclasses.replace(r, sweep=sweep) for r in done[key]]
                if progress:
                    progress(f"{case_name} {sweep} {passes}: {time.perf_counter() - t0:.1f}s")
    _fill_speedups(rows)
    return dev, rows


def _measure_shape(case, impls, s, passes, device, dtype, cfg, dev) -> list:
    torch.manual_seed(0)
    try:
        inp = make_inputs(case, s, device, dtype, passes)
    except Exception as e:  # e.g. out of memory at the largest shapes
        return [Row(case.name, "", passes, s.T, s.B, i.name, i.kind, False, reason=f"inputs: {_first_line(e)}") for i in impls]
    ref = None
    if passes == "fwd":
        try:
            with torch.no_grad():
                ref = case.reference(inp, s)
        except Exception as e:
            print(f"profile: {case.name} B={s.B} T={s.T}: reference failed, outputs unchecked: {_first_line(e, 200)}",
                  file=sys.stderr)
    out = [measure(case, impl, inp, s, passes, device, dtype, cfg, dev, ref) for impl in impls]
    del inp, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# Reports


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(dev: DeviceInfo, cfg: Config, rows: list, started: str = "") -> str:
    cases = make_cases(cfg.flex_dynamic)
    lines = [
        f"# stquery profile{(' — ' + started) if started else ''}",
        "",
        f"- device: **{dev.name}**; measured copy bandwidth **{dev.copy_gbps:.1f} GB/s** (read + write), "
        f"matmul **{dev.matmul_tflops:.2f} TFLOP/s** ({dev.matmul_dtype})",
        f"- torch {torch.__version__}; dtype {cfg.dtype}; L={cfg.L}, H={cfg.H}, d={cfg.d}; selection/pool P={cfg.P}, "
        f"C={cfg.C}, k = T·P/{cfg.topk_div}; fixed-B sweep B={cfg.batch}, fixed-BT sweep B·T={cfg.frames_total}; "
        f"T = {', '.join(map(str, cfg.T))}; FlexAttention compiled with "
        f"{'dynamic' if cfg.flex_dynamic else 'static'} shapes",
        "- ms: median (p20, p80) over the timed calls; GB/s and TFLOP/s from SPEC §6's roofline counts "
        "(stquery/roofline.py); %BW of the measured copy bandwidth; %roof: the roofline bound "
        "max(bytes/BW, FLOPs/matmul rate) over the measured time; peak MiB: inputs + the call's own "
        "allocations (CUDA only); ×best peer: the fastest peer's median over this row's.",
        "",
    ]
    by_case: dict = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    for case_name, case_rows in by_case.items():
        lines += [f"## {case_name}: {cases[case_name].title}", ""]
        for sweep in cfg.sweeps:
            for passes in cfg.passes:
                group = [r for r in case_rows if r.sweep == sweep and r.passes == passes]
                if not group:
                    continue
                label = f"B = {cfg.batch}" if sweep == "fixed-B" else f"B·T = {cfg.frames_total}"
                lines += [f"### {case_name} · {sweep} ({label}) · {passes}", "",
                          "| T | B | impl | ms | p20 | p80 | GB/s | %BW | TFLOP/s | %roof | peak MiB | ×best peer | note |",
                          "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
                # An implementation that fails the same way at every T gets one row, not one per T.
                impls = list(dict.fromkeys(r.impl for r in group))
                always = {i for i in impls if len({(r.ok, r.reason) for r in group if r.impl == i}) == 1
                          and not next(r for r in group if r.impl == i).ok}
                for T in dict.fromkeys(r.T for r in group):
                    for r in group:
                        if r.T != T or r.impl in always:
                            continue
                        if r.ok:
                            lines.append(
                                f"| {r.T} | {r.B} | {r.impl} | {r.ms:.4g} | {r.p20:.4g} | {r.p80:.4g} | {r.gbps:.3g} | "
                                f"{r.pct_bw:.3g} | {r.tflops:.3g} | {r.pct_roofline:.3g} | {_f(r.peak_mib, '.1f')} | "
                                f"{_f(r.speedup, '.2f')} | {_escape(r.note)} |")
                        else:
                            lines.append(f"| {r.T} | {r.B} | {r.impl} | — | — | — | — | — | — | — | — | — | "
                                         f"can't run: {_escape(r.reason[:300])} |")
                for i in impls:
                    if i in always:
                        r = next(r for r in group if r.impl == i)
                        lines.append(f"| all | | {i} | — | — | — | — | — | — | — | — | — | "
                                     f"can't run: {_escape(r.reason[:300])} |")
                lines.append("")
    return "\n".join(lines)


def to_json(dev: DeviceInfo, cfg: Config, rows: list, started: str = "") -> dict:
    return {
        "started": started,
        "torch": torch.__version__,
        "device": dataclasses.asdict(dev),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def from_json(paths) -> tuple:
    """``(device, config, rows, started)`` of earlier ``--json`` outputs, merged (device and config of
    the first; cases in file order)."""
    dev = cfg = None
    rows, started, cases = [], "", []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if dev is None:
            dev = DeviceInfo(**data["device"])
            conf = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data["config"].items()}
            cfg = Config(**{k: v for k, v in conf.items() if k in {f.name for f in dataclasses.fields(Config)}})
            started = data.get("started", "")
        elif data["device"]["name"] != dev.name:
            print(f"stquery profile: {path} is from {data['device']['name']}, not {dev.name}", file=sys.stderr)
        rows += [Row(**r) for r in data["rows"]]
        cases += [c for c in data["config"]["cases"] if c not in cases]
    return dev, dataclasses.replace(cfg, cases=tuple(cases)), rows, started


def plot(rows: list, cfg: Config, path: str, title: str = "") -> None:
    """Log-log ms vs T, one line per implementation; one panel per (case, sweep, pass)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"stquery profile --plot needs matplotlib (pip install matplotlib): {e}")
    cases = list(dict.fromkeys(r.case for r in rows))
    cols = [(sw, ps) for sw in cfg.sweeps for ps in cfg.passes]
    fig, axes = plt.subplots(len(cases), len(cols), figsize=(4.2 * len(cols), 3.4 * len(cases)), squeeze=False)
    names = list(dict.fromkeys(r.impl for r in rows))
    cmap = plt.get_cmap("tab10")
    colors = {n: cmap(i % 10) for i, n in enumerate(names)}
    for i, case in enumerate(cases):
        for j, (sweep, passes) in enumerate(cols):
            ax = axes[i][j]
            group = [r for r in rows if r.case == case and r.sweep == sweep and r.passes == passes and r.ok]
            for name in dict.fromkeys(r.impl for r in group):
                pts = sorted((r.T, r.ms) for r in group if r.impl == name)
                style = "-" if name.startswith("stquery") else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name, color=colors[name])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            label = f"B={cfg.batch}" if sweep == "fixed-B" else f"B·T={cfg.frames_total}"
            ax.set_title(f"{case} · {label} · {passes}", fontsize=9)
            ax.set_xlabel("T (frames)", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            if group:
                ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x)


def _names(allowed):
    def parse(text: str) -> tuple:
        out = tuple(x for x in text.split(",") if x)
        bad = [x for x in out if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
        return out
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    case_names = ("temporal", "temporal-mix", "temporal-scale", "spatial", "topk", "st_pool")
    p.add_argument("--quick", action="store_true", help="tiny float32 shapes and short timing: a sub-minute CPU run (without it: GPU-sized shapes on a GPU, CPU-sized ones on a CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on a GPU, fp32 on CPU")
    p.add_argument("--T", type=_ints, default=None, help="frame counts, comma-separated (default 4,8,…,1024)")
    p.add_argument("--frames-total", type=int, default=None, help="B·T of the fixed-B·T sweep (default 2048)")
    p.add_argument("--batch", type=int, default=None, help="B of the fixed-B sweep (default 2)")
    for dim in ("L", "H", "d", "P", "C"):
        p.add_argument(f"--{dim}", type=int, default=None, help=f"{dim} (default: {getattr(FULL, dim)})")
    p.add_argument("--cases", type=_names(case_names), default=None,
                   help=f"comma-separated subset of {', '.join(case_names)} (default: all but spatial)")
    p.add_argument("--passes", type=_names(PASSES), default=None, help="fwd,fwd+bwd (default both)")
    p.add_argument("--sweeps", type=_names(SWEEPS), default=None, help="fixed-B,fixed-BT (default both)")
    p.add_argument("--impls", default=None, help="only implementations whose name contains one of these (comma-separated)")
    p.add_argument("--budget-ms", type=float, default=None, help="timing budget per measurement")
    p.add_argument("--flex-static", action="store_true", help="compile FlexAttention per shape (default: dynamic shapes)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE", help="write JSON (no FILE: to stdout)")
    p.add_argument("--markdown", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the markdown tables to FILE (no FILE: stdout, the default output)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="log-log ms vs T, one line per implementation")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 with --quick, as tiny ops on a shared CPU stall in OpenMP barriers)")
    p.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                   help="run nothing: render the tables/plot from earlier --json files (e.g. a run split by --cases)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``profile`` subcommand to ``stquery``'s argparse subparsers."""
    p = subparsers.add_parser("profile", help="frame-count scaling profile of stquery's backends and the peers",
                              description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args, device: torch.device) -> Config:
    cfg = dataclasses.replace(QUICK if args.quick else FULL if device.type == "cuda" else CPU)
    for name in ("L", "H", "d", "P", "C", "frames_total", "batch", "dtype", "T", "cases", "passes", "sweeps", "budget_ms"):
        value = getattr(args, name, None)
        if value is not None:
            cfg = dataclasses.replace(cfg, **{name: value})
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, cpu_threads=args.threads)
    if args.flex_static:
        cfg = dataclasses.replace(cfg, flex_dynamic=False)
    if args.frames_total is not None and args.batch is None:
        cfg = dataclasses.replace(cfg, batch=max(1, cfg.frames_total // max(cfg.T)))
    return cfg


def run(args) -> int:
    if args.plot is not None:  # fail before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            print(f"stquery profile: --plot needs matplotlib (pip install matplotlib): {e}", file=sys.stderr)
            return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = config_from_args(args, device)
    t0 = time.perf_counter()
    if args.from_json:
        dev, cfg, rows, started = from_json(args.from_json)
    else:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        progress = None if args.quiet else (lambda msg: print(f"profile: {msg}", file=sys.stderr, flush=True))
        impl_filter = [x for x in args.impls.split(",") if x] if args.impls else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dev, rows = profile(cfg, device, impl_filter=impl_filter, progress=progress)
    md = markdown(dev, cfg, rows, started)
    if not args.from_json:
        md += f"\n_{len(rows)} rows in {time.perf_counter() - t0:.1f} s._\n"
    if args.json is not None:
        text = json.dumps(to_json(dev, cfg, rows, started), indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    if args.markdown not in (None, "-"):
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.json != "-" or args.markdown == "-":
        print(md)
    if args.plot:
        plot(rows, cfg, args.plot, f"stquery profile · {dev.name} · {cfg.dtype}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stquery profile", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
