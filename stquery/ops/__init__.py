"""The public ops; see :mod:`stquery` for the list."""
from . import masks, reference
from .attention import attention, temporal_attention
from .masks import MaskSet
from .pool import multiscale_pool, st_pool
from .topk import topk_tokens

__all__ = ["attention", "temporal_attention", "MaskSet", "masks", "topk_tokens", "multiscale_pool", "st_pool", "reference"]
