// Per-layer factors from the smaller side of a layer: covariance (narrow) or Gram matrix (wide).
#include "svcca/factors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"

namespace svcca {
namespace detail {

FactorSide resolve_side(FactorSide side, int64_t n, int64_t p) {
  if (side != FactorSide::kAuto) return side;
  return p > n ? FactorSide::kGram : FactorSide::kFeatures;
}

GramStats centered_gram(const at::Tensor& x, at::ScalarType dtype, double variance_cutoff,
                        int64_t block_bytes) {
  const int64_t n = x.size(0);
  const int64_t p = x.size(1);
  const int64_t width = std::clamp<int64_t>(block_bytes / std::max<int64_t>(n * 8, 1), 1, p);
  auto block = [&](int64_t start) { return x.narrow(1, start, std::min(width, p - start)); };
  GramStats g;
  // The scale that keeps the products finite: |x - mean| <= 2 max|x| (a cheap reduction in the
  // input dtype, no cast).
  const double amax = abs_max(x);
  g.scale = amax > 0.0 && std::isfinite(amax) ? 2.0 * amax : 1.0;
  // Filled by the first block's product (beta = 0): no zeroing pass over n x n.
  g.gram = at::empty({n, n}, x.options().dtype(dtype));
  bool first_block = true;
  if (p == 0) g.gram.zero_();
  // One pass: each block cast, centered (a column's mean is its own), scaled and multiplied.
  // With variance_cutoff > 0 the kept columns depend on the largest variance of all blocks, so
  // the Gram matrix waits for a second pass.
  const bool one_pass = variance_cutoff <= 0.0;
  std::vector<at::Tensor> means, vars, nonconst;
  for (int64_t s = 0; s < p; s += width) {
    at::Tensor raw = block(s);
    at::Tensor xb = raw.to(dtype);
    at::Tensor mb = xb.mean(0);
    xb = xb.is_same(raw) ? xb - mb : xb.sub_(mb);
    at::Tensor nc = raw.amax(0) != raw.amin(0);
    // In units of scale from here on: squares of a finite layer cannot overflow.
    xb.div_(g.scale);
    means.push_back(mb / g.scale);
    nonconst.push_back(nc);
    vars.push_back(xb.square().sum(0).div_(static_cast<double>(std::max<int64_t>(n - 1, 1))));
    if (one_pass) {
      xb.mul_(nc.to(dtype));
      add_product_(g.gram, xb, /*outer=*/true, 1.0, first_block ? 0.0 : 1.0);
      first_block = false;
    }
  }
  g.mean = at::cat(means);
  g.variance = at::cat(vars);
  g.non_constant = at::cat(nonconst);
  g.kept = g.non_constant.clone();
  if (one_pass) return g;
  const double max_var = g.variance.max().item<double>();
  g.kept = g.kept & (g.variance > variance_cutoff * max_var);
  const at::Tensor kept_f = g.kept.to(dtype);
  for (int64_t s = 0; s < p; s += width) {
    const int64_t w = std::min(width, p - s);
    at::Tensor raw = block(s);
    at::Tensor xb = raw.to(dtype);
    at::Tensor mb = g.mean.narrow(0, s, w);  // in units of scale
    at::Tensor mask = kept_f.narrow(0, s, w);
    xb = xb.is_same(raw) ? xb / g.scale : xb.div_(g.scale);
    xb.sub_(mb).mul_(mask);
    add_product_(g.gram, xb, /*outer=*/true, 1.0, first_block ? 0.0 : 1.0);
    first_block = false;
  }
  return g;
}

// ---- Linear kernel -----------------------------------------------------------------------------

int64_t KernelFactor::bytes() const {
  const at::Tensor& t = gram_side ? gram : data;
  return t.defined() ? static_cast<int64_t>(t.numel() * t.element_size()) : 0;
}

namespace {

// n (n - 3) HSIC_1 from feature-space sums (cka.h derives the formula).
at::Tensor unbiased_hsic(const at::Tensor& xty_sq, const at::Tensor& dxdy, const at::Tensor& sqx,
                         const at::Tensor& sqy, int64_t n) {
  const double nd = static_cast<double>(n);
  return xty_sq - dxdy * (nd / (nd - 2.0)) + sqx * sqy / ((nd - 1.0) * (nd - 2.0));
}

}  // namespace

KernelFactor linear_kernel_factor(const char* fn, const char* name, const at::Tensor& x,
                                  Precision precision, FactorSide side, bool debiased) {
  const int64_t n = x.size(0);
  TORCH_CHECK_VALUE(n >= 2, fn, ": ", name, " must have at least 2 examples, but got ", n);
  if (debiased) check_debiased_examples(fn, n);
  const at::ScalarType dtype = compute_dtype(x, x, precision);
  KernelFactor f;
  f.n = n;
  f.gram_side = resolve_side(side, n, x.size(1)) == FactorSide::kGram;
  if (f.gram_side) {
    GramStats g = centered_gram(x, dtype);
    check_not_constant(fn, name, g.non_constant);
    f.gram = g.gram;
    f.row_sq = f.gram.diagonal().clone();
    f.self = sum_squares(f.gram);
  } else {
    at::Tensor nc = non_constant_columns(x);
    check_not_constant(fn, name, nc);
    at::Tensor xc = center(x, dtype, /*rescale=*/true).data;
    const double scale = abs_max(xc);
    if (scale > 0.0 && std::isfinite(scale)) xc = xc.requires_grad() ? xc / scale : xc.div_(scale);
    f.data = xc;
    if (debiased) f.row_sq = xc.square().sum(1);  // only the unbiased estimator reads it
    f.self = sum_squares(column_gram(xc));
  }
  if (debiased) {
    at::Tensor sq = f.row_sq.sum();
    f.unbiased_self = unbiased_hsic(f.self, at::dot(f.row_sq, f.row_sq), sq, sq, n);
    // ||X^T X||_F = ||K||_F: the same scale as the Gram form's check.
    check_self_hsic(fn, name, f.unbiased_self, f.self, n, true);
  }
  return f;
}

at::Tensor cross_hsic(const KernelFactor& x, const KernelFactor& y) {
  if (x.gram_side && y.gram_side) return sum_products(x.gram, y.gram);
  if (!x.gram_side && !y.gram_side) return at::mm(mh(x.data), y.data).square().sum();
  const KernelFactor& narrow = x.gram_side ? y : x;
  const KernelFactor& wide = x.gram_side ? x : y;
  return (narrow.data * at::mm(wide.gram, narrow.data)).sum();
}

at::Tensor linear_cka_of(const char* fn, const KernelFactor& x, const KernelFactor& y,
                         bool debiased) {
  TORCH_INTERNAL_ASSERT(x.n == y.n, fn, ": layers of different example counts");
  at::Tensor hxy = cross_hsic(x, y);
  if (!debiased) return hxy / (x.self * y.self).sqrt();
  TORCH_INTERNAL_ASSERT(x.unbiased_self.defined() && y.unbiased_self.defined(), fn,
                        ": debiased CKA of factors built without debiased = true");
  at::Tensor h =
      unbiased_hsic(hxy, at::dot(x.row_sq, y.row_sq), x.row_sq.sum(), y.row_sq.sum(), x.n);
  return h / (x.unbiased_self * y.unbiased_self).sqrt();
}

// ---- Whitened bases ----------------------------------------------------------------------------

int64_t WhitenedFactor::bytes() const {
  return z.defined() ? static_cast<int64_t>(z.numel() * z.element_size()) : 0;
}

WhitenedFactor whitened_factor(const char* fn, const char* name, const at::Tensor& x,
                               const FactorOptions& options, Precision precision, FactorSide side) {
  const int64_t n = x.size(0);
  const int64_t p = x.size(1);
  TORCH_CHECK_VALUE(n >= 2, fn, ": ", name, " must have at least 2 examples, but got ", n);
  const at::ScalarType dtype = compute_dtype(x, x, precision);
  WhitenedFactor w;
  w.features = p;
  w.gram_side = resolve_side(side, n, p) == FactorSide::kGram;
  if (!w.gram_side) {
    Centered c = center(x, dtype, /*rescale=*/true);
    at::Tensor cov = covariance(c.data);
    LayerFactors f = factor_layer(fn, name, cov, non_constant_columns(x),
                                  with_input_floor(options, x.scalar_type(), c.mean, cov, n));
    w.z = whitened_data(f, c.data, ill_conditioned(f));
    w.rank = f.rank;
    return w;
  }
  GramStats g = centered_gram(x, dtype, options.variance_cutoff);
  const int64_t k = g.kept.sum().item<int64_t>();
  const double max_var = g.variance.max().item<double>();
  TORCH_CHECK_VALUE(k > 0, fn, ": ", name, " must have at least one non-constant feature, but all ",
                    p, " features are constant",
                    options.variance_cutoff > 0 ? " or below variance_cutoff" : "",
                    " (largest variance ", max_var, ")");
  // eigh of the Gram of X_c / scale: lambda = mu / (n - 1), the covariance eigenvalues in units
  // of scale^2, like g.variance and g.mean (every rule below is relative or in those units).
  auto eig = at::linalg_eigh(g.gram);
  const double to_cov = 1.0 / static_cast<double>(n - 1);
  at::Tensor lam = std::get<0>(eig).flip(0).clamp_min(0.0) * to_cov;
  at::Tensor u = std::get<1>(eig).flip(1);
  FactorOptions o = options;
  if (!options.rank_rtol) {
    at::Tensor kept_var = g.variance.masked_select(g.kept);
    at::Tensor kept_mean = g.mean.masked_select(g.kept);
    o.noise_floor =
        std::max(o.noise_floor, input_noise_floor(x.scalar_type(), kept_mean, kept_var, k, n));
  }
  const KeptDirections kd = kept_directions(fn, name, lam, std::min(n, k), max_var, o);
  at::Tensor lr = lam.narrow(0, 0, kd.rank);
  w.z = u.narrow(1, 0, kd.rank) * (lr / (lr + kd.ridge)).sqrt().mul_(std::sqrt(n - 1.0));
  w.rank = kd.rank;
  return w;
}

at::Tensor canonical_correlations(const WhitenedFactor& x, const WhitenedFactor& y) {
  const int64_t n = x.z.size(0);
  at::Tensor m = at::mm(mh(x.z), y.z).div_(static_cast<double>(n - 1));
  // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
  return at::linalg_svdvals(m).clamp(0.0, 1.0);
}

}  // namespace detail
}  // namespace svcca
