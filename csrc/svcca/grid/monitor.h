// Training monitor: each layer's probe-set activations, SVD-reduced, recorded every few steps of
// a training loop; answers layer x layer grids, layer x time dynamics and which layers converged.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "svcca/capture/capture.h"
#include "svcca/grid/grid.h"

namespace svcca {

struct MonitorOptions {
  // Layers to record, as TappedModule::select takes them (exact names, globs, "re:<regex>");
  // empty: every layer that forward reaches.
  std::vector<std::string> layers;
  // k of each layer's summary: the top-k principal components of its centered [n, p] probe
  // activations, U_k S_k ([n, k], the "SV" step of SVCCA). min(k, p, n - 1) columns are kept; a
  // layer with p <= k is kept whole (centered). Linear CKA of two summaries equals linear CKA of
  // the activations when k >= their ranks.
  int64_t summary_dims = 32;
  // The measure of grid() and dynamics(), computed on the summaries. grid.conv says how a layer
  // with more than two dims becomes [n, p] before the reduction: kAuto and kFlatten flatten
  // ([n, c*h*w]; the SVD reduction, not pooling, keeps p small), kPool averages over space
  // ([n, c]); kFold and kFourier do not apply (they change the examples) and throw.
  GridOptions grid = {};
};

// Records a model's layers on a fixed probe set while it trains, with no gradients, in eval mode
// (every submodule's training flag is restored afterwards, also when the model throws).
//
//   svcca::TrainingMonitor monitor(svcca::TappedModule(module), probe);   // probe: [n, ...]
//   for (int64_t step = 0; step < steps; ++step) {
//     train_step(module);
//     if (step % 10 == 0) monitor.record(step);
//   }
//   svcca::Grid d = monitor.dynamics();             // layers x steps, similarity to the latest
//   auto frozen = monitor.freeze_suggestion(0.99, 3);
//
// Memory: one [n, min(k, p)] float64 CPU tensor per layer per recorded step. Cost of record():
// one forward of the probe, then per layer with p > k an eigendecomposition of the smaller of
// X^T X and X X^T (O(n p m + m^3), m = min(n, p); about 20 ms for n = 256, p = 1024 on one core).
// dynamics() and converged() compute one measure per (layer, step) on the [n, k] summaries.
// Not thread-safe.
// Raghu et al. 2017 (SVCCA), section 4.1: lower layers converge first, hence freeze training.
class TrainingMonitor {
 public:
  // Runs the probe through the tapped method once to fix the layers and their summary sizes.
  // Throws when: the probe is undefined or has no examples (dim 0); it has fewer examples than
  // the measure needs (2 for cka and rbf-cka, 4 for debiased-cka, summary_dims + 2 for the CCA
  // family); the model rejects it (the message quotes the model's error and the probe's shape);
  // a selected layer produced no output for it or an output whose dim 0 is not the number of
  // probe examples; summary_dims < 1; grid.conv is kFold or kFourier; a pattern matches nothing.
  TrainingMonitor(TappedModule model, at::Tensor probe, MonitorOptions options = {});
  // Taps `module` (shared, not copied; see TappedModule) and monitors it.
  TrainingMonitor(torch::jit::Module module, at::Tensor probe, MonitorOptions options = {});

  // Records every layer's summary at `step`. Steps must strictly increase (throws otherwise,
  // quoting the last one). The model runs under NoGradGuard in eval mode.
  void record(int64_t step);
  // The same, from another module with the same layers (e.g. checkpoints loaded from files; the
  // monitor's own model is not run). Throws naming a layer the model lacks.
  void record(int64_t step, const TappedModule& model);

  // The recorded layers, in the model's graph order (input side first).
  const std::vector<std::string>& layers() const { return layers_; }
  // Recorded steps, increasing.
  std::vector<int64_t> steps() const;
  // Probe examples (n).
  int64_t examples() const { return examples_; }
  // The summary [n, k] (float64, CPU) of `layer` at `step`; throws on an unknown layer or step.
  at::Tensor summary(const std::string& layer, int64_t step) const;

  // The L x L grid of the layers at a recorded `step` (similarity_grid of the summaries). Throws
  // on a step that was not recorded, listing the recorded ones.
  Grid grid(int64_t step) const;

  // Layers (rows) x recorded steps (cols): values[i][t] = measure(summary of layer i at step t,
  // summary of layer i at the latest step), so the last column is 1 (the learning-dynamics plot
  // of Raghu et al. 2017, Fig. 4). measure is e.g. "cka-to-latest". Throws when nothing was
  // recorded, or when a cell cannot be computed (as similarity_grid: e.g. a layer that is
  // constant on the probe at some step has no CKA).
  Grid dynamics() const;

  // For each layer (in layers() order): the earliest recorded step s such that the layer's
  // similarity to its latest state is >= threshold at every recorded step from s on (the latest
  // step counts as similar to itself). Throws unless threshold is in [0, 1] and a step was
  // recorded. A layer whose similarity is undefined (a layer constant on the probe: its cells are
  // null in dynamics(), with the reason) gets -1.
  std::vector<int64_t> convergence_steps(double threshold) const;

  // Layers (in layers() order) whose similarity to their latest state is >= threshold at each
  // of the `window` recorded steps before the latest. Empty while fewer than window + 1 steps
  // are recorded. Throws unless threshold is in [0, 1] and window >= 1.
  std::vector<std::string> converged(double threshold, int64_t window) const;
  // The freeze-training suggestion: the longest run of converged layers from the input side
  // (freezing a layer whose input still changes would fix it to a moving target).
  std::vector<std::string> freeze_suggestion(double threshold, int64_t window) const;

  // Saves the recorded steps and summaries (versioned, checksummed; see stream/state_file.h),
  // written to a temporary name and renamed.
  void save(const std::string& path) const;
  // Replaces the recorded steps and summaries with those saved by save(). Throws when the file
  // is missing or corrupt, or its layers or number of examples differ from this monitor's.
  void load(const std::string& path);

  TappedModule& model() { return model_; }
  const at::Tensor& probe() const { return probe_; }
  const MonitorOptions& options() const { return options_; }

 private:
  struct Record {
    int64_t step = 0;
    std::vector<at::Tensor> summaries;  // one per layer, layers_ order
  };
  void record_from(const char* fn, int64_t step, const TappedModule& model);
  const Record& find(const char* fn, int64_t step) const;
  // Similarity of layer `layer` at record `r` to its state at the latest record.
  // NaN when undefined (reason, when given, gets why).
  double to_latest(size_t layer, size_t r, std::string* reason = nullptr) const;

  TappedModule model_;
  at::Tensor probe_;
  MonitorOptions options_;
  GridOptions cell_options_;  // options.grid with conv = kFlatten (summaries are 2-D)
  std::vector<std::string> layers_;
  int64_t examples_ = 0;
  std::vector<Record> records_;
};

}  // namespace svcca
