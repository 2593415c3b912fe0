// svcca-inspect's command line: CLI11 options, and the checks that need no file.
#include "cli.h"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdlib>
#include <ostream>
#include <string>
#include <vector>

#include "errors.h"
#include "inputs.h"

namespace svcca::inspect {
namespace {

// The names come from the grid's measure and conv tables (grid.h).
std::string bar_joined(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? "|" : "") + names[i];
  return s;
}

constexpr const char* kFooter = R"(
Examples are dim 0 of every input and activation (a [N, 1, 8, 8] input is N images).
Inputs: --input FILE (a .pt tensor saved by torch.save in Python or torch::save/pickle_save in
C++, or a .npy; float inputs take the model's dtype; regular files only, NaN and inf refused),
or --input-shape N,... for random normal values from --seed (0 to 2^64 - 1). Models run in eval
mode (--train-mode: as saved), without gradients.
Without --batch-size the grid is exact over all examples: layers are captured in passes that fit
--memory (default: min(RAM/4, available/2)), each reduced to its factor (wide layers to an n x n
Gram matrix) as soon as it is captured. --batch-size B (B >= 1) instead streams B examples at a
time (exact for cka, debiased-cka, cca, svcca and pwcca, whose p x p state must fit --memory;
minibatch-cka is the minibatch estimator of Nguyen et al. 2021, for layers of any width).
Measures: cka (linear CKA), debiased-cka, rbf-cka, cca (mean canonical correlation), svcca,
pwcca, minibatch-cka. --conv says how layers of more than 2 dims become [examples, features]:
auto (flatten for the CKA family, pool for the CCA family), flatten, pool (global average over
space; [N, T, D] token layers: the mean over tokens), cls ([N, T, D]: the first token), fold
(positions become examples), fourier (--measure cca only: mean CCA over spatial frequencies).
A module called k times gives layers name#1 ... name#k. Cells a measure cannot compute (a
constant layer, cca with fewer than p + 2 examples, a 2-D layer under fold) are null, with their
reasons in the JSON and on stderr; --strict makes them an error (exit 1).
--bootstrap N (grid, compare): N resamples of the examples, the same for every cell, give each
cell an interval at --ci (percentile, or --ci-method bca); --permutations M: a p-value
(b + 1) / (M + 1) of 'no relation' per cell and the null's mean. Seeded by --seed (the same seed,
the same numbers); in the JSON's grid.inference and <command>_cells.csv (one row per cell). Cost
per resample: O(n^2) per cell for the CKA family, the weighted moments for cca / svcca;
--workers K runs K resamples of the CCA family at once (0, the default: one per BLAS thread).

Exit codes:
  0  success
  1  a computation failed (e.g. a measure needs more examples than given)
  2  usage error: bad option or argument, unknown measure, conv or layer pattern, an option
     combination that cannot work (checked before any model runs)
  3  input error: a model or input file is missing, not a regular file, not a TorchScript model
     or tensor file, corrupt, changed while read, holds NaN/inf, too large for the memory, or of
     the wrong shape or dtype for the model
  4  output error: an output folder or file cannot be written (the files of a grid are replaced
     as a set or not at all), or stdout cannot be written; a closed stdout pipe (| head) ends
     the run quietly with this code, any other stdout error with a message
Errors are one line on stderr. Progress goes to stderr when it is a terminal, unless --quiet.)";

std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
  return line;
}

// The raw text of the options whose values are checked after CLI11 (which would take
// "-1" for a uint64 seed as 2^64 - 1, and splits "," into nothing).
struct RawInput {
  CLI::Option* file = nullptr;
  CLI::Option* shape = nullptr;
  std::string shape_text;
  std::string seed_text = "0";
};
struct RawRun {
  std::vector<std::string> layers, exclude;
  CLI::Option* layers_opt = nullptr;
  CLI::Option* exclude_opt = nullptr;
  std::string memory;
  CLI::Option* batch_opt = nullptr;
  std::string batch_text;
  CLI::Option* out_opt = nullptr;
};

// A list option: one value per occurrence (a flag after it is never taken as its value), repeat
// it or comma-separate; split and checked by split_list.
CLI::Option* add_list(CLI::App* sub, const std::string& name, std::vector<std::string>& raw,
                      const std::string& help) {
  return sub->add_option(name, raw, help)
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void add_input_options(CLI::App* sub, std::string& file, RawInput& raw) {
  raw.file =
      sub->add_option("--input", file, "examples: a tensor file (.pt or .npy), dim 0 = examples");
  raw.shape = sub->add_option("--input-shape", raw.shape_text,
                              "random normal examples of this shape, e.g. 64,1,8,8");
  raw.file->excludes(raw.shape);
  raw.shape->excludes(raw.file);
  sub->add_option("--seed", raw.seed_text,
                  "seed of the random examples (grid: and of --bootstrap / --permutations), 0 to "
                  "2^64 - 1")
      ->capture_default_str();
}

// --exclude, --memory, --strict, --train-mode (grid, dynamics).
void add_run_options(CLI::App* sub, RunSpec& run, RawRun& raw, bool& strict) {
  raw.exclude_opt = add_list(sub, "--exclude", raw.exclude,
                             "leave out layers matching these globs (* crosses dots, e.g. "
                             "'*.bn*,fc'); repeat or comma-separate");
  sub->add_option("--memory", raw.memory,
                  "memory budget, e.g. 6G or 512M (default: min(RAM/4, available/2))");
  sub->add_flag("--strict", strict, "an undefined (null) cell is an error (exit 1)");
  sub->add_flag("--train-mode", run.train_mode,
                "run the model in the mode it was saved in (default: eval mode)");
}

// --rank-rtol, --allow-forced-correlations (grid, compare, dynamics): the CCA family's rank rules.
void add_cca_options(CLI::App* sub, CcaSpec& spec, std::string& rtol_text, std::string& dims_text) {
  sub->add_option("--dims", dims_text,
                  "svcca: keep the top D >= 1 directions per layer (default: 99% of the variance)");
  sub->add_option(
      "--rank-rtol", rtol_text,
      "cca/svcca/pwcca: eigen-directions <= RTOL x the largest count as zero, in [0, 1] "
      "(default: p x machine eps, and directions below the input dtype's rounding "
      "level are dropped)");
  sub->add_flag("--allow-forced-correlations", spec.allow_forced_correlations,
                "cca/svcca/pwcca: compute pairs whose kept directions rx + ry exceed n - 1 (their "
                "spans must intersect, forcing rx + ry - (n - 1) correlations to 1)");
}

void finish_cca_options(CcaSpec& spec, const std::string& rtol_text, const std::string& dims_text) {
  if (!dims_text.empty()) {
    const bool digits =
        dims_text.size() <= 9 && dims_text.find_first_not_of("0123456789") == std::string::npos;
    const int64_t d = digits ? std::stoll(dims_text) : 0;
    if (d < 1) {
      throw UsageError("--dims must be a whole number >= 1 (directions per layer), but got '" +
                       dims_text + "'");
    }
    spec.svcca_dims = d;
  }
  if (rtol_text.empty()) return;
  double v = 0.0;
  size_t used = 0;
  try {
    v = std::stod(rtol_text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != rtol_text.size() || !(v >= 0.0 && v <= 1.0)) {
    throw UsageError("--rank-rtol must be a number in [0, 1], but got '" + rtol_text + "'");
  }
  spec.rank_rtol = v;
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
  sub->add_option("--workers", spec.workers,
                  "resamples / permutations of the CCA family run at once (0: as many as the BLAS "
                  "has threads, within --memory; 1: one at a time); the same numbers to rounding")
      ->capture_default_str();
}

// "a,b" "c" -> {a, b, c}; an empty item (",", "a,,b", "") is a usage error.
std::vector<std::string> split_list(const std::string& option, const std::vector<std::string>& raw,
                                    const CLI::Option* opt) {
  std::vector<std::string> items;
  if (opt->count() > 0 && raw.empty()) {
    throw UsageError(option + " must be names or patterns separated by commas, but got ''");
  }
  for (const std::string& value : raw) {
    size_t start = 0;
    while (true) {
      const size_t comma = value.find(',', start);
      const std::string item =
          value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (item.empty()) {
        throw UsageError(option + " must be names or patterns separated by commas, but got '" +
                         value + "' (an empty name)");
      }
      items.push_back(item);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return items;
}

// CLI11 gives an option that needs a value the next argument even when that is another option
// (`--layers --out o` would take "--out" as the layer). Such a value is a usage error.
void check_not_an_option(const CLI::App* app, const CLI::App* sub, const std::string& option,
                         const std::string& value) {
  if (value.size() < 2 || value[0] != '-') return;
  const std::string name = value.substr(0, value.find('='));
  if (sub->get_option_no_throw(name) != nullptr || app->get_option_no_throw(name) != nullptr ||
      name == "--help" || name == "-h") {
    throw UsageError(option + " needs a value, but got the option '" + name + "' (write ./" +
                     value + " for a file of that name)");
  }
}

void check_required(const CLI::Option* opt, const std::string& option) {
  if (opt->count() == 0) throw UsageError(option + " is required");
}

void check_name(const std::string& option, const std::string& value, const char* kind) {
  if (value.empty()) {
    throw UsageError(option + " must name " + kind + ", but got an empty string");
  }
}

void finish_input(InputSpec& input, const RawInput& raw) {
  if (raw.file->count() > 0) check_name("--input", input.file, "a file");
  if (raw.shape->count() > 0) input.shape = parse_shape("--input-shape", raw.shape_text);
  input.seed = parse_seed("--seed", raw.seed_text);
}

// --batch-size as text: CLI11 would clamp an out-of-range number into int64 and run with it.
int64_t finish_batch(const CLI::Option* opt, const std::string& text) {
  if (opt->count() == 0) return 0;
  const std::string digits = !text.empty() && text[0] == '-' ? text.substr(1) : text;
  if (digits.empty() || digits.size() > 18 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    throw UsageError(
        "--batch-size must be a whole number of examples from 1 to 10^18 - 1, but got '" + text +
        "'");
  }
  const int64_t batch_size = std::stoll(text);
  if (batch_size < 1) {
    throw UsageError("--batch-size must be at least 1, but got " + std::to_string(batch_size) +
                     " (leave it out to use every example at once)");
  }
  return batch_size;
}

}  // namespace

uint64_t parse_seed(const std::string& option, const std::string& text) {
  const auto bad = [&](const char* why) {
    return UsageError(option + " must be an integer from 0 to 18446744073709551615 (2^64 - 1), " +
                      "but got '" + text + "'" + why);
  };
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) throw bad("");
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) throw bad(" (out of range)");
  return static_cast<uint64_t>(v);
}

int parse_command_line(int argc, const char* const* argv, CommandLine& line, std::ostream& out,
                       std::ostream& err) {
  const std::string measures = bar_joined(svcca::grid_measure_names());
  const std::string convs = bar_joined(svcca::grid_conv_names());
  CLI::App app{
      "svcca-inspect: which layers of a TorchScript model (or two) compute similar things, by CKA, "
      "CCA, SVCCA or PWCCA.",
      "svcca-inspect"};
  app.footer(kFooter);
  app.require_subcommand(1);
  std::string format = "text";
  app.add_flag("-q,--quiet", line.quiet, "no progress on stderr");
  app.add_flag("--no-color", line.no_color,
               "no ANSI colours in the terminal heatmap (also: NO_COLOR)");
  app.add_flag("--json", line.json, "print JSON on stdout instead of text (same as --format json)");
  app.add_option("--format", format, "stdout format")->check(CLI::IsMember({"text", "json"}));
  app.fallthrough();

  // layers
  RawInput layers_in;
  auto* layers = app.add_subcommand(
      "layers", "the layers that can be captured: module type and output shape (with an input)");
  layers->add_option("MODEL", line.layers.model, "TorchScript model (.pt)")->required();
  add_input_options(layers, line.layers.input.file, layers_in);

  // grid
  RawInput grid_in;
  RawRun grid_run;
  auto* grid = app.add_subcommand(
      "grid",
      "similarity of every pair of a model's layers, or of two models' layers (e.g. two "
      "checkpoints); writes grid.json, grid.csv, grid.svg and grid.png to --out");
  grid->add_option("MODEL", line.grid.models, "one model, or two models (rows, columns)")
      ->required()
      ->expected(1, 2);
  add_input_options(grid, line.grid.input.file, grid_in);
  grid->add_option("--measure", line.grid.measure, measures)->capture_default_str();
  grid->add_option("--conv", line.grid.conv, convs)->capture_default_str();
  grid_run.layers_opt = add_list(
      grid, "--layers", grid_run.layers,
      "layer names, globs (conv*, layer1.*) or re:REGEX; repeat or comma-separate; default all");
  grid_run.batch_opt = grid->add_option(
      "--batch-size", grid_run.batch_text,
      "stream B >= 1 examples at a time (default: exact over all examples, in passes)");
  bool grid_strict = false;
  add_run_options(grid, line.grid.run, grid_run, grid_strict);
  add_inference_options(grid, line.grid.inference);  // seeded by --seed
  std::string grid_rtol, compare_rtol, dyn_rtol, grid_dims, compare_dims, dyn_dims;
  add_cca_options(grid, line.grid.run.cca, grid_rtol, grid_dims);
  std::string grid_out;
  // --out and -o are required, checked after the values CLI11 may have taken from other options.
  grid_run.out_opt = grid->add_option("--out", grid_out,
                                      "folder for the grid files (created if missing; required)");

  // compare
  RawRun compare_raw;
  std::string compare_out, layout = "examples-first";
  auto* compare =
      app.add_subcommand("compare",
                         "similarity of two saved activation sets (no model): one tensor each, or "
                         "named tensors (then a grid of A's against B's)");
  compare
      ->add_option("A", line.compare.a,
                   ".pt (torch.save of a tensor or a dict/list of them) or .npy")
      ->required();
  compare->add_option("B", line.compare.b, "the same kind, over the same examples")->required();
  compare->add_option("--measure", line.compare.measure, measures)->capture_default_str();
  compare->add_option("--conv", line.compare.conv, convs)->capture_default_str();
  compare_raw.layers_opt = add_list(compare, "--layers", compare_raw.layers,
                                    "glob patterns on the tensor names; repeat or comma-separate");
  compare
      ->add_option("--layout", layout,
                   "examples-first: [examples, features...]; neurons-first: google/svcca's "
                   "[neurons, datapoints]")
      ->check(CLI::IsMember({"examples-first", "neurons-first"}))
      ->capture_default_str();
  compare_raw.out_opt =
      compare->add_option("--out", compare_out, "also write compare.json/.csv/.svg/.png here");
  add_inference_options(compare, line.compare.inference);
  add_cca_options(compare, line.compare.cca, compare_rtol, compare_dims);
  std::string compare_seed = "0";
  compare->add_option("--seed", compare_seed, "seed of --bootstrap / --permutations, 0 to 2^64 - 1")
      ->capture_default_str();

  // dynamics
  RawInput dyn_in;
  RawRun dyn_run;
  bool dyn_strict = false;
  std::string dyn_out;
  auto* dynamics =
      app.add_subcommand("dynamics",
                         "each layer's similarity to the same layer of the final checkpoint, over "
                         "training; writes dynamics.json/.csv/.svg/.png to --out");
  dynamics
      ->add_option("CHECKPOINTS", line.dynamics.checkpoints,
                   "two or more checkpoints of one model, in training order (last: final)")
      ->required();
  add_input_options(dynamics, line.dynamics.input.file, dyn_in);
  dynamics->add_option("--measure", line.dynamics.measure, measures)->capture_default_str();
  dynamics->add_option("--conv", line.dynamics.conv, convs)->capture_default_str();
  dyn_run.layers_opt =
      add_list(dynamics, "--layers", dyn_run.layers, "layer names, globs or re:REGEX; default all");
  dyn_run.batch_opt = dynamics->add_option("--batch-size", dyn_run.batch_text,
                                           "examples per batch, B >= 1 (default: all)");
  add_run_options(dynamics, line.dynamics.run, dyn_run, dyn_strict);
  add_cca_options(dynamics, line.dynamics.run.cca, dyn_rtol, dyn_dims);
  dyn_run.out_opt =
      dynamics->add_option("--out", dyn_out, "folder for the files (created if missing; required)");

  // tap
  auto* tap =
      app.add_subcommand("tap",
                         "write a copy of MODEL with a method forward_tapped that also records "
                         "every layer's output (for Python: load libsvcca_ops.so first)");
  tap->add_option("MODEL", line.tap.model, "TorchScript model (.pt)")->required();
  auto* tap_out =
      tap->add_option("-o,--output", line.tap.output, "the tapped model to write (required)");

  for (CLI::App* sub : {layers, grid, compare, dynamics, tap}) {
    sub->footer(
        "\nAlso anywhere on the line: --json (or --format json), -q/--quiet, --no-color.\n"
        "Exit codes: 0 success, 1 computation failed, 2 usage error, 3 input error,\n"
        "4 output error (svcca-inspect --help explains inputs, measures and exit codes).");
  }

  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
      return app.exit(e, out, err);
    } catch (const CLI::CallForAllHelp& e) {
      return app.exit(e, out, err);
    } catch (const CLI::ParseError& e) {
      err << "svcca-inspect: " << first_line(e.what()) << " (see svcca-inspect --help)\n";
      return kExitUsage;
    }
    line.json = line.json || format == "json";
    const CLI::App* sub = *layers     ? layers
                          : *grid     ? grid
                          : *compare  ? compare
                          : *dynamics ? dynamics
                                      : tap;
    line.command = sub->get_name();
    // Every value that CLI11 may have taken from the next option.
    for (const CLI::Option* opt : sub->get_options()) {
      if (!opt->nonpositional() || opt->get_type_size() == 0 || opt->count() == 0) continue;
      for (const std::string& v : opt->results())
        check_not_an_option(&app, sub, opt->get_name(), v);
    }
    if (line.command == "layers") {
      check_name("MODEL", line.layers.model, "a model file");
      finish_input(line.layers.input, layers_in);
      line.layers.has_input = layers_in.file->count() > 0 || layers_in.shape->count() > 0;
    } else if (line.command == "grid") {
      GridRequest& r = line.grid;
      for (const std::string& m : r.models) check_name("MODEL", m, "a model file");
      finish_input(r.input, grid_in);
      r.layers = split_list("--layers", grid_run.layers, grid_run.layers_opt);
      r.run.exclude = split_list("--exclude", grid_run.exclude, grid_run.exclude_opt);
      r.batch_size = finish_batch(grid_run.batch_opt, grid_run.batch_text);
      if (!grid_run.memory.empty()) r.run.memory_bytes = parse_memory("--memory", grid_run.memory);
      check_required(grid_run.out_opt, "--out");
      check_name("--out", grid_out, "a folder");
      finish_cca_options(r.run.cca, grid_rtol, grid_dims);
      check_request_options("grid", r.measure, r.conv, r.batch_size);
      line.out_dir = grid_out;
      line.strict = grid_strict;
    } else if (line.command == "compare") {
      CompareRequest& r = line.compare;
      check_name("A", r.a, "a file");
      check_name("B", r.b, "a file");
      r.layers = split_list("--layers", compare_raw.layers, compare_raw.layers_opt);
      r.neurons_first = layout == "neurons-first";
      if (compare_raw.out_opt->count() > 0) check_name("--out", compare_out, "a folder");
      r.inference.seed = parse_seed("--seed", compare_seed);
      finish_cca_options(r.cca, compare_rtol, compare_dims);
      check_request_options("compare", r.measure, r.conv, 0);
      line.out_dir = compare_out;
    } else if (line.command == "dynamics") {
      DynamicsRequest& r = line.dynamics;
      for (const std::string& m : r.checkpoints) check_name("CHECKPOINTS", m, "a model file");
      finish_input(r.input, dyn_in);
      r.layers = split_list("--layers", dyn_run.layers, dyn_run.layers_opt);
      r.run.exclude = split_list("--exclude", dyn_run.exclude, dyn_run.exclude_opt);
      r.batch_size = finish_batch(dyn_run.batch_opt, dyn_run.batch_text);
      if (!dyn_run.memory.empty()) r.run.memory_bytes = parse_memory("--memory", dyn_run.memory);
      check_required(dyn_run.out_opt, "--out");
      check_name("--out", dyn_out, "a folder");
      finish_cca_options(r.run.cca, dyn_rtol, dyn_dims);
      check_request_options("dynamics", r.measure, r.conv, r.batch_size);
      line.out_dir = dyn_out;
      line.strict = dyn_strict;
    } else {
      check_name("MODEL", line.tap.model, "a model file");
      check_required(tap_out, "-o");
      check_name("-o", line.tap.output, "the file to write");
    }
  } catch (const Error& e) {
    err << "svcca-inspect: " << first_line(e.what()) << "\n";
    return e.code;
  }
  return -1;
}

}  // namespace svcca::inspect
