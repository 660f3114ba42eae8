// CUDA attention kernels: forward, backward dq (+ delta, dalpha partials), backward dk/dv.
// Spatial and temporal attention, modes none/mix/scale, routed masks computed in-kernel
// (attn_math.h), key_padding, frame_lengths; addressing and parameters in attention.h.
//
// Style: CUDA-core FP32 FMA on shared-memory tiles, warp shuffles for row reductions, no
// tensor-core intrinsics, no inline PTX, no float atomics (so it runs under the CPU emulation
// and every result is deterministic).
//
// Tiling. A block has kThreads threads and owns a tile of BM query rows (forward, dq) or BN keys
// (dk/dv); the threads of a row are TPR = kThreads / BM consecutive lanes of one warp, so a row's
// max and sums are xor-shuffles inside that lane group. Score (i, k) is computed by thread
// (i, k % TPR) straight from the shared Q and K rows, so no barrier separates the scores from the
// softmax. The block loops over the key tiles (forward, dq) or query tiles (dk/dv): any Nq, Nk.
// Short sequences are packed: a block holds spp = plan(...).spp whole sequences, tile row r is
// row r % N of sequence r / N, and scores between different sequences are masked out (so a
// sequence of N <= BM rows lives in one block, and T = 8 does not leave 7/8 of a tile idle).
// Shared rows are padded to BD + 1 floats: threads reading different rows hit different banks.
//
// Every kernel visits tiles the same way: stage_queries / stage_keys fill a tile's Row records and
// shared rows, score_keys gives one query row's scores and mask bits against the staged key tile,
// and grad_row / score_grad hold the backward algebra both backward kernels share.
//
// Forward (scores s in base 2): NONE/SCALE run one flash pass (online max m, normaliser l;
// SCALE multiplies s by w = sum_j alpha_j M_j and drops keys with w <= 0). MIX runs a first pass
// for the union max m, the per-mask maxima m_j and one normaliser l_j per mask against m, then
// one accumulator weighted by exp2(s - m) * sum_j M_j alpha_j / l_j. A far mask (m - m_j >
// kFarMask, attn_math.h), whose l_j against m would underflow, has l_j retaken against m_j in an
// extra pass that only blocks holding such a row run, and its weights exp2(s - m_j) alpha_j / l_j
// are added per score. stats: base + log2 l (per mask in MIX, base = m or m_j), -inf when empty.
// Backward: the algebra of kernels/attention/device.py. dalpha partials are summed per
// (query tile, sequence) inside the block in row order and written to [n_qtiles, n_seq, P].
#pragma once

#include "../common/cuda_compat.h"
#include "attention.h"

namespace stq {
namespace attn {

constexpr int kThreads = 256;

// The forward and dq kernels declare one block per SM (__launch_bounds__(kThreads, 1)): the
// per-row, per-mask arrays plus the score rows need more than the 128 registers that two blocks
// of 256 threads would leave (ptxas spilled at BD = 64).
// Tile shapes per head-width bucket BD (64, 128, 256): static shared memory stays under 48 KiB
// and every thread accumulates 16 (forward) or 8 + 16 (backward) floats.
template <int BD>
struct FwdTile {
  static constexpr int BM = 4096 / BD, BN = BM / 2, TPR = kThreads / BM, CPT = BD / TPR,
                       KPT = (BN + TPR - 1) / TPR;
};
template <int BD>
struct BwdTile {
  static constexpr int BM = 2048 / BD, BN = BM, TPR = kThreads / BM, CPT = BD / TPR,
                       KPT = (BN + TPR - 1) / TPR;
};

// One query or key row of a tile.
struct Row {
  int pos;      // position in its sequence
  int sl;       // local sequence index in the block, -1 past the end
  int b, l, h;  // sequence coordinates
  int ok;       // query: attends (not a padded frame); key: visible (not padding)
};

__device__ inline Row make_row(int gr, int N, int seq0, const Params& p, bool key) {
  Row r;
  const int sl = gr / N;
  const int seq = seq0 + sl;
  r.pos = gr - sl * N;
  r.h = seq % p.H;
  r.l = (seq / p.H) % p.L;
  r.b = seq / (p.H * p.L);
  const bool in = sl < p.spp && seq < p.n_seq;
  r.sl = in ? sl : -1;
  bool ok = in;
  if (ok && p.flen != nullptr) ok = r.pos < clip_frames(p.flen[r.b], N);
  if (ok && key && p.kpad != nullptr) ok = !p.kpad[r.b * p.skp_b + (int64_t)r.pos * p.skp_n];
  r.ok = ok;
  return r;
}

// Where a thread works: row (forward, dq) or key (dk/dv) i of its block's tile, lane lr of that
// row's TPR lanes; the block's tile and its group's first sequence (the launchers number blocks
// group * n_tiles + tile, a group being spp whole sequences).
struct Place {
  int i, lr, tile, seq0;
};
template <int TPR>
__device__ inline Place place(int n_tiles, int spp) {
  const int tid = threadIdx.x, block = blockIdx.x;
  return {tid / TPR, tid % TPR, block % n_tiles, block / n_tiles * spp};
}

__device__ inline int64_t offset(const Row& r, const Strides& s) {
  return r.b * s.b + r.l * s.l + r.h * s.h + (int64_t)r.pos * s.n;
}

// dst[r][c] = x[row r, column c] as float; 0 for rows that are not ok and columns >= d.
template <typename T, int BD, int R>
__device__ inline void load_tile(float (*dst)[BD + 1], const void* x, const Strides& s, const Row* rows, int d) {
  const T* base = static_cast<const T*>(x);
  for (int e = threadIdx.x; e < R * BD; e += kThreads) {
    const int r = e / BD, c = e % BD;
    dst[r][c] = (rows[r].ok && c < d) ? to_float(base[offset(rows[r], s) + c]) : 0.f;
  }
}

// Tile `tile` (R rows, N per sequence) of the block's sequences, for every thread: its Row
// records, then tensor x (and y, unless sy is null) as float rows in shared memory. The first
// barrier waits for the readers of the previous tile, the last publishes this one.
template <typename T, int BD, int R>
__device__ inline void stage(Row* rows, int tile, int N, bool key, int seq0, const Params& p,
                             float (*sx)[BD + 1], const void* x, const Strides& xs,
                             float (*sy)[BD + 1], const void* y, const Strides& ys) {
  __syncthreads();
  for (int r = threadIdx.x; r < R; r += kThreads) rows[r] = make_row(tile * R + r, N, seq0, p, key);
  __syncthreads();
  load_tile<T, BD, R>(sx, x, xs, rows, p.d);
  if (sy != nullptr) load_tile<T, BD, R>(sy, y, ys, rows, p.d);
  __syncthreads();
}

// Query tile qt: the Q rows, and the dO rows unless sDO is null (forward).
template <typename T, int BD, int BM>
__device__ inline void stage_queries(Row* rows, float (*sQ)[BD + 1], float (*sDO)[BD + 1], int qt, int seq0,
                                     const Params& p) {
  stage<T, BD, BM>(rows, qt, p.Nq, false, seq0, p, sQ, p.q, p.sq, sDO, p.dout, p.sdo);
}

// Key tile kt: the K rows, and the V rows unless sV is null (the MIX forward's first pass).
template <typename T, int BD, int BN>
__device__ inline void stage_keys(Row* keys, float (*sK)[BD + 1], float (*sV)[BD + 1], int kt, int seq0,
                                  const Params& p) {
  stage<T, BD, BN>(keys, kt, p.Nk, true, seq0, p, sK, p.k, p.sk, sV, p.v, p.sv);
}

template <int TPR>
__device__ inline float row_max(float x) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <int TPR>
__device__ inline float row_sum(float x) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// out[u] = a . rows[lr + TPR * u] for the KPT keys of this thread: a[c] is read once for all of
// them (one shared load per FMA instead of two). Keys past the tile (lr + TPR * u >= BN, only when
// TPR * KPT > BN) read row BN - 1 and their result is ignored.
// A row with no key of its own sequence in the tile (k_lo == k_hi, packed tiles) skips the work.
template <int BD, int BN, int TPR, int KPT>
__device__ inline void row_dots(const float* a, const float (*rows)[BD + 1], int lr, int d, bool any,
                                float (&out)[KPT]) {
#pragma unroll
  for (int u = 0; u < KPT; ++u) out[u] = 0.f;
  if (!any) return;
#pragma unroll 4
  for (int c = 0; c < d; ++c) {
    const float x = a[c];
#pragma unroll
    for (int u = 0; u < KPT; ++u) out[u] = fmaf(x, rows[min(lr + TPR * u, BN - 1)][c], out[u]);
  }
}

// acc[u] = acc[u] * corr + sum_{k in [lo, hi)} w[k] rows[k][c] for this thread's columns
// c = lr + TPR * u: one row of P V (forward) or dS K (dq).
template <int BD, int TPR, int CPT>
__device__ inline void accumulate(float (&acc)[CPT], float corr, const float* w, const float (*rows)[BD + 1], int lo,
                                  int hi, int lr) {
#pragma unroll
  for (int u = 0; u < CPT; ++u) {
    const int c = lr + TPR * u;
    float a = acc[u] * corr;
    for (int k = lo; k < hi; ++k) a = fmaf(w[k], rows[k][c], a);
    acc[u] = a;
  }
}

// dst[c] = acc[u] * f for this thread's columns c = lr + TPR * u < d.
template <typename T, int TPR, int CPT>
__device__ inline void store_row(T* dst, const float (&acc)[CPT], float f, int lr, int d) {
#pragma unroll
  for (int u = 0; u < CPT; ++u) {
    const int c = lr + TPR * u;
    if (c < d) dst[c] = from_float<T>(acc[u] * f);
  }
}

// Tile-local range [lo, hi) of the rows (or keys) of local sequence sl in the tile starting at
// global index tile0 (B rows per tile, N per sequence); empty for sl < 0. The products with P / dS
// run over this range only, so packed sequences cost no FLOPs for each other's zeros.
__device__ inline void seq_range(int sl, int N, int tile0, int B, int& lo, int& hi) {
  lo = sl < 0 ? 0 : max(sl * N - tile0, 0);
  hi = sl < 0 ? 0 : max(min(sl * N + N - tile0, B), lo);
}

// Mask bits of score (q, k): 0 unless both rows are live and in the same sequence; bit 0 alone
// in mode NONE.
__device__ inline unsigned visible_bits(const Row& q, const Row& k, const Params& p) {
  if (!q.ok || !k.ok || q.sl != k.sl) return 0u;
  return p.mode == kModeNone ? 1u : mask_bits(q.pos, k.pos, p.masks);
}

// One query row against this thread's keys k = lr + TPR * u (u < KPT) of a staged key tile.
template <int KPT>
struct KeyScores {
  float s[KPT];        // qk_scale * q . k (base 2) where visible, -inf elsewhere
  float dp[KPT];       // dO . v (backward), 0 without dO
  unsigned bits[KPT];  // visible_bits; 0 for keys past the tile
  int k_lo, k_hi;      // the tile-local keys of the row's sequence (seq_range)
};

// The scores of query row `me` (shared rows q and, unless null, dout) against key tile kt.
template <int BD, int BN, int TPR, int KPT>
__device__ inline KeyScores<KPT> score_keys(const Row& me, const float* q, const float* dout, const Row* keys,
                                            const float (*sK)[BD + 1], const float (*sV)[BD + 1], int kt, int lr,
                                            const Params& p) {
  KeyScores<KPT> r;
  seq_range(me.sl, p.Nk, kt * BN, BN, r.k_lo, r.k_hi);
  const bool any = r.k_lo < r.k_hi;
  row_dots<BD, BN, TPR, KPT>(q, sK, lr, p.d, any, r.s);
  row_dots<BD, BN, TPR, KPT>(dout, sV, lr, p.d, any && dout != nullptr, r.dp);
#pragma unroll
  for (int u = 0; u < KPT; ++u) {
    const int k = lr + TPR * u;
    r.bits[u] = k < BN ? visible_bits(me, keys[k], p) : 0u;
    r.s[u] = r.bits[u] ? r.s[u] * p.qk_scale : neg_inf();
  }
  return r;
}

__device__ inline void load_alpha(float* alpha, const Row& r, const Params& p) {
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j)
    alpha[j] = (j < p.masks.n && r.sl >= 0)
                   ? p.alpha[r.b * p.sa_b + r.l * p.sa_l + r.h * p.sa_h + j * p.sa_p]
                   : 0.f;
}

// What the backward needs of one query row. NONE/SCALE: W = 2^(s w - lse) (w = 1 in NONE),
// delta = rowsum(dO * O). MIX: P_j = P~_j / l_j with P~_j = 2^(s - base_j) (mix_bases: base_j =
// m_ref but for the far masks) and l_j = sum_k P~_j, cj = alpha_j / l_j, ej = cj delta_j with
// delta_j = sum_k P_j dP: the dq kernel takes l_j and delta_j in its pass A and hands cj and delta_j
// to the dk/dv kernel through p.coef and p.delta. SCALE: cj = alpha_j, and ej collects the row's
// dalpha_j in the dq kernel.
struct GradRow {
  int64_t st_off;  // the row's offset in stats, delta and coef
  float lse, delta, m_ref;
  unsigned far;  // MIX: the far masks, exponentiated against base[j] = lse_j one by one
  float cj[kMaxMasks], ej[kMaxMasks], base[kMaxMasks];
};

// Row me's GradRow from the forward's stats; with_delta (the dk/dv kernel): delta, and in MIX cj
// and ej, from the dq kernel's p.delta and p.coef. Without it (the dq kernel), cj holds alpha_j.
__device__ inline GradRow grad_row(const Row& me, const Params& p, bool with_delta) {
  GradRow g;
  const int64_t st_off = g.st_off = offset(me, p.ss);
  g.lse = g.delta = g.m_ref = 0.f;
  g.far = 0u;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) g.ej[j] = g.base[j] = 0.f;
  load_alpha(g.cj, me, p);
  if (!me.ok) return g;
  if (p.mode != kModeMix) {
    g.lse = p.stats[st_off];
    if (with_delta) g.delta = p.delta[st_off];
    return g;
  }
  float lsej[kMaxMasks];
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) lsej[j] = j < p.masks.n ? p.stats[st_off + j] : neg_inf();
  g.far = mix_bases(lsej, p.masks.n, g.m_ref, g.base);
  if (with_delta) {
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) {
      if (j < p.masks.n) {
        g.cj[j] = p.coef[st_off + j];
        g.ej[j] = g.cj[j] * p.delta[st_off + j];
      }
    }
  }
  return g;
}

struct ScoreGrad {
  float w;   // the attention weight W of the score: dv += W dO
  float ds;  // dq += dS k, dk += dS q (times the softmax scale)
};

// W and dS of one visible score s (base 2) with dP = dp:
//   MIX:   W = sum_j M_j cj 2^(s - base_j),  dS = sum_j M_j 2^(s - base_j) (dp cj - ej), one exp
//          2^(s - m_ref) for the near masks, one more per far mask;
//   NONE:  W = 2^(s - lse),                 dS = W (dp - delta);
//   SCALE: W = 2^(s w - lse), w = sum_j M_j alpha_j,  dS = W (dp - delta) w;  0 where w <= 0.
// With kDalpha, SCALE also adds dL/dalpha_j = W (dp - delta) s ln 2 to g.ej for each set bit j.
template <bool kDalpha>
__device__ inline ScoreGrad score_grad(float s, float dp, unsigned bits, int mode, GradRow& g) {
  if (mode == kModeMix) {
    const unsigned near = bits & ~g.far, far = bits & g.far;
    const float e = exp2f(s - g.m_ref), c = mix_weight(near, g.cj);
    ScoreGrad sg{e * c, e * (dp * c - mix_weight(near, g.ej))};
    if (far) {
      const float cf = far_weight(far, s, g.cj, g.base);
      sg.w += cf;
      sg.ds += dp * cf - far_weight(far, s, g.ej, g.base);
    }
    return sg;
  }
  const float w = mode == kModeScale ? mix_weight(bits, g.cj) : 1.f;
  if (!(w > 0.f)) return {0.f, 0.f};
  const float w_att = exp2f(s * w - g.lse), dsw = w_att * (dp - g.delta);
  if (kDalpha && mode == kModeScale) add_masked(g.ej, bits, dsw * (s * (1.f / kLog2e)));
  return {w_att, dsw * w};
}

// ------------------------------------------------------------------------------------ forward
template <typename T, int BD>
__global__ void __launch_bounds__(kThreads, 1) attn_fwd_kernel(const Params p) {
  using Tile = FwdTile<BD>;
  constexpr int BM = Tile::BM, BN = Tile::BN, TPR = Tile::TPR, CPT = Tile::CPT, KPT = Tile::KPT;
  __shared__ float sQ[BM][BD + 1];
  __shared__ float sK[BN][BD + 1], sV[BN][BD + 1];
  __shared__ float sP[BM][BN + 1];
  __shared__ Row rows[BM], keys[BN];
  __shared__ unsigned sFar[BM];

  const auto [i, lr, qt, seq0] = place<TPR>(p.n_qtiles, p.spp);
  const int n_kt = ceil_div(p.spp * p.Nk, BN), n = p.masks.n;
  const bool mix = p.mode == kModeMix, scale_mode = p.mode == kModeScale;

  stage_queries<T, BD, BM>(rows, sQ, nullptr, qt, seq0, p);
  const Row me = rows[i];
  // wj: alpha_j; in MIX, alpha_j / l_j after pass 1 (one array for both modes: fewer registers)
  float wj[kMaxMasks];
  load_alpha(wj, me, p);

  float m = neg_inf(), l = 0.f;
  float lj[kMaxMasks] = {}, acc[CPT] = {};
  // MIX: each mask's maximum, then (mix_far_bases) its exponent base; the far masks' bits
  float mj[kMaxMasks];
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) mj[j] = neg_inf();
  unsigned far = 0u;

  if (mix) {
    // pass 1 (it < n_kt): union max, per-mask maxima and one normaliser per mask against the union
    // max; pass 1b (it >= n_kt), only in a block with a far row: the far masks' l_j against their
    // own maxima. One loop for both, so the tile code is compiled once (two loops held ~35 more
    // registers at BD = 256).
    int n_it = n_kt;
    for (int it = 0; it < n_it; ++it) {
      const bool first = it < n_kt;
      const int kt = first ? it : it - n_kt;
      stage_keys<T, BD, BN>(keys, sK, nullptr, kt, seq0, p);
      const KeyScores<KPT> sc = score_keys<BD, BN, TPR, KPT>(me, sQ[i], nullptr, keys, sK, nullptr, kt, lr, p);
      float part[kMaxMasks] = {};
      float corr = 1.f;
      if (first) {
        float mx = neg_inf();
#pragma unroll
        for (int u = 0; u < KPT; ++u) {
          mx = fmaxf(mx, sc.s[u]);
          max_masked(mj, sc.bits[u], sc.s[u]);
        }
        const float m_new = fmaxf(m, row_max<TPR>(mx)), base = finite_base(m_new);
        corr = rebase(m, m_new);
#pragma unroll
        for (int u = 0; u < KPT; ++u) add_masked(part, sc.bits[u], prob(sc.bits[u] != 0u, sc.s[u], base));
        m = m_new;
      } else {
#pragma unroll
        for (int u = 0; u < KPT; ++u) add_far(part, sc.bits[u] & far, sc.s[u], mj, 1.f);
      }
#pragma unroll
      for (int j = 0; j < kMaxMasks; ++j) {
        if (j < n) {
          const float sum = row_sum<TPR>(part[j]);
          lj[j] = first ? lj[j] * corr + sum : (((far >> j) & 1u) ? lj[j] + sum : lj[j]);
        }
      }
      if (it == n_kt - 1) {  // end of pass 1: the far masks, and whether the block runs pass 1b
#pragma unroll
        for (int j = 0; j < kMaxMasks; ++j) {
          if (j < n) mj[j] = row_max<TPR>(mj[j]);
        }
        far = mix_far_bases(m, n, mj);
#pragma unroll
        for (int j = 0; j < kMaxMasks; ++j) lj[j] = ((far >> j) & 1u) ? 0.f : lj[j];
        if (lr == 0) sFar[i] = far;
        __syncthreads();
        unsigned block_far = 0u;
        for (int r = 0; r < BM; ++r) block_far |= sFar[r];
        if (block_far) n_it = 2 * n_kt;
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) wj[j] = j < n ? mix_coef(wj[j], lj[j]) : 0.f;
  }

  for (int kt = 0; kt < n_kt; ++kt) {  // the output pass (the only pass for NONE / SCALE)
    stage_keys<T, BD, BN>(keys, sK, sV, kt, seq0, p);
    KeyScores<KPT> sc = score_keys<BD, BN, TPR, KPT>(me, sQ[i], nullptr, keys, sK, nullptr, kt, lr, p);
    float mx = neg_inf();
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      if (scale_mode && sc.bits[u]) {
        const float w = mix_weight(sc.bits[u], wj);
        sc.s[u] = w > 0.f ? sc.s[u] * w : neg_inf();
      }
      mx = fmaxf(mx, sc.s[u]);
    }
    float corr = 1.f, base = finite_base(m);
    if (!mix) {
      const float m_new = fmaxf(m, row_max<TPR>(mx));
      corr = rebase(m, m_new);
      base = finite_base(m_new);
      m = m_new;
    }
    float psum = 0.f;
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      float pv = prob(sc.s[u] != neg_inf(), sc.s[u], base);
      if (mix) {
        pv *= mix_weight(sc.bits[u] & ~far, wj);
        if (sc.bits[u] & far) pv += far_weight(sc.bits[u] & far, sc.s[u], wj, mj);
      }
      psum += pv;
      if (k < BN) sP[i][k] = pv;
    }
    if (!mix) l = l * corr + row_sum<TPR>(psum);
    __syncthreads();
    accumulate<BD, TPR, CPT>(acc, corr, sP[i], sV, sc.k_lo, sc.k_hi, lr);
  }

  if (me.sl < 0) return;
  store_row<T, TPR, CPT>(static_cast<T*>(p.o) + offset(me, p.so), acc, (mix || l == 0.f) ? 1.f : 1.f / l, lr, p.d);
  if (lr == 0) {
    float* st = p.stats + offset(me, p.ss);
    if (mix) {
#pragma unroll
      for (int j = 0; j < kMaxMasks; ++j)
        if (j < n) st[j] = log_norm(mj[j], lj[j]);
    } else {
      st[0] = log_norm(m, l);
    }
  }
}

// ------------------------------------------------------------------------- backward: dq, delta
// One query tile: delta (NONE/SCALE: rowsum(dO * O); MIX: delta_j = sum_k P_j dP, one extra pass
// over the keys), saved for the dk/dv kernel; dq; and dalpha partials per (tile, sequence).
template <typename T, int BD>
__global__ void __launch_bounds__(kThreads, 1) attn_bwd_dq_kernel(const Params p) {
  using Tile = BwdTile<BD>;
  constexpr int BM = Tile::BM, BN = Tile::BN, TPR = Tile::TPR, CPT = Tile::CPT, KPT = Tile::KPT;
  __shared__ float sQ[BM][BD + 1], sDO[BM][BD + 1];
  __shared__ float sK[BN][BD + 1], sV[BN][BD + 1];
  __shared__ float sS[BM][BN + 1];
  __shared__ float sRed[BM][kMaxMasks];
  __shared__ Row rows[BM], keys[BN];

  const auto [i, lr, qt, seq0] = place<TPR>(p.n_qtiles, p.spp);
  const int n_kt = ceil_div(p.spp * p.Nk, BN), n = p.masks.n;

  stage_queries<T, BD, BM>(rows, sQ, sDO, qt, seq0, p);
  const Row me = rows[i];
  GradRow g = grad_row(me, p, false);

  if (p.mode != kModeMix) {
    float part = 0.f;
    if (me.ok) {
      const T* o = static_cast<const T*>(p.out) + offset(me, p.so);
#pragma unroll
      for (int u = 0; u < CPT; ++u) {
        const int c = lr + TPR * u;
        if (c < p.d) part = fmaf(sDO[i][c], to_float(o[c]), part);
      }
    }
    g.delta = row_sum<TPR>(part);
    if (me.sl >= 0 && lr == 0) p.delta[g.st_off] = g.delta;
  } else {
    float part[kMaxMasks] = {}, sum[kMaxMasks] = {};  // per mask: sum_k P~_j dP, sum_k P~_j
    for (int kt = 0; kt < n_kt; ++kt) {  // pass A: l_j and delta_j
      stage_keys<T, BD, BN>(keys, sK, sV, kt, seq0, p);
      const KeyScores<KPT> sc = score_keys<BD, BN, TPR, KPT>(me, sQ[i], sDO[i], keys, sK, sV, kt, lr, p);
#pragma unroll
      for (int u = 0; u < KPT; ++u) {
        const unsigned near = sc.bits[u] & ~g.far, far = sc.bits[u] & g.far;
        if (near) {
          const float e = exp2f(sc.s[u] - g.m_ref);
          add_masked(sum, near, e);
          add_masked(part, near, e * sc.dp[u]);
        }
        if (far) {
          add_far(sum, far, sc.s[u], g.base, 1.f);
          add_far(part, far, sc.s[u], g.base, sc.dp[u]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) {
      if (j < n) {
        // both sums before the branch: every lane of the warp takes part in a row_sum's shuffles
        const float l = row_sum<TPR>(sum[j]), dp_sum = row_sum<TPR>(part[j]);
        const float dl = l > 0.f ? dp_sum / l : 0.f;  // delta_j, also this row's dalpha_j term
        g.cj[j] = mix_coef(g.cj[j], l);
        g.ej[j] = g.cj[j] * dl;
        if (me.sl >= 0 && lr == 0) {
          p.delta[g.st_off + j] = dl;
          p.coef[g.st_off + j] = g.cj[j];
        }
        if (lr == 0) sRed[i][j] = me.ok ? dl : 0.f;
      }
    }
  }

  float acc[CPT] = {};
  for (int kt = 0; kt < n_kt; ++kt) {
    stage_keys<T, BD, BN>(keys, sK, sV, kt, seq0, p);
    const KeyScores<KPT> sc = score_keys<BD, BN, TPR, KPT>(me, sQ[i], sDO[i], keys, sK, sV, kt, lr, p);
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      const float ds = sc.bits[u] ? score_grad<true>(sc.s[u], sc.dp[u], sc.bits[u], p.mode, g).ds : 0.f;
      if (k < BN) sS[i][k] = ds;
    }
    __syncthreads();
    accumulate<BD, TPR, CPT>(acc, 1.f, sS[i], sK, sc.k_lo, sc.k_hi, lr);
  }

  if (me.sl >= 0) store_row<T, TPR, CPT>(static_cast<T*>(p.dq) + offset(me, p.sdq), acc, p.scale, lr, p.d);
  if (p.mode == kModeNone) return;
  // dalpha: per-row values (MIX: delta_j, stored after pass A), then one fixed-order sum per
  // (sequence, mask)
  if (p.mode == kModeScale) {
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) {
      if (j < n) {
        const float val = row_sum<TPR>(g.ej[j]);
        if (lr == 0) sRed[i][j] = me.ok ? val : 0.f;
      }
    }
  }
  __syncthreads();
  for (int t = threadIdx.x; t < p.spp * n; t += kThreads) {
    const int sl = t / n, j = t % n;
    if (seq0 + sl >= p.n_seq) continue;
    float sum = 0.f;
    for (int rr = 0; rr < BM; ++rr) sum += rows[rr].sl == sl ? sRed[rr][j] : 0.f;
    p.dalpha[((int64_t)qt * p.n_seq + seq0 + sl) * n + j] = sum;
  }
}

// ------------------------------------------------------------------------- backward: dk, dv
// One key tile, looping over the query tiles of its sequences: dv = W^T dO, dk = scale dS^T Q.
template <typename T, int BD>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(const Params p) {
  using Tile = BwdTile<BD>;
  constexpr int BM = Tile::BM, BN = Tile::BN, TPR = Tile::TPR, CPT = Tile::CPT, KPT = Tile::KPT;
  static_assert(BM == BN, "a thread owns row i = tid / TPR of the query tile and key i of the key tile");
  __shared__ float sQ[BM][BD + 1], sDO[BM][BD + 1];
  __shared__ float sK[BN][BD + 1], sV[BN][BD + 1];
  __shared__ float sS[BM][BN + 1];
  __shared__ float sW[BM][BN + 1];
  __shared__ Row rows[BM], keys[BN];

  const auto [i, lr, kt, seq0] = place<TPR>(p.n_ktiles, p.spp);
  const int n_qt = ceil_div(p.spp * p.Nq, BM);

  stage_keys<T, BD, BN>(keys, sK, sV, kt, seq0, p);
  float dk[CPT] = {}, dv[CPT] = {};

  for (int qt = 0; qt < n_qt; ++qt) {
    stage_queries<T, BD, BM>(rows, sQ, sDO, qt, seq0, p);
    const Row me = rows[i];
    GradRow g = grad_row(me, p, true);
    const KeyScores<KPT> sc = score_keys<BD, BN, TPR, KPT>(me, sQ[i], sDO[i], keys, sK, sV, kt, lr, p);
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      const ScoreGrad sg = sc.bits[u] ? score_grad<false>(sc.s[u], sc.dp[u], sc.bits[u], p.mode, g) : ScoreGrad{};
      if (k < BN) {
        sS[i][k] = sg.ds;
        sW[i][k] = sg.w;
      }
    }
    int r_lo, r_hi;
    seq_range(keys[i].sl, p.Nq, qt * BM, BM, r_lo, r_hi);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < CPT; ++u) {  // this thread's key is i
      const int c = lr + TPR * u;
      float a = dk[u], b = dv[u];
      for (int rr = r_lo; rr < r_hi; ++rr) {
        a = fmaf(sS[rr][i], sQ[rr][c], a);
        b = fmaf(sW[rr][i], sDO[rr][c], b);
      }
      dk[u] = a;
      dv[u] = b;
    }
  }

  const Row key = keys[i];
  if (key.sl < 0) return;
  store_row<T, TPR, CPT>(static_cast<T*>(p.dk) + offset(key, p.sdk), dk, p.scale, lr, p.d);
  store_row<T, TPR, CPT>(static_cast<T*>(p.dv) + offset(key, p.sdv), dv, 1.f, lr, p.d);
}

}  // namespace attn
}  // namespace stq
