"""The peers: attention as people write it today, on the ``[B*T, L, H, d]`` activations of a video model.

- eager permute + SDPA: TimeSformer-style, permute to a contiguous ``[B*L, T, H, d]`` (two copies in,
  one out), SDPA, permute back;
- head-fold SDPA: view ``[B*T, L, H, d]`` as ``[B, T, L*H, d]`` (L·H "heads"), no copy;
- FlexAttention (compiled): ``mask_mod`` block masks for the windows (mix), a ``score_mod``
  carrying alpha for DAR scale mode;
- xformers and flash-attn on the head-fold view, when importable (windows through their local
  attention; neither can scale logits, so no scale mode): one factory, :func:`library_peer`.

DAR mix with SDPA-style peers is p calls (one per mask) summed with alpha; scale mode, which SDPA
cannot express, is matmul + masked softmax + matmul on the same layouts. Each builder takes
``(mode, inputs, shape)`` and returns a :class:`Built` or raises :class:`Unavailable`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

RADII = (1, 2, None)  # DAR mask set: window(1), window(2), global (VideoQFormer's temporal default)


class Unavailable(Exception):
    """An implementation can't run this problem; the message is the reason shown in its row."""


@dataclass
class Built:
    fn: Callable[[], Any]
    note: str = ""


def first_line(e: BaseException, limit: int = 2000) -> str:
    """``Type: message`` on one line (Inductor's C++ errors put the useful line second: keep two)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' | '.join(lines[:2])}"[:limit]


# --- layouts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a peer sees ``[B*T, L, H, d]``: ``fold`` gives SDPA's ``[N, heads, T, d]``, ``unfold`` undoes
    it, ``alpha_j`` turns alpha ``[B, L, p]`` column j into a weight broadcastable to ``[N, heads, 1, 1]``."""

    fold: Callable
    unfold: Callable
    alpha_j: Callable


def eager_layout(B: int, T: int, L: int, H: int) -> Layout:
    def fold(x):  # -> contiguous [B*L, T, H, d] (a copy), seen as [B*L, H, T, d]
        return x.view(B, T, L, H, -1).permute(0, 2, 1, 3, 4).contiguous().view(B * L, T, H, -1).transpose(1, 2)

    def unfold(o):  # [B*L, H, T, d] -> [B*T, L, H, d] (the copy back)
        return o.transpose(1, 2).reshape(B, L, T, H, -1).permute(0, 2, 1, 3, 4).reshape(B * T, L, H, -1)

    return Layout(fold, unfold, lambda alpha, j: alpha[..., j].reshape(B * L, 1, 1, 1))


def head_fold_layout(B: int, T: int, L: int, H: int) -> Layout:
    def fold(x):  # [B*T, L, H, d] -> [B, L*H, T, d]: a view, no copy
        return x.view(B, T, L * H, -1).transpose(1, 2)

    def unfold(o):  # [B, L*H, T, d] -> [B*T, L, H, d] (free when o is laid out [B, T, L*H, d])
        return o.transpose(1, 2).reshape(B * T, L, H, -1)

    return Layout(fold, unfold, lambda alpha, j: alpha[..., j, None].expand(B, L, H).reshape(B, L * H, 1, 1))


def window_masks(T: int, device) -> list:
    """bool ``[T, T]`` per DAR mask (True = visible), None for the global one."""
    i = torch.arange(T, device=device)
    dist = (i[:, None] - i[None, :]).abs()
    return [None if r is None else dist <= r for r in RADII]


def scale_mode_math(q, k, v, w):
    """``softmax_{w>0}(s · w) v`` with ``s = q kᵀ / sqrt(d)``; q/k/v ``[..., T, d]``, w broadcastable to the scores."""
    s = torch.matmul(q, k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)
    logits = torch.where(w > 0, s * w, float("-inf"))
    return torch.matmul(logits.softmax(-1).to(v.dtype), v)


def sdpa_peer(make_layout: Callable[..., Layout]) -> Callable:
    """A peer that runs SDPA on ``make_layout``'s view: one call (plain), p calls summed (mix), or
    matmul + masked softmax + matmul (scale)."""

    def build(mode, inp, s) -> Built:
        lay = make_layout(s.B, s.T, s.L, s.H)
        q, k, v = (inp[n] for n in "qkv")
        if not mode:
            return Built(lambda: lay.unfold(F.scaled_dot_product_attention(lay.fold(q), lay.fold(k), lay.fold(v))), "SDPA")
        masks, alpha = window_masks(s.T, q.device), inp["alpha"]
        if mode == "mix":
            def fn():
                qf, kf, vf = lay.fold(q), lay.fold(k), lay.fold(v)
                return lay.unfold(sum(lay.alpha_j(alpha, j).to(q.dtype) * F.scaled_dot_product_attention(qf, kf, vf, attn_mask=m)
                                      for j, m in enumerate(masks)))
            return Built(fn, f"{len(masks)} SDPA calls")
        stack = [torch.ones(s.T, s.T, dtype=torch.bool, device=q.device) if m is None else m for m in masks]

        def fn():
            w = sum(lay.alpha_j(alpha, j) * m for j, m in enumerate(stack))  # [N, heads, T, T]
            return lay.unfold(scale_mode_math(lay.fold(q), lay.fold(k), lay.fold(v), w))
        return Built(fn, "matmul+softmax (SDPA can't scale logits)")

    return build


# --- xformers, flash-attn ----------------------------------------------------------------------


@dataclass(frozen=True)
class Library:
    """An attention library called on ``[B, N, heads, d]`` (the head-fold view is its own layout)."""

    name: str  # the row's name
    module: str  # what is imported
    attend: Callable  # (module, q, k, v, radius or None) -> o, q/k/v/o [B, N, heads, d]
    windows: str  # how a window reaches it (the row's note)


def _xformers_attend(xops, q, k, v, r):
    if r is None:
        return xops.memory_efficient_attention(q, k, v)
    from xformers.ops.fmha.attn_bias import LocalAttentionFromBottomRightMask

    return xops.memory_efficient_attention(q, k, v, attn_bias=LocalAttentionFromBottomRightMask(window_left=r, window_right=r))


def _flash_attend(fa, q, k, v, r):
    return fa.flash_attn_func(q, k, v, window_size=(-1, -1) if r is None else (r, r))


XFORMERS = Library("xformers", "xformers.ops", _xformers_attend, "local attention bias")
FLASH_ATTN = Library("flash-attn", "flash_attn", _flash_attend, "window_size")


def library_peer(lib: Library, temporal: bool = True) -> Callable:
    """A peer that calls ``lib`` on the head-fold view ``[B, T, L*H, d]`` (temporal) or on
    ``[G, L, H, d]`` itself (spatial); DAR mix is p calls summed with alpha; no scale mode."""

    def build(mode, inp, s) -> Built:
        import importlib

        try:
            module = importlib.import_module(lib.module)
        except Exception as e:
            raise Unavailable(f"{lib.name} not importable: {first_line(e)}")
        if mode == "scale":
            raise Unavailable(f"{lib.name} has no logit-scaling score modifier (DAR scale mode)")
        q, k, v = (inp[n] for n in "qkv")
        if not temporal:
            return Built(lambda: lib.attend(module, q, k, v, None))
        B, T, L, H, d = s.B, s.T, s.L, s.H, s.d
        qf, kf, vf = (x.view(B, T, L * H, d) for x in (q, k, v))
        if not mode:
            return Built(lambda: lib.attend(module, qf, kf, vf, None).view(B * T, L, H, d))
        alpha = inp["alpha"]

        def fn():
            o = sum(alpha[:, None, :, None, j, None].to(q.dtype) * lib.attend(module, qf, kf, vf, r).view(B, T, L, H, d)
                    for j, r in enumerate(RADII))
            return o.view(B * T, L, H, d)
        return Built(fn, f"{len(RADII)} calls, {lib.windows}")

    return build


# --- FlexAttention -----------------------------------------------------------------------------

_flex_fns: dict = {}


def _flex(dynamic: bool):
    if dynamic not in _flex_fns:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_fns[dynamic] = torch.compile(flex_attention, dynamic=dynamic)
    return _flex_fns[dynamic]


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
        raise Unavailable(f"FlexAttention not importable: {first_line(e)}")
    first = ""
    if dynamic:
        t0 = time.perf_counter()
        fn = make_fn(_flex(True))
        try:
            with torch.no_grad():
                fn()
            return Built(fn, f"dynamic shapes; first call {time.perf_counter() - t0:.1f} s")
        except Exception as e:
            first = f" (dynamic compile failed: {first_line(e, 160)})"
    t0 = time.perf_counter()
    fn = make_fn(_flex(False))
    with torch.no_grad():
        fn()
    return Built(fn, f"static shapes; first call {time.perf_counter() - t0:.1f} s{first}")


def _no_cpu_backward(q) -> None:
    if q.device.type == "cpu" and q.requires_grad:
        raise Unavailable("FlexAttention has no backward on CPU (torch raises NotImplementedError)")


def flex_peer(dynamic: bool = True) -> Callable:
    """FlexAttention on the head-fold view: block masks per window (mix), a ``score_mod`` reading alpha (scale)."""

    def build(mode, inp, s) -> Built:
        B, T, L, H = s.B, s.T, s.L, s.H
        lay = head_fold_layout(B, T, L, H)
        q, k, v = (inp[n] for n in "qkv")
        _no_cpu_backward(q)
        qf, kf, vf = lay.fold(q), lay.fold(k), lay.fold(v)
        if not mode:
            return _flex_built(lambda flex_fn: lambda: lay.unfold(flex_fn(qf, kf, vf)), dynamic)
        alpha = inp["alpha"]
        if mode == "mix":
            from torch.nn.attention.flex_attention import create_block_mask

            def window(r):
                return lambda b, h, qi, ki: (qi - ki).abs() <= r

            blocks = [None if r is None else create_block_mask(window(r), None, None, T, T, device=q.device) for r in RADII]

            def make(flex_fn):
                return lambda: lay.unfold(sum(lay.alpha_j(alpha, j).to(q.dtype) * flex_fn(qf, kf, vf, block_mask=bm)
                                              for j, bm in enumerate(blocks)))
            return _flex_built(make, dynamic)
        r0, r1 = RADII[0], RADII[1]

        def score_mod(score, b, h, qi, ki):  # w = sum_j alpha_j M_j; logits * w where w > 0
            l = h // H
            dist = (qi - ki).abs()
            w = alpha[b, l, 0] * (dist <= r0) + alpha[b, l, 1] * (dist <= r1) + alpha[b, l, 2]
            return torch.where(w > 0, score * w, -float("inf"))

        # Inductor's CPU flex template (torch 2.13) emits C++ that does not compile for a score_mod
        # reading a captured tensor under dynamic shapes; compile per shape there instead of failing.
        cpu_static = q.device.type == "cpu" and dynamic
        built = _flex_built(lambda flex_fn: lambda: lay.unfold(flex_fn(qf, kf, vf, score_mod=score_mod)),
                            dynamic and not cpu_static)
        if cpu_static:
            built.note += " (CPU: the dynamic-shape score_mod template fails to compile)"
        return built

    return build


def flex_spatial_peer(dynamic: bool = True) -> Callable:
    def build(mode, inp, s) -> Built:
        q, k, v = (inp[n].transpose(1, 2) for n in "qkv")
        _no_cpu_backward(q)
        return _flex_built(lambda flex_fn: lambda: flex_fn(q, k, v).transpose(1, 2), dynamic)

    return build


def sdpa_spatial_peer(mode, inp, s) -> Built:
    q, k, v = (inp[n].transpose(1, 2) for n in "qkv")  # [G, H, L, d] views
    return Built(lambda: F.scaled_dot_product_attention(q, k, v).transpose(1, 2), "SDPA on transposed views")
