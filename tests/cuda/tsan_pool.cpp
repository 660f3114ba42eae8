// ThreadSanitizer cases of the pooling kernels (csrc/pool), each on 1-4 blocks. float32 data: the
// kernels' synchronisation does not depend on the dtype.
#include "pool/pool.h"
#include "tsan_cases.h"

namespace {

using stq::DType;

int st_pool() {  // 2 patch tiles x 2 channel blocks, then the tile reduction and the backward
  const int B = 1, T = 3, P = 40, C = 40;
  auto x = stq_tsan::randn(size_t(B) * T * P * C);
  std::vector<float> temporal(B * T * C), spatial(B * P * C), partial(stq::st_pool_partial_size(B, T, P, C));
  std::vector<float> dx(x.size());
  int err = stq::st_pool_fwd(DType::kFloat32, x.data(), T * P * C, P * C, C, temporal.data(), spatial.data(),
                             partial.data(), B, T, P, C, nullptr);
  if (err) return err;
  return stq::st_pool_bwd(DType::kFloat32, temporal.data(), T * C, C, spatial.data(), P * C, C, dx.data(), B, T, P, C,
                          nullptr);
}

int multiscale_pool() {  // 2 channel blocks
  const int B = 1, k = 45, C = 40;
  const auto sc = stq::make_scales({1, 2, 4}, k);
  const int rows = 45 + 23 + 12;
  auto y = stq_tsan::randn(size_t(B) * k * C);
  std::vector<float> out(size_t(B) * rows * C), dy(y.size());
  int err = stq::multiscale_pool_fwd(DType::kFloat32, y.data(), k * C, C, out.data(), rows * C, C, sc, B, k, C, nullptr);
  if (err) return err;
  return stq::multiscale_pool_bwd(DType::kFloat32, out.data(), rows * C, C, dy.data(), k * C, C, sc, B, k, C, nullptr);
}

const stq_tsan::Register r1{"st_pool", st_pool};
const stq_tsan::Register r2{"multiscale_pool", multiscale_pool};

}  // namespace
