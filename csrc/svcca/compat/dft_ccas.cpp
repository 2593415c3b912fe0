// google/svcca's dft_ccas.fourier_ccas (NHWC conv activations), batched over frequencies.
#include <ATen/ATen.h>

#include <string>

#include "svcca/checks.h"
#include "svcca/compat/compat.h"
#include "svcca/compat/reference_cca.h"
#include "svcca/conv/fourier.h"
#include "svcca/linalg.h"

namespace svcca {
namespace compat {

TensorDict fourier_ccas(const at::Tensor& conv_acts1, const at::Tensor& conv_acts2,
                        double epsilon) {
  constexpr const char* fn = "fourier_ccas";
  detail::check_conv_pair(fn, "conv_acts1", conv_acts1, "conv_acts2", conv_acts2);
  detail::check_non_negative(fn, "epsilon", epsilon);
  const int64_t n = conv_acts1.size(0);
  const int64_t h1 = conv_acts1.size(1), w1 = conv_acts1.size(2), c1 = conv_acts1.size(3);
  const int64_t h2 = conv_acts2.size(1), w2 = conv_acts2.size(2), c2 = conv_acts2.size(3);
  if (h1 != h2 || w1 != w2) {
    // fft_resize crops both axes with new_size[0] = min(H1, H2) and asserts H == W.
    for (const auto* t : {&conv_acts1, &conv_acts2}) {
      const char* name = t == &conv_acts1 ? "conv_acts1" : "conv_acts2";
      TORCH_CHECK_VALUE(t->size(1) == t->size(2), fn, ": ", name,
                        " must have square spatial maps (H == W) when the two layers' spatial "
                        "sizes differ (google/svcca crops both frequency axes to one size), but "
                        "got ",
                        name, " with shape ", detail::shape_str(*t),
                        " (NHWC). svcca::fourier_cca crops each axis separately");
    }
  }
  for (const auto* t : {&conv_acts1, &conv_acts2}) {
    const char* name = t == &conv_acts1 ? "conv_acts1" : "conv_acts2";
    const int64_t c = t->size(3);
    TORCH_CHECK_VALUE(n > c, fn, ": ", name,
                      " must have more examples than channels at every frequency (at least ", c + 1,
                      " examples for ", c, " channels, google/svcca's check), but got ", name,
                      " with shape ", detail::shape_str(*t), " (NHWC, ", n, " examples)");
  }

  auto grid = detail::frequency_grid(h1, w1, h2, w2, /*conjugate_symmetry=*/true);
  // The reference casts to complex64 before its FFT; np.cov then works in complex128.
  auto spectra = [&](const at::Tensor& acts, const std::vector<int64_t>& rows,
                     const std::vector<int64_t>& cols) {
    at::Tensor s = detail::spectra_at(detail::to_nchw(acts, ConvLayout::kNHWC), rows, cols,
                                      grid.solved, grid.w, at::kComplexFloat, at::kComplexDouble);
    return s - s.mean(1, /*keepdim=*/true);
  };
  at::Tensor xs = spectra(conv_acts1, grid.x_rows, grid.x_cols);
  at::Tensor ys = spectra(conv_acts2, grid.y_rows, grid.y_cols);
  // Our blocks are the complex conjugates of np.cov's (x^H y rather than x^T conj(y)): the same
  // diagonals and singular values.
  at::Tensor sxx = detail::batched_covariance(xs);
  at::Tensor syy = detail::batched_covariance(ys);
  at::Tensor sxy = detail::batched_cross_covariance(xs, ys);
  auto where = [&](int64_t b) {
    const int64_t l = grid.solved[b];
    return "at frequency (" + std::to_string(grid.freq_h[l / grid.w]) + ", " +
           std::to_string(grid.freq_w[l % grid.w]) + ")";
  };
  auto r = detail::reference_ccas(fn, "conv_acts1", "conv_acts2", sxx, syy, sxy, epsilon,
                                  /*threshold=*/0.98, where);

  at::Tensor src = at::tensor(grid.source, at::kLong).to(r.coefs.device());
  auto grid_of = [&](const at::Tensor& t) {
    std::vector<int64_t> shape = {grid.h, grid.w};
    for (int64_t d = 1; d < t.dim(); ++d) shape.push_back(t.size(d));
    return t.index_select(0, src).view(shape);
  };
  at::Tensor coefs = grid_of(r.coefs);
  TensorDict out;
  out.insert("cca_coef1", coefs);
  out.insert("cca_coef2", coefs);
  out.insert("x_idxs", grid_of(r.x_idxs));
  out.insert("y_idxs", grid_of(r.y_idxs));
  out.insert("mean", grid_of(r.mean));
  out.insert("sum", grid_of(r.sum));
  (void)c1;
  (void)c2;
  return out;
}

}  // namespace compat
}  // namespace svcca
