"""Token selection: ``stq.topk_tokens`` (docs/ops.md §2.4, LinVT's score-based selection with gating).

- ``op.py``: the public function, the custom ops and their autograd formula;
- ``checks.py``: argument validation; ``problem.py``: the gate and order enums;
- ``reference.py``: the torch reference.

Backends: ``stquery/backends/*_backend.py`` (``topk_select``, ``gather_gate`` /
``gather_gate_bwd``), Triton kernels in ``kernels/topk/``.
"""
from .op import topk_tokens

__all__ = ["topk_tokens"]
