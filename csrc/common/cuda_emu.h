// CUDA emulation on the host: the kernels' own .cu sources, compiled by the host C++ compiler
// (C++20, -DSTQ_CUDA_EMULATE), run with CUDA's thread semantics. Included by cuda_compat.h only.
//
// Model:
// - A launch runs the grid's blocks one after another. Each block runs with one OS thread per
//   CUDA thread: the first blockDim threads of a process-wide pool (created on demand, kept for
//   later launches: creating hundreds of threads per launch would cost more than the kernels).
// - threadIdx/blockIdx/blockDim/gridDim are thread_local. Warps are 32 consecutive linear thread
//   ids (x fastest), as on the GPU.
// - __syncthreads() is a block-wide std::barrier. A thread that returns from the kernel drops out
//   of it (what the GPU does with exited threads).
// - __shfl_*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp go through a per-warp
//   exchange buffer (double-buffered) and a per-warp std::barrier: every lane of the warp must make
//   the call (full-warp semantics; the mask argument is not interpreted).
// - __shared__ is a function-local static: one copy per kernel instantiation, which is block
//   storage because blocks run one at a time and launches are serialised by a global mutex.
//   Dynamic shared memory (STQ_DYNAMIC_SHARED) is filled with 0xFF bytes (NaN floats) before
//   every block, so reading it before writing shows.
// - atomic* on std::atomic_ref (relaxed order is not modelled: every atomic is seq_cst).
// - __half / __nv_bfloat16 are 16-bit storage types converted to and from float with
//   round-to-nearest-even, through the cuda_fp16.h / cuda_bf16.h function names only (no
//   implicit conversions or arithmetic, as under torch's __CUDA_NO_HALF_CONVERSIONS__ flags).
// Not emulated: tensor cores, inline PTX, cooperative groups, CUB, streams (launches are
// synchronous), memory fences beyond what the barriers give, warp-divergent shuffles.
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

namespace stq_emu {

constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024;  // sm_90's opt-in limit per block

// What the threads of one launch share: the barriers and exchange buffers of the current block.
class Block {
 public:
  Block(int n_threads, size_t dynamic_bytes)
      : n_(n_threads), n_warps_((n_threads + warpSize - 1) / warpSize), warp_(n_warps_),
        exchange_(static_cast<size_t>(n_warps_) * 2 * warpSize), shared_(dynamic_bytes + 16) {
    reset();
  }
  // Called between blocks (the completion step of `done`, while no thread runs kernel code).
  void reset() {
    sync_.emplace(n_);
    for (int w = 0; w < n_warps_; ++w) warp_[w].emplace(lanes(w));
    std::fill(shared_.begin(), shared_.end(), static_cast<unsigned char>(0xFF));
  }
  int lanes(int w) const { return std::min(warpSize, n_ - w * warpSize); }
  std::barrier<>& sync() { return *sync_; }
  std::barrier<>& warp(int w) { return *warp_[w]; }
  uint64_t* exchange(int w, int phase) { return &exchange_[(static_cast<size_t>(w) * 2 + phase) * warpSize]; }
  void* dynamic_shared() {
    auto p = reinterpret_cast<uintptr_t>(shared_.data());
    return reinterpret_cast<void*>((p + 15) & ~uintptr_t(15));
  }

 private:
  int n_, n_warps_;
  std::optional<std::barrier<>> sync_;
  std::vector<std::optional<std::barrier<>>> warp_;
  std::vector<uint64_t> exchange_;
  std::vector<unsigned char> shared_;
};

struct ThreadState {
  Block* block = nullptr;
  int lane = 0, warp = 0, phase = 0;
};
inline thread_local ThreadState tls;

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// Worker threads that run one job at a time: run(n, job) calls job(0 .. n-1), one per worker, and
// returns when all have returned. Never destroyed (detached workers outlive static destructors).
class ThreadPool {
 public:
  void run(unsigned n, const std::function<void(unsigned)>& job) {
    std::unique_lock<std::mutex> lock(m_);
    while (workers_ < n) {
      std::thread([this, id = workers_, gen = generation_] { loop(id, gen); }).detach();
      ++workers_;
    }
    job_ = &job;
    active_ = remaining_ = n;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(unsigned id, uint64_t seen) {
    for (;;) {
      const std::function<void(unsigned)>* job;
      {
        std::unique_lock<std::mutex> lock(m_);
        start_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= active_) continue;
        job = job_;
      }
      (*job)(id);
      std::lock_guard<std::mutex> lock(m_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex m_;
  std::condition_variable start_, done_;
  const std::function<void(unsigned)>* job_ = nullptr;
  unsigned workers_ = 0, active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

inline ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool;
  return *p;
}

inline void* dynamic_shared() { return tls.block->dynamic_shared(); }

// Every lane publishes `v`; returns what lane `src` published (lanes of this warp only).
template <typename T>
T exchange(T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a type over 8 bytes");
  uint64_t* buf = tls.block->exchange(tls.warp, tls.phase);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  buf[tls.lane] = bits;
  tls.block->warp(tls.warp).arrive_and_wait();
  T out;
  std::memcpy(&out, &buf[src], sizeof(T));
  // The next exchange writes the other buffer: a lane that writes this one again has passed the
  // next barrier, which every lane reaches only after reading here.
  tls.phase ^= 1;
  return out;
}

// Bit i set when lane i published a non-zero predicate.
inline unsigned vote(bool pred) {
  uint64_t* buf = tls.block->exchange(tls.warp, tls.phase);
  buf[tls.lane] = pred;
  tls.block->warp(tls.warp).arrive_and_wait();
  unsigned mask = 0;
  for (int i = 0; i < tls.block->lanes(tls.warp); ++i) mask |= (buf[i] != 0 ? 1u : 0u) << i;
  tls.phase ^= 1;
  return mask;
}

// Stores `v` into `*a` while `replaces(old, v)` holds for the value held (a compare-and-swap loop);
// returns the value held before, as CUDA's atomicMax / atomicMin do.
template <typename T, typename Replaces>
T atomic_replace_if(T* a, T v, Replaces replaces) {
  std::atomic_ref<T> r(*a);
  T old = r.load();
  while (replaces(old, v) && !r.compare_exchange_weak(old, v)) {}
  return old;
}

struct ResetBlock {
  Block* block;
  void operator()() noexcept { block->reset(); }
};

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
  const int64_t n = int64_t(block.x) * block.y * block.z;
  const int64_t n_blocks = int64_t(grid.x) * grid.y * grid.z;
  if (n <= 0 || n > kMaxThreads || n_blocks <= 0 || grid.y > 65535 || grid.z > 65535 || block.z > 64)
    return cudaErrorInvalidConfiguration;
  if (shared_bytes > kMaxDynamicShared) return cudaErrorInvalidValue;
  // Parameters are copied once, as the driver does; every thread then copies them into the call.
  std::tuple<std::decay_t<KArgs>...> params(static_cast<KArgs>(args)...);
  std::lock_guard<std::mutex> lock(launch_mutex());
  Block state(static_cast<int>(n), shared_bytes);
  std::barrier<ResetBlock> done(n, ResetBlock{&state});
  const std::function<void(unsigned)> run = [&](unsigned tid) {
    threadIdx = {tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    tls = ThreadState{&state, static_cast<int>(tid % warpSize), static_cast<int>(tid / warpSize), 0};
    for (int64_t b = 0; b < n_blocks; ++b) {
      blockIdx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                  static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
      tls.phase = 0;
      std::apply(kernel, params);
      state.sync().arrive_and_drop();
      state.warp(tls.warp).arrive_and_drop();
      done.arrive_and_wait();
    }
  };
  pool().run(static_cast<unsigned>(n), run);
  return cudaSuccess;
}

}  // namespace stq_emu

// --- synchronisation and warp intrinsics ---------------------------------------------------
inline void __syncthreads() { stq_emu::tls.block->sync().arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { stq_emu::tls.block->warp(stq_emu::tls.warp).arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// `width` splits the warp into segments of `width` lanes (a power of two), as on the GPU: a source
// outside the caller's segment (down, up, xor) returns the caller's own value.
template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = warpSize) {
  const int lane = stq_emu::tls.lane;
  return stq_emu::exchange(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  const int lane = stq_emu::tls.lane, src = lane + static_cast<int>(delta);
  return stq_emu::exchange(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = warpSize) {
  const int lane = stq_emu::tls.lane, src = lane - static_cast<int>(delta);
  return stq_emu::exchange(v, src >= (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = warpSize) {
  const int lane = stq_emu::tls.lane, src = lane ^ mask;
  return stq_emu::exchange(v, (src & ~(width - 1)) <= (lane & ~(width - 1)) ? src : lane);
}
inline unsigned __ballot_sync(unsigned, int pred) { return stq_emu::vote(pred != 0); }
inline int __any_sync(unsigned, int pred) { return stq_emu::vote(pred != 0) != 0; }
inline int __all_sync(unsigned, int pred) {
  const int n = stq_emu::tls.block->lanes(stq_emu::tls.warp);
  const unsigned full = n == 32 ? 0xffffffffu : (1u << n) - 1;
  return stq_emu::vote(pred != 0) == full;
}

// --- atomics (global and shared memory alike) ------------------------------------------------
template <typename T>
T atomicAdd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_add(v); }
template <typename T>
T atomicSub(T* a, T v) { return std::atomic_ref<T>(*a).fetch_sub(v); }
template <typename T>
T atomicExch(T* a, T v) { return std::atomic_ref<T>(*a).exchange(v); }
template <typename T>
T atomicOr(T* a, T v) { return std::atomic_ref<T>(*a).fetch_or(v); }
template <typename T>
T atomicAnd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_and(v); }
template <typename T>
T atomicCAS(T* a, T expected, T desired) {
  std::atomic_ref<T>(*a).compare_exchange_strong(expected, desired);
  return expected;
}
template <typename T>
T atomicMax(T* a, T v) { return stq_emu::atomic_replace_if(a, v, [](T old, T x) { return old < x; }); }
template <typename T>
T atomicMin(T* a, T v) { return stq_emu::atomic_replace_if(a, v, [](T old, T x) { return x < old; }); }

// --- integer and float intrinsics ------------------------------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline int __popc(unsigned v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __clz(unsigned v) { return std::countl_zero(v); }
inline int __ffs(unsigned v) { return v ? std::countr_zero(v) + 1 : 0; }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
template <typename T>
T __ldg(const T* p) { return *p; }

// --- 16-bit floats: storage types with round-to-nearest-even conversions -----------------------
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu, mant = h.x & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(mag) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

inline __half __float2half_rn(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t out;
  if (u >= 0x47800000u) {  // >= 2^16 (or inf / NaN): inf, or a quiet NaN
    out = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {  // below 2^-14: subnormal or zero; the float add rounds (RNE)
    const float magic = std::bit_cast<float>(126u << 23);  // 0.5: aligns bit 2^-24 to the ulp
    out = std::bit_cast<uint32_t>(std::bit_cast<float>(u) + magic) - (126u << 23);
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;  // rebias and round half to even
    out = u >> 13;  // a carry out of the mantissa rounds up to the next binade or to inf
  }
  return __half{static_cast<uint16_t>(out | (sign >> 16))};
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(uint32_t(b.x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return __nv_bfloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
