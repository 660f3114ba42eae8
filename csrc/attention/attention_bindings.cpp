// Bindings of the attention kernels: checks, then attention.h's launchers. Outputs and workspaces
// are allocated by the caller (stquery/backends/cuda_backend.py) and passed in; `stream` is the
// CUDA stream's handle (0 under the emulation). The problem (frames, masks, mode, scale) arrives
// as the fields of stquery.backends.base.AttnProblem.
#include <optional>

#include "../common/bindings.h"
#include "attention.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
namespace attn = stq::attn;

// (b, l, h, n) strides of a [G, N, H, *] (spatial) or [B*T, L, H, *] (temporal) tensor.
attn::Strides strides_of(const Tensor& x, int64_t frames) {
  if (frames) return {frames * x.stride(0), x.stride(1), x.stride(2), x.stride(0)};
  return {x.stride(0), 0, x.stride(2), x.stride(1)};
}

struct Geometry {
  int n_seq, L, H, Nq, Nk, d;
};

Geometry geometry(const Tensor& q, const Tensor& k, int64_t frames) {
  STQ_CHECK_DIM(q, 4, "[G, N, H, d] or [B*T, L, H, d]");
  STQ_CHECK_DIM(k, 4, "[G, N, H, d] or [B*T, L, H, d]");
  if (frames) {
    TORCH_CHECK(q.size(0) % frames == 0, "q: dim 0 (", q.size(0), ") must be a multiple of frames = ", frames);
    return {int(q.size(0) / frames * q.size(1) * q.size(2)), int(q.size(1)), int(q.size(2)), int(frames),
            int(frames), int(q.size(3))};
  }
  return {int(q.size(0) * q.size(2)), 1, int(q.size(2)), int(q.size(1)), int(k.size(1)), int(q.size(3))};
}

void check_like(const Tensor& x, const Tensor& like, at::IntArrayRef shape, const char* name) {
  STQ_CHECK_DEVICE(x);
  TORCH_CHECK(x.sizes() == shape, name, ": expected shape ", shape, ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, ": expected ", like.scalar_type(), ", got ", x.scalar_type());
  STQ_CHECK_LAST_CONTIGUOUS(x);
}

void check_f32(const Tensor& x, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(x.sizes() == shape && x.scalar_type() == at::kFloat && x.is_contiguous(), name,
              ": expected a contiguous float32 tensor of shape ", shape, ", got ", x.scalar_type(), " ", x.sizes());
}

// Everything but the activations: side inputs, masks, mode. frame_lengths must stay alive (the
// contiguous copy of an int64 [B] is the caller's tensor or a local kept in `keep`).
attn::Params make_params(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& alpha,
                         const OptTensor& dense, const OptTensor& key_padding, const OptTensor& frame_lengths,
                         const Tensor& stats, int64_t frames, const std::vector<int64_t>& kinds,
                         const std::vector<int64_t>& radii, int64_t g_start, int64_t g_end, int64_t mode,
                         double scale, Tensor& keep) {
  const Geometry g = geometry(q, k, frames);
  TORCH_CHECK(g.d >= 1 && g.d <= attn::kMaxHeadDim, "q: head width d must be in 1..", attn::kMaxHeadDim, ", got ", g.d);
  const bool routed = mode != attn::kModeNone;
  TORCH_CHECK(kinds.size() == radii.size() && kinds.size() <= attn::kMaxMasks, "masks: at most ", attn::kMaxMasks,
              " kinds and radii, got ", kinds.size(), " and ", radii.size());
  const int P = mode == attn::kModeMix ? int(kinds.size()) : 1;
  check_like(k, q, {q.size(0), frames ? q.size(1) : k.size(1), q.size(2), g.d}, "k");
  check_like(v, q, k.sizes(), "v");
  STQ_CHECK_DEVICE(q);
  STQ_CHECK_LAST_CONTIGUOUS(q);
  check_f32(stats, {q.size(0), q.size(1), q.size(2), P}, "stats");

  attn::Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.stats = stats.data_ptr<float>();
  p.sq = strides_of(q, frames);
  p.sk = strides_of(k, frames);
  p.sv = strides_of(v, frames);
  p.ss = strides_of(stats, frames);
  p.n_seq = g.n_seq;
  p.L = g.L;
  p.H = g.H;
  p.Nq = g.Nq;
  p.Nk = g.Nk;
  p.d = g.d;
  p.P = P;
  p.scale = float(scale);
  p.qk_scale = float(scale) * attn::kLog2e;
  p.mode = int(mode);

  attn::MaskSpec& m = p.masks;
  m.n = routed ? int(kinds.size()) : 0;
  m.g_start = routed ? int(g_start) : 0;
  m.g_end = routed ? int(g_end) : 0;
  int n_dense = 0;
  const int64_t n_max = std::max(g.Nq, g.Nk);
  for (int j = 0; j < m.n; ++j) {
    int64_t param;
    if (kinds[j] == attn::kDense) {
      param = n_dense++;
    } else {
      TORCH_CHECK(kinds[j] == attn::kWindow || kinds[j] == attn::kCausal, "masks: unknown kind ", kinds[j]);
      param = (radii[j] < 0 || radii[j] >= n_max) ? -1 : radii[j];  // a radius >= max(Nq, Nk) bounds nothing
    }
    m.desc[j] = int(kinds[j] + 4 * (param + 1));
  }
  if (n_dense) {
    TORCH_CHECK(dense.has_value(), "dense: ", n_dense, " dense masks but no buffer");
    const Tensor& dm = *dense;
    TORCH_CHECK(dm.scalar_type() == at::kBool && dm.dim() == 3 && dm.size(0) >= n_dense && dm.size(1) == g.Nq &&
                    dm.size(2) == g.Nk,
                "dense: expected bool [", n_dense, ", ", g.Nq, ", ", g.Nk, "], got ", dm.scalar_type(), " ", dm.sizes());
    STQ_CHECK_DEVICE(dm);
    m.dense = dm.data_ptr<bool>();
    m.sd_m = dm.stride(0);
    m.sd_q = dm.stride(1);
    m.sd_k = dm.stride(2);
  }
  if (routed) {
    TORCH_CHECK(alpha.has_value(), "alpha: required in modes mix and scale");
    const Tensor& a = *alpha;
    const int n = int(kinds.size());
    const std::vector<int64_t> want = frames ? std::vector<int64_t>{g.n_seq / (g.L * g.H), g.L, g.H, n}
                                             : std::vector<int64_t>{q.size(0), g.H, n};
    TORCH_CHECK(a.scalar_type() == at::kFloat && a.sizes() == at::IntArrayRef(want), "alpha: expected float32 ",
                at::IntArrayRef(want), ", got ", a.scalar_type(), " ", a.sizes());
    STQ_CHECK_DEVICE(a);
    p.alpha = a.data_ptr<float>();
    if (frames) {
      p.sa_b = a.stride(0), p.sa_l = a.stride(1), p.sa_h = a.stride(2), p.sa_p = a.stride(3);
    } else {
      p.sa_b = a.stride(0), p.sa_l = 0, p.sa_h = a.stride(1), p.sa_p = a.stride(2);
    }
  }
  if (key_padding.has_value()) {
    const Tensor& kp = *key_padding;
    TORCH_CHECK(!frames, "key_padding: spatial attention only");
    TORCH_CHECK(kp.scalar_type() == at::kBool && kp.sizes() == at::IntArrayRef({q.size(0), g.Nk}),
                "key_padding: expected bool [", q.size(0), ", ", g.Nk, "], got ", kp.scalar_type(), " ", kp.sizes());
    STQ_CHECK_DEVICE(kp);
    p.kpad = kp.data_ptr<bool>();
    p.skp_b = kp.stride(0);
    p.skp_n = kp.stride(1);
  }
  if (frame_lengths.has_value()) {
    TORCH_CHECK(frames, "frame_lengths: temporal attention only");
    const int64_t B = g.n_seq / (g.L * g.H);
    TORCH_CHECK(frame_lengths->scalar_type() == at::kLong && frame_lengths->sizes() == at::IntArrayRef({B}),
                "frame_lengths: expected int64 [", B, "], got ", frame_lengths->scalar_type(), " ",
                frame_lengths->sizes());
    STQ_CHECK_DEVICE(*frame_lengths);
    keep = frame_lengths->contiguous();
    p.flen = keep.data_ptr<int64_t>();
  }
  return p;
}

// (spp, n_qtiles, n_ktiles) of the backward launch: the dalpha partials are [n_qtiles, n_seq, P].
std::vector<int64_t> attention_bwd_plan(int64_t n_seq, int64_t Nq, int64_t Nk, int64_t d) {
  const attn::Plan pl = attn::plan_bwd(int(n_seq), int(Nq), int(Nk), int(d));
  return {pl.spp, pl.n_qtiles, pl.n_ktiles};
}

void attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& alpha, const OptTensor& dense,
                   const OptTensor& key_padding, const OptTensor& frame_lengths, const Tensor& out,
                   const Tensor& stats, int64_t frames, const std::vector<int64_t>& kinds,
                   const std::vector<int64_t>& radii, int64_t g_start, int64_t g_end, int64_t mode, double scale,
                   int64_t stream) {
  Tensor keep;
  attn::Params p = make_params(q, k, v, alpha, dense, key_padding, frame_lengths, stats, frames, kinds, radii,
                               g_start, g_end, mode, scale, keep);
  check_like(out, q, q.sizes(), "out");
  if (q.numel() == 0 || p.Nk == 0) return;
  p.o = out.data_ptr();
  p.so = strides_of(out, frames);
  const attn::Plan pl = attn::plan_fwd(p.n_seq, p.Nq, p.Nk, p.d);
  p.spp = pl.spp, p.n_qtiles = pl.n_qtiles, p.n_ktiles = pl.n_ktiles;
  STQ_CHECK_CUDA(attn::attention_fwd(p, stq::dtype_of(q), stq::as_stream(stream)));
}

// delta, coef: float32 like stats (workspaces); dalpha_partial: float32 [n_qtiles, n_seq, p] when routed.
void attention_bwd(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& stats, const OptTensor& alpha, const OptTensor& dense, const OptTensor& key_padding,
                   const OptTensor& frame_lengths, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                   const Tensor& delta, const Tensor& coef, const OptTensor& dalpha_partial, int64_t frames,
                   const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii, int64_t g_start,
                   int64_t g_end, int64_t mode, double scale, int64_t stream) {
  Tensor keep;
  attn::Params p = make_params(q, k, v, alpha, dense, key_padding, frame_lengths, stats, frames, kinds, radii,
                               g_start, g_end, mode, scale, keep);
  check_like(grad_out, q, q.sizes(), "grad_out");
  check_like(out, q, q.sizes(), "out");
  check_like(dq, q, q.sizes(), "dq");
  check_like(dk, k, k.sizes(), "dk");
  check_like(dv, v, v.sizes(), "dv");
  check_f32(delta, stats.sizes(), "delta");
  check_f32(coef, stats.sizes(), "coef");
  if (q.numel() == 0 || p.Nk == 0) return;
  const attn::Plan pl = attn::plan_bwd(p.n_seq, p.Nq, p.Nk, p.d);
  p.spp = pl.spp, p.n_qtiles = pl.n_qtiles, p.n_ktiles = pl.n_ktiles;
  if (mode != attn::kModeNone) {
    TORCH_CHECK(dalpha_partial.has_value(), "dalpha_partial: required in modes mix and scale");
    check_f32(*dalpha_partial, {pl.n_qtiles, p.n_seq, p.masks.n}, "dalpha_partial");
    p.dalpha = dalpha_partial->data_ptr<float>();
  }
  p.dout = grad_out.data_ptr();
  p.sdo = strides_of(grad_out, frames);
  p.out = out.data_ptr();
  p.so = strides_of(out, frames);
  p.dq = dq.data_ptr();
  p.sdq = strides_of(dq, frames);
  p.dk = dk.data_ptr();
  p.sdk = strides_of(dk, frames);
  p.dv = dv.data_ptr();
  p.sdv = strides_of(dv, frames);
  p.delta = delta.data_ptr<float>();
  p.coef = coef.data_ptr<float>();
  STQ_CHECK_CUDA(attn::attention_bwd(p, stq::dtype_of(q), stq::as_stream(stream)));
}

stq::Register reg([](pybind11::module_& m) {
  m.def("attention_bwd_plan", &attention_bwd_plan);
  m.def("attention_fwd", &attention_fwd);
  m.def("attention_bwd", &attention_bwd);
});

}  // namespace
