// Bootstrap confidence intervals over examples for any measure, and for the difference of two
// similarities on the same resamples (paired).
//
// A resample draws n examples with replacement (seeded, svcca/inference/resampling.h: the same
// numbers on every platform); the measure is evaluated on it from each layer's reduced form, so
// the cost per resample is O(n^2) for the CKA family (Gram products, batched as GEMMs) and the
// weighted moments O(n p1 p2) plus O(p^3) decompositions for cca, svcca and procrustes; pwcca
// runs the one-shot measure on the resampled rows (resampling.h has the details).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "svcca/grid/grid.h"

namespace svcca {

enum class IntervalMethod {
  kPercentile,  // the (1 - level)/2 and (1 + level)/2 quantiles of the resampled values
                // (linear interpolation between order statistics, numpy's default)
  kBca,         // bias-corrected and accelerated (Efron 1987): the percentile interval's
                // quantiles moved by the bias z0 = Phi^-1(share of resamples below the
                // estimate, ties counted half) and the acceleration a from the jackknife
                // (n leave-one-out evaluations, which BCa adds to the cost)
};
// "percentile" | "bca"; throws naming fn and `name` otherwise.
IntervalMethod parse_interval_method(const char* fn, const std::string& name,
                                     const std::string& value);
std::string to_string(IntervalMethod method);

struct BootstrapOptions {
  int64_t resamples = 1000;  // bootstrap resamples, >= 2 (>= 2 valid ones make an interval)
  double level = 0.95;       // confidence level of the interval, in (0, 1)
  uint64_t seed = 0;         // the resamples' seed: the same seed gives the same numbers
  IntervalMethod method = IntervalMethod::kPercentile;
  // Threads the CCA family's resamples run on (resample_workers() in resampling.h): 0 picks the
  // BLAS's thread count (within measure_options.memory_bytes where that is set), 1 is serial; the
  // values do not depend on it beyond rounding.
  int64_t workers = 0;
  // The measure's own options (cca, svcca, pwcca, rbf; precision for cka and procrustes);
  // measure_options.measure and .conv are not read (the measure is the name given).
  GridOptions measure_options = {};
};

struct BootstrapResult {
  double estimate = 0.0;  // the measure on all examples
  double low = 0.0;       // the interval at `level`
  double high = 0.0;
  double standard_error = 0.0;  // standard deviation of the valid resampled values
  at::Tensor resamples;         // [resamples] float64 CPU, the value on each resample (NaN: the
                                // measure is undefined on that resample, e.g. a layer constant
                                // on the examples drawn)
  int64_t invalid = 0;          // NaN resamples (left out of the interval)
  double level = 0.0;
  IntervalMethod method = IntervalMethod::kPercentile;
};

// Bootstrap interval of measure(x, y) over examples. x: [n, p1], y: [n, p2] (2-D, finite,
// float32 / float64, one device: svcca.h's policy; numerics in float64 by default). measure: one
// of inference_measure_names() (resampling.h). Throws (c10::ValueError) when the inputs fail the
// measure's own checks, resamples < 2, level is not in (0, 1), measure is unknown, or fewer than
// 2 resamples are valid (the message says why the others were not).
//   auto r = svcca::bootstrap(x, y, "cka", {/*resamples=*/1000});  // r.low, r.high
BootstrapResult bootstrap(const at::Tensor& x, const at::Tensor& y, const std::string& measure,
                          const BootstrapOptions& options = {});

// Paired bootstrap of measure(a, c) - measure(b, c): is a more similar to c than b is? Both
// similarities are evaluated on the same resamples, so the interval is of the difference itself
// (estimate, interval and resamples are of the difference). a: [n, pa], b: [n, pb], c: [n, pc].
// Throws as bootstrap.
BootstrapResult bootstrap_difference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                                     const std::string& measure,
                                     const BootstrapOptions& options = {});

namespace detail {

// The interval of `values` ([B] float64 CPU, NaN entries left out) around `estimate`; jackknife:
// [n] leave-one-out values for BCa (undefined for the percentile method). Returns false (with
// *why set) when fewer than 2 values are valid.
struct Interval {
  double low = 0.0, high = 0.0, standard_error = 0.0;
  int64_t invalid = 0;
};
bool interval_of(double estimate, const at::Tensor& values, const at::Tensor& jackknife,
                 double level, IntervalMethod method, Interval* out, std::string* why);

// Phi^-1 (Acklam's rational approximation refined by one Halley step, |error| < 1e-15).
double normal_quantile(double p);

void check_bootstrap_options(const char* fn, int64_t resamples, double level);
// workers >= 0 (BootstrapOptions::workers, GridInferenceOptions::workers).
void check_workers(const char* fn, int64_t workers);

}  // namespace detail
}  // namespace svcca
