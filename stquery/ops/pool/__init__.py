"""Pooling: ``stq.multiscale_pool`` (LinVT) and ``stq.st_pool`` (RED-VILLM) (docs/ops.md §2.5).

- ``op.py``: the public functions, the custom ops and their autograd formula;
- ``checks.py``: argument validation; ``problem.py``: :func:`pooled_length`;
- ``reference.py``: the torch reference.

Backends: ``stquery/backends/*_backend.py`` (``multiscale_pool`` / ``st_pool`` and their ``_bwd``),
Triton kernels in ``kernels/pool/``, CUDA in ``csrc/``.
"""
from .op import multiscale_pool, st_pool

__all__ = ["multiscale_pool", "st_pool"]
