// Launchers of the CUDA backend. Plain C++ on raw pointers, so the .cu files need only the CUDA
// toolkit (no torch headers) and bindings.cpp needs only torch's host headers.
#pragma once
#include <cstdint>

namespace stquery {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// x [B, T, P, C] (strides sx*, last dim contiguous) -> temporal_sum [B, T, C] float32 (zeroed by
// the caller), temporal [B, T, C] and spatial [B, P, C] (contiguous, x's dtype). Returns a cudaError_t.
int st_pool_fwd(DType dtype, const void* x, float* temporal_sum, void* temporal, void* spatial, int B, int T,
                int P, int C, int64_t sxb, int64_t sxt, int64_t sxp, void* stream);

// dx [B, T, P, C] (contiguous) = grad_temporal[b, t] / P + grad_spatial[b, p] / T.
int st_pool_bwd(DType dtype, const void* grad_temporal, const void* grad_spatial, void* dx, int B, int T, int P,
                int C, int64_t sgt_b, int64_t sgt_t, int64_t sgs_b, int64_t sgs_p, void* stream);

}  // namespace stquery
