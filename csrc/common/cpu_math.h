// Per-row math shared by the CPU kernels (csrc/*/*_cpu.cpp): dtype staging, the structured mask
// rule, masked softmax pieces and small register-blocked products, on ATen's Vectorized<float>.
// Plain inline functions; the build defines CPU_CAPABILITY for the machine's ISA.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace stquery::cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kV = Vec::size();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Mask kinds and attention modes (stquery/backends/base.py).
constexpr int kWindow = 0, kCausal = 1, kDense = 2;
constexpr int kNone = 0, kMix = 1, kScale = 2;

// f(T{}) with T the C++ type of a float32 / float16 / bfloat16 tensor.
template <typename F>
inline void dispatch_float(at::ScalarType t, const char* what, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": expected float32, float16 or bfloat16, got ", t);
  }
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// dst[0, n) = float(src[0, n)), dst[n, n_pad) = 0.
template <typename T>
inline void load_row(const T* src, float* dst, int64_t n, int64_t n_pad) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    at::vec::convert(src, dst, n);
  }
  if (n_pad > n) std::fill(dst + n, dst + n_pad, 0.f);
}

// dst[0, n) = T(src[0, n) * mul).
template <typename T>
inline void store_row(const float* src, T* dst, int64_t n, float mul = 1.f) {
  if (mul == 1.f) {
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(dst, src, n * sizeof(float));
    } else {
      at::vec::convert(src, dst, n);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] * mul);
}

// Software prefetch into L2 of n rows of `bytes` bytes each, `stride` elements apart (for write when
// `write`). Attention sequences read T rows far apart: more streams than the hardware prefetchers
// track. L2, not L1: the rows of a few sequences ahead do not fit in L1 beside the working set (into
// L1, prefetcht0 or prefetchnta, the plain forward at issue 13's headline shape took 46% longer at
// T = 16; prefetcht1 and prefetcht2 are the same on Zen 4).
// Always inlined: GCC 12 judges a function whose only effect is prefetching to be const and deletes
// the calls to it, so before this no prefetch instruction reached the kernels (issue 13's note).
template <typename T>
[[gnu::always_inline]] inline void prefetch_rows(const T* base, int64_t stride, int64_t n, int64_t bytes,
                                                 bool write = false) {
  for (int64_t r = 0; r < n; ++r) {
    const char* row = reinterpret_cast<const char*>(base + r * stride);
    for (int64_t o = 0; o < bytes; o += 64) {
      if (write) {
        __builtin_prefetch(row + o, 1, 2);
      } else {
        __builtin_prefetch(row + o, 0, 2);
      }
    }
  }
}

// Keys [lo, hi] (inclusive, unclipped) visible from query i under window(r) / causal(r); r < 0: unbounded.
inline void band(int kind, int64_t radius, int64_t i, int64_t& lo, int64_t& hi) {
  constexpr int64_t kFar = int64_t(1) << 62;
  if (kind == kWindow) {
    lo = radius < 0 ? -kFar : i - radius;
    hi = radius < 0 ? kFar : i + radius;
  } else {
    lo = radius < 0 ? -kFar : i - radius;
    hi = i;
  }
}

// Queries [lo, hi] (inclusive, unclipped) that see key k under window(r) / causal(r): band's inverse.
inline void key_band(int kind, int64_t radius, int64_t k, int64_t& lo, int64_t& hi) {
  constexpr int64_t kFar = int64_t(1) << 62;
  lo = kind == kWindow ? (radius < 0 ? -kFar : k - radius) : k;
  hi = radius < 0 ? kFar : k + radius;
}

inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// Lane-wise max(a, b) in one instruction on x86, for running maxima of scores that feed softmax
// sums unconditionally. Where either is NaN the lane gets b there (at::vec::maximum keeps the NaN,
// with three more instructions; other ISAs may keep it too): a NaN score still reaches the sums
// through its exp. Not for a max whose -inf ends the row early (masked_max).
inline Vec max_scores(const Vec& a, const Vec& b) { return at::vec::clamp_min(b, a); }

inline float hmax(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// max_k {s[k] : w[k] > 0} over n (a multiple of kV) entries; -inf when none.
inline float masked_max(const float* s, const float* w, int64_t n) {
  Vec m(-kInf);
  const Vec zero(0.f), ninf(-kInf);
  for (int64_t k = 0; k < n; k += kV) {
    m = at::vec::maximum(m, Vec::blendv(ninf, Vec::loadu(s + k), Vec::loadu(w + k) > zero));
  }
  return hmax(m);
}

// e[k] = w[k] > 0 ? exp(s[k] - m) : 0; returns sum_k e[k]. n a multiple of kV; m finite.
inline float masked_exp(const float* s, const float* w, float m, float* e, int64_t n) {
  Vec sum(0.f);
  const Vec zero(0.f), vm(m);
  for (int64_t k = 0; k < n; k += kV) {
    Vec x = Vec::blendv(zero, (Vec::loadu(s + k) - vm).exp_u20(), Vec::loadu(w + k) > zero);
    x.store(e + k);
    sum = sum + x;
  }
  return hsum(sum);
}

// sum_k a[k] * b[k], n a multiple of kV.
inline float dot(const float* a, const float* b, int64_t n) {
  Vec acc(0.f);
  for (int64_t k = 0; k < n; k += kV) acc = at::vec::fmadd(Vec::loadu(a + k), Vec::loadu(b + k), acc);
  return hsum(acc);
}

// y[k] += c * x[k], n a multiple of kV.
inline void axpy(float c, const float* x, float* y, int64_t n) {
  const Vec vc(c);
  for (int64_t k = 0; k < n; k += kV) at::vec::fmadd(vc, Vec::loadu(x + k), Vec::loadu(y + k)).store(y + k);
}

// ------------------------------------------------------------------------ register-blocked product
// C = W B, B row-major [depth, nvec * kV] (ldb floats apart), W read as W[r * w_r + k * w_k] (W itself,
// or a transpose with w_r = 1): C[r, c] = sum_{k < depth} W[r, k] B[k, c] for r < m, handed to
// epi(r, vector column, Vec) once per vector. Register blocks of MR rows x NQ vectors (at most 24
// accumulators), k innermost and in order: each element sums its k the same way every call.
template <int MR, int NQ, typename Epi>
inline void gemm_block(const float* W, int64_t w_r, int64_t w_k, const float* B, int64_t ldb, int64_t depth,
                       int64_t r0, int64_t c0, Epi& epi) {
  Vec acc[MR][NQ];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NQ; ++q) acc[r][q] = Vec(0.f);
  for (int64_t k = 0; k < depth; ++k) {
    Vec b[NQ];
    for (int q = 0; q < NQ; ++q) b[q] = Vec::loadu(B + k * ldb + q * kV);
    for (int r = 0; r < MR; ++r) {
      const Vec w(W[r * w_r + k * w_k]);
      for (int q = 0; q < NQ; ++q) acc[r][q] = at::vec::fmadd(w, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NQ; ++q) epi(r0 + r, c0 + q, acc[r][q]);
}

// Rows [r0, r0 + rest) of one NQ-vector panel, rest <= R, as one block of exactly rest rows.
template <int R, int NQ, typename Epi>
inline void gemm_rest(int64_t rest, const float* W, int64_t w_r, int64_t w_k, const float* B, int64_t ldb,
                      int64_t depth, int64_t r0, int64_t c0, Epi& epi) {
  if constexpr (R > 0) {
    if (rest == R) return gemm_block<R, NQ>(W, w_r, w_k, B, ldb, depth, r0, c0, epi);
    gemm_rest<R - 1, NQ>(rest, W, w_r, w_k, B, ldb, depth, r0, c0, epi);
  }
}

// Rows of a register block of gemm's panels of nq vector columns (at most 24 accumulators).
constexpr int gemm_rows(int nq) { return nq <= 2 ? 8 : 6; }

// The m rows in blocks of at most MR, of sizes as equal as they come (16 rows: 6, 5, 5, not 6, 6,
// 4): a block of few rows pays its loop and its accumulators' setup for less work. tick(t0 + b,
// ticks) after block b.
template <int NQ, typename Epi, typename Tick>
inline void gemm_panel(const float* W, int64_t w_r, int64_t w_k, const float* B, int64_t ldb, int64_t m,
                       int64_t depth, int64_t c0, Epi& epi, Tick& tick, int64_t t0, int64_t ticks) {
  constexpr int MR = gemm_rows(NQ);
  const int64_t blocks = (m + MR - 1) / MR;
  for (int64_t b = 0, r = 0; b < blocks; ++b) {
    const int64_t rows = m / blocks + (b < m % blocks ? 1 : 0);
    gemm_rest<MR, NQ>(rows, W + r * w_r, w_r, w_k, B, ldb, depth, r, c0, epi);
    tick(t0 + b, ticks);
    r += rows;
  }
}

struct NoTick {
  void operator()(int64_t, int64_t) const {}
};

// tick(t, ticks) after each register block t of the product's `ticks`, over all its panels (the
// caller's prefetch, spread over the product's time).
template <typename Epi, typename Tick = NoTick>
inline void gemm(const float* W, int64_t w_r, int64_t w_k, const float* B, int64_t ldb, int64_t m, int64_t depth,
                 int64_t nvec, Epi&& epi, Tick&& tick = {}) {
  const auto blocks = [m](int nq) -> int64_t { return (m + gemm_rows(nq) - 1) / gemm_rows(nq); };
  const int64_t rest = nvec % 4, ticks = nvec / 4 * blocks(4) + (rest ? blocks(rest) : 0);
  int64_t c = 0, t = 0;
  for (; c + 4 <= nvec; c += 4, t += blocks(4)) gemm_panel<4>(W, w_r, w_k, B + c * kV, ldb, m, depth, c, epi, tick, t, ticks);
  switch (rest) {
    case 3: gemm_panel<3>(W, w_r, w_k, B + c * kV, ldb, m, depth, c, epi, tick, t, ticks); break;
    case 2: gemm_panel<2>(W, w_r, w_k, B + c * kV, ldb, m, depth, c, epi, tick, t, ticks); break;
    case 1: gemm_panel<1>(W, w_r, w_k, B + c * kV, ldb, m, depth, c, epi, tick, t, ticks); break;
    default: break;
  }
}

// C[r * c_r + j * c_j] = mul * A[r, :depth] . B[j, :depth] for r < m, j < n (rows lda / ldb floats
// apart, depth a multiple of kV): dot products, for few columns, where gemm's transposed B would be
// mostly padding. C row-major (c_j = 1) or transposed (c_r = 1).
inline void gemm_dots(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t m, int64_t n, int64_t depth,
                      float mul, float* C, int64_t c_r, int64_t c_j) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      Vec acc(0.f);
      for (int64_t c = 0; c < depth; c += kV) {
        acc = at::vec::fmadd(Vec::loadu(A + r * lda + c), Vec::loadu(B + j * ldb + c), acc);
      }
      C[r * c_r + j * c_j] = mul * hsum(acc);
    }
  }
}

// Streaming (non-temporal) stores of whole vectors: for outputs written once and not read back by the
// kernel, they skip the read-for-ownership a cached store makes of every line it writes (a quarter of
// the forward's memory traffic, three tenths of the backward's). Needs kV-float aligned addresses;
// stream_fence() before another thread may read what they wrote.
inline void store_stream(float* dst, const Vec& x) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm512_stream_ps(dst, x);
#elif defined(CPU_CAPABILITY_AVX2)
  _mm256_stream_ps(dst, x);
#else
  x.store(dst);
#endif
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// gemm's epilogue: C[r, v * kV ..] = mul * acc (or += when add; streamed when stream); C rows ldc
// floats apart.
struct Into {
  float* c;
  int64_t ldc;
  float mul = 1.f;
  bool add = false;
  bool stream = false;
  void operator()(int64_t r, int64_t v, const Vec& acc) const {
    float* dst = c + r * ldc + v * kV;
    const Vec x = mul == 1.f ? acc : acc * Vec(mul);
    if (stream) {
      store_stream(dst, x);
    } else {
      (add ? Vec::loadu(dst) + x : x).store(dst);
    }
  }
};

// ------------------------------------------------------------------------ rows read in place
// src[0, n) as float32: src itself for float, else converted into stage[0, n).
template <typename T>
inline const float* as_float(const T* src, float* stage, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    at::vec::convert(src, stage, n);
    return stage;
  }
}

}  // namespace stquery::cpu
