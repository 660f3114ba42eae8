"""docs/ops.md §1 for the attention ops and MaskSet: each bad input raises ValueError/TypeError naming the argument and the shapes."""
import pytest
import torch

import stquery as stq

from ..helpers import assert_error_names, mask_set

q4 = torch.randn(6, 4, 2, 8)
W = stq.MaskSet([stq.masks.window(1), stq.masks.window(None)])


def _attn(**kw):
    args = dict(q=q4, k=q4, v=q4)
    args.update(kw)
    return stq.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def _temporal(frames=3, **kw):
    args = dict(q=q4, k=q4, v=q4)
    args.update(kw)
    return stq.temporal_attention(args.pop("q"), args.pop("k"), args.pop("v"), frames, **args)


CASES = [
    # (call, exception, words the message must contain)
    (lambda: _attn(q=torch.randn(6, 4, 8)), ValueError, ["q", "[G, Nq, H, d]", "[6, 4, 8]"]),
    (lambda: _attn(q=[1.0]), TypeError, ["q"]),
    (lambda: _attn(k=torch.randn(6, 4, 3, 8)), ValueError, ["k", "[6, 4, 3, 8]"]),
    (lambda: _attn(v=torch.randn(6, 5, 2, 8)), ValueError, ["v", "[6, 5, 2, 8]"]),
    (lambda: _attn(k=q4.double()), TypeError, ["k", "float64"]),
    (lambda: _attn(q=q4.int(), k=q4.int(), v=q4.int()), TypeError, ["q", "int32"]),
    (lambda: _attn(q=q4.to("meta")), ValueError, ["k", "device"]),
    (lambda: _attn(q=torch.randn(6, 2, 8, 4).transpose(1, 3)), ValueError, ["q", "contiguous"]),
    (lambda: _attn(q=torch.randn(1, 2, 1, 300), k=torch.randn(1, 2, 1, 300), v=torch.randn(1, 2, 1, 300)), ValueError, ["q", "256", "300"]),
    (lambda: _attn(key_padding=torch.zeros(6, 3, dtype=torch.bool)), ValueError, ["key_padding", "[6, 4]", "[6, 3]"]),
    (lambda: _attn(key_padding=torch.zeros(6, 4)), TypeError, ["key_padding", "bool"]),
    (lambda: _attn(masks=[stq.masks.window(1)]), TypeError, ["masks", "MaskSet"]),
    (lambda: _attn(masks=W, mode="sum"), ValueError, ["mode", "'sum'"]),
    (lambda: _attn(mode="sum"), ValueError, ["mode", "'sum'"]),
    (lambda: _attn(q=torch.randn(6, 0, 2, 8)), ValueError, ["q", "at least 1", "[6, 0, 2, 8]"]),
    (lambda: _attn(alpha=torch.ones(2)), ValueError, ["alpha", "masks"]),
    (lambda: _attn(masks=W, alpha=torch.ones(3)), ValueError, ["alpha", "[6, 2, 2]", "[3]"]),
    (lambda: _attn(masks=W, alpha=torch.ones(5, 2)), ValueError, ["alpha", "[6, 2, 2]", "[5, 2]"]),
    (lambda: _attn(masks=W, alpha=torch.ones(6, 2, 2, 2)), ValueError, ["alpha", "[6, 2, 2, 2]"]),
    (lambda: _attn(masks=W, alpha=torch.ones(2, dtype=torch.long)), TypeError, ["alpha", "int64"]),
    (lambda: _attn(masks=mask_set(("dense",), 4, 5)), ValueError, ["masks", "[4, 4]", "[4, 5]"]),
    (lambda: _attn(k=torch.randn(6, 5, 2, 8), v=torch.randn(6, 5, 2, 8), masks=mask_set(("window",), 4, 5, (0, 1))), ValueError, ["global_tokens", "Nq"]),
    (lambda: _attn(masks=mask_set(("window",), 4, 4, (2, 9))), ValueError, ["global_tokens", "(2, 9)"]),
    (lambda: _attn(scale=float("nan")), ValueError, ["scale"]),
    (lambda: _temporal(frames=4), ValueError, ["frames", "[6, 4, 2, 8]"]),
    (lambda: _temporal(frames=0), ValueError, ["frames"]),
    (lambda: _temporal(k=torch.randn(6, 5, 2, 8)), ValueError, ["k", "[6, 5, 2, 8]", "[6, 4, 2, 8]"]),
    (lambda: _temporal(frame_lengths=torch.tensor([3, 3, 3])), ValueError, ["frame_lengths", "[2]", "[3]"]),
    (lambda: _temporal(frame_lengths=torch.tensor([3.0, 3.0])), TypeError, ["frame_lengths", "float32"]),
    (lambda: _temporal(masks=W, alpha=torch.ones(2, 3, 2)), ValueError, ["alpha", "[2, 4, 2, 2]", "[2, 3, 2]"]),
    (lambda: _temporal(masks=mask_set(("dense",), 4, 4)), ValueError, ["masks", "[3, 3]"]),
    (lambda: stq.MaskSet([]), ValueError, ["MaskSet", "1..8"]),
    (lambda: stq.MaskSet([stq.masks.window(1)], global_tokens=5), ValueError, ["global_tokens", "(start, end)"]),
    (lambda: stq.MaskSet([stq.masks.window(1)], global_tokens=(0, 1, 2)), ValueError, ["global_tokens", "(0, 1, 2)"]),
    (lambda: stq.MaskSet([stq.masks.window(1)] * 9), ValueError, ["MaskSet", "1..8"]),
    (lambda: stq.masks.window(-1), ValueError, ["window", "-1"]),
    (lambda: stq.masks.dense(torch.ones(3, 3)), TypeError, ["dense", "bool"]),
    (lambda: stq.masks.dense(torch.ones(3, dtype=torch.bool)), ValueError, ["dense", "[Nq, Nk]", "(3,)"]),
    (lambda: stq.MaskSet([stq.masks.dense(torch.ones(3, 3, dtype=torch.bool)), stq.masks.dense(torch.ones(3, 4, dtype=torch.bool))]), ValueError, ["dense", "(3, 4)"]),
]

@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_names_the_argument(case):
    assert_error_names(*CASES[case])
