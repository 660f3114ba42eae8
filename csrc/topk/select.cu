// Top-k selection by radix select (LinVT score-based selection; docs/ops.md §2.4). Not a sort.
//
// Scores become order-preserving uint32 keys. Four passes of 8-bit digits, most significant first,
// pin down T, the k-th largest key: per pass, each chunk of kSelectChunk scores histograms the
// digit of the keys that match the prefix fixed so far (shared-memory integer atomics, then one
// global integer atomic per bin: exact, so deterministic), and radix_pick_kernel finds the digit
// where the count of keys >= it reaches the k still wanted. Then every chunk counts its keys > T
// and == T; the write pass places a selected key at (#keys > T before it) + min(#keys == T before
// it, k_eq) (k_eq: how many keys equal to T the top k keeps, the lowest-index ones), which is the
// ascending-index order. order="score" ranks the k selected by (key desc, index asc) by counting.
#include "../common/cuda_compat.h"
#include "../common/reduce.cuh"
#include "topk.h"

namespace stq {
namespace {

// float -> uint32 with a > b <=> key(a) > key(b); -0.0 and +0.0 map to the same key.
__device__ __forceinline__ uint32_t order_key(float s) {
  const uint32_t bits = __float_as_uint(s == 0.0f ? 0.0f : s);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// Keys of this thread's items: element chunk * kSelectChunk + j * kSelectThreads + threadIdx.x
// (coalesced). Out-of-range items get `valid` cleared.
template <typename T>
__device__ __forceinline__ void load_keys(const T* row, int N, int chunk, uint32_t (&key)[kSelectItems],
                                          bool (&valid)[kSelectItems]) {
#pragma unroll
  for (int j = 0; j < kSelectItems; ++j) {
    const int i = chunk * kSelectChunk + j * kSelectThreads + threadIdx.x;
    valid[j] = i < N;
    key[j] = valid[j] ? order_key(to_float(row[i])) : 0u;
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    radix_hist_kernel(const T* __restrict__ scores, int64_t ssb, const int32_t* __restrict__ state,
                      int32_t* __restrict__ hist, int N, int n_chunks, int pass) {
  __shared__ int32_t bins[kRadixBins];
  const int chunk = blockIdx.x % n_chunks;
  const int64_t b = blockIdx.x / n_chunks;
  const uint32_t prefix = pass == 0 ? 0u : static_cast<uint32_t>(state[2 * b]);
  for (int d = threadIdx.x; d < kRadixBins; d += kSelectThreads) bins[d] = 0;
  __syncthreads();
  uint32_t key[kSelectItems];
  bool valid[kSelectItems];
  load_keys(scores + b * ssb, N, chunk, key, valid);
  const int shift = 32 - kRadixBits * (pass + 1);
#pragma unroll
  for (int j = 0; j < kSelectItems; ++j) {
    // two shifts: one shift by 32 (pass 0) is undefined
    const bool match = valid[j] && (((key[j] ^ prefix) >> (shift + kRadixBits - 1)) >> 1) == 0;
    if (match) atomicAdd(&bins[(key[j] >> shift) & (kRadixBins - 1)], 1);
  }
  __syncthreads();
  int32_t* h = hist + (b * kRadixPasses + pass) * kRadixBins;
  for (int d = threadIdx.x; d < kRadixBins; d += kSelectThreads)
    if (bins[d] > 0) atomicAdd(&h[d], bins[d]);
}

// state[b] = (prefix, k_rem): the top bits of the k-th largest key fixed by passes 0..pass, and how
// many keys sharing them still belong to the top k. One block of kRadixBins threads per row.
__global__ void __launch_bounds__(kRadixBins)
    radix_pick_kernel(const int32_t* __restrict__ hist, int32_t* __restrict__ state, int k, int pass) {
  __shared__ int32_t scratch[33];
  const int64_t b = blockIdx.x;
  const uint32_t prefix = pass == 0 ? 0u : static_cast<uint32_t>(state[2 * b]);
  const int32_t k_rem = pass == 0 ? k : state[2 * b + 1];
  // Thread t holds digit d = 255 - t, so the exclusive scan is the count of keys with digit > d.
  const int d = kRadixBins - 1 - threadIdx.x;
  const int32_t h = hist[(b * kRadixPasses + pass) * kRadixBins + d];
  int32_t total;
  const int32_t above = block_exclusive_scan(h, &total, scratch);  // its barriers order the reads above
  if (above < k_rem && above + h >= k_rem) {
    state[2 * b] = static_cast<int32_t>(prefix | (static_cast<uint32_t>(d) << (32 - kRadixBits * (pass + 1))));
    state[2 * b + 1] = k_rem - above;
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_count_kernel(const T* __restrict__ scores, int64_t ssb, const int32_t* __restrict__ state,
                        int32_t* __restrict__ counts, int N, int n_chunks) {
  __shared__ int64_t scratch[33];
  const int chunk = blockIdx.x % n_chunks;
  const int64_t b = blockIdx.x / n_chunks;
  const uint32_t thr = static_cast<uint32_t>(state[2 * b]);
  uint32_t key[kSelectItems];
  bool valid[kSelectItems];
  load_keys(scores + b * ssb, N, chunk, key, valid);
  int64_t packed = 0;  // (#keys > T) << 32 | #keys == T
#pragma unroll
  for (int j = 0; j < kSelectItems; ++j) {
    if (valid[j] && key[j] > thr) packed += int64_t(1) << 32;
    if (valid[j] && key[j] == thr) packed += 1;
  }
  packed = block_reduce(packed, scratch);
  if (threadIdx.x == 0) {
    counts[(b * n_chunks + chunk) * 2] = static_cast<int32_t>(packed >> 32);
    counts[(b * n_chunks + chunk) * 2 + 1] = static_cast<int32_t>(packed & 0xffffffff);
  }
}

template <typename T>
__global__ void __launch_bounds__(kSelectThreads)
    select_write_kernel(const T* __restrict__ scores, int64_t ssb, const int32_t* __restrict__ state,
                        const int32_t* __restrict__ counts, int64_t* __restrict__ idx, int64_t sib, int N,
                        int n_chunks) {
  __shared__ int64_t scratch64[33];
  __shared__ int32_t scratch32[33];
  const int chunk = blockIdx.x % n_chunks;
  const int64_t b = blockIdx.x / n_chunks;
  const uint32_t thr = static_cast<uint32_t>(state[2 * b]);
  const int32_t k_eq = state[2 * b + 1];
  // (#keys > T, #keys == T) in the chunks before this one
  int64_t before = 0;
  for (int c = threadIdx.x; c < chunk; c += kSelectThreads)
    before += (int64_t(counts[(b * n_chunks + c) * 2]) << 32) + counts[(b * n_chunks + c) * 2 + 1];
  before = block_reduce(before, scratch64);
  // This thread's kSelectItems consecutive items, so a block scan gives the order within the chunk.
  const T* row = scores + b * ssb;
  const int i0 = chunk * kSelectChunk + threadIdx.x * kSelectItems;
  uint32_t key[kSelectItems];
  int32_t mine = 0;  // #keys > T << 16 | #keys == T, among this thread's items (<= 8 each)
#pragma unroll
  for (int j = 0; j < kSelectItems; ++j) {
    key[j] = i0 + j < N ? order_key(to_float(row[i0 + j])) : 0u;
    if (i0 + j < N) mine += key[j] > thr ? (1 << 16) : key[j] == thr ? 1 : 0;
  }
  int32_t chunk_total;
  const int32_t prior = block_exclusive_scan(mine, &chunk_total, scratch32);
  int64_t gt = (before >> 32) + (prior >> 16), eq = (before & 0xffffffff) + (prior & 0xffff);
  int64_t* out = idx + b * sib;
#pragma unroll
  for (int j = 0; j < kSelectItems; ++j) {
    if (i0 + j >= N) break;
    if (key[j] > thr) {
      out[gt + min(eq, int64_t(k_eq))] = i0 + j;
      ++gt;
    } else if (key[j] == thr) {
      if (eq < k_eq) out[gt + eq] = i0 + j;
      ++eq;
    }
  }
}

// rank_i = #{j : key_j > key_i, or key_j == key_i and j < i}; idx[b, rank_i] = time_idx[b, i].
template <typename T>
__global__ void __launch_bounds__(256)
    score_rank_kernel(const T* __restrict__ scores, int64_t ssb, const int64_t* __restrict__ time_idx,
                      int64_t* __restrict__ idx, int64_t sib, int k, int n_i_blocks) {
  __shared__ uint32_t tile[256];
  const int i = blockIdx.x % n_i_blocks * 256 + threadIdx.x;
  const int64_t b = blockIdx.x / n_i_blocks;
  const T* row = scores + b * ssb;
  const int64_t* t_row = time_idx + b * k;
  const int64_t my_idx = i < k ? t_row[i] : 0;
  const uint32_t my_key = order_key(to_float(row[my_idx]));
  int rank = 0;
  for (int j0 = 0; j0 < k; j0 += 256) {
    const int j = j0 + static_cast<int>(threadIdx.x);
    if (j < k) tile[threadIdx.x] = order_key(to_float(row[t_row[j]]));
    __syncthreads();
    const int n = min(256, k - j0);
    for (int jj = 0; jj < n; ++jj) {
      const uint32_t kj = tile[jj];
      rank += kj > my_key || (kj == my_key && j0 + jj < i);
    }
    __syncthreads();
  }
  if (i < k) idx[b * sib + rank] = my_idx;
}

template <typename T>
int select_time(const void* scores, int64_t ssb, int B, int N, int k, int32_t* hist, int32_t* state, int32_t* counts,
                int64_t* idx, int64_t sib, void* stream) {
  const T* s = static_cast<const T*>(scores);
  const int n_chunks = select_chunks(N);
  const dim3 grid(static_cast<unsigned>(int64_t(n_chunks) * B));
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    int err = launch(radix_hist_kernel<T>, grid, dim3(kSelectThreads), 0, stream, s, ssb, state, hist, N, n_chunks, pass);
    if (err == cudaSuccess) err = launch(radix_pick_kernel, dim3(B), dim3(kRadixBins), 0, stream, hist, state, k, pass);
    if (err != cudaSuccess) return err;
  }
  int err = launch(select_count_kernel<T>, grid, dim3(kSelectThreads), 0, stream, s, ssb, state, counts, N, n_chunks);
  if (err != cudaSuccess) return err;
  return launch(select_write_kernel<T>, grid, dim3(kSelectThreads), 0, stream, s, ssb, state, counts, idx, sib, N,
                n_chunks);
}

template <typename T>
int rank_by_score(const void* scores, int64_t ssb, const int64_t* time_idx, int64_t* idx, int64_t sib, int B, int k,
                  void* stream) {
  const int n_i = static_cast<int>(ceil_div(k, 256));
  return launch(score_rank_kernel<T>, dim3(static_cast<unsigned>(int64_t(n_i) * B)), dim3(256), 0, stream,
                static_cast<const T*>(scores), ssb, time_idx, idx, sib, k, n_i);
}

}  // namespace

int topk_select_time(DType sdt, const void* scores, int64_t ssb, int B, int N, int k, int32_t* hist, int32_t* state,
                     int32_t* counts, int64_t* idx, int64_t sib, void* stream) {
  STQ_DTYPE_SWITCH(sdt, select_time, scores, ssb, B, N, k, hist, state, counts, idx, sib, stream)
}

int topk_rank_by_score(DType sdt, const void* scores, int64_t ssb, const int64_t* time_idx, int64_t* idx, int64_t sib,
                       int B, int k, void* stream) {
  STQ_DTYPE_SWITCH(sdt, rank_by_score, scores, ssb, time_idx, idx, sib, B, k, stream)
}

}  // namespace stq
