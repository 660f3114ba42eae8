"""Multi-scale pooling's one shape rule, imported by the checks, the custom ops' fake kernels,
the Triton kernels and the roofline model."""
from __future__ import annotations


def pooled_length(k: int, scales) -> int:
    """Rows of a multi-scale pooled output: ``sum(ceil(k / s))``, or k with no scales."""
    return sum(-(-k // s) for s in scales) if scales else k
