"""The ``triton`` backend: the kernels of ``kernels/`` (installed as ``stquery.kernels``).

Runs CUDA tensors natively. On CPU it runs only when ``TRITON_INTERPRET=1`` is set (the Triton
interpreter: for tests, never a speed) and only when asked for explicitly. Kernel modules are
imported on first use, so ``import stquery`` never pays for Triton.
"""
from __future__ import annotations

import importlib
import os

# op -> (kernel module, primitives it provides)
_OPS = {
    "attention": ("attention", ("attention_fwd", "attention_bwd")),
    "topk_select": ("topk", ("topk_select",)),
    "gather_gate": ("topk", ("gather_gate", "gather_gate_bwd")),
    "multiscale_pool": ("pool", ("multiscale_pool", "multiscale_pool_bwd")),
    "st_pool": ("pool", ("st_pool", "st_pool_bwd")),
}


def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None


def _kernels(module: str):
    return importlib.import_module(f"stquery.kernels.{module}")


def _device(args):
    from torch import Tensor

    return next(a.device for a in args if isinstance(a, Tensor))


class TritonBackend:
    name = "triton"
    devices = frozenset({"cuda"})

    def supports(self, op, *args) -> list[str]:
        missing = _triton_missing()
        if missing:
            return [missing]
        device = _device(args)
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return ["tensors are on cpu: Triton needs CUDA tensors (TRITON_INTERPRET=1 runs the interpreter, for tests)"]
        if device.type not in ("cpu", "cuda"):
            return [f"tensors are on {device.type}: Triton needs CUDA tensors"]
        module, _ = _OPS[op]
        try:
            kernels = _kernels(module)
        except ImportError as e:
            return [f"stquery.kernels.{module} failed to import: {e}"]
        return list(kernels.supports(op, *args)) if module != "attention" else list(kernels.supports(*args))

    def __getattr__(self, primitive):
        for module, primitives in _OPS.values():
            if primitive in primitives:
                return getattr(_kernels(module), primitive)
        raise AttributeError(primitive)


backend = TritonBackend()
