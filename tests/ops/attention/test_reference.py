"""The attention reference against per-element loops written from docs/ops.md §2.1–2.3 (naive.py here)."""
import pytest
import torch

import stquery as stq
from stquery.ops import reference as ref

from . import naive
from ..helpers import mask_set, qkv

# (kinds, mode, global tokens) — p = 1..4 masks of each kind across the list, both modes.
MASK_CASES = [
    (None, "mix", None),
    (("window",), "mix", None),
    (("causal",), "scale", None),
    (("dense",), "mix", None),
    (("window", "window"), "scale", (0, 1)),
    (("causal", "dense", "window"), "mix", (1, 3)),
    (("dense", "dense", "causal"), "scale", None),
    (("window", "causal", "dense", "window"), "mix", None),
    (("causal", "causal", "causal", "causal"), "scale", (2, 3)),
    (("dense", "dense", "dense", "dense"), "mix", (0, 2)),
    (("window",) * 3, "mix", None),
]


def _alpha(shape, signed=False):
    a = torch.rand(*shape, dtype=torch.float64) + 0.1
    return a - 0.4 if signed else a


@pytest.mark.parametrize("kinds,mode,global_tokens", MASK_CASES)
@pytest.mark.parametrize("T,L", [(1, 2), (3, 1), (17, 2)])
def test_temporal_matches_loops(kinds, mode, global_tokens, T, L):
    B, H, d = 2, 2, 5
    q, k, v = qkv((B * T, L, H, d))
    if global_tokens is not None and global_tokens[1] > T:
        global_tokens = (0, T)
    masks = None if kinds is None else mask_set(kinds, T, T, global_tokens)
    alpha = None if kinds is None else _alpha((B, L, len(kinds)), signed=mode == "scale")
    lengths = torch.tensor([T, max(T - 2, 0)])
    for fl in (None, lengths):
        got = ref.temporal_attention(q, k, v, T, masks=masks, alpha=alpha, mode=mode, frame_lengths=fl)
        want = naive.temporal_attention(q, k, v, T, masks, alpha, mode, None, fl)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kinds,mode,global_tokens", MASK_CASES)
@pytest.mark.parametrize("Nq,Nk", [(5, 5), (3, 7), (1, 4)])
def test_spatial_matches_loops(kinds, mode, global_tokens, Nq, Nk):
    G, H, d = 2, 3, 4
    q, k, v = qkv((G, Nq, H, d), (G, Nk, H, d))
    if Nq != Nk:
        global_tokens = None
    masks = None if kinds is None else mask_set(kinds, Nq, Nk, global_tokens)
    alpha = None if kinds is None else _alpha((G, H, len(kinds)), signed=mode == "scale")
    key_padding = torch.rand(G, Nk) > 0.7
    key_padding[1] = True  # every key of group 1 padded: its rows are empty
    for kp in (None, key_padding):
        got = ref.attention(q, k, v, masks=masks, alpha=alpha, mode=mode, scale=0.7, key_padding=kp)
        want = naive.attention(q, k, v, masks, alpha, mode, 0.7, kp)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("alpha_shape", [(3,), (2, 3), (2, 4, 3)])
def test_alpha_broadcast_spatial(alpha_shape):
    q, k, v = qkv((2, 5, 4, 8))
    masks = mask_set(("window", "causal", "dense"), 5, 5)
    alpha = _alpha(alpha_shape)
    got = ref.attention(q, k, v, masks=masks, alpha=alpha)
    torch.testing.assert_close(got, naive.attention(q, k, v, masks, alpha), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha_shape", [(2,), (3, 2), (3, 2, 2), (3, 2, 4, 2)])
def test_alpha_broadcast_temporal(alpha_shape):
    q, k, v = qkv((3 * 4, 2, 4, 8))
    masks = mask_set(("window", "causal"), 4, 4)
    alpha = _alpha(alpha_shape)
    got = ref.temporal_attention(q, k, v, 4, masks=masks, alpha=alpha)
    torch.testing.assert_close(got, naive.temporal_attention(q, k, v, 4, masks, alpha), rtol=1e-10, atol=1e-10)


def test_empty_mask_rows_are_zero_not_nan():
    q, k, v = qkv((1, 4, 1, 8))
    none_visible = stq.MaskSet([stq.masks.dense(torch.zeros(4, 4, dtype=torch.bool))])
    for mode in ("mix", "scale"):
        out = ref.attention(q, k, v, masks=none_visible, mode=mode)
        assert torch.equal(out, torch.zeros_like(out))
    lengths = torch.tensor([0])
    out = ref.temporal_attention(q.view(4, 1, 1, 8), k.view(4, 1, 1, 8), v.view(4, 1, 1, 8), 4, frame_lengths=lengths)
    assert torch.equal(out, torch.zeros_like(out))


def test_temporal_equals_reshape_attend_reshape():
    """docs/ops.md §2.2: the same as permuting to [B*L, T, H, d], attending, permuting back."""
    B, T, L, H, d = 2, 6, 3, 2, 8
    q, k, v = qkv((B * T, L, H, d))
    swap = lambda t: t.reshape(B, T, L, H, d).transpose(1, 2).reshape(B * L, T, H, d)
    want = ref.attention(swap(q), swap(k), swap(v)).reshape(B, L, T, H, d).transpose(1, 2).reshape(B * T, L, H, d)
    torch.testing.assert_close(ref.temporal_attention(q, k, v, T), want)


def test_plain_path_for_unmergeable_strides():
    """q/k/v sliced out of a packed qkv buffer: L and H don't merge, the reference still works."""
    B, T, L, H, d = 2, 5, 3, 2, 4
    qkv_buf = torch.randn(B * T, L, 3, H, d, dtype=torch.float64)
    q, k, v = qkv_buf.unbind(2)
    torch.testing.assert_close(ref.temporal_attention(q, k, v, T), naive.temporal_attention(q, k, v, T))
