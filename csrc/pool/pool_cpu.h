// CPU pooling kernels (pool_cpu.cpp); bound in csrc/cpu_bindings.cpp. Outputs are allocated by the caller.
// The multi-scale window pieces below are shared with the fused top-k gather (topk/topk_cpu.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <utility>
#include <vector>

#include "common/cpu_math.h"

namespace stquery::cpu {

// x [B, T, P, C] -> temporal [B, T, C] (mean over P), spatial [B, P, C] (mean over T), one pass over x.
void st_pool_fwd(const at::Tensor& x, at::Tensor& temporal, at::Tensor& spatial);
// dx[b, t, p] = grad_temporal[b, t] / P + grad_spatial[b, p] / T.
void st_pool_bwd(const at::Tensor& grad_temporal, const at::Tensor& grad_spatial, at::Tensor& dx);
// y [B, k, C] -> pooled [B, sum ceil(k / s), C]: window means per scale, concatenated.
void multiscale_pool_fwd(const at::Tensor& y, const std::vector<int64_t>& scales, at::Tensor& pooled);
// grad [B, sum ceil(k / s), C] -> dy [B, k, C].
void multiscale_pool_bwd(const at::Tensor& grad, const std::vector<int64_t>& scales, at::Tensor& dy);

// Rows per task of a multi-scale pooling pass: a multiple of every scale (their lcm), so every window
// lies in one task, or k when that is smaller.
int64_t window_block(int64_t k, const std::vector<int64_t>& scales);

// Multi-scale window means of k rows w_i * row_i given one at a time, in order within a block that
// starts at a multiple of window_block (docs/ops.md §2.5): pooled row offset_s + i / s of scale s is
// (sum_{j in window} w_j row_j) / |window|, written to out when the window's last row arrives.
// Each window sums in row order: the result does not depend on how the rows are split into tasks.
template <typename T>
class WindowMeans {
 public:
  WindowMeans(int64_t k, const std::vector<int64_t>& scales, int64_t C)
      : k_(k), C_(C), cp_(round_up(C, kV)), scales_(scales), acc_(scales.size() * cp_) {
    int64_t offset = 0;
    for (const int64_t s : scales) {
      offsets_.push_back(offset);
      offset += (k + s - 1) / s;
    }
  }

  // row: float32 [C] (kV-padded reads are not needed); out: pooled rows of this batch element.
  void add(int64_t i, const float* row, float w, T* out, int64_t out_stride) {
    for (size_t si = 0; si < scales_.size(); ++si) {
      const int64_t s = scales_[si], lo = i - i % s, hi = std::min(k_, lo + s);
      T* dst = out + (offsets_[si] + i / s) * out_stride;
      if (hi - lo == 1) {  // a window of one row: stored as it comes
        store_row(row, dst, C_, w);
        continue;
      }
      float* acc = acc_.data() + si * cp_;
      if (i == lo) {
        for (int64_t c = 0; c < C_; ++c) acc[c] = w * row[c];
      } else {
        for (int64_t c = 0; c < C_; ++c) acc[c] = std::fma(w, row[c], acc[c]);
      }
      if (i + 1 == hi) store_row(acc, dst, C_, 1.f / (hi - lo));
    }
  }

 private:
  int64_t k_, C_, cp_;
  std::vector<int64_t> scales_, offsets_;
  std::vector<float> acc_;  // [scales, cp] running window sums
};

// out[b] (pooled rows out_stride apart) = the window means of rows w_i * row_i, where
// row(b, i) = {row_i [C] in T, w_i}: each row read once, one task per window_block rows.
template <typename T, typename Row>
void pool_windows(int64_t B, int64_t k, const std::vector<int64_t>& scales, int64_t C, T* out, int64_t out_stride0,
                  int64_t out_stride, const Row& row) {
  const int64_t block = window_block(k, scales), n_blocks = (k + block - 1) / block;
  at::parallel_for(0, B * n_blocks, 1, [&](int64_t r0, int64_t r1) {
    WindowMeans<T> means(k, scales, C);
    std::vector<float> stage(C);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / n_blocks, lo = (r % n_blocks) * block, hi = std::min(k, lo + block);
      for (int64_t i = lo; i < hi; ++i) {
        const auto [src, w] = row(b, i);
        means.add(i, as_float(src, stage.data(), C), w, out + b * out_stride0, out_stride);
      }
    }
  });
}

// dy[0, C) = sum_s grad[offset_s + i / s] / |window of i at scale s|: the gradient that the window
// means send to row i (float32; stage: C floats for 16-bit grad).
template <typename T>
void window_grad(const T* grad, int64_t grad_stride, int64_t i, int64_t k, const std::vector<int64_t>& scales,
                 int64_t C, float* stage, float* dy) {
  int64_t offset = 0;
  for (size_t si = 0; si < scales.size(); ++si) {
    const int64_t s = scales[si], lo = i - i % s, hi = std::min(k, lo + s);
    const float* g = as_float(grad + (offset + i / s) * grad_stride, stage, C);
    const float inv = 1.f / (hi - lo);
    if (si == 0) {
      for (int64_t c = 0; c < C; ++c) dy[c] = g[c] * inv;
    } else {
      for (int64_t c = 0; c < C; ++c) dy[c] = std::fma(g[c], inv, dy[c]);
    }
    offset += (k + s - 1) / s;
  }
}

}  // namespace stquery::cpu
