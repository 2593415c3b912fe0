// Minibatch CKA (Nguyen et al. 2021): the unbiased HSIC_1 of Song et al. (2012) averaged over
// minibatches, for the linear or RBF kernel; exact, order-independent and mergeable.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace svcca {

// Kernel of the minibatch CKA accumulator.
enum class CkaKernel {
  kLinear,  // k(a, b) = <a, b>
  kRbf,     // k(a, b) = exp(-||a - b||^2 / (2 sigma^2))
};

struct MinibatchCkaOptions {
  CkaKernel kernel = CkaKernel::kLinear;
  // RBF only. Absolute bandwidth, the same for every batch and both layers (recommended: then the
  // expectation of each batch's HSIC_1 does not depend on the batch size).
  std::optional<double> sigma;
  // RBF only, when sigma is unset: per batch and layer, sigma = threshold * sqrt(median squared
  // distance of the batch) (Kornblith et al.'s rule, as svcca::rbf_cka). The bandwidth then
  // varies with the batch, so the estimate depends (mildly) on the batch size. Must be > 0.
  double threshold = 1.0;
};

// Accumulates, over minibatches (x_b: [b, p1], y_b: [b, p2], b >= 4), the sums of the unbiased
// HSIC_1 (Song et al. 2012) of each batch for (K, L), (K, K) and (L, L), with K, L the batch's
// kernel matrices:
//   b (b - 3) HSIC_1 = tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((b - 1)(b - 2)) - 2 / (b - 2) 1^T K~ L~
//   1
// (K~: K with a zero diagonal), computed as <U(K), U(L)>_F / (b (b - 3)) with detail::center_gram's
// U-centering. cka() = mean HSIC(K, L) / sqrt(mean HSIC(K, K) mean HSIC(L, L)) (Nguyen et al.
// 2021). Each batch's HSIC_1 is unbiased, so the expectation does not depend on the batch size;
// with one batch of all rows it is svcca::linear_cka / rbf_cka with debiased = true. Sums in
// float64; the state is a handful of scalars that add up across ranks (and batches in any order
// give the same sums up to rounding). Cost per batch O(b^2 (p1 + p2)) on the batch's device.
//
// Scale (linear kernel): each side's sums are kept in units of a power of two (the HSIC of x in
// units of scale_x^4, of (x, y) in scale_x^2 scale_y^2), 1 while the batches' centered values lie
// within [2^-64, 2^64] and otherwise near their magnitude, raised (with the sums rescaled,
// exactly) when a larger batch arrives; so x * 1e200 gives the same CKA as x. The RBF kernel
// scales each batch before its distances (and an absolute sigma with it), so its sums need none.
// Thread-safe: every member function locks the accumulator (a batch's HSIC is computed outside
// the lock); copies are deep.
//
//   svcca::MinibatchCkaAccumulator acc;  for (...) acc.update(x_b, y_b);  acc.cka();
class MinibatchCkaAccumulator {
 public:
  // Throws when threshold or sigma is not finite and > 0.
  explicit MinibatchCkaAccumulator(MinibatchCkaOptions options = {});
  MinibatchCkaAccumulator(const MinibatchCkaAccumulator& other);
  MinibatchCkaAccumulator& operator=(const MinibatchCkaAccumulator& other);

  // Adds one minibatch. Throws (and leaves the accumulator unchanged) when x and y are not 2-D
  // finite float tensors on one device with the same number of rows, when a batch has fewer than
  // 4 rows (HSIC_1 is undefined there), or when feature counts or dtypes change between batches.
  void update(const at::Tensor& x, const at::Tensor& y);
  // Adds the batches seen by `other`. Throws when kernels, bandwidths, feature counts or dtypes
  // differ.
  void merge(const MinibatchCkaAccumulator& other);

  // Minibatch CKA, 0-d, in the input dtype (float64 when it is unknown: a state set on a fresh
  // accumulator). Not clamped. Throws before the first batch, and when a layer's mean HSIC(K, K)
  // is not > 0 (a constant layer).
  at::Tensor cka() const;
  // Mean HSIC_1 over batches of (K, L), (K, K), (L, L), 0-d float64, at the data's own scale
  // (overflows to inf, or underflows to 0, where the data's magnitude is beyond about 1e+-75).
  at::Tensor hsic_xy() const;
  at::Tensor hsic_xx() const;
  at::Tensor hsic_yy() const;

  // "n_batches", "n" (rows), "hsic_xy", "hsic_xx", "hsic_yy": 0-d float64 sums, in units of
  // "scale_x" and "scale_y" (0-d float64 powers of two; see Scale above). Across ranks the scales
  // reduce with MAX (each rank first rescales its sums to them) and the rest adds up. Empty before
  // the first batch.
  std::map<std::string, at::Tensor> state() const;
  // Replaces the state (a state without scale_x and scale_y, as svcca before file format 2 wrote,
  // means both are 1). Throws, naming the entry, and leaves the accumulator unchanged when an
  // entry is missing, not a one-element float64 tensor, not finite, when the counts are not
  // integers with n >= 4 n_batches >= 4, when hsic_xx or hsic_yy is negative, or when
  // hsic_xy^2 > hsic_xx hsic_yy (1 + 1e-6) (the Cauchy-Schwarz inequality, which every batch's
  // terms and so their sums satisfy).
  void set_state(const std::map<std::string, at::Tensor>& state);

  void save(const std::string& path) const;
  static MinibatchCkaAccumulator load(const std::string& path, at::Device device = at::kCPU);

  int64_t n_batches() const;
  int64_t n() const;
  const MinibatchCkaOptions& options() const { return options_; }

 private:
  void check_compatible(const char* fn, const MinibatchCkaAccumulator& other) const;
  void check_shapes(const char* fn, const at::Tensor& x, const at::Tensor& y) const;
  void copy_from(const MinibatchCkaAccumulator& other);
  // The caller holds mutex_.
  void set_state_impl(const char* fn, const std::map<std::string, at::Tensor>& state,
                      const std::string& where);
  // Mean over batches of a sum at its own scale (2^k_scale times the stored one).
  at::Tensor mean_of(const char* fn, const at::Tensor& sum, int k_scale) const;
  void merge_locked(const char* fn, const MinibatchCkaAccumulator& other);

  MinibatchCkaOptions options_;
  int64_t n_batches_ = 0;
  int64_t n_ = 0;
  int64_t p1_ = -1, p2_ = -1;  // -1: not seen yet
  std::optional<at::ScalarType> x_dtype_, y_dtype_;
  at::Tensor sum_xy_, sum_xx_, sum_yy_;  // 0-d float64 on the device of the first batch
  int kx_ = 0, ky_ = 0;                  // the sums' units: 2^(2 kx + 2 ky) for sum_xy, ...
  mutable std::mutex mutex_;
};

}  // namespace svcca
