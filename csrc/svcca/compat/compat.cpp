// google/svcca-compatible entry points (reference layout: neurons x datapoints).
#include "svcca/compat/compat.h"
#include "svcca/measures/cca.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

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
  at::Tensor a = acts.to(reference_dtype(acts));
  at::Tensor means = a.mean(1, /*keepdim=*/true);
  // In place when the cast made a copy. Contiguous rows: the products below read them as they
  // are (subtracting from a transposed view is 10x slower than this).
  at::Tensor data = a.is_same(acts) ? a - means : a.sub_(means);
  return {means, data.contiguous()};
}

// np.cov's block a b^H / (m - 1) for centered a: [na, m], b: [nb, m].
at::Tensor neuron_cov(const at::Tensor& a, const at::Tensor& b) {
  return detail::cross_covariance(detail::mh(a), detail::mh(b));
}

// neuron_cov(a, a) as a symmetric product (syrk/herk of the rows, half the multiply-adds).
at::Tensor neuron_self_cov(const at::Tensor& a) {
  return detail::gram(a).div_(static_cast<double>(a.size(1) - 1));
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

// Exact test (column min != max): the centered values of a constant neuron are rounding, which a
// rescale would blow up to unit variance.
void check_some_neuron_varies(const char* fn, const char* name, const at::Tensor& acts) {
  TORCH_CHECK_VALUE(detail::non_constant_columns(acts.t()).any().item<bool>(), fn, ": ", name,
                    " must have at least one non-constant neuron, but all ", acts.size(0),
                    " neurons are constant over the datapoints");
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

namespace {

// What get_cca_similarity computes before it builds its dictionary, kept for compute_pwcca.
struct CcaCore {
  NeuronCentered c1, c2;
  at::Tensor x_idxs, y_idxs, ix, iy;
  at::Tensor sxx_kept;  // unrescaled covariance of acts1's kept neurons [kx, kx]
  at::Tensor syy_kept;
  at::Tensor invsqrt_xx, invsqrt_yy;
  at::Tensor u, s, vh;  // SVD of the whitened cross-covariance (full matrices)
};

CcaCore cca_core(const char* fn, const at::Tensor& acts1, const at::Tensor& acts2, double epsilon,
                 bool full_svd) {
  detail::check_pair(fn, acts1, acts2, /*examples_dim=*/1);
  detail::check_more_examples_than_features(fn, "acts1", acts1, 1);
  detail::check_more_examples_than_features(fn, "acts2", acts2, 1);
  detail::check_non_negative(fn, "epsilon", epsilon);

  const int64_t nx = acts1.size(0);
  const int64_t ny = acts2.size(0);
  // Exact test first: the centered values of a constant neuron are rounding (mean(c) != c in
  // floating point), which the rescale below would blow up to unit variance.
  check_some_neuron_varies(fn, "acts1", acts1);
  check_some_neuron_varies(fn, "acts2", acts2);
  CcaCore core;
  core.c1 = center_neurons(acts1);
  core.c2 = center_neurons(acts2);
  // np.cov's blocks: the two symmetric ones by syrk/herk, the cross one by a product.
  at::Tensor sxx = neuron_self_cov(core.c1.data);
  at::Tensor syy = neuron_self_cov(core.c2.data);
  at::Tensor sxy = neuron_cov(core.c1.data, core.c2.data);

  // Rescale by the largest |entry| (the largest variance): makes epsilon relative.
  const double xmax = sxx.abs().max().item<double>();
  const double ymax = syy.abs().max().item<double>();
  TORCH_CHECK_VALUE(xmax > 0, fn, ": acts1 must have at least one non-constant neuron, but all ",
                    nx, " neurons are constant");
  TORCH_CHECK_VALUE(ymax > 0, fn, ": acts2 must have at least one non-constant neuron, but all ",
                    ny, " neurons are constant");
  // The reference's test on the rescaled diagonal: |s_ii / max| >= epsilon.
  core.x_idxs = (sxx.diagonal() / xmax).abs() >= epsilon;
  core.y_idxs = (syy.diagonal() / ymax).abs() >= epsilon;
  core.ix = core.x_idxs.nonzero().view({-1});
  core.iy = core.y_idxs.nonzero().view({-1});
  const int64_t kx = core.ix.numel();
  const int64_t ky = core.iy.numel();
  TORCH_CHECK_VALUE(kx > 0, fn,
                    ": epsilon must keep at least one neuron of acts1, but epsilon=", epsilon,
                    " removes all of them (rescaled variances are at most 1; google/svcca "
                    "crashes here with 'too many values to unpack')");
  TORCH_CHECK_VALUE(ky > 0, fn,
                    ": epsilon must keep at least one neuron of acts2, but epsilon=", epsilon,
                    " removes all of them (rescaled variances are at most 1; google/svcca "
                    "crashes here with 'too many values to unpack')");

  const bool all_x = kx == nx;
  const bool all_y = ky == ny;
  core.sxx_kept = all_x ? sxx : sxx.index_select(0, core.ix).index_select(1, core.ix);
  core.syy_kept = all_y ? syy : syy.index_select(0, core.iy).index_select(1, core.iy);
  if (!all_x) sxy = sxy.index_select(0, core.ix);
  if (!all_y) sxy = sxy.index_select(1, core.iy);
  at::Tensor a = core.sxx_kept / xmax + epsilon * at::eye(kx, sxx.options());
  at::Tensor b = core.syy_kept / ymax + epsilon * at::eye(ky, syy.options());

  core.invsqrt_xx = pinv_sqrt(a);
  core.invsqrt_yy = pinv_sqrt(b);
  at::Tensor arr = at::mm(core.invsqrt_xx, at::mm(sxy / std::sqrt(xmax * ymax), core.invsqrt_yy));
  if (full_svd) {
    auto svd = at::linalg_svd(arr, /*full_matrices=*/true);
    core.u = std::get<0>(svd);
    core.s = std::get<1>(svd).abs();
    core.vh = std::get<2>(svd);
  } else {
    core.s = at::linalg_svdvals(arr).abs();
  }
  return core;
}

}  // namespace

TensorDict get_cca_similarity(const at::Tensor& acts1, const at::Tensor& acts2, double epsilon,
                              double threshold, bool compute_coefs, bool compute_dirns) {
  constexpr const char* fn = "get_cca_similarity";
  check_threshold(fn, threshold);
  const bool need_coefs = compute_coefs || compute_dirns;
  CcaCore core = cca_core(fn, acts1, acts2, epsilon, /*full_svd=*/need_coefs);
  const int64_t nx = acts1.size(0);
  const int64_t ny = acts2.size(0);
  const at::Tensor& s = core.s;

  TensorDict out;
  at::Tensor full_coef_x, full_coef_y, full_invsqrt_xx, full_invsqrt_yy;
  if (need_coefs) {
    at::Tensor coef_x = core.u.transpose(0, 1);  // numpy's u.T: no conjugation
    full_coef_x = embed(coef_x, core.ix, nx);
    full_coef_y = embed(core.vh, core.iy, ny);
    full_invsqrt_xx = embed(core.invsqrt_xx, core.ix, nx);
    full_invsqrt_yy = embed(core.invsqrt_yy, core.iy, ny);
    if (compute_coefs) {
      out.insert("coef_x", coef_x);
      out.insert("invsqrt_xx", core.invsqrt_xx);
      out.insert("full_coef_x", full_coef_x);
      out.insert("full_invsqrt_xx", full_invsqrt_xx);
      out.insert("coef_y", core.vh);
      out.insert("invsqrt_yy", core.invsqrt_yy);
      out.insert("full_coef_y", full_coef_y);
      out.insert("full_invsqrt_yy", full_invsqrt_yy);
      out.insert("neuron_means1", core.c1.means);
      out.insert("neuron_means2", core.c2.means);
    }
  }
  if (compute_dirns) {
    // Variate p lands on row kept[p], and each row gets its neuron's mean back (reference).
    out.insert("cca_dirns1",
               at::mm(at::mm(full_coef_x, full_invsqrt_xx), core.c1.data) + core.c1.means);
    out.insert("cca_dirns2",
               at::mm(at::mm(full_coef_y, full_invsqrt_yy), core.c2.data) + core.c2.means);
  }

  int64_t idx = sum_threshold(s, threshold);
  if (idx < 0) idx = s.numel();
  at::Tensor mean = s.narrow(0, 0, idx).mean();
  at::Tensor sum = s.sum();
  out.insert("cca_coef1", s);
  out.insert("cca_coef2", s);
  out.insert("x_idxs", core.x_idxs);
  out.insert("y_idxs", core.y_idxs);
  out.insert("mean", at::stack({mean, mean}));
  out.insert("sum", at::stack({sum, sum}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compute_pwcca(const at::Tensor& acts1,
                                                             const at::Tensor& acts2,
                                                             double epsilon) {
  constexpr const char* fn = "compute_pwcca";
  CcaCore core = cca_core(fn, acts1, acts2, epsilon, /*full_svd=*/true);
  const bool use_x = core.ix.numel() <= core.iy.numel();
  // The reference's else-branch indexes acts1 with acts2's mask; use acts2, as intended.
  const at::Tensor& acts = use_x ? acts1 : acts2;
  const NeuronCentered& c = use_x ? core.c1 : core.c2;
  const at::Tensor& idx = use_x ? core.ix : core.iy;
  const int64_t m = acts.size(1);
  at::Tensor mu = c.means.index_select(0, idx);                // [k, 1]
  at::Tensor coef = use_x ? core.u.transpose(0, 1) : core.vh;  // [k, k]
  const at::Tensor& coefs = core.s;
  // The reference orthonormalizes the directions D = coef (K - mu) + mu 1^T ([k, m], K the kept
  // raw rows) by a QR of D^T and sums |Q^T K^T| over datapoints. With K_c = K - mu, K_c 1 = 0
  // and S = K_c K_c^T / (m - 1) the kept covariance:
  //   G = D D^T = (m-1) coef S coef^T + m mu mu^T,   D K^T = (m-1) coef S + m mu mu^T,
  // and Q^T K^T = L^{-1} D K^T for G = L L^T (R = L^T up to the signs of its rows, which the
  // absolute value drops). k x k work instead of the QR over m datapoints (as the native pwcca).
  at::Tensor weights;
  if (!acts.is_complex()) {
    const at::Tensor& sk = use_x ? core.sxx_kept : core.syy_kept;
    const double md = static_cast<double>(m);
    at::Tensor cs = at::mm(coef, sk).mul_(md - 1.0);  // [k, k]
    at::Tensor mm_t = at::mm(mu, mu.t()).mul_(md);
    at::Tensor gram = at::mm(cs, coef.t()) + mm_t;
    auto chol = at::linalg_cholesky_ex(gram);
    if (std::get<1>(chol).item<int64_t>() == 0) {
      const at::Tensor& l = std::get<0>(chol);
      weights = at::linalg_solve_triangular(l, cs + mm_t, /*upper=*/false).abs().sum(1);
      // D K^T is a difference of its two terms: where they cancel (raw activations orthogonal
      // to the directions) the result is their rounding, not the reference's exact 0 / 0 or its
      // small value. Take the data's QR there.
      const double terms = (cs.abs() + mm_t.abs()).sum(1).div(l.diagonal()).sum().item<double>();
      if (!(weights.sum().item<double>() > 1e-8 * terms)) weights = at::Tensor();
    }
  }
  if (!weights.defined()) {  // complex, or linearly dependent directions: the reference's QR
    at::Tensor kept = acts.to(reference_dtype(acts)).index_select(0, idx);
    at::Tensor dirns = at::mm(coef, kept - mu) + mu;                  // [k, m]
    at::Tensor p = std::get<0>(at::linalg_qr(dirns.t(), "reduced"));  // [m, k]
    weights = at::mm(p.t(), kept.t()).abs().sum(1);
  }
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

TensorDict get_svcca_similarity(const at::Tensor& acts1, const at::Tensor& acts2, int64_t dims1,
                                int64_t dims2, double epsilon, double threshold) {
  constexpr const char* fn = "get_svcca_similarity";
  detail::check_pair(fn, acts1, acts2, /*examples_dim=*/1);
  detail::check_more_examples_than_features(fn, "acts1", acts1, 1);
  detail::check_more_examples_than_features(fn, "acts2", acts2, 1);
  check_threshold(fn, threshold);
  if (dims2 < 0) dims2 = dims1;
  struct Side {
    const char* name;
    const char* dims_name;
    const at::Tensor& acts;
    int64_t dims;
  };
  std::vector<at::Tensor> svacts, sv;
  for (const Side& side :
       {Side{"acts1", "dims1", acts1, dims1}, Side{"acts2", "dims2", acts2, dims2}}) {
    const int64_t neurons = side.acts.size(0);
    TORCH_CHECK_VALUE(side.dims >= 1 && side.dims <= neurons, fn, ": ", side.dims_name,
                      " must be in [1, ", neurons, "] (the neurons of ", side.name, "), but got ",
                      side.dims);
    check_some_neuron_varies(fn, side.name, side.acts);
    auto c = center_neurons(side.acts);
    auto eig = at::linalg_eigh(neuron_self_cov(c.data));                // one syrk/herk
    at::Tensor top = std::get<1>(eig).flip(1).narrow(1, 0, side.dims);  // [neurons, k] = U_k
    at::Tensor rows = at::mm(detail::mh(top), c.data);                  // [k, m] = U_k^H c
    // Singular values as the norms of the rows: accurate to rounding of s_i itself, where
    // sqrt((m - 1) lambda_i) would carry the eigenvalue's error eps * lambda_max.
    sv.push_back(at::linalg_vector_norm(rows, 2, {1}, false, c10::nullopt));
    svacts.push_back(rows.contiguous());
  }
  TensorDict out = get_cca_similarity(svacts[0], svacts[1], epsilon, threshold,
                                      /*compute_coefs=*/false, /*compute_dirns=*/false);
  out.insert("svcca_score", out.at("cca_coef1").mean());
  out.insert("sv1", sv[0]);
  out.insert("sv2", sv[1]);
  return out;
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
