"""Attention: ``stq.attention`` (spatial, docs/ops.md §2.1), ``stq.temporal_attention`` (§2.2) and routed
mask sets (§2.3).

- ``op.py``: the public functions, the custom ops and their autograd formula;
- ``checks.py``: argument validation; ``problem.py``: :class:`AttnProblem`, enums and limits;
- ``masks.py``: :class:`MaskSet` and the mask builders; ``reference.py``: the torch reference.

Backends: ``stquery/backends/*_backend.py`` (``attention_fwd`` / ``attention_bwd``), Triton
kernels in ``kernels/attention/``.
"""
from . import masks
from .masks import MaskSet
from .op import attention, temporal_attention

__all__ = ["attention", "temporal_attention", "MaskSet", "masks"]
