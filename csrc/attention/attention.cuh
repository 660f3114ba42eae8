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
// Forward (scores s in base 2): NONE/SCALE run one flash pass (online max m, normaliser l;
// SCALE multiplies s by w = sum_j alpha_j M_j and drops keys with w <= 0). MIX runs a first pass
// for the union max m and one normaliser l_j per mask, then one accumulator weighted by
// exp2(s - m) * sum_j M_j alpha_j / l_j. stats: m + log2 l (per mask in MIX), -inf when empty.
// Backward: the algebra of kernels/attention/__init__.py. dalpha partials are summed per
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

STQ_HD inline int block_d(int d) { return d <= 64 ? 64 : (d <= 128 ? 128 : 256); }

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

__device__ inline void load_alpha(float* alpha, const Row& r, const Params& p) {
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j)
    alpha[j] = (j < p.masks.n && r.sl >= 0)
                   ? p.alpha[r.b * p.sa_b + r.l * p.sa_l + r.h * p.sa_h + j * p.sa_p]
                   : 0.f;
}

// ------------------------------------------------------------------------------------ forward
template <typename T, int BD>
__global__ void __launch_bounds__(kThreads, 1) attn_fwd_kernel(const Params p) {
  using Tile = FwdTile<BD>;
  constexpr int BM = Tile::BM, BN = Tile::BN, TPR = Tile::TPR, CPT = Tile::CPT, KPT = Tile::KPT;
  __shared__ float sQ[BM][BD + 1];
  __shared__ float sK[BN][BD + 1];
  __shared__ float sV[BN][BD + 1];
  __shared__ float sP[BM][BN + 1];
  __shared__ Row rows[BM];
  __shared__ Row keys[BN];

  const int tid = threadIdx.x, i = tid / TPR, lr = tid % TPR;
  const int qt = blockIdx.x % p.n_qtiles, seq0 = blockIdx.x / p.n_qtiles * p.spp;
  const int n_kt = (p.spp * p.Nk + BN - 1) / BN, n = p.masks.n;
  const bool mix = p.mode == kModeMix, scale_mode = p.mode == kModeScale;

  for (int r = tid; r < BM; r += kThreads) rows[r] = make_row(qt * BM + r, p.Nq, seq0, p, false);
  __syncthreads();
  load_tile<T, BD, BM>(sQ, p.q, p.sq, rows, p.d);
  const Row me = rows[i];
  // wj: alpha_j; in MIX, alpha_j / l_j after pass 1 (one array for both modes: fewer registers)
  float wj[kMaxMasks];
  load_alpha(wj, me, p);

  float m = neg_inf(), l = 0.f;
  float lj[kMaxMasks] = {}, acc[CPT] = {};

  if (mix) {  // pass 1: union max and one normaliser per mask
    for (int kt = 0; kt < n_kt; ++kt) {
      __syncthreads();
      for (int r = tid; r < BN; r += kThreads) keys[r] = make_row(kt * BN + r, p.Nk, seq0, p, true);
      __syncthreads();
      load_tile<T, BD, BN>(sK, p.k, p.sk, keys, p.d);
      __syncthreads();
      float s[KPT];
      unsigned bits[KPT];
      float mx = neg_inf();
      int k_lo, k_hi;
      seq_range(me.sl, p.Nk, kt * BN, BN, k_lo, k_hi);
      row_dots<BD, BN, TPR, KPT>(sQ[i], sK, lr, p.d, k_lo < k_hi, s);
#pragma unroll
      for (int u = 0; u < KPT; ++u) {
        const int k = lr + TPR * u;
        bits[u] = k < BN ? visible_bits(me, keys[k], p) : 0u;
        s[u] = bits[u] ? s[u] * p.qk_scale : neg_inf();
        mx = fmaxf(mx, s[u]);
      }
      const float m_new = fmaxf(m, row_max<TPR>(mx)), corr = rebase(m, m_new), base = finite_base(m_new);
      float part[kMaxMasks] = {};
#pragma unroll
      for (int u = 0; u < KPT; ++u) {
        const float pv = prob(bits[u] != 0u, s[u], base);
#pragma unroll
        for (int j = 0; j < kMaxMasks; ++j) part[j] += ((bits[u] >> j) & 1u) ? pv : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kMaxMasks; ++j)
        if (j < n) lj[j] = lj[j] * corr + row_sum<TPR>(part[j]);
      m = m_new;
    }
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) wj[j] = j < n ? mix_coef(wj[j], lj[j]) : 0.f;
  }

  for (int kt = 0; kt < n_kt; ++kt) {  // the output pass (the only pass for NONE / SCALE)
    __syncthreads();
    for (int r = tid; r < BN; r += kThreads) keys[r] = make_row(kt * BN + r, p.Nk, seq0, p, true);
    __syncthreads();
    load_tile<T, BD, BN>(sK, p.k, p.sk, keys, p.d);
    load_tile<T, BD, BN>(sV, p.v, p.sv, keys, p.d);
    __syncthreads();
    float s[KPT];
    unsigned bits[KPT];
    float mx = neg_inf();
    int k_lo, k_hi;
    seq_range(me.sl, p.Nk, kt * BN, BN, k_lo, k_hi);
    row_dots<BD, BN, TPR, KPT>(sQ[i], sK, lr, p.d, k_lo < k_hi, s);
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      bits[u] = k < BN ? visible_bits(me, keys[k], p) : 0u;
      if (!bits[u]) {
        s[u] = neg_inf();
      } else {
        s[u] *= p.qk_scale;
        if (scale_mode) {
          const float w = mix_weight(bits[u], wj);
          s[u] = w > 0.f ? s[u] * w : neg_inf();
        }
      }
      mx = fmaxf(mx, s[u]);
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
      float pv = prob(s[u] != neg_inf(), s[u], base);
      if (mix) pv *= mix_weight(bits[u], wj);
      psum += pv;
      if (k < BN) sP[i][k] = pv;
    }
    if (!mix) l = l * corr + row_sum<TPR>(psum);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < CPT; ++u) {
      const int c = lr + TPR * u;
      float a = acc[u] * corr;
      for (int k = k_lo; k < k_hi; ++k) a = fmaf(sP[i][k], sV[k][c], a);
      acc[u] = a;
    }
  }

  if (me.sl < 0) return;
  T* o = static_cast<T*>(p.o) + offset(me, p.so);
  const float inv = (mix || l == 0.f) ? 1.f : 1.f / l;
#pragma unroll
  for (int u = 0; u < CPT; ++u) {
    const int c = lr + TPR * u;
    if (c < p.d) o[c] = from_float<T>(acc[u] * inv);
  }
  if (lr == 0) {
    float* st = p.stats + offset(me, p.ss);
    if (mix) {
#pragma unroll
      for (int j = 0; j < kMaxMasks; ++j)
        if (j < n) st[j] = log_norm(m, lj[j]);
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
  __shared__ float sQ[BM][BD + 1];
  __shared__ float sDO[BM][BD + 1];
  __shared__ float sK[BN][BD + 1];
  __shared__ float sV[BN][BD + 1];
  __shared__ float sS[BM][BN + 1];
  __shared__ float sRed[BM][kMaxMasks];
  __shared__ Row rows[BM];
  __shared__ Row keys[BN];

  const int tid = threadIdx.x, i = tid / TPR, lr = tid % TPR;
  const int qt = blockIdx.x % p.n_qtiles, seq0 = blockIdx.x / p.n_qtiles * p.spp;
  const int n_kt = (p.spp * p.Nk + BN - 1) / BN, n = p.masks.n;
  const bool mix = p.mode == kModeMix, scale_mode = p.mode == kModeScale;

  for (int r = tid; r < BM; r += kThreads) rows[r] = make_row(qt * BM + r, p.Nq, seq0, p, false);
  __syncthreads();
  load_tile<T, BD, BM>(sQ, p.q, p.sq, rows, p.d);
  load_tile<T, BD, BM>(sDO, p.dout, p.sdo, rows, p.d);
  __syncthreads();
  const Row me = rows[i];
  const int64_t st_off = offset(me, p.ss);
  // Two per-mask arrays serve both routed modes (fewer live registers):
  // cj: MIX alpha_j r_j, SCALE alpha_j;  ej: MIX alpha_j r_j delta_j, SCALE the row's dalpha_j.
  float cj[kMaxMasks], ej[kMaxMasks] = {};
  load_alpha(cj, me, p);

  float lse = 0.f, delta = 0.f, m_ref = 0.f;
  if (!mix) {
    float part = 0.f;
    if (me.ok) {
      const T* o = static_cast<const T*>(p.out) + offset(me, p.so);
#pragma unroll
      for (int u = 0; u < CPT; ++u) {
        const int c = lr + TPR * u;
        if (c < p.d) part = fmaf(sDO[i][c], to_float(o[c]), part);
      }
      lse = p.stats[st_off];
    }
    delta = row_sum<TPR>(part);
    if (me.sl >= 0 && lr == 0) p.delta[st_off] = delta;
  } else {
    float lsej[kMaxMasks], r[kMaxMasks];
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) lsej[j] = (j < n && me.ok) ? p.stats[st_off + j] : neg_inf();
    m_ref = mix_inverse_norms(lsej, n, r);
    float part[kMaxMasks] = {};
    for (int kt = 0; kt < n_kt; ++kt) {  // pass A: delta_j
      __syncthreads();
      for (int rr = tid; rr < BN; rr += kThreads) keys[rr] = make_row(kt * BN + rr, p.Nk, seq0, p, true);
      __syncthreads();
      load_tile<T, BD, BN>(sK, p.k, p.sk, keys, p.d);
      load_tile<T, BD, BN>(sV, p.v, p.sv, keys, p.d);
      __syncthreads();
      float qk[KPT], dp[KPT];
      int k_lo, k_hi;
      seq_range(me.sl, p.Nk, kt * BN, BN, k_lo, k_hi);
      row_dots<BD, BN, TPR, KPT>(sQ[i], sK, lr, p.d, k_lo < k_hi, qk);
      row_dots<BD, BN, TPR, KPT>(sDO[i], sV, lr, p.d, k_lo < k_hi, dp);
#pragma unroll
      for (int u = 0; u < KPT; ++u) {
        const int k = lr + TPR * u;
        const unsigned bits = k < BN ? visible_bits(me, keys[k], p) : 0u;
        if (bits) {
          const float pdp = exp2f(qk[u] * p.qk_scale - m_ref) * dp[u];
#pragma unroll
          for (int j = 0; j < kMaxMasks; ++j) part[j] += ((bits >> j) & 1u) ? pdp : 0.f;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) {
      if (j < n) {
        const float dl = row_sum<TPR>(part[j]) * r[j];  // delta_j, also this row's dalpha_j term
        cj[j] *= r[j];
        ej[j] = cj[j] * dl;
        if (me.sl >= 0 && lr == 0) p.delta[st_off + j] = dl;
        if (lr == 0) sRed[i][j] = me.ok ? dl : 0.f;
      }
    }
  }

  float acc[CPT] = {};
  for (int kt = 0; kt < n_kt; ++kt) {
    __syncthreads();
    for (int rr = tid; rr < BN; rr += kThreads) keys[rr] = make_row(kt * BN + rr, p.Nk, seq0, p, true);
    __syncthreads();
    load_tile<T, BD, BN>(sK, p.k, p.sk, keys, p.d);
    load_tile<T, BD, BN>(sV, p.v, p.sv, keys, p.d);
    __syncthreads();
    float qk[KPT], dpk[KPT];
    int k_lo, k_hi;
    seq_range(me.sl, p.Nk, kt * BN, BN, k_lo, k_hi);
    row_dots<BD, BN, TPR, KPT>(sQ[i], sK, lr, p.d, k_lo < k_hi, qk);
    row_dots<BD, BN, TPR, KPT>(sDO[i], sV, lr, p.d, k_lo < k_hi, dpk);
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      const unsigned bits = k < BN ? visible_bits(me, keys[k], p) : 0u;
      float ds = 0.f;
      if (bits) {
        const float s = qk[u] * p.qk_scale, dp = dpk[u];
        if (mix) {
          ds = exp2f(s - m_ref) * (dp * mix_weight(bits, cj) - mix_weight(bits, ej));
        } else if (!scale_mode) {
          ds = exp2f(s - lse) * (dp - delta);
        } else {
          const float w = mix_weight(bits, cj);
          if (w > 0.f) {
            const float dsw = exp2f(s * w - lse) * (dp - delta), gs = dsw * (s * (1.f / kLog2e));
#pragma unroll
            for (int j = 0; j < kMaxMasks; ++j) ej[j] += ((bits >> j) & 1u) ? gs : 0.f;
            ds = dsw * w;
          }
        }
      }
      if (k < BN) sS[i][k] = ds;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < CPT; ++u) {
      const int c = lr + TPR * u;
      float a = acc[u];
      for (int k = k_lo; k < k_hi; ++k) a = fmaf(sS[i][k], sK[k][c], a);
      acc[u] = a;
    }
  }

  if (me.sl >= 0) {
    T* dq = static_cast<T*>(p.dq) + offset(me, p.sdq);
#pragma unroll
    for (int u = 0; u < CPT; ++u) {
      const int c = lr + TPR * u;
      if (c < p.d) dq[c] = from_float<T>(acc[u] * p.scale);
    }
  }
  if (p.mode == kModeNone) return;
  // dalpha: per-row values (MIX: delta_j, stored after pass A), then one fixed-order sum per
  // (sequence, mask)
  if (scale_mode) {
#pragma unroll
    for (int j = 0; j < kMaxMasks; ++j) {
      if (j < n) {
        const float val = row_sum<TPR>(ej[j]);
        if (lr == 0) sRed[i][j] = me.ok ? val : 0.f;
      }
    }
  }
  __syncthreads();
  for (int t = tid; t < p.spp * n; t += kThreads) {
    const int sl = t / n, j = t % n;
    if (seq0 + sl >= p.n_seq) continue;
    float sum = 0.f;
    for (int r = 0; r < BM; ++r) sum += rows[r].sl == sl ? sRed[r][j] : 0.f;
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
  __shared__ float sQ[BM][BD + 1];
  __shared__ float sDO[BM][BD + 1];
  __shared__ float sK[BN][BD + 1];
  __shared__ float sV[BN][BD + 1];
  __shared__ float sS[BM][BN + 1];
  __shared__ float sW[BM][BN + 1];
  __shared__ Row rows[BM];
  __shared__ Row keys[BN];

  const int tid = threadIdx.x, i = tid / TPR, lr = tid % TPR;
  const int kt = blockIdx.x % p.n_ktiles, seq0 = blockIdx.x / p.n_ktiles * p.spp;
  const int n_qt = (p.spp * p.Nq + BM - 1) / BM, n = p.masks.n;
  const bool mix = p.mode == kModeMix, scale_mode = p.mode == kModeScale;

  for (int r = tid; r < BN; r += kThreads) keys[r] = make_row(kt * BN + r, p.Nk, seq0, p, true);
  __syncthreads();
  load_tile<T, BD, BN>(sK, p.k, p.sk, keys, p.d);
  load_tile<T, BD, BN>(sV, p.v, p.sv, keys, p.d);
  float dk[CPT] = {}, dv[CPT] = {};

  for (int qt = 0; qt < n_qt; ++qt) {
    __syncthreads();
    for (int r = tid; r < BM; r += kThreads) rows[r] = make_row(qt * BM + r, p.Nq, seq0, p, false);
    __syncthreads();
    load_tile<T, BD, BM>(sQ, p.q, p.sq, rows, p.d);
    load_tile<T, BD, BM>(sDO, p.dout, p.sdo, rows, p.d);
    const Row me = rows[i];
    const int64_t st_off = offset(me, p.ss);
    float alpha[kMaxMasks];
    load_alpha(alpha, me, p);
    float lse = 0.f, delta = 0.f, m_ref = 0.f;
    float cj[kMaxMasks] = {}, ej[kMaxMasks] = {};
    if (me.ok) {
      if (mix) {
        float lsej[kMaxMasks], r[kMaxMasks];
#pragma unroll
        for (int j = 0; j < kMaxMasks; ++j) lsej[j] = j < n ? p.stats[st_off + j] : neg_inf();
        m_ref = mix_inverse_norms(lsej, n, r);
#pragma unroll
        for (int j = 0; j < kMaxMasks; ++j) {
          if (j < n) {
            cj[j] = alpha[j] * r[j];
            ej[j] = cj[j] * p.delta[st_off + j];
          }
        }
      } else {
        lse = p.stats[st_off];
        delta = p.delta[st_off];
      }
    }
    __syncthreads();
    float qk[KPT], dpk[KPT];
    int k_lo, k_hi;
    seq_range(me.sl, p.Nk, kt * BN, BN, k_lo, k_hi);
    row_dots<BD, BN, TPR, KPT>(sQ[i], sK, lr, p.d, k_lo < k_hi, qk);
    row_dots<BD, BN, TPR, KPT>(sDO[i], sV, lr, p.d, k_lo < k_hi, dpk);
#pragma unroll
    for (int u = 0; u < KPT; ++u) {
      const int k = lr + TPR * u;
      const unsigned bits = k < BN ? visible_bits(me, keys[k], p) : 0u;
      float ds = 0.f, w_att = 0.f;
      if (bits) {
        const float s = qk[u] * p.qk_scale, dp = dpk[u];
        if (mix) {
          const float e = exp2f(s - m_ref), c = mix_weight(bits, cj);
          w_att = e * c;
          ds = e * (dp * c - mix_weight(bits, ej));
        } else {
          const float w = scale_mode ? mix_weight(bits, alpha) : 1.f;
          if (w > 0.f) {
            w_att = exp2f(s * w - lse);
            ds = w_att * (dp - delta) * w;
          }
        }
      }
      if (k < BN) {
        sS[i][k] = ds;
        sW[i][k] = w_att;
      }
    }
    int r_lo, r_hi;
    seq_range(keys[i].sl, p.Nq, qt * BM, BM, r_lo, r_hi);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < CPT; ++u) {  // this thread's key is i
      const int c = lr + TPR * u;
      float a = dk[u], b = dv[u];
      for (int r = r_lo; r < r_hi; ++r) {
        a = fmaf(sS[r][i], sQ[r][c], a);
        b = fmaf(sW[r][i], sDO[r][c], b);
      }
      dk[u] = a;
      dv[u] = b;
    }
  }

  const Row key = keys[i];
  if (key.sl < 0) return;
  T* dkp = static_cast<T*>(p.dk) + offset(key, p.sdk);
  T* dvp = static_cast<T*>(p.dv) + offset(key, p.sdv);
#pragma unroll
  for (int u = 0; u < CPT; ++u) {
    const int c = lr + TPR * u;
    if (c < p.d) {
      dkp[c] = from_float<T>(dk[u] * p.scale);
      dvp[c] = from_float<T>(dv[u]);
    }
  }
}

}  // namespace attn
}  // namespace stq
