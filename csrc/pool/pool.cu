// Pooling kernels: RED-VILLM's st_pool and LinVT's multi-scale pooling (docs/ops.md §2.5), deterministic:
// every sum runs in a fixed order, no float atomics.
//
// st_pool forward: a block owns (b, a tile of kStPatches patches, 32 channels) and walks the T
// frames once. Thread (lane, row) holds the spatial sums of patches row, row + 8, ... of the tile
// in registers; per frame the 8 rows' partial sums over their patches meet in shared memory
// (double-buffered: one barrier per frame) and row 0 adds them in row order. With one patch tile
// that is the temporal sum; with several, the tile's sums go to a float32 [B, n_tiles, T, C]
// workspace (2 / kStPatches of x's element count) that st_reduce_kernel adds in tile order.
#include "../common/cuda_compat.h"
#include "pool.h"
#include "walk.cuh"

namespace stq {
namespace {

constexpr int kStRows = 8, kStPerThread = 4, kStPatches = kStRows * kStPerThread;

template <typename T>
__global__ void __launch_bounds__(32 * kStRows)
    st_pool_fwd_kernel(const T* __restrict__ x, int64_t sxb, int64_t sxt, int64_t sxp, T* __restrict__ temporal,
                       T* __restrict__ spatial, float* __restrict__ partial, int T_, int P, int C, int n_p_tiles,
                       int n_c_blocks) {
  __shared__ float frame_sum[2][kStRows][32];
  const int lane = threadIdx.x, row = threadIdx.y;
  const int c_block = blockIdx.x % n_c_blocks, p_tile = blockIdx.x / n_c_blocks % n_p_tiles;
  const int64_t b = blockIdx.x / (int64_t(n_c_blocks) * n_p_tiles);
  const int c = c_block * 32 + lane, p0 = p_tile * kStPatches + row;
  const bool c_ok = c < C;
  const T* xb = x + b * sxb + c;
  float spat[kStPerThread];
#pragma unroll
  for (int i = 0; i < kStPerThread; ++i) spat[i] = 0.0f;
  for (int t = 0; t < T_; ++t) {
    float part = 0.0f;
#pragma unroll
    for (int i = 0; i < kStPerThread; ++i) {
      const int p = p0 + i * kStRows;
      if (c_ok && p < P) {
        const float v = to_float(xb[t * sxt + p * sxp]);
        spat[i] += v;
        part += v;
      }
    }
    // Buffer t & 1 is written again at frame t + 2, after the barrier of frame t + 1, which row 0
    // reaches only after reading it below.
    frame_sum[t & 1][row][lane] = part;
    __syncthreads();
    if (row == 0 && c_ok) {
      float sum = 0.0f;
#pragma unroll
      for (int r = 0; r < kStRows; ++r) sum += frame_sum[t & 1][r][lane];
      if (n_p_tiles == 1)
        temporal[(b * T_ + t) * C + c] = from_float<T>(sum / float(P));
      else
        partial[((b * n_p_tiles + p_tile) * T_ + t) * C + c] = sum;
    }
  }
#pragma unroll
  for (int i = 0; i < kStPerThread; ++i) {
    const int p = p0 + i * kStRows;
    if (c_ok && p < P) spatial[(b * P + p) * C + c] = from_float<T>(spat[i] / float(T_));
  }
}

// temporal[b, t, c] = sum over tiles of partial[b, tile, t, c] (in tile order) / P.
template <typename T>
__global__ void __launch_bounds__(256)
    st_reduce_kernel(const float* __restrict__ partial, T* __restrict__ temporal, int T_, int P, int C,
                     int n_p_tiles, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t b = i / (int64_t(T_) * C), tc = i % (int64_t(T_) * C);
  const float* src = partial + b * n_p_tiles * int64_t(T_) * C + tc;
  float sum = 0.0f;
  for (int j = 0; j < n_p_tiles; ++j) sum += src[j * int64_t(T_) * C];
  temporal[i] = from_float<T>(sum / float(P));
}

template <typename T>
__global__ void __launch_bounds__(256)
    st_pool_bwd_kernel(const T* __restrict__ gt, int64_t sgt_b, int64_t sgt_t, const T* __restrict__ gs,
                       int64_t sgs_b, int64_t sgs_p, T* __restrict__ dx, int T_, int P, int C, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = i % C, p = i / C % P;
    const int64_t bt = i / (int64_t(P) * C), b = bt / T_, t = bt % T_;
    dx[i] = from_float<T>(to_float(gt[b * sgt_b + t * sgt_t + c]) / float(P) +
                          to_float(gs[b * sgs_b + p * sgs_p + c]) / float(T_));
  }
}

// dy[b, i, c] = sum_q grad[b, off_q + i / s_q, c] * (1 / |window|), one thread per element.
template <typename T>
__global__ void __launch_bounds__(256)
    multiscale_bwd_kernel(const T* __restrict__ grad, int64_t sgb, int64_t sgn, T* __restrict__ dy, int64_t sdb,
                          int64_t sdk, Scales sc, int k, int C, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int c = e % C, i = e / C % k;
  const int64_t b = e / (int64_t(k) * C);
  float sum = 0.0f;
#pragma unroll
  for (int q = 0; q < kMaxScales; ++q) {
    if (q < sc.n) {
      const int w = i / sc.s[q];
      sum += to_float(grad[b * sgb + (sc.off[q] + w) * sgn + c]) * window_inv(sc, q, w, k);
    }
  }
  dy[b * sdb + i * sdk + c] = from_float<T>(sum);
}

int p_tiles(int P) { return static_cast<int>(ceil_div(P, kStPatches)); }

template <typename T>
int st_fwd(const void* x, int64_t sxb, int64_t sxt, int64_t sxp, void* temporal, void* spatial, float* partial,
           int B, int T_, int P, int C, void* stream) {
  const int n_p = p_tiles(P), n_c = static_cast<int>(ceil_div(C, 32));
  int err = launch(st_pool_fwd_kernel<T>, dim3(static_cast<unsigned>(int64_t(n_c) * n_p * B)), dim3(32, kStRows), 0,
                   stream, static_cast<const T*>(x), sxb, sxt, sxp, static_cast<T*>(temporal),
                   static_cast<T*>(spatial), partial, T_, P, C, n_p, n_c);
  if (err != cudaSuccess || n_p == 1) return err;
  const int64_t n = int64_t(B) * T_ * C;
  return launch(st_reduce_kernel<T>, dim3(static_cast<unsigned>(ceil_div(n, 256))), dim3(256), 0, stream, partial,
                static_cast<T*>(temporal), T_, P, C, n_p, n);
}

template <typename T>
int st_bwd(const void* gt, int64_t sgt_b, int64_t sgt_t, const void* gs, int64_t sgs_b, int64_t sgs_p, void* dx,
           int B, int T_, int P, int C, void* stream) {
  const int64_t n = int64_t(B) * T_ * P * C;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, 256), 1 << 20);  // grid-stride beyond
  return launch(st_pool_bwd_kernel<T>, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream,
                static_cast<const T*>(gt), sgt_b, sgt_t, static_cast<const T*>(gs), sgs_b, sgs_p,
                static_cast<T*>(dx), T_, P, C, n);
}

template <typename T>
int ms_fwd(const void* y, int64_t syb, int64_t syk, void* out, int64_t sob, int64_t son, const Scales& sc, int B,
           int k, int C, void* stream) {
  int n_seg, n_c;
  const dim3 grid = walk_grid(sc, B, k, C, &n_seg, &n_c);
  return launch(pool_walk_kernel<T, false, kGateNone>, grid, dim3(32, kWalkWarps), 0, stream,
                static_cast<const T*>(y), syb, syk, nullptr, DType::kFloat32, int64_t(0), nullptr, int64_t(0),
                nullptr, static_cast<T*>(out), sob, son, sc, k, C, n_seg, n_c);
}

template <typename T>
int ms_bwd(const void* grad, int64_t sgb, int64_t sgn, void* dy, int64_t sdb, int64_t sdk, const Scales& sc, int B,
           int k, int C, void* stream) {
  const int64_t n = int64_t(B) * k * C;
  return launch(multiscale_bwd_kernel<T>, dim3(static_cast<unsigned>(ceil_div(n, 256))), dim3(256), 0, stream,
                static_cast<const T*>(grad), sgb, sgn, static_cast<T*>(dy), sdb, sdk, sc, k, C, n);
}

}  // namespace

int64_t st_pool_partial_size(int B, int T, int P, int C) {
  const int n_p = p_tiles(P);
  return n_p == 1 ? 0 : int64_t(B) * n_p * T * C;
}

int st_pool_fwd(DType dt, const void* x, int64_t sxb, int64_t sxt, int64_t sxp, void* temporal, void* spatial,
                float* partial, int B, int T, int P, int C, void* stream) {
  STQ_DTYPE_SWITCH(dt, st_fwd, x, sxb, sxt, sxp, temporal, spatial, partial, B, T, P, C, stream)
}

int st_pool_bwd(DType dt, const void* gt, int64_t sgt_b, int64_t sgt_t, const void* gs, int64_t sgs_b,
                int64_t sgs_p, void* dx, int B, int T, int P, int C, void* stream) {
  STQ_DTYPE_SWITCH(dt, st_bwd, gt, sgt_b, sgt_t, gs, sgs_b, sgs_p, dx, B, T, P, C, stream)
}

int multiscale_pool_fwd(DType dt, const void* y, int64_t syb, int64_t syk, void* out, int64_t sob, int64_t son,
                        const Scales& sc, int B, int k, int C, void* stream) {
  STQ_DTYPE_SWITCH(dt, ms_fwd, y, syb, syk, out, sob, son, sc, B, k, C, stream)
}

int multiscale_pool_bwd(DType dt, const void* grad, int64_t sgb, int64_t sgn, void* dy, int64_t sdb, int64_t sdk,
                        const Scales& sc, int B, int k, int C, void* stream) {
  STQ_DTYPE_SWITCH(dt, ms_bwd, grad, sgb, sgn, dy, sdb, sdk, sc, B, k, C, stream)
}

}  // namespace stq
