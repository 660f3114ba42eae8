"""Fused spatial / temporal attention with routed masks (DAR) in Triton.

One kernel family serves ``stq.attention`` (docs/ops.md §2.1) and ``stq.temporal_attention`` (§2.2).
Every attention *sequence* is a triple ``(b, l, h)`` with rows ``n``; a row's address is

    base + b * s_b + l * s_l + h * s_h + n * s_n

- spatial  (q ``[G, N, H, d]``):   ``s_b = stride(0)``, ``s_l = 0`` (L = 1), ``s_n = stride(1)``;
- temporal (q ``[B*T, L, H, d]``): ``s_b = T * stride(0)``, ``s_l = stride(1)``, ``s_n = stride(0)``
  (one frame), so the BT x L <-> BL x T swap is only an addressing choice: nothing is copied.

Tiling. Sequences are numbered ``seq = (b * L + l) * H + h`` and laid out back to back: a tile row
``r`` of a program holds row ``r % N`` of sequence ``seq0 + r // N``. When a whole sequence fits in
a tile (forward: T <= 64 for d <= 64 in 16-bit types; backward: T <= 64 without masks, T <= 32
with them; see ``CONFIGS``) a
program packs ``BLOCK // N`` sequences into one tile and masks the
scores block-diagonally (``seq(row) == seq(key)``): no tile is padded to 128 rows per sequence and
the short-T case runs at memory bandwidth (one read of q/k/v, one write of o, all in one program;
the wasted block-diagonal FLOPs stay well under the H100 ridge point). Longer sequences use one
sequence per program and a flash-attention loop over key blocks with an online softmax.

Masks (§2.3) are never materialised: window/causal come from integer positions, dense masks are
loaded from the one shared ``[n_dense, Nq, Nk]`` bool buffer, and a tile's visibility is kept as a
bit field ``bits[i, k] = sum_j M_j[i, k] << j`` (p <= 8) so each mask is evaluated once per tile.

Modes (``s = scale * q.k``, all exponentials in base 2 with ``scale * log2(e)`` folded in):

- NONE: plain softmax attention.
- MIX (TRAR-style routing): ``o_i = sum_j alpha_j softmax_{M_j(i)}(s_i) V``. Each mask has its
  own normaliser ``l_j(i)``, all against one row max ``m(i)`` over the union of the masks, so one
  exponential per score serves every mask and the output needs a single accumulator with weight
  ``exp(s - m) * sum_j alpha_j M_j / l_j``. T <= tile: statistics and output from the same tile;
  longer rows: pass 1 (QK^T only) for ``m, l_j``, pass 2 for the output.
  Stats saved: ``lse_j = m + log2 l_j`` per row (``-inf`` for an empty mask row): O(N * p).
  Limitation of sharing one max: a mask whose every visible score lies more than ~87 nats
  (the float32 exponent range) below the row's maximum underflows to a zero contribution in the
  forward (the reference keeps its share), and the backward, which recomputes the same ``l_j``,
  gives it zero gradient. No NaN: ``alpha_j / l_j`` is clamped to the float32 range.
- SCALE (MTransLLaMA eq. 9): one flash pass on ``s * w``, ``w = sum_j alpha_j M_j``, keys with
  ``w <= 0`` excluded; stats = ``lse`` of ``s * w``.

Backward, per row i (``dP = dO V^T``, ``P_j`` the softmax of mask j):

- MIX: ``delta_j(i) = sum_k P_j[i, k] dP[i, k]``; ``dS = e (dP * C - E)`` with ``e = exp(s - m)``,
  ``C = sum_j alpha_j M_j / l_j``, ``E = sum_j alpha_j M_j delta_j / l_j``;
  ``dalpha_j = sum_{rows of the routing group} delta_j``.
- SCALE: ``dS' = P (dP - delta)``, ``dS = dS' * w``, ``dalpha_j = sum_{i, k} dS' * s * M_j``.
- ``dq = scale * dS K``, ``dk = scale * dS^T Q``, ``dv = W^T dO`` (W the final attention weights).

dalpha is reduced inside the program that owns the rows (a segmented sum over the packed
sequences of a tile) and written as per-(row block, sequence) partials ``[n_row_blocks, n_seq, p]``
that the launcher sums: no atomics, deterministic.

Rows with no visible key (padded frames, masked-out rows) give 0 output and 0 gradients.
T, N, G and the scale are runtime arguments (``do_not_specialize``): a new frame count never
recompiles. Compile-time parameters are the mode, the block sizes and ``BLOCK_D`` (d rounded up
to a power of two, >= 64), i.e. the set :func:`aot_configs` enumerates. The one-block kernels
save the tile loads of a second pass; the looping dq kernel re-reads K/V once more in MIX mode
(delta_j needs a full row before dS), so MIX backward costs three passes over the keys.
"""
from __future__ import annotations

import triton
import triton.language as tl

from stquery.ops.attention.problem import CAUSAL, DENSE, MAX_MASKS, MIX, NONE, SCALE, WINDOW

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)

_NONE = tl.constexpr(NONE)
_MIX = tl.constexpr(MIX)
_SCALE = tl.constexpr(SCALE)
_WINDOW = tl.constexpr(WINDOW)
_CAUSAL = tl.constexpr(CAUSAL)
_DENSE = tl.constexpr(DENSE)
_PP = tl.constexpr(MAX_MASKS)  # width of the per-row, per-mask statistics tiles
_BIG = tl.constexpr(2 ** 30)
_FMAX = tl.constexpr(3.0e38)  # alpha_j / l_j is clamped here: a tiny l_j must not make inf · 0

# Runtime integers that must not be specialised (a new T, N, G, mask set never recompiles).
_RUNTIME_INTS = ["n_seq", "L", "H", "Nq", "Nk", "seqs_per_prog", "n_blocks", "n_masks",
                 "g_start", "g_end", "has_kpad", "has_flen"]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fdiv(n, den):
    """``n // den`` for ``0 <= n < 2**22`` through a float reciprocal: exact in that range (the
    fraction of ``(n + 0.5) / den`` stays >= 0.5 / den away from an integer, more than the 2**-23
    relative rounding error), and a few instructions instead of a ~25-instruction integer
    division by a runtime value, which would be repeated for every row a thread holds."""
    return ((n.to(tl.float32) + 0.5) * (1.0 / den.to(tl.float32))).to(tl.int32)


@triton.jit
def _when(flag, mask):
    """``mask & (flag != 0)`` for a runtime scalar flag, broadcast before the comparison (the
    interpreter types ``bool tensor & bool scalar`` as int32)."""
    return mask & ((tl.zeros(mask.shape, dtype=tl.int32) + flag) != 0)


@triton.jit
def _seq_coords(seq, L, H):
    """Sequence index -> (b, l, h), for the program's first sequence (scalars)."""
    return seq // (L * H), (seq // H) % L, seq % H


@triton.jit
def _rows(offs, N, n_valid, seq0, n_seq, b0, l0, h0, L, H, PACKED: tl.constexpr):
    """Tile index ``offs`` (``[BLOCK]``) -> (local sequence, position, in range, b, l, h).

    PACKED: row ``offs`` is position ``offs % N`` of sequence ``seq0 + offs // N`` (vectors);
    otherwise the program owns one sequence: position = offs, (b, l, h) = (b0, l0, h0) scalars.
    """
    if PACKED:
        sl = _fdiv(offs, N)
        pos = offs - sl * N
        inb = (offs < n_valid) & (seq0 + sl < n_seq)
        # (b0, l0, h0) + sl with carries; every quotient is < 2**22
        t = h0 + sl
        c = _fdiv(t, H)
        h = t - c * H
        u = l0 + c
        c = _fdiv(u, L)
        l = u - c * L
        b = b0 + c
    else:
        sl = 0
        pos = offs
        inb = offs < N
        b = b0
        l = l0
        h = h0
    return sl, pos, inb, b, l, h


@triton.jit
def _offsets(b, l, h, pos, s_b, s_l, s_h, s_n):
    """Element offset of each row (int64: B*T*L*H*d may exceed 2**31)."""
    return (b.to(tl.int64) * s_b + l.to(tl.int64) * s_l + h.to(tl.int64) * s_h
            + pos.to(tl.int64) * s_n)


@triton.jit
def _n_frames(b, inb, flen_ptr, has_flen, PACKED: tl.constexpr):
    """frame_lengths[b] (a huge number without frame_lengths)."""
    if PACKED:
        n = tl.load(flen_ptr + b, mask=_when(has_flen, inb), other=_BIG)
    else:
        n = tl.load(flen_ptr + b, mask=(b * 0 + has_flen) != 0, other=_BIG)
    return n


@triton.jit
def _query_rows(offs, N, n_valid, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen,
                PACKED: tl.constexpr):
    """Rows: (local seq, position, in range, attends (not a padded frame), b, l, h)."""
    sl, pos, inb, b, l, h = _rows(offs, N, n_valid, seq0, n_seq, b0, l0, h0, L, H, PACKED)
    ok = inb & (pos < _n_frames(b, inb, flen_ptr, has_flen, PACKED))
    return sl, pos, inb, ok, b, l, h


@triton.jit
def _key_rows(offs, N, n_valid, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
              skp_b, skp_n, has_kpad, PACKED: tl.constexpr):
    """Keys: (local seq, position, in range, visible (not padded), b, l, h)."""
    sl, pos, inb, b, l, h = _rows(offs, N, n_valid, seq0, n_seq, b0, l0, h0, L, H, PACKED)
    # [BLOCK_N]
    pad = tl.load(kpad_ptr + b.to(tl.int64) * skp_b + pos.to(tl.int64) * skp_n,
                  mask=_when(has_kpad, inb), other=0)
    ok = inb & (pos < _n_frames(b, inb, flen_ptr, has_flen, PACKED)) & (pad == 0)
    return sl, pos, inb, ok, b, l, h


@triton.jit
def _load_alpha(alpha_ptr, b, l, h, ok, sa_b, sa_l, sa_h, sa_p, n_masks, offs_p,
                MODE: tl.constexpr, PACKED: tl.constexpr):
    """Routing weights as float32: ``[BLOCK_M, PP]`` (PACKED, one row per tile row) or
    ``[1, PP]`` (one sequence per program)."""
    if MODE == _NONE:
        a = tl.zeros([1, _PP], dtype=tl.float32)
    else:
        base = b.to(tl.int64) * sa_b + l.to(tl.int64) * sa_l + h.to(tl.int64) * sa_h
        if PACKED:
            a = tl.load(alpha_ptr + base[:, None] + offs_p[None, :] * sa_p,
                        mask=ok[:, None] & (offs_p[None, :] < n_masks), other=0.0).to(tl.float32)
        else:
            a = tl.load(alpha_ptr + base + offs_p[None, :] * sa_p,
                        mask=offs_p[None, :] < n_masks, other=0.0).to(tl.float32)
    return a


@triton.jit
def _col(x, offs_p, j):
    """Column j of a ``[BLOCK, PP]`` statistics tile -> ``[BLOCK]``."""
    return tl.sum(tl.where(offs_p[None, :] == j, x, 0.0), axis=1)


@triton.jit
def _has(bits, j):
    return ((bits >> j) & 1) != 0


@triton.jit
def _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k,
               g_start, g_end, MODE: tl.constexpr, PACKED: tl.constexpr):
    """``[BM, BN]`` int32 bit field: bit j set iff key n is visible to row m under mask j.

    ``masks_ptr``: the int32 table of the call's mask descriptors, one per mask,
    ``kind + 4 * (param + 1)``: param is the radius r (-1 unbounded) for
    window/causal, the index into the dense buffer for dense masks. Window and causal are one
    band test ``lo <= i - k <= lo + span``, done as an unsigned compare (window: lo = -r,
    span = 2r; causal: lo = 0, span = r), so a mask costs two operations per score and no
    ``[BM, BN]`` tile stays live across the mask loop. In NONE mode bit 0 is the plain
    visibility (same sequence, row attends, key visible).
    """
    # [BM, BN]
    ok = ok_m[:, None] & ok_n[None, :]
    if PACKED:
        ok = ok & (sl_m[:, None] == sl_n[None, :])
    if MODE == _NONE:
        bits = ok.to(tl.int32)
    else:
        bits = tl.zeros(ok.shape, dtype=tl.int32)
        for j in range(n_masks):
            desc = tl.load(masks_ptr + j)
            kind = desc & 3
            param = (desc >> 2) - 1
            if kind == _DENSE:
                # [BM, BN]
                vis = tl.load(dense_ptr + param.to(tl.int64) * sd_m + (pos_m * sd_q)[:, None]
                              + (pos_n * sd_k)[None, :], mask=ok, other=0) != 0
            else:
                # unbounded (param < 0): window lo = -2**30, causal lo = 0; span = 2**31 - 1
                lo = tl.where(kind == _WINDOW, tl.where(param < 0, -_BIG, -param), 0)
                span = tl.where(param < 0, 2147483647, tl.where(kind == _WINDOW, 2 * param, param))
                span = span.to(tl.uint32)
                # [BM, BN]
                vis = ((pos_m - lo)[:, None] - pos_n[None, :]).to(tl.uint32, bitcast=True) <= span
            bits = bits | (vis.to(tl.int32) << j)
        # [BM, BN] global tokens see and are seen by every token under every mask
        glob = (((pos_m >= g_start) & (pos_m < g_end))[:, None]
                | ((pos_n >= g_start) & (pos_n < g_end))[None, :])
        bits = tl.where(ok, tl.where(glob, (1 << n_masks) - 1, bits), 0)
    return bits


@triton.jit
def _mix_weight(bits, coef, offs_p, n_masks):
    """``sum_j M_j[i, k] * coef[i, j]`` -> ``[BM, BN]`` float32 (coef ``[BM or 1, PP]``)."""
    w = tl.zeros(bits.shape, dtype=tl.float32)
    for j in range(n_masks):
        w += tl.where(_has(bits, j), _col(coef, offs_p, j)[:, None], 0.0)
    return w


@triton.jit
def _mix_coef(alpha, l):
    """``alpha_j / l_j`` clamped to the float32 range (a tiny ``l_j`` must not make inf · 0), 0 for
    an empty mask row."""
    return tl.where(l > 0, tl.minimum(tl.maximum(alpha / l, -_FMAX), _FMAX), 0.0)


@triton.jit
def _scores(b_q, b_k, qk_scale, PRECISION: tl.constexpr):
    """``s * log2(e)`` for the tile; ``[BM, BN]`` float32."""
    return tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale


@triton.jit
def _load_tile(ptr, off, ok, offs_d, d):
    """Rows ``off`` (``[BLOCK]`` int64) x ``d`` columns -> ``[BLOCK, BLOCK_D]`` (0 outside)."""
    return tl.load(ptr + off[:, None] + offs_d[None, :], mask=ok[:, None] & (offs_d < d)[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, off, ok, offs_d, d, x):
    tl.store(ptr + off[:, None] + offs_d[None, :], x.to(ptr.dtype.element_ty),
             mask=ok[:, None] & (offs_d < d)[None, :])


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, o_ptr, stats_ptr, alpha_ptr, dense_ptr, kpad_ptr, flen_ptr,
    sq_b, sq_l, sq_h, sq_n, sk_b, sk_l, sk_h, sk_n, sv_b, sv_l, sv_h, sv_n,
    so_b, so_l, so_h, so_n, ss_b, ss_l, ss_h, ss_n, sa_b, sa_l, sa_h, sa_p,
    sd_m, sd_q, sd_k, skp_b, skp_n,
    n_seq, L, H, Nq, Nk, d, seqs_per_prog, n_blocks, qk_scale,
    n_masks, masks_ptr, g_start, g_end, has_kpad, has_flen,
    MODE: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """ONE_BLOCK: ``seqs_per_prog`` whole sequences per tile (packed, block-diagonal);
    otherwise one row block of one sequence and a loop over its key blocks."""
    pid = tl.program_id(0)
    blk = pid % n_blocks
    seq0 = (pid // n_blocks) * seqs_per_prog
    b0, l0, h0 = _seq_coords(seq0, L, H)
    n_keys = seqs_per_prog * Nk
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)
    offs_nb = tl.arange(0, BLOCK_N)

    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    sl_m, pos_m, in_m, ok_m, b_m, l_m, h_m = _query_rows(
        offs_m, Nq, seqs_per_prog * Nq, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, ONE_BLOCK)
    # [BLOCK_M, BLOCK_D]
    b_q = _load_tile(q_ptr, _offsets(b_m, l_m, h_m, pos_m, sq_b, sq_l, sq_h, sq_n), ok_m, offs_d, d)
    # [BLOCK_M or 1, PP]
    b_alpha = _load_alpha(alpha_ptr, b_m, l_m, h_m, ok_m, sa_b, sa_l, sa_h, sa_p, n_masks, offs_p,
                          MODE, ONE_BLOCK)

    # [BLOCK_M]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # [BLOCK_M] softmax normaliser (NONE / SCALE)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # [BLOCK_M, PP] one normaliser per mask (MIX)
    l_mix = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
    # [BLOCK_M, BLOCK_D]
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_kblocks = tl.cdiv(n_keys, BLOCK_N)

    if MODE == _MIX and not ONE_BLOCK:
        # pass 1: row max over the union of the masks and one normaliser per mask (QK^T only)
        for kb in range(n_kblocks):
            offs_n = kb * BLOCK_N + offs_nb
            sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
                offs_n, Nk, n_keys, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
                skp_b, skp_n, has_kpad, ONE_BLOCK)
            # [BLOCK_N, BLOCK_D]
            b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
            # [BLOCK_M, BLOCK_N]
            s = _scores(b_q, b_k, qk_scale, PRECISION)
            bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                              sd_k, g_start, g_end, MODE, ONE_BLOCK)
            vis = bits != 0
            m_new = tl.maximum(m_i, tl.max(tl.where(vis, s, float("-inf")), axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            # [BLOCK_M, BLOCK_N]
            p = tl.where(vis, tl.exp2(s - m_use[:, None]), 0.0)
            l_mix = l_mix * tl.exp2(m_i - m_use)[:, None]
            for j in range(n_masks):
                l_j = tl.sum(tl.where(_has(bits, j), p, 0.0), axis=1)
                l_mix += tl.where(offs_p[None, :] == j, l_j[:, None], 0.0)
            m_i = m_new

    m_fix = tl.where(m_i == float("-inf"), 0.0, m_i)
    # [BLOCK_M, PP] per-mask weight alpha_j / l_j (MIX, two passes)
    coef = _mix_coef(b_alpha, l_mix)
    for kb in range(n_kblocks):
        offs_n = kb * BLOCK_N + offs_nb
        sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
            offs_n, Nk, n_keys, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
            skp_b, skp_n, has_kpad, ONE_BLOCK)
        # [BLOCK_N, BLOCK_D]
        b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
        # [BLOCK_N, BLOCK_D]
        b_v = _load_tile(v_ptr, _offsets(b_n, l_n, h_n, pos_n, sv_b, sv_l, sv_h, sv_n), ok_n, offs_d, d)
        # [BLOCK_M, BLOCK_N]
        s = _scores(b_q, b_k, qk_scale, PRECISION)
        bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                          sd_k, g_start, g_end, MODE, ONE_BLOCK)
        vis = bits != 0
        if MODE == _MIX:
            if ONE_BLOCK:
                # the whole row is in this tile: statistics and output from the same scores
                m_i = tl.max(tl.where(vis, s, float("-inf")), axis=1)
                m_fix = tl.where(m_i == float("-inf"), 0.0, m_i)
                # [BLOCK_M, BLOCK_N]
                p = tl.where(vis, tl.exp2(s - m_fix[:, None]), 0.0)
                w = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                for j in range(n_masks):
                    has_j = _has(bits, j)
                    # [BLOCK_M]
                    l_j = tl.sum(tl.where(has_j, p, 0.0), axis=1)
                    c_j = _mix_coef(_col(b_alpha, offs_p, j), l_j)
                    w += tl.where(has_j, c_j[:, None], 0.0)
                    l_mix += tl.where(offs_p[None, :] == j, l_j[:, None], 0.0)
            else:
                p = tl.where(vis, tl.exp2(s - m_fix[:, None]), 0.0)
                w = _mix_weight(bits, coef, offs_p, n_masks)
            acc += tl.dot((p * w).to(b_v.dtype), b_v, input_precision=PRECISION)
        else:
            if MODE == _SCALE:
                # [BLOCK_M, BLOCK_N]
                w = _mix_weight(bits, b_alpha, offs_p, n_masks)
                vis = vis & (w > 0)
                s = s * w
            m_new = tl.maximum(m_i, tl.max(tl.where(vis, s, float("-inf")), axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            # [BLOCK_M, BLOCK_N]
            p = tl.where(vis, tl.exp2(s - m_use[:, None]), 0.0)
            corr = tl.exp2(m_i - m_use)
            l_i = l_i * corr + tl.sum(p, axis=1)
            acc = acc * corr[:, None] + tl.dot(p.to(b_v.dtype), b_v, input_precision=PRECISION)
            m_i = m_new

    m_fix = tl.where(m_i == float("-inf"), 0.0, m_i)
    s_off = _offsets(b_m, l_m, h_m, pos_m, ss_b, ss_l, ss_h, ss_n)
    if MODE == _MIX:
        out = acc
        # [BLOCK_M, PP]
        stats = tl.where(l_mix > 0, m_fix[:, None] + tl.log2(l_mix), float("-inf"))
        tl.store(stats_ptr + s_off[:, None] + offs_p[None, :], stats,
                 mask=in_m[:, None] & (offs_p[None, :] < n_masks))
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(stats_ptr + s_off, tl.where(l_i > 0, m_fix + tl.log2(l_i), float("-inf")), mask=in_m)
    _store_tile(o_ptr, _offsets(b_m, l_m, h_m, pos_m, so_b, so_l, so_h, so_n), in_m, offs_d, d, out)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _store_dalpha_segments(dalpha_ptr, vals, sl_m, seq0, n_seq, seqs_per_prog, j, n_masks,
                           BLOCK_M: tl.constexpr):
    """Sum ``vals`` (``[BLOCK_M]``, one per row) over the rows of each packed sequence and write
    ``dalpha[seq, j]``: the reduction over a routing group stays inside the owning program."""
    offs_s = tl.arange(0, BLOCK_M)
    # [BLOCK_M] (one entry per packed sequence)
    tot = tl.sum(tl.where(sl_m[:, None] == offs_s[None, :], vals[:, None], 0.0), axis=0)
    tl.store(dalpha_ptr + (seq0 + offs_s).to(tl.int64) * n_masks + j, tot,
             mask=(offs_s < seqs_per_prog) & (seq0 + offs_s < n_seq))


@triton.jit
def _mix_row_ref(lse):
    """``max_j lse_j`` (0 for a row with no visible key) from ``lse_j = m + log2 l_j``
    (``[BM, PP]``): the looping backward's reference for ``p = 2^(s - m_ref) <= 1`` (the mask
    holding the row maximum has ``l_j >= 1``). Its rounding cancels: the l_j are recomputed
    against it."""
    m_ref = tl.max(lse, axis=1)
    return tl.where(m_ref == float("-inf"), 0.0, m_ref)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_one_block(
    q_ptr, k_ptr, v_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, alpha_ptr, dalpha_ptr,
    dense_ptr, kpad_ptr, flen_ptr,
    sq_b, sq_l, sq_h, sq_n, sk_b, sk_l, sk_h, sk_n, sv_b, sv_l, sv_h, sv_n,
    sdo_b, sdo_l, sdo_h, sdo_n, sdq_b, sdq_l, sdq_h, sdq_n, sdk_b, sdk_l, sdk_h, sdk_n,
    sdv_b, sdv_l, sdv_h, sdv_n, sa_b, sa_l, sa_h, sa_p,
    sd_m, sd_q, sd_k, skp_b, skp_n,
    n_seq, L, H, Nq, Nk, d, seqs_per_prog, n_blocks, qk_scale, scale,
    n_masks, masks_ptr, g_start, g_end, has_kpad, has_flen,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Whole sequences per tile (``seqs_per_prog * N <= BLOCK``): dq, dk, dv and dalpha from one
    load of q, k, v, dO; the softmax statistics and delta (``sum_k P dP``) come from the tile
    itself, neither the saved statistics nor o is read."""
    pid = tl.program_id(0)
    seq0 = pid * seqs_per_prog
    b0, l0, h0 = _seq_coords(seq0, L, H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)

    offs_m = tl.arange(0, BLOCK_M)
    sl_m, pos_m, in_m, ok_m, b_m, l_m, h_m = _query_rows(
        offs_m, Nq, seqs_per_prog * Nq, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, True)
    offs_n = tl.arange(0, BLOCK_N)
    sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
        offs_n, Nk, seqs_per_prog * Nk, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
        skp_b, skp_n, has_kpad, True)
    # [BLOCK_M, BLOCK_D]
    b_q = _load_tile(q_ptr, _offsets(b_m, l_m, h_m, pos_m, sq_b, sq_l, sq_h, sq_n), ok_m, offs_d, d)
    # [BLOCK_M, BLOCK_D]
    b_do = _load_tile(do_ptr, _offsets(b_m, l_m, h_m, pos_m, sdo_b, sdo_l, sdo_h, sdo_n), ok_m, offs_d, d)
    # [BLOCK_N, BLOCK_D]
    b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
    # [BLOCK_N, BLOCK_D]
    b_v = _load_tile(v_ptr, _offsets(b_n, l_n, h_n, pos_n, sv_b, sv_l, sv_h, sv_n), ok_n, offs_d, d)
    # [BLOCK_M, PP]
    b_alpha = _load_alpha(alpha_ptr, b_m, l_m, h_m, ok_m, sa_b, sa_l, sa_h, sa_p, n_masks, offs_p,
                          MODE, True)

    # [BLOCK_M, BLOCK_N]
    s = _scores(b_q, b_k, qk_scale, PRECISION)
    bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                      sd_k, g_start, g_end, MODE, True)
    vis = bits != 0
    # [BLOCK_M, BLOCK_N]
    dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    if MODE == _SCALE:
        w = _mix_weight(bits, b_alpha, offs_p, n_masks)
        vis = vis & (w > 0)
        s_nat = s * (1.0 / _LOG2E)
        s = s * w
    # The whole row is in the tile: its statistics are recomputed exactly as the forward computed
    # them rather than read back from ``lse``, whose rounding (half an ulp of |lse|, ~1e-6 at
    # logits ~16) would scale every P by the same (1 + eps) and leave sum_k dS != 0: an error
    # proportional to the logits themselves once dS is multiplied by s (dalpha) or K (dq).
    # [BLOCK_M]
    m = tl.max(tl.where(vis, s, float("-inf")), axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)
    # [BLOCK_M, BLOCK_N]
    p = tl.where(vis, tl.exp2(s - m[:, None]), 0.0)
    if MODE == _MIX:
        pdp = p * dp
        w = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        e = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for j in range(n_masks):
            has_j = _has(bits, j)
            # [BLOCK_M] l_j and delta_j = sum_k P_j dP (P_j = p / l_j on mask j)
            l_j = tl.sum(tl.where(has_j, p, 0.0), axis=1)
            delta_j = tl.sum(tl.where(has_j, pdp, 0.0), axis=1) / tl.where(l_j > 0, l_j, 1.0)
            c_j = _mix_coef(_col(b_alpha, offs_p, j), l_j)
            w += tl.where(has_j, c_j[:, None], 0.0)
            e += tl.where(has_j, (c_j * delta_j)[:, None], 0.0)
            _store_dalpha_segments(dalpha_ptr, delta_j, sl_m, seq0, n_seq, seqs_per_prog, j, n_masks, BLOCK_M)
        attn = p * w
        ds = p * (dp * w - e)
    else:
        l = tl.sum(p, axis=1)
        p = p * (1.0 / tl.where(l > 0, l, 1.0))[:, None]
        delta = tl.sum(p * dp, axis=1)
        ds = p * (dp - delta[:, None])
        attn = p
        if MODE == _SCALE:
            g = ds * s_nat
            for j in range(n_masks):
                g_j = tl.sum(tl.where(_has(bits, j), g, 0.0), axis=1)
                _store_dalpha_segments(dalpha_ptr, g_j, sl_m, seq0, n_seq, seqs_per_prog, j, n_masks, BLOCK_M)
            ds = ds * w

    # [BLOCK_N, BLOCK_D]
    b_dv = tl.dot(tl.trans(attn).to(b_do.dtype), b_do, input_precision=PRECISION)
    _store_tile(dv_ptr, _offsets(b_n, l_n, h_n, pos_n, sdv_b, sdv_l, sdv_h, sdv_n), in_n, offs_d, d, b_dv)
    # [BLOCK_N, BLOCK_D]
    b_dk = tl.dot(tl.trans(ds).to(b_q.dtype), b_q, input_precision=PRECISION) * scale
    _store_tile(dk_ptr, _offsets(b_n, l_n, h_n, pos_n, sdk_b, sdk_l, sdk_h, sdk_n), in_n, offs_d, d, b_dk)
    # [BLOCK_M, BLOCK_D]
    b_dq = tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION) * scale
    _store_tile(dq_ptr, _offsets(b_m, l_m, h_m, pos_m, sdq_b, sdq_l, sdq_h, sdq_n), in_m, offs_d, d, b_dq)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, stats_ptr, delta_ptr, coef_ptr, alpha_ptr, dalpha_ptr,
    dense_ptr, kpad_ptr, flen_ptr,
    sq_b, sq_l, sq_h, sq_n, sk_b, sk_l, sk_h, sk_n, sv_b, sv_l, sv_h, sv_n,
    so_b, so_l, so_h, so_n, sdo_b, sdo_l, sdo_h, sdo_n, sdq_b, sdq_l, sdq_h, sdq_n,
    ss_b, ss_l, ss_h, ss_n, sa_b, sa_l, sa_h, sa_p, sd_m, sd_q, sd_k, skp_b, skp_n,
    n_seq, L, H, Nq, Nk, d, seqs_per_prog, n_blocks, qk_scale, scale,
    n_masks, masks_ptr, g_start, g_end, has_kpad, has_flen,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One row block of one sequence: delta (saved for ``_attn_bwd_dkdv``), dq, dalpha partials.
    MIX needs delta_j = sum_k P_j dP before dS, hence a first loop over the keys."""
    pid = tl.program_id(0)
    blk = pid % n_blocks
    seq0 = pid // n_blocks
    b0, l0, h0 = _seq_coords(seq0, L, H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)

    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    sl_m, pos_m, in_m, ok_m, b_m, l_m, h_m = _query_rows(
        offs_m, Nq, Nq, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, False)
    # [BLOCK_M, BLOCK_D]
    b_q = _load_tile(q_ptr, _offsets(b_m, l_m, h_m, pos_m, sq_b, sq_l, sq_h, sq_n), ok_m, offs_d, d)
    # [BLOCK_M, BLOCK_D]
    b_do = _load_tile(do_ptr, _offsets(b_m, l_m, h_m, pos_m, sdo_b, sdo_l, sdo_h, sdo_n), ok_m, offs_d, d)
    # [1, PP]
    b_alpha = _load_alpha(alpha_ptr, b_m, l_m, h_m, ok_m, sa_b, sa_l, sa_h, sa_p, n_masks, offs_p,
                          MODE, False)
    s_off = _offsets(b_m, l_m, h_m, pos_m, ss_b, ss_l, ss_h, ss_n)
    n_kblocks = tl.cdiv(Nk, BLOCK_N)
    offs_nb = tl.arange(0, BLOCK_N)
    # [BLOCK_M, BLOCK_D]
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if MODE == _MIX:
        # [BLOCK_M, PP]
        lse = tl.load(stats_ptr + s_off[:, None] + offs_p[None, :],
                      mask=ok_m[:, None] & (offs_p[None, :] < n_masks), other=float("-inf"))
        m_ref = _mix_row_ref(lse)
        # [BLOCK_M, PP] sum_k p dP and l_j on each mask, pass 1 over the keys
        delta = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
        l_mix = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
        for kb in range(n_kblocks):
            offs_n = kb * BLOCK_N + offs_nb
            sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
                offs_n, Nk, Nk, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
                skp_b, skp_n, has_kpad, False)
            # [BLOCK_N, BLOCK_D]
            b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
            # [BLOCK_N, BLOCK_D]
            b_v = _load_tile(v_ptr, _offsets(b_n, l_n, h_n, pos_n, sv_b, sv_l, sv_h, sv_n), ok_n, offs_d, d)
            # [BLOCK_M, BLOCK_N]
            s = _scores(b_q, b_k, qk_scale, PRECISION)
            bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                              sd_k, g_start, g_end, MODE, False)
            p = tl.where(bits != 0, tl.exp2(s - m_ref[:, None]), 0.0)
            pdp = p * tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
            for j in range(n_masks):
                has_j = _has(bits, j)
                delta += tl.where(offs_p[None, :] == j, tl.sum(tl.where(has_j, pdp, 0.0), axis=1)[:, None], 0.0)
                l_mix += tl.where(offs_p[None, :] == j, tl.sum(tl.where(has_j, p, 0.0), axis=1)[:, None], 0.0)
        # [BLOCK_M, PP] delta_j = sum_k P_j dP with P_j = p / l_j normalised by the l_j just
        # recomputed (not by 2^(m_ref - lse_j), whose rounding would leave sum_k dS != 0)
        delta = delta / tl.where(l_mix > 0, l_mix, 1.0)
        c = _mix_coef(b_alpha, l_mix)
        tl.store(delta_ptr + s_off[:, None] + offs_p[None, :], delta,
                 mask=in_m[:, None] & (offs_p[None, :] < n_masks))
        tl.store(coef_ptr + s_off[:, None] + offs_p[None, :], c,
                 mask=in_m[:, None] & (offs_p[None, :] < n_masks))
        tl.store(dalpha_ptr + (blk * n_seq + seq0).to(tl.int64) * n_masks + offs_p, tl.sum(delta, axis=0),
                 mask=offs_p < n_masks)
        # [BLOCK_M, PP]
        e = c * delta
    else:
        # [BLOCK_M, BLOCK_D]
        b_o = _load_tile(o_ptr, _offsets(b_m, l_m, h_m, pos_m, so_b, so_l, so_h, so_n), ok_m, offs_d, d)
        # [BLOCK_M] delta = rowsum(dO * O)
        delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), axis=1)
        tl.store(delta_ptr + s_off, delta, mask=in_m)
        # [BLOCK_M]
        lse = tl.load(stats_ptr + s_off, mask=ok_m, other=0.0)
        # [BLOCK_M, PP]
        dalpha_rows = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)

    for kb in range(n_kblocks):
        offs_n = kb * BLOCK_N + offs_nb
        sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
            offs_n, Nk, Nk, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
            skp_b, skp_n, has_kpad, False)
        # [BLOCK_N, BLOCK_D]
        b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
        # [BLOCK_N, BLOCK_D]
        b_v = _load_tile(v_ptr, _offsets(b_n, l_n, h_n, pos_n, sv_b, sv_l, sv_h, sv_n), ok_n, offs_d, d)
        # [BLOCK_M, BLOCK_N]
        s = _scores(b_q, b_k, qk_scale, PRECISION)
        bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                          sd_k, g_start, g_end, MODE, False)
        vis = bits != 0
        # [BLOCK_M, BLOCK_N]
        dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        if MODE == _MIX:
            p = tl.where(vis, tl.exp2(s - m_ref[:, None]), 0.0)
            ds = p * (dp * _mix_weight(bits, c, offs_p, n_masks) - _mix_weight(bits, e, offs_p, n_masks))
        else:
            if MODE == _SCALE:
                w = _mix_weight(bits, b_alpha, offs_p, n_masks)
                vis = vis & (w > 0)
                s_nat = s * (1.0 / _LOG2E)
                s = s * w
            p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
            ds = p * (dp - delta[:, None])
            if MODE == _SCALE:
                g = ds * s_nat
                for j in range(n_masks):
                    dalpha_rows += tl.where(offs_p[None, :] == j,
                                            tl.sum(tl.where(_has(bits, j), g, 0.0), axis=1)[:, None], 0.0)
                ds = ds * w
        b_dq += tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)

    if MODE == _SCALE:
        tl.store(dalpha_ptr + (blk * n_seq + seq0).to(tl.int64) * n_masks + offs_p, tl.sum(dalpha_rows, axis=0),
                 mask=offs_p < n_masks)
    _store_tile(dq_ptr, _offsets(b_m, l_m, h_m, pos_m, sdq_b, sdq_l, sdq_h, sdq_n), in_m, offs_d, d, b_dq * scale)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, stats_ptr, delta_ptr, coef_ptr, alpha_ptr,
    dense_ptr, kpad_ptr, flen_ptr,
    sq_b, sq_l, sq_h, sq_n, sk_b, sk_l, sk_h, sk_n, sv_b, sv_l, sv_h, sv_n,
    sdo_b, sdo_l, sdo_h, sdo_n, sdk_b, sdk_l, sdk_h, sdk_n, sdv_b, sdv_l, sdv_h, sdv_n,
    ss_b, ss_l, ss_h, ss_n, sa_b, sa_l, sa_h, sa_p, sd_m, sd_q, sd_k, skp_b, skp_n,
    n_seq, L, H, Nq, Nk, d, seqs_per_prog, n_blocks, qk_scale, scale,
    n_masks, masks_ptr, g_start, g_end, has_kpad, has_flen,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One key block of one sequence: dk, dv, looping over the query blocks."""
    pid = tl.program_id(0)
    blk = pid % n_blocks
    seq0 = pid // n_blocks
    b0, l0, h0 = _seq_coords(seq0, L, H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)

    offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = _key_rows(
        offs_n, Nk, Nk, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, kpad_ptr,
        skp_b, skp_n, has_kpad, False)
    # [BLOCK_N, BLOCK_D]
    b_k = _load_tile(k_ptr, _offsets(b_n, l_n, h_n, pos_n, sk_b, sk_l, sk_h, sk_n), ok_n, offs_d, d)
    # [BLOCK_N, BLOCK_D]
    b_v = _load_tile(v_ptr, _offsets(b_n, l_n, h_n, pos_n, sv_b, sv_l, sv_h, sv_n), ok_n, offs_d, d)
    # [1, PP]
    b_alpha = _load_alpha(alpha_ptr, b0, l0, h0, ok_n, sa_b, sa_l, sa_h, sa_p, n_masks, offs_p,
                          MODE, False)
    # [BLOCK_N, BLOCK_D]
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # [BLOCK_N, BLOCK_D]
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    offs_mb = tl.arange(0, BLOCK_M)

    for qb in range(tl.cdiv(Nq, BLOCK_M)):
        offs_m = qb * BLOCK_M + offs_mb
        sl_m, pos_m, in_m, ok_m, b_m, l_m, h_m = _query_rows(
            offs_m, Nq, Nq, seq0, n_seq, b0, l0, h0, L, H, flen_ptr, has_flen, False)
        # [BLOCK_M, BLOCK_D]
        b_q = _load_tile(q_ptr, _offsets(b_m, l_m, h_m, pos_m, sq_b, sq_l, sq_h, sq_n), ok_m, offs_d, d)
        # [BLOCK_M, BLOCK_D]
        b_do = _load_tile(do_ptr, _offsets(b_m, l_m, h_m, pos_m, sdo_b, sdo_l, sdo_h, sdo_n), ok_m, offs_d, d)
        s_off = _offsets(b_m, l_m, h_m, pos_m, ss_b, ss_l, ss_h, ss_n)
        # [BLOCK_M, BLOCK_N]
        s = _scores(b_q, b_k, qk_scale, PRECISION)
        bits = _mask_bits(pos_m, sl_m, ok_m, pos_n, sl_n, ok_n, n_masks, masks_ptr, dense_ptr, sd_m, sd_q,
                          sd_k, g_start, g_end, MODE, False)
        vis = bits != 0
        # [BLOCK_M, BLOCK_N]
        dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
        if MODE == _MIX:
            # [BLOCK_M, PP]
            lse = tl.load(stats_ptr + s_off[:, None] + offs_p[None, :],
                          mask=ok_m[:, None] & (offs_p[None, :] < n_masks), other=float("-inf"))
            # [BLOCK_M, PP] delta_j and alpha_j / l_j from _attn_bwd_dq
            delta = tl.load(delta_ptr + s_off[:, None] + offs_p[None, :],
                            mask=ok_m[:, None] & (offs_p[None, :] < n_masks), other=0.0)
            c = tl.load(coef_ptr + s_off[:, None] + offs_p[None, :],
                        mask=ok_m[:, None] & (offs_p[None, :] < n_masks), other=0.0)
            m_ref = _mix_row_ref(lse)
            # [BLOCK_M, BLOCK_N]
            p = tl.where(vis, tl.exp2(s - m_ref[:, None]), 0.0)
            w = _mix_weight(bits, c, offs_p, n_masks)
            attn = p * w
            ds = p * (dp * w - _mix_weight(bits, c * delta, offs_p, n_masks))
        else:
            # [BLOCK_M]
            lse = tl.load(stats_ptr + s_off, mask=ok_m, other=0.0)
            delta = tl.load(delta_ptr + s_off, mask=ok_m, other=0.0)
            if MODE == _SCALE:
                w = _mix_weight(bits, b_alpha, offs_p, n_masks)
                vis = vis & (w > 0)
                s = s * w
            p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
            attn = p
            ds = p * (dp - delta[:, None])
            if MODE == _SCALE:
                ds = ds * w
        b_dv += tl.dot(tl.trans(attn).to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dk += tl.dot(tl.trans(ds).to(b_q.dtype), b_q, input_precision=PRECISION)

    _store_tile(dk_ptr, _offsets(b_n, l_n, h_n, pos_n, sdk_b, sdk_l, sdk_h, sdk_n), in_n, offs_d, d, b_dk * scale)
    _store_tile(dv_ptr, _offsets(b_n, l_n, h_n, pos_n, sdv_b, sdv_l, sdv_h, sdv_n), in_n, offs_d, d, b_dv)
