// SVCCA: SVD reduction of each layer, then CCA.
#include "svcca/measures/svcca.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"

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
  return detail::svcca_from_moments(fn, detail::pair_moments(x, y, options.cca.precision), options);
}

}  // namespace svcca
