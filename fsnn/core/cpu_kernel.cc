// The causal-prefix search of a layer on CPU: one XLA FFI custom call for a whole batch (and, at the
// end of this file, `LayerVjp`: the layer's backward pass for first-order training, `fsnn.core.batch_grad`).
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
// Samples are independent: a batch is split over XLA's intra-op threads (`ParallelFor`).
// Built by `fsnn.core.cpu_kernel` with the system C++ compiler on first use.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Solver : int64_t { kLambertW = 0, kQuadratic = 1, kRoot = 2 };

// `body(solver)` with the solver as a compile-time constant (std::integral_constant): the loops
// over inputs or neurons then vectorise.
template <typename Body>
auto WithSolver(int64_t solver, const Body& body) {
  switch (solver) {
    case kLambertW:
      return body(std::integral_constant<int64_t, kLambertW>{});
    case kQuadratic:
      return body(std::integral_constant<int64_t, kQuadratic>{});
    default:
      return body(std::integral_constant<int64_t, kRoot>{});
  }
}

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

// exp(x) for x <= 0 (0 below the smallest normal float's exponent) without a library call, so
// that a loop over many values vectorises: round x / ln 2 to n by adding and subtracting 1.5 2^p
// (p = mantissa bits), a polynomial on the remainder |r| <= ln 2 / 2 (Cephes' for float, Taylor to
// r^12 for double: both within ~1 ulp) and 2^n from the exponent bits.
[[gnu::always_inline]] inline float ExpNonPositive(float x) {
  const bool under = x < -87.0f;
  x = under ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.0f : y * scale;
}

[[gnu::always_inline]] inline double ExpNonPositive(double x) {
  const bool under = x < -708.0;
  x = under ? -708.0 : x;
  const double shifted = x * 1.4426950408889634 + 6755399441055744.0;  // n in its low mantissa bits
  const double n = shifted - 6755399441055744.0;
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 479001600.0;
  for (const double c : {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                         1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0}) {
    p = p * r + c;
  }
  // 2^n from the bits of `shifted` (whose low 12 bits are those of n), not from a conversion of n:
  // AVX2 has none from double to a 64-bit integer, and this way the loops over it vectorise.
  uint64_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.0 : p * scale;
}

// kappa(s) for any ratio (finite s >= 0), with e_s = e^{-s/tau_s} and e_m = e^{-s/tau_m}, without a
// library call, so that loops over it vectorise. With the slower decay `slow`, the faster `fast`
// and x = -s |1/tau_s - 1/tau_m|, `Psp` is s slow expm1(x) / x = (slow - fast) / |delta|, taken as
// the difference where x <= -1/2 (1 - e^x >= 0.39: at most 2 bits lost) and as the Taylor series
// of expm1(x) / x above (to x^9 / 10! for float, x^16 / 17! for double: below an ulp). Within a few
// ulp of `Psp`.
template <typename T>
[[gnu::always_inline]] inline T RootKernel(T s, T inv_tau_m, T inv_tau_s, T& e_s, T& e_m) {
  e_s = ExpNonPositive(-s * inv_tau_s);
  e_m = ExpNonPositive(-s * inv_tau_m);
  const T delta = inv_tau_s - inv_tau_m;
  const T slow = delta >= T(0) ? e_m : e_s, fast = delta >= T(0) ? e_s : e_m;
  const T rate = std::abs(delta), x = -s * rate;
  const bool small = x > T(-0.5);
  T p = T(1);
  for (int n = sizeof(T) == 8 ? 16 : 9; n >= 1; --n) p = T(1) + p * (small ? x : T(0)) * (T(1) / T(n + 1));
  return small ? s * slow * p : (slow - fast) / (small ? T(1) : rate);
}

// Per-input factors of the recurrence B' = a B + w, D' = b D + g B (`_decays`), for a gap >= 0,
// from the inverse time constants, without a library call, so that a loop with a constant
// `solver` vectorises. The closed-form ratios need one exponential (lambertw: tau_m = tau_s;
// quadratic: tau_m = 2 tau_s, kappa = tau_m q (1 - q) with q = e^{-gap/tau_m}); any other ratio
// two (`RootKernel`).
template <typename T>
struct Decays {
  T a, b, g;
  Decays(int64_t solver, T gap, T tau_m, T inv_tau_m, T inv_tau_s) {
    if (solver == kLambertW) {
      a = b = ExpNonPositive(-gap * inv_tau_s);
      g = gap * a;
    } else if (solver == kQuadratic) {
      b = ExpNonPositive(-gap * inv_tau_m);
      a = b * b;
      g = tau_m * b * (T(1) - b);
    } else {
      g = RootKernel(gap, inv_tau_m, inv_tau_s, a, b);
    }
  }
};

// log(y) for finite normal y > 0 without a library call (vectorises): y = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its series
// (to s^11 for float, s^23 for double: below an ulp), ln 2 in two parts.
template <typename T>
[[gnu::always_inline]] inline T LogPositive(T y) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  constexpr int kMantissa = sizeof(T) == 8 ? 52 : 23;
  constexpr Bits kBias = sizeof(T) == 8 ? 1023 : 127;
  Bits bits;
  std::memcpy(&bits, &y, sizeof(T));
  const Bits mantissa_bits = (bits & ((Bits(1) << kMantissa) - 1)) | (kBias << kMantissa);
  T m;
  std::memcpy(&m, &mantissa_bits, sizeof(T));
  // The biased exponent as a float without an integer conversion (none for 64 bits in AVX2):
  // its bits under those of 2^kMantissa, which is then subtracted.
  const Bits magic_bits = (bits >> kMantissa) | ((kBias + kMantissa) << kMantissa);
  T e;
  std::memcpy(&e, &magic_bits, sizeof(T));
  e -= T(Bits(1) << kMantissa) + T(kBias);
  const bool high = m > T(1.4142135623730951);
  m = high ? m * T(0.5) : m;
  e = high ? e + T(1) : e;
  const T s = (m - T(1)) / (m + T(1)), s2 = s * s;
  constexpr int kTerms = sizeof(T) == 8 ? 12 : 6;  // s^(2k+1) / (2k+1), k < kTerms
  T p = T(1) / T(2 * kTerms - 1);
  for (int k = kTerms - 2; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
  return e * T(0.693145751953125) + (e * T(1.4286068203094172321e-6) + T(2) * s * p);
}

// `Log1pRatio` without a library call: log1p(x) / x = log(1 + x) / ((1 + x) - 1) away from 0
// (Kahan's rounding-exact form), the same Taylor branch near it; x > -1.
template <typename T>
[[gnu::always_inline]] inline T Log1pRatioFast(T x) {
  const T y = T(1) + x;
  const T z = y - T(1);
  const bool small = std::abs(x) < SmallCut<T>();
  const T taylor = T(1) - x * (T(0.5) - x * (T(1) / T(3) - x / T(4)));
  return small ? taylor : LogPositive(small ? T(1) : y) / (small ? T(1) : z);
}

// `_peak` and the crossing test for any ratio (B > 0): whether U reaches theta on [0, span], and
// the peak's place. `x_kernel` = tau_s Log1pRatio(tau_s / tau_m - 1), where kappa peaks (D = 0).
// Branch-free and without library calls, so that `CrossesAll` vectorises over the neurons.
template <typename T>
[[gnu::always_inline]] inline bool CrossesRoot(T b, T d, T span, T inv_tau_m, T inv_tau_s, T x_kernel, T theta, T* peak) {
  const T ratio = d * (inv_tau_s - inv_tau_m) / b;
  const bool stationary = ratio > T(-1);
  const T x_star = x_kernel - d / b * Log1pRatioFast(stationary ? ratio : T(0));
  const bool rising = b - d * inv_tau_m > T(0);
  const T inf = std::numeric_limits<T>::infinity();
  const T x = Clip(stationary ? x_star : (rising ? inf : T(0)), T(0), span);
  *peak = x;
  const bool at_inf = x == inf;
  T e_s, e_m;
  const T kappa = RootKernel(at_inf ? T(0) : x, inv_tau_m, inv_tau_s, e_s, e_m);
  return (at_inf ? T(0) : d * e_m + b * kappa) >= theta;  // U -> 0 as x -> inf
}

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
  return CrossesRoot(b, d, span, T(1) / tau_m, T(1) / tau_s, tau_s * Log1pRatio(tau_s / tau_m - T(1)), theta, peak);
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
// comparison sort of ~100 random times spends most of its time in mispredicted branches. Here:
// a counting sort into m buckets of equal width over [min, max] (stable, no comparisons), then an
// insertion sort that only undoes the order within buckets: O(m) for times spread over an
// interval. Where that takes too many moves (times clustered inside a few buckets), an LSD radix
// sort on the times' bits redoes it: O(m) whatever the times, with 8-bit digits (passes whose
// digit is the same for every input skipped).
template <typename T>
class InputSorter {
 public:
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

  // Sorts the finite inputs of `times`: afterwards `time(a)`, `index(a)` for a < `size()`.
  void Sort(const T* times, int64_t n_in) {
    time_.clear();
    index_.clear();
    for (int64_t i = 0; i < n_in; ++i) {
      if (std::isfinite(times[i])) {
        time_.push_back(times[i]);
        index_.push_back(static_cast<int32_t>(i));
      }
    }
    const size_t m = time_.size();
    if (m < 2) return;
    if (m <= 16) {
      Insertion(time_.data(), index_.data(), m, m * m);
      return;
    }
    const auto [lo, hi] = std::minmax_element(time_.begin(), time_.end());
    const T scale = static_cast<T>(m - 1) / (*hi - *lo);
    if (!(*hi > *lo) || !std::isfinite(scale)) {
      if (*hi > *lo) Radix(times, n_in);  // a range that overflows or underflows
      return;                       // else all equal: already in index order
    }
    const T low = *lo;
    counts_.assign(m + 1, 0);
    bucket_.resize(m);
    for (size_t a = 0; a < m; ++a) {
      const size_t b = std::min(static_cast<size_t>((time_[a] - low) * scale), m - 1);
      bucket_[a] = static_cast<uint32_t>(b);
      ++counts_[b + 1];
    }
    for (size_t b = 1; b <= m; ++b) counts_[b] += counts_[b - 1];
    time_tmp_.resize(m);
    index_tmp_.resize(m);
    for (size_t a = 0; a < m; ++a) {
      const uint32_t to = counts_[bucket_[a]]++;
      time_tmp_[to] = time_[a];
      index_tmp_[to] = index_[a];
    }
    if (Insertion(time_tmp_.data(), index_tmp_.data(), m, 8 * m)) {
      time_.swap(time_tmp_);
      index_.swap(index_tmp_);
    } else {
      Radix(times, n_in);
    }
  }

  size_t size() const { return time_.size(); }
  T time(size_t a) const { return time_[a]; }
  int64_t index(size_t a) const { return index_[a]; }

 private:
  // Stable insertion sort by time; gives up (false) after `budget` moves.
  static bool Insertion(T* time, int32_t* index, size_t m, size_t budget) {
    size_t moves = 0;
    for (size_t a = 1; a < m; ++a) {
      const T t = time[a];
      const int32_t i = index[a];
      size_t b = a;
      for (; b > 0 && time[b - 1] > t; --b) {
        time[b] = time[b - 1];
        index[b] = index[b - 1];
      }
      time[b] = t;
      index[b] = i;
      moves += a - b;
      if (moves > budget) return false;
    }
    return true;
  }

  // Unsigned integers in the order of the floats (-0.0 as 0.0; no nan: those are silent).
  static Bits Key(T t) {
    Bits bits;
    const T zero_safe = t == T(0) ? T(0) : t;
    std::memcpy(&bits, &zero_safe, sizeof(T));
    const Bits sign = Bits(1) << (8 * sizeof(T) - 1);
    return (bits & sign) ? ~bits : bits | sign;
  }

  // The finite inputs of `times` sorted from scratch by an LSD radix sort (stable).
  void Radix(const T* times, int64_t n_in) {
    constexpr int kDigits = sizeof(T);
    const size_t m = time_.size();
    index_.clear();
    keys_.clear();
    for (int64_t i = 0; i < n_in; ++i) {
      if (std::isfinite(times[i])) {
        index_.push_back(static_cast<int32_t>(i));
        keys_.push_back(Key(times[i]));
      }
    }
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
    for (size_t a = 0; a < m; ++a) time_[a] = times[index_[a]];
  }

  std::vector<T> time_, time_tmp_;
  std::vector<int32_t> index_, index_tmp_;
  std::vector<uint32_t> counts_, bucket_;
  std::vector<Bits> keys_, keys_tmp_;
};

// B, D after one more input for every neuron, and which neurons are candidates (`KappaMax`; returns
// how many):
// `gate` is the lowered threshold of a neuron still silent, +inf for one that has fired.
// `kShared`: the recurrence's factors are `a, b, g`, else per neuron in `a_j, b_j, g_j`.
template <typename T, bool kShared>
int32_t Advance(int64_t n_out, T a, T b, T g, const T* __restrict a_j, const T* __restrict b_j,
             const T* __restrict g_j, T span, const T* __restrict row, const T* __restrict kappa_max,
             const T* __restrict gate, int32_t* __restrict candidate, T* __restrict big_b, T* __restrict big_d) {
  int32_t count = 0;
  for (int64_t j = 0; j < n_out; ++j) {
    const T b_old = big_b[j];
    const T new_b = (kShared ? a : a_j[j]) * b_old + row[j];
    const T new_d = (kShared ? b : b_j[j]) * big_d[j] + (kShared ? g : g_j[j]) * b_old;
    big_b[j] = new_b;
    big_d[j] = new_d;
    const T bound = (new_d > T(0) ? new_d : T(0)) + new_b * (span < kappa_max[j] ? span : kappa_max[j]);
    const int32_t c = (new_b > T(0)) & (bound >= gate[j]);
    candidate[j] = c;
    count += c;
  }
  return count;
}

// `Crosses` over all neurons at once (vectorises; for many candidates): `candidate[j]` becomes
// whether neuron j crosses on this interval, `peak[j]` its peak's place. `inv_tau_m`, `inv_tau_s`
// and `x_kernel` (`CrossesRoot`) are read by `root` only.
template <typename T>
void CrossesAll(int64_t solver, int64_t n_out, T span, const T* __restrict big_b, const T* __restrict big_d,
                const T* __restrict tau_m, const T* __restrict tau_s, const T* __restrict inv_tau_m,
                const T* __restrict inv_tau_s, const T* __restrict x_kernel, const T* __restrict theta,
                int32_t* __restrict candidate, T* __restrict peak) {
  if (solver == kRoot) {
    for (int64_t j = 0; j < n_out; ++j) {
      const T b = big_b[j] > T(0) ? big_b[j] : T(1);
      T x;
      const bool crosses = CrossesRoot(b, big_d[j], span, inv_tau_m[j], inv_tau_s[j], x_kernel[j], theta[j], &x);
      peak[j] = x;
      candidate[j] &= static_cast<int32_t>(crosses);
    }
    return;
  }
  if (solver == kLambertW) {
    for (int64_t j = 0; j < n_out; ++j) {
      const T b = big_b[j] > T(0) ? big_b[j] : T(1), d = big_d[j];
      const T x = Clip(tau_s[j] - d / b, T(0), span);
      peak[j] = x;
      candidate[j] &= static_cast<int32_t>(ExpNonPositive(-x / tau_s[j]) * (d + b * x) >= theta[j]);
    }
    return;
  }
  for (int64_t j = 0; j < n_out; ++j) {  // quadratic
    const T b = big_b[j] > T(0) ? big_b[j] : T(1), d = big_d[j];
    const T a1 = tau_m[j] * b;
    const T q = Clip((b + d / tau_m[j]) / (T(2) * b), ExpNonPositive(-span / tau_m[j]), T(1));
    peak[j] = q;
    candidate[j] &= static_cast<int32_t>((d + a1) * q - a1 * q * q >= theta[j]);
  }
}

// The walk of one layer over the samples of a batch, with the scratch it reuses between them.
template <typename T>
class Layer {
 public:
  // Per-neuron arrays are padded to a multiple of 8 neurons (silent, zero weights), so that the
  // vectorised pass over the neurons of a narrow layer has no scalar remainder.
  static constexpr int64_t kPad = 8;

  Layer(int64_t solver, int64_t n_out)
      : solver_(solver),
        n_out_(n_out),
        width_((n_out + kPad - 1) / kPad * kPad),
        tau_m_(width_, T(1)),
        tau_s_(width_, T(1)),
        inv_tau_m_(width_, T(1)),
        inv_tau_s_(width_, T(1)),
        theta_(width_, T(1)),
        theta_low_(width_, std::numeric_limits<T>::infinity()),  // the padding never fires
        kappa_max_(width_, T(1)),
        x_kernel_(width_, T(1)),
        a_(width_),
        b_(width_),
        g_(width_),
        big_b_(width_),
        big_d_(width_),
        x_(width_),
        gate_(width_),
        candidate_(width_),
        fired_(width_) {}

  // The neurons' parameters (each a pointer to 1 value if `shared`, else to n_out); kept while the
  // same pointers come again (parameters shared by the batch).
  void SetNeurons(const T* tau_m, const T* tau_s, bool tau_shared, const T* theta, bool theta_shared) {
    if (tau_m == last_[0] && tau_s == last_[1] && theta == last_[2]) return;
    last_[0] = tau_m, last_[1] = tau_s, last_[2] = theta;
    tau_shared_ = tau_shared;
    const T low = T(1) - T(16) * std::numeric_limits<T>::epsilon();
    for (int64_t j = 0; j < n_out_; ++j) {
      tau_m_[j] = tau_m[tau_shared ? 0 : j];
      tau_s_[j] = tau_s[tau_shared ? 0 : j];
      inv_tau_m_[j] = T(1) / tau_m_[j];
      inv_tau_s_[j] = T(1) / tau_s_[j];
      theta_[j] = theta[theta_shared ? 0 : j];
      theta_low_[j] = theta_[j] * low;
      kappa_max_[j] = KappaMax(tau_m_[j], tau_s_[j]);
      x_kernel_[j] = tau_s_[j] * Log1pRatio(tau_s_[j] / tau_m_[j] - T(1));  // as in `Crosses`
    }
  }

  // The weights [n_in, n_out]; copied into padded rows while the same pointer comes again.
  void SetWeights(const T* w, int64_t n_in) {
    if (width_ == n_out_) {
      weights_ = w;
      return;
    }
    if (w != last_weights_) {
      padded_.assign(n_in * width_, T(0));
      for (int64_t i = 0; i < n_in; ++i) {
        std::copy(w + i * n_out_, w + (i + 1) * n_out_, padded_.data() + i * width_);
      }
      last_weights_ = w;
    }
    weights_ = padded_.data();
  }

  // One sample: `_causal_prefix` of `times` [n_in] through the weights (`SetWeights`).
  void Walk(const T* times, int64_t n_in, bool* fired, T* t_k, T* b_k, T* d_k, T* peak) {
    order_.Sort(times, n_in);
    std::fill(fired_.begin(), fired_.end(), 0);
    std::fill(t_k, t_k + n_out_, T(0));
    std::fill(b_k, b_k + n_out_, T(0));
    std::fill(d_k, d_k + n_out_, T(0));
    std::fill(peak, peak + n_out_, T(0));
    std::fill(big_b_.begin(), big_b_.end(), T(0));
    std::fill(big_d_.begin(), big_d_.end(), T(0));
    std::copy(theta_low_.begin(), theta_low_.end(), gate_.begin());
    const int64_t m = static_cast<int64_t>(order_.size());
    Intervals(m);
    int64_t silent = n_out_;
    for (int64_t k = 0; k < m && silent > 0; ++k) {
      const T* row = weights_ + order_.index(k) * width_;
      int32_t candidates;
      if (tau_shared_) {
        candidates = Advance<T, true>(width_, input_a_[k], input_b_[k], input_g_[k], nullptr, nullptr, nullptr,
                                      span_[k], row, kappa_max_.data(), gate_.data(), candidate_.data(),
                                      big_b_.data(), big_d_.data());
      } else {
        NeuronDecays(gap_[k]);
        candidates = Advance<T, false>(width_, T(0), T(0), T(0), a_.data(), b_.data(), g_.data(), span_[k], row,
                                       kappa_max_.data(), gate_.data(), candidate_.data(), big_b_.data(),
                                       big_d_.data());
      }
      if (candidates == 0) continue;
      if (8 * candidates >= width_) {
        // Many candidates (a wide layer's early inputs): test and record in vectorised passes.
        CrossesAll(solver_, width_, span_[k], big_b_.data(), big_d_.data(), tau_m_.data(), tau_s_.data(),
                   inv_tau_m_.data(), inv_tau_s_.data(), x_kernel_.data(), theta_.data(), candidate_.data(),
                   x_.data());
        silent -= Record(order_.time(k), t_k, b_k, d_k, peak);
        continue;
      }
      for (int64_t j = 0; j < n_out_ && candidates > 0; ++j) {
        if (!candidate_[j]) continue;
        --candidates;
        T x = 0;
        if (Crosses(solver_, big_b_[j], big_d_[j], span_[k], tau_m_[j], tau_s_[j], theta_[j], &x)) {
          fired_[j] = 1;
          gate_[j] = std::numeric_limits<T>::infinity();
          t_k[j] = order_.time(k);
          b_k[j] = big_b_[j];
          d_k[j] = big_d_[j];
          peak[j] = x;
          --silent;
        }
      }
    }
    for (int64_t j = 0; j < n_out_; ++j) fired[j] = fired_[j] != 0;
  }

 private:
  // The neurons that cross (`candidate_`) at input time t fire: results recorded without branches.
  int32_t Record(T t, T* __restrict t_k, T* __restrict b_k, T* __restrict d_k, T* __restrict peak) {
    const int32_t* __restrict crosses = candidate_.data();
    const T* __restrict big_b = big_b_.data();
    const T* __restrict big_d = big_d_.data();
    const T* __restrict x = x_.data();
    int32_t* __restrict fired = fired_.data();
    T* __restrict gate = gate_.data();
    const int64_t n_out = n_out_;
    int32_t count = 0;
    for (int64_t j = 0; j < n_out; ++j) {
      const int32_t c = crosses[j];
      fired[j] |= c;
      t_k[j] = c ? t : t_k[j];
      b_k[j] = c ? big_b[j] : b_k[j];
      d_k[j] = c ? big_d[j] : d_k[j];
      peak[j] = c ? x[j] : peak[j];
      gate[j] = c ? std::numeric_limits<T>::infinity() : gate[j];
      count += c;
    }
    return count;
  }

  // Per sorted input: the gap to the previous one, the span to the next (inf after the last) and,
  // for time constants shared by the layer, the recurrence's factors (one pass that vectorises for
  // the closed-form ratios).
  void Intervals(int64_t m) {
    gap_.resize(m);
    span_.resize(m);
    for (int64_t k = 0; k < m; ++k) {
      gap_[k] = k == 0 ? T(0) : order_.time(k) - order_.time(k - 1);
      span_[k] = k + 1 < m ? order_.time(k + 1) - order_.time(k) : std::numeric_limits<T>::infinity();
    }
    if (!tau_shared_) return;
    input_a_.resize(m);
    input_b_.resize(m);
    input_g_.resize(m);
    WithSolver(solver_, [&](auto solver) { SharedDecays<decltype(solver)::value>(m); });
  }

  // Per-neuron time constants: the recurrence's factors of every neuron for one gap.
  void NeuronDecays(T gap) {
    WithSolver(solver_, [&](auto solver) { NeuronDecaysFor<decltype(solver)::value>(gap); });
  }

  template <int64_t kSolver>
  void NeuronDecaysFor(T gap) {
    const int64_t n_out = n_out_;
    const T* __restrict tau_m = tau_m_.data();
    const T* __restrict inv_tau_m = inv_tau_m_.data();
    const T* __restrict inv_tau_s = inv_tau_s_.data();
    T* __restrict a = a_.data();
    T* __restrict b = b_.data();
    T* __restrict g = g_.data();
    for (int64_t j = 0; j < n_out; ++j) {
      const Decays<T> decays(kSolver, gap, tau_m[j], inv_tau_m[j], inv_tau_s[j]);
      a[j] = decays.a, b[j] = decays.b, g[j] = decays.g;
    }
  }

  template <int64_t kSolver>
  void SharedDecays(int64_t m) {
    const T tau_m = tau_m_[0], inv_tau_m = inv_tau_m_[0], inv_tau_s = inv_tau_s_[0];
    const T* __restrict gap = gap_.data();
    T* __restrict a = input_a_.data();
    T* __restrict b = input_b_.data();
    T* __restrict g = input_g_.data();
    for (int64_t k = 0; k < m; ++k) {
      const Decays<T> decays(kSolver, gap[k], tau_m, inv_tau_m, inv_tau_s);
      a[k] = decays.a, b[k] = decays.b, g[k] = decays.g;
    }
  }

  int64_t solver_, n_out_, width_;  // width_: n_out padded to kPad
  const T* weights_ = nullptr;      // [n_in, width_]
  const T* last_weights_ = nullptr;
  std::vector<T> padded_;
  bool tau_shared_ = true;
  const T* last_[3] = {nullptr, nullptr, nullptr};
  // Per neuron [width_]: parameters (and inverse time constants), the threshold lowered by 16 ulps,
  // kappa's maximum and where it is, per-neuron decays, the running B and D, the peak of the last test.
  std::vector<T> tau_m_, tau_s_, inv_tau_m_, inv_tau_s_, theta_, theta_low_, kappa_max_, x_kernel_, a_, b_, g_, big_b_,
      big_d_, x_;
  std::vector<T> gate_;  // theta_low_ while silent, inf once fired (and for the padding)
  std::vector<int32_t> candidate_, fired_;
  std::vector<T> gap_, span_, input_a_, input_b_, input_g_;  // per sorted input [m]
  InputSorter<T> order_;
};

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

// Runs `work(begin, end)` over [0, n) in chunks: on the calling thread and on up to all of XLA's
// intra-op threads. The caller takes chunks too and waits only for chunks taken by a helper that
// runs, so this finishes whether helpers start, start late or never (XLA may run a task inline or
// on a one-thread pool); a helper that starts after the last chunk was taken touches nothing.
template <typename Work>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t min_chunk, const Work& work) {
  const int64_t threads = pool.num_threads();
  const int64_t chunks = std::min<int64_t>(threads > 1 ? 4 * threads : 1, std::max<int64_t>(n / min_chunk, 1));
  if (chunks <= 1) {
    work(0, n);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, chunks, n, &work] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      work(c * n / chunks, (c + 1) * n / chunks);
      if (shared->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < std::min(threads, chunks); ++t) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == chunks; });
}

template <ffi::DataType D>
ffi::Error Search(ffi::ThreadPool pool, ffi::Buffer<D> times, ffi::Buffer<D> weights, ffi::Buffer<D> tau_m,
                  ffi::Buffer<D> tau_s, ffi::Buffer<D> theta, int64_t solver, ffi::ResultBuffer<ffi::PRED> fired,
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
  // Samples [begin, end) with their own scratch (a `Layer` per chunk; each sample is independent).
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<int64_t> index(leading, 0);
    for (int64_t a = leading - 1, rest = begin; a >= 0; --a) {
      index[a] = rest % out_dims[a];
      rest /= out_dims[a];
    }
    Layer<T> layer(solver, n_out);
    for (int64_t s = begin; s < end; ++s) {
      layer.SetNeurons(tau_m.typed_data() + b_tau_m.Offset(index), tau_s.typed_data() + b_tau_s.Offset(index),
                       tau_shared, theta.typed_data() + b_theta.Offset(index), theta_shared);
      const int64_t out = b_out.Offset(index);
      layer.SetWeights(weights.typed_data() + b_w.Offset(index), n_in);
      layer.Walk(times.typed_data() + b_times.Offset(index), n_in, fired->typed_data() + out,
                 t_k->typed_data() + out, b_k->typed_data() + out, d_k->typed_data() + out,
                 peak->typed_data() + out);
      for (int64_t a = leading - 1; a >= 0; --a) {  // next batch index
        if (++index[a] < out_dims[a]) break;
        index[a] = 0;
      }
    }
  };
  // A chunk is worth a task from about 4096 (input, neuron) pairs (≈ 10 µs).
  ParallelFor(pool, batch, std::max<int64_t>(1, 4096 / std::max<int64_t>(n_in * n_out, 1)), work);
  return ffi::Error::Success();
}

// ---- The backward pass of a layer for a whole batch (`fsnn.core.batch_grad`) ----
//
// Per sample and pair (i, j) with s = T_j - t_i > 0: kappa(s) and kappa'(s) = e^{-s/tau_s} -
// kappa/tau_m (`_kernels`). Per fired neuron j with cotangent g_j: slope_j = sum_i w_ij kappa'_ij / C
// and a_j = g_j / max(slope_j, floor); then grad t_i = sum_j a_j w_ij kappa'_ij / C and grad w_ij =
// -sum over samples of a_j kappa_ij / C, without the columns (sample, j) whose largest entry
// |a_j| max_i kappa_ij / C exceeds max_norm (the gradient drop, `fsnn.remedies`), which are counted.
// Nothing of size batch x n_in x n_out is stored: kappa is recomputed in a second pass. The closed
// forms need one exponential per pair, e^{-s/tau} with tau = tau_s (lambertw) or tau_m (quadratic);
// it factorises, e^{(t_i - r)/tau} e^{(r - T_j)/tau} with r the sample's last spike, into one per
// input and one per neuron, where the sample's times span less than `FactorSpan` time constants
// (neither factor overflows); else, and for other ratios, one per pair.

template <typename T>
struct VjpConstants {
  T tau_m, tau_s, inv_tau_m, inv_tau_s, inv_tau_e, inv_c, floor, max_norm;
  VjpConstants(const T* c, int64_t solver)  // tau_m (the kernel's), tau_s, C, slope floor, max_norm
      : tau_m(c[0]), tau_s(c[1]), inv_tau_m(T(1) / c[0]), inv_tau_s(T(1) / c[1]),
        inv_tau_e(solver == kQuadratic ? inv_tau_m : inv_tau_s), inv_c(T(1) / c[2]), floor(c[3]), max_norm(c[4]) {}
};

template <typename T>
constexpr T FactorSpan() {
  return sizeof(T) == 8 ? T(600) : T(70);
}

// kappa and kappa' at s (0, 0 unless `live`) from e = e^{-s/tau} (closed forms; `root` computes
// its own, `RootKernel`). Branch-free, so that loops over pairs vectorise.
template <typename T, int64_t S>
inline void PairKernels(const VjpConstants<T>& c, T s, T e, bool live, T& kappa, T& dkappa) {
  s = live ? s : T(0);
  T k, e_s;
  if constexpr (S == kLambertW) {
    e_s = e;
    k = s * e;
  } else if constexpr (S == kQuadratic) {
    e_s = e * e;
    k = c.tau_m * (e - e_s);
  } else {
    T e_m;
    k = RootKernel(s, c.inv_tau_m, c.inv_tau_s, e_s, e_m);
  }
  kappa = live ? k : T(0);
  dkappa = live ? e_s - k * c.inv_tau_m : T(0);
}

// e^{-s/tau} of a pair: the product of its factors (`kFactored`), else directly (0 where s <= 0).
template <typename T, bool kFactored>
inline T PairExp(const VjpConstants<T>& c, T s, T e_in, T e_out) {
  if constexpr (kFactored) return e_in * e_out;
  return ExpNonPositive(-(s > T(0) ? s : T(0)) * c.inv_tau_e);
}

// A neuron's coefficients from its summed slope and largest kappa: `to_t` (for the input
// gradient) and `to_w` (for the weight gradient; 0 if the column is dropped). Returns 1 if dropped.
template <typename T>
inline int64_t Coefficients(const VjpConstants<T>& c, T g, T slope_sum, T kappa_max, T* to_t, T* to_w) {
  const T a = g / std::max(slope_sum * c.inv_c, c.floor);
  const bool drop = std::abs(a) * kappa_max * c.inv_c > c.max_norm;
  *to_t = a * c.inv_c;
  *to_w = drop ? T(0) : -a * c.inv_c;
  return drop ? 1 : 0;
}

constexpr int64_t kLanes = 8;  // independent partial sums of a reduction (they vectorise)

// The factors of e^{-(T - t)/tau} = e^{(t - r)/tau} e^{(r - T)/tau}, r the sample's last spike.
template <typename T>
inline T InputFactor(const VjpConstants<T>& c, T t, T last) {
  return t < last ? ExpNonPositive((t - last) * c.inv_tau_e) : T(0);
}

template <typename T>
inline T OutputFactor(const VjpConstants<T>& c, T t, T last) {
  return T(1) / ExpNonPositive((t - last) * c.inv_tau_e);
}

// Whether a sample's pair exponentials factorise: a closed form, and its live times (`first` ..
// `last`) span less than `FactorSpan` time constants.
template <typename T>
inline bool Factored(int64_t solver, const VjpConstants<T>& c, T first, T last) {
  return solver != kRoot && std::isfinite(last) && (last - first) * c.inv_tau_e < FactorSpan<T>();
}

// `body(solver, factored)` with both as compile-time constants (`WithSolver`; `root` never factors).
template <typename Body>
auto DispatchVjp(int64_t solver, bool factored, const Body& body) {
  return WithSolver(solver, [&](auto s) {
    if constexpr (decltype(s)::value == kRoot) {
      return body(s, std::false_type{});
    } else {
      return factored ? body(s, std::true_type{}) : body(s, std::false_type{});
    }
  });
}

// Few neurons (e.g. an output layer): per sample, vectorised over the inputs (transposed weights
// [n_out, width], width = n_in padded to kLanes); adds to a [n_out, width] weight-gradient sum.
template <typename T>
class SampleVjp {
 public:
  SampleVjp(int64_t solver, int64_t n_in, int64_t n_out, int64_t width, const VjpConstants<T>& c)
      : solver_(solver), n_in_(n_in), n_out_(n_out), width_(width), c_(c) {}

  // One sample: writes grad_t [n_in], adds to grad_w_t; returns the dropped columns.
  int64_t OverInputs(const T* t_in, const T* w_t, const T* t_out, const T* g, T* grad_t, T* grad_w_t) {
    x_.assign(width_, std::numeric_limits<T>::infinity());  // input times, +inf if silent or padding
    last_ = -std::numeric_limits<T>::infinity();
    T first = std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < n_out_; ++j) {
      if (std::isfinite(t_out[j])) last_ = std::max(last_, t_out[j]), first = std::min(first, t_out[j]);
    }
    for (int64_t i = 0; i < n_in_; ++i) {
      x_[i] = t_in[i];
      first = t_in[i] < last_ ? std::min(first, t_in[i]) : first;
    }
    e_in_.assign(width_, T(0));
    const bool factored = Factored(solver_, c_, first, last_);
    if (factored) {
      for (int64_t i = 0; i < width_; ++i) {
        e_in_[i] = InputFactor(c_, x_[i], last_);
      }
    }
    return DispatchVjp(solver_, factored, [&](auto solver, auto factors) {
      return OverInputs<decltype(solver)::value, decltype(factors)::value>(w_t, t_out, g, grad_t, grad_w_t);
    });
  }

 private:
  template <int64_t S, bool F>
  int64_t OverInputs(const T* w_t, const T* t_out, const T* g, T* grad_t, T* grad_w_t) {
    const int64_t width = width_, n_in = n_in_, n_out = n_out_;
    const VjpConstants<T> c = c_;  // locals: no stores through the loops' pointers can change them
    const T last = last_;
    scratch_.assign(3 * width, T(0));
    T* __restrict k = scratch_.data();  // this neuron's kappa and w kappa' per input
    T* __restrict wdk = k + width;
    T* __restrict gt = wdk + width;
    const T* __restrict x = x_.data();
    const T* __restrict e_in = e_in_.data();
    int64_t dropped = 0;
    for (int64_t j = 0; j < n_out; ++j) {
      const T tj = t_out[j];
      if (!std::isfinite(tj) || g[j] == T(0)) continue;  // nothing flows through this neuron
      const T e_out = F ? OutputFactor(c, tj, last) : T(0);
      const T* __restrict row = w_t + j * width;
      T slope[kLanes] = {}, k_max[kLanes] = {};
      for (int64_t ib = 0; ib < width; ib += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t i = ib + l;
          const T s = tj - x[i];
          T dk;
          PairKernels<T, S>(c, s, PairExp<T, F>(c, s, e_in[i], e_out), s > T(0), k[i], dk);
          wdk[i] = row[i] * dk;
          slope[l] += wdk[i];
          k_max[l] = std::max(k_max[l], k[i]);
        }
      }
      T slope_sum = T(0), kappa_max = T(0);
      for (int64_t l = 0; l < kLanes; ++l) slope_sum += slope[l], kappa_max = std::max(kappa_max, k_max[l]);
      T to_t, to_w;
      dropped += Coefficients(c, g[j], slope_sum, kappa_max, &to_t, &to_w);
      T* __restrict grad_row = grad_w_t + j * width;
      for (int64_t i = 0; i < width; ++i) {
        gt[i] += to_t * wdk[i];
        grad_row[i] += to_w * k[i];
      }
    }
    std::copy(gt, gt + n_in, grad_t);
    return dropped;
  }

  int64_t solver_, n_in_, n_out_, width_;
  VjpConstants<T> c_;
  T last_ = T(0);  // the sample's last spike
  std::vector<T> x_, e_in_, scratch_;
};

// Wide layers: vectorised over the neurons (weights [n_in, width], width = n_out padded to kLanes),
// in two passes over the pairs. `FirstPass`, per sample: the neurons' coefficients (from their
// slopes and largest kappa), kept in a record of 4 x width values. `SecondPass`, per sample and
// block of inputs: those inputs' weight-gradient rows (added to the one sum of the batch) and
// gradients. Split by blocks of inputs, the weight gradient needs no per-thread copies (a layer's
// worth each, which spill the cache for wide layers), and every entry is summed in sample order by
// one thread: the same bits on any number of threads.
template <typename T>
class NeuronsVjp {
 public:
  NeuronsVjp(int64_t solver, int64_t n_in, int64_t n_out, int64_t width, int64_t samples)
      : solver_(solver), n_in_(n_in), n_out_(n_out), width_(width), records_(samples * 4 * width),
        last_(samples), factored_(samples) {}

  // Sample `s` (a record's index): its neurons' coefficients; returns the dropped columns.
  int64_t FirstPass(int64_t s, const VjpConstants<T>& c, const T* t_in, const T* w, const T* t_out, const T* g) {
    T* __restrict t = Record(s, 0);  // T_j, -inf if silent or padding
    T* __restrict e_out = Record(s, 1);
    T last = -std::numeric_limits<T>::infinity(), first = std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < width_; ++j) {
      const bool fired = j < n_out_ && std::isfinite(t_out[j]);
      t[j] = fired ? t_out[j] : -std::numeric_limits<T>::infinity();
      if (fired) last = std::max(last, t[j]), first = std::min(first, t[j]);
    }
    for (int64_t i = 0; i < n_in_; ++i) first = t_in[i] < last ? std::min(first, t_in[i]) : first;
    const bool factored = Factored(solver_, c, first, last);
    for (int64_t j = 0; j < width_; ++j) {
      e_out[j] = factored && std::isfinite(t[j]) ? OutputFactor(c, t[j], last) : T(0);
    }
    last_[s] = last, factored_[s] = factored;
    return DispatchVjp(solver_, factored, [&](auto solver, auto factors) {
      return First<decltype(solver)::value, decltype(factors)::value>(c, n_in_, n_out_, width_, last, t_in, w, g, t,
                                                                      e_out, Record(s, 2), Record(s, 3));
    });
  }

  // Sample `s`, inputs [i0, i1): writes grad_t[i0:i1] (the sample's), adds to grad_w's rows.
  void SecondPass(int64_t s, const VjpConstants<T>& c, int64_t i0, int64_t i1, const T* t_in, const T* w,
                  T* grad_t, T* grad_w) {
    DispatchVjp(solver_, factored_[s], [&](auto solver, auto factors) {
      Second<decltype(solver)::value, decltype(factors)::value>(c, width_, last_[s], i0, i1, t_in, w, Record(s, 0),
                                                                Record(s, 1), Record(s, 2), Record(s, 3), grad_t,
                                                                grad_w);
    });
  }

 private:
  // Record `s`: T_j, the output factors, then the coefficients to_t, to_w (slope and largest kappa
  // while the first pass sums them).
  T* Record(int64_t s, int64_t part) { return records_.data() + (s * 4 + part) * width_; }

  // The passes take the record's parts as separate restrict pointers (they do not overlap), so that
  // the loops over the neurons vectorise.
  template <int64_t S, bool F>
  static int64_t First(const VjpConstants<T> c, int64_t n_in, int64_t n_out, int64_t width, T last,
                       const T* __restrict t_in, const T* __restrict w, const T* __restrict g, const T* __restrict t,
                       const T* __restrict e_out, T* __restrict slope, T* __restrict k_max) {
    std::fill(slope, slope + width, T(0));
    std::fill(k_max, k_max + width, T(0));
    for (int64_t i = 0; i < n_in; ++i) {
      const T x = t_in[i];
      if (!(x < last)) continue;  // silent, or after every spike: no live pair
      const T e_in = F ? InputFactor(c, x, last) : T(0);
      const T* __restrict row = w + i * width;
      for (int64_t j = 0; j < width; ++j) {
        const T gap = t[j] - x;
        T k, dk;
        PairKernels<T, S>(c, gap, PairExp<T, F>(c, gap, e_in, e_out[j]), gap > T(0), k, dk);
        slope[j] += row[j] * dk;
        k_max[j] = std::max(k_max[j], k);
      }
    }
    int64_t dropped = 0;
    for (int64_t j = 0; j < width; ++j) {  // in place: slope -> to_t, largest kappa -> to_w
      T to_t = T(0), to_w = T(0);
      if (j < n_out && std::isfinite(t[j])) dropped += Coefficients(c, g[j], slope[j], k_max[j], &to_t, &to_w);
      slope[j] = to_t, k_max[j] = to_w;
    }
    return dropped;
  }

  template <int64_t S, bool F>
  static void Second(const VjpConstants<T> c, int64_t width, T last, int64_t i0, int64_t i1, const T* __restrict t_in,
                     const T* __restrict w, const T* __restrict t, const T* __restrict e_out,
                     const T* __restrict to_t, const T* __restrict to_w, T* __restrict grad_t,
                     T* __restrict grad_w) {
    for (int64_t i = i0; i < i1; ++i) {
      const T x = t_in[i];
      grad_t[i] = T(0);
      if (!(x < last)) continue;
      const T e_in = F ? InputFactor(c, x, last) : T(0);
      const T* __restrict row = w + i * width;
      T* __restrict grad_row = grad_w + i * width;
      T acc[kLanes] = {};
      for (int64_t jb = 0; jb < width; jb += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t j = jb + l;
          const T gap = t[j] - x;
          T k, dk;
          PairKernels<T, S>(c, gap, PairExp<T, F>(c, gap, e_in, e_out[j]), gap > T(0), k, dk);
          grad_row[j] += to_w[j] * k;
          acc[l] += to_t[j] * row[j] * dk;
        }
      }
      T sum = T(0);
      for (int64_t l = 0; l < kLanes; ++l) sum += acc[l];
      grad_t[i] = sum;
    }
  }

  int64_t solver_, n_in_, n_out_, width_;
  std::vector<T> records_, last_;
  std::vector<uint8_t> factored_;
};

// Operands (leading axes from `jax.vmap(..., vmap_method="expand_dims")`, e.g. a sweep's runs, each
// the results' size or 1): input times [..., batch, n_in], weights [..., n_in, n_out], spike times
// and their cotangents [..., batch, n_out], constants [..., 5] (`VjpConstants`). Results: the input
// times' cotangent [..., batch, n_in], the weights' [..., n_in, n_out] (summed over the batch) and
// the number of dropped columns [..., 1]. Every sum has an order fixed by the shapes: the same bits
// on any number of threads.
template <ffi::DataType D>
ffi::Error LayerVjp(ffi::ThreadPool pool, ffi::Buffer<D> times, ffi::Buffer<D> weights, ffi::Buffer<D> t_out,
                    ffi::Buffer<D> cotangent, ffi::Buffer<D> constants, int64_t solver,
                    ffi::ResultBuffer<D> grad_times, ffi::ResultBuffer<D> grad_weights, ffi::ResultBuffer<D> dropped) {
  using T = ffi::NativeType<D>;
  const auto w_out_dims = grad_weights->dimensions();
  const int64_t leading = static_cast<int64_t>(w_out_dims.size()) - 2;
  if (leading < 0 || static_cast<int64_t>(times.dimensions().size()) != leading + 2 ||
      static_cast<int64_t>(t_out.dimensions().size()) != leading + 2) {
    return ffi::Error::InvalidArgument("fsnn layer vjp: operand ranks do not match the results");
  }
  if (solver < kLambertW || solver > kRoot) return ffi::Error::InvalidArgument("fsnn layer vjp: unknown solver");
  const int64_t n_in = w_out_dims[leading], n_out = w_out_dims[leading + 1];
  const int64_t batch = times.dimensions()[leading];
  int64_t runs = 1;
  for (int64_t a = 0; a < leading; ++a) runs *= w_out_dims[a];
  const Broadcast b_times(times.dimensions(), leading), b_w(weights.dimensions(), leading),
      b_t(t_out.dimensions(), leading), b_g(cotangent.dimensions(), leading),
      b_c(constants.dimensions(), leading), b_gt(grad_times->dimensions(), leading),
      b_gw(w_out_dims, leading), b_n(dropped->dimensions(), leading);
  auto index_of = [&](int64_t run) {
    std::vector<int64_t> index(leading, 0);
    for (int64_t a = leading - 1; a >= 0; --a) {
      index[a] = run % w_out_dims[a];
      run /= w_out_dims[a];
    }
    return index;
  };
  // One run's operands.
  struct Run {
    VjpConstants<T> c;
    const T *x, *t, *g;
    T* gt;
  };
  auto run_at = [&](int64_t r) {
    const auto index = index_of(r);
    return Run{VjpConstants<T>(constants.typed_data() + b_c.Offset(index), solver),
               times.typed_data() + b_times.Offset(index), t_out.typed_data() + b_t.Offset(index),
               cotangent.typed_data() + b_g.Offset(index), grad_times->typed_data() + b_gt.Offset(index)};
  };
  // Few neurons: vectorise over the inputs (transposed weights); else over the neurons.
  const bool over_inputs = n_out < 2 * kLanes;
  const int64_t rows = over_inputs ? n_out : n_in;
  const int64_t width = ((over_inputs ? n_in : n_out) + kLanes - 1) / kLanes * kLanes;
  // Per run: the weights padded (and transposed if over the inputs).
  std::vector<T> padded(runs * rows * width, T(0));
  for (int64_t r = 0; r < runs; ++r) {
    const T* w = weights.typed_data() + b_w.Offset(index_of(r));
    T* p = padded.data() + r * rows * width;
    for (int64_t i = 0; i < n_in; ++i) {
      for (int64_t j = 0; j < n_out; ++j) (over_inputs ? p[j * width + i] : p[i * width + j]) = w[i * n_out + j];
    }
  }
  std::vector<int64_t> counts(runs, 0);
  if (over_inputs) {
    // The batch in at most 16 blocks fixed by the shapes, each summed in sample order (threads take
    // whole blocks), then added in block order; the sums are small ([n_out, width] each).
    const int64_t blocks = std::clamp<int64_t>(batch * n_in * n_out / 4096, 1, std::min<int64_t>(batch, 16));
    std::vector<T> sums(runs * blocks * rows * width, T(0));
    std::vector<int64_t> block_counts(runs * blocks, 0);
    ParallelFor(pool, runs * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t r = unit / blocks, block = unit % blocks;
        const Run run = run_at(r);
        SampleVjp<T> sample(solver, n_in, n_out, width, run.c);
        const T* w = padded.data() + r * rows * width;
        T* gw = sums.data() + unit * rows * width;
        for (int64_t s = block * batch / blocks; s < (block + 1) * batch / blocks; ++s) {
          block_counts[unit] +=
              sample.OverInputs(run.x + s * n_in, w, run.t + s * n_out, run.g + s * n_out, run.gt + s * n_in, gw);
        }
      }
    });
    for (int64_t unit = 0; unit < runs * blocks; ++unit) counts[unit / blocks] += block_counts[unit];
    // Per run and neuron: the blocks' sums in block order, transposed back.
    const int64_t min_rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(blocks * width, 1));
    ParallelFor(pool, runs * rows, min_rows, [&](int64_t begin, int64_t end) {
      std::vector<T> sum(width);
      for (int64_t rr = begin; rr < end; ++rr) {
        const int64_t r = rr / rows, j = rr % rows;
        std::fill(sum.begin(), sum.end(), T(0));
        for (int64_t block = 0; block < blocks; ++block) {
          const T* p = sums.data() + ((r * blocks + block) * rows + j) * width;
          for (int64_t i = 0; i < width; ++i) sum[i] += p[i];
        }
        T* gw = grad_weights->typed_data() + b_gw.Offset(index_of(r));
        for (int64_t i = 0; i < n_in; ++i) gw[i * n_out + j] = sum[i];
      }
    });
  } else {
    // Samples in chunks (records of at most 2^22 values); inputs in blocks of at most 64 KiB of
    // weights (a block's weight and gradient rows stay in a core's cache while the chunk's samples
    // pass), at least two per thread. How the rows are cut does not change any sum.
    const int64_t chunk = std::clamp<int64_t>((int64_t(1) << 22) / (runs * 4 * width), 1, batch);
    const int64_t cached_rows = std::max<int64_t>(1, (int64_t(1) << 16) / (width * static_cast<int64_t>(sizeof(T))));
    const int64_t parts = 2 * std::max<int64_t>(pool.num_threads(), 1);
    const int64_t block_rows = std::clamp<int64_t>((n_in + parts - 1) / parts, 1, cached_rows);
    const int64_t blocks = (n_in + block_rows - 1) / block_rows;
    std::vector<T> sums(runs * rows * width, T(0));  // per run, the weight gradient (padded)
    NeuronsVjp<T> vjp(solver, n_in, n_out, width, runs * chunk);
    std::vector<int64_t> sample_counts(runs * chunk);
    for (int64_t s0 = 0; s0 < batch; s0 += chunk) {
      const int64_t m = std::min(chunk, batch - s0);
      ParallelFor(pool, runs * m, std::max<int64_t>(1, 4096 / std::max<int64_t>(n_in * n_out, 1)),
                  [&](int64_t begin, int64_t end) {
                    for (int64_t unit = begin; unit < end; ++unit) {
                      const int64_t r = unit / m, s = s0 + unit % m;
                      const Run run = run_at(r);
                      sample_counts[unit] = vjp.FirstPass(r * chunk + unit % m, run.c, run.x + s * n_in,
                                                          padded.data() + r * rows * width, run.t + s * n_out,
                                                          run.g + s * n_out);
                    }
                  });
      const bool last_chunk = s0 + m == batch;
      ParallelFor(pool, runs * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t r = unit / blocks, i0 = unit % blocks * block_rows, i1 = std::min(n_in, i0 + block_rows);
          const Run run = run_at(r);
          T* gw = sums.data() + r * rows * width;
          for (int64_t k = 0; k < m; ++k) {
            const int64_t s = s0 + k;
            vjp.SecondPass(r * chunk + k, run.c, i0, i1, run.x + s * n_in, padded.data() + r * rows * width,
                           run.gt + s * n_in, gw);
          }
          if (!last_chunk) continue;
          T* out = grad_weights->typed_data() + b_gw.Offset(index_of(r));  // the block's rows, unpadded
          for (int64_t i = i0; i < i1; ++i) std::copy(gw + i * width, gw + i * width + n_out, out + i * n_out);
        }
      });
      for (int64_t unit = 0; unit < runs * m; ++unit) counts[unit / m] += sample_counts[unit];
    }
  }
  for (int64_t r = 0; r < runs; ++r) dropped->typed_data()[b_n.Offset(index_of(r))] = static_cast<T>(counts[r]);
  return ffi::Error::Success();
}

// The operands of both handlers: XLA's thread pool, five buffers and the solver.
template <ffi::DataType D>
auto BindOperands() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("solver");
}

template <ffi::DataType D>
auto Binding() {
  return BindOperands<D>()
      .template Ret<ffi::Buffer<ffi::PRED>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>();
}

template <ffi::DataType D>
auto VjpBinding() {
  return BindOperands<D>().template Ret<ffi::Buffer<D>>().template Ret<ffi::Buffer<D>>().template Ret<ffi::Buffer<D>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnCausalPrefixF32, Search<ffi::F32>, Binding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnCausalPrefixF64, Search<ffi::F64>, Binding<ffi::F64>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnLayerVjpF32, LayerVjp<ffi::F32>, VjpBinding<ffi::F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(FsnnLayerVjpF64, LayerVjp<ffi::F64>, VjpBinding<ffi::F64>());
