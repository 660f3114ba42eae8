// CPU attention kernels (attention_cpu.cpp); bound in csrc/cpu_bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace stquery::cpu {

// Fills out (q.shape, q.dtype) and stats (float32 q.shape[:3] + (P,)). alpha: float32
// [B, L, H, p] (spatial: [G, 1, H, p]), any strides. See stquery/backends/cpu_backend.py.
void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& stats,
                   const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                   const std::optional<at::Tensor>& key_padding, const std::optional<at::Tensor>& frame_lengths,
                   int64_t frames, const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii,
                   int64_t global_start, int64_t global_end, int64_t mode, double scale);

// Fills dq, dk, dv (like q, k, v) and dalpha (float32 [B*L*H, p], routed modes only).
void attention_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& stats, const std::optional<at::Tensor>& alpha,
                   const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& key_padding,
                   const std::optional<at::Tensor>& frame_lengths, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                   const std::optional<at::Tensor>& dalpha, int64_t frames, const std::vector<int64_t>& kinds,
                   const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end, int64_t mode,
                   double scale);

}  // namespace stquery::cpu
