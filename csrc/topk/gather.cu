// The gather + gate (+ multi-scale pooling) of topk_tokens (docs/ops.md §2.4), forward and backward:
//
//   y[b, i] = x[b, idx[b, i]] * g(scores[b, idx[b, i]]),  g = 1 | sigmoid | softmax over the k | identity
//
// Forward: pool_walk_kernel (csrc/pool/walk.cuh) with GATHER, after softmax_stats_kernel for the
// softmax gate. Backward, one warp per row n of x (rows off the selection get zeros, so dx needs no
// separate fill): dy = the pooled gradient at n's selection position pos[n] (sum over scales of
// grad[off_s + pos / s] * (1 / |window|)), dx[n] = dy * g, dg = <dy, x[n]> (a warp sum in fixed order);
// dscores[n] = dg * g' for sigmoid/identity. The softmax gate parks dg by position and
// softmax_bwd_kernel applies dscores[idx_i] = g_i (dg_i - sum_j g_j dg_j) with a block sum.
#include "../common/cuda_compat.h"
#include "../common/reduce.cuh"
#include "../pool/walk.cuh"
#include "topk.h"

namespace stq {
namespace {

constexpr int kRowThreads = 256;  // softmax statistics / backward: one block per batch row
constexpr int kBwdWarps = 8;      // backward: rows of x per block

__global__ void __launch_bounds__(kRowThreads)
    softmax_stats_kernel(const void* __restrict__ scores, DType sdt, int64_t ssb, const int64_t* __restrict__ idx,
                         int64_t sib, float* __restrict__ stats, int k) {
  __shared__ float scratch[33];
  const int64_t b = blockIdx.x;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < k; i += kRowThreads) m = fmaxf(m, load_as_float(scores, sdt, b * ssb + idx[b * sib + i]));
  m = block_reduce<float, true>(m, scratch);
  float l = 0.0f;
  for (int i = threadIdx.x; i < k; i += kRowThreads) l += expf(load_as_float(scores, sdt, b * ssb + idx[b * sib + i]) - m);
  l = block_reduce(l, scratch);
  if (threadIdx.x == 0) {
    stats[2 * b] = m;
    stats[2 * b + 1] = 1.0f / l;
  }
}

__global__ void __launch_bounds__(256)
    inverse_kernel(const int64_t* __restrict__ idx, int64_t sib, int32_t* __restrict__ pos, int N, int k, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int64_t b = e / k;
  const int i = e % k;
  pos[b * N + idx[b * sib + i]] = i;
}

template <typename T, int GATE, bool POOL>
__global__ void __launch_bounds__(32 * kBwdWarps)
    gather_gate_bwd_kernel(const T* __restrict__ grad, int64_t sgb, int64_t sgk, const T* __restrict__ x, int64_t sxb,
                           int64_t sxn, const void* __restrict__ scores, DType sdt, int64_t ssb,
                           const float* __restrict__ stats, const int32_t* __restrict__ pos, Scales sc,
                           T* __restrict__ dx, void* __restrict__ dscores, int64_t sdsb, float* __restrict__ dg_out,
                           int N, int k, int C, int n_row_blocks) {
  const int lane = threadIdx.x;
  const int n = blockIdx.x % n_row_blocks * kBwdWarps + threadIdx.y;
  const int64_t b = blockIdx.x / n_row_blocks;
  if (n >= N) return;  // the whole warp
  const int p = pos[b * N + n];
  const bool sel = p >= 0;
  const float g = GATE != kGateNone && sel ? gate_value<GATE>(load_as_float(scores, sdt, b * ssb + n), stats + 2 * b) : 1.0f;
  const T* gb = grad + b * sgb;
  const T* xn = x + b * sxb + n * sxn;
  T* dxn = dx + (b * N + n) * C;
  float dg = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float dy = 0.0f;
    if (sel) {
      if (POOL) {
#pragma unroll
        for (int q = 0; q < kMaxScales; ++q) {
          if (q < sc.n) {
            const int w = p / sc.s[q];
            dy += to_float(gb[(sc.off[q] + w) * sgk + c]) * window_inv(sc, q, w, k);
          }
        }
      } else {
        dy = to_float(gb[int64_t(p) * sgk + c]);
      }
      if (GATE != kGateNone) dg += dy * to_float(xn[c]);
    }
    dxn[c] = from_float<T>(dy * g);
  }
  if (GATE == kGateNone) return;
  dg = warp_sum(dg);
  if (lane != 0) return;
  if (GATE == kGateSigmoid) store_from_float(dscores, sdt, b * sdsb + n, sel ? dg * g * (1.0f - g) : 0.0f);
  if (GATE == kGateIdentity) store_from_float(dscores, sdt, b * sdsb + n, sel ? dg : 0.0f);
  if (GATE == kGateSoftmax) {
    if (sel)
      dg_out[b * k + p] = dg;
    else
      store_from_float(dscores, sdt, b * sdsb + n, 0.0f);
  }
}

__global__ void __launch_bounds__(kRowThreads)
    softmax_bwd_kernel(const void* __restrict__ scores, DType sdt, int64_t ssb, const int64_t* __restrict__ idx,
                       int64_t sib, const float* __restrict__ stats, const float* __restrict__ dg, void* dscores,
                       int64_t sdsb, int k) {
  __shared__ float scratch[33];
  const int64_t b = blockIdx.x;
  const float* st = stats + 2 * b;
  float acc = 0.0f;
  for (int i = threadIdx.x; i < k; i += kRowThreads)
    acc += gate_value<kGateSoftmax>(load_as_float(scores, sdt, b * ssb + idx[b * sib + i]), st) * dg[b * k + i];
  const float total = block_reduce(acc, scratch);
  for (int i = threadIdx.x; i < k; i += kRowThreads) {
    const int64_t n = idx[b * sib + i];
    const float g = gate_value<kGateSoftmax>(load_as_float(scores, sdt, b * ssb + n), st);
    store_from_float(dscores, sdt, b * sdsb + n, g * (dg[b * k + i] - total));
  }
}

template <typename T, int GATE>
int fwd(const void* x, int64_t sxb, int64_t sxn, const void* scores, DType sdt, int64_t ssb, const int64_t* idx,
        int64_t sib, const float* stats, void* out, int64_t sob, int64_t son, const Scales& sc, int B, int k, int C,
        void* stream) {
  int n_seg, n_c;
  const dim3 grid = walk_grid(sc, B, k, C, &n_seg, &n_c);
  return launch(pool_walk_kernel<T, true, GATE>, grid, dim3(32, kWalkWarps), 0, stream, static_cast<const T*>(x), sxb,
                sxn, scores, sdt, ssb, idx, sib, stats, static_cast<T*>(out), sob, son, sc, k, C, n_seg, n_c);
}

template <typename T>
int fwd_gate(int gate, const void* x, int64_t sxb, int64_t sxn, const void* scores, DType sdt, int64_t ssb,
             const int64_t* idx, int64_t sib, const float* stats, void* out, int64_t sob, int64_t son, const Scales& sc,
             int B, int k, int C, void* stream) {
  switch (gate) {
    case kGateNone: return fwd<T, kGateNone>(x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, out, sob, son, sc, B, k, C, stream);
    case kGateSigmoid: return fwd<T, kGateSigmoid>(x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, out, sob, son, sc, B, k, C, stream);
    case kGateSoftmax: return fwd<T, kGateSoftmax>(x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, out, sob, son, sc, B, k, C, stream);
    case kGateIdentity: return fwd<T, kGateIdentity>(x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, out, sob, son, sc, B, k, C, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T, int GATE, bool POOL>
int bwd(const void* grad, int64_t sgb, int64_t sgk, const void* x, int64_t sxb, int64_t sxn, const void* scores,
        DType sdt, int64_t ssb, const int64_t* idx, int64_t sib, const float* stats, const int32_t* pos,
        const Scales& sc, void* dx, void* dscores, int64_t sdsb, float* dg, int B, int N, int k, int C, void* stream) {
  const int n_rows = static_cast<int>(ceil_div(N, kBwdWarps));
  int err = launch(gather_gate_bwd_kernel<T, GATE, POOL>, dim3(static_cast<unsigned>(int64_t(n_rows) * B)),
                   dim3(32, kBwdWarps), 0, stream, static_cast<const T*>(grad), sgb, sgk, static_cast<const T*>(x),
                   sxb, sxn, scores, sdt, ssb, stats, pos, sc, static_cast<T*>(dx), dscores, sdsb, dg, N, k, C, n_rows);
  if (err != cudaSuccess || GATE != kGateSoftmax || k == 0) return err;
  return launch(softmax_bwd_kernel, dim3(B), dim3(kRowThreads), 0, stream, scores, sdt, ssb, idx, sib, stats, dg,
                dscores, sdsb, k);
}

template <typename T, bool POOL>
int bwd_gate(int gate, const void* grad, int64_t sgb, int64_t sgk, const void* x, int64_t sxb, int64_t sxn,
             const void* scores, DType sdt, int64_t ssb, const int64_t* idx, int64_t sib, const float* stats,
             const int32_t* pos, const Scales& sc, void* dx, void* dscores, int64_t sdsb, float* dg, int B, int N,
             int k, int C, void* stream) {
#define STQ_BWD(G) \
  bwd<T, G, POOL>(grad, sgb, sgk, x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, pos, sc, dx, dscores, sdsb, dg, B, N, k, C, stream)
  switch (gate) {
    case kGateNone: return STQ_BWD(kGateNone);
    case kGateSigmoid: return STQ_BWD(kGateSigmoid);
    case kGateSoftmax: return STQ_BWD(kGateSoftmax);
    case kGateIdentity: return STQ_BWD(kGateIdentity);
  }
#undef STQ_BWD
  return cudaErrorInvalidValue;
}

template <typename T>
int bwd_pool(bool pool, int gate, const void* grad, int64_t sgb, int64_t sgk, const void* x, int64_t sxb, int64_t sxn,
             const void* scores, DType sdt, int64_t ssb, const int64_t* idx, int64_t sib, const float* stats,
             const int32_t* pos, const Scales& sc, void* dx, void* dscores, int64_t sdsb, float* dg, int B, int N,
             int k, int C, void* stream) {
  return pool ? bwd_gate<T, true>(gate, grad, sgb, sgk, x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, pos, sc, dx,
                                  dscores, sdsb, dg, B, N, k, C, stream)
              : bwd_gate<T, false>(gate, grad, sgb, sgk, x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, pos, sc, dx,
                                   dscores, sdsb, dg, B, N, k, C, stream);
}

}  // namespace

int softmax_stats(DType sdt, const void* scores, int64_t ssb, const int64_t* idx, int64_t sib, float* stats, int B,
                  int k, void* stream) {
  return launch(softmax_stats_kernel, dim3(B), dim3(kRowThreads), 0, stream, scores, sdt, ssb, idx, sib, stats, k);
}

int gather_gate_fwd(DType xdt, int gate, const void* x, int64_t sxb, int64_t sxn, const void* scores, DType sdt,
                    int64_t ssb, const int64_t* idx, int64_t sib, const float* stats, void* out, int64_t sob,
                    int64_t son, const Scales& sc, int B, int k, int C, void* stream) {
  STQ_DTYPE_SWITCH(xdt, fwd_gate, gate, x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, out, sob, son, sc, B, k, C,
                   stream)
}

int topk_inverse(const int64_t* idx, int64_t sib, int32_t* pos, int B, int N, int k, void* stream) {
  const int64_t n = int64_t(B) * k;
  return launch(inverse_kernel, dim3(static_cast<unsigned>(ceil_div(n, 256))), dim3(256), 0, stream, idx, sib, pos, N,
                k, n);
}

int gather_gate_bwd(DType xdt, int gate, bool pool, const void* grad, int64_t sgb, int64_t sgk, const void* x,
                    int64_t sxb, int64_t sxn, const void* scores, DType sdt, int64_t ssb, const int64_t* idx,
                    int64_t sib, const float* stats, const int32_t* pos, const Scales& sc, void* dx, void* dscores,
                    int64_t sdsb, float* dg, int B, int N, int k, int C, void* stream) {
  STQ_DTYPE_SWITCH(xdt, bwd_pool, pool, gate, grad, sgb, sgk, x, sxb, sxn, scores, sdt, ssb, idx, sib, stats, pos, sc,
                   dx, dscores, sdsb, dg, B, N, k, C, stream)
}

}  // namespace stq
