// Fourier CCA: per-frequency complex CCA of two conv layers, all frequencies in one batched pass.
#include "svcca/conv/fourier.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "svcca/checks.h"

namespace svcca {
namespace detail {

std::vector<int64_t> fft_frequencies(int64_t size) {
  std::vector<int64_t> f(size);
  const int64_t positives = (size - 1) / 2 + 1;  // numpy's fftfreq: 0 .. ceil(size/2) - 1
  for (int64_t i = 0; i < size; ++i) f[i] = i < positives ? i : i - size;
  return f;
}

std::vector<int64_t> cropped_frequency_indices(int64_t size, int64_t new_size) {
  TORCH_INTERNAL_ASSERT(new_size >= 1 && new_size <= size);
  std::vector<int64_t> kept;
  const auto f = fft_frequencies(size);
  for (int64_t i = 0; i < size; ++i) {
    // -new/2 <= f < new/2 in real arithmetic (odd new_size keeps a symmetric set).
    if (2 * f[i] >= -new_size && 2 * f[i] < new_size) kept.push_back(i);
  }
  return kept;
}

namespace {

// Partner index of grid index i on an axis of `size` (the index of frequency -f), or -1 when the
// axis was cropped and -f fell outside the kept range (only -size/2 for even size).
int64_t partner(int64_t i, int64_t size, bool cropped) {
  if (cropped && size % 2 == 0 && i == size / 2) return -1;
  return (size - i) % size;
}

std::vector<int64_t> take(const std::vector<int64_t>& v, const std::vector<int64_t>& idx) {
  std::vector<int64_t> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(v[i]);
  return out;
}

}  // namespace

FrequencyGrid frequency_grid(int64_t h1, int64_t w1, int64_t h2, int64_t w2,
                             bool conjugate_symmetry) {
  FrequencyGrid g;
  g.h = std::min(h1, h2);
  g.w = std::min(w1, w2);
  g.x_rows = cropped_frequency_indices(h1, g.h);
  g.x_cols = cropped_frequency_indices(w1, g.w);
  g.y_rows = cropped_frequency_indices(h2, g.h);
  g.y_cols = cropped_frequency_indices(w2, g.w);
  g.freq_h = take(fft_frequencies(h1), g.x_rows);
  g.freq_w = take(fft_frequencies(w1), g.x_cols);
  const bool crop_h = h1 != h2;
  const bool crop_w = w1 != w2;
  std::vector<int64_t> rep(g.h * g.w);
  for (int64_t i = 0; i < g.h; ++i) {
    for (int64_t j = 0; j < g.w; ++j) {
      const int64_t l = i * g.w + j;
      const int64_t pi = partner(i, g.h, crop_h);
      const int64_t pj = partner(j, g.w, crop_w);
      rep[l] = (conjugate_symmetry && pi >= 0 && pj >= 0) ? std::min(l, pi * g.w + pj) : l;
    }
  }
  std::vector<int64_t> position(g.h * g.w, -1);
  for (int64_t l = 0; l < g.h * g.w; ++l) {
    if (rep[l] == l) {
      position[l] = static_cast<int64_t>(g.solved.size());
      g.solved.push_back(l);
    }
  }
  g.source.resize(g.h * g.w);
  for (int64_t l = 0; l < g.h * g.w; ++l) g.source[l] = position[rep[l]];
  return g;
}

at::Tensor spectra_at(const at::Tensor& acts_nchw, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& cols, const std::vector<int64_t>& solved,
                      int64_t grid_w, at::ScalarType fft_dtype, at::ScalarType dtype) {
  auto index = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::kLong).to(acts_nchw.device());
  };
  at::Tensor f = at::fft_fft2(acts_nchw.to(fft_dtype), c10::nullopt, {2, 3});
  if (static_cast<int64_t>(rows.size()) != f.size(2)) f = f.index_select(2, index(rows));
  if (static_cast<int64_t>(cols.size()) != f.size(3)) f = f.index_select(3, index(cols));
  TORCH_INTERNAL_ASSERT(f.size(3) == grid_w);
  f = f.reshape({f.size(0), f.size(1), -1});  // [N, C, H' * W']
  if (static_cast<int64_t>(solved.size()) != f.size(2)) f = f.index_select(2, index(solved));
  return f.permute({2, 0, 1}).to(dtype).contiguous();  // [F, N, C]
}

double spectral_noise_floor(const at::Tensor& acts_nchw, const at::Tensor& cov,
                            std::optional<double> rank_rtol, at::ScalarType compute_real) {
  const double max_var = at::real(cov.diagonal(0, -2, -1)).max().item<double>();
  if (rank_rtol) return *rank_rtol * *rank_rtol * max_var;
  const double c = static_cast<double>(acts_nchw.size(1));
  const double fft = c * machine_eps(compute_real);
  const double in = c * machine_eps(acts_nchw.scalar_type());
  const double hw = static_cast<double>(acts_nchw.size(2) * acts_nchw.size(3));
  const double mean_square =
      acts_nchw.to(compute_real).square().mean({0, 2, 3}).max().item<double>();
  return std::max(fft * fft * max_var, in * in * hw * mean_square);
}

}  // namespace detail

namespace {

// Channels that are not exactly constant over the examples (at some position): [C] bool.
at::Tensor non_constant_channels(const at::Tensor& nchw) {
  return (nchw.amax(0) != nchw.amin(0)).flatten(1).any(1);
}

at::Tensor rescaled(const at::Tensor& t) {
  int e = 0;
  std::frexp(detail::unit_scale(t), &e);
  return detail::mul_pow2(t, e - 1);
}

void check_examples(const char* fn, const char* name, const at::Tensor& acts, int64_t channels) {
  const int64_t n = acts.size(0);
  TORCH_CHECK_VALUE(n >= channels + 2, fn, ": ", name,
                    " must have more examples than channels at every frequency (at least ",
                    channels + 2, " examples for ", channels,
                    " channels: each frequency is one "
                    "CCA of the channels over the N examples), but got ",
                    name, " with shape ", detail::shape_str(acts), " (", n,
                    " examples). Give more examples, or use "
                    "conv_features (fold positions into examples) instead");
}

}  // namespace

FourierCcaResult fourier_cca(const at::Tensor& x, const at::Tensor& y,
                             const FourierCcaOptions& options) {
  constexpr const char* fn = "fourier_cca";
  detail::check_conv_pair(fn, "x", x, "y", y);
  detail::check_non_negative(fn, "epsilon", options.epsilon);
  detail::check_unit_interval(fn, "variance_cutoff", options.variance_cutoff);
  if (options.rank_rtol) detail::check_unit_interval(fn, "rank_rtol", *options.rank_rtol);
  at::Tensor a = detail::to_nchw(x, options.layout);
  at::Tensor b = detail::to_nchw(y, options.layout);
  const int64_t c1 = a.size(1);
  const int64_t c2 = b.size(1);
  check_examples(fn, "x", x, c1);
  check_examples(fn, "y", y, c2);
  TORCH_CHECK_VALUE(a.size(2) * a.size(3) > 1 || b.size(2) * b.size(3) > 1, fn,
                    ": x and y must have more than one spatial position, but both are 1 x 1 (",
                    detail::shape_str(x), ", ", detail::shape_str(y),
                    "): their DFT has only the DC frequency, and mean_without_dc is undefined. "
                    "Use cca on the [N, C] features instead");
  // Each layer rescaled by a power of two (exact): CCA is scale invariant, and no spectrum or
  // covariance of a finite layer overflows or underflows.
  a = rescaled(a);
  b = rescaled(b);
  at::Tensor x_nc = non_constant_channels(a);
  at::Tensor y_nc = non_constant_channels(b);
  TORCH_CHECK_VALUE(x_nc.any().item<bool>(), fn,
                    ": x must have at least one non-constant channel, but all ", c1,
                    " channels are constant over the examples");
  TORCH_CHECK_VALUE(y_nc.any().item<bool>(), fn,
                    ": y must have at least one non-constant channel, but all ", c2,
                    " channels are constant over the examples");

  const at::ScalarType real = detail::compute_dtype(x, y, options.precision);
  const at::ScalarType cplx = real == at::kFloat ? at::kComplexFloat : at::kComplexDouble;
  auto grid = detail::frequency_grid(a.size(2), a.size(3), b.size(2), b.size(3),
                                     options.use_conjugate_symmetry);
  at::Tensor xs = detail::spectra_at(a, grid.x_rows, grid.x_cols, grid.solved, grid.w, cplx, cplx);
  at::Tensor ys = detail::spectra_at(b, grid.y_rows, grid.y_cols, grid.solved, grid.w, cplx, cplx);
  xs = xs - xs.mean(1, /*keepdim=*/true);
  ys = ys - ys.mean(1, /*keepdim=*/true);
  at::Tensor sxx = detail::batched_covariance(xs);  // [F, C1, C1]
  at::Tensor syy = detail::batched_covariance(ys);
  at::Tensor sxy = detail::batched_cross_covariance(xs, ys);  // [F, C1, C2]

  detail::FactorOptions f;
  f.epsilon = options.epsilon;
  f.variance_cutoff = options.variance_cutoff;
  f.rank_rtol = options.rank_rtol;
  auto wx = detail::batched_whitening(
      sxx, x_nc, f, detail::spectral_noise_floor(a, sxx, options.rank_rtol, real));
  auto wy = detail::batched_whitening(
      syy, y_nc, f, detail::spectral_noise_floor(b, syy, options.rank_rtol, real));
  at::Tensor m = at::matmul(detail::mh(wx.whitening), at::matmul(sxy, wy.whitening));
  // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
  at::Tensor s = at::linalg_svdvals(m).clamp(0.0, 1.0);  // [F, k]
  const int64_t k = s.size(1);
  at::Tensor valid = at::arange(k, s.options().dtype(at::kLong)).unsqueeze(0) <
                     at::minimum(wx.rank, wy.rank).unsqueeze(1);
  s = s * valid.to(s.scalar_type());

  // Mirror the solved frequencies onto the whole grid.
  at::Tensor src = at::tensor(grid.source, at::kLong).to(s.device());
  const at::ScalarType out = detail::result_dtype(x, y);
  FourierCcaResult r;
  r.correlations = s.index_select(0, src).view({grid.h, grid.w, k}).to(out);
  r.valid = valid.index_select(0, src).view({grid.h, grid.w, k});
  r.x_mask = wx.kept.index_select(0, src).view({grid.h, grid.w, c1});
  r.y_mask = wy.kept.index_select(0, src).view({grid.h, grid.w, c2});
  r.frequencies_h = at::tensor(grid.freq_h, at::kLong);
  r.frequencies_w = at::tensor(grid.freq_w, at::kLong);
  at::Tensor sums = r.correlations.sum(-1);
  at::Tensor counts = r.valid.sum(-1).to(out);
  const int64_t total = counts.sum().item<int64_t>();
  const int64_t at_dc = counts[0][0].item<int64_t>();
  TORCH_CHECK_VALUE(
      total > 0, fn,
      ": no channel direction is left at any frequency (variance_cutoff=", options.variance_cutoff,
      options.rank_rtol ? ", rank_rtol=" + std::to_string(*options.rank_rtol) : "",
      " removes every one): no canonical correlation is defined");
  TORCH_CHECK_VALUE(total > at_dc, fn,
                    ": no channel direction is left at any frequency other than DC (the maps of x "
                    "or y are constant over positions, or the options remove the rest): "
                    "mean_without_dc is undefined; use cca on the spatially pooled features");
  r.frequency_mean = sums / counts;  // 0 / 0 = NaN where a frequency has no correlation
  r.mean = sums.sum() / counts.sum();
  r.mean_without_dc = (sums.sum() - sums[0][0]) / (counts.sum() - counts[0][0]);
  r.n_solved = static_cast<int64_t>(grid.solved.size());
  return r;
}

}  // namespace svcca
