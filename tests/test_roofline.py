"""The roofline counts of stquery/roofline.py against hand counts (docs/profiling.md §6).

Every expected number below is written out by hand from the shapes, not from the formulas under test.
"""
import math

import pytest
import torch

from stquery import roofline
from stquery.roofline import Cost


def test_plain_attention_forward():
    # q, k, v, o: [G=3, N=5, H=2, d=4] float32 = 3*5*2*4 = 120 elements = 480 bytes each.
    c = roofline.attention_cost(3, 5, 5, 2, 4, itemsize=4)
    assert c.bytes == 4 * 480  # read q, k, v; write o
    assert c.flops == 4 * 3 * 2 * 5 * 5 * 4  # 4·G·H·Nq·Nk·d = 2400
    assert c.flops == 2400


def test_cross_attention_forward_counts_nq_and_nk_separately():
    # q, o: [2, 3, 1, 8] bf16 = 48 elements = 96 bytes; k, v: [2, 7, 1, 8] = 112 elements = 224 bytes.
    c = roofline.attention_cost(2, 3, 7, 1, 8, itemsize=2)
    assert c.bytes == 96 + 224 + 224 + 96
    assert c.flops == 4 * 2 * 1 * 3 * 7 * 8  # 1344


def test_attention_backward_and_training_step():
    # q/k/v/o/dO/dq/dk/dv: [3, 5, 2, 4] fp16 = 120 elements = 240 bytes each.
    # Stats (no masks): float32 [3, 5, 2, 1] = 30 elements = 120 bytes.
    bwd = roofline.attention_cost(3, 5, 5, 2, 4, itemsize=2, passes="bwd")
    assert bwd.bytes == 5 * 240 + 120 + 3 * 240  # read q, k, v, o, dO, stats; write dq, dk, dv = 2040
    assert bwd.flops == 6000  # 2.5 × 2400
    both = roofline.attention_cost(3, 5, 5, 2, 4, itemsize=2, passes="fwd+bwd")
    fwd_bytes = 4 * 240
    assert both.bytes == fwd_bytes + 120 + 2040  # the training forward also writes the stats
    assert both.flops == 8400  # 3.5 × 2400


def test_temporal_attention_is_attention_over_frames():
    # q [B*T, L, H, d] with B=2, T=6, L=3, H=2, d=4 -> G = B·L = 6 groups of T = 6 frames.
    c = roofline.temporal_attention_cost(2, 6, 3, 2, 4, itemsize=2)
    n = 2 * 6 * 3 * 2 * 4  # 288 elements per tensor
    assert c.bytes == 4 * n * 2  # 2304
    assert c.flops == 4 * (2 * 3) * 2 * 6 * 6 * 4  # 6912


def test_dar_mix_counts_alpha_and_per_mask_stats():
    # Temporal, B=2, T=4, L=3, H=1, d=8, bf16; p = 3 masks (windows: free), alpha [B, L, 3] float32.
    n = 2 * 4 * 3 * 1 * 8  # 192 elements per tensor, 384 bytes
    alpha = 2 * 3 * 3 * 4  # 18 floats = 72 bytes
    kw = dict(itemsize=2, mode="mix", p=3, alpha_numel=18)
    fwd = roofline.temporal_attention_cost(2, 4, 3, 1, 8, **kw)
    assert fwd.bytes == 4 * 384 + alpha  # 1608
    # Mix-mode stats: float32 [B*T, L, H, p] = 2*4*3*1*3 = 72 floats = 288 bytes.
    bwd = roofline.temporal_attention_cost(2, 4, 3, 1, 8, passes="bwd", **kw)
    assert bwd.bytes == 5 * 384 + 288 + alpha + 3 * 384 + alpha  # reads + writes incl. dalpha = 3360
    assert fwd.flops == 4 * 6 * 1 * 4 * 4 * 8  # masks do not change the count: 3072
    scale = roofline.temporal_attention_cost(2, 4, 3, 1, 8, itemsize=2, mode="scale", p=3, alpha_numel=18, passes="bwd")
    assert scale.bytes == bwd.bytes - 288 + 96  # scale mode keeps one stat per row: 24 floats


def test_dense_masks_key_padding_and_frame_lengths_are_inputs():
    # G=2, Nq=Nk=4, H=1, d=2, fp32: tensors of 16 elements = 64 bytes.
    base = roofline.attention_cost(2, 4, 4, 1, 2, itemsize=4).bytes
    assert base == 256
    c = roofline.attention_cost(2, 4, 4, 1, 2, itemsize=4, mode="mix", p=2, dense_masks=2, alpha_numel=2,
                                key_padding=True, frame_lengths=0)
    # + 2 dense bool [4, 4] masks (32 bytes) + alpha 2 floats (8) + key_padding bool [2, 4] (8)
    assert c.bytes == 256 + 32 + 8 + 8
    t = roofline.attention_cost(2, 4, 4, 1, 2, itemsize=4, frame_lengths=3)
    assert t.bytes == 256 + 24  # 3 int64 frame lengths


def test_topk_counts():
    # x [B=2, N=10, C=4] bf16, scores float32 [2, 10], k = 3, sigmoid gate.
    fwd = roofline.topk_cost(2, 10, 4, 3, itemsize=2)
    # read scores 80 + 6 selected rows of x (24 elements, 48 bytes); write idx 6×8 = 48 + y 48
    assert fwd.bytes == 80 + 48 + 48 + 48
    assert fwd.flops == 24  # one gate multiply per selected element
    bwd = roofline.topk_cost(2, 10, 4, 3, itemsize=2, passes="bwd")
    # read dy 48, idx 48, selected scores 24 and rows 48; write dx [2, 10, 4] = 160 and dscores 80
    assert bwd.bytes == 48 + 48 + 24 + 48 + 160 + 80
    assert bwd.flops == 48
    assert roofline.topk_cost(2, 10, 4, 3, itemsize=2, passes="fwd+bwd") == fwd + bwd
    ungated = roofline.topk_cost(2, 10, 4, 3, itemsize=2, gate=False)
    assert ungated.flops == 0 and ungated.bytes == fwd.bytes


def test_topk_with_multiscale_pooling():
    # k = 5, scales (1, 2, 4): 5 + 3 + 2 = 10 pooled tokens; B=1, N=8, C=2, fp32.
    assert roofline.pooled_length(5, (1, 2, 4)) == 10
    c = roofline.topk_cost(1, 8, 2, 5, itemsize=4, gate=False, scales=(1, 2, 4))
    assert c.bytes == 32 + 40 + 40 + 80  # scores, 5 rows, idx, y [1, 10, 2]
    assert c.flops == 30  # 10 selected elements, one add each per scale


def test_st_pool_counts():
    # x [B=2, T=3, P=4, C=5] fp16 = 120 elements = 240 bytes; outputs [2, 3, 5] + [2, 4, 5] = 70 = 140 bytes.
    fwd = roofline.st_pool_cost(2, 3, 4, 5, itemsize=2)
    assert fwd == Cost(240 + 140, 240)
    bwd = roofline.st_pool_cost(2, 3, 4, 5, itemsize=2, passes="bwd")
    assert bwd == Cost(140 + 240, 240)


def test_headline_config_is_100_mb_per_tensor():
    # docs/profiling.md §6 (GPU headline): bf16, L=32, H=12, d=64, B·T = 2048 frames -> 100.7 MB per q/k/v.
    c = roofline.temporal_attention_cost(2048 // 16, 16, 32, 12, 64, itemsize=2)
    assert c.bytes == 4 * 2048 * 32 * 12 * 64 * 2
    assert c.bytes / 4 == 100_663_296


def test_bad_arguments():
    with pytest.raises(ValueError, match="passes"):
        roofline.attention_cost(1, 1, 1, 1, 1, itemsize=2, passes="backward")
    with pytest.raises(ValueError, match="mode"):
        roofline.attention_cost(1, 1, 1, 1, 1, itemsize=2, mode="sum")


def test_roofline_fraction():
    # 1e9 bytes at 100 GB/s = 10 ms; 1e12 FLOPs at 10 TFLOP/s = 100 ms -> compute-bound at 100 ms.
    c = Cost(10 ** 9, 10 ** 12)
    assert roofline.roofline_fraction(c, 0.2, 100.0, 10.0) == pytest.approx(0.5)
    assert roofline.roofline_fraction(Cost(10 ** 9, 0), 0.01, 100.0, 10.0) == pytest.approx(1.0)


def test_device_rates_are_measured():
    bw = roofline.copy_bandwidth("cpu", 1 << 20, reps=2)
    mm = roofline.matmul_rate("cpu", torch.float32, 64, reps=2)
    assert math.isfinite(bw) and bw > 0
    assert math.isfinite(mm) and mm > 0
