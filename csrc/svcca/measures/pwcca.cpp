// PWCCA: projection-weighted CCA.
#include "svcca/measures/pwcca.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"

namespace svcca {
namespace {

// google/svcca's weights for the side (y_side) of m with factors f, feature means mean ([p]) and
// singular vectors big_u ([k, r]) of the symmetrically whitened cross-covariance, in kept-feature
// coordinates. The centered data (centered_data(m, y_side), undefined for streamed moments; only
// its kept columns are used) is formed only for the QR fallback.
// In the reference layout the directions are D^T = X_c U + 1 mu_r^T, with U = big_u and mu_r
// the first r kept means; the weights are
// |Q^T X| summed over features for D^T = Q R. Since X_c^T 1 = 0:
//   G = D D^T = (n-1) U^T C U + n mu_r mu_r^T,   D X = (n-1) U^T C + n mu_r mu^T,
// and Q^T X = R^{-T} D X, with R^T R = G a Cholesky factorization. Falls back to the explicit QR
// when G is numerically singular (directions linearly dependent) and the data is at hand.
at::Tensor reference_weights(const char* fn, const detail::LayerFactors& f,
                             const detail::PairMoments& m, bool y_side, const at::Tensor& mean,
                             const at::Tensor& big_u) {
  const double n = static_cast<double>(m.n);
  at::Tensor mu = f.all_kept ? mean : mean.index_select(0, f.kept_index);
  const int64_t r = big_u.size(1);
  at::Tensor mu_r = mu.narrow(0, 0, r);
  at::Tensor ut_c = at::mm(detail::mh(big_u), f.cov).mul_(n - 1.0);  // [r, k]
  at::Tensor gram = at::mm(ut_c, big_u) + n * at::outer(mu_r, mu_r);
  at::Tensor dx = ut_c + n * at::outer(mu_r, mu);
  auto chol = at::linalg_cholesky_ex(gram);
  at::Tensor proj;
  if (std::get<1>(chol).item<int64_t>() == 0) {
    proj = at::linalg_solve_triangular(std::get<0>(chol), dx, /*upper=*/false);
  } else {
    const at::Tensor xc = detail::centered_data(m, y_side);
    TORCH_CHECK_VALUE(xc.defined(), fn,
                      ": the reference weighting needs linearly independent directions, but the "
                      "Gram matrix of the directions is singular (from moments alone there is no "
                      "QR fallback); use weighting canonical_variates or a ridge epsilon > 0");
    at::Tensor xk = f.all_kept ? xc : xc.index_select(1, f.kept_index);
    at::Tensor dirns_t = at::mm(xk, big_u) + mu_r;  // [n, r]
    at::Tensor q = std::get<0>(at::linalg_qr(dirns_t, "reduced"));
    proj = at::mm(detail::mh(q), xk + mu);  // raw (uncentered) kept features
  }
  return proj.abs().sum(1);
}

}  // namespace

namespace detail {

at::Tensor symmetric_whitening(const LayerFactors& f) {
  return at::mm(f.whitening, mh(f.eigenvectors));
}

PwccaResult pwcca_from_moments(const char* fn, const PairMoments& m, const PwccaOptions& options) {
  auto pf = factor_pair(fn, m, factor_options(options.cca));
  return pwcca_from_factors(fn, pf.x, pf.y, {}, {}, m, options);
}

PwccaResult pwcca_from_factors(const char* fn, const LayerFactors& fx, const LayerFactors& fy,
                               const at::Tensor& zca_x, const at::Tensor& zca_y,
                               const PairMoments& m, const PwccaOptions& options) {
  const PairFactors pf{fx, fy};
  const int64_t k = std::min(pf.x.rank, pf.y.rank);
  check_forced_correlations(fn, pf.x.rank, pf.y.rank, m.n, options.cca.allow_forced_correlations,
                            false);

  PwccaResult r;
  r.x_rank = pf.x.rank;
  r.y_rank = pf.y.rank;
  at::Tensor weights, correlations;
  if (options.weighting == PwccaWeighting::kReference) {
    // The reference's directions add each neuron's mean to a singular vector, so its number
    // depends on the singular vectors' signs: decompose the same matrix it does (the
    // symmetrically whitened cross-covariance, in feature coordinates) so that LAPACK picks
    // the same signs, rather than the smaller matrix in eigen-coordinates cca() uses.
    at::Tensor zx = zca_x.defined() ? zca_x : symmetric_whitening(pf.x);
    at::Tensor zy = zca_y.defined() ? zca_y : symmetric_whitening(pf.y);
    at::Tensor arr = at::mm(zx, at::mm(select_kept(m.sxy, pf.x, &pf.y), zy));
    auto svd = at::linalg_svd(arr, /*full_matrices=*/false);
    correlations = std::get<1>(svd).narrow(0, 0, k).clamp(0.0, 1.0);
    r.weights_from_y = pf.y.rank < pf.x.rank;
    weights = r.weights_from_y ? reference_weights(fn, pf.y, m, /*y_side=*/true, m.y_mean,
                                                   mh(std::get<2>(svd)).narrow(1, 0, k))
                               : reference_weights(fn, pf.x, m, /*y_side=*/false, m.x_mean,
                                                   std::get<0>(svd).narrow(1, 0, k));
  } else {
    auto core = cca_core(pf.x, pf.y, m.sxy);
    correlations = core.correlations;
    // <h_i, z_j> = (n-1) (A^T C)_ij with A = W u the canonical weights; the scale cancels.
    at::Tensor a = at::mm(pf.x.whitening, core.u);  // [kx, k]
    weights = at::mm(mh(a), pf.x.cov).abs().sum(1);
  }
  const double total = weights.sum().item<double>();
  TORCH_CHECK_VALUE(total > 0.0 && std::isfinite(total), fn, ": the PWCCA weights of ",
                    r.weights_from_y ? "y" : "x", " are all ", total,
                    options.weighting == PwccaWeighting::kReference
                        ? ": its raw activations are orthogonal to every CCA direction "
                          "(google/svcca's formula divides 0 by 0 here), so PWCCA is undefined; "
                          "weighting='canonical_variates' weights by the canonical variates"
                        : ": PWCCA is undefined");
  weights = weights / weights.sum();

  r.weights = weights.to(m.result_dtype);
  r.correlations = correlations.to(m.result_dtype);
  r.score = (weights * correlations).sum().to(m.result_dtype);
  return r;
}

}  // namespace detail

PwccaResult pwcca(const at::Tensor& x, const at::Tensor& y, const PwccaOptions& options) {
  constexpr const char* fn = "pwcca";
  detail::check_pair(fn, x, y);
  detail::check_more_examples_than_features(fn, "x", x);
  detail::check_more_examples_than_features(fn, "y", y);
  detail::check_cca_options(fn, options.cca);
  return detail::pwcca_from_moments(fn, detail::pair_moments(x, y, options.cca.precision), options);
}

}  // namespace svcca
