// svcca-inspect: layer similarity of TorchScript models from the command line (parsing, reporter
// choice and exit codes only; the work is in inspector.cpp, the rendering in reporters.cpp).
#include <c10/util/Exception.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "errors.h"
#include "inputs.h"
#include "inspector.h"
#include "reporters.h"

namespace {

using namespace svcca::inspect;

// The names come from the grid's measure and conv tables (grid.h).
std::string bar_joined(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? "|" : "") + names[i];
  return s;
}
const std::string kMeasures = bar_joined(svcca::grid_measure_names());
const std::string kConvs = bar_joined(svcca::grid_conv_names());

constexpr const char* kFooter = R"(
Examples are dim 0 of every input and activation (a [N, 1, 8, 8] input is N images).
Inputs: --input FILE (a .pt tensor saved by torch.save in Python or torch::save/pickle_save in
C++, or a .npy; float inputs take the model's dtype), or --input-shape N,... for random normal
values from --seed. Models run in eval mode (--train-mode: as saved), without gradients.
Without --batch-size the grid is exact over all examples: layers are captured in passes that fit
--memory (default: min(RAM/4, available/2)), each reduced to its factor (wide layers to an n x n
Gram matrix) as soon as it is captured. --batch-size B instead streams B examples at a time
(exact for cka, debiased-cka, cca, svcca and pwcca, whose p x p state must fit --memory;
minibatch-cka is the minibatch estimator of Nguyen et al. 2021, for layers of any width).
Measures: cka (linear CKA), debiased-cka, rbf-cka, cca (mean canonical correlation), svcca,
pwcca, minibatch-cka. --conv says how layers of more than 2 dims become [examples, features]:
auto (flatten for the CKA family, pool for the CCA family), flatten, pool (global average over
space; [N, T, D] token layers: the mean over tokens), cls ([N, T, D]: the first token), fold
(positions become examples), fourier (cca: mean over spatial frequencies).
A module called k times gives layers name#1 ... name#k. Cells a measure cannot compute (a
constant layer, cca with fewer than p + 2 examples, a 2-D layer under fold) are null, with their
reasons in the JSON and on stderr; --strict makes them an error (exit 1).
--bootstrap N (grid, compare): N resamples of the examples, the same for every cell, give each
cell an interval at --ci (percentile, or --ci-method bca); --permutations M: a p-value
(b + 1) / (M + 1) of 'no relation' per cell and the null's mean. Seeded by --seed (the same seed,
the same numbers); in the JSON's grid.inference and <command>_cells.csv (one row per cell). Cost
per resample: O(n^2) per cell for the CKA family, the weighted moments for cca / svcca.

Exit codes:
  0  success
  1  a computation failed (e.g. a measure needs more examples than given)
  2  usage error: bad option or argument, unknown measure, conv or layer pattern
  3  input error: a model or input file is missing, not a TorchScript model or tensor file,
     corrupt, or of the wrong shape or dtype for the model
  4  output error: an output folder or file cannot be written (nothing half-written is left)
Errors are one line on stderr. Progress goes to stderr when it is a terminal, unless --quiet.)";

std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
  return line;
}

// Adds --input / --input-shape / --seed to `sub`; the shape text is parsed after CLI11 is done.
void add_input_options(CLI::App* sub, InputSpec& input, std::string& shape_text) {
  auto* file = sub->add_option("--input", input.file,
                               "examples: a tensor file (.pt or .npy), dim 0 = examples");
  auto* shape = sub->add_option("--input-shape", shape_text,
                                "random normal examples of this shape, e.g. 64,1,8,8");
  file->excludes(shape);
  shape->excludes(file);
  sub->add_option("--seed", input.seed,
                  "seed of the random examples (grid: and of --bootstrap / --permutations)")
      ->capture_default_str();
}

// --exclude, --memory, --strict, --train-mode (grid, dynamics).
void add_run_options(CLI::App* sub, RunSpec& run, std::string& memory, bool& strict) {
  sub->add_option("--exclude", run.exclude,
                  "leave out layers matching these globs (* crosses dots, e.g. '*.bn*,fc'); "
                  "repeat or comma-separate")
      ->delimiter(',');
  sub->add_option("--memory", memory,
                  "memory budget, e.g. 6G or 512M (default: min(RAM/4, available/2))");
  sub->add_flag("--strict", strict, "an undefined (null) cell is an error (exit 1)");
  sub->add_flag("--train-mode", run.train_mode,
                "run the model in the mode it was saved in (default: eval mode)");
}

// --bootstrap, --ci, --ci-method, --permutations (grid, compare).
void add_inference_options(CLI::App* sub, InferenceSpec& spec) {
  sub->add_option("--bootstrap", spec.bootstrap,
                  "bootstrap resamples of the examples per cell: an interval for every cell "
                  "(0: off)")
      ->capture_default_str();
  sub->add_option("--ci", spec.ci, "confidence level of the --bootstrap intervals, in (0, 1)")
      ->capture_default_str();
  sub->add_option("--ci-method", spec.ci_method, "percentile or bca (bias-corrected, accelerated)")
      ->check(CLI::IsMember({"percentile", "bca"}))
      ->capture_default_str();
  sub->add_option("--permutations", spec.permutations,
                  "permutations of the examples per cell: a p-value of 'no relation' for every "
                  "cell (0: off)")
      ->capture_default_str();
}

// One line per distinct reason, for stderr.
std::string undefined_lines(const svcca::Grid& grid) {
  size_t cells = 0;
  for (const auto& u : grid.undefined) cells += u.cells.size();
  std::string s = std::to_string(cells) + " of " + std::to_string(grid.values.numel()) +
                  " cells are undefined (null):\n";
  for (const auto& u : grid.undefined)
    s += "  " + std::to_string(u.cells.size()) + " cells: " + u.reason + "\n";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "svcca-inspect: which layers of a TorchScript model (or two) compute similar things, by CKA, "
      "CCA, SVCCA or PWCCA.",
      "svcca-inspect"};
  app.footer(kFooter);
  app.require_subcommand(1);
  bool quiet = false, no_color = false, json = false;
  std::string format = "text";
  app.add_flag("-q,--quiet", quiet, "no progress on stderr");
  app.add_flag("--no-color", no_color, "no ANSI colours in the terminal heatmap (also: NO_COLOR)");
  app.add_flag("--json", json, "print JSON on stdout instead of text (same as --format json)");
  app.add_option("--format", format, "stdout format")->check(CLI::IsMember({"text", "json"}));
  app.fallthrough();

  // layers
  LayersRequest layers_req;
  std::string layers_shape;
  auto* layers = app.add_subcommand(
      "layers", "the layers that can be captured: module type and output shape (with an input)");
  layers->add_option("MODEL", layers_req.model, "TorchScript model (.pt)")->required();
  add_input_options(layers, layers_req.input, layers_shape);

  // grid
  GridRequest grid_req;
  std::string grid_shape, grid_out, grid_memory;
  bool grid_strict = false;
  auto* grid = app.add_subcommand(
      "grid",
      "similarity of every pair of a model's layers, or of two models' layers (e.g. two "
      "checkpoints); writes grid.json, grid.csv, grid.svg and grid.png to --out");
  grid->add_option("MODEL", grid_req.models, "one model, or two models (rows, columns)")
      ->required()
      ->expected(1, 2);
  add_input_options(grid, grid_req.input, grid_shape);
  grid->add_option("--measure", grid_req.measure, kMeasures)->capture_default_str();
  grid->add_option("--conv", grid_req.conv, kConvs)->capture_default_str();
  grid->add_option(
          "--layers", grid_req.layers,
          "layer names, globs (conv*, layer1.*) or re:REGEX; repeat or comma-separate; default all")
      ->delimiter(',');
  grid->add_option("--batch-size", grid_req.batch_size,
                   "stream B examples at a time (default: exact over all examples, in passes)");
  add_run_options(grid, grid_req.run, grid_memory, grid_strict);
  add_inference_options(grid, grid_req.inference);  // seeded by --seed
  grid->add_option("--out", grid_out, "folder for the grid files (created if missing)")->required();

  // compare
  CompareRequest compare_req;
  std::string compare_out, layout = "examples-first";
  auto* compare =
      app.add_subcommand("compare",
                         "similarity of two saved activation sets (no model): one tensor each, or "
                         "named tensors (then a grid of A's against B's)");
  compare
      ->add_option("A", compare_req.a,
                   ".pt (torch.save of a tensor or a dict/list of them) or .npy")
      ->required();
  compare->add_option("B", compare_req.b, "the same kind, over the same examples")->required();
  compare->add_option("--measure", compare_req.measure, kMeasures)->capture_default_str();
  compare->add_option("--conv", compare_req.conv, kConvs)->capture_default_str();
  compare->add_option("--layers", compare_req.layers, "glob patterns on the tensor names")
      ->delimiter(',');
  compare
      ->add_option("--layout", layout,
                   "examples-first: [examples, features...]; neurons-first: google/svcca's "
                   "[neurons, datapoints]")
      ->check(CLI::IsMember({"examples-first", "neurons-first"}))
      ->capture_default_str();
  compare->add_option("--out", compare_out, "also write compare.json/.csv/.svg/.png here");
  add_inference_options(compare, compare_req.inference);
  compare->add_option("--seed", compare_req.inference.seed, "seed of --bootstrap / --permutations")
      ->capture_default_str();

  // dynamics
  DynamicsRequest dyn_req;
  std::string dyn_shape, dyn_out, dyn_memory;
  bool dyn_strict = false;
  auto* dynamics =
      app.add_subcommand("dynamics",
                         "each layer's similarity to the same layer of the final checkpoint, over "
                         "training; writes dynamics.json/.csv/.svg/.png to --out");
  dynamics
      ->add_option("CHECKPOINTS", dyn_req.checkpoints,
                   "two or more checkpoints of one model, in training order (last: final)")
      ->required();
  add_input_options(dynamics, dyn_req.input, dyn_shape);
  dynamics->add_option("--measure", dyn_req.measure, kMeasures)->capture_default_str();
  dynamics->add_option("--conv", dyn_req.conv, kConvs)->capture_default_str();
  dynamics->add_option("--layers", dyn_req.layers, "layer names, globs or re:REGEX; default all")
      ->delimiter(',');
  dynamics->add_option("--batch-size", dyn_req.batch_size, "examples per batch (default: all)");
  add_run_options(dynamics, dyn_req.run, dyn_memory, dyn_strict);
  dynamics->add_option("--out", dyn_out, "folder for the files (created if missing)")->required();

  // tap
  TapRequest tap_req;
  auto* tap =
      app.add_subcommand("tap",
                         "write a copy of MODEL with a method forward_tapped that also records "
                         "every layer's output (for Python: load libsvcca_ops.so first)");
  tap->add_option("MODEL", tap_req.model, "TorchScript model (.pt)")->required();
  tap->add_option("-o,--output", tap_req.output, "the tapped model to write")->required();

  for (CLI::App* sub : {layers, grid, compare, dynamics, tap}) {
    sub->footer(
        "\nAlso anywhere on the line: --json (or --format json), -q/--quiet, --no-color.\n"
        "Exit codes: 0 success, 1 computation failed, 2 usage error, 3 input error,\n"
        "4 output error (svcca-inspect --help explains inputs, measures and exit codes).");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "svcca-inspect: " << first_line(e.what()) << " (see svcca-inspect --help)\n";
    return kExitUsage;
  }

  const bool progress_on = !quiet && ::isatty(STDERR_FILENO);
  bool progress_shown = false;
  const Progress progress = [&](const std::string& line) {
    if (!progress_on) return;
    std::cerr << "\r" << line << "\033[K" << std::flush;
    progress_shown = true;
  };
  const auto end_progress = [&] {
    if (progress_shown) std::cerr << "\r\033[K" << std::flush;
    progress_shown = false;
  };

  try {
    InspectionReport report;
    std::string out_dir;
    bool strict = false;
    if (*layers) {
      layers_req.has_input = !layers_req.input.file.empty() || !layers_shape.empty();
      if (!layers_shape.empty())
        layers_req.input.shape = parse_shape("--input-shape", layers_shape);
      report = inspect_layers(layers_req);
    } else if (*grid) {
      if (!grid_shape.empty()) grid_req.input.shape = parse_shape("--input-shape", grid_shape);
      if (!grid_memory.empty()) grid_req.run.memory_bytes = parse_memory("--memory", grid_memory);
      report = inspect_grid(grid_req, progress);
      out_dir = grid_out;
      strict = grid_strict;
    } else if (*compare) {
      compare_req.neurons_first = layout == "neurons-first";
      report = inspect_compare(compare_req);
      out_dir = compare_out;
    } else if (*dynamics) {
      if (!dyn_shape.empty()) dyn_req.input.shape = parse_shape("--input-shape", dyn_shape);
      if (!dyn_memory.empty()) dyn_req.run.memory_bytes = parse_memory("--memory", dyn_memory);
      report = inspect_dynamics(dyn_req, progress);
      out_dir = dyn_out;
      strict = dyn_strict;
    } else if (*tap) {
      report = inspect_tap(tap_req);
    }
    end_progress();
    if (report.has_grid && !report.grid.undefined.empty()) {
      if (strict) {
        std::cerr << "svcca-inspect: --strict: " << undefined_lines(report.grid);
        return kExitRuntime;
      }
      if (!quiet) std::cerr << "svcca-inspect: " << undefined_lines(report.grid);
    }
    if (!out_dir.empty()) write_files(report, out_dir);
    if (json || format == "json") {
      std::cout << render_json(report).dump(2) << "\n";
    } else {
      const bool color = !no_color && std::getenv("NO_COLOR") == nullptr && ::isatty(STDOUT_FILENO);
      std::cout << render_text(report, color);
    }
    std::cout << std::flush;
    if (!std::cout) {
      std::cerr << "svcca-inspect: cannot write to stdout\n";
      return kExitOutput;
    }
    return kExitOk;
  } catch (const Error& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what()) << "\n";
    return e.code;
  } catch (const c10::Error& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what_without_backtrace()) << "\n";
    return kExitRuntime;
  } catch (const std::bad_alloc&) {
    end_progress();
    std::cerr << "svcca-inspect: out of memory\n";
    return kExitRuntime;
  } catch (const std::exception& e) {
    end_progress();
    std::cerr << "svcca-inspect: " << first_line(e.what()) << "\n";
    return kExitRuntime;
  } catch (...) {
    end_progress();
    std::cerr << "svcca-inspect: unknown error\n";
    return kExitRuntime;
  }
}
