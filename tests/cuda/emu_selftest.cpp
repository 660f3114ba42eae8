// Self-test of the CUDA emulation (csrc/common/cuda_emu.h), driven by tests/cuda/test_emulation.py:
//   emu_selftest FLOATS_IN HALF_TO_FLOAT_OUT FLOAT_TO_HALF_OUT FLOAT_TO_BF16_OUT SHUFFLES_OUT
// converts all 65536 half bit patterns to float and the float32 values of FLOATS_IN to half and
// bfloat16 (raw little-endian arrays), and records what every lane of a 2-warp block gets from each
// warp intrinsic and from atomicMax / atomicMin, for the test to compare with torch's conversions and CUDA's documented semantics.
#include <cstdio>
#include <vector>

#include "common/cuda_compat.h"

namespace {

constexpr int kThreads = 64, kOps = 13;

// out[op * kThreads + tid]: the value lane tid received from warp intrinsic `op` (0-8), then from
// atomicMax / atomicMin on shared ints: the extreme after every thread's call (9, 10) and what a
// second round of calls returns, the value held before (11, 12).
__global__ void __launch_bounds__(kThreads) shuffles_kernel(int* out) {
  const int tid = threadIdx.x, lane = tid & 31;
  const int v = 100 * tid;
  int* o = out;
  o[0 * kThreads + tid] = __shfl_sync(stq::kFullMask, v, (lane * 7 + 3) & 31);
  o[1 * kThreads + tid] = __shfl_sync(stq::kFullMask, v, lane + 5, 8);
  o[2 * kThreads + tid] = __shfl_down_sync(stq::kFullMask, v, 3);
  o[3 * kThreads + tid] = __shfl_down_sync(stq::kFullMask, v, 3, 16);
  o[4 * kThreads + tid] = __shfl_up_sync(stq::kFullMask, v, 5);
  o[5 * kThreads + tid] = __shfl_xor_sync(stq::kFullMask, v, 9);
  o[6 * kThreads + tid] = static_cast<int>(__ballot_sync(stq::kFullMask, lane % 3 == 0 || tid == 40));
  o[7 * kThreads + tid] = __any_sync(stq::kFullMask, tid == 40);
  o[8 * kThreads + tid] = __all_sync(stq::kFullMask, tid != 7);
  __shared__ int hi, lo;
  if (tid == 0) hi = lo = 0;
  __syncthreads();
  const int x = tid * 37 % kThreads - 20;  // a permutation of -20 .. 43
  atomicMax(&hi, x);
  atomicMin(&lo, x);
  __syncthreads();
  o[9 * kThreads + tid] = hi;
  o[10 * kThreads + tid] = lo;
  __syncthreads();
  o[11 * kThreads + tid] = atomicMax(&hi, x);
  o[12 * kThreads + tid] = atomicMin(&lo, x);
}

template <typename T>
bool write(const char* path, const std::vector<T>& v) {
  FILE* f = std::fopen(path, "wb");
  if (!f) return false;
  const bool ok = std::fwrite(v.data(), sizeof(T), v.size(), f) == v.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) return 2;
  std::vector<float> in;
  if (FILE* f = std::fopen(argv[1], "rb")) {
    float x;
    while (std::fread(&x, sizeof x, 1, f) == 1) in.push_back(x);
    std::fclose(f);
  }
  std::vector<float> h2f(65536);
  for (int i = 0; i < 65536; ++i) h2f[i] = __half2float(__half{static_cast<uint16_t>(i)});
  std::vector<uint16_t> f2h(in.size()), f2b(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    f2h[i] = __float2half_rn(in[i]).x;
    f2b[i] = __float2bfloat16_rn(in[i]).x;
  }
  std::vector<int> shuffles(kOps * kThreads, -1);
  if (stq::launch(shuffles_kernel, dim3(1), dim3(kThreads), 0, nullptr, shuffles.data()) != cudaSuccess) return 3;
  const bool ok = write(argv[2], h2f) && write(argv[3], f2h) && write(argv[4], f2b) && write(argv[5], shuffles);
  return ok ? 0 : 4;
}
