// Shared numerics: centering, covariance, and per-layer factors (kept features, eigenbasis,
// whitening), so that every measure builds on one implementation of each.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace svcca {

// Precision of the centering, covariance products and decompositions (see svcca.h).
enum class Precision {
  kFloat64,  // compute in float64 whatever the input dtype (default)
  kInput,    // compute in the input dtype (float32 stays float32: faster on GPUs, less exact)
};

namespace detail {

// dtype the numerics run in, for inputs x and y under `precision`.
at::ScalarType compute_dtype(const at::Tensor& x, const at::Tensor& y, Precision precision);
// dtype results are returned in: the inputs' dtype, float64 when they differ.
at::ScalarType result_dtype(const at::Tensor& x, const at::Tensor& y);

// Hermitian transpose of the last two dims (plain transpose for real tensors).
at::Tensor mh(const at::Tensor& t);

// The power of two 2^-e with 2^(e-1) <= max|x| < 2^e (1 for an all-zero x): multiplying by it
// changes only exponents (exact outside the subnormal range) and brings the largest |value| into
// [1/2, 1), so that no product or sum of squares of a finite layer overflows or underflows.
// Scale-invariant measures (CCA family, CKA, Procrustes) compute on rescaled layers.
double unit_scale(const at::Tensor& x);

// max |x| (0 for an empty x; NaN propagates), without a temporary for real x.
double abs_max(const at::Tensor& x);
// t * 2^exponent, exact (applied in steps that stay inside float32's range); in_place scales t
// itself (a buffer the caller owns).
at::Tensor mul_pow2(const at::Tensor& t, int exponent, bool in_place = false);

// x (cast to `dtype`) minus its column means. x: [n, p]. With `rescale`, x is first multiplied by
// unit_scale(x): data and mean are then in units of `scale` (x = (data + mean) * scale).
struct Centered {
  at::Tensor data;     // [n, p]
  at::Tensor mean;     // [p]
  double scale = 1.0;  // the unit of data and mean (1 without rescale)
};
Centered center(const at::Tensor& x, at::ScalarType dtype, bool rescale = false);

// Unbiased (n - 1) cross-covariance a^H b / (n - 1) of centered a: [n, p], b: [n, q].
at::Tensor cross_covariance(const at::Tensor& a_centered, const at::Tensor& b_centered);

// Unbiased covariance a^H a / (n - 1) of centered a: [n, p]. Symmetric: BLAS syrk/herk on CPU
// (half the multiply-adds of a matrix product, see blas.h); elsewhere only the blocks on and
// above the diagonal are multiplied (3/4 of a product for p >= 128).
at::Tensor covariance(const at::Tensor& a_centered);

// The Gram matrix a a^H ([n, n]) of a: [n, p], and the Gram of its columns a^H a ([p, p]),
// symmetric products as in covariance().
at::Tensor gram(const at::Tensor& a);
at::Tensor column_gram(const at::Tensor& a);

// sum(t^2) of a real t: a dot product for float64 (BLAS ddot, no n x n temporary, which
// square() would allocate), square().sum() otherwise (its pairwise sum is the accurate one in
// float32). Differentiable either way.
at::Tensor sum_squares(const at::Tensor& t);
// sum(a * b) of real a and b of one shape, the same way.
at::Tensor sum_products(const at::Tensor& a, const at::Tensor& b);

// c = beta c + alpha a^H a (outer = false) or alpha a a^H (outer = true), c Hermitian and
// contiguous; the symmetric product where BLAS has it, addmm otherwise.
void add_product_(at::Tensor& c, const at::Tensor& a, bool outer, double alpha = 1.0,
                  double beta = 1.0);

// The second-order statistics of a pair of layers that every CCA-family measure is a function
// of. Built from data by pair_moments(), or from streamed sufficient statistics.
struct PairMoments {
  int64_t n = 0;                      // number of examples
  at::Tensor x_mean, y_mean;          // [p1], [p2], compute dtype
  at::Tensor sxx, syy, sxy;           // unbiased (n - 1) covariances [p1, p1], [p2, p2], [p1, p2]
  at::Tensor x_non_constant;          // [p1] bool, exact; undefined: variance > 0
  at::Tensor y_non_constant;          // [p2] bool
  at::Tensor x_centered, y_centered;  // optional [n, p] data (enables exact fallbacks)
  // Or the layers the moments were taken of, re-centered on demand by centered_data() (what
  // pair_moments keeps on its blocked CPU path, which forms no [n, p] copy).
  at::Tensor x_source, y_source;
  at::ScalarType result_dtype = at::kDouble;  // dtype results are returned in
  // Units of each side's moments (pair_moments rescales each layer by detail::unit_scale): the
  // covariances of the original data are sxx * x_scale^2, sxy * x_scale * y_scale. Only weights
  // in data units (CcaResult::x_weights) depend on them.
  double x_scale = 1.0, y_scale = 1.0;
  // dtypes of the values the moments were taken of (float32 activations are rounded to 24 bits:
  // see input_noise_floor). Undefined: unknown, no rounding floor.
  at::ScalarType x_input_dtype = at::ScalarType::Undefined;
  at::ScalarType y_input_dtype = at::ScalarType::Undefined;
  // pair_moments took the layers' own products, X^T X - n mu mu^T (nearly centered float64
  // layers), rather than products of centered blocks.
  bool raw_products = false;
};

// Moments of x: [n, p1] and y: [n, p2] in the compute dtype of `precision` (inputs not checked),
// each layer rescaled by unit_scale (x_scale, y_scale). On the CPU, for real float32 / float64
// layers with contiguous rows and no autograd, in two passes over each layer and no [n, p] copy:
// column min, max and sum (the constant columns, the unit scale, a mean), then blocks of
// block_bytes (0: 32 MiB, at least 256 rows) cast, rescaled and centered into one buffer and
// accumulated by syrk (Sxx, Syy) and a product (Sxy), corrected for the rounding of the mean
// (S = B^T B - n r r^T, r the mean of the centered block rows B). Two contiguous float64 layers
// that are nearly centered (each non-constant column's mean^2 <= 3 variance, the column sums of
// squares taken in the first pass, and max |x| within 2^+-100) skip the centered blocks: syrk and
// a product of the layers themselves, S = X^T X - n mu mu^T, whose rounding error is at most 4x
// the centered one's for those columns (raw_products). Elsewhere through center() and
// covariance(), keeping the centered data.
PairMoments pair_moments(const at::Tensor& x, const at::Tensor& y, Precision precision,
                         int64_t block_bytes = 0);

// The centered data of m's x (y_side = false) or y in the moments' units ([n, p]): x_centered, or
// x_source re-centered at x_mean; undefined when the moments carry no data (streamed ones).
at::Tensor centered_data(const PairMoments& m, bool y_side);

// Columns of x whose values are not all equal (exact test, independent of scale). x: [n, p].
at::Tensor non_constant_columns(const at::Tensor& x);

// How many eigen-directions of a layer to keep beyond the numerical rank.
enum class Truncation {
  kRank,                       // every direction above the rank tolerance (CCA)
  kDims,                       // the top `dims` directions (SVCCA with a fixed count)
  kVarianceFraction,           // smallest k with sum(s_i^2)[:k] / sum(s_i^2) >= fraction
  kSingularValueMassFraction,  // smallest k with sum(s_i)[:k] / sum(s_i) >= fraction
};

struct FactorOptions {
  // Ridge added to the covariance diagonal, relative to the layer's largest variance (as
  // google/svcca's epsilon): whitening uses eigenvalue + epsilon * max_variance.
  double epsilon = 0.0;
  // Features with variance <= variance_cutoff * (largest feature variance) are dropped, as are
  // features that are exactly constant.
  double variance_cutoff = 0.0;
  // Eigenvalues <= rank_rtol * (largest eigenvalue) are treated as zero and their directions
  // dropped. nullopt: n_kept_features * machine epsilon of the compute dtype.
  std::optional<double> rank_rtol;
  // Eigenvalues <= noise_floor (absolute, in the covariance's units) are dropped too: the
  // variance that rounding the input values can create (input_noise_floor). 0: none.
  double noise_floor = 0.0;
  Truncation truncation = Truncation::kRank;
  int64_t dims = 0;       // for kDims
  double fraction = 1.0;  // for the fraction rules
};

// One layer's factors, computed once and shared by every measure of a pair or a grid.
struct LayerFactors {
  at::Tensor kept;          // [p] bool: features kept
  at::Tensor kept_index;    // [k] int64: their indices
  at::Tensor cov;           // [k, k] covariance of the kept features
  at::Tensor eigenvalues;   // [r] descending eigenvalues of cov (directions kept)
  at::Tensor eigenvectors;  // [k, r] matching orthonormal eigenvectors
  at::Tensor whitening;     // [k, r] eigenvectors / sqrt(eigenvalues + ridge)
  int64_t n_features = 0;   // p
  int64_t rank = 0;         // r
  bool all_kept = false;    // k == p (no index_select needed)
  double ridge = 0.0;       // added to the eigenvalues before whitening (epsilon * scale)
};

// Machine epsilon of a floating dtype (real or complex; half and bfloat16 too): 2^-52 for
// float64, 2^-23 for float32.
double machine_eps(at::ScalarType t);

// The variance that rounding a layer's values to `input_dtype` can put in a direction of its
// covariance: eps^2 (1 + sqrt(p / (n - 1)))^2 max_j E[x_j^2], with eps the dtype's machine
// epsilon, p the feature count, n the example count and E[x_j^2] = var_j + mean_j^2 (a value's
// rounding error scales with its magnitude, mean included). Rounding to nearest leaves an error
// of variance at most u^2 E[x_j^2] / 3 in each value (u = eps / 2, the unit roundoff); a direction
// holding only such noise has, by the Marchenko-Pastur edge, an eigenvalue of at most that
// variance times (1 + sqrt(p / (n - 1)))^2. The floor is 12 times the worst such level, and it
// grows with the layer only through p / n: a direction below it cannot be told from rounding noise
// (whitening it would turn noise into unit-variance signal: a float32 layer with x_3 = x_1 + x_2
// would get a spurious CCA direction of its own), while real directions far below the old
// (p eps)^2 rule are kept. mean: [p], cov: [p, p] in the compute dtype; n examples. 0 for an
// Undefined input dtype.
double input_noise_floor(at::ScalarType input_dtype, const at::Tensor& mean, const at::Tensor& cov,
                         int64_t n);

// The same from per-feature variances ([p]) of p = variance.numel() features over n examples.
double input_noise_floor(at::ScalarType input_dtype, const at::Tensor& mean,
                         const at::Tensor& variance, int64_t n_features, int64_t n);

// The default rank rule for a layer: options with noise_floor set to input_noise_floor when
// rank_rtol is not given (an explicit rank_rtol is used alone, as given).
FactorOptions with_input_floor(const FactorOptions& options, at::ScalarType input_dtype,
                               const at::Tensor& mean, const at::Tensor& cov, int64_t n);

// The leading directions a layer keeps given its descending eigenvalues `lam` (covariance units)
// over `dims` dimensions: those above rank_rtol * lam[0] (default dims * machine epsilon of lam's
// dtype) and above noise_floor, cut by the truncation rule; and the ridge (epsilon times
// max_var, the largest feature variance, for kRank; times lam[0] after a truncation). Throws,
// naming fn and name, when none is left.
struct KeptDirections {
  int64_t rank = 0;
  double ridge = 0.0;
};
KeptDirections kept_directions(const char* fn, const char* name, const at::Tensor& lam,
                               int64_t dims, double max_var, const FactorOptions& options);

// Factors of one layer from its covariance `cov` ([p, p]) and optional exact non-constant mask
// ([p] bool; undefined: a feature is constant when its variance is 0). Throws when no feature
// or no direction survives, naming `fn` and `name`.
LayerFactors factor_layer(const char* fn, const char* name, const at::Tensor& cov,
                          const at::Tensor& non_constant, const FactorOptions& options);

// Rows (and, for a square block, columns) of `m` restricted to kept features.
at::Tensor select_kept(const at::Tensor& m, const LayerFactors& rows, const LayerFactors* cols);

// Embeds the rows of `a` ([k, c]) at the kept feature indices of a [p, c] zero matrix.
at::Tensor scatter_rows(const at::Tensor& a, const LayerFactors& f);

// ---- Batched variants (one small problem per batch entry, e.g. per spatial frequency) ----------

// Unbiased cross-covariances a^H b / (n - 1) of centered a: [B, n, p], b: [B, n, q] -> [B, p, q]
// (Hermitian for complex inputs).
at::Tensor batched_cross_covariance(const at::Tensor& a_centered, const at::Tensor& b_centered);
// batched_cross_covariance(a, a) ([B, n, p] -> [B, p, p]) as B symmetric products.
at::Tensor batched_covariance(const at::Tensor& a_centered);

// Whitening of B covariances at once, with the same rules as factor_layer, applied per batch
// entry by masking instead of cropping (so every entry keeps the shape [p, p]).
struct BatchedWhitening {
  at::Tensor kept;       // [B, p] bool: features kept (variance above the cut-offs)
  at::Tensor whitening;  // [B, p, p] eigenvectors / sqrt(eigenvalue + ridge); dropped
                         // directions and dropped features give zero columns / rows
  at::Tensor rank;       // [B] int64: directions kept per entry
};
// cov: [B, p, p] Hermitian PSD (real or complex). feature_mask: optional [p] or [B, p] bool of
// features allowed (exactly constant ones excluded by the caller). A feature is kept when its
// variance is > variance_cutoff * (largest variance of its entry) and > noise_floor; an
// eigen-direction when its eigenvalue is > rank_rtol * (largest of its entry) and > noise_floor
// (an absolute floor, e.g. the rounding level of an FFT; 0: none; the larger of it and
// options.noise_floor applies). The ridge is epsilon * (largest
// variance of the entry). An entry with no feature or direction left gets rank 0 and a zero
// whitening; callers decide whether that is an error.
BatchedWhitening batched_whitening(const at::Tensor& cov, const at::Tensor& feature_mask,
                                   const FactorOptions& options, double noise_floor = 0.0);

}  // namespace detail
}  // namespace svcca
