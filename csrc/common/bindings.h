// Shared by the op bindings (csrc/<op>/*_bindings.cpp): torch-side checks, dtype mapping and the
// registry the module's PYBIND11_MODULE (csrc/bindings.cpp) defines its functions from. Host code
// only; torch headers stay out of the kernel files.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "dtype.h"

// The emulation build (-DSTQ_CUDA_EMULATE) runs the kernels on CPU tensors, the CUDA build on CUDA ones.
#ifdef STQ_CUDA_EMULATE
#define STQ_CHECK_DEVICE(x) TORCH_CHECK((x).device().is_cpu(), #x ": the emulated cuda backend takes CPU tensors, got ", (x).device())
#else
#define STQ_CHECK_DEVICE(x) TORCH_CHECK((x).is_cuda(), #x ": expected a CUDA tensor, got ", (x).device())
#endif
#define STQ_CHECK_LAST_CONTIGUOUS(x) \
  TORCH_CHECK((x).size(-1) == 1 || (x).stride(-1) == 1, #x ": the last dim must be contiguous, got strides ", (x).strides())
#define STQ_CHECK_DIM(x, n, layout) TORCH_CHECK((x).dim() == (n), #x ": expected " layout ", got ", (x).sizes())
#define STQ_CHECK_CUDA(call) \
  do { const int err_ = (call); TORCH_CHECK(err_ == 0, #call " failed with CUDA error ", err_); } while (0)

namespace stq {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void* as_stream(int64_t stream) { return reinterpret_cast<void*>(stream); }

// Each op's bindings file adds its functions at load time: `static stq::Register r([](auto& m) {...});`
using Registrar = void (*)(pybind11::module_&);
std::vector<Registrar>& registrars();
struct Register {
  explicit Register(Registrar r) { registrars().push_back(r); }
};

}  // namespace stq
