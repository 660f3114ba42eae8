// Launch plans and launchers of the attention kernels (attention.cuh): one instantiation per
// element type and head-width bucket BD in {64, 128, 256}.
#include "attention.cuh"

namespace stq {
namespace attn {
namespace {

// Whole sequences per block: as many as fit the row tile, while the packed keys span at most two
// key tiles (the block-diagonal scores between packed sequences are wasted work).
int pack(int n_seq, int Nq, int Nk, int bm, int bn) {
  if (Nq > bm) return 1;
  const int by_keys = Nk > 0 ? 2 * bn / Nk : bm;
  const int spp = std::max(1, std::min(bm / std::max(Nq, 1), by_keys));
  return std::min(spp, std::max(n_seq, 1));
}

Plan make_plan(int n_seq, int Nq, int Nk, int bm, int bn) {
  Plan pl;
  pl.spp = pack(n_seq, Nq, Nk, bm, bn);
  pl.n_qtiles = std::max(1, (int)ceil_div((int64_t)pl.spp * Nq, bm));
  pl.n_ktiles = std::max(1, (int)ceil_div((int64_t)pl.spp * Nk, bn));
  return pl;
}

template <int BD>
Plan fwd_plan(int n_seq, int Nq, int Nk) {
  return make_plan(n_seq, Nq, Nk, FwdTile<BD>::BM, FwdTile<BD>::BN);
}
template <int BD>
Plan bwd_plan(int n_seq, int Nq, int Nk) {
  return make_plan(n_seq, Nq, Nk, BwdTile<BD>::BM, BwdTile<BD>::BN);
}

// Grids are one-dimensional: blocks = groups of spp sequences x tiles.
template <typename T, int BD>
cudaError_t fwd(const Params& p, void* stream) {
  const unsigned groups = ceil_div(p.n_seq, p.spp);
  return launch(attn_fwd_kernel<T, BD>, dim3(groups * p.n_qtiles), dim3(kThreads), 0, stream, p);
}

template <typename T, int BD>
cudaError_t bwd(const Params& p, void* stream) {
  const unsigned groups = ceil_div(p.n_seq, p.spp);
  const cudaError_t err = launch(attn_bwd_dq_kernel<T, BD>, dim3(groups * p.n_qtiles), dim3(kThreads), 0, stream, p);
  if (err != cudaSuccess) return err;
  return launch(attn_bwd_dkdv_kernel<T, BD>, dim3(groups * p.n_ktiles), dim3(kThreads), 0, stream, p);
}

template <typename T>
cudaError_t fwd_any(const Params& p, void* stream) {
  switch (block_d(p.d)) {
    case 64: return fwd<T, 64>(p, stream);
    case 128: return fwd<T, 128>(p, stream);
    default: return fwd<T, 256>(p, stream);
  }
}

template <typename T>
cudaError_t bwd_any(const Params& p, void* stream) {
  switch (block_d(p.d)) {
    case 64: return bwd<T, 64>(p, stream);
    case 128: return bwd<T, 128>(p, stream);
    default: return bwd<T, 256>(p, stream);
  }
}

}  // namespace

Plan plan_fwd(int n_seq, int Nq, int Nk, int d) {
  switch (block_d(d)) {
    case 64: return fwd_plan<64>(n_seq, Nq, Nk);
    case 128: return fwd_plan<128>(n_seq, Nq, Nk);
    default: return fwd_plan<256>(n_seq, Nq, Nk);
  }
}

Plan plan_bwd(int n_seq, int Nq, int Nk, int d) {
  switch (block_d(d)) {
    case 64: return bwd_plan<64>(n_seq, Nq, Nk);
    case 128: return bwd_plan<128>(n_seq, Nq, Nk);
    default: return bwd_plan<256>(n_seq, Nq, Nk);
  }
}

int attention_fwd(const Params& p, DType dtype, void* stream) { STQ_DTYPE_SWITCH(dtype, fwd_any, p, stream) }

int attention_bwd(const Params& p, DType dtype, void* stream) { STQ_DTYPE_SWITCH(dtype, bwd_any, p, stream) }

}  // namespace attn
}  // namespace stq
