// pybind11 glue for the cpu backend (stquery/backends/cpu_backend.py), built just in time with the
// host compiler. The kernels live in csrc/<op>/<op>_cpu.cpp; outputs are allocated by the caller.
#include <torch/extension.h>

#include "attention/attention_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace stquery::cpu;
  m.def("attention_fwd", &attention_fwd, "fused attention forward (fills out, stats)");
  m.def("attention_bwd", &attention_bwd, "fused attention backward from the saved stats (fills dq, dk, dv, dalpha)");
}
