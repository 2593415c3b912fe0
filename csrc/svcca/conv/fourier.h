// Fourier CCA of two conv layers (Raghu et al. 2017, "SVCCA", section 4 / appendix: the DFT
// method): a 2-D FFT over the spatial axes, then an independent CCA of the channels at every
// spatial frequency, on complex coefficients (complex Hermitian covariances). All frequencies are
// solved in one batched pass (batched covariances, batched eigh whitening, batched svdvals).
//
// Why it is exact for convolutional layers: if the dataset is closed under circular shifts, the
// covariance of the flattened [N, C*H*W] features is block-diagonalised by the 2-D DFT, so the
// canonical correlations of one CCA over the flattened features are the union of the
// per-frequency ones (tested in tests/conv/conv_test.cpp).
//
// dtype/device policy: inputs are real float32/float64 (complex inputs are rejected) on any
// device. The FFT and everything after it run in complex128 (Precision::kFloat64, default) or in
// the input's complex dtype (Precision::kInput: float32 -> complex64). Correlations come back in
// the input's real dtype (float64 when the dtypes differ), masks as bool.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "svcca/conv/recipes.h"
#include "svcca/linalg.h"

namespace svcca {

struct FourierCcaOptions {
  ConvLayout layout = ConvLayout::kNCHW;  // layout of both inputs
  // Ridge added before whitening, relative to the largest channel variance at each frequency.
  double epsilon = 0.0;
  // At each frequency, channels with variance <= variance_cutoff * (largest there) are dropped.
  // Channels that are exactly constant over the examples are always dropped.
  double variance_cutoff = 0.0;
  // Eigen-directions with eigenvalue <= rank_rtol * (largest at that frequency) are dropped.
  // Directions below rank_rtol^2 * (the layer's largest variance over all frequencies) are
  // rounding noise of the FFT (e.g. nonzero frequencies of a spatially constant map) and are
  // dropped too. nullopt: rank_rtol = n_channels * machine epsilon of the compute dtype, and
  // directions below the rounding level of the input dtype are dropped as well (float32
  // activations: (C * 2^-23)^2 * H W * the largest mean square of a channel; see
  // detail::spectral_noise_floor), so the CCA of a layer with itself is 1.
  std::optional<double> rank_rtol;
  Precision precision = Precision::kFloat64;  // see the policy above
  // Real inputs: frequencies f and -f carry conjugate coefficients, hence identical CCAs; solve one
  // of each pair and copy it (about half the work). Pairs broken by cropping are solved
  // separately. false: solve every frequency (for testing).
  bool use_conjugate_symmetry = true;
};

struct FourierCcaResult {
  // [H', W', k], k = min(C1, C2): canonical correlations at each frequency, descending, in
  // [0, 1]; entries past min(rank x, rank y) at that frequency are 0 and not valid.
  at::Tensor correlations;
  at::Tensor valid;            // [H', W', k] bool: entry is a canonical correlation
  at::Tensor x_mask;           // [H', W', C1] bool: channels of x kept at each frequency
  at::Tensor y_mask;           // [H', W', C2] bool
  at::Tensor frequencies_h;    // [H'] int64: integer frequency of each row (numpy fft order)
  at::Tensor frequencies_w;    // [W'] int64
  at::Tensor frequency_mean;   // [H', W'] mean valid correlation per frequency (NaN where none)
  at::Tensor mean;             // 0-d: mean over all frequencies and all valid correlations
  at::Tensor mean_without_dc;  // 0-d: the same without the zero frequency (0, 0)
  int64_t n_solved = 0;        // frequencies whose CCA was solved (the others are mirrors)
};

// Fourier CCA of x: [N, C1, H1, W1] and y: [N, C2, H2, W2] (NCHW; NHWC with layout).
// Unequal spatial sizes: frequencies are cropped per axis to new = min(size1, size2), keeping the
// integer frequencies f with -new/2 <= f < new/2 (google/svcca's fft_resize rule, which it
// applies to square maps only; here each axis independently, so non-square maps work too). An
// axis of equal sizes is not cropped.
// Throws (c10::ValueError / c10::TypeError) when an input is not 4-D, complex or not float, not
// finite, the devices or batch sizes differ, N < C + 2 for either layer (every frequency is one
// CCA over the N examples), or an option is out of range.
//   auto r = svcca::fourier_cca(conv1, conv2);  r.mean, r.correlations[0][0]
FourierCcaResult fourier_cca(const at::Tensor& x, const at::Tensor& y,
                             const FourierCcaOptions& options = {});

namespace detail {

// Integer frequencies of an axis of `size` in numpy fft order: 0, 1, .., -2, -1.
std::vector<int64_t> fft_frequencies(int64_t size);
// Indices (numpy fft order) of an axis of `size` kept when cropping to `new_size` <= size
// frequencies: those with -new_size/2 <= f < new_size/2. 8 -> 6 keeps {0, 1, 2, 5, 6, 7}.
std::vector<int64_t> cropped_frequency_indices(int64_t size, int64_t new_size);

// The (cropped) frequency grid shared by fourier_cca and compat::fourier_ccas.
struct FrequencyGrid {
  int64_t h = 0, w = 0;                 // grid size H', W'
  std::vector<int64_t> x_rows, x_cols;  // indices into x's FFT axes
  std::vector<int64_t> y_rows, y_cols;  // indices into y's FFT axes
  std::vector<int64_t> freq_h, freq_w;  // integer frequencies of the grid rows / columns
  std::vector<int64_t> solved;          // flat grid indices (i * W' + j) whose CCA is solved
  std::vector<int64_t> source;          // [H'*W']: position in `solved` of each location's CCA
};
// Grid for spatial sizes (h1, w1) and (h2, w2). With conjugate_symmetry, location (i, j) shares
// the CCA of (-i, -j) when that location is in the grid (always, unless the axis was cropped and
// has even size: its -new/2 lost its partner +new/2).
FrequencyGrid frequency_grid(int64_t h1, int64_t w1, int64_t h2, int64_t w2,
                             bool conjugate_symmetry);

// The FFT coefficients of NCHW acts at the grid's `solved` locations, as [F, N, C] of `dtype`
// (complex). The FFT itself runs in `fft_dtype`.
at::Tensor spectra_at(const at::Tensor& acts_nchw, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& cols, const std::vector<int64_t>& solved,
                      int64_t grid_w, at::ScalarType fft_dtype, at::ScalarType dtype);

// The absolute eigenvalue floor of one layer's per-frequency covariances `cov` ([F, C, C], of
// spectra_at's unnormalized FFT). With rank_rtol: rank_rtol^2 * (largest variance over all
// frequencies), as given. Without: the larger of the FFT's own rounding, (C eps)^2 * (largest
// variance), eps of the real compute dtype, and the rounding level of the layer's values,
// (C eps_in)^2 * H W * max_c E[x_c^2], eps_in of acts' dtype: rounding noise of variance s^2 per
// position is white, with power H W s^2 at every frequency, so where a frequency's own largest
// variance is small (a weak frequency of a float32 layer) its rounding-noise directions are not
// small relative to it and only an absolute floor tells them apart.
double spectral_noise_floor(const at::Tensor& acts_nchw, const at::Tensor& cov,
                            std::optional<double> rank_rtol, at::ScalarType compute_real);

}  // namespace detail
}  // namespace svcca
