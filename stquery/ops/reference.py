"""Every op's torch reference in one namespace, for tests and benchmarks:
``from stquery.ops import reference as ref; ref.temporal_attention(q, k, v, T)``.

The references themselves live beside their ops (``stquery/ops/<op>/reference.py``).
"""
from .attention.reference import attend, attention, temporal_attention
from .pool.reference import multiscale_pool, pool, st_means, st_pool
from .topk.reference import gather_gate, gate_values, select, topk_tokens

__all__ = [
    "attention", "temporal_attention", "topk_tokens", "multiscale_pool", "st_pool",
    "attend", "select", "gate_values", "gather_gate", "pool", "st_means",
]
