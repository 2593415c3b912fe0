// SVCCA: SVD reduction of each layer, then CCA.
#include "svcca/measures/svcca.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"

namespace svcca {

SvccaResult svcca(const at::Tensor& x, const at::Tensor& y, const SvccaOptions& options) {
  constexpr const char* fn = "svcca";
  detail::check_pair(fn, x, y);
  detail::check_cca_options(fn, options.cca);
  detail::check_unit_interval(fn, "fraction", options.fraction);
  if (options.dims) {
    TORCH_CHECK_VALUE(*options.dims >= 1, fn, ": dims must be >= 1, but got ", *options.dims);
  }

  auto fopt = detail::factor_options(options.cca);
  if (options.dims) {
    fopt.truncation = detail::Truncation::kDims;
    fopt.dims = *options.dims;
  } else {
    fopt.truncation = options.keep == SvccaKeep::kVariance
                          ? detail::Truncation::kVarianceFraction
                          : detail::Truncation::kSingularValueMassFraction;
    fopt.fraction = options.fraction;
  }

  auto pf = detail::factor_pair(fn, x, y, fopt, options.cca.precision);
  auto core = detail::cca_core(pf.x, pf.y, pf.sxy, /*with_vectors=*/false);

  const auto out = detail::result_dtype(x, y);
  SvccaResult r;
  r.correlations = core.correlations.to(out);
  r.score = r.correlations.mean();
  r.x_dims = pf.x.rank;
  r.y_dims = pf.y.rank;
  return r;
}

}  // namespace svcca
