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
  own normaliser ``l_j(i)``, normally all against one row max ``m(i)`` over the union of the
  masks, so one exponential per score serves every mask and the output needs a single accumulator
  with weight ``exp(s - m) * sum_j alpha_j M_j / l_j``. T <= tile: statistics and output from the
  same tile; longer rows: pass 1 (QK^T only) for ``m, l_j``, pass 2 for the output.
  Far masks: a (row, mask) pair that sees keys but whose ``l_j`` against ``m`` is below
  2^-``_FAR`` (= 2^-64) has its max ``m_j`` more than 64 below ``m``, where its scores underflow
  (all of them beyond 126). Only a program holding such a pair runs the far path: one more pass
  over its keys (the one tile again, reloaded, for whole rows; pass 1b otherwise) for ``m_j`` and
  ``l_j`` against it (an online softmax per far mask), and the far pairs' weights
  ``exp(s - m_j) alpha_j / l_j`` as a product of their own. The common case costs one OR of the
  mask bits per tile and a scalar test.
  Stats saved: ``lse_j = base_j + log2 l_j`` per row (``base_j = m``, or ``m_j`` for a far pair;
  ``-inf`` for an empty mask row): O(N * p), exact for every mask. ``alpha_j / l_j`` is clamped to
  the float32 range, so a tiny ``l_j`` makes no inf · 0.
- SCALE (MTransLLaMA eq. 9): one flash pass on ``s * w``, ``w = sum_j alpha_j M_j``, keys with
  ``w <= 0`` excluded; stats = ``lse`` of ``s * w``.

Backward, per row i (``dP = dO V^T``, ``P_j`` the softmax of mask j):

- MIX: ``delta_j(i) = sum_k P_j[i, k] dP[i, k]``; ``dS = e (dP * C - E)`` with ``e = exp(s - m)``,
  ``C = sum_j alpha_j M_j / l_j``, ``E = sum_j alpha_j M_j delta_j / l_j``;
  ``dalpha_j = sum_{rows of the routing group} delta_j``. The looping kernels take ``m`` as
  ``max_j lse_j`` and recompute the ``l_j`` against it; a mask whose ``lse_j`` lies more than
  ``_FAR`` below is far: its ``e_j = exp(s - lse_j)`` is a term of its own,
  ``dS += sum_far M_j alpha_j e_j (dP - delta_j) / l_j``, as in the one-block kernel, where a mask
  whose max lies more than ``_FAR`` below the tile row's is taken against that max.
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
# MIX: a mask whose maximum lies more than this (base 2) below the row's union max is "far" and
# exponentiated against its own (attn_math.h's kFarMask, where the choice is explained); the
# forward flags one by its l_j against the union max falling below 2^-_FAR (l_j >= 2^(m_j - m))
_FAR = tl.constexpr(64.0)

# Runtime integers that must not be specialised (a new T, N, G, mask set never recompiles).
_RUNTIME_INTS = ["n_seq", "L", "H", "Nq", "Nk", "seqs_per_prog", "n_blocks", "n_masks",
                 "g_start", "g_end", "has_kpad", "has_flen"]


# ----------------------------------------------------------------------------------------------
# Tiles: rows, loads, stores. Inside a kernel the side inputs travel as tuples:
#   prog  = (seq0, n_seq, b0, l0, h0, L, H)          the program's first sequence, the geometry;
#   pad   = (flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad)   padded frames and keys;
#   masks = (n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end);
#   rows  = (local seq, position, in range, ok, b, l, h)   one entry per tile row;
#   strides of a ``[*, *, H, d]`` tensor as (s_b, s_l, s_h, s_n);
#   qdo   = (q_ptr, q strides, do_ptr, dO strides), kv = (k_ptr, k strides, v_ptr, v strides)
#           (the second pointer None where a kernel does not read that tensor).
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
def _program(seq0, n_seq, L, H):
    """``prog`` of a program whose first sequence is ``seq0`` (its (b, l, h) as scalars)."""
    return seq0, n_seq, seq0 // (L * H), (seq0 // H) % L, seq0 % H, L, H


@triton.jit
def _rows(offs, N, n_valid, prog, PACKED: tl.constexpr):
    """Tile index ``offs`` (``[BLOCK]``) -> (local sequence, position, in range, b, l, h).

    PACKED: row ``offs`` is position ``offs % N`` of sequence ``seq0 + offs // N`` (vectors);
    otherwise the program owns one sequence: position = offs, (b, l, h) = (b0, l0, h0) scalars.
    """
    seq0, n_seq, b0, l0, h0, L, H = prog
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
def _n_frames(b, inb, flen_ptr, has_flen, PACKED: tl.constexpr):
    """frame_lengths[b] (a huge number without frame_lengths)."""
    if PACKED:
        n = tl.load(flen_ptr + b, mask=_when(has_flen, inb), other=_BIG)
    else:
        n = tl.load(flen_ptr + b, mask=(b * 0 + has_flen) != 0, other=_BIG)
    return n


@triton.jit
def _tile_rows(offs, N, n_valid, prog, pad, KEYS: tl.constexpr, PACKED: tl.constexpr):
    """``rows`` of a query tile (ok: the row attends, it is no padded frame) or a key tile (KEYS;
    ok: the key is visible, neither a padded frame nor key padding)."""
    flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad = pad
    sl, pos, inb, b, l, h = _rows(offs, N, n_valid, prog, PACKED)
    ok = inb & (pos < _n_frames(b, inb, flen_ptr, has_flen, PACKED))
    if KEYS:
        # [BLOCK_N]
        kpad = tl.load(kpad_ptr + b.to(tl.int64) * skp_b + pos.to(tl.int64) * skp_n,
                       mask=_when(has_kpad, inb), other=0)
        ok = ok & (kpad == 0)
    return sl, pos, inb, ok, b, l, h


@triton.jit
def _offsets(rows, strides):
    """Element offset of each row (int64: B*T*L*H*d may exceed 2**31)."""
    sl, pos, inb, ok, b, l, h = rows
    s_b, s_l, s_h, s_n = strides
    return (b.to(tl.int64) * s_b + l.to(tl.int64) * s_l + h.to(tl.int64) * s_h
            + pos.to(tl.int64) * s_n)


@triton.jit
def _load_rows(ptr, rows, strides, offs_d, d):
    """The ok rows x ``d`` columns -> ``[BLOCK, BLOCK_D]`` (0 elsewhere)."""
    off = _offsets(rows, strides)
    ok = rows[3]
    return tl.load(ptr + off[:, None] + offs_d[None, :], mask=ok[:, None] & (offs_d < d)[None, :], other=0.0)


@triton.jit
def _store_rows(ptr, rows, strides, offs_d, d, x):
    """Store ``x`` (``[BLOCK, BLOCK_D]``) to the rows in range."""
    off = _offsets(rows, strides)
    inb = rows[2]
    tl.store(ptr + off[:, None] + offs_d[None, :], x.to(ptr.dtype.element_ty),
             mask=inb[:, None] & (offs_d < d)[None, :])


@triton.jit
def _tile(offs, N, n_valid, prog, pad, pair, offs_d, d, KEYS: tl.constexpr, PACKED: tl.constexpr):
    """Prologue of a query tile (``pair = qdo``) or a key tile (KEYS, ``pair = kv``): its ``rows``
    and the ``[BLOCK, BLOCK_D]`` tiles of the pair's two tensors (the second pointer None: the
    first tile again, nothing loaded)."""
    x_ptr, x_strides, y_ptr, y_strides = pair
    rows = _tile_rows(offs, N, n_valid, prog, pad, KEYS, PACKED)
    b_x = _load_rows(x_ptr, rows, x_strides, offs_d, d)
    if y_ptr is None:
        b_y = b_x
    else:
        b_y = _load_rows(y_ptr, rows, y_strides, offs_d, d)
    return rows, b_x, b_y


@triton.jit
def _load_alpha(alpha_ptr, rows, sa, n_masks, offs_p, MODE: tl.constexpr, PACKED: tl.constexpr):
    """Routing weights (``sa = (s_b, s_l, s_h, s_p)``) as float32: ``[BLOCK_M, PP]`` (PACKED, one
    row per tile row) or ``[1, PP]`` (one sequence per program)."""
    sl, pos, inb, ok, b, l, h = rows
    sa_b, sa_l, sa_h, sa_p = sa
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
def _load_row_stats(ptr, s_off, rows, offs_p, n_masks, other, WIDE: tl.constexpr):
    """Per-row statistics of the ok rows at offsets ``s_off``: ``[BM, PP]`` (WIDE, one per mask)
    or ``[BM]``."""
    ok = rows[3]
    if WIDE:
        x = tl.load(ptr + s_off[:, None] + offs_p[None, :],
                    mask=ok[:, None] & (offs_p[None, :] < n_masks), other=other)
    else:
        x = tl.load(ptr + s_off, mask=ok, other=other)
    return x


@triton.jit
def _store_row_stats(ptr, s_off, rows, offs_p, n_masks, x, WIDE: tl.constexpr):
    """Store per-row statistics ``x`` (``[BM, PP]`` WIDE, else ``[BM]``) of the rows in range."""
    inb = rows[2]
    if WIDE:
        tl.store(ptr + s_off[:, None] + offs_p[None, :], x, mask=inb[:, None] & (offs_p[None, :] < n_masks))
    else:
        tl.store(ptr + s_off, x, mask=inb)


# ----------------------------------------------------------------------------------------------
# Masks and the mode algebra
# ----------------------------------------------------------------------------------------------
@triton.jit
def _col(x, offs_p, j):
    """Column j of a ``[BLOCK, PP]`` statistics tile -> ``[BLOCK]``."""
    return tl.sum(tl.where(offs_p[None, :] == j, x, 0.0), axis=1)


@triton.jit
def _has(bits, j):
    return ((bits >> j) & 1) != 0


@triton.jit
def _mask_bits(q_rows, k_rows, masks, MODE: tl.constexpr, PACKED: tl.constexpr):
    """``[BM, BN]`` int32 bit field: bit j set iff key n is visible to row m under mask j.

    ``masks_ptr``: the int32 table of the call's mask descriptors, one per mask,
    ``kind + 4 * (param + 1)``: param is the radius r (-1 unbounded) for
    window/causal, the index into the dense buffer for dense masks. Window and causal are one
    band test ``lo <= i - k <= lo + span``, done as an unsigned compare (window: lo = -r,
    span = 2r; causal: lo = 0, span = r), so a mask costs two operations per score and no
    ``[BM, BN]`` tile stays live across the mask loop. In NONE mode bit 0 is the plain
    visibility (same sequence, row attends, key visible).
    """
    sl_m, pos_m, in_m, ok_m, b_m, l_m, h_m = q_rows
    sl_n, pos_n, in_n, ok_n, b_n, l_n, h_n = k_rows
    n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end = masks
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
def _mask_sums(acc, x, bits, offs_p, n_masks):
    """``acc[i, j] + sum_k M_j[i, k] x[i, k]``: ``acc`` ``[BM, PP]``, ``x`` ``[BM, BN]``."""
    for j in range(n_masks):
        acc += tl.where(offs_p[None, :] == j, tl.sum(tl.where(_has(bits, j), x, 0.0), axis=1)[:, None], 0.0)
    return acc


@triton.jit
def _mix_coef(alpha, l):
    """``alpha_j / l_j`` clamped to the float32 range (a tiny ``l_j`` must not make inf · 0), 0 for
    an empty mask row."""
    return tl.where(l > 0, tl.minimum(tl.maximum(alpha / l, -_FMAX), _FMAX), 0.0)


@triton.jit
def _mask_maxes(acc, s, bits, offs_p, n_masks):
    """``max(acc[i, j], max_k M_j[i, k] s[i, k])``: per-mask row maxima (compares, no exp)."""
    for j in range(n_masks):
        acc = tl.where(offs_p[None, :] == j,
                       tl.maximum(acc, tl.max(tl.where(_has(bits, j), s, float("-inf")), axis=1)[:, None]), acc)
    return acc


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _far_masks(l, seen, offs_p):
    """MIX forward: ``[BM, PP]`` bool, the (row, mask) pairs that see a key (``seen``, ``[BM]`` bit
    field) but whose normaliser against the union max ``m`` underflowed below 2^-_FAR. Such a mask's
    max m_j is below m - _FAR (``l_j >= 2^(m_j - m)``), so its scores lie beyond the range that
    the shared exponentials keep; the others lose only terms under 2^-62 of their own sums."""
    return (((seen[:, None] >> offs_p[None, :]) & 1) != 0) & (l < 1.0 / (2.0 ** _FAR))


@triton.jit
def _any(far):
    """Whether any row of the tile holds a far mask (a scalar: the far paths are skipped as a whole)."""
    return tl.max(tl.max(far.to(tl.int32), axis=1), axis=0) > 0


@triton.jit
def _far_sums(acc, x, s, bits, base, offs_p, n_masks):
    """``acc[i, j] + sum_k M_j[i, k] x[i, k] 2^(s[i, k] - base[i, j])``: the far (row, mask) pairs'
    sums against their own bases (``base = +inf`` elsewhere: their terms are 0). The rare path: one
    exp per score and mask."""
    for j in range(n_masks):
        # [BM, BN]
        t = tl.where(_has(bits, j), x * tl.exp2(s - _col(base, offs_p, j)[:, None]), 0.0)
        acc += tl.where(offs_p[None, :] == j, tl.sum(t, axis=1)[:, None], 0.0)
    return acc


@triton.jit
def _far_weight(s, bits, coef, base, offs_p, n_masks):
    """``sum_j M_j[i, k] coef[i, j] 2^(s[i, k] - base[i, j])`` (``[BM, BN]``, ``base = +inf`` off
    the far pairs): the far masks' share of a weight tile, whose near terms ``2^(s - m) coef_j``
    lie below 2^-_FAR of these and are kept as they are."""
    w = tl.zeros(bits.shape, dtype=tl.float32)
    for j in range(n_masks):
        w += tl.where(_has(bits, j), _col(coef, offs_p, j)[:, None] * tl.exp2(s - _col(base, offs_p, j)[:, None]),
                      0.0)
    return w


@triton.jit
def _far_pass(acc, s, bits, far, offs_p, n_masks):
    """One key block of the far masks' statistics pass: ``acc = (m_far, l_far)`` (``[BM, PP]``),
    each mask's running max and its sum against it (online softmax per mask; only the pairs in
    ``far`` are kept, the others' bases are +inf)."""
    m_far, l_far = acc
    m_new = _mask_maxes(m_far, s, bits, offs_p, n_masks)
    corr = tl.where(m_far == float("-inf"), 0.0, tl.exp2(m_far - m_new))
    base = tl.where(far & (m_new > float("-inf")), m_new, float("inf"))
    return m_new, _far_sums(l_far * corr, 1.0, s, bits, base, offs_p, n_masks)


@triton.jit
def _tile_scores(b_q, q_rows, b_k, k_rows, alpha, qk_scale, masks, offs_p, b_do, b_v,
                 MODE: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr):
    """Scores of a ``[BM, BN]`` tile as the mode sees them: ``(s, vis, bits, w, s_nat, dp)``.

    ``s``: the softmax logits times log2(e) (SCALE: ``s * w``), ``vis``: the keys they cover,
    ``bits``: :func:`_mask_bits`. SCALE only: ``w = sum_j alpha_j M_j`` (keys with ``w <= 0``
    are not visible) and ``s_nat = scale * q.k`` (for dalpha); other modes return s for both.
    ``dp = dO V^T`` (b_do None: s, nothing computed), placed before the SCALE weighting, which
    keeps the backward kernels' register use where the tile sizes were fitted.
    """
    s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
    bits = _mask_bits(q_rows, k_rows, masks, MODE, PACKED)
    vis = bits != 0
    if b_do is None:
        dp = s
    else:
        dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    w = s
    s_nat = s
    if MODE == _SCALE:
        w = _mix_weight(bits, alpha, offs_p, masks[0])
        vis = vis & (w > 0)
        s_nat = s * (1.0 / _LOG2E)
        s = s * w
    return s, vis, bits, w, s_nat, dp


@triton.jit
def _key_block(offs_n, Nk, n_valid, prog, pad, kv, offs_d, d, q_rows, b_q, alpha, qk_scale, masks, offs_p,
               MODE: tl.constexpr, PACKED: tl.constexpr, PRECISION: tl.constexpr):
    """Prologue of a block of a loop over keys: the key tile (:func:`_tile`) and its scores against
    the query tile (:func:`_tile_scores`): ``(b_v, s, vis, bits)``."""
    k_rows, b_k, b_v = _tile(offs_n, Nk, n_valid, prog, pad, kv, offs_d, d, True, PACKED)
    s, vis, bits, w, s_nat, dp = _tile_scores(b_q, q_rows, b_k, k_rows, alpha, qk_scale, masks, offs_p,
                                              None, None, MODE, PACKED, PRECISION)
    return b_v, s, vis, bits


@triton.jit
def _online_softmax(m_i, s, vis):
    """One step of the (base-2) online softmax over the visible scores of a tile:
    ``(m_new, m_use, p, corr)``, ``m_new`` the running row max, ``m_use`` the same with 0 for a row
    that sees nothing yet, ``p = 2^(s - m_use)`` and ``corr = 2^(m_i - m_use)`` the rescale of
    the terms so far. ``m_i = -inf``: the statistics of this tile alone."""
    m_new = tl.maximum(m_i, tl.max(tl.where(vis, s, float("-inf")), axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    # [BM, BN]
    p = tl.where(vis, tl.exp2(s - m_use[:, None]), 0.0)
    return m_new, m_use, p, tl.exp2(m_i - m_use)


@triton.jit
def _mix_whole_rows_fwd(p, bits, alpha, offs_p, n_masks, BLOCK_M: tl.constexpr):
    """MIX forward on rows held whole in one tile (``p = 2^(s - m)``), one pass over the masks:
    ``l_j = sum_k M_j p``, ``c_j = alpha_j / l_j``, ``C = sum_j M_j c_j`` (``[BM, BN]``).
    Returns ``(C, l, far)`` with l and far (:func:`_far_masks`) ``[BM, PP]``; a far pair's c_j
    is left out of C (its l_j underflowed): the caller adds its terms."""
    w = tl.zeros(bits.shape, dtype=tl.float32)
    l_mix = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
    for j in range(n_masks):
        has_j = _has(bits, j)
        # [BM]
        l_j = tl.sum(tl.where(has_j, p, 0.0), axis=1)
        c_j = tl.where(l_j < 1.0 / (2.0 ** _FAR), 0.0, _mix_coef(_col(alpha, offs_p, j), l_j))
        w += tl.where(has_j, c_j[:, None], 0.0)
        l_mix += tl.where(offs_p[None, :] == j, l_j[:, None], 0.0)
    return w, l_mix, _far_masks(l_mix, tl.reduce(bits, 1, _or), offs_p)


@triton.jit
def _mix_whole_rows_bwd(p, s, m, dp, bits, alpha, offs_p, n_masks, dalpha_out, BLOCK_M: tl.constexpr):
    """MIX backward on rows held whole in one tile (``p = 2^(s - m)``, m the union max), one pass
    over the masks: ``P~_j = p`` on mask j's keys, or ``2^(s - m_j)`` in the rows where the mask's
    own max m_j is far (more than _FAR) below m (an exp per score only when some row of the tile
    has it far); ``l_j = sum_k P~_j``, ``c_j = alpha_j / l_j``,
    ``delta_j = sum_k P~_j dP / l_j`` (normalised by the l_j recomputed here, not by
    2^(m_ref - lse_j), whose rounding would leave ``sum_k dS != 0``), written as dalpha_j through
    ``dalpha_out = (dalpha_ptr, sl_m, seq0, n_seq, seqs_per_prog)``. Returns ``(W, dS)``
    (``[BM, BN]``): ``W = sum_j c_j P~_j``, ``dS = sum_j c_j P~_j (dP - delta_j)``."""
    w = tl.zeros(bits.shape, dtype=tl.float32)
    ds = tl.zeros(bits.shape, dtype=tl.float32)
    for j in range(n_masks):
        has_j = _has(bits, j)
        # [BM]
        m_j = tl.max(tl.where(has_j, s, float("-inf")), axis=1)
        far_j = (m_j > float("-inf")) & (m - m_j > _FAR)
        # [BM, BN]
        p_j = p
        if tl.max(far_j.to(tl.int32), axis=0) > 0:
            p_j = tl.where(far_j[:, None], tl.exp2(s - m_j[:, None]), p)
        p_j = tl.where(has_j, p_j, 0.0)
        # [BM]
        l_j = tl.sum(p_j, axis=1)
        c_j = _mix_coef(_col(alpha, offs_p, j), l_j)
        w += c_j[:, None] * p_j
        delta_j = tl.sum(p_j * dp, axis=1) / tl.where(l_j > 0, l_j, 1.0)
        ds += c_j[:, None] * p_j * (dp - delta_j[:, None])
        _store_dalpha_segments(dalpha_out, delta_j, j, n_masks, BLOCK_M)
    return w, ds


@triton.jit
def _grad_tile(p, dp, w, e, s_nat, MODE: tl.constexpr):
    """``(W, dS, g)`` of a tile: W the final attention weights (for dV), dS the score gradient.

    MIX (``p = 2^(s - m)``, ``w = C = sum_j M_j c_j``, ``e = E = sum_j M_j c_j delta_j``,
    ``[BM, BN]``): ``W = p C``, ``dS = p (dP C - E)``.
    NONE / SCALE (``p = P`` normalised, ``e = delta`` ``[BM]``): ``W = P``,
    ``dS' = P (dP - delta)``; SCALE (w from :func:`_tile_scores`): ``g = dS' * s_nat``
    (``dalpha_j = sum_k M_j g``), ``dS = dS' * w``.
    """
    if MODE == _MIX:
        attn = p * w
        ds = p * (dp * w - e)
        g = ds
    else:
        attn = p
        ds = p * (dp - e[:, None])
        g = ds * s_nat
        if MODE == _SCALE:
            ds = ds * w
    return attn, ds, g


@triton.jit
def _store_dalpha_segments(dalpha_out, vals, j, n_masks, BLOCK_M: tl.constexpr):
    """Sum ``vals`` (``[BLOCK_M]``, one per row) over the rows of each packed sequence and write
    ``dalpha[seq, j]``: the reduction over a routing group stays inside the owning program.
    ``dalpha_out = (dalpha_ptr, sl_m, seq0, n_seq, seqs_per_prog)``."""
    dalpha_ptr, sl_m, seq0, n_seq, seqs_per_prog = dalpha_out
    offs_s = tl.arange(0, BLOCK_M)
    # [BLOCK_M] (one entry per packed sequence)
    tot = tl.sum(tl.where(sl_m[:, None] == offs_s[None, :], vals[:, None], 0.0), axis=0)
    tl.store(dalpha_ptr + (seq0 + offs_s).to(tl.int64) * n_masks + j, tot,
             mask=(offs_s < seqs_per_prog) & (seq0 + offs_s < n_seq))


@triton.jit
def _store_dalpha_rows(dalpha_ptr, terms, seg, n_masks, offs_p):
    """``dalpha[seg, j] = sum_i terms[i, j]`` (``terms`` ``[BLOCK_M, PP]``): one program's
    partial over its rows of one sequence."""
    tl.store(dalpha_ptr + seg.to(tl.int64) * n_masks + offs_p, tl.sum(terms, axis=0), mask=offs_p < n_masks)


@triton.jit
def _row_ref(stats_ptr, s_off, rows, offs_p, n_masks, MODE: tl.constexpr):
    """The looping backward's per-row reference ``(ref, base, far)`` for ``p = 2^(s - ref)``
    (``ref`` ``[BM]``): the saved lse (NONE / SCALE: p is the softmax itself) or, MIX,
    ``max_j lse_j`` (0 for a row with no visible key) from ``lse_j = base_j + log2 l_j``: p <= 1
    (the mask holding the row maximum has l_j >= 1), and its rounding cancels as the l_j are
    recomputed against it. MIX also gives ``base`` (``[BM, PP]``): lse_j for the far masks, whose
    lse_j lies more than _FAR below ref (their p underflows), taken against it instead; +inf for
    the others. Other modes return ref for base."""
    if MODE == _MIX:
        # [BM, PP]
        lse = _load_row_stats(stats_ptr, s_off, rows, offs_p, n_masks, float("-inf"), True)
        ref = tl.max(lse, axis=1)
        ref = tl.where(ref == float("-inf"), 0.0, ref)
        base = tl.where((lse > float("-inf")) & (ref[:, None] - lse > _FAR), lse, float("inf"))
    else:
        ref = _load_row_stats(stats_ptr, s_off, rows, offs_p, n_masks, 0.0, False)
        base = ref
    return ref, base


@triton.jit
def _bwd_tile(b_q, b_do, q_rows, b_k, b_v, k_rows, alpha, row_ref, c, e, qk_scale, masks, offs_p,
              MODE: tl.constexpr, PRECISION: tl.constexpr):
    """A tile of the looping backward from the saved statistics: ``row_ref`` from :func:`_row_ref`;
    MIX: c_j = alpha_j / l_j and e_j = c_j delta_j (``[BM, PP]``), otherwise ``e = delta`` (``[BM]``,
    c unused). Returns ``(W, dS, g, bits)`` (:func:`_grad_tile`); MIX adds the far masks' terms
    ``W += F_c``, ``dS += dP F_c - F_e`` (``F_x = sum_j M_j x_j 2^(s - lse_j)`` over them) when the
    tile holds any."""
    ref, base = row_ref
    # [BM, BN]
    s, vis, bits, w, s_nat, dp = _tile_scores(b_q, q_rows, b_k, k_rows, alpha, qk_scale, masks, offs_p,
                                              b_do, b_v, MODE, False, PRECISION)
    p = tl.where(vis, tl.exp2(s - ref[:, None]), 0.0)
    e_t = e
    if MODE == _MIX:
        w = _mix_weight(bits, c, offs_p, masks[0])
        e_t = _mix_weight(bits, e, offs_p, masks[0])
    attn, ds, g = _grad_tile(p, dp, w, e_t, s_nat, MODE)
    if MODE == _MIX:
        if _any(base < float("inf")):
            f_c = _far_weight(s, bits, c, base, offs_p, masks[0])
            attn += f_c
            ds += dp * f_c - _far_weight(s, bits, e, base, offs_p, masks[0])
    return attn, ds, g, bits


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
    prog = _program((pid // n_blocks) * seqs_per_prog, n_seq, L, H)
    pad = (flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad)
    masks = (n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end)
    k_strides = (sk_b, sk_l, sk_h, sk_n)
    n_keys = seqs_per_prog * Nk
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)
    offs_nb = tl.arange(0, BLOCK_N)

    q_rows = _tile_rows(blk * BLOCK_M + tl.arange(0, BLOCK_M), Nq, seqs_per_prog * Nq, prog, pad, False,
                        ONE_BLOCK)
    # [BLOCK_M, BLOCK_D]
    b_q = _load_rows(q_ptr, q_rows, (sq_b, sq_l, sq_h, sq_n), offs_d, d)
    # [BLOCK_M or 1, PP]
    b_alpha = _load_alpha(alpha_ptr, q_rows, (sa_b, sa_l, sa_h, sa_p), n_masks, offs_p, MODE, ONE_BLOCK)

    # [BLOCK_M]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # [BLOCK_M] softmax normaliser (NONE / SCALE)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # [BLOCK_M, PP] one normaliser per mask (MIX)
    l_mix = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
    # [BLOCK_M, BLOCK_D]
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_kblocks = tl.cdiv(n_keys, BLOCK_N)

    # [BLOCK_M, PP] MIX: the far (row, mask) pairs (_far_masks)
    far = tl.zeros([BLOCK_M, _PP], dtype=tl.int1)
    if MODE == _MIX and not ONE_BLOCK:
        # pass 1: row max over the union of the masks and one normaliser per mask (QK^T only)
        # [BLOCK_M] the masks each row sees a key under
        seen = tl.zeros([BLOCK_M], dtype=tl.int32)
        for kb in range(n_kblocks):
            # [BLOCK_M, BLOCK_N] s (no V: the K tile comes back in its place)
            b_k, s, vis, bits = _key_block(kb * BLOCK_N + offs_nb, Nk, n_keys, prog, pad,
                                           (k_ptr, k_strides, None, None), offs_d, d, q_rows, b_q, b_alpha,
                                           qk_scale, masks, offs_p, MODE, ONE_BLOCK, PRECISION)
            m_new, m_use, p, corr = _online_softmax(m_i, s, vis)
            l_mix = _mask_sums(l_mix * corr[:, None], p, bits, offs_p, n_masks)
            seen = seen | tl.reduce(bits, 1, _or)
            m_i = m_new
        far = _far_masks(l_mix, seen, offs_p)
        # [BLOCK_M, PP] the far pairs' exponent bases (+inf elsewhere)
        base = tl.full([BLOCK_M, _PP], float("inf"), dtype=tl.float32)
        has_far = _any(far)
        if has_far:
            # pass 1b, only for a row block holding a far pair: each far mask's max, l_j against it
            acc_far = (tl.full([BLOCK_M, _PP], float("-inf"), dtype=tl.float32),
                       tl.zeros([BLOCK_M, _PP], dtype=tl.float32))
            for kb in range(n_kblocks):
                b_k, s, vis, bits = _key_block(kb * BLOCK_N + offs_nb, Nk, n_keys, prog, pad,
                                               (k_ptr, k_strides, None, None), offs_d, d, q_rows, b_q, b_alpha,
                                               qk_scale, masks, offs_p, MODE, ONE_BLOCK, PRECISION)
                acc_far = _far_pass(acc_far, s, bits, far, offs_p, n_masks)
            base = tl.where(far, acc_far[0], float("inf"))
            l_mix = tl.where(far, acc_far[1], l_mix)

    m_fix = tl.where(m_i == float("-inf"), 0.0, m_i)
    # [BLOCK_M, PP] per-mask weight alpha_j / l_j (MIX, two passes)
    coef = _mix_coef(b_alpha, l_mix)
    for kb in range(n_kblocks):
        # [BLOCK_N, BLOCK_D] v, [BLOCK_M, BLOCK_N] s
        b_v, s, vis, bits = _key_block(kb * BLOCK_N + offs_nb, Nk, n_keys, prog, pad,
                                       (k_ptr, k_strides, v_ptr, (sv_b, sv_l, sv_h, sv_n)), offs_d, d,
                                       q_rows, b_q, b_alpha, qk_scale, masks, offs_p, MODE, ONE_BLOCK, PRECISION)
        if MODE == _MIX:
            if ONE_BLOCK:
                # the whole row is in this tile: statistics and output from the same scores (the
                # far pairs left out, added below)
                m_i, m_fix, p, corr = _online_softmax(m_i, s, vis)
                # [BLOCK_M, BLOCK_N]
                w, l_mix, far = _mix_whole_rows_fwd(p, bits, b_alpha, offs_p, n_masks, BLOCK_M)
                w = p * w
            else:
                if has_far:
                    # the far pairs' own product first: s is then dead once p is taken
                    acc += tl.dot(_far_weight(s, bits, coef, base, offs_p, n_masks).to(b_v.dtype), b_v,
                                  input_precision=PRECISION)
                # [BLOCK_M, BLOCK_N]
                w = tl.where(vis, tl.exp2(s - m_fix[:, None]), 0.0) * _mix_weight(bits, coef, offs_p, n_masks)
            acc += tl.dot(w.to(b_v.dtype), b_v, input_precision=PRECISION)
        else:
            m_new, m_use, p, corr = _online_softmax(m_i, s, vis)
            l_i = l_i * corr + tl.sum(p, axis=1)
            acc = acc * corr[:, None] + tl.dot(p.to(b_v.dtype), b_v, input_precision=PRECISION)
            m_i = m_new

    if MODE == _MIX and ONE_BLOCK:
        base = tl.full([BLOCK_M, _PP], float("inf"), dtype=tl.float32)
        if _any(far):
            # a row of the tile holds a far pair: the tile again (K, V reloaded rather than the
            # scores kept live through the common path), each far mask's max, l_j and share
            b_v, s, vis, bits = _key_block(offs_nb, Nk, n_keys, prog, pad,
                                           (k_ptr, k_strides, v_ptr, (sv_b, sv_l, sv_h, sv_n)), offs_d, d,
                                           q_rows, b_q, b_alpha, qk_scale, masks, offs_p, MODE, ONE_BLOCK, PRECISION)
            acc_far = _far_pass((tl.full([BLOCK_M, _PP], float("-inf"), dtype=tl.float32),
                                 tl.zeros([BLOCK_M, _PP], dtype=tl.float32)), s, bits, far, offs_p, n_masks)
            base = tl.where(far, acc_far[0], float("inf"))
            l_mix = tl.where(far, acc_far[1], l_mix)
            w = _far_weight(s, bits, _mix_coef(b_alpha, l_mix), base, offs_p, n_masks)
            acc += tl.dot(w.to(b_v.dtype), b_v, input_precision=PRECISION)

    m_fix = tl.where(m_i == float("-inf"), 0.0, m_i)
    if MODE == _MIX:
        out = acc
        # [BLOCK_M, PP] lse_j = base_j + log2 l_j, base_j the union max but for the far pairs
        stats = tl.where(l_mix > 0, tl.where(base < float("inf"), base, m_fix[:, None]) + tl.log2(l_mix),
                         float("-inf"))
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        # [BLOCK_M]
        stats = tl.where(l_i > 0, m_fix + tl.log2(l_i), float("-inf"))
    _store_row_stats(stats_ptr, _offsets(q_rows, (ss_b, ss_l, ss_h, ss_n)), q_rows, offs_p, n_masks, stats,
                     MODE == _MIX)
    _store_rows(o_ptr, q_rows, (so_b, so_l, so_h, so_n), offs_d, d, out)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
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
    seq0 = tl.program_id(0) * seqs_per_prog
    prog = _program(seq0, n_seq, L, H)
    pad = (flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)

    # both tiles' rows before any load: this order keeps the registers where the tiles were fitted
    q_rows = _tile_rows(tl.arange(0, BLOCK_M), Nq, seqs_per_prog * Nq, prog, pad, False, True)
    k_rows = _tile_rows(tl.arange(0, BLOCK_N), Nk, seqs_per_prog * Nk, prog, pad, True, True)
    # [BLOCK_M, BLOCK_D]
    b_q = _load_rows(q_ptr, q_rows, (sq_b, sq_l, sq_h, sq_n), offs_d, d)
    b_do = _load_rows(do_ptr, q_rows, (sdo_b, sdo_l, sdo_h, sdo_n), offs_d, d)
    # [BLOCK_N, BLOCK_D]
    b_k = _load_rows(k_ptr, k_rows, (sk_b, sk_l, sk_h, sk_n), offs_d, d)
    b_v = _load_rows(v_ptr, k_rows, (sv_b, sv_l, sv_h, sv_n), offs_d, d)
    # [BLOCK_M, PP]
    b_alpha = _load_alpha(alpha_ptr, q_rows, (sa_b, sa_l, sa_h, sa_p), n_masks, offs_p, MODE, True)

    # [BLOCK_M, BLOCK_N]
    s, vis, bits, w, s_nat, dp = _tile_scores(b_q, q_rows, b_k, k_rows, b_alpha, qk_scale,
                                              (n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end),
                                              offs_p, b_do, b_v, MODE, True, PRECISION)
    # The whole row is in the tile: its statistics are recomputed exactly as the forward computed
    # them rather than read back from ``lse``, whose rounding (half an ulp of |lse|, ~1e-6 at
    # logits ~16) would scale every P by the same (1 + eps) and leave sum_k dS != 0: an error
    # proportional to the logits themselves once dS is multiplied by s (dalpha) or K (dq).
    m, m_use, p, corr = _online_softmax(tl.full([BLOCK_M], float("-inf"), dtype=tl.float32), s, vis)
    dalpha_out = (dalpha_ptr, q_rows[0], seq0, n_seq, seqs_per_prog)
    if MODE == _MIX:
        # [BLOCK_M, BLOCK_N] W and dS
        attn, ds = _mix_whole_rows_bwd(p, s, m_use, dp, bits, b_alpha, offs_p, n_masks, dalpha_out, BLOCK_M)
        g = ds
    else:
        l = tl.sum(p, axis=1)
        p = p * (1.0 / tl.where(l > 0, l, 1.0))[:, None]
        # [BLOCK_M] delta = sum_k P dP
        e = tl.sum(p * dp, axis=1)
        attn, ds, g = _grad_tile(p, dp, w, e, s_nat, MODE)
    if MODE == _SCALE:
        for j in range(n_masks):
            _store_dalpha_segments(dalpha_out, tl.sum(tl.where(_has(bits, j), g, 0.0), axis=1), j, n_masks,
                                   BLOCK_M)

    # [BLOCK_N, BLOCK_D]
    b_dv = tl.dot(tl.trans(attn).to(b_do.dtype), b_do, input_precision=PRECISION)
    _store_rows(dv_ptr, k_rows, (sdv_b, sdv_l, sdv_h, sdv_n), offs_d, d, b_dv)
    # [BLOCK_N, BLOCK_D]
    b_dk = tl.dot(tl.trans(ds).to(b_q.dtype), b_q, input_precision=PRECISION) * scale
    _store_rows(dk_ptr, k_rows, (sdk_b, sdk_l, sdk_h, sdk_n), offs_d, d, b_dk)
    # [BLOCK_M, BLOCK_D]
    b_dq = tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION) * scale
    _store_rows(dq_ptr, q_rows, (sdq_b, sdq_l, sdq_h, sdq_n), offs_d, d, b_dq)


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
    prog = _program(seq0, n_seq, L, H)
    pad = (flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad)
    masks = (n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end)
    kv = (k_ptr, (sk_b, sk_l, sk_h, sk_n), v_ptr, (sv_b, sv_l, sv_h, sv_n))
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)
    offs_nb = tl.arange(0, BLOCK_N)
    n_kblocks = tl.cdiv(Nk, BLOCK_N)

    # [BLOCK_M, BLOCK_D]
    q_rows, b_q, b_do = _tile(blk * BLOCK_M + tl.arange(0, BLOCK_M), Nq, Nq, prog, pad,
                              (q_ptr, (sq_b, sq_l, sq_h, sq_n), do_ptr, (sdo_b, sdo_l, sdo_h, sdo_n)), offs_d, d,
                              False, False)
    # [1, PP]
    b_alpha = _load_alpha(alpha_ptr, q_rows, (sa_b, sa_l, sa_h, sa_p), n_masks, offs_p, MODE, False)
    s_off = _offsets(q_rows, (ss_b, ss_l, ss_h, ss_n))
    # [BLOCK_M], [BLOCK_M, PP] x 2
    row_ref = _row_ref(stats_ptr, s_off, q_rows, offs_p, n_masks, MODE)
    ref, base = row_ref
    # [BLOCK_M, BLOCK_D]
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if MODE == _MIX:
        # [BLOCK_M, PP] sum_k p dP and l_j on each mask, pass 1 over the keys
        delta = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
        l_mix = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
        for kb in range(n_kblocks):
            # [BLOCK_N, BLOCK_D] v, [BLOCK_M, BLOCK_N] s
            b_v, s, vis, bits = _key_block(kb * BLOCK_N + offs_nb, Nk, Nk, prog, pad, kv, offs_d, d, q_rows, b_q,
                                           b_alpha, qk_scale, masks, offs_p, MODE, False, PRECISION)
            p = tl.where(vis, tl.exp2(s - ref[:, None]), 0.0)
            dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
            delta = _mask_sums(delta, p * dp, bits, offs_p, n_masks)
            l_mix = _mask_sums(l_mix, p, bits, offs_p, n_masks)
            if _any(base < float("inf")):
                # the far masks' sums against their own lse (their p above is below 2^-_FAR of these)
                delta = _far_sums(delta, dp, s, bits, base, offs_p, n_masks)
                l_mix = _far_sums(l_mix, 1.0, s, bits, base, offs_p, n_masks)
        # [BLOCK_M, PP]
        # delta_j = sum_k P_j dP with P_j = p / l_j normalised by the l_j just recomputed (not by
        # 2^(m_ref - lse_j), whose rounding would leave sum_k dS != 0)
        delta = delta / tl.where(l_mix > 0, l_mix, 1.0)
        c = _mix_coef(b_alpha, l_mix)
        e = c * delta
        _store_row_stats(coef_ptr, s_off, q_rows, offs_p, n_masks, c, True)
        _store_dalpha_rows(dalpha_ptr, delta, blk * n_seq + seq0, n_masks, offs_p)
    else:
        # [BLOCK_M, BLOCK_D]
        b_o = _load_rows(o_ptr, q_rows, (so_b, so_l, so_h, so_n), offs_d, d)
        # [BLOCK_M] delta = rowsum(dO * O)
        delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), axis=1)
        e = delta
        c = delta
        # [BLOCK_M, PP]
        dalpha_terms = tl.zeros([BLOCK_M, _PP], dtype=tl.float32)
    _store_row_stats(delta_ptr, s_off, q_rows, offs_p, n_masks, delta, MODE == _MIX)

    for kb in range(n_kblocks):
        # [BLOCK_N, BLOCK_D]
        k_rows, b_k, b_v = _tile(kb * BLOCK_N + offs_nb, Nk, Nk, prog, pad, kv, offs_d, d, True, False)
        # [BLOCK_M, BLOCK_N]
        attn, ds, g, bits = _bwd_tile(b_q, b_do, q_rows, b_k, b_v, k_rows, b_alpha, row_ref, c, e, qk_scale,
                                      masks, offs_p, MODE, PRECISION)
        if MODE == _SCALE:
            dalpha_terms = _mask_sums(dalpha_terms, g, bits, offs_p, n_masks)
        b_dq += tl.dot(ds.to(b_k.dtype), b_k, input_precision=PRECISION)

    if MODE == _SCALE:
        _store_dalpha_rows(dalpha_ptr, dalpha_terms, blk * n_seq + seq0, n_masks, offs_p)
    _store_rows(dq_ptr, q_rows, (sdq_b, sdq_l, sdq_h, sdq_n), offs_d, d, b_dq * scale)


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
    prog = _program(pid // n_blocks, n_seq, L, H)
    pad = (flen_ptr, has_flen, kpad_ptr, skp_b, skp_n, has_kpad)
    masks = (n_masks, masks_ptr, dense_ptr, sd_m, sd_q, sd_k, g_start, g_end)
    qdo = (q_ptr, (sq_b, sq_l, sq_h, sq_n), do_ptr, (sdo_b, sdo_l, sdo_h, sdo_n))
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, _PP)
    offs_mb = tl.arange(0, BLOCK_M)

    # [BLOCK_N, BLOCK_D]
    k_rows, b_k, b_v = _tile(blk * BLOCK_N + tl.arange(0, BLOCK_N), Nk, Nk, prog, pad,
                             (k_ptr, (sk_b, sk_l, sk_h, sk_n), v_ptr, (sv_b, sv_l, sv_h, sv_n)), offs_d, d,
                             True, False)
    # [1, PP]
    b_alpha = _load_alpha(alpha_ptr, k_rows, (sa_b, sa_l, sa_h, sa_p), n_masks, offs_p, MODE, False)
    # [BLOCK_N, BLOCK_D]
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # [BLOCK_N, BLOCK_D]
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for qb in range(tl.cdiv(Nq, BLOCK_M)):
        # [BLOCK_M, BLOCK_D]
        q_rows, b_q, b_do = _tile(qb * BLOCK_M + offs_mb, Nq, Nq, prog, pad, qdo, offs_d, d, False, False)
        s_off = _offsets(q_rows, (ss_b, ss_l, ss_h, ss_n))
        # [BLOCK_M], [BLOCK_M, PP] x 2
        row_ref = _row_ref(stats_ptr, s_off, q_rows, offs_p, n_masks, MODE)
        # [BLOCK_M, PP] (MIX) or [BLOCK_M]: delta, and MIX alpha_j / l_j, from _attn_bwd_dq
        delta = _load_row_stats(delta_ptr, s_off, q_rows, offs_p, n_masks, 0.0, MODE == _MIX)
        if MODE == _MIX:
            c = _load_row_stats(coef_ptr, s_off, q_rows, offs_p, n_masks, 0.0, True)
            e = c * delta
        else:
            e = delta
            c = delta
        # [BLOCK_M, BLOCK_N]
        attn, ds, g, bits = _bwd_tile(b_q, b_do, q_rows, b_k, b_v, k_rows, b_alpha, row_ref, c, e, qk_scale,
                                      masks, offs_p, MODE, PRECISION)
        b_dv += tl.dot(tl.trans(attn).to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dk += tl.dot(tl.trans(ds).to(b_q.dtype), b_q, input_precision=PRECISION)

    _store_rows(dk_ptr, k_rows, (sdk_b, sdk_l, sdk_h, sdk_n), offs_d, d, b_dk * scale)
    _store_rows(dv_ptr, k_rows, (sdv_b, sdv_l, sdv_h, sdv_n), offs_d, d, b_dv)
