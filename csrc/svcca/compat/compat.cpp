// google/svcca-compatible entry points (reference layout: neurons x datapoints).
#include "svcca/compat/compat.h"
#include "svcca/measures/cca.h"

#include <ATen/ATen.h>

#include <cmath>

#include "svcca/checks.h"
#include "svcca/compat/reference_cca.h"
#include "svcca/linalg.h"

namespace svcca {
namespace compat {
namespace {

constexpr double kPinvRcond = 1e-15;  // numpy.linalg.pinv's default rcond

at::ScalarType reference_dtype(const at::Tensor& t) {
  return t.is_complex() ? at::kComplexDouble : at::kDouble;
}

// Per-neuron means ([n, 1]) and centered activations of acts: [n, m], in float64.
struct NeuronCentered {
  at::Tensor means;
  at::Tensor data;
};
NeuronCentered center_neurons(const at::Tensor& acts) {
  // The modern helper centers columns; the reference layout has neurons as rows.
  auto c = detail::center(acts.t(), reference_dtype(acts));
  return {c.mean.unsqueeze(1), c.data.t()};
}

// np.cov's block a b^H / (m - 1) for centered a: [na, m], b: [nb, m].
at::Tensor neuron_cov(const at::Tensor& a, const at::Tensor& b) {
  return detail::cross_covariance(detail::mh(a), detail::mh(b));
}

// (pinv(a))^(1/2) of a Hermitian PSD a, as google/svcca's positivedef_matrix_sqrt(pinv(a)), in one
// eigendecomposition. Eigenvalues at or below rcond * largest are zeroed, as pinv does; the
// reference takes the square root of tiny negative ones (NaN), which we clamp to 0 instead.
// Batched over leading dims ([..., k, k]); a 2-D input gives exactly the unbatched numbers.
at::Tensor pinv_sqrt(const at::Tensor& a) {
  auto eig = at::linalg_eigh(a);
  const at::Tensor& w = std::get<0>(eig);
  const at::Tensor& v = std::get<1>(eig);
  at::Tensor cutoff = w.abs().amax(-1, /*keepdim=*/true) * kPinvRcond;
  at::Tensor inv_sqrt = at::where(w > cutoff, w.clamp_min(0).rsqrt(), at::zeros_like(w));
  return at::matmul(v * inv_sqrt.unsqueeze(-2).to(v.scalar_type()), detail::mh(v));
}

// Embeds `block` ([k, k]) at rows and columns kept_index of an [n, n] zero matrix (np.place with
// the outer-product mask).
at::Tensor embed(const at::Tensor& block, const at::Tensor& kept_index, int64_t n) {
  at::Tensor rows = at::zeros({n, block.size(1)}, block.options()).index_copy(0, kept_index, block);
  return at::zeros({n, n}, block.options()).index_copy(1, kept_index, rows);
}

void check_threshold(const char* fn, double threshold) {
  detail::check_unit_interval(fn, "threshold", threshold);
  TORCH_CHECK_VALUE(threshold > 0.0, fn,
                    ": threshold must be in (0, 1], but got 0: it selects an empty prefix of the "
                    "correlations, whose mean google/svcca reports as NaN");
}

}  // namespace

int64_t sum_threshold(const at::Tensor& array, double threshold) {
  constexpr const char* fn = "sum_threshold";
  TORCH_CHECK_VALUE(array.defined() && array.dim() == 1, fn,
                    ": array must be a 1-D tensor, but got shape ",
                    array.defined() ? detail::shape_str(array) : std::string("undefined"));
  TORCH_CHECK_TYPE(at::isFloatingType(array.scalar_type()) ||
                       at::isIntegralType(array.scalar_type(), /*includeBool=*/false),
                   fn, ": array must be real numeric, but got dtype ", array.scalar_type());
  detail::check_unit_interval(fn, "threshold", threshold);
  return detail::prefix_reaching(array, threshold);
}

TensorDict get_cca_similarity(const at::Tensor& acts1, const at::Tensor& acts2, double epsilon,
                              double threshold, bool compute_coefs, bool compute_dirns) {
  constexpr const char* fn = "get_cca_similarity";
  detail::check_pair(fn, acts1, acts2, /*examples_dim=*/1);
  detail::check_more_examples_than_features(fn, "acts1", acts1, 1);
  detail::check_more_examples_than_features(fn, "acts2", acts2, 1);
  detail::check_non_negative(fn, "epsilon", epsilon);
  check_threshold(fn, threshold);

  const int64_t nx = acts1.size(0);
  const int64_t ny = acts2.size(0);
  // Exact test first: the centered values of a constant neuron are rounding (mean(c) != c in
  // floating point), which the rescale below would blow up to unit variance.
  TORCH_CHECK_VALUE(detail::non_constant_columns(acts1.t()).any().item<bool>(), fn,
                    ": acts1 must have at least one non-constant neuron, but all ", nx,
                    " neurons are constant over the datapoints");
  TORCH_CHECK_VALUE(detail::non_constant_columns(acts2.t()).any().item<bool>(), fn,
                    ": acts2 must have at least one non-constant neuron, but all ", ny,
                    " neurons are constant over the datapoints");
  auto c1 = center_neurons(acts1);
  auto c2 = center_neurons(acts2);
  at::Tensor sxx = neuron_cov(c1.data, c1.data);
  at::Tensor syy = neuron_cov(c2.data, c2.data);
  at::Tensor sxy = neuron_cov(c1.data, c2.data);

  // Rescale by the largest |entry| (the largest variance): makes epsilon relative.
  const double xmax = sxx.abs().max().item<double>();
  const double ymax = syy.abs().max().item<double>();
  TORCH_CHECK_VALUE(xmax > 0, fn, ": acts1 must have at least one non-constant neuron, but all ",
                    nx, " neurons are constant");
  TORCH_CHECK_VALUE(ymax > 0, fn, ": acts2 must have at least one non-constant neuron, but all ",
                    ny, " neurons are constant");
  sxx = sxx / xmax;
  syy = syy / ymax;
  sxy = sxy / std::sqrt(xmax * ymax);

  at::Tensor x_idxs = sxx.diagonal().abs() >= epsilon;
  at::Tensor y_idxs = syy.diagonal().abs() >= epsilon;
  at::Tensor ix = x_idxs.nonzero().view({-1});
  at::Tensor iy = y_idxs.nonzero().view({-1});
  const int64_t kx = ix.numel();
  const int64_t ky = iy.numel();
  TORCH_CHECK_VALUE(kx > 0, fn,
                    ": epsilon must keep at least one neuron of acts1, but epsilon=", epsilon,
                    " removes all of them (rescaled variances are at most 1; google/svcca "
                    "crashes here with 'too many values to unpack')");
  TORCH_CHECK_VALUE(ky > 0, fn,
                    ": epsilon must keep at least one neuron of acts2, but epsilon=", epsilon,
                    " removes all of them (rescaled variances are at most 1; google/svcca "
                    "crashes here with 'too many values to unpack')");

  sxx = sxx.index_select(0, ix).index_select(1, ix);
  syy = syy.index_select(0, iy).index_select(1, iy);
  sxy = sxy.index_select(0, ix).index_select(1, iy);
  sxx = sxx + epsilon * at::eye(kx, sxx.options());
  syy = syy + epsilon * at::eye(ky, syy.options());

  at::Tensor invsqrt_xx = pinv_sqrt(sxx);
  at::Tensor invsqrt_yy = pinv_sqrt(syy);
  at::Tensor arr = at::mm(invsqrt_xx, at::mm(sxy, invsqrt_yy));
  auto svd = at::linalg_svd(arr, /*full_matrices=*/true);
  const at::Tensor& u = std::get<0>(svd);
  at::Tensor s = std::get<1>(svd).abs();
  const at::Tensor& vh = std::get<2>(svd);

  TensorDict out;
  const bool need_coefs = compute_coefs || compute_dirns;
  at::Tensor full_coef_x, full_coef_y, full_invsqrt_xx, full_invsqrt_yy;
  if (need_coefs) {
    at::Tensor coef_x = u.transpose(0, 1);  // numpy's u.T: no conjugation
    full_coef_x = embed(coef_x, ix, nx);
    full_coef_y = embed(vh, iy, ny);
    full_invsqrt_xx = embed(invsqrt_xx, ix, nx);
    full_invsqrt_yy = embed(invsqrt_yy, iy, ny);
    if (compute_coefs) {
      out.insert("coef_x", coef_x);
      out.insert("invsqrt_xx", invsqrt_xx);
      out.insert("full_coef_x", full_coef_x);
      out.insert("full_invsqrt_xx", full_invsqrt_xx);
      out.insert("coef_y", vh);
      out.insert("invsqrt_yy", invsqrt_yy);
      out.insert("full_coef_y", full_coef_y);
      out.insert("full_invsqrt_yy", full_invsqrt_yy);
      out.insert("neuron_means1", c1.means);
      out.insert("neuron_means2", c2.means);
    }
  }
  if (compute_dirns) {
    // Variate p lands on row kept[p], and each row gets its neuron's mean back (reference).
    out.insert("cca_dirns1", at::mm(at::mm(full_coef_x, full_invsqrt_xx), c1.data) + c1.means);
    out.insert("cca_dirns2", at::mm(at::mm(full_coef_y, full_invsqrt_yy), c2.data) + c2.means);
  }

  int64_t idx = sum_threshold(s, threshold);
  if (idx < 0) idx = s.numel();
  at::Tensor mean = s.narrow(0, 0, idx).mean();
  at::Tensor sum = s.sum();
  out.insert("cca_coef1", s);
  out.insert("cca_coef2", s);
  out.insert("x_idxs", x_idxs);
  out.insert("y_idxs", y_idxs);
  out.insert("mean", at::stack({mean, mean}));
  out.insert("sum", at::stack({sum, sum}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compute_pwcca(const at::Tensor& acts1,
                                                             const at::Tensor& acts2,
                                                             double epsilon) {
  TensorDict r = get_cca_similarity(acts1, acts2, epsilon, 0.98, /*compute_coefs=*/true, false);
  at::Tensor x_idxs = r.at("x_idxs");
  at::Tensor y_idxs = r.at("y_idxs");
  const bool use_x = x_idxs.sum().item<int64_t>() <= y_idxs.sum().item<int64_t>();
  // The reference's else-branch indexes acts1 with acts2's mask; use acts2, as intended.
  const at::Tensor& acts = use_x ? acts1 : acts2;
  at::Tensor idx = (use_x ? x_idxs : y_idxs).nonzero().view({-1});
  at::Tensor kept = acts.to(reference_dtype(acts)).index_select(0, idx);
  at::Tensor mu = r.at(use_x ? "neuron_means1" : "neuron_means2").index_select(0, idx);
  at::Tensor coef = r.at(use_x ? "coef_x" : "coef_y");
  at::Tensor coefs = r.at("cca_coef1");
  at::Tensor dirns = at::mm(coef, kept - mu) + mu;                  // [k, m]
  at::Tensor p = std::get<0>(at::linalg_qr(dirns.t(), "reduced"));  // [m, k]
  at::Tensor weights = at::mm(p.t(), kept.t()).abs().sum(1);
  const double total = weights.sum().item<double>();
  // google/svcca projects the raw (uncentered) activations on the orthonormalized directions;
  // when they are orthogonal to all of them the weights are 0 / 0 (the reference returns NaN).
  TORCH_CHECK_VALUE(total > 0.0 && std::isfinite(total), "compute_pwcca: the PWCCA weights of ",
                    use_x ? "acts1" : "acts2", " are all ", total,
                    ": its raw activations are orthogonal to every CCA direction (google/svcca's "
                    "formula divides 0 by 0 here), so PWCCA is undefined; svcca.pwcca with "
                    "weighting='canonical_variates' weights by the canonical variates instead");
  weights = weights / weights.sum();
  return {(weights * coefs).sum(), weights, coefs};
}

TensorDict get_pls_similarity(const at::Tensor& acts1, const at::Tensor& acts2) {
  constexpr const char* fn = "get_pls_similarity";
  detail::check_pair(fn, acts1, acts2, /*examples_dim=*/1);
  detail::check_more_examples_than_features(fn, "acts1", acts1, 1);
  detail::check_more_examples_than_features(fn, "acts2", acts2, 1);
  auto c1 = center_neurons(acts1);
  auto c2 = center_neurons(acts2);
  at::Tensor sxy = neuron_cov(c1.data, c2.data);
  auto svd = at::linalg_svd(sxy, /*full_matrices=*/false);
  at::Tensor ut = std::get<0>(svd).t();     // [k, nx]
  const at::Tensor& vh = std::get<2>(svd);  // [k, ny]
  const int64_t k = ut.size(0);
  TensorDict out;
  out.insert("eigenvals", std::get<1>(svd).abs());
  out.insert("neuron_coeffs1", ut);
  out.insert("neuron_coeffs2", vh);
  out.insert("pls_dirns1", at::mm(ut, c1.data) + c1.means.narrow(0, 0, k));
  out.insert("pls_dirns2", at::mm(vh, c2.data) + c2.means.narrow(0, 0, k));
  return out;
}

TensorDict get_pca(const at::Tensor& acts, bool compute_dirns) {
  constexpr const char* fn = "get_pca";
  detail::check_matrix(fn, "acts", acts);
  detail::check_more_examples_than_features(fn, "acts", acts, 1);
  auto c = center_neurons(acts);
  auto svd = at::linalg_svd(c.data, /*full_matrices=*/false);
  at::Tensor ut = std::get<0>(svd).t();
  TensorDict out;
  out.insert("eigenvals", std::get<1>(svd));
  out.insert("neuron_coefs", ut);
  if (compute_dirns) out.insert("pca_dirns", at::mm(ut, c.data) + c.means);
  return out;
}

}  // namespace compat

namespace detail {

ReferenceCcas reference_ccas(const char* fn, const char* xname, const char* yname,
                             const at::Tensor& sxx, const at::Tensor& syy, const at::Tensor& sxy,
                             double epsilon, double threshold,
                             const std::function<std::string(int64_t)>& where) {
  // Rescale by the largest |entry| (the largest variance) of each entry: epsilon is relative.
  at::Tensor xmax = sxx.abs().amax({-2, -1});  // [B]
  at::Tensor ymax = syy.abs().amax({-2, -1});
  auto first_bad = [](const at::Tensor& bad) { return bad.to(at::kInt).argmax().item<int64_t>(); };
  for (auto side : {std::make_pair(xname, &xmax), std::make_pair(yname, &ymax)}) {
    at::Tensor bad = *side.second <= 0;
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", side.first,
                      " must have a non-constant neuron ", where(first_bad(bad)),
                      ", but all its neurons are constant there");
  }
  at::Tensor xs = xmax.view({-1, 1, 1}).to(sxx.scalar_type());
  at::Tensor ys = ymax.view({-1, 1, 1}).to(syy.scalar_type());
  at::Tensor a = sxx / xs;
  at::Tensor b = syy / ys;
  at::Tensor c = sxy / (xs * ys).sqrt();
  ReferenceCcas r;
  r.x_idxs = a.diagonal(0, -2, -1).abs() >= epsilon;
  r.y_idxs = b.diagonal(0, -2, -1).abs() >= epsilon;
  for (auto side : {std::make_pair(xname, &r.x_idxs), std::make_pair(yname, &r.y_idxs)}) {
    at::Tensor bad = ~side.second->any(-1);
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": epsilon must keep at least one neuron of ",
                      side.first, " ", where(first_bad(bad)), ", but epsilon=", epsilon,
                      " removes all of them (rescaled variances are at most 1; google/svcca "
                      "crashes here with 'too many values to unpack')");
  }
  // Masking removed neurons (zero rows and columns) instead of cropping: the kept block's pinv
  // square root and singular values are unchanged, and every entry keeps one shape.
  at::Tensor mx = r.x_idxs.to(a.scalar_type());
  at::Tensor my = r.y_idxs.to(b.scalar_type());
  a = a * mx.unsqueeze(-1) * mx.unsqueeze(-2) + at::diag_embed(mx * epsilon);
  b = b * my.unsqueeze(-1) * my.unsqueeze(-2) + at::diag_embed(my * epsilon);
  c = c * mx.unsqueeze(-1) * my.unsqueeze(-2);
  at::Tensor arr = at::matmul(compat::pinv_sqrt(a), at::matmul(c, compat::pinv_sqrt(b)));
  at::Tensor s = at::linalg_svdvals(arr).abs();  // [B, k]
  const int64_t k = s.size(-1);
  at::Tensor pos = at::arange(k, s.options().dtype(at::kLong)).unsqueeze(0);
  at::Tensor kept = at::minimum(r.x_idxs.sum(-1), r.y_idxs.sum(-1)).unsqueeze(1);
  s = s * (pos < kept).to(s.scalar_type());  // exact zeros past the cropped k
  // sum_threshold per entry: first i with sum(s[:i]) / sum(s) >= threshold, else all. Padded
  // zeros reach the ratio 1 at the cropped k, which is the reference's "None -> all".
  at::Tensor total = s.sum(-1, /*keepdim=*/true);
  at::Tensor hit = ((s.cumsum(-1) - s) / total) >= threshold;
  at::Tensor idx = at::where(hit.any(-1), hit.to(at::kInt).argmax(-1).to(at::kLong),
                             at::full_like(kept.squeeze(1), k));
  at::Tensor in_prefix = (pos < idx.unsqueeze(1)).to(s.scalar_type());
  r.mean = (s * in_prefix).sum(-1) / idx.to(s.scalar_type());
  r.sum = s.sum(-1);
  r.coefs = s;
  return r;
}

}  // namespace detail
}  // namespace svcca
