// The token walk behind multiscale_pool and the fused gather + gate (+ pooling) of topk_tokens:
//
//   v[i]  = x[b, row(i)] * g(scores[b, row(i)])     row(i) = idx[b, i] (GATHER) or i
//   out[b, off_s + w] = sum_{i in W} v[i] * (1/|W|),   W = [w*s, min((w+1)*s, k)), for every scale s
//
// A warp owns (b, one segment of `Scales::segment` tokens, 32 channels): lane = channel, walking
// the segment's tokens in order and adding each into one register accumulator per scale, which is
// stored (and reset) at the end of its window. Segments are multiples of every scale, so every
// token of y is read once for all scales, every sum is in token order (deterministic), and gathered
// rows are read along C (coalesced). Per 32 tokens, lane j loads token j's row index and gate and
// the warp broadcasts them with shuffles. Without scales the launcher passes the single scale 1,
// which stores y itself (a division by 1 is exact).
#pragma once

#include "../common/cuda_compat.h"
#include "pool.h"

namespace stq {

constexpr int kWalkWarps = 8;  // segments per block (blockDim = 32 x kWalkWarps)

// 1 / |window w of scale q| for k tokens.
__device__ __forceinline__ float window_inv(const Scales& sc, int q, int w, int k) {
  return (w + 1) * sc.s[q] >= k ? sc.inv_last[q] : sc.inv[q];
}

// g(s); softmax reads stats = (max, 1 / sum exp(s - max)) of the k selected scores.
template <int GATE>
__device__ __forceinline__ float gate_value(float s, const float* stats) {
  if (GATE == kGateSigmoid) return 1.0f / (1.0f + expf(-s));
  if (GATE == kGateSoftmax) return expf(s - stats[0]) * stats[1];
  if (GATE == kGateIdentity) return s;
  return 1.0f;
}

template <typename T, bool GATHER, int GATE>
__global__ void __launch_bounds__(32 * kWalkWarps)
    pool_walk_kernel(const T* __restrict__ x, int64_t sxb, int64_t sxn, const void* __restrict__ scores,
                     DType score_dt, int64_t ssb, const int64_t* __restrict__ idx, int64_t sib,
                     const float* __restrict__ stats, T* __restrict__ out, int64_t sob, int64_t son, Scales sc,
                     int k, int C, int n_seg_blocks, int n_c_blocks) {
  const int lane = threadIdx.x, c_block = blockIdx.x % n_c_blocks;
  const int seg = (blockIdx.x / n_c_blocks) % n_seg_blocks * kWalkWarps + threadIdx.y;
  const int64_t b = blockIdx.x / (int64_t(n_c_blocks) * n_seg_blocks);
  const int i_begin = seg * sc.segment;
  if (i_begin >= k) return;  // the whole warp: shuffles below see full warps only
  const int i_end = min(k, i_begin + sc.segment);
  const int c = c_block * 32 + lane;
  const bool c_ok = c < C;
  const T* xb = x + b * sxb + c;
  const float* st = stats + 2 * b;
  float acc[kMaxScales];
#pragma unroll
  for (int q = 0; q < kMaxScales; ++q) acc[q] = 0.0f;
  for (int i0 = i_begin; i0 < i_end; i0 += 32) {
    int64_t my_row = i0 + lane;
    float my_g = 1.0f;
    if (GATHER && i0 + lane < i_end) {
      my_row = idx[b * sib + i0 + lane];
      if (GATE != kGateNone) my_g = gate_value<GATE>(load_as_float(scores, score_dt, b * ssb + my_row), st);
    }
    const int n = min(32, i_end - i0);
    for (int j = 0; j < n; ++j) {
      const int64_t row = GATHER ? __shfl_sync(kFullMask, my_row, j) : i0 + j;
      const float g = GATE != kGateNone ? __shfl_sync(kFullMask, my_g, j) : 1.0f;
      const float v = c_ok ? to_float(xb[row * sxn]) * g : 0.0f;
      const int i = i0 + j;
#pragma unroll
      for (int q = 0; q < kMaxScales; ++q) {
        if (q < sc.n) {
          acc[q] += v;
          const int s = sc.s[q];
          if ((i + 1) % s == 0 || i + 1 == k) {
            const int w = i / s;
            if (c_ok) out[b * sob + (sc.off[q] + w) * son + c] = from_float<T>(acc[q] * window_inv(sc, q, w, k));
            acc[q] = 0.0f;
          }
        }
      }
    }
  }
}

// Grid of the walk: blocks over (channel tiles, segment groups, batch), flattened to one dim.
inline dim3 walk_grid(const Scales& sc, int B, int k, int C, int* n_seg_blocks, int* n_c_blocks) {
  *n_c_blocks = static_cast<int>(ceil_div(C, 32));
  *n_seg_blocks = static_cast<int>(ceil_div(ceil_div(k, sc.segment), kWalkWarps));
  return dim3(static_cast<unsigned>(int64_t(*n_c_blocks) * *n_seg_blocks * B));
}

}  // namespace stq
