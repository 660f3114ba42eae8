// Bindings of the pooling kernels: checks, then the launchers of pool.h. Outputs are allocated by
// the caller (stquery/backends/cuda_backend.py) and passed in; `stream` is the CUDA stream's
// handle (0 under the emulation).
#include "../common/bindings.h"
#include "pool.h"

namespace {

using at::Tensor;

void check_out(const Tensor& out, const Tensor& like, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(out.sizes() == shape, name, ": expected shape ", shape, ", got ", out.sizes());
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == like.scalar_type() && out.device() == like.device(),
              name, ": expected a contiguous ", like.scalar_type(), " tensor on ", like.device());
}

// x [B, T, P, C] -> temporal [B, T, C], spatial [B, P, C]; partial: float32 [st_pool_partial_size].
void st_pool_fwd(const Tensor& x, const Tensor& temporal, const Tensor& spatial, const Tensor& partial, int64_t stream) {
  STQ_CHECK_DEVICE(x);
  STQ_CHECK_DIM(x, 4, "[B, T, P, C]");
  STQ_CHECK_LAST_CONTIGUOUS(x);
  const int B = x.size(0), T = x.size(1), P = x.size(2), C = x.size(3);
  TORCH_CHECK(x.numel() > 0, "x: every dim of [B, T, P, C] must be at least 1, got ", x.sizes());
  check_out(temporal, x, {B, T, C}, "temporal");
  check_out(spatial, x, {B, P, C}, "spatial");
  const int64_t n_partial = stq::st_pool_partial_size(B, T, P, C);
  TORCH_CHECK(partial.numel() >= n_partial && partial.scalar_type() == at::kFloat && partial.is_contiguous(),
              "partial: expected a contiguous float32 workspace of ", n_partial, " elements");
  STQ_CHECK_CUDA(stq::st_pool_fwd(stq::dtype_of(x), x.data_ptr(), x.stride(0), x.stride(1), x.stride(2),
                                  temporal.data_ptr(), spatial.data_ptr(),
                                  n_partial ? partial.data_ptr<float>() : nullptr, B, T, P, C,
                                  stq::as_stream(stream)));
}

void st_pool_bwd(const Tensor& gt, const Tensor& gs, const Tensor& dx, int64_t stream) {
  STQ_CHECK_DEVICE(gt);
  STQ_CHECK_DEVICE(gs);
  STQ_CHECK_DIM(gt, 3, "[B, T, C]");
  STQ_CHECK_DIM(gs, 3, "[B, P, C]");
  const int B = gt.size(0), T = gt.size(1), C = gt.size(2), P = gs.size(1);
  TORCH_CHECK(gs.size(0) == B && gs.size(2) == C, "grad_spatial: expected [", B, ", P, ", C, "], got ", gs.sizes());
  TORCH_CHECK(gs.scalar_type() == gt.scalar_type(), "grad_spatial: dtype differs from grad_temporal");
  STQ_CHECK_LAST_CONTIGUOUS(gt);
  STQ_CHECK_LAST_CONTIGUOUS(gs);
  check_out(dx, gt, {B, T, P, C}, "dx");
  if (dx.numel() == 0) return;
  STQ_CHECK_CUDA(stq::st_pool_bwd(stq::dtype_of(gt), gt.data_ptr(), gt.stride(0), gt.stride(1), gs.data_ptr(),
                                  gs.stride(0), gs.stride(1), dx.data_ptr(), B, T, P, C, stq::as_stream(stream)));
}

int64_t pooled_rows(const std::vector<int64_t>& scales, int64_t k) {
  int64_t n = 0;
  for (auto s : scales) n += (k + s - 1) / s;
  return n;
}

// y [B, k, C] -> out [B, sum ceil(k / s), C]
void multiscale_pool_fwd(const Tensor& y, const std::vector<int64_t>& scales, const Tensor& out, int64_t stream) {
  STQ_CHECK_DEVICE(y);
  STQ_CHECK_DIM(y, 3, "[B, k, C]");
  STQ_CHECK_LAST_CONTIGUOUS(y);
  const int B = y.size(0), k = y.size(1), C = y.size(2);
  check_out(out, y, {B, pooled_rows(scales, k), C}, "out");
  if (y.numel() == 0) return;
  STQ_CHECK_CUDA(stq::multiscale_pool_fwd(stq::dtype_of(y), y.data_ptr(), y.stride(0), y.stride(1), out.data_ptr(),
                                          out.stride(0), out.stride(1), stq::make_scales(scales, k), B, k, C,
                                          stq::as_stream(stream)));
}

// grad [B, sum ceil(k / s), C] -> dy [B, k, C]
void multiscale_pool_bwd(const Tensor& grad, int64_t k, const std::vector<int64_t>& scales, const Tensor& dy,
                         int64_t stream) {
  STQ_CHECK_DEVICE(grad);
  STQ_CHECK_DIM(grad, 3, "[B, n_pooled, C]");
  STQ_CHECK_LAST_CONTIGUOUS(grad);
  const int B = grad.size(0), C = grad.size(2);
  TORCH_CHECK(grad.size(1) == pooled_rows(scales, k), "grad: expected ", pooled_rows(scales, k), " pooled rows, got ",
              grad.size(1));
  check_out(dy, grad, {B, k, C}, "dy");
  if (dy.numel() == 0) return;
  STQ_CHECK_CUDA(stq::multiscale_pool_bwd(stq::dtype_of(grad), grad.data_ptr(), grad.stride(0), grad.stride(1),
                                          dy.data_ptr(), dy.stride(0), dy.stride(1),
                                          stq::make_scales(scales, static_cast<int>(k)), B, static_cast<int>(k), C,
                                          stq::as_stream(stream)));
}

const stq::Register registered([](pybind11::module_& m) {
  m.def("st_pool_fwd", &st_pool_fwd, "x [B, T, P, C] -> temporal [B, T, C], spatial [B, P, C] (into the given outputs)");
  m.def("st_pool_partial_size", &stq::st_pool_partial_size, "float32 workspace elements of st_pool_fwd");
  m.def("st_pool_bwd", &st_pool_bwd, "(grad_temporal [B, T, C], grad_spatial [B, P, C]) -> dx [B, T, P, C]");
  m.def("multiscale_pool_fwd", &multiscale_pool_fwd, "y [B, k, C], scales -> out [B, sum ceil(k / s), C]");
  m.def("multiscale_pool_bwd", &multiscale_pool_bwd, "grad [B, sum ceil(k / s), C], k, scales -> dy [B, k, C]");
});

}  // namespace
