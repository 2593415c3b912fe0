// Centered kernel alignment (CKA; Kornblith et al. 2019): linear and RBF, biased and debiased.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "svcca/linalg.h"

namespace svcca {

// Notation. x: [n, p1], y: [n, p2]; X, Y their column-centered copies; K = X X^T and L = Y Y^T
// (linear) or RBF kernel matrices [n, n]. CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).
//
// Two HSIC estimators, chosen by `debiased`:
//   * false: the biased estimator of Gretton et al. (2005), HSIC_0 = tr(K H L H) / (n - 1)^2 with
//     H = I - 11^T / n: Kornblith et al.'s "CKA". For the linear kernel it equals
//     ||Sxy||_F^2 / (||Sxx||_F ||Syy||_F) with S the covariances of the data.
//   * true: the unbiased estimator HSIC_1 of Song et al. (2012), in the U-centered form of
//     Szekely & Rizzo (2014) that Kornblith et al.'s code uses (center_gram(unbiased=True) in
//     google-research/representation_similarity): "debiased CKA". With K~ = K with its diagonal
//     set to 0,
//       n (n - 3) HSIC_1 = tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
//                          - 2 / (n - 2) 1^T K~ L~ 1.
//     The ratio is not bounded to [0, 1] (it can be slightly negative for unrelated layers) and is
//     never clamped. It needs n >= 4.
//   Other tools use "unbiased CKA" for other estimators, for example the minibatch CKA of Nguyen
//   et al. (2021), which averages HSIC_1 over minibatches before taking the ratio, or a ratio of
//   HSIC_0 terms with other normalizations. These functions compute the full-batch ratio above.
//
// Precision policy: svcca.h (float64 numerics by default; a 0-d result in the input dtype, on the
// input device). Results are not clamped.

// Which computation linear CKA uses; both give the same number (tests check it).
enum class CkaForm {
  // Feature space: products of [p, p] matrices, O(n p^2) time and O(p^2) memory, no n x n matrix.
  // A layer with p > n is taken from its n x n Gram matrix instead (built from column blocks,
  // svcca/factors.h), so wide layers never form a [p, p] matrix.
  // Debiased, with X, Y centered, d_x = (||x_i||^2)_i the squared row norms and s_x = X^T 1 the
  // column sums (zero after centering), the terms of HSIC_1 expand into
  //   tr(K~ L~)       = ||X^T Y||_F^2 - d_x . d_y
  //   1^T K~ 1        = ||s_x||^2 - ||X||_F^2
  //   1^T K~ L~ 1     = (X s_x - d_x) . (Y s_y - d_y)
  // so, with s = 0 (HSIC_1 is invariant to centering: U-centering removes any a_i + b_j),
  //   n (n - 3) HSIC_1 = ||X^T Y||_F^2 - n / (n - 2) d_x . d_y
  //                      + ||X||_F^2 ||Y||_F^2 / ((n - 1)(n - 2)).
  kFeatures,
  // Gram matrices: K and L are built and centered ([n, n], O(n^2 p) time, O(n^2) memory). The
  // reference formula; cheaper than kFeatures when n is well below the feature counts.
  kGram,
};

struct LinearCkaOptions {
  // false: biased HSIC_0 (Kornblith et al.'s "CKA"); true: unbiased HSIC_1 of Song et al. (2012)
  // ("debiased CKA"), needs n >= 4. See the notes above.
  bool debiased = false;
  // Feature-space (default) or Gram computation; same number.
  CkaForm form = CkaForm::kFeatures;
  // Precision of the numerics (svcca.h).
  Precision precision = Precision::kFloat64;
};

// Linear CKA of x: [n, p1] and y: [n, p2] (Kornblith et al. 2019): a 0-d tensor in the input
// dtype. Invariant to orthogonal transforms, isotropic scaling and translation of either input;
// symmetric; 1 for identical inputs; with one feature each it is the squared Pearson correlation.
// Throws (c10::ValueError / c10::TypeError) when the inputs are not both 2-D real float tensors on
// one device with the same n >= 2, contain NaN/Inf, when a layer is constant (every feature), and
// when debiased with n < 4 or with a layer whose U-centered Gram matrix is zero (all examples but
// one identical).
//   at::Tensor s = svcca::linear_cka(x, y);                  // Kornblith's CKA
//   at::Tensor d = svcca::linear_cka(x, y, {/*debiased=*/true});
at::Tensor linear_cka(const at::Tensor& x, const at::Tensor& y,
                      const LinearCkaOptions& options = {});

struct RbfCkaOptions {
  // Bandwidth by the median rule (Kornblith et al.'s gram_rbf): for each layer separately,
  // sigma = threshold * sqrt(median of its squared pairwise distances), the median taken over the
  // full n x n matrix, zero diagonal included (numpy's median: the mean of the two middle values
  // when n^2 is even). Must be > 0. Ignored when `sigma` is set.
  double threshold = 1.0;
  // Absolute bandwidth used for both layers instead of the median rule. Must be > 0.
  std::optional<double> sigma;
  // As LinearCkaOptions::debiased.
  bool debiased = false;
  // Precision of the numerics (svcca.h).
  Precision precision = Precision::kFloat64;
};

// Kernel CKA of x: [n, p1] and y: [n, p2] with the Gaussian RBF kernel
// k(a, b) = exp(-||a - b||^2 / (2 sigma^2)) (Kornblith et al. 2019): a 0-d tensor in the input
// dtype. Builds two [n, n] kernel matrices: O(n^2 (p1 + p2)) time, O(n^2) memory. Invariant to
// orthogonal transforms and translation; with the median rule also to isotropic scaling.
// Throws like linear_cka, and when threshold or sigma is not a finite value > 0, or when the median
// rule meets a median squared distance of 0 (more than half of the pairs of examples identical:
// give an absolute sigma instead).
//   RbfCkaOptions o;  o.threshold = 0.5;  at::Tensor s = svcca::rbf_cka(x, y, o);
at::Tensor rbf_cka(const at::Tensor& x, const at::Tensor& y, const RbfCkaOptions& options = {});

namespace detail {

// Centers a symmetric kernel matrix k: [n, n]. unbiased = false: H k H (double centering).
// unbiased = true: the U-centering of Szekely & Rizzo (2014) (diagonal zeroed, then
// k~_ij - r_i / (n - 2) - r_j / (n - 2) + sum(k~) / ((n - 1)(n - 2)) off the diagonal, r the row
// sums of k~, zero diagonal), so that <U(k), U(l)>_F = n (n - 3) HSIC_1. Needs n >= 3.
at::Tensor center_gram(const at::Tensor& k, bool unbiased);

// CKA of two kernel matrices k, l: [n, n] (centered here): <kc, lc>_F / (||kc||_F ||lc||_F).
// Throws, naming fn and "x" / "y", when a centered kernel matrix is numerically zero.
at::Tensor gram_cka(const char* fn, const at::Tensor& k, const at::Tensor& l, bool debiased);

// Squared Euclidean distances between the rows of xc: [n, p] (best centered), [n, n], with an
// exact zero diagonal and no negative rounding.
at::Tensor squared_distances(const at::Tensor& xc);

// RBF kernel matrix [n, n] of centered xc: [n, p]: exp(-d / (2 sigma^2)) with d the squared
// distances and sigma absolute when given, else threshold * sqrt(median of d) (Kornblith's rule,
// numpy's median over all n^2 entries). Throws, naming fn and name, when that median is 0.
at::Tensor rbf_gram(const char* fn, const char* name, const at::Tensor& xc, double threshold,
                    std::optional<double> sigma);

// Squared distances [n, n] between the rows of a layer from its (centered) Gram matrix k:
// k_ii + k_jj - 2 k_ij, with an exact zero diagonal and no negative rounding.
at::Tensor squared_distances_from_gram(const at::Tensor& k);
// The RBF kernel matrix of squared distances d ([n, n]), bandwidth as rbf_gram.
at::Tensor rbf_kernel(const char* fn, const char* name, const at::Tensor& d, double threshold,
                      std::optional<double> sigma);

// Linear CKA (biased, feature space) from a pair's moments: ||sxy||_F^2 / (||sxx||_F ||syy||_F),
// the (n - 1) normalization cancelling. The debiased estimate also needs the centered data
// (centered_data(m, ...)). The caller has validated the inputs the moments came from; a constant
// layer throws, naming fn.
at::Tensor linear_cka_from_moments(const char* fn, const PairMoments& m, bool debiased);

// What debiased linear CKA needs of centered X [n, p1], Y [n, p2] (0-d tensors), with
// d_i = ||x_i||^2 and e_i = ||y_i||^2 the squared norms of the centered rows.
struct DebiasedSums {
  at::Tensor xty_sq, xtx_sq, yty_sq;  // ||X^T Y||_F^2, ||X^T X||_F^2, ||Y^T Y||_F^2
  at::Tensor dxdy, dxdx, dydy;        // sum_i d_i e_i, sum_i d_i^2, sum_i e_i^2
  at::Tensor sqx, sqy;                // ||X||_F^2 = sum_i d_i, ||Y||_F^2 = sum_i e_i
};
// Debiased linear CKA, HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) with K = X X^T, from the
// sums alone (so a stream of batches can supply them, grid/grid.cpp): with tr(K~L~) =
// ||X^T Y||^2 - sum d e, 1^T K~ 1 = -sum d (X centered) and 1^T K~ L~ 1 = sum d e,
// n (n - 3) HSIC_1 = ||X^T Y||^2 - n/(n - 2) sum d e + sum d sum e / ((n - 1)(n - 2)).
// Throws, naming fn, when n < 4 or a layer's unbiased self-HSIC is rounding.
at::Tensor debiased_cka_from_sums(const char* fn, const DebiasedSums& sums, int64_t n);

// The boundary checks of linear_cka and rbf_cka, for callers that build kernels themselves
// (grid/grid.cpp), naming fn and the layer `name`:
// n >= 4 for debiased CKA;
void check_debiased_examples(const char* fn, int64_t n);
// at least one non-constant feature (non_constant: [p] bool);
void check_not_constant(const char* fn, const char* name, const at::Tensor& non_constant);
// the centered kernel's self-HSIC `self_hsic` above the rounding level of `scale` (||K||_F^2 of
// the uncentered kernel matrix, n examples);
void check_self_hsic(const char* fn, const char* name, const at::Tensor& self_hsic,
                     const at::Tensor& scale, int64_t n, bool debiased);
// threshold and sigma finite and > 0.
void check_bandwidth_options(const char* fn, const RbfCkaOptions& options);

}  // namespace detail
}  // namespace svcca
