// ThreadSanitizer cases of the selection and gather kernels (csrc/topk), each on 1-4 blocks.
#include "topk/topk.h"
#include "tsan_cases.h"

namespace {

using stq::DType;

int topk_select() {  // 2 rows x 2 chunks; ties across chunks
  const int B = 2, N = 3000, k = 1400;
  auto s = stq_tsan::randn(size_t(B) * N);
  for (size_t i = 0; i < s.size(); i += 3) s[i] = 0.5f;
  std::vector<int32_t> hist(B * stq::kRadixPasses * stq::kRadixBins, 0), state(B * 2),
      counts(B * stq::select_chunks(N) * 2);
  std::vector<int64_t> time_idx(B * k), idx(B * k);
  int err = stq::topk_select_time(DType::kFloat32, s.data(), N, B, N, k, hist.data(), state.data(), counts.data(),
                                  time_idx.data(), k, nullptr);
  if (err) return err;
  return stq::topk_rank_by_score(DType::kFloat32, s.data(), N, time_idx.data(), idx.data(), k, B, k, nullptr);
}

int gather_gate() {  // softmax statistics, pooled gather, inverse and backward (3 row blocks)
  const int B = 1, N = 20, C = 40, k = 9;
  const auto sc = stq::make_scales({1, 2}, k);
  const int rows = 9 + 5;
  auto x = stq_tsan::randn(size_t(B) * N * C, 1), s = stq_tsan::randn(size_t(B) * N, 2);
  std::vector<int64_t> idx = {0, 2, 3, 5, 8, 11, 13, 17, 19};
  std::vector<float> stats(2 * B), y(size_t(B) * rows * C), dx(x.size()), ds(s.size()), dg(B * k);
  std::vector<int32_t> pos(B * N, -1);
  for (int gate : {stq::kGateSigmoid, stq::kGateSoftmax}) {
    int err = stq::softmax_stats(DType::kFloat32, s.data(), N, idx.data(), k, stats.data(), B, k, nullptr);
    if (!err)
      err = stq::gather_gate_fwd(DType::kFloat32, gate, x.data(), N * C, C, s.data(), DType::kFloat32, N, idx.data(),
                                 k, stats.data(), y.data(), rows * C, C, sc, B, k, C, nullptr);
    if (!err) err = stq::topk_inverse(idx.data(), k, pos.data(), B, N, k, nullptr);
    if (!err)
      err = stq::gather_gate_bwd(DType::kFloat32, gate, true, y.data(), rows * C, C, x.data(), N * C, C, s.data(),
                                 DType::kFloat32, N, idx.data(), k, stats.data(), pos.data(), sc, dx.data(), ds.data(),
                                 N, dg.data(), B, N, k, C, nullptr);
    if (err) return err;
  }
  return 0;
}

const stq_tsan::Register r3{"topk_select", topk_select};
const stq_tsan::Register r4{"gather_gate", gather_gate};

}  // namespace
