// Permutation tests of "no relation between the two layers": the examples of one side permuted.
//
// Each permutation reuses both layers' reduced forms (svcca/inference/resampling.h): a gather of
// one centered Gram matrix (O(n^2)) for the CKA family, the whitened bases' cross product
// (O(n r1 r2)) for cca and svcca, the normalized cross product for procrustes; pwcca runs the
// one-shot measure on the permuted rows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "svcca/grid/grid.h"

namespace svcca {

struct PermutationOptions {
  int64_t permutations = 1000;       // random permutations of y's examples, >= 1
  uint64_t seed = 0;                 // the permutations' seed: the same seed gives the same numbers
  GridOptions measure_options = {};  // as BootstrapOptions::measure_options
  int64_t workers = 0;               // as BootstrapOptions::workers
};

// A null value ties the estimate when within this relative distance of it (rounding of the same
// number computed through a permutation that maps the data onto itself).
inline constexpr double kPermutationTieRtol = 1e-10;

struct PermutationResult {
  double estimate = 0.0;   // the measure on the data as given
  double p_value = 1.0;    // (b + 1) / (m + 1), b the null values >= the estimate (ties
                           // within kPermutationTieRtol included), m the permutations
  double null_mean = 0.0;  // mean of the null values: the measure's level under independence
                           // (biased CKA of independent layers is far from 0 at small n)
  at::Tensor null;         // [permutations] float64 CPU, the measure on each permutation
  int64_t exceed = 0;      // b
};

// One-sided permutation test of measure(x, y) (large values: related layers). x: [n, p1],
// y: [n, p2] (svcca.h's policy). measure: one of inference_measure_names(). Throws
// (c10::ValueError) when the inputs fail the measure's checks, permutations < 1, or measure is
// unknown.
//   auto t = svcca::permutation_test(x, y, "cka", {/*permutations=*/1000});  // t.p_value
PermutationResult permutation_test(const at::Tensor& x, const at::Tensor& y,
                                   const std::string& measure,
                                   const PermutationOptions& options = {});

namespace detail {
void check_permutation_options(const char* fn, int64_t permutations);
// p-value (b + 1) / (m + 1) of `estimate` against the null values ([m] float64 CPU).
double permutation_p_value(double estimate, const at::Tensor& null, int64_t* exceed);
}  // namespace detail
}  // namespace svcca
