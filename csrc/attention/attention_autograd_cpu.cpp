// Output allocation and autograd for the cpu backend's attention, in C++: on a small call the
// Python wrapper's two torch.empty and a Python torch.autograd.Function (apply, save_for_backward)
// cost more than the kernel (bench/host_overhead.py). What the kernels are handed is what the
// Python wrapper handed them: alpha as float32 [B, L, H, p] (spatial [G, H, p] -> [G, 1, H, p]),
// incoming gradients readable as rows, dalpha back in alpha's expanded shape and dtype (autograd's
// expand node sums it down to the user's broadcast shape).
#include "attention/attention_autograd_cpu.h"

#include <torch/autograd.h>

#include <limits>

#include "attention/attention_cpu.h"
#include "common/cpu_math.h"
#include "common/output_cache.h"

namespace stquery::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Static {  // everything but the tensors, as the entry points take it
  int64_t frames;
  std::vector<int64_t> kinds, radii;
  int64_t global_start, global_end, mode;
  double scale;
  bool poison;
};

at::Tensor output(at::IntArrayRef shape, at::ScalarType dtype, bool poison) {
  at::Tensor t = cached_empty(shape, dtype);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

std::optional<at::Tensor> alpha4(const std::optional<at::Tensor>& alpha, int64_t frames) {
  if (!alpha.has_value()) return std::nullopt;
  at::Tensor a = alpha->to(at::kFloat);
  return frames ? a : a.unsqueeze(1);
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                                       const std::optional<at::Tensor>& key_padding,
                                       const std::optional<at::Tensor>& frame_lengths, const Static& s) {
  const int64_t width = s.mode == kMix ? static_cast<int64_t>(s.kinds.size()) : 1;
  at::Tensor out = output(q.sizes(), q.scalar_type(), s.poison);
  at::Tensor stats = output({q.size(0), q.size(1), q.size(2), width}, at::kFloat, s.poison);
  attention_fwd(q, k, v, out, stats, alpha4(alpha, s.frames), dense, key_padding, frame_lengths, s.frames, s.kinds,
                s.radii, s.global_start, s.global_end, s.mode, s.scale);
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& stats,
    const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
    const std::optional<at::Tensor>& key_padding, const std::optional<at::Tensor>& frame_lengths, const Static& s) {
  at::Tensor dq = output(q.sizes(), q.scalar_type(), s.poison);
  at::Tensor dk = output(k.sizes(), k.scalar_type(), s.poison);
  at::Tensor dv = output(v.sizes(), v.scalar_type(), s.poison);
  std::optional<at::Tensor> dalpha;  // float32 [B*L*H, p], as the kernel writes it
  if (s.mode != kNone) {
    TORCH_CHECK(alpha.has_value(), "alpha: expected routing weights [.., p] in a routed mode, got None");
    const int64_t p = alpha->size(-1);
    dalpha = output({alpha->numel() / p, p}, at::kFloat, s.poison);
  }
  attention_bwd(grad_out, q, k, v, stats, alpha4(alpha, s.frames), dense, key_padding, frame_lengths, dq, dk, dv,
                dalpha, s.frames, s.kinds, s.radii, s.global_start, s.global_end, s.mode, s.scale);
  if (dalpha.has_value()) dalpha = dalpha->view(alpha->sizes()).to(alpha->scalar_type());
  return {dq, dk, dv, dalpha};
}

std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace

// Gradients to q, k, v and alpha; none to the masks, the padding and the static fields. Outside
// the anonymous namespace so that grad_fn.name() reads CppNode<stquery::cpu::AttentionCpu>.
struct AttentionCpu : torch::autograd::Function<AttentionCpu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                            const std::optional<at::Tensor>& key_padding,
                            const std::optional<at::Tensor>& frame_lengths, const Static& s) {
    auto [out, stats] = fwd(q, k, v, alpha, dense, key_padding, frame_lengths, s);
    // The kernels' backward reads the softmax statistics, not out: out is not saved, so an
    // in-place edit of it after the call is allowed (autograd checks the saved inputs).
    const at::Tensor none;
    ctx->save_for_backward({q, k, v, stats, alpha.value_or(none), dense.value_or(none), key_padding.value_or(none),
                            frame_lengths.value_or(none)});
    // Four entries, not eight: each is a string-keyed hash insert on every recorded call.
    ctx->saved_data["kinds"] = s.kinds;
    ctx->saved_data["radii"] = s.radii;
    ctx->saved_data["ints"] = std::vector<int64_t>{s.frames, s.global_start, s.global_end, s.mode, s.poison};
    ctx->saved_data["scale"] = s.scale;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const std::vector<int64_t> ints = d.at("ints").toIntVector();
    const Static s{ints[0], d.at("kinds").toIntVector(), d.at("radii").toIntVector(), ints[1], ints[2], ints[3],
                   d.at("scale").toDouble(), ints[4] != 0};
    at::Tensor grad_out = grads[0];
    // loss.sum() hands over an expanded scalar (all strides 0), which no kernel reads as rows
    // (stquery.ops.common.rows_readable, the rule of every backend's backward).
    if (grad_out.stride(-1) != 1 && grad_out.size(-1) != 1) grad_out = grad_out.contiguous();
    auto [dq, dk, dv, dalpha] = bwd(grad_out, saved[0], saved[1], saved[2], saved[3], present(saved[4]),
                                    present(saved[5]), present(saved[6]), present(saved[7]), s);
    const at::Tensor none;
    return {dq, dk, dv, dalpha.value_or(none), none, none, none, none};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_fwd_alloc(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& alpha,
    const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& key_padding,
    const std::optional<at::Tensor>& frame_lengths, int64_t frames, const std::vector<int64_t>& kinds,
    const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end, int64_t mode, double scale,
    bool poison) {
  return fwd(q, k, v, alpha, dense, key_padding, frame_lengths,
             {frames, kinds, radii, global_start, global_end, mode, scale, poison});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_bwd_alloc(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& stats,
    const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
    const std::optional<at::Tensor>& key_padding, const std::optional<at::Tensor>& frame_lengths, int64_t frames,
    const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end,
    int64_t mode, double scale, bool poison) {
  return bwd(grad_out, q, k, v, stats, alpha, dense, key_padding, frame_lengths,
             {frames, kinds, radii, global_start, global_end, mode, scale, poison});
}

at::Tensor attention_recorded(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                              const std::optional<at::Tensor>& key_padding,
                              const std::optional<at::Tensor>& frame_lengths, int64_t frames,
                              const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii,
                              int64_t global_start, int64_t global_end, int64_t mode, double scale, bool poison) {
  return AttentionCpu::apply(q, k, v, alpha, dense, key_padding, frame_lengths,
                              Static{frames, kinds, radii, global_start, global_end, mode, scale, poison});
}

}  // namespace stquery::cpu
