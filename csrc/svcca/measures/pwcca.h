// PWCCA: projection-weighted CCA (Morcos et al. 2018).
#pragma once

#include <ATen/core/Tensor.h>

#include "svcca/measures/cca.h"

namespace svcca {

// How the canonical correlations are weighted.
enum class PwccaWeighting {
  // google/svcca's compute_pwcca (default): with u_i the i-th left singular vector of the
  // symmetrically whitened cross-covariance (rotated back to feature coordinates), the
  // "directions" d_i = x_c u_i + mean_i (no whitening; neuron i's mean added to direction i) are
  // orthonormalised in order (QR, q_i), and alpha_i ∝ sum_j |<q_i, x_j>| over the raw
  // (uncentered) features x_j. The layer with fewer directions supplies the weights, x on ties;
  // the reference's wrong-layer / crash branch (google/svcca PR #9) is fixed to use y there.
  kReference,
  // The paper's formula: alpha_i ∝ sum_j |<h_i, z_j>|, h_i = x_c a_i the i-th canonical variate
  // of x and z_j the centered features of x. Always weights by x (first argument).
  kCanonicalVariates,
};

struct PwccaOptions {
  PwccaWeighting weighting = PwccaWeighting::kReference;
  CcaOptions cca = {};
};

struct PwccaResult {
  at::Tensor score;             // 0-d: sum_i weights_i * correlations_i
  at::Tensor weights;           // [k], non-negative, sum to 1
  at::Tensor correlations;      // [k] descending
  bool weights_from_y = false;  // true when y supplied the weights (kReference, y has fewer)
  int64_t x_rank = 0;           // directions of x that entered the CCA
  int64_t y_rank = 0;
};

// Projection-weighted CCA of x: [n, p1] and y: [n, p2]. Not symmetric: pwcca(x, y) and
// pwcca(y, x) differ in general. All weights come from covariance-sized products (a Cholesky
// factor of the directions' Gram matrix replaces the reference's [n, k] QR), so the cost beyond
// the covariance products is O(p^3). Throws like cca.
PwccaResult pwcca(const at::Tensor& x, const at::Tensor& y, const PwccaOptions& options = {});

namespace detail {
// PWCCA from a pair's moments (see cca_from_moments). Without centered data in `m`, linearly
// dependent reference directions (a singular Gram matrix) are an error instead of a QR fallback.
PwccaResult pwcca_from_moments(const char* fn, const PairMoments& m, const PwccaOptions& options);
// Symmetric (ZCA) whitening (C + ridge)^(-1/2) of a layer on its kept directions, [k, k]: what
// the reference weighting decomposes with. A per-layer factor (grids compute it once per layer).
at::Tensor symmetric_whitening(const LayerFactors& f);
// PWCCA from both layers' factors (fx, fy built with factor_options(options.cca)) and the pair's
// moments (n, means, sxy, optional centered data, result dtype; sxx and syy are not read).
// zca_x / zca_y: symmetric_whitening of fx / fy for kReference (undefined: computed here).
PwccaResult pwcca_from_factors(const char* fn, const LayerFactors& fx, const LayerFactors& fy,
                               const at::Tensor& zca_x, const at::Tensor& zca_y,
                               const PairMoments& m, const PwccaOptions& options);
}  // namespace detail

}  // namespace svcca
