// CPU top-k selection and gather + gate (+ multi-scale pooling) (topk_cpu.cpp); bound in
// csrc/cpu_bindings.cpp. Outputs are allocated by the caller.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace stquery::cpu {

// idx [B, k] int64: the k largest scores of each row, ties to the lower index; order "time"
// (ascending index) or "score" (descending score, ties by index).
void topk_select(const at::Tensor& scores, int64_t k, const std::string& order, at::Tensor& idx);
// y = x[b, idx] * g(scores[b, idx]) ([B, k, C]), or its multi-scale window means when scales is non-empty.
void gather_gate_fwd(const at::Tensor& x, const at::Tensor& scores, const at::Tensor& idx, const std::string& gate,
                     const std::vector<int64_t>& scales, at::Tensor& y);
// dx [B, N, C] (zero off the selected rows), dscores [B, N] (when gate != "none").
void gather_gate_bwd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scores, const at::Tensor& idx,
                     const std::string& gate, const std::vector<int64_t>& scales, at::Tensor& dx,
                     const std::optional<at::Tensor>& dscores);

}  // namespace stquery::cpu
