// The extension module of the cuda backend (built just in time by stquery/backends/cuda_backend.py
// from every csrc/<op>/ folder): the functions each op's *_bindings.cpp registered.
#include "common/bindings.h"

namespace stq {
std::vector<Registrar>& registrars() {
  static std::vector<Registrar> all;
  return all;
}
}  // namespace stq

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  for (auto reg : stq::registrars()) reg(m);
}
