// Launch plans and launchers of the attention kernels (attention.cuh): one instantiation per
// element type and head-width bucket BD in {64, 128, 256}.
#include <type_traits>

#include "attention.cuh"

namespace stq {
namespace attn {
namespace {

// f(std::integral_constant<int, BD>{}) for the head-width bucket BD of d.
template <typename F>
auto with_block_d(int d, F&& f) {
  if (d <= 64) return f(std::integral_constant<int, 64>{});
  if (d <= 128) return f(std::integral_constant<int, 128>{});
  return f(std::integral_constant<int, 256>{});
}

// Whole sequences per block: as many as fit the row tile, while the packed keys span at most two
// key tiles (the block-diagonal scores between packed sequences are wasted work).
int pack(int n_seq, int Nq, int Nk, int bm, int bn) {
  if (Nq > bm) return 1;
  const int by_keys = Nk > 0 ? 2 * bn / Nk : bm;
  const int spp = std::max(1, std::min(bm / std::max(Nq, 1), by_keys));
  return std::min(spp, std::max(n_seq, 1));
}

template <typename Tile>
Plan make_plan(int n_seq, int Nq, int Nk) {
  Plan pl;
  pl.spp = pack(n_seq, Nq, Nk, Tile::BM, Tile::BN);
  pl.n_qtiles = std::max(1, (int)ceil_div((int64_t)pl.spp * Nq, Tile::BM));
  pl.n_ktiles = std::max(1, (int)ceil_div((int64_t)pl.spp * Nk, Tile::BN));
  return pl;
}

// Grids are one-dimensional: blocks = groups of spp sequences x tiles.
template <typename K>
cudaError_t launch_tiles(K kernel, int n_tiles, const Params& p, void* stream) {
  const unsigned groups = ceil_div(p.n_seq, p.spp);
  return launch(kernel, dim3(groups * n_tiles), dim3(kThreads), 0, stream, p);
}

template <typename T>
cudaError_t fwd(const Params& p, void* stream) {
  return with_block_d(p.d, [&](auto bd) {
    return launch_tiles(attn_fwd_kernel<T, decltype(bd)::value>, p.n_qtiles, p, stream);
  });
}

template <typename T>
cudaError_t bwd(const Params& p, void* stream) {
  return with_block_d(p.d, [&](auto bd) {
    constexpr int BD = decltype(bd)::value;
    const cudaError_t err = launch_tiles(attn_bwd_dq_kernel<T, BD>, p.n_qtiles, p, stream);
    if (err != cudaSuccess) return err;
    return launch_tiles(attn_bwd_dkdv_kernel<T, BD>, p.n_ktiles, p, stream);
  });
}

}  // namespace

Plan plan_fwd(int n_seq, int Nq, int Nk, int d) {
  return with_block_d(d, [&](auto bd) { return make_plan<FwdTile<decltype(bd)::value>>(n_seq, Nq, Nk); });
}

Plan plan_bwd(int n_seq, int Nq, int Nk, int d) {
  return with_block_d(d, [&](auto bd) { return make_plan<BwdTile<decltype(bd)::value>>(n_seq, Nq, Nk); });
}

int attention_fwd(const Params& p, DType dtype, void* stream) { STQ_DTYPE_SWITCH(dtype, fwd, p, stream) }

int attention_bwd(const Params& p, DType dtype, void* stream) { STQ_DTYPE_SWITCH(dtype, bwd, p, stream) }

}  // namespace attn
}  // namespace stq
