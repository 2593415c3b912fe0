// The machinery behind bootstrap intervals and permutation tests: each measure evaluated on many
// resamples of the examples from what it is a function of, without redoing a layer's own work.
//
// Cost per resample (n examples, p features; README "How sure is a similarity"):
//   * cka, debiased-cka, rbf-cka: each layer is reduced once to its n x n Gram (kernel) matrix K.
//     A bootstrap resample with multiplicities w (sum n) needs w^T (K o L) w, K w, L w and the
//     diagonals: three n x n matrix-vector products per pair, batched over resamples as GEMMs
//     ([n, n] x [n, B]), O(n^2) per resample and no product over features (a linear kernel with
//     p <= n / 4 keeps its centered columns F too: K w = F (F^T w), O(n p)). The resampled Gram
//     K[idx][:, idx] is re-centered exactly (double centering and U-centering are invariant to
//     adding row and column constants, so the centered Gram of the full sample serves). rbf-cka
//     keeps the full sample's bandwidth. A permutation is an O(n^2) gather of one centered Gram.
//     Biased linear CKA of narrow layers (p^2 <= n, p <= 64) stays on the feature side: the
//     resamples' centered cross-moments X^T diag(w) Y - (X^T w)(Y^T w)^T / n as one GEMM of the
//     row-wise products [n, p1 p2] with the weights, O(n p1 p2) per resample, no n x n matrix
//     (a narrow layer paired with a wide one forms its Gram matrix then).
//   * cca, svcca, procrustes: multinomial-weighted moments of the data centered once,
//     X^T diag(w) Y over the ~0.63 n distinct rows of a resample (O(n p1 p2)), then the
//     measure's O(p^3) decompositions from the moments; no gather, cast or centering of the
//     data. (The moments carry no data, so a layer whose kept eigenvalues span more than
//     kRefineCondition is not refined against it as cca() refines it: its values then agree with
//     the one-shot measure to about eps * condition rather than to rounding.)
//     A permutation of cca / svcca is Zx^T Zy[perm] of the layers' whitened bases
//     (O(n r1 r2) and an r1 x r2 SVD), of procrustes the normalized cross product. svcca of a
//     pair with a layer wider than n runs the one-shot measure on the drawn rows (Gram side).
//   * pwcca: the one-shot measure on the resampled (permuted) rows (its weights sum over raw
//     features of the resampled data), O(n p^2 + p^3) per resample.
// The CCA family's and pwcca's resamples run side by side on the BLAS's threads
// (resample_workers(), resampled_cells()): their decompositions barely gain from a multi-threaded
// BLAS, two resamples on two cores do.
// A resample on which the measure is undefined (a layer constant on the drawn examples, fewer
// distinct examples than cca / pwcca need) is NaN; callers count and report such resamples.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "svcca/grid/grid.h"

namespace svcca {

// The measures inference covers: the grid's (cka, debiased-cka, rbf-cka, cca, svcca, pwcca; not
// minibatch-cka, whose value depends on a batching) and "procrustes" (svcca::procrustes).
std::vector<std::string> inference_measure_names();

namespace detail {

// What a measure keeps of one layer for resampling.
struct ResampleLayer {
  virtual ~ResampleLayer() = default;
  virtual int64_t bytes() const = 0;
};
// What a measure computes of one layer for one batch of resample weights (shared by every cell
// the layer is in).
struct ResampleDraw {
  virtual ~ResampleDraw() = default;
};

class Resampler {
 public:
  virtual ~Resampler() = default;
  // Reduces a layer ([n, p] after the conv recipe, finite floating values) to what resampling
  // needs. Throws c10::Error (naming fn and name) when the measure is undefined for the layer.
  virtual std::shared_ptr<const ResampleLayer> layer(const char* fn, const std::string& name,
                                                     const at::Tensor& mat) const = 0;
  // Resamples evaluated per batch (a memory / speed trade-off: cka GEMMs like wide batches).
  virtual int64_t batch() const = 0;
  // The layer's part of a batch of resamples, weights: [n, B] float64 multiplicities (each
  // column sums to the resample's size), on the layer's device.
  virtual std::shared_ptr<const ResampleDraw> draw(const ResampleLayer& layer,
                                                   const at::Tensor& weights) const = 0;
  // The measure of (x, y) on each resample: [B] float64 on the CPU, NaN where undefined.
  virtual at::Tensor values(const ResampleLayer& x, const ResampleDraw& dx, const ResampleLayer& y,
                            const ResampleDraw& dy, const at::Tensor& weights) const = 0;
  // The measure of (x, y[perm]) for each row of perms ([B, n] int64, CPU): [B] float64, CPU.
  virtual at::Tensor permuted(const ResampleLayer& x, const ResampleLayer& y,
                              const at::Tensor& perms) const = 0;
  // Whether measure(x, y) = measure(y, x).
  virtual bool symmetric() const = 0;
  // Whether batches gain from running on threads of their own (resample_workers()): true where a
  // resample is many small decompositions that the BLAS's own threads barely speed up (the CCA
  // family); false where it is a few large GEMMs that they already split (the CKA family).
  virtual bool concurrent() const { return false; }
};

// The resampler of `measure` (inference_measure_names()) with the options in `options` (cca,
// svcca, pwcca, rbf, precision; options.measure is not read). permutations = false: its layers
// serve bootstrap resamples only (cca and svcca then skip the whitened basis that permutations
// use). Throws naming fn and "measure" for an unknown name, and for options out of range.
std::unique_ptr<Resampler> make_resampler(const char* fn, const std::string& measure,
                                          const GridOptions& options, bool permutations = true);

// Seeded draws, the same on every platform: std::mt19937_64 (its sequence is fixed by the C++
// standard) and a multiply-shift mapping to [0, n), no library distribution.
class Draws {
 public:
  explicit Draws(uint64_t seed);
  // Multiplicities of `count` bootstrap resamples of n examples: [n, count] float64 (CPU), each
  // column n draws with replacement.
  at::Tensor bootstrap_weights(int64_t n, int64_t count);
  // `count` uniform random permutations of n examples (Fisher-Yates): [count, n] int64 (CPU).
  at::Tensor permutations(int64_t n, int64_t count);

 private:
  std::mt19937_64 rng_;
  uint64_t below(uint64_t n);
};

// The threads resampled_cells may run batches on, where r.concurrent() on the CPU (else 1):
// `requested` (> 0; 1: serial), or for 0 the cores the BLAS would use on one call (blas_threads())
// divided by ATen's intra-op threads (1 where the BLAS is not OpenBLAS); either way, where
// budget_bytes > 0 (a memory budget; 0: none), no more than the draws of that many batches (each
// bounded by the layers' own bytes) fit in it beside the layers' state.
int64_t resample_workers(const Resampler& r, const std::vector<const ResampleLayer*>& layers,
                         at::Device device, int64_t budget_bytes, int64_t requested = 0);

// The measure of each cell (a pair of indices into `layers`) on every column of `weights` ([n, B]
// float64, CPU): [cells, B] float64 CPU. Evaluated r.batch() columns at a time on `device`; each
// layer's draw is computed once per batch and shared by its cells. workers > 1 (from
// resample_workers()) runs batches on that many threads, each with a single-threaded BLAS
// (SingleThreadedBlas): the same values, each resample computed on one thread; an error thrown on
// one is rethrown here after all have stopped.
at::Tensor resampled_cells(const Resampler& r, const std::vector<const ResampleLayer*>& layers,
                           const std::vector<std::pair<int64_t, int64_t>>& cells,
                           const at::Tensor& weights, at::Device device, int64_t workers = 1);

// r.permuted(x, y, perms) with the rows of perms split into chunks that run on `workers`
// threads (resample_workers()), as resampled_cells runs batches: the same values.
at::Tensor permuted_values(const Resampler& r, const ResampleLayer& x, const ResampleLayer& y,
                           const at::Tensor& perms, int64_t workers = 1);

// Leave-one-out weights for examples [start, start + count): [n, count] float64, column j all
// ones but a zero at start + j (the jackknife of BCa intervals).
at::Tensor jackknife_weights(int64_t n, int64_t start, int64_t count);

}  // namespace detail
}  // namespace svcca
