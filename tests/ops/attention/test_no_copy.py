"""docs/ops.md §1/§2.2: temporal attention reads [B*T, L, H, d] through views, never a copy of q/k/v."""
import pytest
import torch
from torch.profiler import profile

import stquery as stq

from ..helpers import strided

COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}


@pytest.mark.parametrize("contiguous", [True, False])
def test_temporal_attention_makes_no_input_copy(contiguous):
    B, T, L, H, d = 2, 16, 8, 4, 32
    make = (lambda s: torch.randn(*s)) if contiguous else (lambda s: strided(s, torch.float32))
    q, k, v = (make((B * T, L, H, d)) for _ in range(3))
    with profile(record_shapes=True) as prof:
        stq.temporal_attention(q, k, v, T, backend="torch")
    names = [e.name for e in prof.events()]
    assert "aten::scaled_dot_product_attention" in names  # the trace did record the op's insides
    big_copies = [
        (e.name, e.input_shapes)
        for e in prof.events()
        if e.name in COPIES and any(torch.Size(s).numel() >= q.numel() for s in e.input_shapes if s)
    ]
    assert big_copies == []
