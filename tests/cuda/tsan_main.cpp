// ThreadSanitizer driver of the CUDA emulation: every registered case launches kernels of
// csrc/ on a grid of 1-4 blocks. Built with -fsanitize=thread by tests/cuda/test_tsan.py, which
// fails on any report. `tsan_driver [name-substring]` runs the matching cases.
#include <cstdio>
#include <cstring>

#include "tsan_cases.h"

namespace stq_tsan {
std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}
}  // namespace stq_tsan

int main(int argc, char** argv) {
  int failed = 0, ran = 0;
  for (const auto& c : stq_tsan::cases()) {
    if (argc > 1 && std::strstr(c.name, argv[1]) == nullptr) continue;
    const int err = c.run();
    std::printf("%s: %s\n", c.name, err == 0 ? "ok" : "launch error");
    failed += err != 0;
    ++ran;
  }
  std::printf("%d cases, %d failed\n", ran, failed);
  return failed != 0 || ran == 0;
}
