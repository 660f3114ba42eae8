"""stquery: fused kernels for spatio-temporal attention, routed masks and token selection in video LMMs.

    import stquery as stq
    o = stq.temporal_attention(q, k, v, frames=T)        # q/k/v [B*T, L, H, d]
    o = stq.attention(q, k, v, masks=stq.MaskSet([stq.masks.window(2), stq.masks.window(None)]), alpha=a)
    y, idx = stq.topk_tokens(x, scores, k=1024, gate="sigmoid", scales=(1, 2, 4))

See docs/ops.md §2 for exact semantics; every op takes ``backend=`` ("torch", "triton", "cuda").
"""
from .backends import BackendUnavailable
from .ops import MaskSet, attention, masks, multiscale_pool, st_pool, temporal_attention, topk_tokens

__version__ = "0.1.0"
__all__ = [
    "attention",
    "temporal_attention",
    "MaskSet",
    "masks",
    "topk_tokens",
    "multiscale_pool",
    "st_pool",
    "BackendUnavailable",
]
