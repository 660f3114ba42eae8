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

#ifdef __linux__
#include <sys/mman.h>
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

// Software prefetch of n rows of `bytes` bytes each, `stride` elements apart (for write when `write`).
// Attention sequences read T rows far apart: more streams than the hardware prefetchers track.
template <typename T>
inline void prefetch_rows(const T* base, int64_t stride, int64_t n, int64_t bytes, bool write = false) {
  for (int64_t r = 0; r < n; ++r) {
    const char* row = reinterpret_cast<const char*>(base + r * stride);
    for (int64_t o = 0; o < bytes; o += 64) {
      if (write) {
        __builtin_prefetch(row + o, 1, 3);
      } else {
        __builtin_prefetch(row + o, 0, 3);
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

inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

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

// ------------------------------------------------------------------------ register-blocked products
// C[r, j] = mul * A[r, :depth] . B[j, :depth] for r < MR, j < nb (B rows of ldb floats; depth a
// multiple of kV): dot products, for few keys (a transposed B would be mostly padding).
template <int MR>
inline void gemm_abt_dots(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t depth, int64_t nb,
                          float mul, float* C, int64_t ldc) {
  for (int64_t j = 0; j < nb; ++j) {
    Vec acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = Vec(0.f);
    for (int64_t c = 0; c < depth; c += kV) {
      const Vec b = Vec::loadu(B + j * ldb + c);
      for (int r = 0; r < MR; ++r) acc[r] = at::vec::fmadd(Vec::loadu(A + r * lda + c), b, acc[r]);
    }
    for (int r = 0; r < MR; ++r) C[r * ldc + j] = mul * hsum(acc[r]);
  }
}

// C[r, j] = mul * sum_c A[r, c] * Bt[c, j] for r < MR, j < n (n a multiple of kV), c < depth.
template <int MR>
inline void gemm_abt(const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t depth, int64_t n,
                     float mul, float* C, int64_t ldc) {
  const Vec vmul(mul);
  int64_t j = 0;
  for (; j + 2 * kV <= n; j += 2 * kV) {
    Vec acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = Vec(0.f);
    for (int64_t c = 0; c < depth; ++c) {
      const Vec b0 = Vec::loadu(Bt + c * ldb + j), b1 = Vec::loadu(Bt + c * ldb + j + kV);
      for (int r = 0; r < MR; ++r) {
        const Vec a(A[r * lda + c]);
        acc0[r] = at::vec::fmadd(a, b0, acc0[r]);
        acc1[r] = at::vec::fmadd(a, b1, acc1[r]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      (acc0[r] * vmul).store(C + r * ldc + j);
      (acc1[r] * vmul).store(C + r * ldc + j + kV);
    }
  }
  for (; j < n; j += kV) {
    Vec acc[MR];
    for (int r = 0; r < MR; ++r) acc[r] = Vec(0.f);
    for (int64_t c = 0; c < depth; ++c) {
      const Vec b = Vec::loadu(Bt + c * ldb + j);
      for (int r = 0; r < MR; ++r) acc[r] = at::vec::fmadd(Vec(A[r * lda + c]), b, acc[r]);
    }
    for (int r = 0; r < MR; ++r) (acc[r] * vmul).store(C + r * ldc + j);
  }
}

template <int MR, int NQ>
inline void gemm_ab_cols(const float* W, int64_t ldw, const float* B, int64_t ldb, int64_t depth, float* C,
                         int64_t ldc) {
  Vec acc[MR][NQ];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NQ; ++q) acc[r][q] = Vec(0.f);
  for (int64_t k = 0; k < depth; ++k) {
    Vec b[NQ];
    for (int q = 0; q < NQ; ++q) b[q] = Vec::loadu(B + k * ldb + q * kV);
    for (int r = 0; r < MR; ++r) {
      const Vec w(W[r * ldw + k]);
      for (int q = 0; q < NQ; ++q) acc[r][q] = at::vec::fmadd(w, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NQ; ++q) acc[r][q].store(C + r * ldc + q * kV);
}

// C[r, c] = sum_k W[r, k] * B[k, c] for r < MR, c < n (n a multiple of kV), k < depth.
template <int MR>
inline void gemm_ab(const float* W, int64_t ldw, const float* B, int64_t ldb, int64_t depth, int64_t n, float* C,
                    int64_t ldc) {
  int64_t c = 0;
  for (; c + 4 * kV <= n; c += 4 * kV) gemm_ab_cols<MR, 4>(W, ldw, B + c, ldb, depth, C + c, ldc);
  switch ((n - c) / kV) {
    case 3: gemm_ab_cols<MR, 3>(W, ldw, B + c, ldb, depth, C + c, ldc); break;
    case 2: gemm_ab_cols<MR, 2>(W, ldw, B + c, ldb, depth, C + c, ldc); break;
    case 1: gemm_ab_cols<MR, 1>(W, ldw, B + c, ldb, depth, C + c, ldc); break;
    default: break;
  }
}

template <int MR, int NQ>
inline void gemm_atb_cols(const float* A, int64_t lda, const float* X, int64_t ldx, int64_t nk, float* C,
                          int64_t ldc) {
  Vec x[MR][NQ];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NQ; ++q) x[r][q] = Vec::loadu(X + r * ldx + q * kV);
  for (int64_t k = 0; k < nk; ++k) {
    for (int q = 0; q < NQ; ++q) {
      Vec acc = Vec::loadu(C + k * ldc + q * kV);
      for (int r = 0; r < MR; ++r) acc = at::vec::fmadd(Vec(A[r * lda + k]), x[r][q], acc);
      acc.store(C + k * ldc + q * kV);
    }
  }
}

// C[k, c] += sum_r A[r, k] * X[r, c] for r < MR, k < nk, c < n (n a multiple of kV).
template <int MR>
inline void gemm_atb(const float* A, int64_t lda, const float* X, int64_t ldx, int64_t nk, int64_t n, float* C,
                     int64_t ldc) {
  int64_t c = 0;
  for (; c + 4 * kV <= n; c += 4 * kV) gemm_atb_cols<MR, 4>(A, lda, X + c, ldx, nk, C + c, ldc);
  switch ((n - c) / kV) {
    case 3: gemm_atb_cols<MR, 3>(A, lda, X + c, ldx, nk, C + c, ldc); break;
    case 2: gemm_atb_cols<MR, 2>(A, lda, X + c, ldx, nk, C + c, ldc); break;
    case 1: gemm_atb_cols<MR, 1>(A, lda, X + c, ldx, nk, C + c, ldc); break;
    default: break;
  }
}

// ------------------------------------------------------------------------ rows read in place, fresh outputs
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

// Asks for 2 MiB pages under the whole 2 MiB-aligned part of an output buffer the kernel is about to
// write first (transparent huge pages in "madvise" mode): a fresh 64 MiB tensor then takes 32 page
// faults instead of 16384, about 20 ms less CPU time on the project's VM. A hint: no effect elsewhere.
inline void advise_huge_pages(void* data, int64_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

}  // namespace stquery::cpu
