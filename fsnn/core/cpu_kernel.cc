// The causal-prefix search of a layer on CPU: one XLA FFI custom call for a whole batch.
//
// The same walk as `fsnn.core.spike_time._causal_prefix` (see that module for the maths): per
// sample, sort the finite inputs by time, then advance every neuron's `B, D` one input at a time
// and keep the first prefix whose interval holds a threshold crossing. What native code adds over
// the XLA scan: a neuron that has fired is not tested again, the walk stops once every neuron has
// fired, and the peak test (a division and an exponential) runs only where a cheap upper bound of
// the membrane on the interval reaches threshold (`KappaMax`). Memory O(n_in + n_out) per sample;
// nothing of size n_in x n_out is written.
//
// Operands (leading batch axes from `jax.vmap(..., vmap_method="expand_dims")`, each either the
// output's size or 1): times [..., n_in], weights [..., n_in, n_out], tau_m, tau_s and theta_c =
// C (theta - E_l), each [..., 1] (shared by the layer) or [..., n_out] (tau_m and tau_s alike).
// Results [..., n_out]: fired, the crossing prefix's last input time, its B, D, and the peak (in
// the solver's variable: x for lambertw and root, q = exp(-x / tau_m) for quadratic).
// Built by `fsnn.core.cpu_kernel` with the system C++ compiler on first use.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Solver : int64_t { kLambertW = 0, kQuadratic = 1, kRoot = 2 };

// `fsnn.core.neuron.expm1_ratio` and `log1p_ratio`: the same Taylor branches and cut-offs.
template <typename T>
T SmallCut() {
  return sizeof(T) == 8 ? T(1e-4) : T(1e-2);
}

template <typename T>
T Expm1Ratio(T x) {
  if (std::abs(x) < SmallCut<T>()) return T(1) + x * (T(0.5) + x * (T(1) / T(6) + x / T(24)));
  return std::expm1(x) / x;
}

template <typename T>
T Log1pRatio(T x) {
  if (std::abs(x) < SmallCut<T>()) return T(1) - x * (T(0.5) - x * (T(1) / T(3) - x / T(4)));
  return std::log1p(x) / x;
}

// `fsnn.core.neuron.psp_kernel_unmasked` (finite s >= 0).
template <typename T>
T Psp(T s, T tau_m, T tau_s) {
  const T delta = T(1) / tau_s - T(1) / tau_m;
  const bool membrane_slower = delta >= 0;
  const T tau_slow = membrane_slower ? tau_m : tau_s;
  return s * std::exp(-s / tau_slow) * Expm1Ratio(s * (membrane_slower ? -delta : delta));
}

template <typename T>
T Clip(T x, T lo, T hi) {
  return std::min(std::max(x, lo), hi);
}

// Per-input factors of the recurrence B' = a B + w, D' = b D + g B (`_decays`), for a gap >= 0.
// The closed-form ratios need one exponential (lambertw: tau_m = tau_s) or two (quadratic: tau_m
// = 2 tau_s, kappa = tau_m q (1 - q) with q = e^{-gap/tau_m}); any other ratio three and expm1.
template <typename T>
struct Decays {
  T a, b, g;
  Decays(int64_t solver, T gap, T tau_m, T tau_s) {
    if (solver == kLambertW) {
      a = b = std::exp(-gap / tau_s);
      g = gap * a;
    } else if (solver == kQuadratic) {
      b = std::exp(-gap / tau_m);
      a = b * b;
      g = -tau_m * b * std::expm1(-gap / tau_m);
    } else {
      a = std::exp(-gap / tau_s);
      b = std::exp(-gap / tau_m);
      g = Psp(gap, tau_m, tau_s);
    }
  }
};

// `_peak` followed by the crossing test: whether U reaches theta on [0, span] (B > 0 checked by
// the caller); writes the peak's place. Returns early, without the exponential, where the bound
// U <= D + B x (lambertw) or U <= D + tau_m B (quadratic) stays below theta: the bound is the
// same floating-point expression as the one U multiplies by a factor in (0, 1], so the result is
// the same as computing U.
template <typename T>
bool Crosses(int64_t solver, T b, T d, T span, T tau_m, T tau_s, T theta, T* peak) {
  if (solver == kLambertW) {
    const T x = Clip(tau_s - d / b, T(0), span);
    const T linear = d + b * x;
    if (linear < theta) return false;
    *peak = x;
    return std::exp(-x / tau_s) * linear >= theta;
  }
  if (solver == kQuadratic) {
    const T a1 = tau_m * b;
    const T a2 = d + a1;
    if (a2 < theta) return false;
    const T q = Clip((b + d / tau_m) / (T(2) * b), std::exp(-span / tau_m), T(1));
    *peak = q;
    return a2 * q - a1 * q * q >= theta;
  }
  const T delta = T(1) / tau_s - T(1) / tau_m;
  const T ratio = d * delta / b;
  T x;
  if (ratio > T(-1)) {
    x = tau_s * Log1pRatio(tau_s / tau_m - T(1)) - d / b * Log1pRatio(ratio);
  } else {
    x = b - d / tau_m > 0 ? std::numeric_limits<T>::infinity() : T(0);
  }
  x = Clip(x, T(0), span);
  *peak = x;
  if (std::isinf(x)) return T(0) >= theta;
  const T u = d * std::exp(-x / tau_m) + b * Psp(x, tau_m, tau_s);
  return u >= theta;
}

// A neuron is a candidate for the full peak test on an input's interval [0, span] only if an
// upper bound of U there reaches threshold: kappa(x) <= x (kappa' <= 1) and kappa <= kappa_max,
// so U(x) = D e^{-x/tau_m} + B kappa(x) <= max(D, 0) + B min(span, kappa_max) for B > 0. With
// many inputs the spans are short and the bound tight: almost every test ends here. The bound
// has no division or exponential, so the pass over all neurons vectorises; the threshold it is
// compared with is lowered by 16 ulps so that rounding never prunes a crossing the full test
// would find.
template <typename T>
T KappaMax(T tau_m, T tau_s) {
  return Psp(tau_s * Log1pRatio(tau_s / tau_m - T(1)), tau_m, tau_s);  // at the kernel's maximum
}

// Sorting a sample's finite inputs by time, ties by index (the order of a stable sort). A
// comparison sort of ~100 random times spends most of its time in mispredicted branches, so wider
// rows take an LSD radix sort on the times' bits (8-bit digits, stable, passes whose digit is the
// same for every input skipped: the exponent bits of times in a narrow range).
template <typename T>
struct SortKey {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  // Unsigned integers in the order of the floats (-0.0 as 0.0; no nan: those are silent).
  static Bits Of(T t) {
    Bits bits;
    const T zero_safe = t == T(0) ? T(0) : t;
    std::memcpy(&bits, &zero_safe, sizeof(T));
    const Bits sign = Bits(1) << (8 * sizeof(T) - 1);
    return (bits & sign) ? ~bits : bits | sign;
  }
};

template <typename T>
class InputSorter {
 public:
  using Bits = typename SortKey<T>::Bits;
  static constexpr int kDigits = sizeof(T);

  // The finite inputs of `times` by time: (time, index) pairs into `out`.
  void Sort(const T* times, int64_t n_in, std::vector<std::pair<T, int64_t>>& out) {
    keys_.clear();
    index_.clear();
    for (int64_t i = 0; i < n_in; ++i) {
      if (std::isfinite(times[i])) {
        keys_.push_back(SortKey<T>::Of(times[i]));
        index_.push_back(static_cast<int64_t>(i));
      }
    }
    const size_t m = keys_.size();
    if (m <= 32) {  // insertion sort: stable
      for (size_t a = 1; a < m; ++a) {
        const Bits key = keys_[a];
        const int64_t i = index_[a];
        size_t b = a;
        for (; b > 0 && keys_[b - 1] > key; --b) {
          keys_[b] = keys_[b - 1];
          index_[b] = index_[b - 1];
        }
        keys_[b] = key;
        index_[b] = i;
      }
    } else {
      Radix(m);
    }
    out.resize(m);
    for (size_t a = 0; a < m; ++a) out[a] = {times[index_[a]], index_[a]};
  }

 private:
  void Radix(size_t m) {
    uint32_t counts[kDigits][256] = {};
    for (size_t a = 0; a < m; ++a) {
      for (int digit = 0; digit < kDigits; ++digit) ++counts[digit][(keys_[a] >> (8 * digit)) & 0xff];
    }
    keys_tmp_.resize(m);
    index_tmp_.resize(m);
    for (int digit = 0; digit < kDigits; ++digit) {
      uint32_t* count = counts[digit];
      if (count[(keys_[0] >> (8 * digit)) & 0xff] == m) continue;  // one value: nothing moves
      uint32_t offset = 0;
      for (int v = 0; v < 256; ++v) {
        const uint32_t c = count[v];
        count[v] = offset;
        offset += c;
      }
      for (size_t a = 0; a < m; ++a) {
        const uint32_t to = count[(keys_[a] >> (8 * digit)) & 0xff]++;
        keys_tmp_[to] = keys_[a];
        index_tmp_[to] = index_[a];
      }
      keys_.swap(keys_tmp_);
      index_.swap(index_tmp_);
    }
  }

  std::vector<Bits> keys_, keys_tmp_;
  std::vector<int64_t> index_, index_tmp_;
};

// Per-neuron values of one sample (each [n_out], from shared or per-neuron operands).
template <typename T>
struct Neurons {
  std::vector<T> tau_m, tau_s, theta, theta_low, kappa_max, a, b, g;
  std::vector<uint8_t> live, candidate;
  explicit Neurons(int64_t n_out)
      : tau_m(n_out), tau_s(n_out), theta(n_out), theta_low(n_out), kappa_max(n_out), a(n_out), b(n_out),
        g(n_out), live(n_out), candidate(n_out) {}
};

// B, D after one more input for every neuron, and which neurons are candidates (see `KappaMax`).
// `kShared`: one tau_m, tau_s for the layer, so the decays are the same for all neurons.
template <typename T, bool kShared>
bool Advance(int64_t n_out, T span, const T* __restrict row, Neurons<T>& n, T* __restrict big_b, T* __restrict big_d) {
  const T* __restrict a = n.a.data();
  const T* __restrict decay = n.b.data();
  const T* __restrict g = n.g.data();
  const T* __restrict kappa_max = n.kappa_max.data();
  const T* __restrict theta_low = n.theta_low.data();
  const uint8_t* __restrict live = n.live.data();
  uint8_t* __restrict candidate = n.candidate.data();
  int any = 0;
  for (int64_t j = 0; j < n_out; ++j) {
    const T b_old = big_b[j];
    const T b = (kShared ? a[0] : a[j]) * b_old + row[j];
    const T d = (kShared ? decay[0] : decay[j]) * big_d[j] + (kShared ? g[0] : g[j]) * b_old;
    big_b[j] = b;
    big_d[j] = d;
    const T bound = (d > T(0) ? d : T(0)) + b * (span < kappa_max[j] ? span : kappa_max[j]);
    const int c = live[j] & static_cast<int>(b > T(0)) & static_cast<int>(bound >= theta_low[j]);
    candidate[j] = static_cast<uint8_t>(c);
    any |= c;
  }
  return any != 0;
}

// One sample. `sorter`, `order`, `big_b`, `big_d` are scratch; `n` holds the sample's neurons.
template <typename T>
void Walk(int64_t solver, int64_t n_in, int64_t n_out, const T* times, const T* w, bool tau_shared, Neurons<T>& n,
          bool* fired, T* t_k, T* b_k, T* d_k, T* peak, InputSorter<T>& sorter,
          std::vector<std::pair<T, int64_t>>& order, std::vector<T>& big_b, std::vector<T>& big_d) {
  sorter.Sort(times, n_in, order);
  std::fill(fired, fired + n_out, false);
  std::fill(t_k, t_k + n_out, T(0));
  std::fill(b_k, b_k + n_out, T(0));
  std::fill(d_k, d_k + n_out, T(0));
  std::fill(peak, peak + n_out, T(0));
  std::fill(big_b.begin(), big_b.end(), T(0));
  std::fill(big_d.begin(), big_d.end(), T(0));
  std::fill(n.live.begin(), n.live.end(), uint8_t(1));
  const T inf = std::numeric_limits<T>::infinity();
  const int64_t m = static_cast<int64_t>(order.size());
  int64_t silent = n_out;
  for (int64_t k = 0; k < m && silent > 0; ++k) {
    const T t = order[k].first;
    const T gap = k == 0 ? T(0) : t - order[k - 1].first;
    const T span = k + 1 < m ? order[k + 1].first - t : inf;
    const T* row = w + order[k].second * n_out;
    for (int64_t j = 0; j < (tau_shared ? 1 : n_out); ++j) {
      const Decays<T> decays(solver, gap, n.tau_m[j], n.tau_s[j]);
      n.a[j] = decays.a;
      n.b[j] = decays.b;
      n.g[j] = decays.g;
    }
    const bool any = tau_shared ? Advance<T, true>(n_out, span, row, n, big_b.data(), big_d.data())
                                : Advance<T, false>(n_out, span, row, n, big_b.data(), big_d.data());
    if (!any) continue;
    for (int64_t j = 0; j < n_out; ++j) {
      T x = 0;
      if (n.candidate[j] && Crosses(solver, big_b[j], big_d[j], span, n.tau_m[j], n.tau_s[j], n.theta[j], &x)) {
        fired[j] = true;
        n.live[j] = 0;
        t_k[j] = t;
        b_k[j] = big_b[j];
        d_k[j] = big_d[j];
        peak[j] = x;
        --silent;
      }
    }
  }
}

// Element offsets of a batch index in an operand whose leading axes are the batch's or 1.
struct Broadcast {
  std::vector<int64_t> strides;  // per leading axis; 0 where the operand's size is 1
  Broadcast(ffi::Span<const int64_t> dims, int64_t leading) : strides(leading) {
    int64_t stride = 1;
    for (int64_t a = static_cast<int64_t>(dims.size()) - 1; a >= 0; --a) {
      if (a < leading) strides[a] = dims[a] == 1 ? 0 : stride;
      stride *= dims[a];
    }
  }
  int64_t Offset(const std::vector<int64_t>& index) const {
    int64_t offset = 0;
    for (size_t a = 0; a < index.size(); ++a) offset += index[a] * strides[a];
    return offset;
  }
};

template <ffi::DataType D>
ffi::Error Search(ffi::Buffer<D> times, ffi::Buffer<D> weights, ffi::Buffer<D> tau_m, ffi::Buffer<D> tau_s,
                  ffi::Buffer<D> theta, int64_t solver, ffi::ResultBuffer<ffi::PRED> fired,
                  ffi::ResultBuffer<D> t_k, ffi::ResultBuffer<D> b_k, ffi::ResultBuffer<D> d_k,
                  ffi::ResultBuffer<D> peak) {
  using T = ffi::NativeType<D>;
  const auto out_dims = fired->dimensions();
  const int64_t leading = static_cast<int64_t>(out_dims.size()) - 1;
  const auto w_dims = weights.dimensions();
  if (leading < 0 || static_cast<int64_t>(w_dims.size()) != leading + 2 ||
      static_cast<int64_t>(times.dimensions().size()) != leading + 1) {
    return ffi::Error::InvalidArgument("fsnn causal prefix: operand ranks do not match the results");
  }
  if (solver < kLambertW || solver > kRoot) return ffi::Error::InvalidArgument("fsnn causal prefix: unknown solver");
  const int64_t n_in = w_dims[leading];
  const int64_t n_out = w_dims[leading + 1];
  const bool tau_shared = tau_m.dimensions()[leading] == 1;  // tau_s has the same shape
  const bool theta_shared = theta.dimensions()[leading] == 1;
  const Broadcast b_times(times.dimensions(), leading), b_w(w_dims, leading), b_tau_m(tau_m.dimensions(), leading),
      b_tau_s(tau_s.dimensions(), leading), b_theta(theta.dimensions(), leading), b_out(out_dims, leading);
  int64_t batch = 1;
  for (int64_t a = 0; a < leading; ++a) batch *= out_dims[a];
  std::vector<int64_t> index(leading, 0);
  std::vector<std::pair<T, int64_t>> order;
  order.reserve(n_in);
  InputSorter<T> sorter;
  std::vector<T> big_b(n_out), big_d(n_out);
  Neurons<T> neurons(n_out);
  const T low = T(1) - T(16) * std::numeric_limits<T>::epsilon();
  const T *last_tm = nullptr, *last_ts = nullptr, *last_th = nullptr;
  for (int64_t s = 0; s < batch; ++s) {
    const T* tm = tau_m.typed_data() + b_tau_m.Offset(index);
    const T* ts = tau_s.typed_data() + b_tau_s.Offset(index);
    const T* th = theta.typed_data() + b_theta.Offset(index);
    const bool same = tm == last_tm && ts == last_ts && th == last_th;  // parameters shared by the batch
    last_tm = tm, last_ts = ts, last_th = th;
    for (int64_t j = 0; j < (same ? 0 : n_out); ++j) {
      neurons.tau_m[j] = tm[tau_shared ? 0 : j];
      neurons.tau_s[j] = ts[tau_shared ? 0 : j];
      neurons.theta[j] = th[theta_shared ? 0 : j];
      neurons.theta_low[j] = neurons.theta[j] * low;
      neurons.kappa_max[j] = KappaMax(neurons.tau_m[j], neurons.tau_s[j]);
    }
    const int64_t out = b_out.Offset(index);
    Walk<T>(solver, n_in, n_out, times.typed_data() + b_times.Offset(index), weights.typed_data() + b_w.Offset(index),
            tau_shared, neurons, fired->typed_data() + out, t_k->typed_data() + out, b_k->typed_data() + out,
            d_k->typed_data() + out, peak->typed_data() + out, sorter, order, big_b, big_d);
    for (int64_t a = leading - 1; a >= 0; --a) {  // next batch index
      if (++index[a] < out_dims[a]) break;
      index[a] = 0;
    }
  }
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto Binding() {
  return ffi::Ffi::Bind()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("solver")
      .template Ret<ffi::Buffer<ffi::PRED>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnCausalPrefixF32, Search<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnCausalPrefixF64, Search<ffi::F64>, Binding<ffi::F64>());
