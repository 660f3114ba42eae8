"""The public ops, one folder per op family: ``attention/``, ``topk/``, ``pool/``.

Each folder holds the op's public functions and custom ops (``op.py``), argument checks
(``checks.py``), problem type, enums and limits (``problem.py``) and torch reference
(``reference.py``). ``common.py`` holds the dtype lists and checks every op shares;
``reference.py`` here gathers the references for tests and benchmarks.
"""
from . import reference
from .attention import MaskSet, attention, masks, temporal_attention
from .pool import multiscale_pool, st_pool
from .topk import topk_tokens

__all__ = ["attention", "temporal_attention", "MaskSet", "masks", "topk_tokens", "multiscale_pool", "st_pool", "reference"]
