// Orthogonal Procrustes similarity and distance of two layers.
#include "svcca/measures/procrustes.h"

#include <ATen/ATen.h>

#include "svcca/checks.h"

namespace svcca {
namespace {

void check_not_constant(const char* fn, const char* name, const at::Tensor& t) {
  at::Tensor non_constant = detail::non_constant_columns(t);
  TORCH_CHECK_VALUE(non_constant.any().item<bool>(), fn, ": ", name,
                    " must have at least one non-constant feature, but all ", non_constant.numel(),
                    " features are constant (a constant layer cannot be normalized)");
}

at::Tensor procrustes_score(const char* fn, const at::Tensor& x, const at::Tensor& y,
                            const ProcrustesOptions& options) {
  detail::check_pair(fn, x, y);
  check_not_constant(fn, "x", x);
  check_not_constant(fn, "y", y);
  const auto dtype = detail::compute_dtype(x, y, options.precision);
  // Rescaled (the score is scale invariant): no product of a finite layer overflows.
  at::Tensor xc = detail::center(x, dtype, /*rescale=*/true).data;
  at::Tensor yc = detail::center(y, dtype, /*rescale=*/true).data;
  // ||X^T Y||_* / (||X||_F ||Y||_F) of the centered data: normalizing the [p1, p2] product
  // instead of the [n, p] inputs. The (n - 1) of the cross-covariance cancels with the norms'.
  at::Tensor norms = (xc.square().sum() * yc.square().sum()).sqrt();
  at::Tensor sxy = detail::cross_covariance(xc, yc) * static_cast<double>(x.size(0) - 1);
  // Singular values only: the gradient of their sum is U V^T, well defined at repeated values.
  return at::linalg_svdvals(sxy / norms).sum().clamp(0.0, 1.0);
}

}  // namespace

at::Tensor procrustes(const at::Tensor& x, const at::Tensor& y, const ProcrustesOptions& options) {
  return procrustes_score("procrustes", x, y, options).to(detail::result_dtype(x, y));
}

at::Tensor procrustes_distance(const at::Tensor& x, const at::Tensor& y,
                               const ProcrustesOptions& options) {
  at::Tensor score = procrustes_score("procrustes_distance", x, y, options);
  return ((1.0 - score) * 2.0).to(detail::result_dtype(x, y));
}

}  // namespace svcca
