// Registration of ThreadSanitizer cases (tests/cuda/tsan_*.cpp): `const stq_tsan::Register r{"name", fn};`
// where fn launches kernels through their launchers and returns the first cudaError_t.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace stq_tsan {

struct Case {
  const char* name;
  int (*run)();
};
std::vector<Case>& cases();
struct Register {
  Register(const char* name, int (*run)()) { cases().push_back({name, run}); }
};

// Deterministic normal(0, 1) values.
inline std::vector<float> randn(size_t n, unsigned seed = 0) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

}  // namespace stq_tsan
