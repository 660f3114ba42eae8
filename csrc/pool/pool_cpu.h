// CPU pooling kernels (pool_cpu.cpp); bound in csrc/cpu_bindings.cpp. Outputs are allocated by the caller.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace stquery::cpu {

// x [B, T, P, C] -> temporal [B, T, C] (mean over P), spatial [B, P, C] (mean over T), one pass over x.
void st_pool_fwd(const at::Tensor& x, at::Tensor& temporal, at::Tensor& spatial);
// dx[b, t, p] = grad_temporal[b, t] / P + grad_spatial[b, p] / T.
void st_pool_bwd(const at::Tensor& grad_temporal, const at::Tensor& grad_spatial, at::Tensor& dx);
// y [B, k, C] -> pooled [B, sum ceil(k / s), C]: window means per scale, concatenated.
void multiscale_pool_fwd(const at::Tensor& y, const std::vector<int64_t>& scales, at::Tensor& pooled);
// grad [B, sum ceil(k / s), C] -> dy [B, k, C].
void multiscale_pool_bwd(const at::Tensor& grad, const std::vector<int64_t>& scales, at::Tensor& dy);

}  // namespace stquery::cpu
