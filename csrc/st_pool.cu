// st_pool: RED-VILLM / Video-ChatGPT spatio-temporal pooling in one pass over x [B, T, P, C].
//   temporal[b, t, c] = mean_p x[b, t, p, c]      spatial[b, p, c] = mean_t x[b, t, p, c]
// A block owns (b, a chunk of kPatches patches, a tile of kThreads channels) and walks the T
// frames: each thread keeps its column's spatial sums in registers (one per patch of the chunk)
// and adds its partial temporal sum into a float32 workspace: one atomic per (frame, chunk,
// channel), P / kPatches of them per output element, instead of a second pass over x.
// Float atomics make the temporal mean's rounding order, and so its last bits, vary run to run.
// Grids are one-dimensional (up to 2^31 - 1 blocks), so no size hits the 65535 limit of y and z.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "st_pool.h"

namespace stquery {
namespace {

constexpr int kThreads = 128;  // channels per block
constexpr int kPatches = 8;    // patches per block

template <typename scalar_t>
__global__ void st_pool_fwd_kernel(const scalar_t* __restrict__ x, float* __restrict__ temporal_sum,
                                   scalar_t* __restrict__ spatial, int T, int P, int C, int64_t sxb,
                                   int64_t sxt, int64_t sxp, float inv_T) {
  const int c_blocks = (C + kThreads - 1) / kThreads, p_blocks = (P + kPatches - 1) / kPatches;
  const int b = blockIdx.x / (c_blocks * p_blocks);
  const int p0 = (blockIdx.x / c_blocks) % p_blocks * kPatches;
  const int c = blockIdx.x % c_blocks * kThreads + threadIdx.x;
  if (c >= C) return;
  const int np = min(kPatches, P - p0);
  float spat[kPatches] = {0.f};
  const scalar_t* xb = x + b * sxb + p0 * sxp + c;
  for (int t = 0; t < T; ++t) {
    float tsum = 0.f;
#pragma unroll
    for (int i = 0; i < kPatches; ++i) {
      if (i < np) {
        const float v = static_cast<float>(xb[t * sxt + i * sxp]);
        spat[i] += v;
        tsum += v;
      }
    }
    atomicAdd(temporal_sum + ((int64_t)b * T + t) * C + c, tsum);
  }
#pragma unroll
  for (int i = 0; i < kPatches; ++i) {
    if (i < np) spatial[((int64_t)b * P + p0 + i) * C + c] = static_cast<scalar_t>(spat[i] * inv_T);
  }
}

template <typename scalar_t>
__global__ void scale_cast_kernel(const float* __restrict__ in, scalar_t* __restrict__ out, int64_t n, float s) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<scalar_t>(in[i] * s);
}

template <typename scalar_t>
__global__ void st_pool_bwd_kernel(const scalar_t* __restrict__ gt, const scalar_t* __restrict__ gs,
                                   scalar_t* __restrict__ dx, int B, int T, int P, int C, int64_t sgt_b, int64_t sgt_t,
                                   int64_t sgs_b, int64_t sgs_p, float inv_P, float inv_T) {
  const int64_t n = (int64_t)B * T * P * C;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = i % C, p = (i / C) % P;
    const int64_t bt = i / ((int64_t)P * C);  // b * T + t
    const int b = bt / T, t = bt % T;
    const float v = static_cast<float>(gt[b * sgt_b + t * sgt_t + c]) * inv_P +
                    static_cast<float>(gs[b * sgs_b + p * sgs_p + c]) * inv_T;
    dx[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
int fwd(const void* x, float* temporal_sum, void* temporal, void* spatial, int B, int T, int P, int C, int64_t sxb,
        int64_t sxt, int64_t sxp, cudaStream_t stream) {
  const int64_t grid = (int64_t)((C + kThreads - 1) / kThreads) * ((P + kPatches - 1) / kPatches) * B;
  st_pool_fwd_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(static_cast<const scalar_t*>(x), temporal_sum,
                                                              static_cast<scalar_t*>(spatial), T, P, C, sxb, sxt,
                                                              sxp, 1.f / T);
  const int64_t n = (int64_t)B * T * C;
  scale_cast_kernel<scalar_t><<<(n + 255) / 256, 256, 0, stream>>>(temporal_sum, static_cast<scalar_t*>(temporal),
                                                                     n, 1.f / P);
  return cudaGetLastError();
}

template <typename scalar_t>
int bwd(const void* gt, const void* gs, void* dx, int B, int T, int P, int C, int64_t sgt_b, int64_t sgt_t,
        int64_t sgs_b, int64_t sgs_p, cudaStream_t stream) {
  const int64_t blocks = ((int64_t)B * T * P * C + 255) / 256;
  const int grid = blocks < (1 << 20) ? (int)blocks : (1 << 20);  // grid-stride loop beyond
  st_pool_bwd_kernel<scalar_t><<<grid, 256, 0, stream>>>(static_cast<const scalar_t*>(gt),
                                                         static_cast<const scalar_t*>(gs),
                                                         static_cast<scalar_t*>(dx), B, T, P, C, sgt_b, sgt_t, sgs_b,
                                                         sgs_p, 1.f / P, 1.f / T);
  return cudaGetLastError();
}

}  // namespace

#define STQ_DTYPE_SWITCH(dtype, F, ...)                                      \
  switch (dtype) {                                                         \
    case DType::kFloat32: return F<float>(__VA_ARGS__);                    \
    case DType::kFloat16: return F<__half>(__VA_ARGS__);                   \
    case DType::kBFloat16: return F<__nv_bfloat16>(__VA_ARGS__);           \
  }                                                                        \
  return cudaErrorInvalidValue;

int st_pool_fwd(DType dtype, const void* x, float* temporal_sum, void* temporal, void* spatial, int B, int T,
                int P, int C, int64_t sxb, int64_t sxt, int64_t sxp, void* stream) {
  STQ_DTYPE_SWITCH(dtype, fwd, x, temporal_sum, temporal, spatial, B, T, P, C, sxb, sxt, sxp,
                   static_cast<cudaStream_t>(stream))
}

int st_pool_bwd(DType dtype, const void* grad_temporal, const void* grad_spatial, void* dx, int B, int T, int P,
                int C, int64_t sgt_b, int64_t sgt_t, int64_t sgs_b, int64_t sgs_p, void* stream) {
  STQ_DTYPE_SWITCH(dtype, bwd, grad_temporal, grad_spatial, dx, B, T, P, C, sgt_b, sgt_t, sgs_b, sgs_p,
                   static_cast<cudaStream_t>(stream))
}

}  // namespace stquery
