// The cpu backend's attention as Python calls it (attention_autograd_cpu.cpp): the kernels of
// attention_cpu.h with their outputs allocated here, and a C++ autograd node around them. Bound in
// csrc/cpu_bindings.cpp, called by stquery/backends/cpu_backend.py.
//
// Every entry point takes the tensors, the fields of stquery.ops.attention.problem.AttnProblem in
// their order (stquery.backends.jit.problem_args), and poison: fill the outputs with NaN before the
// kernels write them (under the tests, stquery/kernels/__init__.py). alpha: the routing weights
// expanded to [B, L, H, p] (spatial [G, H, p]), any float dtype and strides.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace stquery::cpu {

// -> (out like q, contiguous; stats float32 q.shape[:3] + (stats width,)).
std::tuple<at::Tensor, at::Tensor> attention_fwd_alloc(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& key_padding,
    const std::optional<at::Tensor>& frame_lengths, int64_t frames, const std::vector<int64_t>& kinds,
    const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end, int64_t mode, double scale,
    bool poison);

// -> (dq, dk, dv like q, k, v; dalpha in alpha's shape and dtype, None unless routed).
// grad_out: stride(-1) == 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_bwd_alloc(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& stats,
    const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
    const std::optional<at::Tensor>& key_padding, const std::optional<at::Tensor>& frame_lengths, int64_t frames,
    const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end,
    int64_t mode, double scale, bool poison);

// -> out, with autograd recorded by a C++ node: gradients to q, k, v and alpha.
at::Tensor attention_recorded(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                              const std::optional<at::Tensor>& key_padding,
                              const std::optional<at::Tensor>& frame_lengths, int64_t frames,
                              const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii,
                              int64_t global_start, int64_t global_end, int64_t mode, double scale, bool poison);

}  // namespace stquery::cpu
