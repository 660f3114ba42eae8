"""float64 gradcheck of the attention ops on the torch backend: q, k, v, alpha (both modes)."""
import pytest
import torch
from torch.autograd import gradcheck

import stquery as stq

from ..helpers import leaf as _leaf
from ..helpers import mask_set, qkv


@pytest.mark.parametrize("mode", ["mix", "scale"])
@pytest.mark.parametrize("kinds", [None, ("window", "causal", "dense")])
def test_temporal_attention(mode, kinds):
    B, T, L, H, d = 2, 3, 2, 2, 4
    q, k, v = (_leaf(t) for t in qkv((B * T, L, H, d)))
    masks = None if kinds is None else mask_set(kinds, T, T, global_tokens=(0, 1))
    inputs = [q, k, v]
    if masks is not None:
        inputs.append(_leaf(torch.rand(B, L, 3, dtype=torch.float64) + 0.2))
    lengths = torch.tensor([3, 2])

    def f(q, k, v, alpha=None):
        return stq.temporal_attention(q, k, v, T, masks=masks, alpha=alpha, mode=mode, frame_lengths=lengths, backend="torch")

    assert gradcheck(f, inputs)


@pytest.mark.parametrize("mode", ["mix", "scale"])
@pytest.mark.parametrize("kinds", [None, ("dense", "window"), ("causal",)])
def test_attention(mode, kinds):
    G, Nq, Nk, H, d = 2, 3, 4, 2, 5
    q, k, v = (_leaf(t) for t in qkv((G, Nq, H, d), (G, Nk, H, d)))
    masks = None if kinds is None else mask_set(kinds, Nq, Nk)
    inputs = [q, k, v]
    if masks is not None:
        inputs.append(_leaf(torch.rand(G, H, len(kinds), dtype=torch.float64) + 0.2))
    key_padding = torch.tensor([[False, True, False, False], [False, False, False, True]])

    def f(q, k, v, alpha=None):
        return stq.attention(q, k, v, masks=masks, alpha=alpha, mode=mode, key_padding=key_padding, backend="torch")

    assert gradcheck(f, inputs)
