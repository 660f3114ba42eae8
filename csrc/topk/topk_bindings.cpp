// Bindings of the top-k selection and the gather + gate (+ pooling): checks, then the launchers of
// topk.h. Outputs and workspaces come from the caller (stquery/backends/cuda_backend.py).
#include "../common/bindings.h"
#include "topk.h"

namespace {

using at::Tensor;

void check_scores(const Tensor& scores) {
  STQ_CHECK_DEVICE(scores);
  STQ_CHECK_DIM(scores, 2, "[B, N]");
  STQ_CHECK_LAST_CONTIGUOUS(scores);
}

void check_idx(const Tensor& idx, int64_t B, const Tensor& like) {
  STQ_CHECK_DIM(idx, 2, "[B, k]");
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.size(0) == B && idx.device() == like.device(),
              "idx: expected int64 [", B, ", k] on ", like.device(), ", got ", idx.scalar_type(), " ", idx.sizes());
  STQ_CHECK_LAST_CONTIGUOUS(idx);
}

void check_workspace(const Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.is_contiguous() && t.numel() >= numel, name,
              ": expected a contiguous ", dtype, " workspace of ", numel, " elements");
}

// idx [B, k] (time order) from scores [B, N]; hist [B, 4, 256] int32 zeroed, state [B, 2] int32,
// counts [B, n_chunks, 2] int32.
void topk_select_time(const Tensor& scores, int64_t k, const Tensor& hist, const Tensor& state, const Tensor& counts,
                      const Tensor& idx, int64_t stream) {
  check_scores(scores);
  const int B = scores.size(0), N = scores.size(1);
  TORCH_CHECK(1 <= k && k <= N, "k: expected 1 <= k <= N = ", N, ", got ", k);
  check_idx(idx, B, scores);
  TORCH_CHECK(idx.size(1) == k, "idx: expected [", B, ", ", k, "], got ", idx.sizes());
  check_workspace(hist, at::kInt, int64_t(B) * stq::kRadixPasses * stq::kRadixBins, "hist");
  check_workspace(state, at::kInt, int64_t(B) * 2, "state");
  check_workspace(counts, at::kInt, int64_t(B) * stq::select_chunks(N) * 2, "counts");
  STQ_CHECK_CUDA(stq::topk_select_time(stq::dtype_of(scores), scores.data_ptr(), scores.stride(0), B, N, k,
                                       hist.data_ptr<int32_t>(), state.data_ptr<int32_t>(),
                                       counts.data_ptr<int32_t>(), idx.data_ptr<int64_t>(), idx.stride(0),
                                       stq::as_stream(stream)));
}

// idx [B, k] in score order from the contiguous time-ordered time_idx [B, k].
void topk_rank_by_score(const Tensor& scores, const Tensor& time_idx, const Tensor& idx, int64_t stream) {
  check_scores(scores);
  const int B = scores.size(0);
  check_idx(time_idx, B, scores);
  check_idx(idx, B, scores);
  const int k = time_idx.size(1);
  TORCH_CHECK(time_idx.is_contiguous() && idx.size(1) == k, "time_idx: expected contiguous [B, k] like idx");
  TORCH_CHECK(k <= stq::kRankMaxK, "k: the rank kernel takes k <= ", stq::kRankMaxK, ", got ", k);
  STQ_CHECK_CUDA(stq::topk_rank_by_score(stq::dtype_of(scores), scores.data_ptr(), scores.stride(0),
                                         time_idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), idx.stride(0), B, k,
                                         stq::as_stream(stream)));
}

void softmax_stats(const Tensor& scores, const Tensor& idx, const Tensor& stats, int64_t stream) {
  check_scores(scores);
  check_idx(idx, scores.size(0), scores);
  check_workspace(stats, at::kFloat, scores.size(0) * 2, "stats");
  STQ_CHECK_CUDA(stq::softmax_stats(stq::dtype_of(scores), scores.data_ptr(), scores.stride(0),
                                    idx.data_ptr<int64_t>(), idx.stride(0), stats.data_ptr<float>(), scores.size(0),
                                    idx.size(1), stq::as_stream(stream)));
}

void check_gather(const Tensor& x, const Tensor& scores, const Tensor& idx) {
  STQ_CHECK_DEVICE(x);
  STQ_CHECK_DIM(x, 3, "[B, N, C]");
  STQ_CHECK_LAST_CONTIGUOUS(x);
  check_scores(scores);
  TORCH_CHECK(scores.size(0) == x.size(0) && scores.size(1) == x.size(1), "scores: expected [", x.size(0), ", ",
              x.size(1), "], got ", scores.sizes());
  check_idx(idx, x.size(0), x);
}

// out [B, rows, C] (rows: k, or the pooled rows of `scales`); stats: softmax_stats (gate 2) or unused.
void gather_gate_fwd(const Tensor& x, const Tensor& scores, const Tensor& idx, int64_t gate,
                     const std::vector<int64_t>& scales, const Tensor& stats, const Tensor& out, int64_t stream) {
  check_gather(x, scores, idx);
  const int B = x.size(0), C = x.size(2), k = idx.size(1);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == B && out.size(2) == C && out.scalar_type() == x.scalar_type(),
              "out: expected [", B, ", rows, ", C, "] of x's dtype, got ", out.sizes());
  STQ_CHECK_LAST_CONTIGUOUS(out);
  if (out.numel() == 0 || k == 0) return;
  const stq::Scales sc = stq::make_scales(scales.empty() ? std::vector<int64_t>{1} : scales, k);
  STQ_CHECK_CUDA(stq::gather_gate_fwd(stq::dtype_of(x), static_cast<int>(gate), x.data_ptr(), x.stride(0), x.stride(1),
                                      scores.data_ptr(), stq::dtype_of(scores), scores.stride(0),
                                      idx.data_ptr<int64_t>(), idx.stride(0),
                                      gate == stq::kGateSoftmax ? stats.data_ptr<float>() : nullptr, out.data_ptr(),
                                      out.stride(0), out.stride(1), sc, B, k, C, stq::as_stream(stream)));
}

void topk_inverse(const Tensor& idx, const Tensor& pos, int64_t stream) {
  STQ_CHECK_DEVICE(idx);
  TORCH_CHECK(pos.dim() == 2 && pos.size(0) == idx.size(0) && pos.scalar_type() == at::kInt && pos.is_contiguous(),
              "pos: expected contiguous int32 [B, N]");
  if (idx.numel() == 0) return;
  STQ_CHECK_CUDA(stq::topk_inverse(idx.data_ptr<int64_t>(), idx.stride(0), pos.data_ptr<int32_t>(), idx.size(0),
                                   pos.size(1), idx.size(1), stq::as_stream(stream)));
}

// dx [B, N, C] contiguous, dscores [B, N] (gate != 0), dg float32 [B, k] (softmax).
void gather_gate_bwd(const Tensor& grad, const Tensor& x, const Tensor& scores, const Tensor& idx, int64_t gate,
                     const std::vector<int64_t>& scales, const Tensor& stats, const Tensor& pos, const Tensor& dx,
                     const Tensor& dscores, const Tensor& dg, int64_t stream) {
  check_gather(x, scores, idx);
  STQ_CHECK_DEVICE(grad);
  STQ_CHECK_DIM(grad, 3, "[B, rows, C]");
  STQ_CHECK_LAST_CONTIGUOUS(grad);
  const int B = x.size(0), N = x.size(1), C = x.size(2), k = idx.size(1);
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "grad: expected x's dtype");
  TORCH_CHECK(dx.sizes() == x.sizes() && dx.is_contiguous() && dx.scalar_type() == x.scalar_type(),
              "dx: expected a contiguous tensor like x");
  if (gate != 0)
    TORCH_CHECK(dscores.sizes() == scores.sizes() && dscores.scalar_type() == scores.scalar_type(),
                "dscores: expected a tensor like scores");
  if (dx.numel() == 0) return;
  const stq::Scales sc = stq::make_scales(scales.empty() ? std::vector<int64_t>{1} : scales, std::max(k, 1));
  STQ_CHECK_CUDA(stq::gather_gate_bwd(
      stq::dtype_of(x), static_cast<int>(gate), !scales.empty(), grad.data_ptr(), grad.stride(0), grad.stride(1),
      x.data_ptr(), x.stride(0), x.stride(1), scores.data_ptr(), stq::dtype_of(scores), scores.stride(0),
      idx.data_ptr<int64_t>(), idx.stride(0), gate == stq::kGateSoftmax ? stats.data_ptr<float>() : nullptr,
      pos.data_ptr<int32_t>(), sc, dx.data_ptr(), gate != 0 ? dscores.data_ptr() : nullptr,
      gate != 0 ? dscores.stride(0) : 0, gate == stq::kGateSoftmax ? dg.data_ptr<float>() : nullptr, B, N, k, C,
      stq::as_stream(stream)));
}

const stq::Register registered([](pybind11::module_& m) {
  m.def("select_chunks", &stq::select_chunks, "chunks of the selection's count workspace");
  m.def("topk_select_time", &topk_select_time, "radix select: idx [B, k] ascending from scores [B, N]");
  m.def("topk_rank_by_score", &topk_rank_by_score, "reorder time-ordered idx by (score desc, index asc)");
  m.def("softmax_stats", &softmax_stats, "stats [B, 2] = (max, 1 / sum exp) of the selected scores");
  m.def("gather_gate_fwd", &gather_gate_fwd, "y = x[idx] * g(scores[idx]), optionally multi-scale pooled");
  m.def("topk_inverse", &topk_inverse, "pos[b, idx[b, i]] = i");
  m.def("gather_gate_bwd", &gather_gate_bwd, "(dx, dscores) of gather_gate_fwd");
});

}  // namespace
