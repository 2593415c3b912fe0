// Implementations of torch.ops.svcca.*: thin adapters from schema arguments to svcca's C++ API,
// registered as CompositeImplicitAutograd (CPU, CUDA and autograd from one composition).
#include <torch/library.h>

#include <string>

#include "svcca/svcca.h"

namespace svcca {
namespace ops {
namespace {

Precision parse_precision(const char* fn, c10::string_view precision) {
  if (precision == "float64") return Precision::kFloat64;
  if (precision == "input") return Precision::kInput;
  TORCH_CHECK_VALUE(false, fn, ": precision must be \"float64\" or \"input\", but got \"",
                    std::string(precision), "\"");
}

CcaOptions cca_options(const char* fn, double epsilon, double variance_cutoff,
                       c10::optional<double> rank_rtol, c10::string_view precision) {
  CcaOptions o;
  o.epsilon = epsilon;
  o.variance_cutoff = variance_cutoff;
  if (rank_rtol) o.rank_rtol = *rank_rtol;
  o.precision = parse_precision(fn, precision);
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cca_op(
    const at::Tensor& x, const at::Tensor& y, double epsilon, double variance_cutoff,
    c10::optional<double> rank_rtol, c10::string_view precision) {
  auto r = cca(x, y, cca_options("cca", epsilon, variance_cutoff, rank_rtol, precision));
  return {r.correlations, r.x_weights, r.y_weights, r.x_mask, r.y_mask};
}

std::tuple<at::Tensor, at::Tensor, int64_t, int64_t> svcca_op(
    const at::Tensor& x, const at::Tensor& y, double fraction, c10::optional<int64_t> dims,
    c10::string_view keep, double epsilon, double variance_cutoff, c10::optional<double> rank_rtol,
    c10::string_view precision) {
  SvccaOptions o;
  o.fraction = fraction;
  if (dims) o.dims = *dims;
  if (keep == "variance") {
    o.keep = SvccaKeep::kVariance;
  } else if (keep == "singular_value_mass") {
    o.keep = SvccaKeep::kSingularValueMass;
  } else {
    TORCH_CHECK_VALUE(false,
                      "svcca: keep must be \"variance\" or \"singular_value_mass\", but got \"",
                      std::string(keep), "\"");
  }
  o.cca = cca_options("svcca", epsilon, variance_cutoff, rank_rtol, precision);
  auto r = svcca::svcca(x, y, o);
  return {r.score, r.correlations, r.x_dims, r.y_dims};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pwcca_op(const at::Tensor& x, const at::Tensor& y,
                                                        c10::string_view weighting, double epsilon,
                                                        double variance_cutoff,
                                                        c10::optional<double> rank_rtol,
                                                        c10::string_view precision) {
  PwccaOptions o;
  if (weighting == "reference") {
    o.weighting = PwccaWeighting::kReference;
  } else if (weighting == "canonical_variates") {
    o.weighting = PwccaWeighting::kCanonicalVariates;
  } else {
    TORCH_CHECK_VALUE(
        false, "pwcca: weighting must be \"reference\" or \"canonical_variates\", but got \"",
        std::string(weighting), "\"");
  }
  o.cca = cca_options("pwcca", epsilon, variance_cutoff, rank_rtol, precision);
  auto r = pwcca(x, y, o);
  return {r.score, r.weights, r.correlations};
}

}  // namespace
}  // namespace ops
}  // namespace svcca

TORCH_LIBRARY_IMPL(svcca, CompositeImplicitAutograd, m) {
  m.impl("cca", &svcca::ops::cca_op);
  m.impl("svcca", &svcca::ops::svcca_op);
  m.impl("pwcca", &svcca::ops::pwcca_op);
  m.impl("get_cca_similarity", &svcca::compat::get_cca_similarity);
  m.impl("compute_pwcca", &svcca::compat::compute_pwcca);
  m.impl("sum_threshold", &svcca::compat::sum_threshold);
  m.impl("get_pls_similarity", &svcca::compat::get_pls_similarity);
  m.impl("get_pca", &svcca::compat::get_pca);
  // CKA family and Procrustes.

  // Streaming accumulators.

  // Conv-layer recipes and Fourier CCA.
}
