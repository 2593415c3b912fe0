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
    c10::optional<double> rank_rtol, c10::string_view precision, bool allow_forced_correlations) {
  auto o = cca_options("cca", epsilon, variance_cutoff, rank_rtol, precision);
  o.allow_forced_correlations = allow_forced_correlations;
  auto r = cca(x, y, o);
  return {r.correlations, r.x_weights, r.y_weights, r.x_mask, r.y_mask};
}

std::tuple<at::Tensor, at::Tensor, int64_t, int64_t> svcca_op(
    const at::Tensor& x, const at::Tensor& y, double fraction, c10::optional<int64_t> dims,
    c10::string_view keep, double epsilon, double variance_cutoff, c10::optional<double> rank_rtol,
    c10::string_view precision, bool allow_forced_correlations) {
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
  o.cca.allow_forced_correlations = allow_forced_correlations;
  auto r = svcca::svcca(x, y, o);
  return {r.score, r.correlations, r.x_dims, r.y_dims};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pwcca_op(const at::Tensor& x, const at::Tensor& y,
                                                        c10::string_view weighting, double epsilon,
                                                        double variance_cutoff,
                                                        c10::optional<double> rank_rtol,
                                                        c10::string_view precision,
                                                        bool allow_forced_correlations) {
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
  o.cca.allow_forced_correlations = allow_forced_correlations;
  auto r = pwcca(x, y, o);
  return {r.score, r.weights, r.correlations};
}

at::Tensor linear_cka_op(const at::Tensor& x, const at::Tensor& y, bool debiased,
                         c10::string_view precision) {
  LinearCkaOptions o;
  o.debiased = debiased;
  o.precision = parse_precision("linear_cka", precision);
  return linear_cka(x, y, o);
}

at::Tensor rbf_cka_op(const at::Tensor& x, const at::Tensor& y, double threshold,
                      c10::optional<double> sigma, bool debiased, c10::string_view precision) {
  RbfCkaOptions o;
  o.threshold = threshold;
  if (sigma) o.sigma = *sigma;
  o.debiased = debiased;
  o.precision = parse_precision("rbf_cka", precision);
  return rbf_cka(x, y, o);
}

// procrustes returns the similarity score (1: same up to rotation, scale and shift), like the
// other measures; procrustes_distance the distance 2 - 2 * score.
at::Tensor procrustes_op(const at::Tensor& x, const at::Tensor& y, c10::string_view precision) {
  ProcrustesOptions o;
  o.precision = parse_precision("procrustes", precision);
  return procrustes(x, y, o);
}

at::Tensor procrustes_distance_op(const at::Tensor& x, const at::Tensor& y,
                                  c10::string_view precision) {
  ProcrustesOptions o;
  o.precision = parse_precision("procrustes_distance", precision);
  return procrustes_distance(x, y, o);
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
  m.impl("get_svcca_similarity", &svcca::compat::get_svcca_similarity);
  m.impl("sum_threshold", &svcca::compat::sum_threshold);
  m.impl("get_pls_similarity", &svcca::compat::get_pls_similarity);
  m.impl("get_pca", &svcca::compat::get_pca);
  // CKA family and Procrustes.
  m.impl("linear_cka", &svcca::ops::linear_cka_op);
  m.impl("rbf_cka", &svcca::ops::rbf_cka_op);
  m.impl("procrustes", &svcca::ops::procrustes_op);
  m.impl("procrustes_distance", &svcca::ops::procrustes_distance_op);

  // Streaming accumulators.

  // Conv-layer recipes and Fourier CCA.
  m.impl("fourier_ccas", &svcca::compat::fourier_ccas);
  m.impl("fourier_cca",
         [](const at::Tensor& x, const at::Tensor& y, c10::string_view layout, double epsilon,
            double variance_cutoff, c10::optional<double> rank_rtol, c10::string_view precision)
             -> std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> {
           constexpr const char* fn = "fourier_cca";
           svcca::FourierCcaOptions o;
           o.layout = svcca::detail::parse_conv_layout(fn, "layout", std::string(layout));
           o.epsilon = epsilon;
           o.variance_cutoff = variance_cutoff;
           if (rank_rtol) o.rank_rtol = *rank_rtol;
           o.precision = svcca::ops::parse_precision(fn, precision);
           auto r = svcca::fourier_cca(x, y, o);
           return {r.correlations, r.valid, r.x_mask, r.y_mask, r.mean, r.mean_without_dc};
         });
  m.impl("conv_features",
         [](const at::Tensor& x, const at::Tensor& y, c10::string_view reduction,
            c10::string_view match, c10::string_view mode, c10::string_view layout,
            int64_t position_stride) -> std::tuple<at::Tensor, at::Tensor> {
           constexpr const char* fn = "conv_features";
           svcca::ConvRecipe r;
           r.reduction =
               svcca::detail::parse_conv_reduction(fn, "reduction", std::string(reduction));
           r.match = svcca::detail::parse_spatial_match(fn, "match", std::string(match));
           r.upsample = svcca::detail::parse_resize_mode(fn, "mode", std::string(mode));
           r.layout = svcca::detail::parse_conv_layout(fn, "layout", std::string(layout));
           r.position_stride = position_stride;
           auto f = svcca::conv_features(x, y, r);
           return {f.first, f.second};
         });
  m.impl("fold_positions", [](const at::Tensor& acts, c10::string_view layout,
                              int64_t position_stride) {
    return svcca::fold_positions(
        acts, svcca::detail::parse_conv_layout("fold_positions", "layout", std::string(layout)),
        position_stride);
  });
  m.impl("global_avg_pool", [](const at::Tensor& acts, c10::string_view layout) {
    return svcca::global_avg_pool(
        acts, svcca::detail::parse_conv_layout("global_avg_pool", "layout", std::string(layout)));
  });
  m.impl("resize_spatial", [](const at::Tensor& acts, std::vector<int64_t> size,
                              c10::string_view mode, c10::string_view layout) {
    constexpr const char* fn = "resize_spatial";
    TORCH_CHECK_VALUE(size.size() == 2, fn, ": size must have 2 entries [height, width], but got ",
                      size.size());
    return svcca::resize_spatial(
        acts, size[0], size[1], svcca::detail::parse_resize_mode(fn, "mode", std::string(mode)),
        svcca::detail::parse_conv_layout(fn, "layout", std::string(layout)));
  });
}
