// LinVT-style top-k token selection, gating and fused multi-scale pooling on the CPU (docs/ops.md §2.4).
//
// Selection: one task per row; nth_element / partial_sort of the indices under the total order
// "higher score first, then lower index" (the reference's stable descending sort; -0.0 ties +0.0).
// Gather + gate: gates of the k selected scores (float32) per row, then one task per block of
// selected tokens reads each selected x row once and adds it, gated, into the window means of every
// scale (pool/pool_cpu.h; no scales: windows of one). Backward: per row, the pooled gradient of each
// selected token, dx = dy * g at the selected rows (zero elsewhere, written in the same pass),
// dg = dy . x, dscores through the gate. Fixed summation orders: results do not depend on the
// thread count.
#include "topk/topk_cpu.h"

#include <ATen/Parallel.h>

#include <numeric>

#include "common/cpu_math.h"
#include "pool/pool_cpu.h"

namespace stquery::cpu {
namespace {

enum class Gate { kNone, kSigmoid, kSoftmax, kIdentity };

Gate gate_of(const std::string& g) {
  if (g == "none") return Gate::kNone;
  if (g == "sigmoid") return Gate::kSigmoid;
  if (g == "softmax") return Gate::kSoftmax;
  TORCH_CHECK(g == "identity", "gate: expected none, sigmoid, softmax or identity, got ", g);
  return Gate::kIdentity;
}

template <typename S>
void select_impl(const at::Tensor& scores_t, int64_t k, bool time_order, at::Tensor& idx_t) {
  const int64_t B = scores_t.size(0), N = scores_t.size(1);
  const S* scores = scores_t.const_data_ptr<S>();
  int64_t* idx = idx_t.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(N);
    std::vector<int64_t> order(N);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t n = 0; n < N; ++n) s[n] = static_cast<float>(scores[b * scores_t.stride(0) + n * scores_t.stride(1)]);
      std::iota(order.begin(), order.end(), 0);
      const auto before = [&](int64_t i, int64_t j) { return s[i] > s[j] || (s[i] == s[j] && i < j); };
      if (time_order) {
        if (k < N) std::nth_element(order.begin(), order.begin() + k, order.end(), before);
        std::sort(order.begin(), order.begin() + k);
      } else {
        std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      }
      std::copy(order.begin(), order.begin() + k, idx + b * idx_t.stride(0));
    }
  });
}

// g[i] = gate(scores[b, idx[b, i]]) for the k selected of row b (float32); returns false for no gate.
template <typename S>
bool gates(Gate gate, const S* scores_row, int64_t s_stride, const int64_t* idx_row, int64_t k, float* g) {
  if (gate == Gate::kNone) return false;
  for (int64_t i = 0; i < k; ++i) g[i] = static_cast<float>(scores_row[idx_row[i] * s_stride]);
  if (gate == Gate::kSigmoid) {
    for (int64_t i = 0; i < k; ++i) g[i] = 1.f / (1.f + std::exp(-g[i]));
  } else if (gate == Gate::kSoftmax) {
    const float m = *std::max_element(g, g + k);
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) sum += (g[i] = std::exp(g[i] - m));
    for (int64_t i = 0; i < k; ++i) g[i] = static_cast<float>(g[i] / sum);
  }
  return true;
}

// sum_c a[c] * b[c] over n floats (no padding): kV partial sums, then the tail, in a fixed order.
inline float dot_row(const float* a, const float* b, int64_t n) {
  Vec acc(0.f);
  int64_t c = 0;
  for (; c + kV <= n; c += kV) acc = at::vec::fmadd(Vec::loadu(a + c), Vec::loadu(b + c), acc);
  float sum = hsum(acc);
  for (; c < n; ++c) sum = std::fma(a[c], b[c], sum);
  return sum;
}

// scales for the gather: none means one output row per selected token, a window of one.
std::vector<int64_t> windows_of(const std::vector<int64_t>& scales) {
  return scales.empty() ? std::vector<int64_t>{1} : scales;
}

// Gates of the k selected (float32), then pool_windows: each selected x row read once, gated and
// added into the window means of every scale.
template <typename T>
void gather_fwd_impl(const at::Tensor& x_t, const at::Tensor& scores_t, const at::Tensor& idx_t, Gate gate,
                     const std::vector<int64_t>& scales, at::Tensor& y_t) {
  const int64_t B = x_t.size(0), C = x_t.size(2), k = idx_t.size(1);
  const T* x = x_t.const_data_ptr<T>();
  const T* scores = scores_t.const_data_ptr<T>();
  const int64_t* idx = idx_t.const_data_ptr<int64_t>();
  std::vector<float> g_all(B * k);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (!gates(gate, scores + b * scores_t.stride(0), scores_t.stride(1), idx + b * idx_t.stride(0), k,
                 g_all.data() + b * k)) {
        std::fill(g_all.begin() + b * k, g_all.begin() + (b + 1) * k, 1.f);
      }
    }
  });
  pool_windows(B, k, scales, C, y_t.data_ptr<T>(), y_t.stride(0), y_t.stride(1), [&](int64_t b, int64_t i) {
    return std::pair(x + b * x_t.stride(0) + idx[b * idx_t.stride(0) + i] * x_t.stride(1), g_all[b * k + i]);
  });
}

template <typename T>
void gather_bwd_impl(const at::Tensor& gy_t, const at::Tensor& x_t, const at::Tensor& scores_t,
                     const at::Tensor& idx_t, Gate gate, const std::vector<int64_t>& scales, at::Tensor& dx_t,
                     T* dscores, int64_t sds0, int64_t sds1) {
  const int64_t B = x_t.size(0), N = x_t.size(1), C = x_t.size(2), k = idx_t.size(1);
  const T* gy = gy_t.const_data_ptr<T>();
  const T* x = x_t.const_data_ptr<T>();
  const T* scores = scores_t.const_data_ptr<T>();
  const int64_t* idx = idx_t.const_data_ptr<int64_t>();
  T* dx = dx_t.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> g(k), dg(k), dy(C), stage(C);
    std::vector<int64_t> slot(N);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t* idx_row = idx + b * idx_t.stride(0);
      const bool gated = gates(gate, scores + b * scores_t.stride(0), scores_t.stride(1), idx_row, k, g.data());
      std::fill(slot.begin(), slot.end(), -1);
      for (int64_t i = 0; i < k; ++i) slot[idx_row[i]] = i;
      for (int64_t n = 0; n < N; ++n) {
        T* dx_row = dx + b * dx_t.stride(0) + n * dx_t.stride(1);
        const int64_t i = slot[n];
        if (i < 0) {
          std::memset(dx_row, 0, C * sizeof(T));  // all-zero bits: +0 in every float type
          continue;
        }
        window_grad(gy + b * gy_t.stride(0), gy_t.stride(1), i, k, scales, C, stage.data(), dy.data());
        if (gated) {
          dg[i] = dot_row(dy.data(), as_float(x + b * x_t.stride(0) + n * x_t.stride(1), stage.data(), C), C);
        }
        store_row(dy.data(), dx_row, C, gated ? g[i] : 1.f);
      }
      if (!gated) continue;
      T* ds = dscores + b * sds0;
      for (int64_t n = 0; n < N; ++n) ds[n * sds1] = T(0.f);
      double gdg = 0.0;
      if (gate == Gate::kSoftmax) {
        for (int64_t i = 0; i < k; ++i) gdg += static_cast<double>(g[i]) * dg[i];
      }
      for (int64_t i = 0; i < k; ++i) {
        float v = dg[i];
        if (gate == Gate::kSigmoid) v = dg[i] * g[i] * (1.f - g[i]);
        if (gate == Gate::kSoftmax) v = static_cast<float>(g[i] * (dg[i] - gdg));
        ds[idx_row[i] * sds1] = static_cast<T>(v);
      }
    }
  });
}

}  // namespace

void topk_select(const at::Tensor& scores, int64_t k, const std::string& order, at::Tensor& idx) {
  TORCH_CHECK(scores.dim() == 2 && k >= 1 && k <= scores.size(1), "scores: expected [B, N] with 1 <= k <= N");
  TORCH_CHECK(order == "time" || order == "score", "order: expected time or score, got ", order);
  dispatch_float(scores.scalar_type(), "topk_select",
                 [&](auto t) { select_impl<decltype(t)>(scores, k, order == "time", idx); });
}

void gather_gate_fwd(const at::Tensor& x, const at::Tensor& scores, const at::Tensor& idx, const std::string& gate,
                     const std::vector<int64_t>& scales, at::Tensor& y) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "x: expected [B, N, C] with stride(-1) == 1");
  TORCH_CHECK(scores.scalar_type() == x.scalar_type(), "scores: expected the dtype of x");
  const Gate g = gate_of(gate);
  dispatch_float(x.scalar_type(), "gather_gate",
                 [&](auto t) { gather_fwd_impl<decltype(t)>(x, scores, idx, g, windows_of(scales), y); });
}

void gather_gate_bwd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scores, const at::Tensor& idx,
                     const std::string& gate, const std::vector<int64_t>& scales, at::Tensor& dx,
                     const std::optional<at::Tensor>& dscores) {
  TORCH_CHECK(grad_y.stride(2) == 1 && x.stride(2) == 1, "gather_gate_bwd: the last dims must be contiguous");
  const Gate g = gate_of(gate);
  TORCH_CHECK(g == Gate::kNone || dscores.has_value(), "dscores: required with a gate");
  dispatch_float(x.scalar_type(), "gather_gate_bwd", [&](auto t) {
    using T = decltype(t);
    T* ds = dscores.has_value() ? dscores->data_ptr<T>() : nullptr;
    const int64_t s0 = dscores.has_value() ? dscores->stride(0) : 0, s1 = dscores.has_value() ? dscores->stride(1) : 0;
    gather_bwd_impl<T>(grad_y, x, scores, idx, g, windows_of(scales), dx, ds, s0, s1);
  });
}

}  // namespace stquery::cpu
