"""The ``torch`` backend: each op's torch reference (``stquery/ops/<op>/reference.py``), on any device.

Backward passes recompute the forward and differentiate it with ``torch.func.vjp`` (plain
``torch.autograd`` records nothing inside a custom op, which runs below the autograd dispatch
key). The reference keeps no softmax statistics: ``stats`` is returned NaN-filled, never read.
"""
from __future__ import annotations

import torch

from ..ops.attention import reference as attention_ref
from ..ops.pool import reference as pool_ref
from ..ops.topk import reference as topk_ref


def _grads(fn, inputs, grad_outputs):
    """Gradients of ``fn(*inputs)`` w.r.t. the inputs that are not None (None for the others)."""
    present = [i for i, t in enumerate(inputs) if t is not None]

    def f(*primals):
        args = list(inputs)
        for i, t in zip(present, primals):
            args[i] = t
        return fn(*args)

    _, vjp = torch.func.vjp(f, *(inputs[i] for i in present))
    grads = iter(vjp(grad_outputs if len(grad_outputs) > 1 else grad_outputs[0]))
    return [next(grads) if t is not None else None for t in inputs]


class TorchBackend:
    name = "torch"
    devices = frozenset({"cpu", "cuda", "mps", "xpu", "meta"})

    def supports(self, op, *args) -> list[str]:
        return []

    def attention_fwd(self, q, k, v, alpha, dense, key_padding, frame_lengths, prob):
        out = attention_ref.attend(q, k, v, alpha, dense, key_padding, frame_lengths, prob).contiguous()
        stats = torch.full((*q.shape[:3], prob.stats_width), float("nan"), dtype=torch.float32, device=q.device)
        return out, stats

    def attention_bwd(self, grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob):
        def f(q, k, v, alpha):
            return attention_ref.attend(q, k, v, alpha, dense, key_padding, frame_lengths, prob)

        dq, dk, dv, dalpha = _grads(f, (q, k, v, alpha), (grad_out,))
        return dq, dk, dv, dalpha

    def topk_select(self, scores, k, order):
        return topk_ref.select(scores, k, order)

    def gather_gate(self, x, scores, idx, gate, scales):
        return topk_ref.gather_gate(x, scores, idx, gate, scales)

    def gather_gate_bwd(self, grad_y, x, scores, idx, gate, scales):
        if gate == "none":  # scores get no gradient: keep them out of the vjp
            return _grads(lambda x: topk_ref.gather_gate(x, scores, idx, gate, scales), (x,), (grad_y,))[0], None
        dx, dscores = _grads(lambda x, s: topk_ref.gather_gate(x, s, idx, gate, scales), (x, scores), (grad_y,))
        return dx, dscores

    def multiscale_pool(self, y, scales):
        return pool_ref.pool(y, scales)

    # Both pools are linear: their gradient does not depend on the input's value.
    def multiscale_pool_bwd(self, grad, k, scales):
        y = grad.new_zeros(grad.shape[0], k, grad.shape[2])
        return _grads(lambda y: pool_ref.pool(y, scales), (y,), (grad,))[0]

    def st_pool(self, x):
        return pool_ref.st_means(x)

    def st_pool_bwd(self, grad_temporal, grad_spatial):
        (B, T, C), P = grad_temporal.shape, grad_spatial.shape[1]
        x = grad_temporal.new_zeros(B, T, P, C)
        return _grads(pool_ref.st_means, (x,), (grad_temporal, grad_spatial))[0]


backend = TorchBackend()
