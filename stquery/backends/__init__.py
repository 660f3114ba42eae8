"""Backend registry and dispatch (docs/backends.md §3).

Which backend runs an op: the op's ``backend=`` argument, else ``$STQUERY_BACKEND``, else auto —
the first backend in :data:`PREFERENCE` that runs natively on the tensors' device and whose
``supports()`` returns no reasons. An explicitly chosen backend that can't run raises
:class:`BackendUnavailable` with its reasons; auto logs (once per distinct reason) why it passed a
backend over. There is no silent fallback.

Dependencies point one way: the ops (``stquery/ops``) call :func:`resolve` and :func:`get`; each
backend module (``*_backend.py`` here) implements :class:`Backend` and is registered at the bottom
of this file. This module imports no op.
"""
from __future__ import annotations

import logging
import os
from typing import Protocol

import torch

log = logging.getLogger("stquery")

# Auto's order: fastest first.
PREFERENCE = ("triton", "cuda", "cpu", "torch")
ENV = "STQUERY_BACKEND"
# The ops a backend's supports() is asked about, and the primitives each one calls.
OPS = {
    "attention": ("attention_fwd", "attention_bwd"),
    "topk_select": ("topk_select",),
    "gather_gate": ("gather_gate", "gather_gate_bwd"),
    "multiscale_pool": ("multiscale_pool", "multiscale_pool_bwd"),
    "st_pool": ("st_pool", "st_pool_bwd"),
}

_registry: dict = {}
_plans: dict = {}  # device type -> auto's plan there (see _plan); cleared by register
_logged: set = set()


class BackendUnavailable(RuntimeError):
    """The requested backend (or, for auto, every backend) can't run this call."""


class Backend(Protocol):
    """What a backend module defines: one object ``backend`` with these members.

    A backend implements the primitives of the ops its ``supports`` accepts (see :data:`OPS`) and
    nothing else; the op has validated every argument before it asks. Every tensor a primitive
    receives needs only ``stride(-1) == 1`` (incoming gradients included); outputs are new tensors.
    ``prob`` is an :class:`stquery.ops.attention.problem.AttnProblem`.
    """

    name: str  # what backend= and $STQUERY_BACKEND call it
    devices: frozenset  # device types auto may pick it for, e.g. {"cuda"}

    def supports(self, op: str, *args) -> list[str]:
        """Why this backend can't run ``op`` on the first primitive's arguments ([] = it can):
        backend-specific limits only (device, build, compute capability, dtype x head-dim tiles,
        32-bit index and grid limits)."""

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        """-> ``(out, stats)``.

        Spatial (``prob.frames == 0``): q ``[G, Nq, H, d]``, k/v ``[G, Nk, H, d]``, attention along
        dim 1. Temporal (``prob.frames == T``): q/k/v ``[B*T, L, H, d]``, attention over the T frames
        of each (b, l, h); Nq = Nk = T. alpha: None (``prob.mode == NONE``) or the routing weights
        expanded (a view, strides may be 0) to ``[G, H, p]`` / ``[B, L, H, p]``, any float dtype.
        dense: None or bool ``[n_dense, Nq, Nk]``, the dense masks in ``prob.kinds`` order.
        key_padding: None or bool ``[G, Nk]`` (True = padded). frame_lengths: None or int64 ``[B]``.
        out: ``q.shape``, ``q.dtype``. stats: float32 ``q.shape[:3] + (prob.stats_width,)``; what it
        holds is the backend's own business (softmax statistics for its backward pass).
        """

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        """-> ``(dq, dk, dv, dalpha)``: like q/k/v; dalpha None when alpha is None, else alpha's
        expanded shape in alpha's dtype (the op sums it down to the user's broadcast shape)."""

    # Optional: attention_recorded(q, k, v, alpha, dense, key_padding, frame_lengths, prob) -> out,
    # attention_fwd's out with its backward (attention_bwd's gradients to q, k, v, alpha) recorded
    # by the backend's own autograd node. An eager call that records autograd (not forward-mode
    # AD) uses it instead of the op's Python torch.autograd.Function (the cpu backend's is C++).

    def topk_select(self, scores, k, order):
        """scores float ``[B, N]`` -> idx int64 ``[B, k]``: the k largest, ties to the lower index;
        ``order`` "time" (idx ascending) or "score" (descending score, ties by index)."""

    def gather_gate(self, x, scores, idx, gate, scales):
        """x ``[B, N, C]`` -> ``y[b, i] = x[b, idx[b, i]] * g(scores[b, idx[b, i]])``, gate one of
        :data:`stquery.ops.topk.problem.GATES` (softmax over the k selected); ``[B, k, C]``, or with
        ``scales`` its multi-scale pooling ``[B, pooled_length(k, scales), C]``."""

    def gather_gate_bwd(self, grad_y, x, scores, idx, gate, scales):
        """-> ``(dx [B, N, C] (zero off the selected rows), dscores [B, N] or None for gate "none")``."""

    def multiscale_pool(self, y, scales):
        """``[B, k, C]`` -> ``[B, pooled_length(k, scales), C]`` window means, scales concatenated."""

    def multiscale_pool_bwd(self, grad, k, scales):
        """-> dy ``[B, k, C]``."""

    def st_pool(self, x):
        """x ``[B, T, P, C]`` -> ``(mean over P [B, T, C], mean over T [B, P, C])``."""

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        """-> dx ``[B, T, P, C]``."""


def register(backend: Backend) -> None:
    _registry[backend.name] = backend
    _plans.clear()


def names() -> list[str]:
    """Registered backends, in auto's order of preference."""
    return sorted(_registry, key=lambda n: PREFERENCE.index(n) if n in PREFERENCE else len(PREFERENCE))


def get(name: str) -> Backend:
    try:
        return _registry[name]
    except KeyError:
        raise ValueError(f"backend: unknown backend {name!r}; registered: {', '.join(names())}") from None


def reasons(op: str, *args) -> dict[str, list[str]]:
    """For each registered backend, why it can't run ``op`` on these arguments ([] = it can)."""
    return {n: list(get(n).supports(op, *args)) for n in names()}


def _plan(device_type: str) -> tuple[tuple, dict]:
    """Auto's plan for tensors on ``device_type``, built once: the backends it tries, in order of
    preference, and why it never tries the others ({name: [reason]})."""
    plan = _plans.get(device_type)
    if plan is None:
        tried, skipped = [], {}
        for n in names():
            backend = get(n)
            if device_type in backend.devices:
                tried.append(backend)
            else:
                devices = "/".join(sorted(backend.devices))
                skipped[n] = [f"auto runs it only on {devices} tensors, got {device_type} (pass backend={n!r} to force it)"]
        plan = _plans[device_type] = (tuple(tried), skipped)
    return plan


def resolve(op: str, requested: str | None, device_type: str, *args) -> str:
    """The name of the backend that runs ``op`` (see the module docstring for the rule)."""
    name = requested if requested is not None else os.environ.get(ENV) or None
    if name is not None and name != "auto":
        why = get(name).supports(op, *args)
        if why:
            source = "backend=" if requested is not None else f"${ENV}="
            raise BackendUnavailable(f"{op}: {source}{name!r} can't run this call: " + "; ".join(why))
        return name
    tried, skipped = _plan(device_type)
    passed = {}
    for backend in tried:
        why = backend.supports(op, *args)
        if not why:
            # logged by the eager call (dynamo can't trace logging), once per distinct reason
            if not torch.compiler.is_compiling() and (passed or (op, device_type) not in _logged):
                _logged.add((op, device_type))
                _log_passed_over(op, {**skipped, **passed}, backend.name)
            return backend.name
        passed[backend.name] = list(why)
    every = {**skipped, **passed}
    listing = "\n".join(f"  {n}: {'; '.join(every[n])}" for n in names())
    raise BackendUnavailable(f"{op}: no backend can run this call:\n{listing}")


def _log_passed_over(op: str, passed: dict, chosen: str) -> None:
    for name, why in passed.items():
        key = (op, name, tuple(why))
        if key not in _logged:
            _logged.add(key)
            log.info("stquery %s: auto passed over %s: %s; using %s", op, name, "; ".join(why), chosen)


# The built-in backends. Each module only defines its object; registering happens here, in sight.
from . import cpu_backend, cuda_backend, torch_backend, triton_backend  # noqa: E402

register(torch_backend.backend)
register(triton_backend.backend)
register(cuda_backend.backend)
register(cpu_backend.backend)
