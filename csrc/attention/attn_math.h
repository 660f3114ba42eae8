// Per-row attention math shared by the CUDA kernels (attention.cuh) and any CPU backend:
// mask visibility bits, the mix/scale weights, the online-softmax rebasing, the far masks of the
// mix forward and the exponent bases of the mix backward. Plain C++ with STQ_HD inline
// functions; no CUDA runtime, no torch. Scores are in base 2 (softmax scale * log2(e) folded in),
// as in the Triton kernels (kernels/attention/device.py), whose docstring gives the algebra.
#pragma once

#include <cmath>
#include <cstdint>

// Callable from host and device code (nvcc); plain inline functions elsewhere (the emulation,
// a CPU backend).
#ifdef __CUDACC__
#define STQ_HD __host__ __device__
#else
#define STQ_HD
#endif

namespace stq {
namespace attn {

constexpr int kMaxMasks = 8;
constexpr int kMaxHeadDim = 256;
// Mask kinds and modes: the values of stquery/backends/base.py.
constexpr int kWindow = 0, kCausal = 1, kDense = 2;
constexpr int kModeNone = 0, kModeMix = 1, kModeScale = 2;
constexpr float kLog2e = 1.4426950408889634f;
// alpha_j / l_j is clamped here: a tiny l_j must not make inf * 0.
constexpr float kFMax = 3.0e38f;
// Mix: a mask whose maximum lies more than this (base 2) below the union's is "far" and is
// exponentiated against its own maximum. Nearer masks share the union's exponentials: a score x
// below its own mask's maximum then stays a normal float down to x = 126 - kFarMask = 62, and the
// scores lost beyond weigh under 2^-62 of that mask's sum. Triton's _FAR is the same number.
constexpr float kFarMask = 64.f;

// The routed masks of one call. desc[j] = kind + 4 * (param + 1): param is the radius (-1:
// unbounded) for window/causal, the index into the dense buffer [n_dense, Nq, Nk] for dense.
struct MaskSpec {
  int n;  // number of masks (0 in mode NONE)
  int desc[kMaxMasks];
  int g_start, g_end;  // global tokens [g_start, g_end)
  const bool* dense;
  int64_t sd_m, sd_q, sd_k;  // dense strides
};

STQ_HD inline float neg_inf() { return -INFINITY; }

// Bit j set iff key k is visible from query i under mask j (positions within the sequence).
// The caller has already checked that both rows are real and the key is not padding.
STQ_HD inline unsigned mask_bits(int i, int k, const MaskSpec& m) {
  const bool glob = (i >= m.g_start && i < m.g_end) || (k >= m.g_start && k < m.g_end);
  if (glob) return (1u << m.n) - 1u;
  unsigned bits = 0;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) {
    if (j >= m.n) break;
    const int kind = m.desc[j] & 3, param = (m.desc[j] >> 2) - 1;
    bool vis;
    if (kind == kDense) {
      vis = m.dense[param * m.sd_m + (int64_t)i * m.sd_q + (int64_t)k * m.sd_k];
    } else {
      const int diff = i - k;
      if (kind == kWindow) vis = param < 0 || (diff <= param && diff >= -param);
      else vis = diff >= 0 && (param < 0 || diff <= param);
    }
    bits |= (unsigned)vis << j;
  }
  return bits;
}

// sum_j M_j * coef[j] over the set bits (bits above n are never set). The loops run to the
// constant kMaxMasks so that per-row arrays of kMaxMasks floats stay in registers.
STQ_HD inline float mix_weight(unsigned bits, const float* coef) {
  float w = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) w += ((bits >> j) & 1u) ? coef[j] : 0.f;
  return w;
}

// acc[j] += x for each set bit j (the per-mask sums of a row).
STQ_HD inline void add_masked(float* acc, unsigned bits, float x) {
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) acc[j] += ((bits >> j) & 1u) ? x : 0.f;
}

// mx[j] = max(mx[j], x) for each set bit j (the per-mask maxima of a row: compares, no exp).
STQ_HD inline void max_masked(float* mx, unsigned bits, float x) {
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) mx[j] = ((bits >> j) & 1u) ? fmaxf(mx[j], x) : mx[j];
}

// a[j] for a runtime j: selects, since a register array indexed at run time goes to local memory.
STQ_HD inline float pick(const float* a, int j) {
  float x = a[0];
#pragma unroll
  for (int t = 1; t < kMaxMasks; ++t) x = j == t ? a[t] : x;
  return x;
}

// The far masks' terms of a score s, one exp per far mask (the rare path), in loops that are
// not unrolled (pick): unrolled, their eight guarded exps held ~50 more registers in every kernel
// that inlines them, far masks or not (attn_bwd_dkdv<_, 128>: 64 -> 121 on sm_90a).
// acc[j] += x 2^(s - base[j]) for each set bit j of `far`.
STQ_HD inline void add_far(float* acc, unsigned far, float s, const float* base, float x) {
#pragma unroll 1
  for (int j = 0; j < kMaxMasks; ++j) {
    if ((far >> j) & 1u) {
      const float v = x * exp2f(s - pick(base, j));
#pragma unroll
      for (int t = 0; t < kMaxMasks; ++t) acc[t] += t == j ? v : 0.f;
    }
  }
}

// sum_j coef[j] 2^(s - base[j]) over the set bits of `far`: the far masks' share of a weight.
STQ_HD inline float far_weight(unsigned far, float s, const float* coef, const float* base) {
  float w = 0.f;
#pragma unroll 1
  for (int j = 0; j < kMaxMasks; ++j)
    if ((far >> j) & 1u) w += pick(coef, j) * exp2f(s - pick(base, j));
  return w;
}

// A row maximum usable as an exponent base: -inf (nothing visible yet) becomes 0.
STQ_HD inline float finite_base(float m) { return m == neg_inf() ? 0.f : m; }

// Online softmax: the factor that rebases sums taken against m_old onto m_new (>= m_old).
STQ_HD inline float rebase(float m_old, float m_new) {
  return m_old == neg_inf() ? 0.f : exp2f(m_old - finite_base(m_new));
}

// exp2(s - base) for a visible score, 0 otherwise.
STQ_HD inline float prob(bool visible, float s, float base) { return visible ? exp2f(s - base) : 0.f; }

// Mix forward: alpha_j / l_j, clamped to the float range; 0 for an empty mask row.
STQ_HD inline float mix_coef(float alpha, float l) {
  return l > 0.f ? fminf(fmaxf(alpha / l, -kFMax), kFMax) : 0.f;
}

// log2 of a softmax normaliser (m + log2 l), -inf for a row with no visible key.
STQ_HD inline float log_norm(float m, float l) { return l > 0.f ? finite_base(m) + log2f(l) : neg_inf(); }

// Mix forward, after the statistics pass over a row with union max m and per-mask maxima mj:
// the far masks (mj[j] > -inf, m - mj[j] > kFarMask) as bits, and mj[j] turned into mask j's
// exponent base: its own maximum if far, finite_base(m) otherwise. l_j and the output weights
// of mask j are taken against that base, and lse_j = base_j + log2 l_j is exact for every mask.
STQ_HD inline unsigned mix_far_bases(float m, int n, float* mj) {
  unsigned far = 0;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) {
    const bool f = j < n && mj[j] > neg_inf() && m - mj[j] > kFarMask;
    far |= (unsigned)f << j;
    mj[j] = f ? mj[j] : finite_base(m);
  }
  return far;
}

// Mix backward: from lse_j = base_j + log2 l_j, each mask's exponent base, with
// P~_j = 2^(s - base[j]) on mask j's keys. Masks within kFarMask of m_ref = max_j lse_j share base
// m_ref (one exp per score), so P~_j <= 2^kFarMask of its mask's own maximum; the far ones have base
// lse_j, so no P~_j underflows. The backward normalises P_j = P~_j / sum_k P~_j with the sums it
// takes itself, not with 2^(base_j - lse_j): a rounded lse_j scales the row by (1 + e), sum_k dS is
// then e delta_j instead of 0, and dq picks up an error that grows with the logits (7x the float32
// reference's at logits near -100 before this; the Triton and cpu kernels normalise the same way).
// Returns the far masks' bits; m_ref is the near masks' base (0 for a row with no visible key).
STQ_HD inline unsigned mix_bases(const float* lse, int n, float& m_ref, float* base) {
  float hi = neg_inf();
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j)
    if (j < n) hi = fmaxf(hi, lse[j]);
  m_ref = finite_base(hi);
  unsigned far = 0;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) {
    const bool f = j < n && lse[j] > neg_inf() && m_ref - lse[j] > kFarMask;
    far |= (unsigned)f << j;
    base[j] = f ? lse[j] : m_ref;
  }
  return far;
}

// frame_lengths[b] clipped to [0, T].
STQ_HD inline int clip_frames(int64_t n, int T) { return n < 0 ? 0 : (n > T ? T : (int)n); }

}  // namespace attn
}  // namespace stq
