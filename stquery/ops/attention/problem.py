"""The attention problem type, its enums and its limits: the one home that checks, kernels,
models and the profiler import.

The public functions turn their arguments into tensors plus one :class:`AttnProblem` (everything
static); backends receive exactly that (see the contract in :mod:`stquery.backends`).
"""
from __future__ import annotations

from dataclasses import dataclass

# Mask kinds, as passed to kernels.
WINDOW, CAUSAL, DENSE = 0, 1, 2
# Attention modes, as passed to kernels: NONE is plain attention (no mask set).
NONE, MIX, SCALE = 0, 1, 2
MODES = {"mix": MIX, "scale": SCALE}

MAX_HEAD_DIM = 256  # head width d: 1..MAX_HEAD_DIM
MAX_MASKS = 8  # masks in one MaskSet (the kernels keep a tile's visibility as p <= 8 bits)


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
