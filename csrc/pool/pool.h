// Launchers of the pooling kernels (pool.cu): raw pointers and strides in elements, so the bindings
// need no CUDA headers and the kernels no torch headers. Each returns a cudaError_t.
#pragma once
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "../common/dtype.h"

namespace stq {

constexpr int kMaxScales = 8;

// Gates of the fused gather (stquery.kernels.topk.GATES): y = x * g(score).
enum Gate : int { kGateNone = 0, kGateSigmoid = 1, kGateSoftmax = 2, kGateIdentity = 3 };

// Multi-scale pooling windows: for q < n, scale s[q]'s windows start at output row off[q]; a
// window's mean is its sum times inv[q] = 1 / s[q], or inv_last[q] = 1 / (its size) for the last,
// partial one (computed here: a division in a kernel calls nvcc's IEEE slow path, whose ABI spills).
// `segment` tokens: a multiple of every scale (or >= k), so no window crosses two segments.
struct Scales {
  int n;
  int s[kMaxScales];
  int off[kMaxScales];
  float inv[kMaxScales];
  float inv_last[kMaxScales];
  int segment;
};

// Scales for a pooling of k tokens (scales >= 1, at most kMaxScales of them, checked by the caller).
// The segment is the least common multiple of the scales, repeated to at least 32 tokens, or all
// of k when that multiple exceeds k.
inline Scales make_scales(const std::vector<int64_t>& scales, int k) {
  if (scales.empty() || scales.size() > kMaxScales) throw std::invalid_argument("scales: 1 to 8 scales");
  Scales sc{};
  sc.n = static_cast<int>(scales.size());
  int64_t off = 0, lcm = 1;
  for (int q = 0; q < sc.n; ++q) {
    sc.s[q] = static_cast<int>(scales[q]);
    sc.off[q] = static_cast<int>(off);
    const int64_t n_windows = (k + scales[q] - 1) / scales[q];
    off += n_windows;
    sc.inv[q] = 1.0f / static_cast<float>(scales[q]);
    sc.inv_last[q] = 1.0f / static_cast<float>(k - (n_windows - 1) * scales[q]);
    lcm = std::min<int64_t>(std::lcm(lcm, scales[q]), int64_t(k) + 1);
  }
  sc.segment = lcm > k ? std::max(k, 1) : static_cast<int>(lcm * ((32 + lcm - 1) / lcm));
  return sc;
}

// st_pool: x [B, T, P, C] (strides sx*, last dim contiguous) -> temporal [B, T, C] (mean over P)
// and spatial [B, P, C] (mean over T), both contiguous in x's dtype. `partial`: float32 workspace
// of st_pool_partial_size(B, T, P, C) elements (nullptr when that is 0).
int64_t st_pool_partial_size(int B, int T, int P, int C);
int st_pool_fwd(DType dt, const void* x, int64_t sxb, int64_t sxt, int64_t sxp, void* temporal, void* spatial,
                float* partial, int B, int T, int P, int C, void* stream);
// dx [B, T, P, C] (contiguous) = grad_temporal[b, t] / P + grad_spatial[b, p] / T.
int st_pool_bwd(DType dt, const void* gt, int64_t sgt_b, int64_t sgt_t, const void* gs, int64_t sgs_b,
                int64_t sgs_p, void* dx, int B, int T, int P, int C, void* stream);

// multiscale_pool: y [B, k, C] -> out [B, sum ceil(k / s), C] (window means, scales in order).
int multiscale_pool_fwd(DType dt, const void* y, int64_t syb, int64_t syk, void* out, int64_t sob, int64_t son,
                        const Scales& sc, int B, int k, int C, void* stream);
// dy [B, k, C] (strides sd*) = sum over scales of grad[off_s + i / s] / |window|.
int multiscale_pool_bwd(DType dt, const void* grad, int64_t sgb, int64_t sgn, void* dy, int64_t sdb, int64_t sdk,
                        const Scales& sc, int B, int k, int C, void* stream);

}  // namespace stq
