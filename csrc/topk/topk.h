// Launchers of the top-k selection (select.cu) and the fused gather + gate (+ multi-scale pooling)
// (gather.cu): raw pointers, strides in elements. Each returns a cudaError_t.
#pragma once
#include <cstdint>

#include "../common/dtype.h"
#include "../pool/pool.h"

namespace stq {

constexpr int kRadixBits = 8, kRadixBins = 1 << kRadixBits, kRadixPasses = 32 / kRadixBits;
constexpr int kSelectThreads = 256, kSelectItems = 8, kSelectChunk = kSelectThreads * kSelectItems;
constexpr int kRankMaxK = 8192;  // order="score" by the O(k^2) rank kernel up to here

inline int select_chunks(int N) { return (N + kSelectChunk - 1) / kSelectChunk; }

// idx [B, k] (row stride sib): the k largest scores [B, N] per row, ascending index; ties to the
// lower index. Workspaces: hist int32 [B, kRadixPasses, kRadixBins] zeroed, state int32 [B, 2],
// counts int32 [B, select_chunks(N), 2].
int topk_select_time(DType sdt, const void* scores, int64_t ssb, int B, int N, int k, int32_t* hist, int32_t* state,
                     int32_t* counts, int64_t* idx, int64_t sib, void* stream);
// idx [B, k] ordered by (score desc, index asc) from the time-ordered time_idx [B, k] (contiguous);
// k <= kRankMaxK.
int topk_rank_by_score(DType sdt, const void* scores, int64_t ssb, const int64_t* time_idx, int64_t* idx, int64_t sib,
                       int B, int k, void* stream);

// stats float32 [B, 2] = (max, 1 / sum exp(s - max)) over the selected scores[b, idx[b, :]].
int softmax_stats(DType sdt, const void* scores, int64_t ssb, const int64_t* idx, int64_t sib, float* stats, int B,
                  int k, void* stream);
// out[b, off_s + w] = window means of y[b, i] = x[b, idx[b, i]] * g(scores[b, idx[b, i]]) (csrc/pool/walk.cuh);
// gate: 0 none, 1 sigmoid, 2 softmax (stats from softmax_stats), 3 identity.
int gather_gate_fwd(DType xdt, int gate, const void* x, int64_t sxb, int64_t sxn, const void* scores, DType sdt,
                    int64_t ssb, const int64_t* idx, int64_t sib, const float* stats, void* out, int64_t sob,
                    int64_t son, const Scales& sc, int B, int k, int C, void* stream);
// pos int32 [B, N] (filled with -1 by the caller): pos[b, idx[b, i]] = i.
int topk_inverse(const int64_t* idx, int64_t sib, int32_t* pos, int B, int N, int k, void* stream);
// dx [B, N, C] (contiguous; zero off the selected rows) and dscores [B, N] (row stride sdsb, scores'
// dtype; none when gate == 0) from grad [B, rows, C] (pooled when pool, else [B, k, C]).
// dg: float32 [B, k] workspace (softmax only).
int gather_gate_bwd(DType xdt, int gate, bool pool, const void* grad, int64_t sgb, int64_t sgk, const void* x,
                    int64_t sxb, int64_t sxn, const void* scores, DType sdt, int64_t ssb, const int64_t* idx,
                    int64_t sib, const float* stats, const int32_t* pos, const Scales& sc, void* dx, void* dscores,
                    int64_t sdsb, float* dg, int B, int N, int k, int C, void* stream);

}  // namespace stq
