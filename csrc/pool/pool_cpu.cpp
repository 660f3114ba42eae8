// Spatio-temporal and multi-scale pooling on the CPU (docs/ops.md §2.5). Float32 accumulation in a fixed
// order per output element (tasks split channels or rows, never a sum: results do not depend on the
// thread count); fp16/bf16 converted on load.
#include "pool/pool_cpu.h"

#include <ATen/Parallel.h>

#include <numeric>

namespace stquery::cpu {
namespace {

constexpr int64_t kSpatialSumBytes = 256 * 1024;  // one task's [P, width] float32 sums over T: L2-resident
constexpr int64_t kMinWidth = 64;                 // channels: whole cache lines per row piece
constexpr int kFrames = 4;                        // frames read together: one pass over the spatial sums each

// sp[0, n) += r[0][c] + ... + r[NF - 1][c] in that order; tsum[j] (rows ld apart) = r[j] at the first
// patch, else += r[j]. Plain IEEE adds in a fixed order per element (vector body and scalar tail agree).
template <int NF>
inline void add_frames(const float* const* r, float* sp, float* tsum, int64_t ld, int64_t n, bool first) {
  int64_t c = 0;
  for (; c + kV <= n; c += kV) {
    Vec acc = Vec::loadu(sp + c);
    for (int j = 0; j < NF; ++j) {
      const Vec v = Vec::loadu(r[j] + c);
      acc = acc + v;
      (first ? v : Vec::loadu(tsum + j * ld + c) + v).store(tsum + j * ld + c);
    }
    acc.store(sp + c);
  }
  for (; c < n; ++c) {
    for (int j = 0; j < NF; ++j) {
      sp[c] += r[j][c];
      tsum[j * ld + c] = first ? r[j][c] : tsum[j * ld + c] + r[j][c];
    }
  }
}

// st_pool reads x once, in memory order: each task streams the rows x[b, t:t + 4, :, c0:c0 + width]
// (four frames side by side), adding them to the frames' temporal sums (L1) and, once per four
// frames, to the patches' spatial sums (L2). The width is all of C unless the spatial sums would
// leave L2 or there are fewer batch elements than threads.
template <typename T>
void st_pool_fwd_impl(const at::Tensor& x_t, at::Tensor& temporal_t, at::Tensor& spatial_t) {
  const int64_t B = x_t.size(0), T_ = x_t.size(1), P = x_t.size(2), C = x_t.size(3);
  const int64_t fit = std::max(kMinWidth, kSpatialSumBytes / int64_t(sizeof(float)) / P / kMinWidth * kMinWidth);
  const int64_t split = std::max((C + fit - 1) / fit,
                                 std::min((2 * at::get_num_threads() + B - 1) / B, (C + kMinWidth - 1) / kMinWidth));
  const int64_t width = round_up((C + split - 1) / split, kV), n_chunks = (C + width - 1) / width;
  const T* x = x_t.const_data_ptr<T>();
  T* temporal = temporal_t.data_ptr<T>();
  T* spatial = spatial_t.data_ptr<T>();
  const int64_t sx0 = x_t.stride(0), sx1 = x_t.stride(1), sx2 = x_t.stride(2);
  const int64_t st0 = temporal_t.stride(0), st1 = temporal_t.stride(1);
  const int64_t ss0 = spatial_t.stride(0), ss1 = spatial_t.stride(1);
  at::parallel_for(0, B * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> buf((P + 2 * kFrames) * width);
    float* sp = buf.data();                // [P, width] sums over T
    float* tsum = sp + P * width;          // [kFrames, width] the frames' sums over P
    float* stage = tsum + kFrames * width;  // [kFrames, width] 16-bit rows converted
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / n_chunks, c0 = (task % n_chunks) * width, n = std::min(width, C - c0);
      std::fill(sp, sp + P * width, 0.f);
      for (int64_t f0 = 0; f0 < T_; f0 += kFrames) {
        const int nf = static_cast<int>(std::min<int64_t>(kFrames, T_ - f0));
        for (int64_t p = 0; p < P; ++p) {
          const float* r[kFrames];
          for (int j = 0; j < nf; ++j) {
            r[j] = as_float(x + b * sx0 + (f0 + j) * sx1 + p * sx2 + c0, stage + j * width, n);
          }
          float* s = sp + p * width;
          switch (nf) {
            case 4: add_frames<4>(r, s, tsum, width, n, p == 0); break;
            case 3: add_frames<3>(r, s, tsum, width, n, p == 0); break;
            case 2: add_frames<2>(r, s, tsum, width, n, p == 0); break;
            default: add_frames<1>(r, s, tsum, width, n, p == 0); break;
          }
        }
        for (int j = 0; j < nf; ++j) store_row(tsum + j * width, temporal + b * st0 + (f0 + j) * st1 + c0, n, 1.f / P);
      }
      for (int64_t p = 0; p < P; ++p) store_row(sp + p * width, spatial + b * ss0 + p * ss1 + c0, n, 1.f / T_);
    }
  });
}

template <typename T>
void st_pool_bwd_impl(const at::Tensor& gt_t, const at::Tensor& gs_t, at::Tensor& dx_t) {
  const int64_t B = dx_t.size(0), T_ = dx_t.size(1), P = dx_t.size(2), C = dx_t.size(3);
  const T* gt = gt_t.const_data_ptr<T>();
  const T* gs = gs_t.const_data_ptr<T>();
  T* dx = dx_t.data_ptr<T>();
  at::parallel_for(0, B * T_, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(3 * C);
    float *a = buf.data(), *o = a + C, *stage = o + C;
    const float inv_p = 1.f / P, inv_t = 1.f / T_;
    for (int64_t bt = r0; bt < r1; ++bt) {
      const int64_t b = bt / T_, t = bt % T_;
      const float* g = as_float(gt + b * gt_t.stride(0) + t * gt_t.stride(1), stage, C);
      for (int64_t c = 0; c < C; ++c) a[c] = g[c] * inv_p;
      for (int64_t p = 0; p < P; ++p) {
        T* dst = dx + b * dx_t.stride(0) + t * dx_t.stride(1) + p * dx_t.stride(2);
        const float* s = as_float(gs + b * gs_t.stride(0) + p * gs_t.stride(1), stage, C);
        if constexpr (std::is_same_v<T, float>) {
          for (int64_t c = 0; c < C; ++c) dst[c] = std::fma(s[c], inv_t, a[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] = std::fma(s[c], inv_t, a[c]);
          store_row(o, dst, C);
        }
      }
    }
  });
}

template <typename T>
void multiscale_fwd_impl(const at::Tensor& y_t, const std::vector<int64_t>& scales, at::Tensor& out_t) {
  const T* y = y_t.const_data_ptr<T>();
  pool_windows(y_t.size(0), y_t.size(1), scales, y_t.size(2), out_t.data_ptr<T>(), out_t.stride(0), out_t.stride(1),
               [&](int64_t b, int64_t i) { return std::pair(y + b * y_t.stride(0) + i * y_t.stride(1), 1.f); });
}

template <typename T>
void multiscale_bwd_impl(const at::Tensor& g_t, const std::vector<int64_t>& scales, at::Tensor& dy_t) {
  const int64_t B = dy_t.size(0), k = dy_t.size(1), C = dy_t.size(2);
  const T* g = g_t.const_data_ptr<T>();
  T* dy = dy_t.data_ptr<T>();
  at::parallel_for(0, B * k, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(2 * C);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / k, i = r % k;
      window_grad(g + b * g_t.stride(0), g_t.stride(1), i, k, scales, C, buf.data(), buf.data() + C);
      store_row(buf.data() + C, dy + b * dy_t.stride(0) + i * dy_t.stride(1), C);
    }
  });
}

}  // namespace

int64_t window_block(int64_t k, const std::vector<int64_t>& scales) {
  int64_t block = 1;
  for (const int64_t s : scales) {
    block = std::lcm(block, s);
    if (block >= k) return k;
  }
  return block;
}

void st_pool_fwd(const at::Tensor& x, at::Tensor& temporal, at::Tensor& spatial) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1, "x: expected [B, T, P, C] with stride(-1) == 1");
  dispatch_float(x.scalar_type(), "st_pool", [&](auto t) { st_pool_fwd_impl<decltype(t)>(x, temporal, spatial); });
}

void st_pool_bwd(const at::Tensor& grad_temporal, const at::Tensor& grad_spatial, at::Tensor& dx) {
  TORCH_CHECK(grad_temporal.stride(2) == 1 && grad_spatial.stride(2) == 1 && dx.stride(3) == 1,
              "st_pool_bwd: the last dims must be contiguous");
  dispatch_float(dx.scalar_type(), "st_pool_bwd",
                 [&](auto t) { st_pool_bwd_impl<decltype(t)>(grad_temporal, grad_spatial, dx); });
}

void multiscale_pool_fwd(const at::Tensor& y, const std::vector<int64_t>& scales, at::Tensor& pooled) {
  TORCH_CHECK(y.dim() == 3 && y.stride(2) == 1, "y: expected [B, k, C] with stride(-1) == 1");
  dispatch_float(y.scalar_type(), "multiscale_pool",
                 [&](auto t) { multiscale_fwd_impl<decltype(t)>(y, scales, pooled); });
}

void multiscale_pool_bwd(const at::Tensor& grad, const std::vector<int64_t>& scales, at::Tensor& dy) {
  TORCH_CHECK(grad.dim() == 3 && grad.stride(2) == 1, "grad: expected [B, M, C] with stride(-1) == 1");
  dispatch_float(dy.scalar_type(), "multiscale_pool_bwd",
                 [&](auto t) { multiscale_bwd_impl<decltype(t)>(grad, scales, dy); });
}

}  // namespace stquery::cpu
