// What every kernel file includes instead of the CUDA headers: the CUDA toolkit under nvcc, the
// host emulation (cuda_emu.h) when compiled with -DSTQ_CUDA_EMULATE, plus the few helpers that
// must read the same in both (conversions, the launch, dynamic shared memory).
#pragma once

#ifdef STQ_CUDA_EMULATE
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

#include "dtype.h"

// `T* name` pointing at the block's dynamic shared memory (the launch's shared_bytes).
#ifdef STQ_CUDA_EMULATE
#define STQ_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(stq_emu::dynamic_shared())
#else
#define STQ_DYNAMIC_SHARED(T, name)                         \
  extern __shared__ __align__(16) unsigned char stq_smem_[]; \
  T* name = reinterpret_cast<T*>(stq_smem_)
#endif

// Dispatch a launcher template on the storage dtype: `return F<float|__half|__nv_bfloat16>(args)`.
#define STQ_DTYPE_SWITCH(dtype, F, ...)                              \
  switch (dtype) {                                                 \
    case ::stq::DType::kFloat32: return F<float>(__VA_ARGS__);     \
    case ::stq::DType::kFloat16: return F<__half>(__VA_ARGS__);    \
    case ::stq::DType::kBFloat16: return F<__nv_bfloat16>(__VA_ARGS__); \
  }                                                                \
  return cudaErrorInvalidValue;

namespace stq {

constexpr unsigned kFullMask = 0xffffffffu;

// Storage <-> float32 compute type. Kernels convert only through these (torch builds with
// __CUDA_NO_HALF_CONVERSIONS__, so static_cast<float>(__half) does not compile there).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A value of runtime dtype `dt` (a tensor whose dtype is not a template parameter), as float.
__device__ __forceinline__ float load_as_float(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
__device__ __forceinline__ void store_from_float(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

// The one way kernels are launched: `<<<grid, block, shared_bytes, stream>>>` under nvcc, the
// emulation on the host. Arguments are converted to the kernel's parameter types. Returns the
// launch's cudaError_t.
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared_bytes, void* stream,
                   Args&&... args) {
#ifdef STQ_CUDA_EMULATE
  (void)stream;
  return stq_emu::launch(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
#else
  if (shared_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, block, shared_bytes, static_cast<cudaStream_t>(stream)>>>(static_cast<KArgs>(args)...);
  return cudaGetLastError();
#endif
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace stq
