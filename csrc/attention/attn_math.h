// Per-row attention math shared by the CUDA kernels (attention.cuh) and any CPU backend:
// mask visibility bits, the mix/scale weights, the online-softmax rebasing and the inverse
// normalisers of the mix backward. Plain C++ with STQ_HD inline functions; no CUDA
// runtime, no torch. Scores are in base 2 (softmax scale * log2(e) folded in), as in the Triton
// kernels (kernels/attention/__init__.py), whose docstring gives the algebra.
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

// Mix backward: from lse_j = m + log2 l_j, a reference m_ref and r_j = 2^(m_ref - lse_j) (0 for an
// empty mask row) with P_j = 2^(s - m_ref) r_j. m_ref = max_j lse_j unless the spread exceeds 120,
// then min_j lse_j + 120, so every r_j stays finite. Returns m_ref.
STQ_HD inline float mix_inverse_norms(const float* lse, int n, float* r) {
  float hi = neg_inf(), lo = INFINITY;
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) {
    if (j < n) {
      hi = fmaxf(hi, lse[j]);
      if (lse[j] > neg_inf()) lo = fminf(lo, lse[j]);
    }
  }
  const float m_ref = hi == neg_inf() ? 0.f : fminf(hi, lo + 120.f);
#pragma unroll
  for (int j = 0; j < kMaxMasks; ++j) r[j] = (j < n && lse[j] > neg_inf()) ? exp2f(fminf(m_ref - lse[j], 126.f)) : 0.f;
  return m_ref;
}

// frame_lengths[b] clipped to [0, T].
STQ_HD inline int clip_frames(int64_t n, int T) { return n < 0 ? 0 : (n > T ? T : (int)n); }

}  // namespace attn
}  // namespace stq
