// ThreadSanitizer cases of the attention kernels (csrc/attention): forward, dq and dk/dv, each
// launch on 1-4 blocks, covering packed sequences, looping key / query tiles, the three modes and
// every mask kind. float32 data: the kernels' synchronisation does not depend on the dtype.
#include <memory>

#include "attention/attention.h"
#include "tsan_cases.h"

namespace {

namespace attn = stq::attn;

struct Shape {
  int frames;  // 0: spatial [G, N, H, d]; else temporal [B*T, L, H, d] with T = frames
  int G, Nq, Nk, L, H, d;
};

// (b, l, h, n) strides of a contiguous [rows, N, H, width] tensor (spatial) / [B*T, L, H, width].
attn::Strides strides(const Shape& s, int N, int width) {
  if (s.frames) {
    const int64_t row = int64_t(s.L) * s.H * width;
    return {s.frames * row, int64_t(s.H) * width, width, row};
  }
  return {int64_t(N) * s.H * width, 0, width, int64_t(s.H) * width};
}

int run(const Shape& s, int mode, std::vector<int> kinds, std::vector<int> radii, int g_start, int g_end,
        bool key_padding, bool frame_lengths) {
  const int B = s.G;  // groups (spatial) or videos (temporal)
  const int rows_q = s.frames ? B * s.frames * s.L : B * s.Nq;
  const int rows_k = s.frames ? rows_q : B * s.Nk;
  const int n_seq = B * s.L * s.H, n = mode == attn::kModeNone ? 0 : int(kinds.size());
  const int P = mode == attn::kModeMix ? n : 1;
  const size_t nq = size_t(rows_q) * s.H * s.d, nk = size_t(rows_k) * s.H * s.d;
  auto q = stq_tsan::randn(nq, 1), k = stq_tsan::randn(nk, 2), v = stq_tsan::randn(nk, 3);
  auto dout = stq_tsan::randn(nq, 4);
  std::vector<float> out(nq), dq(nq), dk(nk), dv(nk), stats(size_t(rows_q) * s.H * P), delta(stats.size()),
      coef(stats.size());
  std::vector<float> alpha(size_t(n_seq) * (n ? n : 1), 0.5f);
  std::unique_ptr<bool[]> dense(new bool[size_t(n) * s.Nq * s.Nk + 1]);
  for (size_t i = 0; i < size_t(n) * s.Nq * s.Nk; ++i) dense[i] = (i * 7919) % 5 < 2;
  std::unique_ptr<bool[]> kpad(new bool[size_t(B) * s.Nk]);
  for (int i = 0; i < B * s.Nk; ++i) kpad[i] = i % 4 == 3;
  std::vector<int64_t> flen(B);
  for (int b = 0; b < B; ++b) flen[b] = b % 2 ? 0 : s.frames - 1;

  attn::Params p{};
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.dout = dout.data(), p.o = out.data();
  p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data(), p.stats = stats.data(), p.delta = delta.data();
  p.coef = coef.data();
  p.alpha = alpha.data();
  p.kpad = key_padding ? kpad.get() : nullptr;
  p.flen = frame_lengths ? flen.data() : nullptr;
  p.sq = p.so = p.sdo = p.sdq = strides(s, s.Nq, s.d);
  p.sk = p.sv = p.sdk = p.sdv = strides(s, s.Nk, s.d);
  p.ss = strides(s, s.Nq, P);
  // alpha [n_seq, p]: (b, l, h) -> seq
  p.sa_b = int64_t(s.L) * s.H * n, p.sa_l = int64_t(s.H) * n, p.sa_h = n, p.sa_p = 1;
  p.skp_b = s.Nk, p.skp_n = 1;
  p.n_seq = n_seq, p.L = s.L, p.H = s.H, p.Nq = s.Nq, p.Nk = s.Nk, p.d = s.d, p.P = P;
  p.scale = 0.25f, p.qk_scale = 0.25f * attn::kLog2e, p.mode = mode;
  p.masks.n = n, p.masks.g_start = g_start, p.masks.g_end = g_end, p.masks.dense = dense.get();
  p.masks.sd_m = int64_t(s.Nq) * s.Nk, p.masks.sd_q = s.Nk, p.masks.sd_k = 1;
  for (int j = 0, n_dense = 0; j < n; ++j)
    p.masks.desc[j] = kinds[j] + 4 * ((kinds[j] == attn::kDense ? n_dense++ : radii[j]) + 1);

  attn::Plan pl = attn::plan_fwd(n_seq, s.Nq, s.Nk, s.d);
  p.spp = pl.spp, p.n_qtiles = pl.n_qtiles, p.n_ktiles = pl.n_ktiles;
  if (int err = attn::attention_fwd(p, stq::DType::kFloat32, nullptr)) return err;
  pl = attn::plan_bwd(n_seq, s.Nq, s.Nk, s.d);
  p.spp = pl.spp, p.n_qtiles = pl.n_qtiles, p.n_ktiles = pl.n_ktiles;
  std::vector<float> dalpha(size_t(pl.n_qtiles) * n_seq * (n ? n : 1));
  p.dalpha = dalpha.data();
  return attn::attention_bwd(p, stq::DType::kFloat32, nullptr);
}

// Temporal, T = 5, L = 3: all 6 sequences packed in one block; frame_lengths with an empty video.
int temporal_mix() {
  return run({5, 2, 5, 5, 3, 1, 16}, attn::kModeMix, {attn::kWindow, attn::kCausal, attn::kDense}, {1, -1, 0}, 0, 1,
             false, true);
}

// Spatial cross attention, 40 queries x 70 keys: several key tiles (forward), 2 query x 3 key tiles
// (backward), one sequence per block; key_padding.
int spatial_scale_tiles() {
  return run({0, 1, 40, 70, 1, 1, 16}, attn::kModeScale, {attn::kWindow, attn::kDense}, {3, 0}, 0, 0, true, false);
}

// Plain attention, d = 100 (the 128-wide tiles), 3 sequences of 9 rows.
int spatial_none_wide() { return run({0, 3, 9, 9, 1, 1, 100}, attn::kModeNone, {}, {}, 0, 0, true, false); }

const stq_tsan::Register r1{"attention_temporal_mix", temporal_mix};
const stq_tsan::Register r2{"attention_spatial_scale_tiles", spatial_scale_tiles};
const stq_tsan::Register r3{"attention_spatial_none_wide", spatial_none_wide};

}  // namespace
