"""Score-based top-k token selection with a fused gated gather (LinVT SVR; docs/ops.md §2.4).

LinVT (Sec. 3.2.1, "Score-based token selection") keeps the k tokens of highest significance
score out of the T*P tokens of a video, then pools them at several temporal scales (MTP)::

    idx[b]  = the k largest scores[b, :] (ties: lower index first)
    y[b, i] = x[b, idx[b, i]] * g(scores[b, idx[b, i]])
    g       = 1 | sigmoid | softmax over the k selected | identity

Selection is a radix select, not a sort. Scores become order-preserving uint32 keys; four passes
of 8-bit digits (most significant first), each a per-chunk ``tl.histogram`` summed into a global
``[B, 4, 256]`` histogram with integer atomics (exact, so deterministic), pin down the k-th largest
key T and how many keys equal to T to keep (the lowest-index ones). A counting pass and a write
pass (exclusive prefix over chunks, ``tl.cumsum`` within a chunk) then emit the indices in time
order; ``order="score"`` ranks them by (key desc, index asc) by counting (O(k^2) compares, cheap for
k <= 8192). Scores are read 6 times, from L2 after the first (1 MiB per row at N = 262,144).

The gather reads each selected row once with loads along C, applies the gate in fp32 and either
stores ``[B, k, C]`` or, with power-of-two ``scales``, pools the tile at every scale from registers
(``kernels.pool._store_pooled``) and writes only the pooled ``[B, sum ceil(k/s), C]``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from stquery.kernels import empty, triton36
from stquery.ops.topk import problem as topk_problem
from stquery.ops.topk.problem import GATES

from .. import pool as _pool
from ..pool import _pool_grad_rows, _row_tile, _store_pooled

# Radix select: 4 passes x 8 bits over uint32 keys.
RADIX_BITS = 8
NUM_PASSES = 32 // RADIX_BITS
# Launch configurations, as in kernels/pool/: a kernel's constexprs and num_warps, passed as
# ``**config`` to the launch and to the AOT test (tests/kernels/test_topk_aot.py).
SELECT_CONFIG = dict(BLOCK_N=2048, BITS=RADIX_BITS, num_warps=8)
SELECT_BLOCK_CH = 256  # chunk counts summed per step by _select_write_kernel's prefix
RANK_CONFIG = dict(BLOCK_I=64, BLOCK_J=64, num_warps=4)
STATS_CONFIG = dict(BLOCK_K=1024, num_warps=4)
GATHER_CONFIG = _pool.token_tile(32, 128, 8)
# Triton 3.6 spills registers in the softmax + pool variant on sm_80 at 32 x 64.
BWD_CONFIG = dict(BLOCK_N=16 if triton36() else 32, BLOCK_C=64, num_warps=8)
INVERSE_CONFIG = dict(BLOCK_K=1024, num_warps=4)


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------
@triton.jit
def _order_key(s):
    """float32 -> uint32 with a > b (floats) <=> key(a) > key(b); -0.0 and +0.0 map together."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.uint32, bitcast=True)
    sign = bits >> 31
    return tl.where(sign != 0, ~bits, bits | (sign + 1) << 31)


@triton.jit
def _u32(v):
    """An int32 scalar (or a Python int) as a uint32 scalar: shift amounts for uint32 keys."""
    return v + tl.zeros([], dtype=tl.uint32)


@triton.jit
def _radix_state(hist_ptr, k, n_passes, BITS: tl.constexpr):
    """Replay the first ``n_passes`` digit histograms of one row (``[NUM_PASSES, 2**BITS]`` int32).

    Returns (prefix, k_rem): the top ``n_passes*BITS`` bits of the k-th largest key, and how many
    of the keys sharing that prefix still belong to the top k. After all passes prefix is the k-th
    largest key T itself and k_rem the number of keys equal to T to keep.
    """
    NB: tl.constexpr = 1 << BITS
    # [NB]
    bins = tl.arange(0, NB)
    prefix = tl.zeros([], dtype=tl.uint32)
    k_rem = k + tl.zeros([], dtype=tl.int32)
    for q in range(n_passes):
        # [NB] counts of the keys matching prefix, by digit q
        h = tl.load(hist_ptr + q * NB + bins)
        # [NB] keys with digit >= d
        ge = tl.sum(h, axis=0) - tl.cumsum(h, axis=0) + h
        d = tl.max(tl.where(ge >= k_rem, bins, -1), axis=0)
        k_rem -= tl.sum(tl.where(bins > d, h, 0), axis=0)
        prefix |= d.to(tl.uint32) << _u32(32 - BITS - q * BITS)
    return prefix, k_rem


@triton.jit
def _hist_row(hist_ptr, pid_b, BITS: tl.constexpr):
    """Row pid_b of the ``[B, 32 // BITS, 2**BITS]`` digit histograms."""
    return hist_ptr + pid_b * ((32 // BITS) << BITS)


@triton.jit
def _load_keys(scores_ptr, stride_sb, pid_b, pid_n, N, BLOCK_N: tl.constexpr):
    offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    # [BLOCK_N]
    s = tl.load(scores_ptr + pid_b * stride_sb + offs, mask=mask, other=0.0).to(tl.float32)
    return offs, mask, _order_key(s)


@triton.jit
def _selected_scores(scores_ptr, stride_sb, idx_ptr, stride_ib, pid_b, k0, k, other,
                     BLOCK: tl.constexpr):
    """Entries ``[k0, k0 + BLOCK)`` of row pid_b's k selected indices and their scores.

    Returns (offs ``[BLOCK]``, mask = offs < k, idx = idx[pid_b, offs] (0 where masked),
    fp32 scores[pid_b, idx] (``other`` where masked)).
    """
    offs = k0 + tl.arange(0, BLOCK)
    mask = offs < k
    idx = tl.load(idx_ptr + pid_b * stride_ib + offs, mask=mask, other=0)
    s = tl.load(scores_ptr + pid_b * stride_sb + idx, mask=mask, other=other).to(tl.float32)
    return offs, mask, idx, s


@triton.jit(do_not_specialize=["pass_id"])
def _radix_hist_kernel(scores_ptr, stride_sb, hist_ptr, N, k, pass_id,
                       BLOCK_N: tl.constexpr, BITS: tl.constexpr):
    """Histogram digit ``pass_id`` of the keys that match the prefix fixed by earlier passes."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    NB: tl.constexpr = 1 << BITS
    hist_row = _hist_row(hist_ptr, pid_b, BITS)
    prefix, k_rem = _radix_state(hist_row, k, pass_id, BITS)
    offs, mask, key = _load_keys(scores_ptr, stride_sb, pid_b, pid_n, N, BLOCK_N)
    # two shifts: a single shift by 32 (pass 0) is undefined
    hi = _u32(31 - pass_id * BITS)
    match = mask & ((((key ^ prefix) >> hi) >> 1) == 0)
    digit = ((key >> _u32(32 - BITS - pass_id * BITS)) & (NB - 1)).to(tl.int32)
    # [NB]
    h = tl.histogram(digit, NB, mask=match)
    tl.atomic_add(hist_row + pass_id * NB + tl.arange(0, NB), h, mask=h > 0, sem="relaxed")


@triton.jit
def _select_count_kernel(scores_ptr, stride_sb, hist_ptr, counts_ptr, N, k,
                         BLOCK_N: tl.constexpr, BITS: tl.constexpr):
    """Per chunk: how many keys are > T and == T (T = the k-th largest key)."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    thr, k_eq = _radix_state(_hist_row(hist_ptr, pid_b, BITS), k, 32 // BITS, BITS)
    offs, mask, key = _load_keys(scores_ptr, stride_sb, pid_b, pid_n, N, BLOCK_N)
    n_gt = tl.sum((mask & (key > thr)).to(tl.int32), axis=0)
    n_eq = tl.sum((mask & (key == thr)).to(tl.int32), axis=0)
    row = counts_ptr + (pid_b * tl.num_programs(0) + pid_n) * 2
    tl.store(row, n_gt)
    tl.store(row + 1, n_eq)


@triton.jit
def _select_write_kernel(scores_ptr, stride_sb, hist_ptr, counts_ptr, idx_ptr, stride_ib, N, k,
                         BLOCK_N: tl.constexpr, BLOCK_CH: tl.constexpr, BITS: tl.constexpr):
    """Write the selected indices in ascending order: keys > T, then the first k_eq keys == T."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    thr, k_eq = _radix_state(_hist_row(hist_ptr, pid_b, BITS), k, 32 // BITS, BITS)
    # exclusive prefix over the chunks before this one
    counts_row = counts_ptr + pid_b * tl.num_programs(0) * 2
    gt_before = tl.zeros([], dtype=tl.int32)
    eq_before = tl.zeros([], dtype=tl.int32)
    for c0 in range(0, pid_n, BLOCK_CH):
        # [BLOCK_CH]
        ch = c0 + tl.arange(0, BLOCK_CH)
        m = ch < pid_n
        gt_before += tl.sum(tl.load(counts_row + ch * 2, mask=m, other=0), axis=0)
        eq_before += tl.sum(tl.load(counts_row + ch * 2 + 1, mask=m, other=0), axis=0)
    offs, mask, key = _load_keys(scores_ptr, stride_sb, pid_b, pid_n, N, BLOCK_N)
    # [BLOCK_N]
    is_gt = (mask & (key > thr)).to(tl.int32)
    is_eq = (mask & (key == thr)).to(tl.int32)
    eq_rank = eq_before + tl.cumsum(is_eq, axis=0) - is_eq
    sel = is_gt | (is_eq & (eq_rank < k_eq).to(tl.int32))
    pos = gt_before + tl.minimum(eq_before, k_eq) + tl.cumsum(sel, axis=0) - sel
    tl.store(idx_ptr + pid_b * stride_ib + pos, offs.to(tl.int64), mask=sel != 0)


@triton.jit
def _score_rank_kernel(scores_ptr, stride_sb, time_idx_ptr, idx_ptr, stride_ib, k,
                       BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Reorder time-ordered indices by (score desc, index asc): rank_i = #{j beating i}."""
    pid_i = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    # [BLOCK_I]; time_idx is contiguous [B, k]
    offs_i, mask_i, idx_i, s_i = _selected_scores(scores_ptr, stride_sb, time_idx_ptr, k, pid_b,
                                                  pid_i * BLOCK_I, k, 0.0, BLOCK_I)
    key_i = _order_key(s_i)
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, k, BLOCK_J):
        # [BLOCK_J]
        offs_j, mask_j, idx_j, s_j = _selected_scores(scores_ptr, stride_sb, time_idx_ptr, k,
                                                      pid_b, j0, k, 0.0, BLOCK_J)
        key_j = _order_key(s_j)
        # [BLOCK_I, BLOCK_J]; time order: j < i <=> idx_j < idx_i
        beats = (key_j[None, :] > key_i[:, None]) | (
            (key_j[None, :] == key_i[:, None]) & (offs_j[None, :] < offs_i[:, None]))
        rank += tl.sum((beats & mask_j[None, :]).to(tl.int32), axis=1)
    tl.store(idx_ptr + pid_b * stride_ib + rank, idx_i, mask=mask_i)


# ---------------------------------------------------------------------------------------------
# Gate and gather
# ---------------------------------------------------------------------------------------------
@triton.jit
def _softmax_stats_kernel(scores_ptr, stride_sb, idx_ptr, stride_ib, stats_ptr, k,
                          BLOCK_K: tl.constexpr):
    """stats[b] = (max, 1 / sum exp(s - max)) over the k selected scores, online, fp32."""
    pid_b = tl.program_id(0).to(tl.int64)
    m = tl.full([], float("-inf"), tl.float32)
    l = tl.zeros([], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        # [BLOCK_K]
        offs, mask, idx, s = _selected_scores(scores_ptr, stride_sb, idx_ptr, stride_ib, pid_b, k0,
                                              k, float("-inf"), BLOCK_K)
        m_new = tl.maximum(m, tl.max(s, axis=0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.where(mask, tl.exp(s - m_new), 0.0), axis=0)
        m = m_new
    tl.store(stats_ptr + pid_b * 2, m)
    tl.store(stats_ptr + pid_b * 2 + 1, 1.0 / l)


@triton.jit
def _gate(s, stats_ptr, pid_b, GATE: tl.constexpr):
    """[BLOCK] fp32 scores -> gate values (GATES: 0 none, 1 sigmoid, 2 softmax, 3 identity)."""
    if GATE == 1:
        g = tl.sigmoid(s)
    elif GATE == 2:
        m = tl.load(stats_ptr + pid_b * 2)
        inv_l = tl.load(stats_ptr + pid_b * 2 + 1)
        g = tl.exp(s - m) * inv_l
    elif GATE == 3:
        g = s
    else:
        g = tl.full(s.shape, 1.0, tl.float32)
    return g


@triton.jit
def _gather_gate_kernel(x_ptr, stride_xb, stride_xn, scores_ptr, stride_sb, idx_ptr, stride_ib,
                        stats_ptr, y_ptr, stride_yb, stride_yk, tab_ptr, n_scales, k, C,
                        GATE: tl.constexpr, POOL: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_C: tl.constexpr, LOG_BK: tl.constexpr):
    pid_k, pid_b, offs_k, offs_c, mask_k, mask_c = _row_tile(k, C, BLOCK_K, BLOCK_C)
    m2 = mask_k[:, None] & mask_c[None, :]
    # [BLOCK_K] int64
    idx = tl.load(idx_ptr + pid_b * stride_ib + offs_k, mask=mask_k, other=0)
    # [BLOCK_K, BLOCK_C]
    tile = tl.load(x_ptr + pid_b * stride_xb + idx[:, None] * stride_xn + offs_c[None, :],
                   mask=m2, other=0.0).to(tl.float32)
    if GATE != 0:
        # [BLOCK_K]
        s = tl.load(scores_ptr + pid_b * stride_sb + idx, mask=mask_k, other=0.0).to(tl.float32)
        # rows past k must stay 0 for the pooling tree: exp(0 - m) overflows for very negative m
        g = tl.where(mask_k, _gate(s, stats_ptr, pid_b, GATE), 0.0)
        tile = tile * g[:, None]
    y_row = y_ptr + pid_b * stride_yb
    if POOL:
        _store_pooled(tile, y_row, stride_yk, pid_k, k, offs_c, mask_c, tab_ptr, n_scales,
                      BLOCK_K, BLOCK_C, LOG_BK)
    else:
        tl.store(y_row + offs_k.to(tl.int64)[:, None] * stride_yk + offs_c[None, :],
                 tile.to(y_ptr.dtype.element_ty), mask=m2)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _inverse_kernel(idx_ptr, stride_ib, pos_ptr, N, k, BLOCK_K: tl.constexpr):
    """pos[b, idx[b, i]] = i (pos pre-filled with -1)."""
    pid_k = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = offs < k
    idx = tl.load(idx_ptr + pid_b * stride_ib + offs, mask=mask, other=0)
    tl.store(pos_ptr + pid_b * N + idx, offs, mask=mask)


@triton.jit
def _gather_gate_bwd_kernel(grad_ptr, stride_gb, stride_gk, x_ptr, stride_xb, stride_xn,
                            scores_ptr, stride_sb, stats_ptr, pos_ptr, tab_ptr, n_scales,
                            dx_ptr, stride_db, stride_dn, ds_ptr, stride_dsb, dg_ptr, N, k, C,
                            GATE: tl.constexpr, POOL: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows n of x: dx[n] = dy[pos[n]] * g (0 where unselected), dg = <dy[pos[n]], x[n]>.

    Every element of dx (and of dscores for sigmoid/identity) is written exactly once, zeros
    included, so no separate zero fill. Softmax gates park dg (by selection position) for
    ``_softmax_bwd_kernel``, which needs the sum over all k.
    """
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # [BLOCK_N] selection position, -1 if not selected
    pos = tl.load(pos_ptr + pid_b * N + offs_n, mask=mask_n, other=-1)
    sel = pos >= 0
    s = tl.load(scores_ptr + pid_b * stride_sb + offs_n, mask=sel, other=0.0).to(tl.float32)
    g = tl.where(sel, _gate(s, stats_ptr, pid_b, GATE), 0.0)  # unselected rows: 0, never 0 * inf
    dg = tl.zeros([BLOCK_N], dtype=tl.float32)
    rows_x = offs_n.to(tl.int64)[:, None] * stride_xn
    rows_d = offs_n.to(tl.int64)[:, None] * stride_dn
    grad_row = grad_ptr + pid_b * stride_gb
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        m_sel = sel[:, None] & mask_c[None, :]
        # [BLOCK_N, BLOCK_C]
        if POOL:
            dy = _pool_grad_rows(grad_row, stride_gk, pos, sel, offs_c, mask_c, tab_ptr, n_scales,
                                 k, BLOCK_N, BLOCK_C)
        else:
            dy = tl.load(grad_row + pos.to(tl.int64)[:, None] * stride_gk + offs_c[None, :],
                         mask=m_sel, other=0.0).to(tl.float32)
        if GATE != 0:
            # [BLOCK_N, BLOCK_C]
            xv = tl.load(x_ptr + pid_b * stride_xb + rows_x + offs_c[None, :], mask=m_sel,
                         other=0.0).to(tl.float32)
            dg += tl.sum(dy * xv, axis=1)
            dy = dy * g[:, None]
        tl.store(dx_ptr + pid_b * stride_db + rows_d + offs_c[None, :],
                 dy.to(dx_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])
    ds_row = ds_ptr + pid_b * stride_dsb + offs_n
    if GATE == 1:
        tl.store(ds_row, (dg * g * (1.0 - g)).to(ds_ptr.dtype.element_ty), mask=mask_n)
    elif GATE == 3:
        tl.store(ds_row, dg.to(ds_ptr.dtype.element_ty), mask=mask_n)
    elif GATE == 2:
        tl.store(dg_ptr + pid_b * k + pos, dg, mask=sel)
        tl.store(ds_row, tl.zeros([BLOCK_N], dtype=ds_ptr.dtype.element_ty), mask=mask_n & ~sel)


@triton.jit
def _softmax_bwd_kernel(scores_ptr, stride_sb, idx_ptr, stride_ib, stats_ptr, dg_ptr, ds_ptr,
                        stride_dsb, k, BLOCK_K: tl.constexpr):
    """dscores[idx_i] = g_i * (dg_i - sum_j g_j dg_j) for the softmax gate."""
    pid_b = tl.program_id(0).to(tl.int64)
    m = tl.load(stats_ptr + pid_b * 2)
    inv_l = tl.load(stats_ptr + pid_b * 2 + 1)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        # [BLOCK_K]
        offs, mask, idx, s = _selected_scores(scores_ptr, stride_sb, idx_ptr, stride_ib, pid_b, k0,
                                              k, 0.0, BLOCK_K)
        dg = tl.load(dg_ptr + pid_b * k + offs, mask=mask, other=0.0)
        acc += tl.where(mask, tl.exp(s - m) * inv_l * dg, 0.0)
    total = tl.sum(acc, axis=0)
    for k0 in range(0, k, BLOCK_K):
        # [BLOCK_K]
        offs, mask, idx, s = _selected_scores(scores_ptr, stride_sb, idx_ptr, stride_ib, pid_b, k0,
                                              k, 0.0, BLOCK_K)
        dg = tl.load(dg_ptr + pid_b * k + offs, mask=mask, other=0.0)
        ds = tl.exp(s - m) * inv_l * (dg - total)
        tl.store(ds_ptr + pid_b * stride_dsb + idx, ds.to(ds_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
_ARG_NAMES = {"topk_select": ("scores",), "gather_gate": ("x", "scores", "idx")}


def supports(op: str, *args) -> list[str]:
    """Reasons the Triton kernels can't run ``op`` on these arguments ([] = they can).

    ``args`` are the primitive's arguments as in :class:`stquery.backends.Backend` (tensors first).
    """
    if op not in _ARG_NAMES:
        return [f"kernels.topk does not implement {op!r}"]
    reasons = []
    for name, t in zip(_ARG_NAMES[op], args):
        reasons += _pool.tensor_reasons(name, t)
    scores = args[0] if op == "topk_select" else args[1] if len(args) > 1 else None
    if isinstance(scores, torch.Tensor) and scores.dim() == 2 and scores.shape[1] >= 2 ** 31:
        reasons.append(f"scores has N = {scores.shape[1]}; the kernels index rows with int32 (N < 2**31)")
    return reasons


def topk_select(scores: torch.Tensor, k: int, order: str) -> torch.Tensor:
    """Indices of the k largest ``scores`` ``[B, N]`` per row -> int64 ``[B, k]``.

    ``order="time"``: ascending index; ``"score"``: descending score. Ties: lower index first.
    """
    B, N = scores.shape
    idx = empty((B, k), torch.int64, scores.device)
    if B == 0 or k == 0:
        return idx
    cfg = SELECT_CONFIG
    n_chunks = triton.cdiv(N, cfg["BLOCK_N"])
    grid = (n_chunks, B)
    hist = torch.zeros((B, NUM_PASSES, 1 << RADIX_BITS), dtype=torch.int32, device=scores.device)
    for p in range(NUM_PASSES):
        _radix_hist_kernel[grid](scores, scores.stride(0), hist, N, k, p, **cfg)
    counts = torch.empty((B, n_chunks, 2), dtype=torch.int32, device=scores.device)
    _select_count_kernel[grid](scores, scores.stride(0), hist, counts, N, k, **cfg)
    time_idx = idx if order == "time" else torch.empty((B, k), dtype=torch.int64,
                                                       device=scores.device)
    _select_write_kernel[grid](scores, scores.stride(0), hist, counts, time_idx,
                               time_idx.stride(0), N, k, BLOCK_CH=SELECT_BLOCK_CH, **cfg)
    if order == "score" and k <= topk_problem.RANK_MAX_K:
        rc = RANK_CONFIG
        _score_rank_kernel[(triton.cdiv(k, rc["BLOCK_I"]), B)](
            scores, scores.stride(0), time_idx, idx, idx.stride(0), k, **rc)
    elif order == "score":
        topk_problem.sort_by_score(scores, time_idx, idx)
    return idx


def _softmax_stats(scores, idx):
    B, k = idx.shape
    stats = torch.empty((B, 2), dtype=torch.float32, device=scores.device)
    _softmax_stats_kernel[(B,)](scores, scores.stride(0), idx, idx.stride(0), stats, k,
                                **STATS_CONFIG)
    return stats


def gather_gate(x: torch.Tensor, scores: torch.Tensor, idx: torch.Tensor, gate: str,
                scales=()) -> torch.Tensor:
    """``y[b, i] = x[b, idx[b, i]] * g(scores[b, idx[b, i]])``; pooled when ``scales`` is given.

    x ``[B, N, C]``, scores ``[B, N]``, idx int64 ``[B, k]`` -> ``[B, k, C]``, or with scales
    ``[B, sum_s ceil(k / s), C]``. Power-of-two scales <= 256 are pooled in the gather (no
    ``[B, k, C]`` is stored); any other scale goes through ``[B, k, C]`` and ``pool``.
    """
    gate = gate or "none"
    scales = tuple(int(s) for s in (scales or ()))
    B, N, C = x.shape
    k = idx.shape[1]
    if scales and not _pool.tree_scales(scales):
        return _pool.multiscale_pool(gather_gate(x, scores, idx, gate, ()), scales)
    y = empty((B, _pool.pooled_length(k, scales) if scales else k, C), x.dtype, x.device)
    if B == 0 or k == 0 or C == 0:
        return y
    stats = _softmax_stats(scores, idx) if gate == "softmax" else scores
    if scales:
        cfg = _pool.tree_config(scales)
        tab = _pool.scale_table(scales, k, x.device)
    else:
        cfg, tab = GATHER_CONFIG, idx
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
    _gather_gate_kernel[grid](x, x.stride(0), x.stride(1), scores, scores.stride(0), idx,
                              idx.stride(0), stats, y, y.stride(0), y.stride(1), tab, len(scales),
                              k, C, GATE=GATES[gate], POOL=bool(scales), **cfg)
    return y


def gather_gate_bwd(grad_y: torch.Tensor, x: torch.Tensor, scores: torch.Tensor,
                    idx: torch.Tensor, gate: str, scales=()):
    """(dx ``[B, N, C]``, dscores ``[B, N]`` or None when gate == "none").

    dx is dense (what autograd needs for x): each row is written once by the kernel, zeros off
    the selected rows, so there is no separate zero fill.
    """
    gate = gate or "none"
    scales = tuple(int(s) for s in (scales or ()))
    B, N, C = x.shape
    k = idx.shape[1]
    dx = empty((B, N, C), x.dtype, x.device)
    ds = empty((B, N), scores.dtype, scores.device) if gate != "none" else None
    if B == 0 or N == 0:
        return dx, ds
    pos = torch.full((B, N), -1, dtype=torch.int32, device=x.device)
    ic = INVERSE_CONFIG
    if k > 0:
        _inverse_kernel[(triton.cdiv(k, ic["BLOCK_K"]), B)](idx, idx.stride(0), pos, N, k, **ic)
    stats = _softmax_stats(scores, idx) if gate == "softmax" and k > 0 else scores
    dg = torch.empty((B, k), dtype=torch.float32, device=x.device) if gate == "softmax" else scores
    tab = _pool.scale_table(scales, k, x.device) if scales else pos
    cfg = BWD_CONFIG
    _gather_gate_bwd_kernel[(triton.cdiv(N, cfg["BLOCK_N"]), B)](
        grad_y, grad_y.stride(0), grad_y.stride(1), x, x.stride(0), x.stride(1), scores,
        scores.stride(0), stats, pos, tab, len(scales), dx, dx.stride(0), dx.stride(1),
        ds if ds is not None else scores, ds.stride(0) if ds is not None else 0, dg, N, k, C,
        GATE=GATES[gate], POOL=bool(scales), **cfg)
    if gate == "softmax" and k > 0:
        _softmax_bwd_kernel[(B,)](scores, scores.stride(0), idx, idx.stride(0), stats, dg, ds,
                                  ds.stride(0), k, **STATS_CONFIG)
    return dx, ds


# ---------------------------------------------------------------------------------------------
# Every configuration the launchers above can launch (compiled ahead of time by the AOT test)
# ---------------------------------------------------------------------------------------------
def aot_configs() -> list[dict]:
    """x and scores share a dtype here; a different scores dtype only changes one scalar load."""
    cfg_, out = _pool.aot_config, []
    for dt in _pool.AOT_DTYPES:
        p = f"*{dt}"
        out.append(cfg_(f"radix_hist {dt}", _radix_hist_kernel,
                        dict(scores_ptr=p, hist_ptr="*i32"), SELECT_CONFIG))
        out.append(cfg_(f"select_count {dt}", _select_count_kernel,
                        dict(scores_ptr=p, hist_ptr="*i32", counts_ptr="*i32"), SELECT_CONFIG))
        out.append(cfg_(f"select_write {dt}", _select_write_kernel,
                        dict(scores_ptr=p, hist_ptr="*i32", counts_ptr="*i32", idx_ptr="*i64"),
                        SELECT_CONFIG, BLOCK_CH=SELECT_BLOCK_CH))
        out.append(cfg_(f"score_rank {dt}", _score_rank_kernel,
                        dict(scores_ptr=p, time_idx_ptr="*i64", idx_ptr="*i64"), RANK_CONFIG))
        out.append(cfg_(f"softmax_stats {dt}", _softmax_stats_kernel,
                        dict(scores_ptr=p, idx_ptr="*i64", stats_ptr="*fp32"), STATS_CONFIG))
        out.append(cfg_(f"softmax_bwd {dt}", _softmax_bwd_kernel,
                        dict(scores_ptr=p, idx_ptr="*i64", stats_ptr="*fp32", dg_ptr="*fp32",
                             ds_ptr=p), STATS_CONFIG))
        for gate, g in GATES.items():
            for pool, c in [(False, GATHER_CONFIG)] + [(True, t) for t in _pool.TREE_CONFIGS.values()]:
                out.append(cfg_(f"gather_gate {gate} {'pool' if pool else 'rows'} "
                                f"BK{c['BLOCK_K']} BC{c['BLOCK_C']} {dt}", _gather_gate_kernel,
                                dict(x_ptr=p, scores_ptr=p, idx_ptr="*i64", stats_ptr="*fp32",
                                     y_ptr=p, tab_ptr="*i32"), c, GATE=g, POOL=pool))
            for pool in (False, True):
                out.append(cfg_(f"gather_gate_bwd {gate} {'pool' if pool else 'rows'} {dt}",
                                _gather_gate_bwd_kernel,
                                dict(grad_ptr=p, x_ptr=p, scores_ptr=p, stats_ptr="*fp32",
                                     pos_ptr="*i32", tab_ptr="*i32", dx_ptr=p, ds_ptr=p,
                                     dg_ptr="*fp32"), BWD_CONFIG, GATE=g, POOL=pool))
    out.append(cfg_("inverse", _inverse_kernel, dict(idx_ptr="*i64", pos_ptr="*i32"),
                    INVERSE_CONFIG))
    return out
