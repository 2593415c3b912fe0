// Bootstrap intervals and permutation p-values for every cell of a layer x layer grid: each
// layer reduced once to its resampling form, every cell evaluated on the same resamples (and the
// same permutations), so cells can be compared with each other.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "svcca/grid/grid.h"
#include "svcca/inference/bootstrap.h"

namespace svcca {

struct GridInferenceOptions {
  int64_t resamples = 0;  // bootstrap resamples per cell; 0: no intervals
  double level = 0.95;    // in (0, 1)
  IntervalMethod method = IntervalMethod::kPercentile;
  int64_t permutations = 0;  // permutations per cell; 0: no p-values
  uint64_t seed = 0;
  // Threads the CCA family's resamples run on (resample_workers() in resampling.h): 0 picks the
  // BLAS's thread count within the memory budget, 1 is serial; the values do not depend on it
  // beyond rounding.
  int64_t workers = 0;
};

// Adds layers one at a time, as GridBuilder does (the CLI adds them pass by pass), and fills
// Grid::inference. Memory: the CKA family keeps an n x n Gram matrix per layer (two for
// debiased-cka), cca / svcca / procrustes the centered data and the whitened basis, pwcca the
// layer itself. Supports the grid measures but minibatch-cka, and the convs flatten, pool and
// cls (the others throw at construction).
//   svcca::InferenceGridBuilder b({"conv1", "fc"}, {}, grid_options, {/*resamples=*/200});
//   b.add("conv1", a1);  b.add("fc", a2);  b.apply(grid);  // grid from GridBuilder
class InferenceGridBuilder {
 public:
  // rows / cols as GridBuilder. Throws on bad options (resamples and permutations both 0 or
  // negative, level outside (0, 1), an unsupported measure or conv).
  InferenceGridBuilder(std::vector<std::string> rows, std::vector<std::string> cols,
                       GridOptions grid_options, GridInferenceOptions options);
  ~InferenceGridBuilder();
  InferenceGridBuilder(InferenceGridBuilder&&) noexcept;
  InferenceGridBuilder& operator=(InferenceGridBuilder&&) noexcept;

  // Layer `name` ([n, ...] activations; the conv applied here). A layer for which the measure is
  // undefined is recorded with its reason. Throws on an unknown or repeated name, a number of
  // examples that differs from the layers before, or (grid_options.memory_bytes > 0) when the
  // layers' resampling state exceeds that budget.
  void add(const std::string& name, const at::Tensor& acts, bool col = false);
  void add_undefined(const std::string& name, const std::string& reason, bool col = false);
  // Fills grid.inference for grid (rows and cols as given here, values from the grid builder):
  // intervals and p-values for every defined cell, NaN with a reason otherwise. Throws when a
  // layer was not added or the grid's labels differ.
  void apply(Grid& grid) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Grid::inference for a grid of `a`'s layers (one model: b empty) computed with `grid_options`.
void add_grid_inference(Grid& grid, const NamedActivations& a, const NamedActivations& b,
                        const GridOptions& grid_options, const GridInferenceOptions& options);

}  // namespace svcca
