// Canonical correlation analysis of two layers.
#include "svcca/measures/cca.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"

namespace svcca {
namespace detail {

int64_t prefix_reaching(const at::Tensor& values, double threshold) {
  if (values.numel() == 0) return -1;
  at::Tensor a = values.to(at::kDouble);
  at::Tensor total = a.sum();
  at::Tensor prefix = a.cumsum(0) - a;  // sum(values[:i])
  at::Tensor hit = (prefix / total) >= threshold;
  if (!hit.any().item<bool>()) return -1;
  return hit.to(at::kInt).argmax().item<int64_t>();
}

void check_cca_options(const char* fn, const CcaOptions& options) {
  check_non_negative(fn, "epsilon", options.epsilon);
  check_unit_interval(fn, "variance_cutoff", options.variance_cutoff);
  if (options.rank_rtol) check_unit_interval(fn, "rank_rtol", *options.rank_rtol);
}

void check_forced_correlations(const char* fn, int64_t rx, int64_t ry, int64_t n, bool allow,
                               bool svcca) {
  if (allow || rx + ry <= n - 1) return;
  const int64_t forced = rx + ry - (n - 1);
  const int64_t half = (n - 1) / 2;
  TORCH_CHECK_VALUE(
      false, fn, ": x keeps ", rx, " directions and y keeps ", ry, ", but n = ", n,
      " examples span only n - 1 = ", n - 1, " dimensions: with rx + ry = ", rx + ry,
      " > n - 1 the two spans must intersect, so at least ", forced,
      " canonical correlations would be 1 for any data (independent noise too). Use ", "at least ",
      rx + ry + 1, " examples",
      svcca ? std::string(", or fewer SVCCA directions (dims <= ") +
                  std::to_string(std::max<int64_t>(half, 1)) + " per layer)"
            : std::string(", or svcca with dims <= ") + std::to_string(std::max<int64_t>(half, 1)),
      "; allow_forced_correlations=true computes it anyway");
}

FactorOptions factor_options(const CcaOptions& options) {
  FactorOptions f;
  f.epsilon = options.epsilon;
  f.variance_cutoff = options.variance_cutoff;
  f.rank_rtol = options.rank_rtol;
  return f;
}

CcaCore cca_core(const LayerFactors& fx, const LayerFactors& fy, const at::Tensor& sxy,
                 bool with_vectors) {
  at::Tensor m = at::mm(mh(fx.whitening), at::mm(select_kept(sxy, fx, &fy), fy.whitening));
  // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
  if (!with_vectors) return {at::linalg_svdvals(m).clamp(0.0, 1.0), {}, {}};
  auto svd = at::linalg_svd(m, /*full_matrices=*/false);
  return {std::get<1>(svd).clamp(0.0, 1.0), std::get<0>(svd), mh(std::get<2>(svd))};
}

bool ill_conditioned(const LayerFactors& f) {
  // A ridge whitens S + ridge on purpose (regularized CCA; it also bounds the conditioning):
  // re-orthonormalizing against the data would undo it.
  if (f.rank < 2 || f.ridge > 0.0) return false;
  const double hi = f.eigenvalues[0].item<double>();
  const double lo = f.eigenvalues[f.rank - 1].item<double>();
  return hi > kRefineCondition * lo;
}

at::Tensor whitened_data(LayerFactors& f, const at::Tensor& centered, bool refine) {
  at::Tensor xk = f.all_kept ? centered : centered.index_select(1, f.kept_index);
  at::Tensor z = at::mm(xk, f.whitening);
  if (!refine) return z;
  const double n1 = static_cast<double>(centered.size(0) - 1);
  auto chol = at::linalg_cholesky_ex(column_gram(z).div_(n1));
  if (std::get<1>(chol).item<int64_t>() != 0) return z;  // not positive definite: keep as is
  const at::Tensor& l = std::get<0>(chol);
  // W L^-T = (L^-1 W^T)^T, and likewise for Z.
  f.whitening = mh(at::linalg_solve_triangular(l, mh(f.whitening), /*upper=*/false));
  return mh(at::linalg_solve_triangular(l, mh(z), /*upper=*/false));
}

CcaCore cca_core_from_data(const at::Tensor& zx, const at::Tensor& zy, bool with_vectors) {
  at::Tensor m = at::mm(mh(zx), zy).div_(static_cast<double>(zx.size(0) - 1));
  if (!with_vectors) return {at::linalg_svdvals(m).clamp(0.0, 1.0), {}, {}};
  auto svd = at::linalg_svd(m, /*full_matrices=*/false);
  return {std::get<1>(svd).clamp(0.0, 1.0), std::get<0>(svd), mh(std::get<2>(svd))};
}

CcaCore cca_core_of_pair(PairFactors& pf, const PairMoments& m, bool with_vectors) {
  const bool data = (m.x_centered.defined() || m.x_source.defined()) &&
                    (m.y_centered.defined() || m.y_source.defined());
  const bool refine_x = data && ill_conditioned(pf.x);
  const bool refine_y = data && ill_conditioned(pf.y);
  if (!refine_x && !refine_y) return cca_core(pf.x, pf.y, m.sxy, with_vectors);
  // The cross term from the data too: through Sxy its rounding would be amplified again.
  at::Tensor zx = whitened_data(pf.x, centered_data(m, /*y_side=*/false), refine_x);
  at::Tensor zy = whitened_data(pf.y, centered_data(m, /*y_side=*/true), refine_y);
  return cca_core_from_data(zx, zy, with_vectors);
}

PairFactors factor_pair(const char* fn, const PairMoments& m, const FactorOptions& options) {
  return {factor_layer(fn, "x", m.sxx, m.x_non_constant,
                       with_input_floor(options, m.x_input_dtype, m.x_mean, m.sxx, m.n)),
          factor_layer(fn, "y", m.syy, m.y_non_constant,
                       with_input_floor(options, m.y_input_dtype, m.y_mean, m.syy, m.n))};
}

CcaResult cca_from_moments(const char* fn, const PairMoments& m, const CcaOptions& options) {
  auto pf = factor_pair(fn, m, factor_options(options));
  check_forced_correlations(fn, pf.x.rank, pf.y.rank, m.n, options.allow_forced_correlations,
                            false);
  auto core = cca_core_of_pair(pf, m);
  CcaResult r;
  r.correlations = core.correlations.to(m.result_dtype);
  // Weights in data units: the moments are of x / x_scale.
  r.x_weights =
      scatter_rows(at::mm(pf.x.whitening, core.u).div_(m.x_scale), pf.x).to(m.result_dtype);
  r.y_weights =
      scatter_rows(at::mm(pf.y.whitening, core.v).div_(m.y_scale), pf.y).to(m.result_dtype);
  r.x_mask = pf.x.kept;
  r.y_mask = pf.y.kept;
  r.x_rank = pf.x.rank;
  r.y_rank = pf.y.rank;
  return r;
}

}  // namespace detail

CcaResult cca(const at::Tensor& x, const at::Tensor& y, const CcaOptions& options) {
  constexpr const char* fn = "cca";
  detail::check_pair(fn, x, y);
  detail::check_more_examples_than_features(fn, "x", x);
  detail::check_more_examples_than_features(fn, "y", y);
  detail::check_cca_options(fn, options);

  return detail::cca_from_moments(fn, detail::pair_moments(x, y, options.precision), options);
}

at::Tensor mean_correlation(const at::Tensor& correlations) {
  return correlations.mean();
}

at::Tensor mean_squared_correlation(const at::Tensor& correlations) {
  return correlations.square().mean();
}

at::Tensor top_k_mean(const at::Tensor& correlations, int64_t top_k) {
  TORCH_CHECK_VALUE(top_k >= 1, "top_k_mean: top_k must be >= 1, but got ", top_k);
  return correlations.narrow(0, 0, std::min<int64_t>(top_k, correlations.numel())).mean();
}

at::Tensor threshold_mean(const at::Tensor& correlations, double threshold) {
  detail::check_unit_interval("threshold_mean", "threshold", threshold);
  int64_t idx = detail::prefix_reaching(correlations, threshold);
  if (idx < 0) idx = correlations.numel();
  return correlations.narrow(0, 0, std::max<int64_t>(idx, 1)).mean();
}

}  // namespace svcca
