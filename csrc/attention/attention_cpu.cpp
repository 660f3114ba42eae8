// Fused spatial / temporal attention with routed masks (DAR) on the CPU.
//
// Every attention sequence is a triple (b, l, h) whose row n sits at
//     base + b * s_b + l * s_l + h * s_h + n * s_n
// (spatial [G, N, H, d]: s_b = stride(0), s_l = 0, s_n = stride(1); temporal [B*T, L, H, d]:
// s_b = T * stride(0), s_l = stride(1), s_n = stride(0)), so the BT x L <-> BL x T swap is only
// an addressing choice. One thread owns a whole sequence (dealt out in chunks, Deal): it
// reads float32 rows in place (fp16/bf16, or a width that is not whole vectors, are staged as
// float32 in scratch), prefetches the rows of the sequence a few ahead into L2, and walks its
// queries in blocks of up to 64 rows. A block's scores against all keys (bm x Nk, never N x N) are
// computed, masked and normalised, and multiplied into V: down transposed tiles, a vector of
// queries at a time (softmax_keys, grads_keys, scale_grads_keys), or, for plain attention whose
// blocks are narrower than a vector (over 1024 keys with AVX-512), row by row (fwd_row, bwd_row).
// Each output element depends only on its own sequence, in a fixed order: results do not depend on
// the thread count.
//
// Masks are never materialised beyond one row: window/causal are key ranges computed from
// integers, dense masks are read from the shared bool buffer, global tokens and key padding /
// frame lengths are applied on the fly (row_masks).
//
// Modes (s = scale * q.k):
// - NONE: softmax over the visible keys. stats = lse.
// - MIX: o_i = sum_j alpha_j softmax_{M_j(i)}(s_i) V; stats = lse_j per mask (-inf for an empty
//   mask row): O(N p). One exp per score against the union's max, l_j as masked sums of those; a row
//   where some l_j underflows that way (kTinySum) is normalised mask by mask against its own max.
// - SCALE: softmax over {k : w_ik > 0} of s_ik * w_ik, w = sum_j alpha_j M_j. stats = lse.
// Backward, per query row from the saved stats (the forward is not re-run):
//   P = exp(s - lse) / sum_k exp(s - lse) (per mask in MIX): the saved lse is the shift, and the row
//   is normalised again as in the forward, because a rounded lse scales every weight of the row by
//   one (1 + e): sum_k P != 1, delta no longer cancels, and dq / dalpha pick up an error that grows
//   with the logits (12x the reference's at scale 2 before this). dP = dO V^T, delta = sum_k P dP,
//   NONE: dS = P (dP - delta); SCALE: dS' = P (dP - delta), dS = dS' w,
//   dalpha_j = sum_k dS' s M_j; MIX: dS = sum_j alpha_j P_j (dP - delta_j), dalpha_j = sum_i delta_j.
//   dq = scale dS K, dk = scale dS^T Q, dv = A^T dO with A the final attention weights.
// dalpha is summed per sequence in row order: [B*L*H, p], which is alpha's expanded shape.
// NaN: a row whose scores hold a NaN (a NaN in its query, or in a key it sees) is live, not empty:
// its sum of exps is NaN, or +inf where exp clamps its argument first (at::vec's AVX exp_u20
// takes exp(NaN) to 2^128), and its saved lse NaN or +inf, never -inf. The sums are tested with
// "!= 0" and a saved lse with "!= -inf" (never "> 0", "> -inf", false for NaN), so the NaN
// reaches the row's output and its gradients, as in the reference, instead of a silent 0.
#include "attention/attention_cpu.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <memory>

#include "common/cpu_math.h"

namespace stquery::cpu {
namespace {

constexpr int kMaxMasks = 8;

struct Rows {  // element strides of a sequence's rows
  int64_t b, l, h, n;
  int64_t at(int64_t b_, int64_t l_, int64_t h_, int64_t n_) const { return b_ * b + l_ * l + h_ * h + n_ * n; }
};

Rows rows_of(const at::Tensor& x, int64_t frames) {
  if (frames) return {frames * x.stride(0), x.stride(1), x.stride(2), x.stride(0)};
  return {x.stride(0), 0, x.stride(2), x.stride(1)};
}

// Sequences prefetched ahead of the one being computed. 2, not 4: at issue 13's headline shape the
// plain forward+backward took 3-5% less time at T = 16 and 1-2% at T = 8-64 (mix and scale 2-4%
// at T = 16), the same at T = 4 (1 ahead: the same as 2).
constexpr int64_t kAhead = 2;

// The sequences dealt out to the threads (at::parallel_for, one body per thread) from an atomic
// counter, guided: a claim takes a (2 x threads)-th of what is left, down to a floor (chunk). A
// thread that a neighbour on the machine slows then takes less of the tail instead of holding the
// whole call up, as it did with fixed shares: with a busy loop on a quarter of one core beside
// bench/cpu_ab.py at issue 13's headline shape, 9 of 10 forward+backward medians at T = 8, 16, 64
// (both orders) took 4-17% less time, one 7% more; unloaded, the same within noise. Each thread
// claims its next chunk as it starts one, so it knows the sequence kAhead after the one in hand
// (the prefetch). One thread computes a whole sequence: the results do not depend on which, or on
// the thread count.
class Deal {
 public:
  // n sequences of `work` score x channel products each (Nq Nk d). The floor of a claim: about 2^20
  // products (4 sequences of 64 x 64 x 64, 1024 of 4 x 4 x 64), at least kAhead sequences and at
  // most an eighth of each thread's share.
  Deal(int64_t n, int64_t work)
      : n_(n),
        threads_(at::get_num_threads()),
        chunk_(std::max(kAhead, std::min((n + 8 * threads_ - 1) / (8 * threads_),
                                         (int64_t(1) << 20) / std::max<int64_t>(work, 1)))) {}
  class Cursor {
   public:
    explicit Cursor(Deal& deal) : deal_(deal) {
      deal_.claim(a_, b_);
      deal_.claim(c_, e_);
    }
    // This thread's next sequence, into seq; false when none is left.
    bool take(int64_t& seq) {
      if (a_ == b_) {
        a_ = c_, b_ = e_;
        deal_.claim(c_, e_);
      }
      if (a_ == b_) return false;
      seq = a_++;
      return true;
    }
    // The sequence this thread takes kAhead after the one in hand; -1 when it has none claimed.
    int64_t ahead() const {
      const int64_t i = a_ - 1 + kAhead, j = c_ + (i - b_);
      return i < b_ ? i : j < e_ ? j : -1;
    }

   private:
    Deal& deal_;
    int64_t a_, b_, c_, e_;  // the chunk in hand [a_, b_) (a_ past the sequence taken), the next [c_, e_)
  };
  template <typename F>
  void run(F&& body) {  // body(Cursor&) on each thread
    // a body per thread, or per chunk where there are fewer (each body zero-fills its scratch)
    at::parallel_for(0, std::min(threads_, (n_ + chunk_ - 1) / chunk_), 1, [&](int64_t, int64_t) {
      Cursor cursor(*this);
      body(cursor);
    });
  }

 private:
  void claim(int64_t& lo, int64_t& hi) {
    lo = next_.load(std::memory_order_relaxed);
    int64_t take;
    do {
      take = std::max(chunk_, (n_ - lo) / (2 * threads_));
    } while (lo < n_ && !next_.compare_exchange_weak(lo, lo + take, std::memory_order_relaxed));
    lo = std::min(lo, n_);
    hi = std::min(n_, lo + take);
  }
  std::atomic<int64_t> next_{0};
  const int64_t n_, threads_, chunk_;
};

struct Problem {
  int64_t B, L, H, Nq, Nk, d, frames;
  int mode, p;
  int kinds[kMaxMasks];
  int64_t radii[kMaxMasks], dense_index[kMaxMasks];
  int64_t gs, ge;
  float scale;
  const bool* dense = nullptr;
  int64_t sd_m = 0, sd_q = 0, sd_k = 0;
  const bool* kpad = nullptr;
  int64_t skp_b = 0, skp_n = 0;
  const int64_t* flen = nullptr;
  const float* alpha = nullptr;
  int64_t sa_b = 0, sa_l = 0, sa_h = 0, sa_p = 0;

  int64_t n_seq() const { return B * L * H; }
  // Element offset of row 0 of sequence seq in a tensor with row strides r.
  int64_t base(int64_t seq, const Rows& r) const { return r.at(seq / (L * H), (seq / H) % L, seq % H, 0); }
  int64_t stats_width() const { return mode == kMix ? p : 1; }
};

Problem make_problem(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& alpha,
                     const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& key_padding,
                     const std::optional<at::Tensor>& frame_lengths, int64_t frames, const std::vector<int64_t>& kinds,
                     const std::vector<int64_t>& radii, int64_t gs, int64_t ge, int64_t mode, double scale) {
  Problem P{};
  P.frames = frames;
  if (frames) {
    P.B = q.size(0) / frames, P.L = q.size(1), P.H = q.size(2), P.Nq = P.Nk = frames;
  } else {
    P.B = q.size(0), P.L = 1, P.H = q.size(2), P.Nq = q.size(1), P.Nk = k.size(1);
  }
  P.d = q.size(3);
  P.mode = static_cast<int>(mode);
  P.p = mode == kNone ? 0 : static_cast<int>(kinds.size());
  TORCH_CHECK(P.p <= kMaxMasks, "attention: at most ", kMaxMasks, " masks, got ", P.p);
  int64_t n_dense = 0;
  for (int j = 0; j < P.p; ++j) {
    P.kinds[j] = static_cast<int>(kinds[j]);
    P.radii[j] = radii[j];
    P.dense_index[j] = kinds[j] == kDense ? n_dense++ : -1;
  }
  P.gs = mode == kNone ? 0 : gs;
  P.ge = mode == kNone ? 0 : ge;
  P.scale = static_cast<float>(scale);
  if (n_dense) {
    TORCH_CHECK(dense.has_value() && dense->scalar_type() == at::kBool && dense->dim() == 3 &&
                    dense->size(0) == n_dense && dense->size(1) == P.Nq && dense->size(2) == P.Nk,
                "dense: expected bool [", n_dense, ", ", P.Nq, ", ", P.Nk, "]");
    P.dense = dense->data_ptr<bool>();
    P.sd_m = dense->stride(0), P.sd_q = dense->stride(1), P.sd_k = dense->stride(2);
  }
  if (key_padding.has_value()) {
    TORCH_CHECK(key_padding->scalar_type() == at::kBool, "key_padding: expected bool");
    P.kpad = key_padding->data_ptr<bool>();
    P.skp_b = key_padding->stride(0), P.skp_n = key_padding->stride(1);
  }
  if (frame_lengths.has_value()) {
    TORCH_CHECK(frames && frame_lengths->scalar_type() == at::kLong && frame_lengths->is_contiguous(),
                "frame_lengths: expected contiguous int64 [B] (temporal attention)");
    P.flen = frame_lengths->data_ptr<int64_t>();
  }
  if (P.p) {
    TORCH_CHECK(alpha.has_value() && alpha->scalar_type() == at::kFloat && alpha->dim() == 4 &&
                    alpha->size(3) == P.p,
                "alpha: expected float32 [B, L, H, p]");
    P.alpha = alpha->data_ptr<float>();
    P.sa_b = alpha->stride(0), P.sa_l = alpha->stride(1), P.sa_h = alpha->stride(2), P.sa_p = alpha->stride(3);
  }
  return P;
}

// One sequence's coordinates, routing weights and key visibility.
struct Seq {
  int64_t b, l, h;
  int64_t n_alive;  // queries < n_alive attend (frame_lengths); the others give 0
  float alpha[kMaxMasks];
};

Seq make_seq(const Problem& P, int64_t seq, float* keyok, int64_t Nkp) {
  Seq s;
  s.b = seq / (P.L * P.H), s.l = (seq / P.H) % P.L, s.h = seq % P.H;
  int64_t key_limit = P.Nk;
  s.n_alive = P.Nq;
  if (P.flen) {
    const int64_t f = std::min<int64_t>(std::max<int64_t>(P.flen[s.b], 0), P.frames);
    key_limit = s.n_alive = f;
  }
  for (int64_t k = 0; k < Nkp; ++k) {
    const bool padded = P.kpad && k < P.Nk && P.kpad[s.b * P.skp_b + k * P.skp_n];
    keyok[k] = (k < key_limit && !padded) ? 1.f : 0.f;
  }
  for (int j = 0; j < P.p; ++j) {
    s.alpha[j] = P.alpha[s.b * P.sa_b + s.l * P.sa_l + s.h * P.sa_h + j * P.sa_p];
  }
  return s;
}

// mj[j * Nkp + k] = 1 iff key k is visible from query i under mask j (key padding applied).
void row_masks(const Problem& P, int64_t i, const float* keyok, float* mj, int64_t Nkp) {
  const bool global_row = i >= P.gs && i < P.ge;
  const int64_t g_lo = std::min(P.gs, P.Nk), g_hi = std::min(P.ge, P.Nk);
  for (int j = 0; j < P.p; ++j) {
    float* m = mj + j * Nkp;
    if (global_row) {
      std::memcpy(m, keyok, Nkp * sizeof(float));
      continue;
    }
    if (P.kinds[j] == kDense) {
      const bool* row = P.dense + P.dense_index[j] * P.sd_m + i * P.sd_q;
      for (int64_t k = 0; k < P.Nk; ++k) m[k] = row[k * P.sd_k] ? keyok[k] : 0.f;
      std::fill(m + P.Nk, m + Nkp, 0.f);
      for (int64_t k = g_lo; k < g_hi; ++k) m[k] = keyok[k];
      continue;
    }
    // keys in [lo, hi] or in the global columns [g_lo, g_hi), by lane index (exact in float32 below 2^24)
    int64_t lo, hi;
    band(P.kinds[j], P.radii[j], i, lo, hi);
    const Vec vlo(static_cast<float>(std::max<int64_t>(lo, 0))), vhi(static_cast<float>(std::min(hi, P.Nk - 1)));
    const Vec vglo(static_cast<float>(g_lo)), vghi(static_cast<float>(g_hi)), zero(0.f);
    for (int64_t k = 0; k < Nkp; k += kV) {
      const Vec idx = Vec::arange(static_cast<float>(k), 1.f);
      const Vec in = ((idx >= vlo) & (idx <= vhi)) | ((idx >= vglo) & (idx < vghi));
      Vec::blendv(zero, Vec::loadu(keyok + k), in).store(m + k);
    }
  }
}

// w = softmax of s over {k : vis[k] > 0}; returns lse (-inf and w = 0 for an empty row).
float softmax_row(const float* s, const float* vis, float* w, int64_t n) {
  const float m = masked_max(s, vis, n);
  if (m == -kInf) {
    std::fill(w, w + n, 0.f);
    return -kInf;
  }
  const float l = masked_exp(s, vis, m, w, n);
  const Vec inv(1.f / l);
  for (int64_t k = 0; k < n; k += kV) (Vec::loadu(w + k) * inv).store(w + k);
  return m + std::log(l);
}

// Below this, a mask's sum of exps against the union's max (softmax_keys, grads_keys) has lost
// its precision or underflowed (all its scores ~44 nats below the union's max): the row is then
// normalised mask by mask instead (fwd_row, bwd_row).
constexpr float kTinySum = 0x1p-64f;

// Forward for query row i (NONE or MIX): s (scaled scores) -> w (attention weights), st (stats). MIX
// comes here only for the rows softmax_keys hands back (kTinySum), so it goes mask by mask; SCALE
// never does (softmax_keys takes every SCALE row).
void fwd_row(const Problem& P, const Seq& q, int64_t i, float* s, const float* keyok, float* mj, float* tmp, float* w,
             float* st, int64_t Nkp) {
  if (i >= q.n_alive) {
    std::fill(w, w + Nkp, 0.f);
    std::fill(st, st + P.stats_width(), -kInf);
    return;
  }
  if (P.mode == kNone) {
    st[0] = softmax_row(s, keyok, w, Nkp);
    return;
  }
  row_masks(P, i, keyok, mj, Nkp);
  std::fill(w, w + Nkp, 0.f);
  for (int j = 0; j < P.p; ++j) {
    const float* m_j = mj + j * Nkp;
    const float m = masked_max(s, m_j, Nkp);
    if (m == -kInf) {
      st[j] = -kInf;
      continue;
    }
    const float l = masked_exp(s, m_j, m, tmp, Nkp);
    st[j] = m + std::log(l);
    axpy(q.alpha[j] / l, tmp, w, Nkp);
  }
}

// P = exp(s - lse) normalised over {k : vis[k] > 0} (see the note at the top).
void renormalised_exp(const float* s, const float* vis, float lse, float* w, int64_t n) {
  const Vec inv(1.f / masked_exp(s, vis, lse, w, n));
  for (int64_t k = 0; k < n; k += kV) (Vec::loadu(w + k) * inv).store(w + k);
}

// Backward for query row i (NONE or MIX): from s (scaled scores), dp (dO . v_k) and the stats -> a
// (attention weights), ds (gradient w.r.t. s); adds the row's share of dalpha. MIX comes here only
// for the rows grads_keys hands back (kTinySum), so it goes mask by mask; SCALE never does.
void bwd_row(const Problem& P, const Seq& q, int64_t i, const float* s, const float* dp, const float* keyok, float* mj,
             float* tmp, const float* st, float* a, float* ds, double* dalpha, int64_t Nkp) {
  if (i >= q.n_alive || (P.mode == kNone && st[0] == -kInf)) {
    std::fill(a, a + Nkp, 0.f);
    std::fill(ds, ds + Nkp, 0.f);
    return;
  }
  if (P.mode == kNone) {
    renormalised_exp(s, keyok, st[0], a, Nkp);
    const Vec delta(dot(a, dp, Nkp));
    for (int64_t k = 0; k < Nkp; k += kV) (Vec::loadu(a + k) * (Vec::loadu(dp + k) - delta)).store(ds + k);
    return;
  }
  row_masks(P, i, keyok, mj, Nkp);
  std::fill(a, a + Nkp, 0.f);
  std::fill(ds, ds + Nkp, 0.f);
  for (int j = 0; j < P.p; ++j) {
    if (st[j] == -kInf) continue;
    renormalised_exp(s, mj + j * Nkp, st[j], tmp, Nkp);
    const float delta = dot(tmp, dp, Nkp);
    dalpha[j] += delta;
    const Vec alpha(q.alpha[j]), vdelta(delta);
    for (int64_t k = 0; k < Nkp; k += kV) {
      const Vec pa = Vec::loadu(tmp + k) * alpha;
      (Vec::loadu(a + k) + pa).store(a + k);
      at::vec::fmadd(pa, Vec::loadu(dp + k) - vdelta, Vec::loadu(ds + k)).store(ds + k);
    }
  }
}

// Query rows per block: a block's scores against all keys (bm x Nkp floats, a bounded tile like a
// GPU kernel's, never N x N) stay in cache; sequences of up to 64 rows are one block.
int64_t block_rows(int64_t Nkp) { return std::clamp<int64_t>(int64_t(16384) / Nkp, 8, 64); }

// Whether a call normalises down transposed tiles (softmax_keys, grads_keys, scale_grads_keys):
// always with routed masks; plain attention when a block of BM queries fills a vector (up to 1024
// keys with AVX-512). Narrower blocks idle part of every vector (the plain forward over 2048 keys
// took 47% longer on tiles), so they go row by row (fwd_row, bwd_row).
bool on_tiles(const Problem& P, int64_t BM) { return P.mode != kNone || BM >= kV; }

// Float32 rows of a matrix: `ld` floats apart.
struct Mat {
  const float* p;
  int64_t ld;
  const float* row(int64_t r) const { return p + r * ld; }
};

// Whether sequences are read and written in place: float32 rows whose width is whole vectors. Otherwise
// rows are staged as zero-padded float32 in scratch (fp16/bf16 converted there) and outputs stored from it.
template <typename T>
bool in_place(int64_t d) {
  return std::is_same_v<T, float> && d % kV == 0;
}

// Rows [0, n) of a sequence (rows `stride` elements apart) as float32: in place, or staged in scratch [n, dp].
template <typename T>
Mat rows_in(const T* src, int64_t stride, int64_t n, int64_t d, int64_t dp, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    if (d == dp) return {src, stride};
  }
  for (int64_t r = 0; r < n; ++r) load_row(src + r * stride, scratch + r * dp, d, dp);
  return {scratch, dp};
}

// Output rows of a sequence: computed in place (dst itself) or in scratch [rows, dp], then stored.
template <typename T>
struct RowsOut {
  T* dst;
  int64_t stride, d, dp;
  float* scratch;  // null: in place
  bool stream;     // in place and streamed (streams()): rows written once
  // Where row r (relative to r0, the first row of the current block) is computed.
  Into into(int64_t r0, float mul = 1.f, bool add = false) const {
    if constexpr (std::is_same_v<T, float>) {
      if (!scratch) return {dst + r0 * stride, stride, mul, add, stream && !add};
    }
    return {scratch, dp, mul, add};
  }
  void store(int64_t r0, int64_t n) const {
    if (!scratch) return;
    for (int64_t r = 0; r < n; ++r) store_row(scratch + r * dp, dst + (r0 + r) * stride, d);
  }
};

// Whether an output read in place (not staged) is written with streaming stores: every row kV-aligned.
// The kernels prefetch only the outputs they do not stream (a prefetch for write is the
// read-for-ownership that streaming avoids).
bool streams(const at::Tensor& x, bool staged) {
  bool aligned = !staged && reinterpret_cast<uintptr_t>(x.data_ptr()) % (kV * sizeof(float)) == 0;
  for (int i = 0; i < 3; ++i) aligned = aligned && x.stride(i) % kV == 0;
  return aligned;
}

// Few keys (one vector, half of it padding or more): tile scores as dot products, no transposed Q.
bool few_keys(int64_t Nk) { return Nk <= kV / 2; }

// The row paths' scores (blocks narrower than a vector: many keys): Kt [d, Nkp] = K^T, padding
// columns 0 (keys_for_scores), then S [bm, Nkp] = mul * Q[0:bm] K^T (scores).
void keys_for_scores(const Mat& K, int64_t Nk, int64_t d, float* Kt, int64_t Nkp) {
  at::vec::transpose_mxn<float>(K.p, K.ld, Kt, Nkp, static_cast<int>(Nk), static_cast<int>(d));
}

void scores(const Mat& Q, const float* Kt, int64_t bm, int64_t d, int64_t Nkp, float mul, float* S) {
  gemm(Q.p, Q.ld, 1, Kt, Nkp, bm, d, Nkp / kV, Into{S, Nkp, mul});
}

// Lanes (queries q0 + lane) that see key k, as if k were not padded: one Vec per mask, all-ones
// lanes or zero, into vis[j * kV]. The transposed row_masks, global tokens applied the same way;
// the kernels skip padded keys (keyok) themselves.
void key_masks(const Problem& P, int64_t k, int64_t q0, float* vis) {
  const Vec zero(0.f), ones = zero == zero;
  if (k >= P.gs && k < P.ge) {
    for (int j = 0; j < P.p; ++j) ones.store(vis + j * kV);
    return;
  }
  // query indices and bounds as floats: exact, lanes and bounds clipped to [-1, Nq]
  const auto bound = [&](int64_t x) { return Vec(static_cast<float>(std::clamp<int64_t>(x, -1, P.Nq))); };
  const Vec qi = Vec::arange(static_cast<float>(q0), 1.f);
  const Vec global_q = (qi >= bound(P.gs)) & (qi < bound(P.ge));
  for (int j = 0; j < P.p; ++j) {
    Vec in;
    if (P.kinds[j] == kDense) {
      const bool* col = P.dense + P.dense_index[j] * P.sd_m + k * P.sd_k;
      float lanes[kV];
      for (int64_t r = 0; r < kV; ++r) lanes[r] = q0 + r < P.Nq && col[(q0 + r) * P.sd_q] ? 1.f : 0.f;
      in = Vec::loadu(lanes) > zero;
    } else {
      int64_t lo, hi;
      key_band(P.kinds[j], P.radii[j], k, lo, hi);
      in = (qi >= bound(lo)) & (qi <= bound(hi));
    }
    (in | global_q).store(vis + j * kV);
  }
}

// The mask lanes (key_masks) of a query block, every vector of queries c against every key:
// [c / kV][k][j][kV]. They depend on where the block starts, not on the sequence, so a thread
// builds them when its block position changes: once per call for sequences of one block (every
// temporal attention up to 64 frames). NONE has none. With a weights buffer, also SCALE's
// w = sum_j alpha_j M_j of the block ([c / kV][k][kV], padded keys not applied), rebuilt when the
// block or the sequence's alpha changes: the heads of a (b, l) share it when alpha is broadcast
// over them.
class BlockMasks {
 public:
  BlockMasks(const Problem& P, float* lanes, float* weights = nullptr) : P_(P), lanes_(lanes), weights_(weights) {}
  const float* at(int64_t i0, int64_t bm) {
    if (i0 != i0_ && P_.p) {
      for (int64_t c = 0; c < bm; c += kV) {
        float* vc = lanes_ + offset(P_, c);
        for (int64_t k = 0; k < P_.Nk; ++k) key_masks(P_, k, i0 + c, vc + k * P_.p * kV);
      }
      i0_ = i0, bm_ = bm, w_i0_ = -1;
    }
    return lanes_;
  }
  // SCALE's w of the block of the last at(), for sequence sq.
  const float* weights(const Seq& sq) {
    if (w_i0_ != i0_ || !std::equal(sq.alpha, sq.alpha + P_.p, alpha_)) {
      for (int64_t c = 0; c < bm_; c += kV) {
        const float* vc = lanes_ + offset(P_, c);
        float* wc = weights_ + weight_offset(P_, c);
        for (int64_t k = 0; k < P_.Nk; ++k) mask_weight(sq, P_.p, vc + k * P_.p * kV).store(wc + k * kV);
      }
      std::copy(sq.alpha, sq.alpha + P_.p, alpha_);
      w_i0_ = i0_;
    }
    return weights_;
  }
  // Where the lanes of the block's vector of queries c start (key k, mask j: + (k * p + j) * kV).
  static int64_t offset(const Problem& P, int64_t c) { return (c / kV) * P.Nk * P.p * kV; }
  // Where its weights start (key k: + k * kV).
  static int64_t weight_offset(const Problem& P, int64_t c) { return (c / kV) * P.Nk * kV; }

 private:
  // w = sum_j alpha_j M_j of a key over a vector of queries, from its mask lanes vis[j * kV].
  static Vec mask_weight(const Seq& sq, int p, const float* vis) {
    Vec w(0.f);
    for (int j = 0; j < p; ++j) w = w + (Vec(sq.alpha[j]) & Vec::loadu(vis + j * kV));
    return w;
  }

  const Problem& P_;
  float* lanes_;
  float* weights_;
  int64_t i0_ = -1, bm_ = 0, w_i0_ = -1;
  float alpha_[kMaxMasks] = {};
};

// Whether the pass over the query vector c (of a block of bm queries) makes key k's once-per-key
// call (the caller's prefetch): the keys are dealt out over the block's vectors, k to vector
// k mod their count. All in the first pass, the prefetches came in bursts that filled the core's
// miss buffers; dealt out, at issue 13's headline shape (4 vectors at T = 64, 2 at 32, 1 below),
// forward+backward took 3-5% less time at T = 64 and 7-8% at T = 32.
inline bool key_turn(int64_t k, int64_t c, int64_t bm) { return k % ((bm + kV - 1) / kV) == c / kV; }

// f(j) for each mask j < n (n <= kMaxMasks), unrolled: per-mask accumulators (Vec arrays indexed
// by j) then stay in registers. Looped to a runtime n they live in memory, and the load-add-store
// per key and mask was a sixth of the SCALE backward's own time.
template <typename F>
[[gnu::always_inline]] inline void each_mask(int n, F&& f) {
#pragma GCC unroll 8
  for (int j = 0; j < kMaxMasks; ++j) {
    if (j < n) f(j);
  }
}

// Softmax on transposed scores St [Nk, ldt] (lane r: query i0 + r), in place: St becomes the
// attention weights A^T (sum_j alpha_j P_j^T in MIX; SCALE softmaxes s w over w > 0) and lse[j *
// ldt + r] the log-sum-exp of query r under mask j (one, j = 0, in NONE and SCALE; -inf for a query
// >= n_alive or a mask row with no visible key). The max, the exps and the sums run down the key
// rows a vector of queries at a time, with no horizontal max or sum per row: those cost more than
// a row's arithmetic when the row is a fraction of a vector (few keys), or with masks, which add
// their own vector work per row. One exp per score, against the max over the union of the masks;
// l_j are masked sums of those. A lane where some l_j < kTinySum is redone by hard_row(r), the
// per-row path (fwd_row). on_key(k) is called once per key row (the caller's prefetch), in the pass
// key_turn deals it to. vis: the block's mask lanes (BlockMasks; MIX); wts: its weights
// (BlockMasks::weights; SCALE).
template <int kMode, typename OnKey, typename HardRow>
void softmax_keys(const Problem& P, const Seq& sq, float* St, int64_t ldt, int64_t bm, const float* keyok, int64_t i0,
                  const float* vis, const float* wts, float* lse, OnKey&& on_key, HardRow&& hard_row) {
  constexpr bool kMixMode = kMode == kMix, kScaleMode = kMode == kScale;
  const int64_t Nk = P.Nk;
  const int n = kMixMode ? P.p : 1;  // softmaxes per row
  const Vec ninf(-kInf), zero(0.f), ones = zero == zero, tiny(kTinySum);
  const Vec live_end(static_cast<float>(std::min(i0 + bm, sq.n_alive)));
  for (int64_t c = 0; c < bm; c += kV) {
    const float* vc = vis + BlockMasks::offset(P, c);  // this vector's mask lanes
    const float* wc = kScaleMode ? wts + BlockMasks::weight_offset(P, c) : nullptr;  // and weights
    // The lanes that see (unpadded) key k under softmax j, and under any of them.
    const auto in = [&](int64_t k, int j) { return kMixMode ? Vec::loadu(vc + (k * n + j) * kV) : ones; };
    const auto any = [&](int64_t k) {
      if constexpr (kScaleMode) return Vec::loadu(wc + k * kV) > zero;
      Vec u = in(k, 0);
      for (int j = 1; j < n; ++j) u = u | in(k, j);
      return u;
    };
    Vec m = ninf;
    for (int64_t k = 0; k < Nk; ++k) {
      float* s = St + k * ldt + c;
      if (!(keyok[k] > 0.f)) continue;
      Vec x = Vec::loadu(s);
      if (kScaleMode) {  // s * w over w = sum_j alpha_j M_j > 0
        x = x * Vec::loadu(wc + k * kV);
        x.store(s);
      }
      m = max_scores(m, kMode == kNone ? x : Vec::blendv(ninf, x, any(k)));
    }
    const Vec base = Vec::blendv(m, zero, m == ninf);
    Vec l[kMaxMasks], seen[kMaxMasks];
    for (int j = 0; j < n; ++j) l[j] = seen[j] = zero;
    for (int64_t k = 0; k < Nk; ++k) {
      if (key_turn(k, c, bm)) on_key(k);
      float* s = St + k * ldt + c;
      if (!(keyok[k] > 0.f)) {
        zero.store(s);
        continue;
      }
      const Vec u = any(k), x = (Vec::loadu(s) - base).exp_u20(), e = kMode == kNone ? x : x & u;
      e.store(s);
      each_mask(n, [&](int j) {
        l[j] = l[j] + (kMixMode ? e & in(k, j) : e);
        seen[j] = seen[j] | (kMixMode ? in(k, j) : u);
      });
    }
    const Vec live = Vec::arange(static_cast<float>(i0 + c), 1.f) < live_end;
    Vec coef[kMaxMasks], hard = zero;
    for (int j = 0; j < n; ++j) {
      const Vec rows = seen[j] & live, has = rows & (l[j] != zero);  // a NaN sum is live (note at the top)
      hard = hard | (rows & (l[j] < tiny));
      coef[j] = Vec::blendv(zero, Vec(kMixMode ? sq.alpha[j] : 1.f) / l[j], has);
      Vec::blendv(ninf, base + l[j].log(), has).store(lse + j * ldt + c);
    }
    for (int64_t k = 0; k < Nk; ++k) {
      Vec w = coef[0];
      if (kMixMode) {
        w = w & in(k, 0);
        for (int j = 1; j < n; ++j) w = w + (coef[j] & in(k, j));
      }
      float* s = St + k * ldt + c;
      (Vec::loadu(s) * w).store(s);
    }
    if (!kMixMode) continue;  // one softmax: l >= 1, its max's own term
    float redo[kV];
    Vec::blendv(zero, Vec(1.f), hard).store(redo);
    for (int64_t r = 0; r < kV; ++r) {
      if (redo[r] > 0.f) hard_row(c + r);
    }
  }
}

// The NONE and MIX backward on transposed tiles: St [Nk, ldt] the scores and DPt the dP = dO V^T of
// query lanes i0 + r, lse[j * ldt + r] the saved stats. One exp per score, e = exp(s - m_ref) with
// m_ref = max_j lse_j, so P_j = e M_j / l_j with l_j = sum_k e M_j (normalised again, see the note
// at the top), delta_j = sum_k P_j dP, A = e sum_j c_j M_j and dS = e sum_j c_j M_j (dP - delta_j)
// with c_j = alpha_j / l_j, all as sums down the keys; NONE is one mask, the visible keys, with
// alpha = 1. In place, St becomes A^T and DPt dS^T. MIX adds each lane's delta_j to dalpha[j] in
// row order, and a lane where some live l_j < kTinySum is redone by hard_row(r) (bwd_row, which adds
// its own dalpha); on_key and vis as in softmax_keys.
template <int kMode, typename OnKey, typename HardRow>
void grads_keys(const Problem& P, const Seq& sq, float* St, float* DPt, int64_t ldt, int64_t bm, const float* keyok,
                int64_t i0, const float* vis, const float* lse, double* dalpha, OnKey&& on_key, HardRow&& hard_row) {
  constexpr bool kMixMode = kMode == kMix;
  const int64_t Nk = P.Nk;
  const int n = kMixMode ? P.p : 1;
  const Vec ninf(-kInf), zero(0.f), tiny(kTinySum), live_end(static_cast<float>(std::min(i0 + bm, sq.n_alive)));
  for (int64_t c = 0; c < bm; c += kV) {
    const Vec live = Vec::arange(static_cast<float>(i0 + c), 1.f) < live_end;
    Vec lj[kMaxMasks], m = ninf;  // lanes where mask j has an lse (not -inf); the shift max_j lse_j
    for (int j = 0; j < n; ++j) {
      const Vec x = Vec::loadu(lse + j * ldt + c);
      lj[j] = live & (x != ninf);
      m = at::vec::maximum(m, Vec::blendv(ninf, x, lj[j]));
    }
    const Vec base = Vec::blendv(m, zero, m == ninf);
    const float* vc = vis + BlockMasks::offset(P, c);  // this vector's mask lanes
    // The lanes that see (unpadded) key k under live mask j; its mask lanes (all in NONE).
    const auto mask = [&](int64_t k, int j) { return kMixMode ? Vec::loadu(vc + (k * n + j) * kV) : zero == zero; };
    const auto in = [&](int64_t k, int j) { return mask(k, j) & lj[j]; };
    Vec l[kMaxMasks], g[kMaxMasks];
    for (int j = 0; j < n; ++j) l[j] = g[j] = zero;
    for (int64_t k = 0; k < Nk; ++k) {
      if (key_turn(k, c, bm)) on_key(k);
      float* s = St + k * ldt + c;
      if (!(keyok[k] > 0.f)) {
        zero.store(s);
        continue;
      }
      Vec any = in(k, 0);
      for (int j = 1; j < n; ++j) any = any | in(k, j);
      const Vec e = (Vec::loadu(s) - base).exp_u20() & any, edp = e * Vec::loadu(DPt + k * ldt + c);
      e.store(s);
      each_mask(n, [&](int j) {
        const Vec vis_j = in(k, j);
        l[j] = l[j] + (e & vis_j);
        g[j] = g[j] + (edp & vis_j);
      });
    }
    Vec coef[kMaxMasks], cd[kMaxMasks], hard = zero;
    float delta[kMaxMasks][kV];
    for (int j = 0; j < n; ++j) {
      const Vec has = lj[j] & (l[j] != zero), d = Vec::blendv(zero, g[j] / l[j], has);
      hard = hard | (lj[j] & (l[j] < tiny));
      coef[j] = Vec::blendv(zero, Vec(kMixMode ? sq.alpha[j] : 1.f) / l[j], has);
      cd[j] = coef[j] * d;
      d.store(delta[j]);
    }
    for (int64_t k = 0; k < Nk; ++k) {
      float* s = St + k * ldt + c;
      float* dps = DPt + k * ldt + c;
      Vec cw = zero, gw = zero;
      for (int j = 0; j < n; ++j) {
        const Vec vis_j = mask(k, j);
        cw = cw + (coef[j] & vis_j);
        gw = gw + (cd[j] & vis_j);
      }
      const Vec e = Vec::loadu(s), a = e * cw;
      a.store(s);
      (a * Vec::loadu(dps) - e * gw).store(dps);
    }
    if (!kMixMode) continue;  // one softmax against its own lse (l ~ 1): no hard rows, no dalpha
    float redo[kV];
    Vec::blendv(zero, Vec(1.f), hard).store(redo);
    for (int64_t r = 0; r < std::min<int64_t>(kV, bm - c); ++r) {
      if (redo[r] > 0.f) {
        hard_row(c + r);
      } else {
        for (int j = 0; j < n; ++j) dalpha[j] += delta[j][r];
      }
    }
  }
}

// The SCALE backward on transposed tiles (St scores, DPt dP, lse as in grads_keys): per key, w =
// sum_j alpha_j M_j over the query lanes (wts: BlockMasks::weights), A = exp(s w - lse) over the
// unpadded keys with w > 0, normalised again (Et holds the exps between the passes), delta =
// sum_k A dP, g = A (dP - delta), dS = g w, dalpha_j = sum_k g s M_j (vis: the mask lanes M_j);
// St becomes A^T and DPt dS^T, and each lane's dalpha_j is added in row order. One softmax per row
// over the forward's lse: no lane needs the per-row path.
template <typename OnKey>
void scale_grads_keys(const Problem& P, const Seq& sq, float* St, float* DPt, float* Et, int64_t ldt, int64_t bm,
                      const float* keyok, int64_t i0, const float* vis, const float* wts, const float* lse,
                      double* dalpha, OnKey&& on_key) {
  const int64_t Nk = P.Nk;
  const int p = P.p;
  const Vec ninf(-kInf), zero(0.f), live_end(static_cast<float>(std::min(i0 + bm, sq.n_alive)));
  for (int64_t c = 0; c < bm; c += kV) {
    const float* vc = vis + BlockMasks::offset(P, c);  // this vector's mask lanes
    const float* wc = wts + BlockMasks::weight_offset(P, c);  // and weights
    const Vec x = Vec::loadu(lse + c);
    const Vec live = (Vec::arange(static_cast<float>(i0 + c), 1.f) < live_end) & (x != ninf);
    const Vec base = Vec::blendv(zero, x, live);
    // s w rounded in memory, as the forward saw it: fused into exp's argument (the compiler contracts
    // s * w - lse to an FMA) it differs by up to half an ulp of s w, which for logits of 1e10 is 512.
    for (int64_t k = 0; k < Nk; ++k) {
      (Vec::loadu(St + k * ldt + c) * Vec::loadu(wc + k * kV)).store(Et + k * ldt + c);
    }
    Vec l = zero, edp = zero;
    for (int64_t k = 0; k < Nk; ++k) {
      if (key_turn(k, c, bm)) on_key(k);
      float* e_k = Et + k * ldt + c;
      if (!(keyok[k] > 0.f)) {  // a padded key: A = 0, and so dS = 0 below
        zero.store(e_k);
        continue;
      }
      const Vec e = (Vec::loadu(e_k) - base).exp_u20() & (Vec::loadu(wc + k * kV) > zero) & live;
      e.store(e_k);
      l = l + e;
      edp = at::vec::fmadd(e, Vec::loadu(DPt + k * ldt + c), edp);
    }
    const Vec inv = Vec::blendv(zero, Vec(1.f) / l, l != zero), delta = edp * inv;
    Vec da[kMaxMasks];
    each_mask(p, [&](int j) { da[j] = zero; });
    for (int64_t k = 0; k < Nk; ++k) {
      float* s = St + k * ldt + c;
      float* dps = DPt + k * ldt + c;
      const Vec a = Vec::loadu(Et + k * ldt + c) * inv, g = a * (Vec::loadu(dps) - delta), gs = g * Vec::loadu(s);
      each_mask(p, [&](int j) { da[j] = da[j] + (gs & Vec::loadu(vc + (k * p + j) * kV)); });
      (g * Vec::loadu(wc + k * kV)).store(dps);
      a.store(s);
    }
    float lanes[kMaxMasks][kV];
    each_mask(p, [&](int j) { da[j].store(lanes[j]); });
    for (int64_t r = 0; r < std::min<int64_t>(kV, bm - c); ++r) {
      for (int j = 0; j < p; ++j) dalpha[j] += lanes[j][r];
    }
  }
}

// Per-thread float32 scratch, zero-filled: the padding columns of Kt / Vt (keys that score 0, masked
// by keyok) and of the score tiles are never written and stay 0. Each buffer taken is its own
// allocation (a few per thread and call), so no size is worked out ahead of the takes.
class Scratch {
 public:
  float* take(int64_t n) {
    blocks_.push_back(std::make_unique<float[]>(n));  // value-initialised: zeros
    return blocks_.back().get();
  }
  float* take_if(bool cond, int64_t n) { return cond ? take(n) : nullptr; }

 private:
  std::vector<std::unique_ptr<float[]>> blocks_;
};

// Software prefetch of the rows of each tensor of a kernel (read, or written), kAhead sequences
// ahead. `next` finds the rows of the sequence the thread takes kAhead later (Deal::Cursor::ahead);
// the kernel asks for them a few at a time (Drip), not in one burst per sequence: a burst of T rows
// x 4-7 tensors fills the core's miss buffers and stalls the loads the computation itself is waiting
// for (in one burst the forward at issue 13's headline shape took 48% longer at T = 16).
template <typename T>
struct Prefetch {
  static constexpr int kMaxStreams = 7;
  struct Stream {
    const T* x;
    Rows rows;
    int64_t n;
    bool write;
  };
  struct Next {
    const Prefetch* pf = nullptr;  // null: no sequence claimed kAhead ahead
    const T* row0[kMaxStreams];
    // Rows [r0, r1) of every stream (clipped to the stream's length).
    [[gnu::always_inline]] void rows(int64_t r0, int64_t r1) const {
      if (!pf) return;
      for (size_t j = 0; j < pf->streams.size(); ++j) {
        const Stream& s = pf->streams[j];
        const int64_t hi = std::min(r1, s.n);
        if (hi > r0) prefetch_rows(row0[j] + r0 * s.rows.n, s.rows.n, hi - r0, pf->row_bytes, s.write);
      }
    }
  };
  // A sequence's rows [0, n) asked for in steps spread over `phases` phases of the work on its first
  // query block (each product, and the softmax pass): tick j of `ticks` in phase i asks for the rows
  // up to that point's share. Asked for in the softmax pass alone, they stalled on the core's full
  // miss buffers (perf: a fifth of the forward's own time at T = 64); spread, at issue 13's headline
  // shape, forward+backward took 8% less time at T = 16 (bench/cpu_ab.py, both orders), the other
  // T within 2%.
  struct Drip {
    const Next& next;
    int64_t n, phases, done = 0;
    [[gnu::always_inline]] void upto(int64_t r) {
      if (r > done) next.rows(done, r), done = r;
    }
    [[gnu::always_inline]] void at(int64_t phase, int64_t j, int64_t ticks) {
      upto(n * (phase * ticks + j + 1) / (phases * ticks));
    }
    // Phase i's ticks while `on` (the first query block): a product's (gemm's tick), and a pass's
    // over nk keys (the tile kernels' on_key, once per key, counted here). Always inlined: GCC
    // deletes a call whose only effect is prefetching (prefetch_rows).
    auto product(int64_t i, bool on) {
      return [this, i, on](int64_t b, int64_t ticks) __attribute__((always_inline)) {
        if (on) at(i, b, ticks);
      };
    }
    auto keys(int64_t i, int64_t nk, bool on) {
      return [this, i, nk, on, k = int64_t(0)](int64_t) mutable __attribute__((always_inline)) {
        if (on) at(i, k++, nk);
      };
    }
  };
  const Problem& P;
  int64_t row_bytes;
  std::vector<Stream> streams;
  Next next(int64_t seq) const {  // the rows of sequence seq (none when seq < 0)
    Next nx;
    if (seq < 0) return nx;
    nx.pf = this;
    for (size_t j = 0; j < streams.size(); ++j) nx.row0[j] = streams[j].x + P.base(seq, streams[j].rows);
    return nx;
  }
};

template <typename T>
void fwd_impl(const Problem& P, const at::Tensor& q_t, const at::Tensor& k_t, const at::Tensor& v_t, at::Tensor& o_t,
              at::Tensor& stats_t) {
  const int64_t d = P.d, dp = round_up(d, kV), Nq = P.Nq, Nk = P.Nk, Nkp = round_up(Nk, kV);
  const int64_t BM = block_rows(Nkp), BMp = round_up(BM, kV), Pw = P.stats_width();
  const bool staged = !in_place<T>(d);
  // On tiles (on_tiles), at issue 13's headline shape, the plain forward took a quarter less time
  // than on rows at T = 4 and 8 and 4-18% less at T = 16-64 (with the outputs streamed; before that
  // it was 2-5% slower past few keys), the mix forward half less at T = 4 and 8 and 7-18% at 16-64.
  const bool by_keys = on_tiles(P, BM);
  const bool q_gemm = by_keys && !few_keys(Nk);  // S^T = K Q^T as a product with a transposed Q
  const bool scaled = P.mode == kScale;
  const Rows qs = rows_of(q_t, P.frames), ks = rows_of(k_t, P.frames), vs = rows_of(v_t, P.frames);
  const Rows os = rows_of(o_t, P.frames), ss = rows_of(stats_t, P.frames);
  const T* q = q_t.const_data_ptr<T>();
  const T* k = k_t.const_data_ptr<T>();
  const T* v = v_t.const_data_ptr<T>();
  T* o = o_t.data_ptr<T>();
  float* stats = stats_t.data_ptr<float>();
  const bool o_stream = streams(o_t, staged);
  Prefetch<T> prefetch{P, static_cast<int64_t>(d * sizeof(T)), {{q, qs, Nq, false}, {k, ks, Nk, false}, {v, vs, Nk, false}}};
  if (!o_stream) prefetch.streams.push_back({o, os, Nq, true});
  // fwd_row's scratch (S, W, mj, tmp): for a block of rows on the row path, for one row on the tiles
  // (MIX's hard rows)
  const bool row_math = !by_keys || P.mode == kMix;
  const int64_t rows_w = by_keys ? 1 : BM;
  Deal(P.n_seq(), Nq * Nk * d).run([&](Deal::Cursor& deal) {
    Scratch w;
    float* Qf = w.take_if(staged, Nq * dp);
    float* Kf = w.take_if(staged, Nk * dp);
    float* Vf = w.take_if(staged, Nk * dp);
    float* Ob = w.take_if(staged, BM * dp);
    float* Kt = w.take_if(!by_keys, dp * Nkp);
    float* keyok = w.take(Nkp);
    float* S = w.take_if(row_math, rows_w * Nkp);
    float* W = w.take_if(row_math, rows_w * Nkp);
    float* mj = w.take_if(row_math, kMaxMasks * Nkp);
    float* tmp = w.take_if(row_math, Nkp);
    float* St = w.take_if(by_keys, Nk * BMp);
    float* lse = w.take_if(by_keys, Pw * BMp);
    BlockMasks masks(P, w.take_if(by_keys, BMp * Nk * P.p), w.take_if(by_keys && scaled, BMp * Nk));
    float* Qt = w.take_if(q_gemm, dp * BMp);
    for (int64_t seq; deal.take(seq);) {
      const auto next = prefetch.next(deal.ahead());
      typename Prefetch<T>::Drip drip{next, std::max(Nq, Nk), 3};  // S^T, the softmax, O
      const Seq sq = make_seq(P, seq, keyok, Nkp);
      const Mat Q = rows_in(q + P.base(seq, qs), qs.n, Nq, d, dp, Qf);
      const Mat K = rows_in(k + P.base(seq, ks), ks.n, Nk, d, dp, Kf);
      const Mat V = rows_in(v + P.base(seq, vs), vs.n, Nk, d, dp, Vf);
      const RowsOut<T> O{o + P.base(seq, os), os.n, d, dp, Ob, o_stream};
      if (by_keys) {
        for (int64_t i0 = 0; i0 < Nq; i0 += BM) {
          const int64_t bm = std::min(BM, Nq - i0);
          const auto tick = [&](int64_t i) { return drip.product(i, i0 == 0); };
          auto prefetch_key = drip.keys(1, Nk, i0 == 0);
          if (q_gemm) {  // St = S^T
            at::vec::transpose_mxn<float>(Q.row(i0), Q.ld, Qt, BMp, static_cast<int>(bm), static_cast<int>(d));
            gemm(K.p, K.ld, 1, Qt, BMp, Nk, d, round_up(bm, kV) / kV, Into{St, BMp, P.scale}, tick(0));
          } else {
            gemm_dots(Q.row(i0), Q.ld, K.p, K.ld, bm, Nk, dp, P.scale, St, 1, BMp);
          }
          // a query whose mask sums underflowed: its scores again as a row, through fwd_row
          const auto hard_row = [&](int64_t r) {
            gemm_dots(Q.row(i0 + r), Q.ld, K.p, K.ld, 1, Nk, dp, P.scale, S, 0, 1);
            float st[kMaxMasks];
            fwd_row(P, sq, i0 + r, S, keyok, mj, tmp, W, st, Nkp);
            for (int64_t k = 0; k < Nk; ++k) St[k * BMp + r] = W[k];
            for (int j = 0; j < Pw; ++j) lse[j * BMp + r] = st[j];
          };
          const float* vis = masks.at(i0, bm);
          if (P.mode == kMix) {
            softmax_keys<kMix>(P, sq, St, BMp, bm, keyok, i0, vis, nullptr, lse, prefetch_key, hard_row);
          } else if (scaled) {
            softmax_keys<kScale>(P, sq, St, BMp, bm, keyok, i0, vis, masks.weights(sq), lse, prefetch_key, hard_row);
          } else {
            softmax_keys<kNone>(P, sq, St, BMp, bm, keyok, i0, vis, nullptr, lse, prefetch_key, hard_row);
          }
          for (int64_t r = 0; r < bm; ++r) {
            float* st = stats + ss.at(sq.b, sq.l, sq.h, i0 + r);
            for (int j = 0; j < Pw; ++j) st[j] = lse[j * BMp + r];
          }
          gemm(St, 1, BMp, V.p, V.ld, bm, Nk, dp / kV, O.into(i0), tick(2));
          O.store(i0, bm);
        }
        drip.upto(drip.n);
        continue;
      }
      keys_for_scores(K, Nk, d, Kt, Nkp);
      for (int64_t i0 = 0; i0 < Nq; i0 += BM) {
        const int64_t bm = std::min(BM, Nq - i0);
        scores({Q.row(i0), Q.ld}, Kt, bm, d, Nkp, P.scale, S);
        float st[kMaxMasks];
        for (int64_t r = 0; r < bm; ++r) {
          drip.upto(i0 + r + 1);
          fwd_row(P, sq, i0 + r, S + r * Nkp, keyok, mj, tmp, W + r * Nkp, st, Nkp);
          std::memcpy(stats + ss.at(sq.b, sq.l, sq.h, i0 + r), st, Pw * sizeof(float));
        }
        gemm(W, Nkp, 1, V.p, V.ld, bm, Nk, dp / kV, O.into(i0));
        O.store(i0, bm);
      }
      drip.upto(drip.n);
    }
    stream_fence();
  });
}

template <typename T>
void bwd_impl(const Problem& P, const at::Tensor& do_t, const at::Tensor& q_t, const at::Tensor& k_t,
              const at::Tensor& v_t, const at::Tensor& stats_t, at::Tensor& dq_t, at::Tensor& dk_t, at::Tensor& dv_t,
              float* dalpha) {
  const int64_t d = P.d, dp = round_up(d, kV), Nq = P.Nq, Nk = P.Nk, Nkp = round_up(Nk, kV);
  const int64_t BM = block_rows(Nkp), BMp = round_up(BM, kV), Pw = P.stats_width();
  const bool staged = !in_place<T>(d);
  const Rows dos = rows_of(do_t, P.frames), qs = rows_of(q_t, P.frames), ks = rows_of(k_t, P.frames);
  const Rows vs = rows_of(v_t, P.frames), ss = rows_of(stats_t, P.frames);
  const Rows dqs = rows_of(dq_t, P.frames), dks = rows_of(dk_t, P.frames), dvs = rows_of(dv_t, P.frames);
  const T* g = do_t.const_data_ptr<T>();
  const T* q = q_t.const_data_ptr<T>();
  const T* k = k_t.const_data_ptr<T>();
  const T* v = v_t.const_data_ptr<T>();
  const float* stats = stats_t.const_data_ptr<float>();
  T* dq = dq_t.data_ptr<T>();
  T* dk = dk_t.data_ptr<T>();
  T* dv = dv_t.data_ptr<T>();
  // dk and dv are written once when one query block covers the sequence
  const bool dq_stream = streams(dq_t, staged), dk_stream = Nq <= BM && streams(dk_t, staged),
             dv_stream = Nq <= BM && streams(dv_t, staged);
  Prefetch<T> prefetch{
      P, static_cast<int64_t>(d * sizeof(T)), {{q, qs, Nq, false}, {g, dos, Nq, false}, {k, ks, Nk, false}, {v, vs, Nk, false}}};
  if (!dq_stream) prefetch.streams.push_back({dq, dqs, Nq, true});
  if (!dk_stream) prefetch.streams.push_back({dk, dks, Nk, true});
  if (!dv_stream) prefetch.streams.push_back({dv, dvs, Nk, true});
  // On tiles (on_tiles), at issue 13's headline shape, the mix and scale forward+backward took 22%
  // less time than on rows at T = 4 and 2-6% less at T = 16-64; the plain one (with the outputs
  // streamed) 12% less at T = 4 and 8, 7% at T = 16 and 1-3% at T = 32-64.
  const bool by_keys = on_tiles(P, BM);
  const bool q_gemm = by_keys && !few_keys(Nk);  // S^T = K Q^T and dP^T = V dO^T as products
  const bool scaled = P.mode == kScale;
  // bwd_row's scratch (S, DP, A, DS, mj, tmp), as in the forward
  const bool row_math = !by_keys || P.mode == kMix;
  const int64_t rows_w = by_keys ? 1 : BM;
  Deal(P.n_seq(), Nq * Nk * d).run([&](Deal::Cursor& deal) {
    Scratch w;
    float* Qf = w.take_if(staged, Nq * dp);
    float* dOf = w.take_if(staged, Nq * dp);
    float* Kf = w.take_if(staged, Nk * dp);
    float* Vf = w.take_if(staged, Nk * dp);
    float* dKf = w.take_if(staged, Nk * dp);
    float* dVf = w.take_if(staged, Nk * dp);
    float* dQb = w.take_if(staged, BM * dp);
    float* Kt = w.take_if(!by_keys, dp * Nkp);
    float* Vt = w.take_if(!by_keys, dp * Nkp);
    float* keyok = w.take(Nkp);
    float* S = w.take_if(row_math, rows_w * Nkp);
    float* DP = w.take_if(row_math, rows_w * Nkp);
    float* A = w.take_if(row_math, rows_w * Nkp);
    float* DS = w.take_if(row_math, rows_w * Nkp);
    float* mj = w.take_if(row_math, kMaxMasks * Nkp);
    float* tmp = w.take_if(row_math, Nkp);
    float* St = w.take_if(by_keys, Nk * BMp);
    float* DPt = w.take_if(by_keys, Nk * BMp);
    float* lse = w.take_if(by_keys, Pw * BMp);
    BlockMasks masks(P, w.take_if(by_keys, BMp * Nk * P.p), w.take_if(by_keys && scaled, BMp * Nk));
    float* Qt = w.take_if(q_gemm, dp * BMp);
    float* dOt = w.take_if(q_gemm, dp * BMp);
    float* Et = w.take_if(scaled, Nk * BMp);
    for (int64_t seq; deal.take(seq);) {
      const auto next = prefetch.next(deal.ahead());
      typename Prefetch<T>::Drip drip{next, std::max(Nq, Nk), 6};  // S^T, dP^T, the grads, dQ, dK, dV
      const Seq sq = make_seq(P, seq, keyok, Nkp);
      const Mat Q = rows_in(q + P.base(seq, qs), qs.n, Nq, d, dp, Qf);
      const Mat dO = rows_in(g + P.base(seq, dos), dos.n, Nq, d, dp, dOf);
      const Mat K = rows_in(k + P.base(seq, ks), ks.n, Nk, d, dp, Kf);
      const Mat V = rows_in(v + P.base(seq, vs), vs.n, Nk, d, dp, Vf);
      const RowsOut<T> dQ{dq + P.base(seq, dqs), dqs.n, d, dp, dQb, dq_stream};
      const RowsOut<T> dK{dk + P.base(seq, dks), dks.n, d, dp, dKf, dk_stream};
      const RowsOut<T> dV{dv + P.base(seq, dvs), dvs.n, d, dp, dVf, dv_stream};
      double da[kMaxMasks] = {0};
      for (int64_t i0 = 0; by_keys && i0 < Nq; i0 += BM) {
        const int64_t bm = std::min(BM, Nq - i0);
        const auto tick = [&](int64_t i) { return drip.product(i, i0 == 0); };
        auto prefetch_key = drip.keys(2, Nk, i0 == 0);
        if (q_gemm) {
          const int64_t nv = round_up(bm, kV) / kV;
          at::vec::transpose_mxn<float>(Q.row(i0), Q.ld, Qt, BMp, static_cast<int>(bm), static_cast<int>(d));
          at::vec::transpose_mxn<float>(dO.row(i0), dO.ld, dOt, BMp, static_cast<int>(bm), static_cast<int>(d));
          gemm(K.p, K.ld, 1, Qt, BMp, Nk, d, nv, Into{St, BMp, P.scale}, tick(0));
          gemm(V.p, V.ld, 1, dOt, BMp, Nk, d, nv, Into{DPt, BMp}, tick(1));
        } else {
          gemm_dots(Q.row(i0), Q.ld, K.p, K.ld, bm, Nk, dp, P.scale, St, 1, BMp);
          gemm_dots(dO.row(i0), dO.ld, V.p, V.ld, bm, Nk, dp, 1.f, DPt, 1, BMp);
        }
        for (int64_t r = 0; r < bm; ++r) {
          const float* st = stats + ss.at(sq.b, sq.l, sq.h, i0 + r);
          for (int j = 0; j < Pw; ++j) lse[j * BMp + r] = st[j];
        }
        const auto hard_row = [&](int64_t r) {  // a query whose mask sums underflowed, as a row
          const int64_t i = i0 + r;
          gemm_dots(Q.row(i), Q.ld, K.p, K.ld, 1, Nk, dp, P.scale, S, 0, 1);
          gemm_dots(dO.row(i), dO.ld, V.p, V.ld, 1, Nk, dp, 1.f, DP, 0, 1);
          bwd_row(P, sq, i, S, DP, keyok, mj, tmp, stats + ss.at(sq.b, sq.l, sq.h, i), A, DS, da, Nkp);
          for (int64_t k = 0; k < Nk; ++k) St[k * BMp + r] = A[k], DPt[k * BMp + r] = DS[k];
        };
        const float* vis = masks.at(i0, bm);
        if (scaled) {
          scale_grads_keys(P, sq, St, DPt, Et, BMp, bm, keyok, i0, vis, masks.weights(sq), lse, da, prefetch_key);
        } else if (P.mode == kMix) {
          grads_keys<kMix>(P, sq, St, DPt, BMp, bm, keyok, i0, vis, lse, da, prefetch_key, hard_row);
        } else {
          grads_keys<kNone>(P, sq, St, DPt, BMp, bm, keyok, i0, vis, lse, da, prefetch_key, hard_row);
        }
        // St = A^T, DPt = dS^T: dq = scale dS K; dk (+)= scale dS^T Q; dv (+)= A^T dO
        gemm(DPt, 1, BMp, K.p, K.ld, bm, Nk, dp / kV, dQ.into(i0, P.scale), tick(3));
        dQ.store(i0, bm);
        gemm(DPt, BMp, 1, Q.row(i0), Q.ld, Nk, bm, dp / kV, dK.into(0, P.scale, i0 > 0), tick(4));
        gemm(St, BMp, 1, dO.row(i0), dO.ld, Nk, bm, dp / kV, dV.into(0, 1.f, i0 > 0), tick(5));
      }
      if (!by_keys) {
        keys_for_scores(K, Nk, d, Kt, Nkp);
        keys_for_scores(V, Nk, d, Vt, Nkp);
      }
      for (int64_t i0 = 0; !by_keys && i0 < Nq; i0 += BM) {
        const int64_t bm = std::min(BM, Nq - i0);
        scores({Q.row(i0), Q.ld}, Kt, bm, d, Nkp, P.scale, S);
        scores({dO.row(i0), dO.ld}, Vt, bm, d, Nkp, 1.f, DP);
        for (int64_t r = 0; r < bm; ++r) {
          const int64_t i = i0 + r;
          drip.upto(i + 1);
          bwd_row(P, sq, i, S + r * Nkp, DP + r * Nkp, keyok, mj, tmp, stats + ss.at(sq.b, sq.l, sq.h, i), A + r * Nkp,
                  DS + r * Nkp, da, Nkp);
        }
        // dq = scale dS K; dk (+)= scale dS^T Q; dv (+)= A^T dO, summed over the query blocks in order
        gemm(DS, Nkp, 1, K.p, K.ld, bm, Nk, dp / kV, dQ.into(i0, P.scale));
        dQ.store(i0, bm);
        gemm(DS, 1, Nkp, Q.row(i0), Q.ld, Nk, bm, dp / kV, dK.into(0, P.scale, i0 > 0));
        gemm(A, 1, Nkp, dO.row(i0), dO.ld, Nk, bm, dp / kV, dV.into(0, 1.f, i0 > 0));
      }
      drip.upto(drip.n);
      dK.store(0, Nk);
      dV.store(0, Nk);
      for (int j = 0; j < P.p; ++j) dalpha[seq * P.p + j] = static_cast<float>(da[j]);
    }
    stream_fence();
  });
}

void check_rows(const char* name, const at::Tensor& x, const at::Tensor& q) {
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 4 && (x.stride(3) == 1 || x.size(3) == 1), name,
              ": expected a 4-d tensor with stride(-1) == 1, got strides ",
              x.strides());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), name, ": dtype ", x.scalar_type(), " differs from q's ",
              q.scalar_type());
}

}  // namespace

void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& stats,
                   const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& dense,
                   const std::optional<at::Tensor>& key_padding, const std::optional<at::Tensor>& frame_lengths,
                   int64_t frames, const std::vector<int64_t>& kinds, const std::vector<int64_t>& radii,
                   int64_t global_start, int64_t global_end, int64_t mode, double scale) {
  for (auto [name, t] : {std::pair{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}}) check_rows(name, *t, q);
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.dim() == 4 && stats.stride(3) == 1,
              "stats: expected float32 [.., P] with stride(-1) == 1");
  const Problem P = make_problem(q, k, alpha, dense, key_padding, frame_lengths, frames, kinds, radii, global_start,
                                 global_end, mode, scale);
  dispatch_float(q.scalar_type(), "attention_fwd", [&](auto t) { fwd_impl<decltype(t)>(P, q, k, v, out, stats); });
}

void attention_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& stats, const std::optional<at::Tensor>& alpha,
                   const std::optional<at::Tensor>& dense, const std::optional<at::Tensor>& key_padding,
                   const std::optional<at::Tensor>& frame_lengths, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                   const std::optional<at::Tensor>& dalpha, int64_t frames, const std::vector<int64_t>& kinds,
                   const std::vector<int64_t>& radii, int64_t global_start, int64_t global_end, int64_t mode,
                   double scale) {
  for (auto [name, t] : {std::pair{"grad_out", &grad_out}, {"q", &q}, {"k", &k}, {"v", &v}, {"dq", &dq}, {"dk", &dk},
                         {"dv", &dv}}) {
    check_rows(name, *t, q);
  }
  const Problem P = make_problem(q, k, alpha, dense, key_padding, frame_lengths, frames, kinds, radii, global_start,
                                 global_end, mode, scale);
  float* da = nullptr;
  if (P.p) {
    TORCH_CHECK(dalpha.has_value() && dalpha->scalar_type() == at::kFloat && dalpha->is_contiguous() &&
                    dalpha->numel() == P.n_seq() * P.p,
                "dalpha: expected contiguous float32 [B*L*H, p]");
    da = dalpha->data_ptr<float>();
  }
  dispatch_float(q.scalar_type(), "attention_bwd",
                 [&](auto t) { bwd_impl<decltype(t)>(P, grad_out, q, k, v, stats, dq, dk, dv, da); });
}

}  // namespace stquery::cpu
