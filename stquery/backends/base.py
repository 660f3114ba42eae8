"""The contract between the public ops and the backends that run them.

A backend is a module-level object with ``name``, ``supports(op, ...)`` and one function per
primitive below. The public ops (``stquery/ops``) validate inputs, resolve which backend runs
(:mod:`stquery.backends`), and call these primitives through ``torch.library.custom_op`` so that
autograd and ``torch.compile`` see one opaque op per primitive.

Primitives and their tensors (shapes in brackets; every tensor only needs ``stride(-1) == 1``):

``attention_fwd(q, k, v, alpha, dense, key_padding, frame_lengths, prob) -> (out, stats)``
    Spatial (``prob.frames == 0``): q ``[G, Nq, H, d]``, k/v ``[G, Nk, H, d]``, attention along dim 1.
    Temporal (``prob.frames == T``): q/k/v ``[B*T, L, H, d]``, attention over the T frames of each
    (b, l, h); Nq = Nk = T.
    alpha: None (``prob.mode == NONE``) or the routing weights already expanded (a view, strides may
    be 0) to ``[G, H, p]`` (spatial) or ``[B, L, H, p]`` (temporal), any float dtype.
    dense: None or bool ``[n_dense, Nq, Nk]``, the dense masks in the order they appear in
    ``prob.kinds``. key_padding: None or bool ``[G, Nk]`` (True = padded key). frame_lengths: None or
    int64 ``[B]``. out: ``q.shape``, ``q.dtype``. stats: float32 ``q.shape[:3] + (P,)`` with
    ``P = p`` in mix mode, else 1; what it holds is the backend's own business (softmax
    statistics for the backward pass), only its shape is fixed.
``attention_bwd(grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths, prob)
    -> (dq, dk, dv, dalpha)``: dq/dk/dv like q/k/v; dalpha None when alpha is None, else alpha's
    expanded shape in alpha's dtype (the op sums it down to the user's broadcast shape).
``topk_select(scores, k, order) -> idx``: scores ``[B, N]`` float, idx int64 ``[B, k]``; the k
    largest scores, ties to the lower index; ``order`` "time" (idx ascending) or "score"
    (descending score, ties by index).
``gather_gate(x, scores, idx, gate, scales) -> y``: x ``[B, N, C]``, ``y[b, i] = x[b, idx[b, i]] *
    g(scores[b, idx[b, i]])`` with gate in ("none", "sigmoid", "softmax", "identity"); softmax is
    over the k selected. ``scales`` empty: y ``[B, k, C]``; else y is ``multiscale_pool`` of that,
    ``[B, sum(ceil(k / s)), C]``.
``gather_gate_bwd(grad_y, x, scores, idx, gate, scales) -> (dx, dscores)``: dx ``[B, N, C]`` (zero
    off the selected rows), dscores ``[B, N]`` or None when gate == "none".
``multiscale_pool(y, scales) -> pooled`` and ``multiscale_pool_bwd(grad, k, scales) -> dy``.
``st_pool(x) -> (temporal, spatial)``: x ``[B, T, P, C]`` -> ``[B, T, C]`` (mean over P) and
    ``[B, P, C]`` (mean over T). ``st_pool_bwd(grad_temporal, grad_spatial) -> dx``.
"""
from __future__ import annotations

from dataclasses import dataclass

# Mask kinds, as passed to kernels.
WINDOW, CAUSAL, DENSE = 0, 1, 2
# Attention modes, as passed to kernels.
NONE, MIX, SCALE = 0, 1, 2
MODES = {"mix": MIX, "scale": SCALE}

OPS = ("attention", "topk_select", "gather_gate", "multiscale_pool", "st_pool")


@dataclass(frozen=True)
class AttnProblem:
    """The static (non-tensor) description of one attention call.

    ``frames``: 0 for spatial attention along dim 1, else T (temporal attention over frames).
    ``kinds``/``radii``: one entry per mask; radius -1 means unbounded (``window(None)``).
    ``global_start``/``global_end``: tokens in ``[start, end)`` see and are seen by all tokens
    under every mask (``(0, 0)``: none). ``mode``: NONE (no masks), MIX or SCALE.
    """

    frames: int
    kinds: tuple[int, ...]
    radii: tuple[int, ...]
    global_start: int
    global_end: int
    mode: int
    scale: float

    @property
    def p(self) -> int:
        return len(self.kinds)

    @property
    def stats_width(self) -> int:
        return self.p if self.mode == MIX else 1
