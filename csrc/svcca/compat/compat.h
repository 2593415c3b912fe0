// google/svcca-compatible entry points: its function names, argument defaults, result keys and
// numbers (cca_core.py, pwcca.py, numpy_pls.py, numpy_pca.py at 1f3fbf1), in its layout:
// activations are [n_neurons, n_datapoints]. Everything is computed and returned in float64
// (complex128 for complex input), as numpy does, on the input device.
//
// Where the reference crashes or returns NaN, these functions do the following instead
// (see docs in each function and shared/spec/reference-semantics.md):
//   * every neuron of a layer removed by epsilon, or all neurons constant: c10::ValueError
//     naming the layer (the reference dies with "too many values to unpack");
//   * epsilon = 0 with dead/constant neurons: the pseudo-inverse square root clamps the tiny
//     negative eigenvalues to 0 (the reference takes sqrt of them and fails with LinAlgError);
//   * threshold = 0: c10::ValueError (the reference's "mean" is the NaN mean of an empty slice);
//   * compute_dirns without compute_coefs: directions are computed anyway (KeyError in the
//     reference); the coefficient keys are then left out, as compute_coefs=False asks;
//   * compute_pwcca when acts1 keeps more neurons than acts2: weights come from acts2, as the
//     reference intended (it indexes acts1 with acts2's mask: IndexError or a wrong number);
//   * get_pls_similarity with unequal neuron counts: direction i gets neuron i's mean added for
//     i < min(nx, ny), which is the equal-size behaviour (the reference fails to broadcast).
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace svcca {
namespace compat {

using TensorDict = c10::Dict<std::string, at::Tensor>;

// Canonical correlations of acts1: [nx, m] and acts2: [ny, m], as google/svcca's
// cca_core.get_cca_similarity (neurons with rescaled variance < epsilon dropped, ridge epsilon,
// pinv square roots, SVD). Keys: cca_coef1, cca_coef2 ([k] descending), x_idxs, y_idxs (bool
// masks), mean, sum (2-element tensors), and with compute_coefs coef_x, coef_y, invsqrt_xx,
// invsqrt_yy, full_coef_x, full_coef_y, full_invsqrt_xx, full_invsqrt_yy, neuron_means1,
// neuron_means2; with compute_dirns cca_dirns1 [nx, m], cca_dirns2 [ny, m].
// Throws c10::ValueError for bad shapes (needs nx < m and ny < m), NaN/Inf, epsilon < 0,
// threshold outside (0, 1], and a layer with no neuron kept.
TensorDict get_cca_similarity(const at::Tensor& acts1, const at::Tensor& acts2,
                              double epsilon = 0.0, double threshold = 0.98,
                              bool compute_coefs = true, bool compute_dirns = false);

// google/svcca's pwcca.compute_pwcca: (pwcca value (0-d), weights [k], coefs [k]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> compute_pwcca(const at::Tensor& acts1,
                                                             const at::Tensor& acts2,
                                                             double epsilon = 0.0);

// SVCCA as google/svcca's tutorial (001_Introduction) runs it: center each layer over the
// datapoints, keep its top dims1 (dims2) singular directions, svacts = s[:k] Vh[:k], then
// get_cca_similarity(svacts1, svacts2, epsilon, threshold). Keys: cca_coef1, cca_coef2, x_idxs,
// y_idxs, mean, sum (as get_cca_similarity), svcca_score (0-d: the plain mean of cca_coef1,
// what the tutorial reports), sv1 [dims1], sv2 [dims2] (the kept singular values of the centered
// layers). Instead of the wide SVD of each [neurons, datapoints] layer it takes the top
// eigenvectors U_k of the neuron covariance (one symmetric product) and svacts = U_k^T (acts -
// means), the same rows up to signs (to which CCA is blind). dims2 < 0 means dims1. Throws
// c10::ValueError where get_cca_similarity does, and for dims outside [1, neurons].
TensorDict get_svcca_similarity(const at::Tensor& acts1, const at::Tensor& acts2,
                                int64_t dims1 = 20, int64_t dims2 = -1, double epsilon = 1e-10,
                                double threshold = 0.98);

// google/svcca's cca_core.sum_threshold: the first i in [0, len) with
// sum(array[:i]) / sum(array) >= threshold, or -1 where the reference returns None.
// array: 1-D; threshold in [0, 1].
int64_t sum_threshold(const at::Tensor& array, double threshold);

// google/svcca's numpy_pls.get_pls_similarity: keys eigenvals ([k], singular values of the
// cross-covariance), neuron_coeffs1 [k, nx], neuron_coeffs2 [k, ny], pls_dirns1 [k, m],
// pls_dirns2 [k, m], k = min(nx, ny).
TensorDict get_pls_similarity(const at::Tensor& acts1, const at::Tensor& acts2);

// google/svcca's dft_ccas.fourier_ccas on NHWC conv activations conv_acts1: [N, H1, W1, C1] and
// conv_acts2: [N, H2, W2, C2]: a 2-D FFT over (H, W) in complex64 (as the reference), then, at
// every location (i, j) of the frequency grid, get_cca_similarity's numbers on the complex
// coefficients (covariances in complex128, rescale, epsilon cut-off and ridge, pinv square roots,
// threshold 0.98 for mean). Unequal spatial sizes (square maps only, as the reference) are cropped
// to the frequencies -s/2 <= f < s/2 with s = min(H1, H2). All locations are solved in one batched
// pass, and for real inputs conjugate locations (f, -f) are solved once.
// Keys ([h, w] the frequency grid in numpy fft order, k = min(C1, C2)): cca_coef1, cca_coef2
// ([h, w, k], descending per location; zero-padded where epsilon leaves fewer than k channels, the
// reference returns shorter arrays there), x_idxs [h, w, C1], y_idxs [h, w, C2] (bool), mean and
// sum ([h, w]; the reference's 2-tuples hold one value twice). float64 / bool on the input device.
// Departures from the reference, which cannot run as shipped (reference-semantics.md section 4):
// epsilon is an explicit argument (the reference passes compute_dirns into the epsilon slot:
// False -> 0), and one dict of stacked tensors replaces its one-row-per-location DataFrame.
// Throws c10::ValueError / TypeError when an input is not 4-D real float with finite values, the
// batch sizes differ, the sizes differ and a map is not square, N <= C for either layer, epsilon
// < 0, or epsilon removes every channel (or every channel is constant) at some frequency.
TensorDict fourier_ccas(const at::Tensor& conv_acts1, const at::Tensor& conv_acts2,
                        double epsilon = 0.0);

// google/svcca's numpy_pca.get_pca: keys eigenvals ([n] singular values of the centered
// activations, not variances), neuron_coefs [n, n], and with compute_dirns pca_dirns [n, m].
TensorDict get_pca(const at::Tensor& acts, bool compute_dirns = false);

}  // namespace compat
}  // namespace svcca
