// SVCCA: SVD reduction of each layer, then CCA.
#include "svcca/measures/svcca.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"
#include "svcca/factors.h"

namespace svcca {

namespace detail {

void check_svcca_options(const char* fn, const SvccaOptions& options) {
  check_cca_options(fn, options.cca);
  check_unit_interval(fn, "fraction", options.fraction);
  if (options.dims) {
    TORCH_CHECK_VALUE(*options.dims >= 1, fn, ": dims must be >= 1, but got ", *options.dims);
  }
}

FactorOptions svcca_factor_options(const SvccaOptions& options) {
  auto fopt = factor_options(options.cca);
  if (options.dims) {
    fopt.truncation = Truncation::kDims;
    fopt.dims = *options.dims;
  } else {
    fopt.truncation = options.keep == SvccaKeep::kVariance ? Truncation::kVarianceFraction
                                                           : Truncation::kSingularValueMassFraction;
    fopt.fraction = options.fraction;
  }
  return fopt;
}

SvccaResult svcca_from_moments(const char* fn, const PairMoments& m, const SvccaOptions& options) {
  auto pf = factor_pair(fn, m, svcca_factor_options(options));
  check_forced_correlations(fn, pf.x.rank, pf.y.rank, m.n, options.cca.allow_forced_correlations,
                            true);
  auto core = cca_core_of_pair(pf, m, /*with_vectors=*/false);
  SvccaResult r;
  r.correlations = core.correlations.to(m.result_dtype);
  r.score = r.correlations.mean();
  r.x_dims = pf.x.rank;
  r.y_dims = pf.y.rank;
  return r;
}

}  // namespace detail

SvccaResult svcca(const at::Tensor& x, const at::Tensor& y, const SvccaOptions& options) {
  constexpr const char* fn = "svcca";
  detail::check_pair(fn, x, y);
  detail::check_svcca_options(fn, options);
  const int64_t n = x.size(0);
  if (x.size(1) > n || y.size(1) > n) {
    // A wide layer (p > n): its SVD from the n x n Gram matrix (svcca/factors.h), never a
    // [p, p] covariance.
    const auto fopt = detail::svcca_factor_options(options);
    const auto p = options.cca.precision;
    auto fx = detail::whitened_factor(fn, "x", x, fopt, p, FactorSide::kAuto);
    auto fy = detail::whitened_factor(fn, "y", y, fopt, p, FactorSide::kAuto);
    detail::check_forced_correlations(fn, fx.rank, fy.rank, n,
                                      options.cca.allow_forced_correlations, true);
    SvccaResult r;
    r.correlations = detail::canonical_correlations(fx, fy).to(detail::result_dtype(x, y));
    r.score = r.correlations.mean();
    r.x_dims = fx.rank;
    r.y_dims = fy.rank;
    return r;
  }
  return detail::svcca_from_moments(fn, detail::pair_moments(x, y, options.cca.precision), options);
}

}  // namespace svcca
