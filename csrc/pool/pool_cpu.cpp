// Spatio-temporal and multi-scale pooling on the CPU (docs/ops.md §2.5). Float32 accumulation in a fixed
// order per output element (results do not depend on the thread count); fp16/bf16 converted on load.
#include "pool/pool_cpu.h"

#include <ATen/Parallel.h>

#include "common/cpu_math.h"

namespace stquery::cpu {
namespace {

constexpr int64_t kChunkC = 256;  // channels per st_pool task: T + P rows of this fit in L1/L2

template <typename T>
void st_pool_fwd_impl(const at::Tensor& x_t, at::Tensor& temporal_t, at::Tensor& spatial_t) {
  const int64_t B = x_t.size(0), T_ = x_t.size(1), P = x_t.size(2), C = x_t.size(3);
  const int64_t n_chunks = (C + kChunkC - 1) / kChunkC;
  const T* x = x_t.const_data_ptr<T>();
  T* temporal = temporal_t.data_ptr<T>();
  T* spatial = spatial_t.data_ptr<T>();
  const int64_t sx0 = x_t.stride(0), sx1 = x_t.stride(1), sx2 = x_t.stride(2);
  const int64_t st0 = temporal_t.stride(0), st1 = temporal_t.stride(1);
  const int64_t ss0 = spatial_t.stride(0), ss1 = spatial_t.stride(1);
  at::parallel_for(0, B * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    const int64_t cp = round_up(kChunkC, kV);
    std::vector<float> buf((P + 2) * cp);
    float* sp = buf.data();           // [P, cp] sums over T
    float* row = sp + P * cp;         // one staged row
    float* tsum = row + cp;           // the current frame's sum over P
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / n_chunks, c0 = (task % n_chunks) * kChunkC;
      const int64_t cc = std::min(kChunkC, C - c0), ccp = round_up(cc, kV);
      std::fill(sp, sp + P * cp, 0.f);
      for (int64_t t = 0; t < T_; ++t) {
        std::fill(tsum, tsum + ccp, 0.f);
        for (int64_t p = 0; p < P; ++p) {
          load_row(x + b * sx0 + t * sx1 + p * sx2 + c0, row, cc, ccp);
          for (int64_t c = 0; c < ccp; c += kV) {
            const Vec r = Vec::loadu(row + c);
            (Vec::loadu(tsum + c) + r).store(tsum + c);
            (Vec::loadu(sp + p * cp + c) + r).store(sp + p * cp + c);
          }
        }
        store_row(tsum, temporal + b * st0 + t * st1 + c0, cc, 1.f / P);
      }
      for (int64_t p = 0; p < P; ++p) store_row(sp + p * cp, spatial + b * ss0 + p * ss1 + c0, cc, 1.f / T_);
    }
  });
}

template <typename T>
void st_pool_bwd_impl(const at::Tensor& gt_t, const at::Tensor& gs_t, at::Tensor& dx_t) {
  const int64_t B = dx_t.size(0), T_ = dx_t.size(1), P = dx_t.size(2), C = dx_t.size(3), cp = round_up(C, kV);
  const T* gt = gt_t.const_data_ptr<T>();
  const T* gs = gs_t.const_data_ptr<T>();
  T* dx = dx_t.data_ptr<T>();
  at::parallel_for(0, B * T_, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(3 * cp);
    float *a = buf.data(), *g = a + cp, *o = g + cp;
    for (int64_t bt = r0; bt < r1; ++bt) {
      const int64_t b = bt / T_, t = bt % T_;
      load_row(gt + b * gt_t.stride(0) + t * gt_t.stride(1), a, C, cp);
      const Vec inv_p(1.f / P), inv_t(1.f / T_);
      for (int64_t c = 0; c < cp; c += kV) (Vec::loadu(a + c) * inv_p).store(a + c);
      for (int64_t p = 0; p < P; ++p) {
        load_row(gs + b * gs_t.stride(0) + p * gs_t.stride(1), g, C, cp);
        for (int64_t c = 0; c < cp; c += kV) at::vec::fmadd(Vec::loadu(g + c), inv_t, Vec::loadu(a + c)).store(o + c);
        store_row(o, dx + b * dx_t.stride(0) + t * dx_t.stride(1) + p * dx_t.stride(2), C);
      }
    }
  });
}

// (scale index, window) of every pooled output row.
std::vector<std::pair<int64_t, int64_t>> windows(int64_t k, const std::vector<int64_t>& scales) {
  std::vector<std::pair<int64_t, int64_t>> w;
  for (size_t s = 0; s < scales.size(); ++s) {
    for (int64_t i = 0; i < (k + scales[s] - 1) / scales[s]; ++i) w.emplace_back(scales[s], i);
  }
  return w;
}

template <typename T>
void multiscale_fwd_impl(const at::Tensor& y_t, const std::vector<int64_t>& scales, at::Tensor& out_t) {
  const int64_t B = y_t.size(0), k = y_t.size(1), C = y_t.size(2), cp = round_up(C, kV);
  const auto win = windows(k, scales);
  const int64_t M = static_cast<int64_t>(win.size());
  const T* y = y_t.const_data_ptr<T>();
  T* out = out_t.data_ptr<T>();
  at::parallel_for(0, B * M, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(2 * cp);
    float *row = buf.data(), *acc = row + cp;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / M, m = r % M;
      const auto [s, w] = win[m];
      const int64_t lo = w * s, hi = std::min(k, lo + s);
      std::fill(acc, acc + cp, 0.f);
      for (int64_t i = lo; i < hi; ++i) {
        load_row(y + b * y_t.stride(0) + i * y_t.stride(1), row, C, cp);
        for (int64_t c = 0; c < cp; c += kV) (Vec::loadu(acc + c) + Vec::loadu(row + c)).store(acc + c);
      }
      store_row(acc, out + b * out_t.stride(0) + m * out_t.stride(1), C, 1.f / (hi - lo));
    }
  });
}

template <typename T>
void multiscale_bwd_impl(const at::Tensor& g_t, const std::vector<int64_t>& scales, at::Tensor& dy_t) {
  const int64_t B = dy_t.size(0), k = dy_t.size(1), C = dy_t.size(2), cp = round_up(C, kV);
  const T* g = g_t.const_data_ptr<T>();
  T* dy = dy_t.data_ptr<T>();
  at::parallel_for(0, B * k, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(2 * cp);
    float *row = buf.data(), *acc = row + cp;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / k, i = r % k;
      std::fill(acc, acc + cp, 0.f);
      int64_t offset = 0;
      for (const int64_t s : scales) {
        const int64_t w = i / s, lo = w * s, hi = std::min(k, lo + s);
        load_row(g + b * g_t.stride(0) + (offset + w) * g_t.stride(1), row, C, cp);
        const Vec inv(1.f / (hi - lo));
        for (int64_t c = 0; c < cp; c += kV) at::vec::fmadd(Vec::loadu(row + c), inv, Vec::loadu(acc + c)).store(acc + c);
        offset += (k + s - 1) / s;
      }
      store_row(acc, dy + b * dy_t.stride(0) + i * dy_t.stride(1), C);
    }
  });
}

}  // namespace

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
