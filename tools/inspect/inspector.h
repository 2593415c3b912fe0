// svcca-inspect's work, one function per command: each turns a request into an InspectionReport
// (layers, a grid, or a tapped file) that the reporters render. No numerics here: capture/,
// grid/ and report/ compute and draw (conventions, layering rule 5).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "svcca/grid/grid.h"

namespace svcca::inspect {

// Where a model's examples come from: a tensor file (.pt or .npy), else random normal values
// of `shape` (dim 0 is the number of examples) from `seed`.
struct InputSpec {
  std::string file;
  std::vector<int64_t> shape;
  uint64_t seed = 0;
};

// One capturable layer of a model (`layers`).
struct LayerRow {
  std::string name;            // module path, e.g. "layer1.0.conv1" ("<path>:<i>": tuple item)
  std::string type;            // module class, e.g. "Conv2d"
  std::vector<int64_t> shape;  // output shape for the given input; empty when no input given
  std::string dtype;           // e.g. "float32"; empty when no input given
  int64_t calls = 0;           // times the module ran in one forward (0: no input given)
};

// What a command found; rendered by reporters.h (text, JSON, files).
struct InspectionReport {
  std::string command;              // "layers" | "grid" | "compare" | "dynamics" | "tap"
  std::vector<std::string> models;  // model, checkpoint or activation files, in order
  std::string input;                // what the examples were, e.g. "models/digits/probe.pt"
  int64_t examples = 0;             // how many examples
  std::vector<LayerRow> layers;     // `layers`
  bool has_grid = false;            // `grid`, `compare`, `dynamics`
  Grid grid;
  std::string tapped_path;         // `tap`: the file written
  std::string tapped_method;       // `tap`: the method that yields the captures
  std::vector<std::string> files;  // files written (reporters.h: write_files)
};

// Called with a short status line during long work (may be empty: no progress wanted).
using Progress = std::function<void(const std::string&)>;

struct LayersRequest {
  std::string model;
  bool has_input = false;  // false: names and types only (no forward run)
  InputSpec input;
};

// The CCA family's rank options (--rank-rtol, --allow-forced-correlations; CcaOptions in cca.h).
struct CcaSpec {
  std::optional<double> rank_rtol;         // unset: the default rule (with the input's floor)
  bool allow_forced_correlations = false;  // compute pairs with rx + ry > n - 1 anyway
  std::optional<int64_t> svcca_dims;       // svcca: the top D directions per layer (--dims)
};

// How the models are run: which layers, in which mode, within which memory budget.
struct RunSpec {
  std::vector<std::string> layers;  // patterns (capture.h: TappedModule::select); empty: all
  std::vector<std::string>
      exclude;               // globs (* crosses dots) on record names, e.g. "*.bn*", "blk#2"
  int64_t memory_bytes = 0;  // budget; 0: svcca::default_memory_budget()
  bool train_mode = false;   // false: every capture runs in eval mode (flags restored)
  CcaSpec cca;               // rank options of cca / svcca / pwcca
};

// Bootstrap intervals and permutation p-values for every cell (--bootstrap, --ci, --ci-method,
// --permutations; seeded by --seed): svcca/inference/grid_inference.h. Off when both are 0.
struct InferenceSpec {
  int64_t bootstrap = 0;                 // resamples per cell
  double ci = 0.95;                      // confidence level, in (0, 1)
  std::string ci_method = "percentile";  // "percentile" | "bca"
  int64_t permutations = 0;              // permutations per cell
  int64_t workers = 0;                   // resamples at once (0: auto, 1: serial)
  uint64_t seed = 0;
  bool on() const { return bootstrap != 0 || permutations != 0; }
};

struct GridRequest {
  std::vector<std::string> models;  // one model (L x L) or two (A layers x B layers)
  InputSpec input;
  std::string measure = "cka";
  std::string conv = "auto";
  std::vector<std::string> layers;  // patterns (capture.h: TappedModule::select); empty: all
  int64_t batch_size = 0;           // 0: exact from all examples (captured in passes); else
                                    // stream B examples at a time (GridAccumulator)
  RunSpec run;                      // exclude, memory, train mode (run.layers is `layers`)
  InferenceSpec inference;          // intervals / p-values (seed: input.seed)
};

struct CompareRequest {
  std::string a, b;  // activation files (.pt or .npy): one tensor, or several named ones
  std::string measure = "cka";
  std::string conv = "auto";
  std::vector<std::string> layers;  // glob patterns on the tensors' names; empty: all
  bool neurons_first = false;       // arrays are [neurons, examples] (google/svcca's layout)
  CcaSpec cca;                      // rank options of cca / svcca / pwcca
  InferenceSpec inference;          // intervals / p-values
};

struct DynamicsRequest {
  std::vector<std::string> checkpoints;  // in training order; the last one is the reference
  InputSpec input;
  std::string measure = "cka";
  std::string conv = "auto";
  std::vector<std::string> layers;
  int64_t batch_size = 0;
  RunSpec run;
};

// Checks a command's options before any file is read or model run: the measure and conv names,
// --conv fourier only with --measure cca (and not in dynamics), and --batch-size (> 0: given)
// only with a measure and conv that stream. Throws UsageError naming the options.
void check_request_options(const char* fn, const std::string& measure, const std::string& conv,
                           int64_t batch_size);

// Parses a memory size: "6G", "512M", "1.5GiB", "800000000" (bytes); names `option` in errors.
int64_t parse_memory(const std::string& option, const std::string& text);

struct TapRequest {
  std::string model;
  std::string output;
};

// Each throws UsageError, InputError or OutputError (errors.h) for what the user can fix, and
// c10::Error when a computation fails (e.g. a measure needs more examples than given).
InspectionReport inspect_layers(const LayersRequest& request);
InspectionReport inspect_grid(const GridRequest& request, const Progress& progress = {});
InspectionReport inspect_compare(const CompareRequest& request);
InspectionReport inspect_dynamics(const DynamicsRequest& request, const Progress& progress = {});
InspectionReport inspect_tap(const TapRequest& request);

}  // namespace svcca::inspect
