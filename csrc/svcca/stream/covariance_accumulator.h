// Exact, order-independent, mergeable covariance accumulator: the sufficient statistics of the
// CCA family and linear CKA for one or more layers, streamed batch by batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "svcca/linalg.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

namespace svcca {

struct CovarianceAccumulatorOptions {
  // Names of the layers, in the order update() takes their batches. At least one; unique.
  std::vector<std::string> layers = {"x", "y"};
  // Pairs of layers whose cross-products are kept, by name. Empty: every pair (i < j), which
  // is what a layer x layer grid needs; a results call on a pair not kept throws.
  std::vector<std::pair<std::string, std::string>> pairs = {};
  // dtype of the accumulated moments: float64 (default; the exactness guarantees below) or
  // float32 (halves memory on GPUs, less exact).
  at::ScalarType dtype = at::kDouble;
};

// Accumulates, for each layer l with p_l features: the row count n, the mean [p_l], the centered
// co-moment M_l = sum_i (x_i - mean)(x_i - mean)^T [p_l, p_l], the exact column min and max
// (float64, so constant features are detected exactly as the one-shot path does), and for each
// kept pair (a, b) the centered cross co-moment C_ab [p_a, p_b]. Memory is O(sum p^2),
// independent of n; the state lives on the device of the first batch.
//
// Results (cca, svcca, pwcca, r2_cca, linear_cka) can be asked for at any time and go through
// the same code path as the one-shot functions (detail::*_from_moments), so feeding the same rows
// in any order and any batch sizes gives the one-shot numbers to ~1e-10 relative in float64.
// Options' `precision` is ignored: the accumulator's dtype is the compute dtype.
//
// Scale: each layer's moments are kept in units of a power of two, scale(l) (the mean divided
// by it, co-moments by its square, cross co-moments by the product of both layers'). It is 1
// while the layer's largest magnitude seen lies within [2^-64, 2^64] ([2^-16, 2^16] for a
// float32 accumulator), and otherwise near that magnitude, raised (with the stored moments
// rescaled, exactly) when a larger batch arrives. Every measure here is invariant to a layer's
// scale, so data scaled by 1e-300 ... 1e300 gives the same CCA, SVCCA, PWCCA and CKA as unscaled
// data, where plain moments would overflow or underflow.
//
// Thread-safe: every member function locks the accumulator (results copy what they need under
// the lock and compute outside it), so updates and merges from several threads never corrupt it.
// Copies are deep (the copy's tensors are its own).
//
//   svcca::CovarianceAccumulator acc;          // layers "x" and "y"
//   for (auto& [x, y] : batches) acc.update(x, y);
//   acc.cca().correlations;  acc.linear_cka();
class CovarianceAccumulator {
 public:
  // Throws when the layer names are empty or repeated, a pair names an unknown layer or a layer
  // with itself, or dtype is not float32/float64.
  explicit CovarianceAccumulator(CovarianceAccumulatorOptions options = {});
  // Deep copies (locking `other` meanwhile); moves lock it too.
  CovarianceAccumulator(const CovarianceAccumulator& other);
  CovarianceAccumulator(CovarianceAccumulator&& other) noexcept;
  CovarianceAccumulator& operator=(const CovarianceAccumulator& other);
  CovarianceAccumulator& operator=(CovarianceAccumulator&& other) noexcept;

  // Adds a batch of rows of every layer: batches[l] is [b, p_l], same b >= 1 for all layers,
  // float32 or float64, finite, on one device. Batches after the first are moved to the
  // accumulator's device. Throws (and leaves the accumulator unchanged) on a wrong number of
  // layers, mismatched rows, a change of feature count or dtype since the first batch, or
  // NaN/Inf.
  void update(const std::vector<at::Tensor>& batches);
  // By layer name; every layer must be present.
  void update(const std::map<std::string, at::Tensor>& batches);
  // Two-layer shorthand: update({x, y}).
  void update(const at::Tensor& x, const at::Tensor& y);

  // Adds the rows seen by `other` (Chan et al. 1979 pairwise update; exact up to rounding).
  // Throws when layers, pairs, feature counts or dtypes differ. An empty side is a no-op.
  void merge(const CovarianceAccumulator& other);

  // Results for a pair of layers (default: the first two). Throw when the pair's cross-products
  // were not kept, or with too few rows: cca and pwcca need n >= p + 2 on both sides, svcca,
  // r2_cca's cca and linear_cka need n >= 2.
  CcaResult cca(const CcaOptions& options = {}) const;
  CcaResult cca(const std::string& x_layer, const std::string& y_layer,
                const CcaOptions& options = {}) const;
  SvccaResult svcca(const SvccaOptions& options = {}) const;
  SvccaResult svcca(const std::string& x_layer, const std::string& y_layer,
                    const SvccaOptions& options = {}) const;
  PwccaResult pwcca(const PwccaOptions& options = {}) const;
  PwccaResult pwcca(const std::string& x_layer, const std::string& y_layer,
                    const PwccaOptions& options = {}) const;
  // Mean squared canonical correlation (Kornblith et al. 2019). 0-d.
  at::Tensor r2_cca(const CcaOptions& options = {}) const;
  at::Tensor r2_cca(const std::string& x_layer, const std::string& y_layer,
                    const CcaOptions& options = {}) const;
  // Linear CKA, biased HSIC form: ||Sxy||_F^2 / (||Sxx||_F ||Syy||_F) (Kornblith et al. 2019).
  // 0-d, through detail::linear_cka_from_moments. Throws when a layer has only constant features.
  at::Tensor linear_cka() const;
  at::Tensor linear_cka(const std::string& x_layer, const std::string& y_layer) const;

  // The moments of a pair, as the one-shot path builds them (without centered data), in each
  // layer's scaled units (see Scale above), which x_scale and y_scale report (the one-shot
  // path's units differ: compare moments times their scales).
  detail::PairMoments pair_moments(const std::string& x_layer, const std::string& y_layer) const;

  // The state as named tensors (all in the accumulator's dtype except min/max, in the input
  // dtype, and n and scale, float64):
  //   "n" 0-d float64 row count; per layer l (by index): "mean.l" [p], "comoment.l" [p, p],
  //   "min.l" [p], "max.l" [p] (exact, unscaled), "scale.l" 0-d (the layer's power-of-two unit:
  //   mean.l is the mean / scale.l, comoment.l the co-moment / scale.l^2); per kept pair (a, b):
  //   "cross.a.b" [p_a, p_b] (the cross co-moment / (scale.a scale.b)).
  // Across ranks "n" adds up, min/max reduce with MIN/MAX, scales with MAX (each rank first
  // rescales its moments to the largest), and comoment/cross add up once each rank's are
  // recentered to the global mean (all_reduce and svcca.all_reduce_state do that).
  // Empty before the first batch. The tensors are copies.
  std::map<std::string, at::Tensor> state() const;
  // The state with the scales multiplied back (the moments of the data itself; no "scale.l"
  // entries). Entries overflow to inf (or underflow to 0) where the data's magnitude is beyond
  // the dtype's square root range: measures should use state() or the results above.
  std::map<std::string, at::Tensor> unscaled_state() const;
  // Replaces the state by `state` (as returned by state(), possibly reduced across ranks; a state
  // without "scale.l" entries, as svcca before file format 2 wrote, means every scale is 1).
  // Throws, naming the entry, and leaves the accumulator unchanged when keys, shapes or dtypes
  // do not match this accumulator's layers, or when the state cannot come from any data: NaN or
  // Inf anywhere, n not a positive integer, min > max, a mean outside [min, max], a co-moment
  // diagonal outside [(max - min)^2 / 2, n (max - min)^2 / 4] or an off-diagonal or cross entry
  // with C_ij^2 > M_ii M_jj (Cauchy-Schwarz), or ||C_ab||_F^2 > ||M_a||_F ||M_b||_F (linear
  // CKA above 1); each within a relative tolerance of 1e-6 (float64) or 1e-3 (float32) for
  // rounding.
  void set_state(const std::map<std::string, at::Tensor>& state);
  // Writes the state to `path` (versioned format, written to a temporary name then renamed).
  void save(const std::string& path) const;
  // Reads an accumulator saved by save() (format 1 or 2); tensors land on `device`. Throws on a
  // missing file, a directory or other non-regular file, a truncated or corrupt file, an unknown
  // version, or a state that set_state refuses (naming the file and the entry).
  static CovarianceAccumulator load(const std::string& path, at::Device device = at::kCPU);

  int64_t n() const;
  bool empty() const { return n() == 0; }
  const CovarianceAccumulatorOptions& options() const { return options_; }
  const std::vector<std::pair<int64_t, int64_t>>& pair_indices() const { return pairs_; }
  // Feature counts (empty before the first batch).
  std::vector<int64_t> n_features() const;
  // dtypes of each layer's batches (empty before the first batch).
  std::vector<at::ScalarType> input_dtypes() const;
  // Each layer's scale (see Scale above; empty before the first batch).
  std::vector<double> scales() const;

 private:
  // The layers the overloads without names use: the first two (or the first, twice).
  const std::string& default_x() const { return options_.layers.at(0); }
  const std::string& default_y() const {
    return options_.layers.at(options_.layers.size() > 1 ? 1 : 0);
  }
  int64_t layer_index(const char* fn, const std::string& name) const;
  // Index into pairs_ of the pair {a, b} in either order, or -1.
  int64_t pair_index_or_none(int64_t a, int64_t b) const;
  void check_enough(const char* fn, int64_t a, int64_t b, bool cca_like) const;
  detail::PairMoments moments(const char* fn, const std::string& x_layer,
                              const std::string& y_layer, bool cca_like) const;
  // Validates `state` and replaces this accumulator's by it; the caller holds mutex_.
  void set_state_impl(const char* fn, const std::map<std::string, at::Tensor>& state,
                      const std::string& where);
  void merge_locked(const char* fn, const CovarianceAccumulator& other);
  void copy_from(const CovarianceAccumulator& other);
  void move_from(CovarianceAccumulator& other) noexcept;  // caller holds both locks
  void reset();
  void check_compatible(const char* fn, const char* name, const CovarianceAccumulator& other) const;

  CovarianceAccumulatorOptions options_;
  std::vector<std::pair<int64_t, int64_t>> pairs_;
  int64_t n_ = 0;
  std::vector<int64_t> p_;
  std::vector<at::ScalarType> input_dtypes_;
  std::vector<at::Tensor> mean_, comoment_, min_, max_;
  std::vector<at::Tensor> cross_;  // one per pairs_ entry
  std::vector<int> scale_exp_;     // per layer: moments are in units of 2^scale_exp_
  mutable std::mutex mutex_;
};

}  // namespace svcca
