// Exact, order-independent, mergeable covariance accumulator: the sufficient statistics of the
// CCA family and linear CKA for one or more layers, streamed batch by batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
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
//   svcca::CovarianceAccumulator acc;          // layers "x" and "y"
//   for (auto& [x, y] : batches) acc.update(x, y);
//   acc.cca().correlations;  acc.linear_cka();
class CovarianceAccumulator {
 public:
  // Throws when the layer names are empty or repeated, a pair names an unknown layer or a layer
  // with itself, or dtype is not float32/float64.
  explicit CovarianceAccumulator(CovarianceAccumulatorOptions options = {});

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

  // The moments of a pair, as the one-shot path builds them (without centered data).
  detail::PairMoments pair_moments(const std::string& x_layer, const std::string& y_layer) const;

  // The state as named tensors (all in the accumulator's dtype except min/max, float64):
  //   "n" 0-d float64 row count; per layer l (by index): "mean.l" [p], "comoment.l" [p, p],
  //   "min.l" [p], "max.l" [p]; per kept pair (a, b): "cross.a.b" [p_a, p_b].
  // Across ranks "n" adds up, min/max reduce with MIN/MAX, and comoment/cross add up once each
  // rank's are recentered to the global mean (all_reduce and svcca.all_reduce_state do that).
  // Empty before the first batch. The tensors are copies.
  std::map<std::string, at::Tensor> state() const;
  // Replaces the state by `state` (as returned by state(), possibly reduced across ranks).
  // Throws when keys, shapes or dtypes do not match this accumulator's layers.
  void set_state(const std::map<std::string, at::Tensor>& state);

  // Writes the state to `path` (versioned format, written to a temporary name then renamed).
  void save(const std::string& path) const;
  // Reads an accumulator saved by save(); tensors land on `device`. Throws on a missing,
  // truncated or corrupt file, or an unknown version.
  static CovarianceAccumulator load(const std::string& path, at::Device device = at::kCPU);

  int64_t n() const { return n_; }
  bool empty() const { return n_ == 0; }
  const CovarianceAccumulatorOptions& options() const { return options_; }
  const std::vector<std::pair<int64_t, int64_t>>& pair_indices() const { return pairs_; }
  // Feature counts (empty before the first batch).
  const std::vector<int64_t>& n_features() const { return p_; }
  // dtypes of each layer's batches (empty before the first batch).
  const std::vector<at::ScalarType>& input_dtypes() const { return input_dtypes_; }

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
  void set_state_impl(const char* fn, const std::map<std::string, at::Tensor>& state);
  void check_compatible(const char* fn, const char* name, const CovarianceAccumulator& other) const;

  CovarianceAccumulatorOptions options_;
  std::vector<std::pair<int64_t, int64_t>> pairs_;
  int64_t n_ = 0;
  std::vector<int64_t> p_;
  std::vector<at::ScalarType> input_dtypes_;
  std::vector<at::Tensor> mean_, comoment_, min_, max_;
  std::vector<at::Tensor> cross_;  // one per pairs_ entry
};

}  // namespace svcca
