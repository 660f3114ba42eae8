"""Token selection's enums: the one home that checks, kernels and benchmarks import."""
from __future__ import annotations

# Gate names as backends receive them -> the code the Triton kernels take (``gate=None`` -> "none").
GATES = {"none": 0, "sigmoid": 1, "softmax": 2, "identity": 3}
# order="time": indices ascending; "score": descending score, ties by index.
ORDERS = ("time", "score")
