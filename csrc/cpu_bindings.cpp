// pybind11 glue for the cpu backend (stquery/backends/cpu_backend.py), built just in time with the
// host compiler. The kernels live in csrc/<op>/<op>_cpu.cpp; outputs are allocated by the caller
// (through `empty`), except attention's, which attention_autograd_cpu.cpp allocates (and records
// autograd for) in C++. Every output buffer comes from common/output_cache.h.
#include <torch/extension.h>

#include "attention/attention_autograd_cpu.h"
#include "common/output_cache.h"
#include "pool/pool_cpu.h"
#include "topk/topk_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace stquery::cpu;
  m.def("attention_fwd_alloc", &attention_fwd_alloc, "fused attention forward -> (out, stats)");
  m.def("attention_bwd_alloc", &attention_bwd_alloc,
        "fused attention backward from the saved stats -> (dq, dk, dv, dalpha or None)");
  m.def("attention_recorded", &attention_recorded, "fused attention forward recording its backward -> out");
  m.def("topk_select", &topk_select, "top-k indices, ties to the lower index (fills idx)");
  m.def("gather_gate_fwd", &gather_gate_fwd, "gather + gate (+ multi-scale pooling) (fills y)");
  m.def("gather_gate_bwd", &gather_gate_bwd, "gather + gate backward (fills dx, dscores)");
  m.def("multiscale_pool_fwd", &multiscale_pool_fwd, "multi-scale window means (fills pooled)");
  m.def("multiscale_pool_bwd", &multiscale_pool_bwd, "multi-scale pooling backward (fills dy)");
  m.def("st_pool_fwd", &st_pool_fwd, "spatio-temporal means in one pass (fills temporal, spatial)");
  m.def("st_pool_bwd", &st_pool_bwd, "spatio-temporal pooling backward (fills dx)");
  m.def("empty", &cached_empty, "an uninitialised contiguous output from the output cache");
  m.def("empty_cache", [] { OutputCache::get().empty_cache(); }, "free the output cache's buffers");
  m.def("cached_bytes", [] { return OutputCache::get().cached_bytes(); }, "bytes the output cache holds");
}
