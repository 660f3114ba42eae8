"""The ``triton`` backend: the kernels of ``kernels/<op>/`` (installed as ``stquery.kernels.<op>``).

Runs CUDA tensors natively. On CPU it runs only when ``TRITON_INTERPRET=1`` is set (the Triton
interpreter: for tests, never a speed) and only when asked for explicitly. Each method imports its
kernel package on first use, so ``import stquery`` never pays for Triton.
"""
from __future__ import annotations

import torch

from .. import kernels


def _kernels(op: str):
    """The kernel package that implements ``op``."""
    if op == "attention":
        from ..kernels import attention as module
    elif op in ("topk_select", "gather_gate"):
        from ..kernels import topk as module
    else:
        from ..kernels import pool as module
    return module


class TritonBackend:
    name = "triton"
    devices = frozenset({"cuda"})

    def supports(self, op, *args) -> list[str]:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return [f"triton is not installed ({e})"]
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        why = kernels.device_reason(device.type)
        if why:
            return [why]
        try:
            module = _kernels(op)
        except ImportError as e:
            return [f"the Triton kernels for {op} failed to import: {e}"]
        return list(module.supports(op, *args))

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        from ..kernels.attention import attention_fwd

        return attention_fwd(q, k, v, alpha, dense, key_padding, frame_lengths, prob)

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        from ..kernels.attention import attention_bwd

        return attention_bwd(grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob)

    def topk_select(self, scores, k, order):
        from ..kernels.topk import topk_select

        return topk_select(scores, k, order)

    def gather_gate(self, x, scores, idx, gate, scales):
        from ..kernels.topk import gather_gate

        return gather_gate(x, scores, idx, gate, scales)

    def gather_gate_bwd(self, grad_y, x, scores, idx, gate, scales):
        from ..kernels.topk import gather_gate_bwd

        return gather_gate_bwd(grad_y, x, scores, idx, gate, scales)

    def multiscale_pool(self, y, scales):
        from ..kernels.pool import multiscale_pool

        return multiscale_pool(y, scales)

    def multiscale_pool_bwd(self, grad, k, scales):
        from ..kernels.pool import multiscale_pool_bwd

        return multiscale_pool_bwd(grad, k, scales)

    def st_pool(self, x):
        from ..kernels.pool import st_pool

        return st_pool(x)

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        from ..kernels.pool import st_pool_bwd

        return st_pool_bwd(grad_temporal, grad_spatial)


backend = TritonBackend()
