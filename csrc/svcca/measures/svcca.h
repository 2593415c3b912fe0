// SVCCA (Raghu et al. 2017): reduce each layer to its top singular directions, then CCA.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "svcca/measures/cca.h"

namespace svcca {

// Which directions of a layer's SVD to keep when no fixed count is given.
enum class SvccaKeep {
  // Smallest k with sum(s_i^2, i<k) / sum(s_i^2) >= fraction: the fraction of *variance*
  // (squared singular values), as the SVCCA paper's prose ("99% of the variance"). Default.
  kVariance,
  // Smallest k with sum(s_i, i<k) / sum(s_i) >= fraction: the fraction of singular-value
  // *mass*, as google/svcca's tutorial computes it. Keeps more directions than kVariance.
  kSingularValueMass,
};

struct SvccaOptions {
  // Fraction of the layer kept (see keep). In [0, 1]; 1 keeps every direction (= CCA).
  double fraction = 0.99;
  // Rule that `fraction` applies to.
  SvccaKeep keep = SvccaKeep::kVariance;
  // When set, keep exactly this many top directions per layer (fewer when the layer's rank is
  // lower; see SvccaResult) and ignore fraction/keep. google/svcca's tutorial uses 20.
  std::optional<int64_t> dims;
  // CCA options for the reduced layers. epsilon is relative to the largest kept variance (as in
  // google/svcca's recipe, where the CCA rescales the reduced activations).
  CcaOptions cca = {};
};

struct SvccaResult {
  at::Tensor score;         // 0-d: mean of the canonical correlations of the reduced layers
  at::Tensor correlations;  // [k] descending, k = min(x_dims, y_dims)
  int64_t x_dims = 0;       // directions of x kept
  int64_t y_dims = 0;
};

// SVCCA similarity of x: [n, p1] and y: [n, p2]. The SVD of the centered activations is taken
// from the eigendecomposition of their covariance (same singular vectors, s_i^2 = (n-1) lambda_i),
// so the reduction costs no pass over the data beyond the covariance products; CCA then runs on
// the kept directions. p may exceed n (the reduction keeps at most rank <= n - 1 directions): a
// layer with p > n is reduced from its n x n Gram matrix instead (svcca/factors.h; same numbers),
// so a flattened conv layer of any width costs O(n^2 p) time and O(n^2) memory.
// Throws like cca, and when fraction is outside [0, 1] or dims < 1.
SvccaResult svcca(const at::Tensor& x, const at::Tensor& y, const SvccaOptions& options = {});

namespace detail {
// SVCCA from a pair's moments (see cca_from_moments); options already validated.
SvccaResult svcca_from_moments(const char* fn, const PairMoments& m, const SvccaOptions& options);
// Validates SVCCA options, naming `fn`.
void check_svcca_options(const char* fn, const SvccaOptions& options);
// The per-layer factor options of SVCCA (the truncation rule of dims / fraction / keep).
FactorOptions svcca_factor_options(const SvccaOptions& options);
}  // namespace detail

}  // namespace svcca
