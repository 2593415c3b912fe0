// Centered kernel alignment: linear (feature-space and Gram forms) and RBF, biased and debiased.
#include "svcca/measures/cka.h"

#include <ATen/ATen.h>

#include <cmath>

#include "svcca/checks.h"
#include "svcca/factors.h"

namespace svcca {
namespace detail {

void check_debiased_examples(const char* fn, int64_t n) {
  TORCH_CHECK_VALUE(n >= 4, fn, ": x and y must have at least 4 examples (dim 0) for debiased CKA ",
                    "(the unbiased HSIC estimator divides by n - 3), but got ", n);
}

void check_not_constant(const char* fn, const char* name, const at::Tensor& non_constant) {
  TORCH_CHECK_VALUE(non_constant.any().item<bool>(), fn, ": ", name,
                    " must have at least one non-constant feature, but all ", non_constant.numel(),
                    " features are constant (CKA is undefined for a constant layer)");
}

// Guards the denominator: `self_hsic` (the scaled HSIC of a layer with itself) is treated as zero
// when it is <= n * machine epsilon * `scale` (||K||_F^2 of the uncentered kernel matrix): it is a
// difference of terms of that size, so smaller values are rounding. Only degenerate layers get
// there (debiased: all examples but one identical; RBF: a sigma so large that K is all ones).
void check_self_hsic(const char* fn, const char* name, const at::Tensor& self_hsic,
                     const at::Tensor& scale, int64_t n, bool debiased) {
  const double h = self_hsic.item<double>();
  const double s = scale.item<double>();
  const double rtol = static_cast<double>(n) * machine_eps(self_hsic.scalar_type());
  TORCH_CHECK_VALUE(h > rtol * s, fn, ": ", name,
                    " must have a kernel matrix that is not zero after centering, but its ",
                    debiased ? "unbiased HSIC with itself" : "HSIC with itself", " is ", h,
                    " for ||K||_F^2 = ", s, " (rounding level ", rtol * s, "). ",
                    debiased ? "Debiased CKA is undefined when all examples but one are identical"
                             : "The kernel matrix is constant (an RBF sigma much larger than the "
                               "distances between examples)");
}

void check_bandwidth_options(const char* fn, const RbfCkaOptions& options) {
  TORCH_CHECK_VALUE(std::isfinite(options.threshold) && options.threshold > 0.0, fn,
                    ": threshold must be finite and > 0, but got ", options.threshold);
  if (options.sigma) {
    TORCH_CHECK_VALUE(std::isfinite(*options.sigma) && *options.sigma > 0.0, fn,
                      ": sigma must be finite and > 0, but got ", *options.sigma);
  }
}

at::Tensor center_gram(const at::Tensor& k, bool unbiased) {
  const int64_t n = k.size(0);
  if (!unbiased) {
    at::Tensor means = k.mean(0);
    means = means - means.mean() * 0.5;
    return k - means.unsqueeze(1) - means.unsqueeze(0);
  }
  TORCH_INTERNAL_ASSERT(n >= 3, "center_gram: U-centering needs n >= 3, got ", n);
  const double nd = static_cast<double>(n);
  // Out of place, so that autograd sees every step.
  at::Tensor off = at::ones_like(k) - at::eye(n, k.options());
  at::Tensor kt = k * off;
  at::Tensor means = kt.sum(0) / (nd - 2.0);
  means = means - means.sum() / (2.0 * (nd - 1.0));
  return (kt - means.unsqueeze(1) - means.unsqueeze(0)) * off;
}

at::Tensor gram_cka(const char* fn, const at::Tensor& k, const at::Tensor& l, bool debiased) {
  const int64_t n = k.size(0);
  at::Tensor kc = center_gram(k, debiased);
  at::Tensor lc = center_gram(l, debiased);
  at::Tensor hxx = sum_squares(kc);
  at::Tensor hyy = sum_squares(lc);
  check_self_hsic(fn, "x", hxx.detach(), sum_squares(k.detach()), n, debiased);
  check_self_hsic(fn, "y", hyy.detach(), sum_squares(l.detach()), n, debiased);
  return sum_products(kc, lc) / (hxx * hyy).sqrt();
}

at::Tensor squared_distances(const at::Tensor& xc) {
  const int64_t n = xc.size(0);
  at::Tensor sq = xc.square().sum(1);
  at::Tensor d = sq.unsqueeze(1) + sq.unsqueeze(0) - gram(xc) * 2.0;
  // ||a||^2 + ||b||^2 - 2 a.b rounds to tiny negatives for near-equal rows, and to non-zero
  // values on the diagonal, which the median rule counts.
  return d.clamp_min(0.0) * (at::ones({n, n}, d.options()) - at::eye(n, d.options()));
}

at::Tensor linear_cka_from_moments(const char* fn, const PairMoments& m, bool debiased) {
  check_not_constant(fn, "x", m.x_non_constant.defined() ? m.x_non_constant : m.sxx.diagonal() > 0);
  check_not_constant(fn, "y", m.y_non_constant.defined() ? m.y_non_constant : m.syy.diagonal() > 0);
  at::Tensor sxy_sq = sum_squares(m.sxy);
  at::Tensor sxx_sq = sum_squares(m.sxx);
  at::Tensor syy_sq = sum_squares(m.syy);
  if (!debiased) return (sxy_sq / (sxx_sq * syy_sq).sqrt()).to(m.result_dtype);

  const at::Tensor xc = centered_data(m, /*y_side=*/false);
  const at::Tensor yc = centered_data(m, /*y_side=*/true);
  TORCH_INTERNAL_ASSERT(xc.defined() && yc.defined(), fn,
                        ": debiased linear CKA needs the centered data");
  // Back from covariances to the products of the data: X^T Y = (n - 1) Sxy.
  const double s = static_cast<double>(m.n - 1) * static_cast<double>(m.n - 1);
  at::Tensor dx = xc.square().sum(1);
  at::Tensor dy = yc.square().sum(1);
  DebiasedSums sums;
  sums.xty_sq = sxy_sq * s;
  sums.xtx_sq = sxx_sq * s;
  sums.yty_sq = syy_sq * s;
  sums.dxdy = at::dot(dx, dy);
  sums.dxdx = at::dot(dx, dx);
  sums.dydy = at::dot(dy, dy);
  sums.sqx = dx.sum();
  sums.sqy = dy.sum();
  return debiased_cka_from_sums(fn, sums, m.n).to(m.result_dtype);
}

namespace {

// n (n - 3) HSIC_1 of centered X, Y from feature-space sums (cka.h derives the formula).
at::Tensor unbiased_hsic_from_sums(const at::Tensor& xty_sq, const at::Tensor& dxdy,
                                   const at::Tensor& sqx, const at::Tensor& sqy, int64_t n) {
  const double nd = static_cast<double>(n);
  return xty_sq - dxdy * (nd / (nd - 2.0)) + sqx * sqy / ((nd - 1.0) * (nd - 2.0));
}

}  // namespace

at::Tensor debiased_cka_from_sums(const char* fn, const DebiasedSums& s, int64_t n) {
  check_debiased_examples(fn, n);
  at::Tensor hxy = unbiased_hsic_from_sums(s.xty_sq, s.dxdy, s.sqx, s.sqy, n);
  at::Tensor hxx = unbiased_hsic_from_sums(s.xtx_sq, s.dxdx, s.sqx, s.sqx, n);
  at::Tensor hyy = unbiased_hsic_from_sums(s.yty_sq, s.dydy, s.sqy, s.sqy, n);
  // ||X^T X||_F = ||X X^T||_F = ||K||_F: the same scale as the Gram form's check.
  check_self_hsic(fn, "x", hxx.detach(), s.xtx_sq.detach(), n, true);
  check_self_hsic(fn, "y", hyy.detach(), s.yty_sq.detach(), n, true);
  return hxy / (hxx * hyy).sqrt();
}

at::Tensor rbf_gram(const char* fn, const char* name, const at::Tensor& xc, double threshold,
                    std::optional<double> sigma) {
  return rbf_kernel(fn, name, squared_distances(xc), threshold, sigma);
}

at::Tensor squared_distances_from_gram(const at::Tensor& k) {
  const int64_t n = k.size(0);
  at::Tensor sq = k.diagonal();
  at::Tensor d = sq.unsqueeze(1) + sq.unsqueeze(0) - k * 2.0;
  return d.clamp_min(0.0) * (at::ones({n, n}, d.options()) - at::eye(n, d.options()));
}

at::Tensor rbf_kernel(const char* fn, const char* name, const at::Tensor& d, double threshold,
                      std::optional<double> sigma) {
  at::Tensor two_sigma_sq;
  if (sigma) {
    two_sigma_sq = at::scalar_tensor(2.0 * *sigma * *sigma, d.options());
  } else {
    // numpy's median (Kornblith's rule): the mean of the two middle values of all n^2 entries.
    // kthvalue rather than a full sort: O(n^2) and differentiable.
    at::Tensor flat = d.reshape({-1});
    const int64_t m = flat.numel();
    at::Tensor median = std::get<0>(at::kthvalue(flat, (m + 1) / 2));
    if (m % 2 == 0) median = (median + std::get<0>(at::kthvalue(flat, m / 2 + 1))) * 0.5;
    const double med = median.item<double>();
    TORCH_CHECK_VALUE(med > 0.0, fn, ": ", name,
                      " must have a positive median squared distance between examples for the "
                      "median rule (sigma = threshold * sqrt(median)), but got ",
                      med,
                      " (more than half of the pairs of examples are identical); give an "
                      "absolute sigma instead");
    two_sigma_sq = median * (2.0 * threshold * threshold);
  }
  // d / (2 sigma^2) with 0 / 0 = 0: a sigma so small that 2 sigma^2 underflows gives the limit
  // kernel (1 on the diagonal and between identical examples, 0 elsewhere), not NaN.
  at::Tensor q = d / two_sigma_sq;
  return at::exp(-at::where(d == 0, at::zeros_like(q), q));
}

}  // namespace detail

at::Tensor linear_cka(const at::Tensor& x, const at::Tensor& y, const LinearCkaOptions& options) {
  constexpr const char* fn = "linear_cka";
  detail::check_pair(fn, x, y);
  if (options.debiased) detail::check_debiased_examples(fn, x.size(0));

  const int64_t n = x.size(0);
  if (options.form == CkaForm::kFeatures && (x.size(1) > n || y.size(1) > n)) {
    // A wide layer (p > n): its n x n Gram matrix from column blocks, never a [p, p] product.
    auto fx = detail::linear_kernel_factor(fn, "x", x, options.precision, FactorSide::kAuto,
                                           options.debiased);
    auto fy = detail::linear_kernel_factor(fn, "y", y, options.precision, FactorSide::kAuto,
                                           options.debiased);
    return detail::linear_cka_of(fn, fx, fy, options.debiased).to(detail::result_dtype(x, y));
  }
  if (options.form == CkaForm::kFeatures) {
    return detail::linear_cka_from_moments(fn, detail::pair_moments(x, y, options.precision),
                                           options.debiased);
  }
  detail::check_not_constant(fn, "x", detail::non_constant_columns(x));
  detail::check_not_constant(fn, "y", detail::non_constant_columns(y));
  const auto dtype = detail::compute_dtype(x, y, options.precision);
  at::Tensor xc = detail::center(x, dtype, /*rescale=*/true).data;
  at::Tensor yc = detail::center(y, dtype, /*rescale=*/true).data;
  return detail::gram_cka(fn, detail::gram(xc), detail::gram(yc), options.debiased)
      .to(detail::result_dtype(x, y));
}

at::Tensor rbf_cka(const at::Tensor& x, const at::Tensor& y, const RbfCkaOptions& options) {
  constexpr const char* fn = "rbf_cka";
  detail::check_pair(fn, x, y);
  detail::check_bandwidth_options(fn, options);
  if (options.debiased) detail::check_debiased_examples(fn, x.size(0));
  detail::check_not_constant(fn, "x", detail::non_constant_columns(x));
  detail::check_not_constant(fn, "y", detail::non_constant_columns(y));

  // Distances are translation invariant; centering first keeps ||a||^2 + ||b||^2 - 2 a.b from
  // cancelling when the features have large means.
  const auto dtype = detail::compute_dtype(x, y, options.precision);
  // Wide layers (p > n): distances from the n x n Gram matrix, formed from column blocks.
  // Each layer is rescaled (distances in units of `scale`), so that no distance of a finite
  // layer overflows; an absolute sigma is taken to the same units.
  auto in_units = [&](double scale) -> std::optional<double> {
    if (!options.sigma) return std::nullopt;
    return *options.sigma / scale;
  };
  auto kernel = [&](const char* name, const at::Tensor& t) {
    if (t.size(1) <= t.size(0)) {
      detail::Centered c = detail::center(t, dtype, /*rescale=*/true);
      return detail::rbf_gram(fn, name, c.data, options.threshold, in_units(c.scale));
    }
    detail::GramStats g = detail::centered_gram(t, dtype);
    at::Tensor d = detail::squared_distances_from_gram(g.gram);
    return detail::rbf_kernel(fn, name, d, options.threshold, in_units(g.scale));
  };
  at::Tensor k = kernel("x", x);
  at::Tensor l = kernel("y", y);
  return detail::gram_cka(fn, k, l, options.debiased).to(detail::result_dtype(x, y));
}

}  // namespace svcca
