// Warp and block reductions and scans in a fixed order (deterministic: the same inputs give the
// same bits on every run). Block helpers take 1-D blocks whose size is a multiple of 32 and a
// `scratch` array of 33 elements in shared memory; every thread of the block must call them.
#pragma once

#include "cuda_compat.h"

namespace stq {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;  // the same in every lane (each lane adds the same pairs)
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

// Exclusive prefix sum of `v` over the block's threads in threadIdx.x order; *total = the sum.
template <typename T>
__device__ T block_exclusive_scan(T v, T* total, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  const T inc = warp_inclusive_scan(v);
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const T w = warp_inclusive_scan(lane < n_warps ? scratch[lane] : T(0));
    scratch[lane] = w;
  }
  __syncthreads();
  const T before = warp > 0 ? scratch[warp - 1] : T(0);
  *total = scratch[n_warps - 1];
  __syncthreads();  // scratch may be reused on return
  return before + inc - v;
}

// Sum (or max) of `v` over the block, returned to every thread.
template <typename T, bool MAX = false>
__device__ T block_reduce(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < n_warps ? scratch[lane] : scratch[0];
    if (!MAX && lane >= n_warps) w = T(0);
    w = MAX ? warp_max(w) : warp_sum(w);
    if (lane == 0) scratch[32] = w;
  }
  __syncthreads();
  const T out = scratch[32];
  __syncthreads();
  return out;
}

}  // namespace stq
