"""Fused spatial / temporal attention with routed masks (DAR) in Triton (docs/ops.md §2.1–2.3).

- ``device.py``: the jitted kernels and their helpers (the algorithm is described there);
- ``launch.py``: :func:`attention_fwd`, :func:`attention_bwd` and :func:`supports`, what the
  ``triton`` backend calls;
- ``configs.py``: block sizes per kernel / dtype / head width / Triton version and
  :func:`aot_configs`, every configuration the launchers can launch (the AOT compile test).
"""
from .configs import aot_configs
from .launch import attention_bwd, attention_fwd, supports

__all__ = ["attention_fwd", "attention_bwd", "supports", "aot_configs"]
