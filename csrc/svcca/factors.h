// Per-layer factors from whichever side of a layer is smaller: the p x p covariance (narrow
// layers, p <= n) or the n x n Gram matrix of the examples (wide layers, p > n: flattened conv
// layers), so that no [p, p] matrix and no float64 [n, p] copy of a wide layer is ever formed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "svcca/linalg.h"

namespace svcca {

// Which side of a layer X ([n, p], centered) its factors are taken from. Both carry the same thin
// SVD X = U S V^T (eigh of X^T X gives V and S^2, eigh of X X^T gives U and S^2), and every
// linear-CKA and CCA-family number is a function of U (or V), S and one cross term, so both give
// the same numbers (tested to 1e-10 in float64).
enum class FactorSide {
  kAuto,      // kGram when p > n, else kFeatures (the cheaper side; the documented default)
  kFeatures,  // the covariance X^T X / (n - 1) and the centered data: O(n p) memory, p <= n
  kGram,      // the centered Gram matrix X X^T: O(n^2) memory, built from column blocks
};

namespace detail {

// Column blocks of this many bytes (float64) at most are cast and centered at a time when a
// Gram matrix is formed: memory beyond the [n, n] result is one block.
inline constexpr int64_t kGramBlockBytes = int64_t{64} << 20;

// Statistics of a layer and its centered Gram matrix, from column blocks of x ([n, p], any float
// dtype, left untouched): never a [p, p] matrix, never a float64 [n, p] copy.
struct GramStats {
  at::Tensor gram;          // [n, n] (X_c / scale) (X_c / scale)^T over the kept columns
  at::Tensor mean;          // [p] column means in units of scale (of x / scale), compute dtype
  at::Tensor variance;      // [p] unbiased column variances of x / scale
  at::Tensor non_constant;  // [p] bool, exact (values not all equal)
  at::Tensor kept;          // [p] bool: the columns that entered the Gram matrix
  double scale = 1.0;       // 2 max |x| (>= every |x - mean|): the Gram is of X_c / scale, so
                            // that it cannot overflow or underflow; 1 when x is all zeros
};
// variance_cutoff: columns with variance <= variance_cutoff * (largest variance) are left out
// (exactly constant ones always). dtype: the compute dtype (float64 by default).
GramStats centered_gram(const at::Tensor& x, at::ScalarType dtype, double variance_cutoff = 0.0,
                        int64_t block_bytes = kGramBlockBytes);

// The side that `side` resolves to for a layer of n examples and p features.
FactorSide resolve_side(FactorSide side, int64_t n, int64_t p);

// ---- Linear kernel (CKA) -----------------------------------------------------------------------

// What linear CKA (biased or debiased) needs of a layer: its centered data divided by `scale`
// (narrow side) or its centered Gram matrix K of that data (Gram side), with ||K||_F^2 and the
// squared row norms diag(K). The scale (largest |x - mean|) cancels in every CKA ratio and keeps
// the products finite for any finite input (1e-200 or 1e200 alike).
struct KernelFactor {
  int64_t n = 0;
  bool gram_side = false;
  at::Tensor data;           // [n, p] centered / scale (narrow side), else undefined
  at::Tensor gram;           // [n, n] (Gram side), else undefined
  at::Tensor row_sq;         // [n] squared norms of the centered rows (diag K)
  at::Tensor self;           // 0-d ||X^T X||_F^2 = ||K||_F^2
  at::Tensor unbiased_self;  // 0-d n (n - 3) HSIC_1(K, K) (debiased only), else undefined
  int64_t bytes() const;
};
// Throws (c10::ValueError, naming fn and `name`) when x has fewer than 2 examples (4 debiased), no
// non-constant feature, or (debiased) an unbiased self-HSIC at the rounding level (all examples
// but one identical). x: [n, p] finite floating values (checked by the caller).
KernelFactor linear_kernel_factor(const char* fn, const char* name, const at::Tensor& x,
                                  Precision precision, FactorSide side, bool debiased);
// ||X^T Y||_F^2 = <K, L>_F of two factors, in the cheaper space: X^T Y (n p1 p2) for two narrow
// layers, <K, L> (n^2) for two wide ones, tr(X^T L X) (n^2 p) for one of each.
at::Tensor cross_hsic(const KernelFactor& x, const KernelFactor& y);
// Linear CKA of two factors (biased: ||X^T Y||^2 / (||X^T X|| ||Y^T Y||); debiased: Song's
// unbiased HSIC_1 ratio), a 0-d tensor in the compute dtype.
at::Tensor linear_cka_of(const char* fn, const KernelFactor& x, const KernelFactor& y,
                         bool debiased);

// ---- Whitened bases (CCA family) ---------------------------------------------------------------

// A layer's whitened data Z ([n, r]: Z^T Z / (n - 1) = I on the kept directions, ridge aside),
// the only factor CCA and SVCCA cells need: the canonical correlations of two layers are the
// singular values of Zx^T Zy / (n - 1). Feature side: factor_layer of the covariance (with the
// input dtype's rounding floor) and whitened_data, refined when ill-conditioned. Gram side:
// K = U S^2 U^T gives Z = sqrt(n - 1) U_r diag(lambda_r / (lambda_r + ridge))^(1/2), lambda =
// s^2 / (n - 1), with the same rank, truncation and ridge rules (the rank tolerance and the
// rounding floor taken over min(n, p) dimensions, the size of what is decomposed).
struct WhitenedFactor {
  at::Tensor z;      // [n, r]
  int64_t rank = 0;  // r
  int64_t features = 0;
  bool gram_side = false;
  int64_t bytes() const;
};
// x: [n, p] finite floating values. Throws (c10::ValueError, naming fn and `name`) when no
// feature or direction survives the options.
WhitenedFactor whitened_factor(const char* fn, const char* name, const at::Tensor& x,
                               const FactorOptions& options, Precision precision, FactorSide side);
// Canonical correlations [min(rx, ry)] of two whitened factors, descending, clamped to [0, 1].
at::Tensor canonical_correlations(const WhitenedFactor& x, const WhitenedFactor& y);

}  // namespace detail
}  // namespace svcca
