"""What is measured: each case's inputs, roofline cost, reference and implementations.

A case's implementations are stquery's backends (one row each, registered or not) and the peers
of :mod:`.peers`. ``bench/`` parametrizes over :func:`impl_names` and runs each through
:mod:`.harness`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import roofline
from .config import Shape
from .peers import (FLASH_ATTN, RADII, XFORMERS, Built, Unavailable, eager_layout, flex_peer, flex_spatial_peer,
                    head_fold_layout, library_peer, sdpa_peer, sdpa_spatial_peer)


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
    cost: Callable[[Shape, int, str], roofline.Cost]
    reference: Callable[[dict, Shape], Any]
    impls: list = field(default_factory=list)


def backend_names() -> list[str]:
    """stquery's backends: the registered ones in auto's order, then those auto knows that are not registered here."""
    import stquery.backends as sb

    registered = list(sb.names())
    return registered + [n for n in sb.PREFERENCE if n not in registered]


def _stquery_backend(name: str, call: Callable[[dict, Shape, str], Any]) -> Impl:
    def build(inp: dict, s: Shape) -> Built:
        import stquery.backends as sb

        registered = list(sb.names())
        if name not in registered:
            raise Unavailable(f"backend {name!r} is not registered (stquery.backends.names() = {registered})")
        device = next(t.device for t in inp.values() if isinstance(t, torch.Tensor))
        if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            raise Unavailable("TRITON_INTERPRET=1: on CPU Triton only runs in its interpreter, a correctness tool, not a speed")
        return Built(lambda: call(inp, s, name))

    return Impl(f"stquery-{name}", "stquery", build)


def stquery_impls(call: Callable[[dict, Shape, str], Any]) -> list[Impl]:
    """One row per backend of :func:`backend_names`."""
    return [_stquery_backend(n, call) for n in backend_names()]


def _peer(name: str, build: Callable, mode=None) -> Impl:
    return Impl(name, "peer", lambda inp, s: build(mode, inp, s))


@functools.lru_cache(maxsize=None)
def _stq_maskset():
    """Built once: peers get their masks prepared outside the timed call, and so does stquery."""
    import stquery as stq

    return stq.MaskSet([stq.masks.window(r) for r in RADII])


def _temporal_case(name: str, title: str, mode: str | None, flex_dynamic: bool) -> Case:
    p = len(RADII) if mode else 0

    def make(s: Shape, device, dtype) -> dict:
        inp = {n: torch.randn(s.B * s.T, s.L, s.H, s.d, device=device, dtype=dtype) for n in "qkv"}
        if mode:
            inp["alpha"] = torch.randn(s.B, s.L, p, device=device).softmax(-1)  # [B, L, p], float32
        return inp

    def cost(s: Shape, itemsize: int, passes: str) -> roofline.Cost:
        return roofline.temporal_attention_cost(s.B, s.T, s.L, s.H, s.d, itemsize=itemsize, mode=mode or "none", p=p,
                                                alpha_numel=s.B * s.L * p, alpha_itemsize=4, passes=passes)

    def dar(inp):
        return dict(masks=_stq_maskset(), alpha=inp["alpha"], mode=mode) if mode else {}

    def reference(inp, s):
        from stquery.ops import reference as ref

        kw = {n: (x.detach() if n == "alpha" else x) for n, x in dar(inp).items()}
        return ref.temporal_attention(*(inp[n].detach().float() for n in "qkv"), s.T, **kw)

    def stq_call(inp, s, backend):
        import stquery as stq

        return stq.temporal_attention(inp["q"], inp["k"], inp["v"], s.T, backend=backend, **dar(inp))

    case = Case(name, title, make, ("q", "k", "v", "alpha") if mode else ("q", "k", "v"), cost, reference)
    case.impls = stquery_impls(stq_call) + [
        _peer("eager-permute", sdpa_peer(eager_layout), mode),
        _peer("head-fold", sdpa_peer(head_fold_layout), mode),
        _peer("flex", flex_peer(flex_dynamic), mode),
        _peer(XFORMERS.name, library_peer(XFORMERS), mode),
        _peer(FLASH_ATTN.name, library_peer(FLASH_ATTN), mode),
    ]
    return case


def _spatial_case(flex_dynamic: bool) -> Case:
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

    case = Case("spatial", "Spatial self-attention over the L tokens of each frame, G = B·T", make, ("q", "k", "v"),
                cost, reference)
    case.impls = stquery_impls(stq_call) + [
        _peer("sdpa", sdpa_spatial_peer), _peer("flex", flex_spatial_peer(flex_dynamic)),
        _peer(XFORMERS.name, library_peer(XFORMERS, temporal=False)),
        _peer(FLASH_ATTN.name, library_peer(FLASH_ATTN, temporal=False))]
    return case


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

    def torch_topk(mode, inp, s):
        x, scores, k = inp["x"], inp["scores"], s.k

        def fn():
            idx = scores.topk(k, dim=1).indices.sort(dim=1).values  # [B, k], time order
            gate = torch.sigmoid(scores.gather(1, idx))  # [B, k]
            return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2])) * gate[:, :, None].to(x.dtype)
        return Built(fn, "topk + sort + gather")

    case = Case("topk", "Top-k token selection, order='time', gate='sigmoid': x [B, T·P, C], k = T·P/4", make,
                ("x", "scores"), cost, reference)
    case.impls = stquery_impls(stq_call) + [_peer("torch-topk", torch_topk)]
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

    def torch_mean(mode, inp, s):
        x = inp["x"]
        return Built(lambda: (x.mean(2), x.mean(1)), "two means")

    case = Case("st_pool", "st_pool: x [B, T, P, C] -> means over P and over T", make, ("x",), cost, reference)
    case.impls = stquery_impls(stq_call) + [_peer("torch-mean", torch_mean)]
    return case


def make_cases(flex_dynamic: bool = True) -> dict:
    """Every case by name (the profile's defaults and ``spatial``, which bench/ uses)."""
    window_set = "p=3 {window(1), window(2), global}, alpha [B, L, 3]"
    return {c.name: c for c in (
        _temporal_case("temporal", "Temporal attention (plain softmax) on [B*T, L, H, d]", None, flex_dynamic),
        _temporal_case("temporal-mix", f"Temporal DAR mix, {window_set}", "mix", flex_dynamic),
        _temporal_case("temporal-scale", f"Temporal DAR scale, {window_set}", "scale", flex_dynamic),
        _spatial_case(flex_dynamic),
        _topk_case(),
        _st_pool_case(),
    )}


def impl_names(case_name: str) -> list:
    """The implementations of a case, stquery's backends first (what ``bench/`` parametrizes over)."""
    return [i.name for i in make_cases()[case_name].impls]
