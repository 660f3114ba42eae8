// Host interface of the CUDA attention kernels (no torch): the launch parameters and launchers.
//
// Every attention sequence is a triple (b, l, h) numbered seq = (b * L + l) * H + h; row n of
// tensor X in it lives at  X + b * s.b + l * s.l + h * s.h + n * s.n  (elements):
//   spatial  [G, N, H, d]:   s = (stride 0, 0, stride 2, stride 1), L = 1;
//   temporal [B*T, L, H, d]: s = (T * stride 0, stride 1, stride 2, stride 0)
// so the BT x L <-> BL x T swap is only an addressing choice. stats/delta/coef are float32
// [*, *, *, P] with the same (b, l, h, n) strides and contiguous P.
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "attn_math.h"

namespace stq {
namespace attn {

struct Strides {
  int64_t b, l, h, n;
};

struct Params {
  const void *q, *k, *v;
  const void *out, *dout;  // backward only
  void* o;                 // forward output
  void *dq, *dk, *dv;      // backward outputs
  float* stats;            // [.., P] softmax statistics (forward writes, backward reads)
  float* delta;            // [.., P] backward workspace (dq kernel writes, dkdv kernel reads)
  float* coef;             // [.., P] MIX: the backward's alpha_j / l_j, a workspace like delta
  float* dalpha;           // [n_qtiles, n_seq, n_masks] partial sums (backward, routed modes)
  const float* alpha;      // float32, strides sa
  const bool* kpad;        // key_padding [G, Nk]
  const int64_t* flen;     // frame_lengths [B]
  Strides sq, sk, sv, so, sdo, sdq, sdk, sdv, ss;
  int64_t sa_b, sa_l, sa_h, sa_p, skp_b, skp_n;
  int n_seq, L, H, Nq, Nk, d, P;
  float qk_scale;  // softmax scale * log2(e)
  float scale;     // softmax scale
  int mode;
  MaskSpec masks;
  // Set by plan(): whole sequences per block and row / key tiles per group of them.
  int spp, n_qtiles, n_ktiles;
};

// The launch geometry of one call: spp whole sequences per block, n_qtiles query tiles and
// n_ktiles key tiles per group of spp sequences. The caller sizes the dalpha partials
// [n_qtiles, n_seq, P] of the backward plan.
struct Plan {
  int spp, n_qtiles, n_ktiles;
};
Plan plan_fwd(int n_seq, int Nq, int Nk, int d);
Plan plan_bwd(int n_seq, int Nq, int Nk, int d);

// Launchers: 0 on success, else the CUDA error code. p.spp/n_qtiles/n_ktiles from the plan.
int attention_fwd(const Params& p, DType dtype, void* stream);
int attention_bwd(const Params& p, DType dtype, void* stream);

}  // namespace attn
}  // namespace stq
