// pybind11 glue and checks for the CUDA backend; built just in time by
// stquery/backends/cuda_backend.py. Host code only: kernels and launchers live in the .cu files.
// The caller makes the tensors' device current and passes its current stream.
#include <torch/extension.h>

#include "st_pool.h"

#define CHECK_LAST_CONTIGUOUS(x) \
  TORCH_CHECK((x).size(-1) == 1 || (x).stride(-1) == 1, #x ": the last dim must be contiguous, got strides ", (x).strides())
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), #x ": expected shape [" #__VA_ARGS__ "], got ", (x).sizes())
#define CHECK_CUDA_CALL(call) \
  do { const int err = (call); TORCH_CHECK(err == 0, #call " failed with CUDA error ", err); } while (0)

namespace {

stquery::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return stquery::DType::kFloat32;
    case at::kHalf: return stquery::DType::kFloat16;
    case at::kBFloat16: return stquery::DType::kBFloat16;
    default: TORCH_CHECK(false, "expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(stream); }

// x [B, T, P, C] -> (temporal [B, T, C], spatial [B, P, C]); stream: torch.cuda.current_stream().cuda_stream
std::vector<at::Tensor> st_pool_fwd(const at::Tensor& x, int64_t stream) {
  TORCH_CHECK(x.is_cuda(), "x: expected a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, "x: expected [B, T, P, C], got ", x.sizes());
  CHECK_LAST_CONTIGUOUS(x);
  const int B = x.size(0), T = x.size(1), P = x.size(2), C = x.size(3);
  TORCH_CHECK(x.numel() > 0, "x: every dim of [B, T, P, C] must be at least 1, got ", x.sizes());
  auto temporal_sum = at::zeros({B, T, C}, x.options().dtype(at::kFloat));
  auto temporal = at::empty({B, T, C}, x.options());
  auto spatial = at::empty({B, P, C}, x.options());
  CHECK_CUDA_CALL(stquery::st_pool_fwd(dtype_of(x), x.data_ptr(), temporal_sum.data_ptr<float>(), temporal.data_ptr(),
                                       spatial.data_ptr(), B, T, P, C, x.stride(0), x.stride(1), x.stride(2),
                                       as_stream(stream)));
  return {temporal, spatial};
}

at::Tensor st_pool_bwd(const at::Tensor& grad_temporal, const at::Tensor& grad_spatial, int64_t stream) {
  TORCH_CHECK(grad_temporal.is_cuda() && grad_spatial.is_cuda(), "grad_temporal, grad_spatial: expected CUDA tensors");
  TORCH_CHECK(grad_temporal.dim() == 3, "grad_temporal: expected [B, T, C], got ", grad_temporal.sizes());
  const int B = grad_temporal.size(0), T = grad_temporal.size(1), C = grad_temporal.size(2);
  TORCH_CHECK(grad_spatial.dim() == 3, "grad_spatial: expected [B, P, C], got ", grad_spatial.sizes());
  const int P = grad_spatial.size(1);
  CHECK_SHAPE(grad_spatial, B, P, C);
  TORCH_CHECK(grad_spatial.scalar_type() == grad_temporal.scalar_type(), "grad_spatial: dtype differs from grad_temporal");
  CHECK_LAST_CONTIGUOUS(grad_temporal);
  CHECK_LAST_CONTIGUOUS(grad_spatial);
  auto dx = at::empty({B, T, P, C}, grad_temporal.options());
  CHECK_CUDA_CALL(stquery::st_pool_bwd(dtype_of(grad_temporal), grad_temporal.data_ptr(), grad_spatial.data_ptr(),
                                       dx.data_ptr(), B, T, P, C, grad_temporal.stride(0), grad_temporal.stride(1),
                                       grad_spatial.stride(0), grad_spatial.stride(1), as_stream(stream)));
  return dx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("st_pool_fwd", &st_pool_fwd, "st_pool forward: x [B, T, P, C] -> (temporal [B, T, C], spatial [B, P, C])");
  m.def("st_pool_bwd", &st_pool_bwd, "st_pool backward: (grad_temporal [B, T, C], grad_spatial [B, P, C]) -> dx");
}
