"""Backend registry and dispatch (SPEC §3).

Which backend runs an op: the op's ``backend=`` argument, else ``$STQUERY_BACKEND``, else auto —
the first backend in :data:`PREFERENCE` that runs natively on the tensors' device and whose
``supports()`` returns no reasons. An explicitly chosen backend that can't run raises
:class:`BackendUnavailable` with its reasons; auto logs (once per distinct reason) why it passed a
backend over. There is no silent fallback.

A backend is an object with ``name``, ``devices`` (device types it runs on natively),
``supports(op, *args) -> list[str]`` and the primitives of :mod:`stquery.backends.base`.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("stquery")

# Auto's order: fastest first.
PREFERENCE = ("triton", "cuda", "torch")
ENV = "STQUERY_BACKEND"

_registry: dict = {}
_logged: set = set()


class BackendUnavailable(RuntimeError):
    """The requested backend (or, for auto, every backend) can't run this call."""


def register(backend) -> None:
    _registry[backend.name] = backend


def names() -> list[str]:
    """Registered backends, in auto's order of preference."""
    return sorted(_registry, key=lambda n: PREFERENCE.index(n) if n in PREFERENCE else len(PREFERENCE))


def get(name: str):
    try:
        return _registry[name]
    except KeyError:
        raise ValueError(f"backend: unknown backend {name!r}; registered: {', '.join(names())}") from None


def reasons(op: str, *args) -> dict[str, list[str]]:
    """For each registered backend, why it can't run ``op`` on these arguments ([] = it can)."""
    return {n: list(get(n).supports(op, *args)) for n in names()}


def _auto_reasons(backend, op: str, device_type: str, args) -> list[str]:
    if device_type not in backend.devices:
        return [f"auto runs it only on {'/'.join(sorted(backend.devices))} tensors, got {device_type} (pass backend={backend.name!r} to force it)"]
    return list(backend.supports(op, *args))


def resolve(op: str, requested: str | None, device_type: str, *args) -> str:
    """The name of the backend that runs ``op`` (see the module docstring for the rule)."""
    name = requested if requested is not None else os.environ.get(ENV) or None
    if name is not None and name != "auto":
        why = get(name).supports(op, *args)
        if why:
            source = "backend=" if requested is not None else f"${ENV}="
            raise BackendUnavailable(f"{op}: {source}{name!r} can't run this call: " + "; ".join(why))
        return name
    passed = {}
    for n in names():
        why = _auto_reasons(get(n), op, device_type, args)
        if not why:
            if not torch.compiler.is_compiling():  # logged by the eager call; dynamo can't trace logging
                _log_passed_over(op, passed, n)
            return n
        passed[n] = why
    listing = "\n".join(f"  {n}: {'; '.join(w)}" for n, w in passed.items())
    raise BackendUnavailable(f"{op}: no backend can run this call:\n{listing}")


def _log_passed_over(op: str, passed: dict, chosen: str) -> None:
    for name, why in passed.items():
        key = (op, name, tuple(why))
        if key not in _logged:
            _logged.add(key)
            log.info("stquery %s: auto passed over %s: %s; using %s", op, name, "; ".join(why), chosen)


def _register_builtin() -> None:
    from . import cuda_backend, torch_backend, triton_backend

    register(torch_backend.backend)
    register(triton_backend.backend)
    register(cuda_backend.backend)


_register_builtin()
