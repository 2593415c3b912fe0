// Canonical correlation analysis (CCA) of two layers, and summaries of canonical correlations.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "svcca/linalg.h"

namespace svcca {

struct CcaOptions {
  // Ridge added to each covariance before whitening, relative to that layer's largest feature
  // variance (google/svcca's epsilon, used as a ridge). 0: no ridge.
  double epsilon = 0.0;
  // Features whose variance is <= variance_cutoff * (largest feature variance of the layer) are
  // dropped before CCA, as google/svcca drops them with its epsilon. Exactly constant features
  // are always dropped. 0: drop only constant features.
  double variance_cutoff = 0.0;
  // Eigen-directions of a layer's covariance with eigenvalue <= rank_rtol * largest are treated
  // as exact zeros (rank deficiency) and dropped. nullopt: n_features * machine epsilon of the
  // compute dtype, and directions below the rounding level of the input dtype are dropped too
  // (detail::input_noise_floor; float32 values carry 24 bits), so a layer's CCA with itself is
  // 1. A value: that relative test alone.
  std::optional<double> rank_rtol;
  // Precision of the numerics (svcca.h).
  Precision precision = Precision::kFloat64;
  // Centered, n examples span n - 1 dimensions, so when the directions the two layers keep
  // number rx + ry > n - 1 their spans intersect and at least rx + ry - (n - 1) correlations are
  // 1 for ANY data (independent noise included). By default such a pair is refused with an error
  // that names rx, ry and n. true: compute anyway (for experts who account for the forced
  // correlations themselves).
  bool allow_forced_correlations = false;
};

struct CcaResult {
  at::Tensor correlations;  // [k] canonical correlations, descending, in [0, 1];
                            // k = min(rank of x, rank of y) after dropping features
  at::Tensor x_weights;     // [p1, k] canonical weights: x_c @ x_weights are the canonical
                         // variates (unit variance, uncorrelated); zero rows for dropped features
  at::Tensor y_weights;  // [p2, k] likewise for y
  at::Tensor x_mask;     // [p1] bool: features of x kept
  at::Tensor y_mask;     // [p2] bool: features of y kept
  int64_t x_rank = 0;    // directions of x that entered the CCA
  int64_t y_rank = 0;
};

// Canonical correlations of x: [n, p1] and y: [n, p2] (Hotelling 1936; as used by Raghu et al.
// 2017): the singular values of Wx^T Sxy Wy, with W the whitening of each layer's covariance
// (eigh, no explicit inverse; rank-deficient directions dropped, so rank-deficient inputs give
// exact results over the directions they have).
// A layer whose kept eigenvalues span more than kRefineCondition is refined against its data
// (detail::whitened_data), so ill-conditioned layers keep float64 accuracy.
// Throws (c10::ValueError / c10::TypeError) when the inputs are not both 2-D real float tensors
// on one device with the same n >= 2, contain NaN/Inf, have n < p + 2 on either side (CCA is
// degenerate there: use svcca), have only constant features, or an option is out of range.
// Pairs whose kept directions number rx + ry > n - 1 are refused (their spans must intersect:
// at least rx + ry - (n - 1) correlations would be 1 for any data) unless
// options.allow_forced_correlations; aim for n well above p1 + p2 (google/svcca suggests 5-10x).
//   auto r = svcca::cca(x, y);  r.correlations.mean()
CcaResult cca(const at::Tensor& x, const at::Tensor& y, const CcaOptions& options = {});

// Mean canonical correlation. rho: [k].
at::Tensor mean_correlation(const at::Tensor& correlations);
// Mean squared canonical correlation, R^2_CCA (Kornblith et al. 2019).
at::Tensor mean_squared_correlation(const at::Tensor& correlations);
// Mean of the top_k largest correlations (all of them when top_k exceeds k). top_k >= 1.
at::Tensor top_k_mean(const at::Tensor& correlations, int64_t top_k);
// google/svcca's threshold rule: the mean of the first i correlations, with i the smallest
// index whose prefix sum reaches threshold * total (sum_threshold); all correlations when no
// prefix reaches it. Unlike the reference, threshold 0 returns the first correlation rather than
// the NaN mean of an empty prefix. threshold in [0, 1].
at::Tensor threshold_mean(const at::Tensor& correlations, double threshold);

namespace detail {

// google/svcca's sum_threshold rule (compat::sum_threshold validates and calls this): the first
// i with sum(values[:i]) / sum(values) >= threshold, or -1 when there is none (or values is empty).
int64_t prefix_reaching(const at::Tensor& values, double threshold);

// The CCA core shared by cca, svcca and pwcca: correlations and the SVD of the whitened
// cross-covariance, from both layers' factors and the full cross-covariance sxy [p1, p2].
struct CcaCore {
  at::Tensor correlations;  // [k]
  at::Tensor u;             // [rx, k] left singular vectors (whitened x coordinates)
  at::Tensor v;             // [ry, k] right singular vectors
};
// with_vectors = false leaves u and v undefined and computes singular values only (about half
// the cost of the full SVD).
CcaCore cca_core(const LayerFactors& fx, const LayerFactors& fy, const at::Tensor& sxy,
                 bool with_vectors = true);

// Both layers' factors, built from a pair's moments under one set of factor options.
struct PairFactors {
  LayerFactors x, y;
};

// Whitening from a covariance squares the condition number: a direction with eigenvalue
// lambda is whitened to about eps * lambda_max / lambda. Layers whose kept directions span a
// larger ratio than this are refined against their data when it is at hand (whitened_data).
inline constexpr double kRefineCondition = 1e6;
// Whether f's kept eigenvalues span a ratio above kRefineCondition (never with a ridge: that
// whitening is regularized on purpose).
bool ill_conditioned(const LayerFactors& f);
// The whitened data Z = X_kept W ([n, r]) of a layer from its centered data ([n, p]). When
// `refine`, Z is re-orthonormalized against the data (Cholesky of Z^T Z / (n - 1), which is
// well conditioned, so its factor L is accurate: Z <- Z L^-T) and f.whitening becomes W L^-T, so
// that Z^T Z / (n - 1) = I to rounding however ill-conditioned the layer is.
at::Tensor whitened_data(LayerFactors& f, const at::Tensor& centered, bool refine);
// CCA of two layers from their whitened data: the SVD of Zx^T Zy / (n - 1).
CcaCore cca_core_from_data(const at::Tensor& zx, const at::Tensor& zy, bool with_vectors = true);
// cca_core, or, when the pair's moments carry the centered data and a layer is ill-conditioned,
// cca_core_from_data with that layer refined (its whitening in pf updated to match).
CcaCore cca_core_of_pair(PairFactors& pf, const PairMoments& m, bool with_vectors = true);

void check_cca_options(const char* fn, const CcaOptions& options);

// Throws c10::ValueError, naming fn, both direction counts and n, when rx + ry > n - 1 (the
// layers' spans must intersect, forcing rx + ry - (n - 1) unit correlations) and !allow.
// `svcca`: the message suggests fewer SVCCA directions as well as more examples.
void check_forced_correlations(const char* fn, int64_t rx, int64_t ry, int64_t n, bool allow,
                               bool svcca);
FactorOptions factor_options(const CcaOptions& options);

PairFactors factor_pair(const char* fn, const PairMoments& m, const FactorOptions& options);

// CCA from a pair's moments: the one code path behind cca() and the streaming accumulators.
// The caller has validated the inputs the moments came from.
CcaResult cca_from_moments(const char* fn, const PairMoments& m, const CcaOptions& options);

}  // namespace detail
}  // namespace svcca
