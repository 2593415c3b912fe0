// svcca-inspect's commands as functions from a request to an InspectionReport.
#include "inspector.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "errors.h"
#include "inputs.h"
#include "svcca/capture/capture.h"
#include "svcca/inference/grid_inference.h"
#include "svcca/report/report.h"

namespace svcca::inspect {
namespace {

namespace fs = std::filesystem;

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

std::string message_of(const std::exception& e) {
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    return one_line(c10e->what_without_backtrace());
  }
  return one_line(e.what());
}

// TorchScript interpreter errors quote the serialized code before the actual error; keep the
// line that says what went wrong.
std::string model_error(const std::exception& e) {
  std::string m;
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    m = c10e->what_without_backtrace();
  } else {
    m = e.what();
  }
  const size_t at = m.rfind("RuntimeError: ");
  if (at != std::string::npos && m.find("Traceback of TorchScript") != std::string::npos) {
    m = m.substr(at + 14);
  }
  return one_line(m);
}

// "float32" whichever spelling the capture reports (c10 writes "Float").
std::string dtype_name(const std::string& name) {
  static const std::map<std::string, std::string> kNames = {
      {"Float", "float32"}, {"Double", "float64"}, {"Half", "float16"}, {"BFloat16", "bfloat16"},
      {"Long", "int64"},    {"Int", "int32"},      {"Short", "int16"},  {"Char", "int8"},
      {"Byte", "uint8"},    {"Bool", "bool"}};
  const auto it = kNames.find(name);
  return it == kNames.end() ? name : it->second;
}

std::string stem(const std::string& path) {
  return fs::path(path).stem().string();
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

TappedModule load_model(const std::string& path) {
  // A missing file, a folder, a link loop, /dev/zero or a FIFO, each with its own message.
  check_regular_file(path, "model file");
  try {
    return TappedModule::load(path);
  } catch (const std::exception& e) {
    std::string m = message_of(e);
    // The CLI names files and options, not the C++ function that read them.
    const std::string prefix = "TappedModule::load: ";
    if (m.rfind(prefix, 0) == 0) m = m.substr(prefix.size());
    if (m.find(path) == std::string::npos) m = quoted(path) + ": " + m;
    throw InputError(m);
  }
}

std::vector<std::string> select_layers(const TappedModule& model, const std::string& path,
                                       const std::vector<std::string>& patterns) {
  try {
    return model.select(patterns);
  } catch (const std::exception& e) {
    throw UsageError("--layers for " + quoted(path) + ": " + message_of(e));
  }
}

void apply_cca_spec(GridOptions& o, const CcaSpec& spec) {
  for (CcaOptions* c : {&o.cca, &o.svcca.cca, &o.pwcca.cca}) {
    c->rank_rtol = spec.rank_rtol;
    c->allow_forced_correlations = spec.allow_forced_correlations;
  }
  if (spec.svcca_dims) o.svcca.dims = *spec.svcca_dims;
}

GridOptions grid_options(const char* fn, const std::string& measure, const std::string& conv) {
  GridOptions o;
  try {
    o.measure = parse_grid_measure(fn, "--measure", measure);
    o.conv = parse_grid_conv(fn, "--conv", conv);
  } catch (const std::exception& e) {
    throw UsageError(message_of(e));
  }
  // Checked here, before any model runs (the grid itself finds it only after the forward).
  if (o.conv == GridConv::kFourier && o.measure != GridMeasure::kCca) {
    throw UsageError(std::string(fn) +
                     ": --conv fourier goes with --measure cca only (the mean Fourier CCA over "
                     "spatial frequencies), but got --measure " +
                     to_string(o.measure));
  }
  return o;
}

// The conv a grid will use ("flatten", "pool", "fold", ...), auto resolved by the measure.
std::string resolve_conv_name(const GridOptions& o) {
  return to_string(resolved_conv(o));
}

InputSource make_input(const char* fn, const InputSpec& spec) {
  if (!spec.file.empty()) return InputSource::from_file(spec.file);
  if (spec.shape.empty()) {
    throw UsageError(std::string(fn) +
                     ": the examples must be given with --input FILE or --input-shape N,...");
  }
  return InputSource::random(spec.shape, spec.seed);
}

// Floating inputs take the model's dtype (a float64 .npy into a float32 model); the model
// itself rejects other dtypes, with its own message.
at::Tensor to_model_dtype(const TappedModule& model, at::Tensor x) {
  if (!x.is_floating_point()) return x;
  for (const at::Tensor& p : model.module().parameters()) {
    if (p.is_floating_point())
      return p.scalar_type() == x.scalar_type() ? x : x.to(p.scalar_type());
  }
  return x;
}

std::string batch_text(int64_t start, int64_t count, int64_t n) {
  return "examples " + std::to_string(start + 1) + "-" + std::to_string(start + count) + " of " +
         std::to_string(n);
}

// Runs `model` on one batch and keeps every record of the selected layers that is a floating
// tensor (integer outputs such as argmax are no activations to compare), one per call: a module
// called k times gives "name#1" ... "name#k".
NamedActivations capture(const TappedModule& model, const std::string& path,
                         const std::vector<std::string>& layers, const at::Tensor& batch,
                         const InputSource& input) {
  Capture cap;
  const at::Tensor x = to_model_dtype(model, batch);
  try {
    at::NoGradGuard no_grad;
    cap = model.run({x}, layers);
  } catch (const std::exception& e) {
    throw InputError(quoted(path) + " rejected the input (" + input.description() + ", shape " +
                     shape_string(input.shape()) + ": a batch of shape " + shape_string(x.sizes()) +
                     ", dtype " + dtype_name(c10::toString(x.scalar_type())) +
                     "): " + model_error(e));
  }
  NamedActivations out;
  for (auto& [name, value] : cap.per_call_values()) {
    if (value.defined() && value.is_floating_point() && value.dim() >= 1)
      out.emplace_back(name, value);
  }
  if (out.empty()) {
    throw InputError(
        quoted(path) +
        ": none of the selected layers produced a floating-point tensor for this input");
  }
  return out;
}

bool glob_match(const std::string& pattern, const std::string& name) {
  // fnmatch without FNM_PATHNAME: '*' also crosses dots, as TappedModule::select's globs.
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

// "1.50 GiB" or "300 MiB".
std::string gib(double bytes) {
  char buf[32];
  if (bytes >= 1073741824.0) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / 1073741824.0);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f MiB", std::ceil(bytes / 1048576.0));
  }
  return buf;
}

// One record of a model (a layer's output at one call) as the grid will see it.
struct PlannedLayer {
  std::string name;            // record name ("layer1.0.conv1", "blk#2", "out:0")
  std::string module;          // the module path select() knows
  std::vector<int64_t> shape;  // per example (dim 0 dropped)
  at::ScalarType dtype = at::kFloat;
  int64_t bytes_per_example = 0;       // what the grid holds per example (after pooling)
  int64_t full_bytes_per_example = 0;  // what the capture records per example
  std::string undefined;  // why its cells will be null (not one row per example), else empty
};

// Which records a model gives for the selected layers, from a forward on the first examples.
// Under conv pool / cls every captured chunk is reduced per example at once (grid.h:
// per_example_features), so the grid holds [n, c] per layer.
std::vector<PlannedLayer> discover(const TappedModule& model, const std::string& path,
                                   const std::vector<std::string>& modules, const RunSpec& run,
                                   const InputSource& input, const GridOptions& options) {
  const int64_t probe = std::min<int64_t>(2, input.n());
  const NamedActivations acts = capture(model, path, modules, input.batch(0, probe), input);
  std::vector<PlannedLayer> out;
  for (const auto& [name, t] : acts) {
    bool excluded = false;
    for (const auto& pattern : run.exclude) excluded = excluded || glob_match(pattern, name);
    if (excluded) continue;
    PlannedLayer l;
    l.name = name;
    l.module = name.substr(0, name.find_first_of("#:"));
    l.dtype = t.scalar_type();
    if (t.dim() < 2 || t.size(0) != probe) {
      l.undefined = "layer \"" + name + "\" does not give one row per example (output shape " +
                    shape_string(t.sizes()) + " for a batch of " + std::to_string(probe) +
                    "), so it cannot be compared";
    } else {
      l.full_bytes_per_example = (t.numel() / probe) * static_cast<int64_t>(t.element_size());
      const at::Tensor r = per_example_features(t, options);
      l.shape.assign(r.sizes().begin() + 1, r.sizes().end());
      l.bytes_per_example = (r.numel() / probe) * static_cast<int64_t>(r.element_size());
    }
    out.push_back(std::move(l));
  }
  if (out.empty()) {
    throw UsageError("--exclude leaves no layer of " + quoted(path) + " (" +
                     join(run.exclude, ",") + ")");
  }
  return out;
}

int64_t parameter_bytes(const TappedModule& model) {
  int64_t b = 0;
  for (const at::Tensor& p : model.module().parameters()) b += p.numel() * p.element_size();
  for (const at::Tensor& p : model.module().buffers()) b += p.numel() * p.element_size();
  return b;
}

// Bytes the layers' factors will hold, generously: 16 n min(n, p) each (the factor, and the work
// of reducing it).
double factor_estimate(const std::vector<PlannedLayer>& layers, int64_t n) {
  double bytes = 0.0;
  for (const auto& l : layers) {
    const double p = static_cast<double>(l.bytes_per_example) / 4.0;
    bytes += 16.0 * static_cast<double>(n) * std::min(static_cast<double>(n), p);
  }
  return bytes;
}

// What a pass plan costs and holds.
struct PassPlan {
  std::vector<std::vector<size_t>> groups;  // indices into the layers, one group per pass
  std::vector<int64_t> chunks;              // examples per forward, per pass
  int64_t chunk = 1;                        // the smallest of them
  int64_t budget = 0;
};

// Groups the layers (in order) into passes whose activations for all n examples fit the budget
// beside the model, the factors (8 n min(n, p) per layer, twice for the work of reducing it) and
// the forward's own working memory (`chunk` examples through the model, estimated as 4 times the
// largest activation per example). `copies`: how many models' groups are held at once. Throws
// UsageError when one layer alone cannot fit.
PassPlan plan_passes(const std::vector<PlannedLayer>& layers, int64_t n, int64_t budget,
                     int64_t fixed_bytes, int copies, const std::string& what) {
  PassPlan plan;
  plan.budget = budget;
  // The forward of one chunk holds the chunk's records of the pass in full (before any pooling)
  // and the model's own intermediate values (estimated as 4 x its largest activation).
  int64_t largest = 1, records = 0;
  for (const auto& l : layers) {
    largest = std::max(largest, l.full_bytes_per_example);
    records += l.full_bytes_per_example;
  }
  const double factors = factor_estimate(layers, n);
  // The forward: an eighth of the budget (or one example, if that is more), each pass with as
  // many examples as its own records allow there, at most 64.
  const int64_t forward_bytes = std::max(budget / 8, records + 4 * largest);
  auto chunk_for = [&](int64_t pass_records) {
    return std::clamp<int64_t>(forward_bytes / (pass_records + 4 * largest), 1,
                               std::min<int64_t>(64, n));
  };
  const double forward = static_cast<double>(forward_bytes);
  const double reduce = static_cast<double>(std::max<int64_t>(detail::kGramBlockBytes, 8 * n * n));
  const double overhead = static_cast<double>(fixed_bytes) + factors + forward + reduce;
  const double avail = (static_cast<double>(budget) - overhead) / copies;
  std::vector<size_t> group;
  double held = 0.0;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].undefined.empty()) continue;
    const double bytes = static_cast<double>(layers[i].bytes_per_example) * static_cast<double>(n);
    if (bytes > avail) {
      const double suggested =
          std::max((overhead - forward + bytes * copies) * 8.0 / 7.0, overhead + bytes * copies) *
          1.05;
      // A suggestion beyond the machine's memory is no suggestion: then only fewer examples (or
      // a smaller layer) help.
      const int64_t machine = total_memory_bytes();
      const bool beyond = machine > 0 && suggested > static_cast<double>(machine);
      throw UsageError("--memory " + gib(static_cast<double>(budget)) + " is too small for " +
                       what + ": layer '" + layers[i].name + "' needs " + gib(bytes * copies) +
                       " for " + std::to_string(n) + " examples, beside " + gib(overhead) +
                       " for the models' weights, the factors and the forward; " +
                       (beyond ? "that is more than this machine's " +
                                     gib(static_cast<double>(machine)) +
                                     " of memory: give fewer examples, --conv pool, or leave it "
                                     "out with --exclude"
                               : "give --memory " + gib(suggested) +
                                     " or more, fewer examples, --conv pool, or leave it out "
                                     "with --exclude"));
    }
    if (!group.empty() && held + bytes > avail) {
      plan.groups.push_back(group);
      group.clear();
      held = 0.0;
    }
    group.push_back(i);
    held += bytes;
  }
  if (!group.empty()) plan.groups.push_back(group);
  plan.chunk = std::min<int64_t>(64, n);
  for (const auto& g : plan.groups) {
    int64_t pass_records = 0;
    for (size_t i : g) pass_records += layers[i].full_bytes_per_example;
    plan.chunks.push_back(chunk_for(pass_records));
    plan.chunk = std::min(plan.chunk, plan.chunks.back());
  }
  return plan;
}

// Runs `model` over all n examples in chunks, recording the layers of `group` into one [n, ...]
// buffer each (allocated once; the records of a chunk are copied in and dropped).
std::vector<at::Tensor> capture_group(const TappedModule& model, const std::string& path,
                                      std::vector<PlannedLayer>& layers,
                                      const std::vector<size_t>& group, const InputSource& input,
                                      int64_t chunk, const std::string& pass_text,
                                      const Progress& progress, const GridOptions& options) {
  const int64_t n = input.n();
  std::vector<std::string> modules;
  for (size_t i : group) {
    if (std::find(modules.begin(), modules.end(), layers[i].module) == modules.end())
      modules.push_back(layers[i].module);
  }
  std::vector<at::Tensor> buffers(group.size());
  for (size_t g = 0; g < group.size(); ++g) {
    std::vector<int64_t> shape{n};
    shape.insert(shape.end(), layers[group[g]].shape.begin(), layers[group[g]].shape.end());
    buffers[g] = at::empty(shape, at::TensorOptions().dtype(layers[group[g]].dtype));
  }
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t count = std::min(chunk, n - start);
    if (progress) progress(pass_text + batch_text(start, count, n));
    const NamedActivations acts = capture(model, path, modules, input.batch(start, count), input);
    for (size_t g = 0; g < group.size(); ++g) {
      PlannedLayer& l = layers[group[g]];
      if (!l.undefined.empty()) continue;
      auto it =
          std::find_if(acts.begin(), acts.end(), [&](const auto& a) { return a.first == l.name; });
      std::vector<int64_t> want{count};
      want.insert(want.end(), l.shape.begin(), l.shape.end());
      at::Tensor value;
      if (it != acts.end() && it->second.dim() >= 1 && it->second.size(0) == count)
        value = per_example_features(it->second, options);
      if (!value.defined() || value.sizes() != at::IntArrayRef(want)) {
        l.undefined = "layer \"" + l.name + "\" " +
                      (it == acts.end() ? std::string("was not recorded for ")
                                        : "changed its output shape to " +
                                              shape_string(it->second.sizes()) + " for ") +
                      batch_text(start, count, n) + " (it gave " +
                      shape_string(buffers[g].sizes().slice(1)) + " per example before)";
        buffers[g] = at::Tensor();
        continue;
      }
      buffers[g].narrow(0, start, count).copy_(value);
    }
  }
  model.release_buffers();
  return buffers;
}

int64_t effective_batch(const char* fn, int64_t batch_size, int64_t n) {
  if (batch_size < 0) {
    throw UsageError(std::string(fn) + ": --batch-size must be at least 1, but got " +
                     std::to_string(batch_size));
  }
  return batch_size == 0 ? n : std::min(batch_size, n);
}

std::unique_ptr<GridAccumulator> make_accumulator(const char* fn, std::vector<std::string> rows,
                                                  std::vector<std::string> cols,
                                                  const GridOptions& options) {
  if (resolved_conv(options) == GridConv::kFourier) {
    throw UsageError(std::string(fn) +
                     ": --batch-size cannot be used with --conv fourier (Fourier CCA needs every "
                     "example at once); leave out --batch-size");
  }
  try {
    return std::make_unique<GridAccumulator>(std::move(rows), std::move(cols), options);
  } catch (const std::exception& e) {
    // Construction fails only on options: a measure that needs every example at once (rbf-cka).
    // The grid's message names its C++ class and arguments; the CLI names its own options.
    throw UsageError(std::string(fn) + ": --batch-size cannot be used with --measure " +
                     to_string(options.measure) +
                     " (it needs every example at once); leave out --batch-size to use every "
                     "example in one batch, or use --measure minibatch-cka, a minibatch estimator "
                     "that streams");
  }
}

}  // namespace

void check_request_options(const char* fn, const std::string& measure, const std::string& conv,
                           int64_t batch_size) {
  const GridOptions o = grid_options(fn, measure, conv);
  if (std::string(fn) == "dynamics" && resolved_conv(o) == GridConv::kFourier) {
    throw UsageError(
        "dynamics: --conv fourier is not supported here (it needs every layer at "
        "once); use grid with two checkpoints");
  }
  if (batch_size > 0) make_accumulator(fn, {"x"}, {"x"}, o);
}

namespace {

std::string patterns_text(const std::vector<std::string>& patterns) {
  return patterns.empty() ? "all" : join(patterns, ",");
}

// The report of a command that ran models over an input: the grid, with the input, batch size
// and layer patterns recorded among its options.
InspectionReport model_grid_report(const char* command, const std::vector<std::string>& models,
                                   const InputSource& input, int64_t n, int64_t b,
                                   const std::vector<std::string>& layers, Grid grid) {
  grid.options["input"] = input.description();
  grid.options["batch_size"] = std::to_string(b);
  grid.options["layers"] = patterns_text(layers);
  InspectionReport report;
  report.command = command;
  report.models = models;
  report.input = input.description();
  report.examples = n;
  report.has_grid = true;
  report.grid = std::move(grid);
  return report;
}

}  // namespace

namespace {

// `layers` runs one forward over every example. Its memory is estimated from a forward on two
// examples (the input, and twice the largest layer output beside it), so that a request far
// beyond the machine is refused with what it would need instead of being killed by the kernel.
void check_layers_memory(const TappedModule& model, const LayersRequest& request,
                         const InputSource& input) {
  std::vector<LayerInfo> probe;
  try {
    probe = model.list_layers({to_model_dtype(model, input.batch(0, 2))});
  } catch (const std::exception&) {
    return;  // the full run reports the model's own message
  }
  double largest = 0.0;
  std::string largest_name;
  for (const LayerInfo& info : probe) {
    if (info.shape.empty() || info.shape[0] != 2) continue;
    double items = 1.0;
    for (size_t i = 1; i < info.shape.size(); ++i) items *= static_cast<double>(info.shape[i]);
    const double bytes = items * (info.dtype == "float64" || info.dtype == "int64" ? 8.0 : 4.0);
    if (bytes > largest) largest = bytes, largest_name = info.name;
  }
  const double n = static_cast<double>(input.n());
  const double in_bytes = n * static_cast<double>(input.row_bytes());
  const double need = 2.0 * in_bytes + 2.0 * n * largest;
  const int64_t available = available_memory_bytes();
  if (available < 0 || need <= static_cast<double>(available)) return;
  const bool random = request.input.file.empty();
  std::vector<int64_t> few = input.shape();
  few[0] = 2;
  throw Error(
      random ? kExitUsage : kExitInput,
      "layers: one forward over all " + std::to_string(input.n()) + " examples of " +
          (random ? "--input-shape " + shape_string(input.shape()) : quoted(request.input.file)) +
          " needs about " + size_text(need) + " of memory (the input " + size_text(in_bytes) +
          (largest_name.empty() ? std::string()
                                : ", layer '" + largest_name + "' " + size_text(n * largest)) +
          "), but only " + size_text(static_cast<double>(available)) +
          " is available; layers needs only a few examples (e.g. --input-shape " +
          join(
              [&] {
                std::vector<std::string> parts;
                for (int64_t d : few) parts.push_back(std::to_string(d));
                return parts;
              }(),
              ",") +
          ")");
}

}  // namespace

InspectionReport inspect_layers(const LayersRequest& request) {
  InspectionReport report;
  report.command = "layers";
  report.models = {request.model};
  TappedModule model = load_model(request.model);
  if (!request.has_input) {
    for (const std::string& name : model.layer_names()) {
      report.layers.push_back({name, model.layer_type(name), {}, "", 0});
    }
    return report;
  }
  const InputSource input = make_input("layers", request.input);
  report.input = input.description();
  report.examples = input.n();
  if (input.n() > 2) check_layers_memory(model, request, input);
  const at::Tensor x = to_model_dtype(model, input.batch(0, input.n()));
  std::vector<LayerInfo> infos;
  try {
    infos = model.list_layers({x});
  } catch (const std::exception& e) {
    throw InputError(quoted(request.model) + " rejected the input (" + input.description() +
                     ": shape " + shape_string(x.sizes()) + ", dtype " +
                     dtype_name(c10::toString(x.scalar_type())) + "): " + model_error(e));
  }
  // One row per call, named as grid names them ("name#k" for a module called k > 1 times; the
  // shape is the first call's).
  for (const LayerInfo& info : infos) {
    for (int64_t k = 1; k <= std::max<int64_t>(info.calls, 1); ++k) {
      const std::string name = info.calls > 1 ? info.name + "#" + std::to_string(k) : info.name;
      report.layers.push_back({name, info.type, info.shape, dtype_name(info.dtype), info.calls});
    }
  }
  return report;
}

namespace {

// Batch boundaries for streaming: batches of b, except that a last batch too small for the
// measure (minibatch-cka needs >= 4 rows) joins the one before it.
std::vector<std::pair<int64_t, int64_t>> batch_bounds(int64_t n, int64_t b, int64_t min_rows) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t start = 0; start < n; start += b) out.push_back({start, std::min(b, n - start)});
  if (out.size() > 1 && out.back().second < min_rows) {
    out[out.size() - 2].second += out.back().second;
    out.pop_back();
  }
  return out;
}

// The first batch of a streaming accumulator is where a layer too wide for the exact state is
// found (grid.h): that is a usage error (the user picks the measure and the batching).
template <class F>
void first_update(F&& update) {
  try {
    update();
  } catch (const c10::ValueError& e) {
    const std::string m = message_of(e);
    if (m.find("memory budget") != std::string::npos) throw UsageError("--batch-size: " + m);
    throw;
  }
}

struct Models {
  std::vector<TappedModule> models;
  std::vector<std::vector<std::string>> modules;  // selected module paths per model
  std::vector<std::unique_ptr<EvalMode>> eval;    // eval mode while the command runs
};

Models load_models(const std::vector<std::string>& paths, const RunSpec& run) {
  Models m;
  for (const std::string& path : paths) {
    m.models.push_back(load_model(path));
    m.modules.push_back(select_layers(m.models.back(), path, run.layers));
  }
  if (!run.train_mode) {
    for (const auto& model : m.models) m.eval.push_back(std::make_unique<EvalMode>(model.module()));
  }
  return m;
}

int64_t budget_of(const RunSpec& run) {
  return run.memory_bytes > 0 ? run.memory_bytes : default_memory_budget();
}

void record_run_options(Grid& grid, const RunSpec& run, int64_t budget, int64_t passes,
                        int64_t chunk) {
  grid.options["memory_budget"] = std::to_string(budget);
  grid.options["passes"] = std::to_string(passes);
  if (chunk > 0) grid.options["forward_batch"] = std::to_string(chunk);
  grid.options["peak_memory"] = std::to_string(peak_rss_bytes());
  grid.options["mode"] = run.train_mode ? "train (as saved)" : "eval";
  if (!run.exclude.empty()) grid.options["exclude"] = join(run.exclude, ",");
}

// The largest h x w of the 4-D (per example 3-D) layers, for conv fold (NCHW or NHWC).
std::pair<int64_t, int64_t> planned_fold_size(const std::vector<std::vector<PlannedLayer>>& all,
                                              const GridOptions& o) {
  int64_t h = 0, w = 0;
  for (const auto& layers : all) {
    for (const auto& l : layers) {
      if (l.shape.size() != 3) continue;
      const bool nhwc = o.recipe.layout == ConvLayout::kNHWC;
      h = std::max(h, nhwc ? l.shape[0] : l.shape[1]);
      w = std::max(w, nhwc ? l.shape[1] : l.shape[2]);
    }
  }
  return {h, w};
}

}  // namespace

namespace {

// What grid and dynamics share before any model runs: options (checked now, so that an option
// that cannot work fails before the forward), the budget, the input and the batch size.
struct Setup {
  GridOptions options;
  RunSpec run;
  int64_t budget = 0;
  InputSource input;
  int64_t batch = 0;
};

Setup make_setup(const char* fn, const std::string& measure, const std::string& conv,
                 const std::vector<std::string>& layers, const RunSpec& run_spec,
                 const InputSpec& input_spec, int64_t batch_size) {
  Setup s{grid_options(fn, measure, conv), run_spec, 0, make_input(fn, input_spec), 0};
  apply_cca_spec(s.options, run_spec.cca);
  s.run.layers = layers;
  s.budget = budget_of(s.run);
  s.options.memory_bytes = s.budget;
  s.batch = effective_batch(fn, batch_size, s.input.n());
  // Options that cannot stream fail now (a two-model accumulator, as both commands stream).
  if (s.batch < s.input.n()) make_accumulator(fn, {"x"}, {"x"}, s.options);
  return s;
}

}  // namespace

namespace {

std::string num_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// The grid inference options of `spec`, checked as usage errors (exit 2) before any work; and the
// conv / streaming restrictions of grid inference.
GridInferenceOptions inference_options(const char* fn, const InferenceSpec& spec,
                                       const GridOptions& options, bool streaming) {
  if (spec.bootstrap < 0) {
    throw UsageError(std::string(fn) + ": --bootstrap must be >= 2 (0: off), but got " +
                     std::to_string(spec.bootstrap));
  }
  if (spec.permutations < 0) {
    throw UsageError(std::string(fn) + ": --permutations must be >= 1 (0: off), but got " +
                     std::to_string(spec.permutations));
  }
  if (spec.workers < 0) {
    throw UsageError(std::string(fn) + ": --workers must be >= 0 (0: auto, 1: one at a time), " +
                     "but got " + std::to_string(spec.workers));
  }
  if (!(spec.ci > 0.0 && spec.ci < 1.0)) {
    throw UsageError(std::string(fn) + ": --ci must lie in (0, 1), e.g. 0.95, but got " +
                     num_text(spec.ci));
  }
  GridInferenceOptions o;
  o.resamples = spec.bootstrap;
  o.permutations = spec.permutations;
  o.workers = spec.workers;
  o.level = spec.ci;
  o.seed = spec.seed;
  try {
    o.method = parse_interval_method(fn, "--ci-method", spec.ci_method);
    InferenceGridBuilder check({"x"}, {}, options, o);
  } catch (const c10::Error& e) {
    throw UsageError("--bootstrap / --permutations: " + message_of(e));
  }
  if (streaming) {
    throw UsageError(std::string(fn) +
                     ": --bootstrap and --permutations resample all examples at once; leave out "
                     "--batch-size");
  }
  return o;
}

void record_inference(Grid& grid, const InferenceSpec& spec) {
  if (!spec.on()) return;
  grid.options["bootstrap"] = std::to_string(spec.bootstrap);
  grid.options["permutations"] = std::to_string(spec.permutations);
  grid.options["ci"] = num_text(spec.ci);
  grid.options["ci_method"] = spec.ci_method;
  grid.options["seed"] = std::to_string(spec.seed);
}

}  // namespace

InspectionReport inspect_grid(const GridRequest& request, const Progress& progress) {
  TORCH_INTERNAL_ASSERT(request.models.size() == 1 || request.models.size() == 2);
  const Setup setup = make_setup("grid", request.measure, request.conv, request.layers, request.run,
                                 request.input, request.batch_size);
  GridOptions options = setup.options;
  const RunSpec& run = setup.run;
  const int64_t budget = setup.budget;
  const InputSource& input = setup.input;
  const int64_t n = input.n();
  const int64_t b = setup.batch;
  InferenceSpec spec = request.inference;
  spec.seed = request.input.seed;
  std::optional<GridInferenceOptions> infer;
  if (spec.on()) infer = inference_options("grid", spec, options, b < n);
  Models m = load_models(request.models, run);
  const size_t n_models = m.models.size();

  std::vector<std::vector<PlannedLayer>> planned;
  for (size_t i = 0; i < n_models; ++i) {
    if (progress) progress("grid: finding the layers of " + request.models[i]);
    planned.push_back(discover(m.models[i], request.models[i], m.modules[i], run, input, options));
  }
  std::vector<std::vector<std::string>> names(2);
  for (size_t i = 0; i < n_models; ++i) {
    for (const auto& l : planned[i]) names[i].push_back(l.name);
  }

  Grid grid;
  int64_t passes = 0, chunk = 0;
  if (b < n) {
    // Streaming: every selected layer of each batch into the accumulator.
    const auto bounds = batch_bounds(n, b, options.measure == GridMeasure::kMinibatchCka ? 4 : 1);
    std::vector<std::vector<std::string>> kept(2);
    std::vector<std::string> skipped;
    for (size_t i = 0; i < n_models; ++i) {
      for (const auto& l : planned[i]) {
        (l.undefined.empty() ? kept[i] : skipped).push_back(l.name);
      }
    }
    auto acc = make_accumulator("grid", kept[0], kept[1], options);
    for (const auto& [start, count] : bounds) {
      if (progress)
        progress("grid: running the model" + std::string(n_models > 1 ? "s" : "") + " on " +
                 batch_text(start, count, n));
      const at::Tensor x = input.batch(start, count);
      std::vector<NamedActivations> acts(2);
      for (size_t i = 0; i < n_models; ++i) {
        for (auto& [name, t] : capture(m.models[i], request.models[i], m.modules[i], x, input)) {
          if (std::find(kept[i].begin(), kept[i].end(), name) != kept[i].end())
            acts[i].emplace_back(name, t);
        }
      }
      if (start == 0) {
        first_update([&] { acc->update(acts[0], acts[1]); });
      } else {
        acc->update(acts[0], acts[1]);
      }
    }
    if (progress) progress("grid: computing " + to_string(options.measure));
    grid = acc->result();
    passes = static_cast<int64_t>(bounds.size());
    if (!skipped.empty()) grid.options["skipped_layers"] = join(skipped, ",");
  } else if (resolve_conv_name(options) == "fourier") {
    // Fourier CCA needs every layer at once: one pass that must fit the budget.
    std::vector<NamedActivations> acts(2);
    for (size_t i = 0; i < n_models; ++i) {
      PassPlan plan =
          plan_passes(planned[i], n, budget, parameter_bytes(m.models[i]), 1, "conv fourier");
      if (plan.groups.size() > 1) {
        throw UsageError("--conv fourier needs every layer at once, but the selected layers of " +
                         quoted(request.models[i]) + " need " + std::to_string(plan.groups.size()) +
                         " passes within --memory " + gib(static_cast<double>(budget)) +
                         "; select fewer layers with --layers or --exclude, or give more memory");
      }
      std::vector<size_t> all;
      for (const auto& g : plan.groups) all.insert(all.end(), g.begin(), g.end());
      auto buffers = capture_group(m.models[i], request.models[i], planned[i], all, input,
                                   plan.chunk, "grid: ", progress, options);
      for (size_t g = 0; g < all.size(); ++g) {
        if (buffers[g].defined()) acts[i].emplace_back(planned[i][all[g]].name, buffers[g]);
      }
      passes += 1;
      chunk = plan.chunk;
    }
    if (progress) progress("grid: computing " + to_string(options.measure));
    grid = n_models == 1 ? similarity_grid(acts[0], options)
                         : similarity_grid(acts[0], acts[1], options);
  } else {
    // Exact: each model in passes of layers that fit the budget; each layer reduced to its
    // factor as soon as its pass is done, then released.
    GridBuilder builder(names[0], names[1], options);
    std::optional<InferenceGridBuilder> inference;
    if (infer) inference.emplace(names[0], names[1], options, *infer);
    if (resolve_conv_name(options) == "fold") {
      const auto hw = planned_fold_size(planned, options);
      if (hw.first > 0) builder.set_fold_size(hw.first, hw.second);
    }
    int64_t fixed = 0;
    for (const auto& model : m.models) fixed += parameter_bytes(model);
    std::vector<PassPlan> plans;
    int64_t total_passes = 0;
    for (size_t i = 0; i < n_models; ++i) {
      // The other model's factors are held too (before or after this model's passes).
      const double others = n_models == 2 ? factor_estimate(planned[1 - i], n) : 0.0;
      plans.push_back(plan_passes(planned[i], n, budget, fixed + static_cast<int64_t>(others), 1,
                                  "the grid of " + quoted(request.models[i])));
      total_passes += static_cast<int64_t>(plans.back().groups.size());
    }
    int64_t pass = 0, reduced = 0;
    const size_t n_layers = names[0].size() + names[1].size();
    for (size_t i = 0; i < n_models; ++i) {
      const bool col = i == 1;
      for (const auto& l : planned[i]) {
        if (!l.undefined.empty()) builder.add_undefined(l.name, l.undefined, col);
        if (!l.undefined.empty() && inference) inference->add_undefined(l.name, l.undefined, col);
      }
      for (size_t gi = 0; gi < plans[i].groups.size(); ++gi) {
        const auto& group = plans[i].groups[gi];
        ++pass;
        const std::string pass_text = "grid: pass " + std::to_string(pass) + "/" +
                                      std::to_string(total_passes) + " (" +
                                      std::to_string(group.size()) + " layers), ";
        auto buffers = capture_group(m.models[i], request.models[i], planned[i], group, input,
                                     plans[i].chunks[gi], pass_text, progress, options);
        for (size_t g = 0; g < group.size(); ++g) {
          const PlannedLayer& l = planned[i][group[g]];
          if (progress) {
            progress("grid: pass " + std::to_string(pass) + "/" + std::to_string(total_passes) +
                     ", reducing layer " + std::to_string(++reduced) + "/" +
                     std::to_string(n_layers) + " " + l.name);
          }
          if (buffers[g].defined()) {
            builder.add(l.name, buffers[g], col);
            if (inference) inference->add(l.name, buffers[g], col);
          } else {
            builder.add_undefined(l.name, l.undefined, col);
            if (inference) inference->add_undefined(l.name, l.undefined, col);
          }
          buffers[g] = at::Tensor();  // released before the next layer is reduced
        }
      }
      chunk = plans[i].chunk;
    }
    passes = total_passes;
    if (progress) progress("grid: computing " + to_string(options.measure));
    grid = builder.result();
    if (inference) {
      if (progress) progress("grid: intervals and p-values of every cell");
      inference->apply(grid);
    }
  }

  if (n_models == 2) {
    const bool same = stem(request.models[0]) == stem(request.models[1]);
    grid.row_label = (same ? std::string("model A") : stem(request.models[0])) + " layer";
    grid.col_label = (same ? std::string("model B") : stem(request.models[1])) + " layer";
    grid.options["other_model"] = request.models[1];
  }
  grid.options["model"] = request.models[0];
  record_run_options(grid, run, budget, passes, chunk);
  record_inference(grid, spec);
  return model_grid_report("grid", request.models, input, n, b, request.layers, std::move(grid));
}

InspectionReport inspect_compare(const CompareRequest& request) {
  GridOptions options = grid_options("compare", request.measure, request.conv);
  apply_cca_spec(options, request.cca);
  std::optional<GridInferenceOptions> infer;
  if (request.inference.on())
    infer = inference_options("compare", request.inference, options, false);
  NamedTensors sets[2] = {read_tensors(request.a), read_tensors(request.b)};
  const std::string paths[2] = {request.a, request.b};

  if (!request.layers.empty()) {
    for (const std::string& pattern : request.layers) {
      bool any = false;
      for (const auto& set : sets) {
        for (const auto& [name, t] : set)
          any = any || fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
      }
      if (!any) {
        std::vector<std::string> names;
        for (const auto& set : sets) {
          for (const auto& [name, t] : set) names.push_back(name);
        }
        throw UsageError("compare: --layers pattern '" + pattern +
                         "' matches no tensor; the files hold " + join(names, ", "));
      }
    }
    for (int s = 0; s < 2; ++s) {
      NamedTensors kept;
      for (auto& [name, t] : sets[s]) {
        for (const std::string& pattern : request.layers) {
          if (fnmatch(pattern.c_str(), name.c_str(), 0) == 0) {
            kept.emplace_back(name, t);
            break;
          }
        }
      }
      if (kept.empty()) {
        throw UsageError("compare: --layers matches no tensor of " + quoted(paths[s]));
      }
      sets[s] = std::move(kept);
    }
  }

  int64_t n = -1;
  std::string n_from;
  NamedActivations acts[2];
  for (int s = 0; s < 2; ++s) {
    for (auto& [name, tensor] : sets[s]) {
      at::Tensor t = tensor;
      const std::string where = "tensor '" + name + "' of " + quoted(paths[s]);
      if (t.is_complex() || t.scalar_type() == at::kBool) {
        throw InputError(where + " must hold real numbers, but has dtype " +
                         std::string(c10::toString(t.scalar_type())));
      }
      if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) t = t.to(at::kFloat);
      if (!at::isfinite(t).all().item<bool>()) {
        // Activations with NaN or inf are a broken input file, not an undefined measure.
        const at::Tensor bad = at::logical_not(at::isfinite(t)).reshape({-1}).nonzero();
        const int64_t flat = bad.min().item<int64_t>();
        const int64_t per_row =
            t.dim() >= 1 && t.size(0) > 0 ? std::max<int64_t>(1, t.numel() / t.size(0)) : 1;
        const int64_t index =
            request.neurons_first && t.dim() == 2 ? flat % t.size(1) : flat / per_row;
        throw InputError(where + " holds NaN or infinite values (the first in " +
                         (request.neurons_first ? "datapoint " : "example ") +
                         std::to_string(index + 1) +
                         "); svcca-inspect compares finite activations");
      }
      if (request.neurons_first) {
        if (t.dim() != 2) {
          throw InputError(
              where +
              " must be 2-D [neurons, examples] with --layout neurons-first, but has shape " +
              shape_string(t.sizes()));
        }
        t = t.t().contiguous();
      }
      if (t.dim() < 2) {
        throw InputError(where +
                         " must have examples along dim 0 and features after it ([n, p] or [n, c, "
                         "h, w]), but has shape " +
                         shape_string(t.sizes()));
      }
      if (n < 0) {
        n = t.size(0), n_from = where;
      } else if (t.size(0) != n) {
        throw InputError(
            where + " has " + std::to_string(t.size(0)) + " examples (shape " +
            shape_string(t.sizes()) + "), but " + n_from + " has " + std::to_string(n) +
            (request.neurons_first ? ""
                                   : " (arrays are [examples, features]; google/svcca's [neurons, "
                                     "datapoints] needs --layout neurons-first)"));
      }
      acts[s].emplace_back(name, t);
    }
  }

  Grid grid = similarity_grid(acts[0], acts[1], options);
  if (infer) add_grid_inference(grid, acts[0], acts[1], options, *infer);
  record_inference(grid, request.inference);
  const bool same = stem(request.a) == stem(request.b);
  grid.row_label = same ? std::string("A") : stem(request.a);
  grid.col_label = same ? std::string("B") : stem(request.b);
  grid.options["a"] = request.a;
  grid.options["b"] = request.b;
  grid.options["layout"] = request.neurons_first ? "neurons-first" : "examples-first";
  grid.options["layers"] = patterns_text(request.layers);

  InspectionReport report;
  report.command = "compare";
  report.models = {request.a, request.b};
  report.examples = n;
  report.has_grid = true;
  report.grid = std::move(grid);
  return report;
}

InspectionReport inspect_dynamics(const DynamicsRequest& request, const Progress& progress) {
  const size_t t_count = request.checkpoints.size();
  if (t_count < 2) {
    throw UsageError("dynamics: CHECKPOINTS must be two or more model files, but got " +
                     std::to_string(t_count));
  }
  const Setup setup = make_setup("dynamics", request.measure, request.conv, request.layers,
                                 request.run, request.input, request.batch_size);
  const GridOptions& options = setup.options;
  const RunSpec& run = setup.run;
  const int64_t budget = setup.budget;
  const InputSource& input = setup.input;
  const int64_t n = input.n();
  const int64_t b = setup.batch;
  if (resolve_conv_name(options) == "fourier") {
    throw UsageError(
        "dynamics: --conv fourier is not supported here (it needs every layer at "
        "once); use grid with two checkpoints");
  }
  if (progress) progress("dynamics: loading " + std::to_string(t_count) + " checkpoints");
  std::vector<TappedModule> models;
  std::vector<std::unique_ptr<EvalMode>> eval;
  for (size_t t = 0; t < t_count; ++t) {
    models.push_back(load_model(request.checkpoints[t]));
    if (!run.train_mode) eval.push_back(std::make_unique<EvalMode>(models.back().module()));
  }
  const std::string& final_path = request.checkpoints.back();
  const std::vector<std::string> modules = select_layers(models.back(), final_path, run.layers);
  for (size_t t = 0; t + 1 < t_count; ++t) {
    const auto& have = models[t].layer_names();
    for (const std::string& name : modules) {
      if (std::find(have.begin(), have.end(), name) == have.end()) {
        throw InputError(quoted(request.checkpoints[t]) + " has no layer '" + name + "', which " +
                         quoted(final_path) + " has (checkpoints must share one architecture)");
      }
    }
  }
  std::vector<PlannedLayer> planned =
      discover(models.back(), final_path, modules, run, input, options);
  const size_t n_layers = planned.size();

  // Layer l at checkpoint t against layer l at the final checkpoint: a 1 x 1 grid per cell.
  std::vector<std::vector<double>> values(n_layers, std::vector<double>(t_count, NAN));
  std::vector<std::vector<std::string>> reasons(n_layers, std::vector<std::string>(t_count));
  std::map<std::string, std::string> cell_options;
  auto take = [&](size_t l, size_t t, const Grid& cell) {
    values[l][t] = cell.values[0][0].item<double>();
    if (!cell.undefined.empty()) reasons[l][t] = cell.undefined.front().reason;
    if (cell_options.empty()) cell_options = cell.options;
  };
  int64_t passes = 0, chunk = 0;
  if (b < n) {
    // Streaming: one accumulator per (checkpoint, layer).
    const auto bounds = batch_bounds(n, b, options.measure == GridMeasure::kMinibatchCka ? 4 : 1);
    std::vector<std::vector<std::unique_ptr<GridAccumulator>>> accs(t_count);
    for (const auto& [start, count] : bounds) {
      const at::Tensor x = input.batch(start, count);
      const NamedActivations final_acts = capture(models.back(), final_path, modules, x, input);
      for (size_t t = 0; t < t_count; ++t) {
        if (progress) {
          progress("dynamics: checkpoint " + std::to_string(t + 1) + "/" + std::to_string(t_count) +
                   ", " + batch_text(start, count, n));
        }
        const NamedActivations acts =
            t + 1 == t_count ? final_acts
                             : capture(models[t], request.checkpoints[t], modules, x, input);
        if (accs[t].empty()) accs[t].resize(n_layers);
        for (size_t l = 0; l < n_layers; ++l) {
          const std::string& name = planned[l].name;
          if (!planned[l].undefined.empty()) continue;
          auto find = [&](const NamedActivations& set) {
            return std::find_if(set.begin(), set.end(),
                                [&](const auto& a) { return a.first == name; });
          };
          const auto it = find(acts);
          const auto fit = find(final_acts);
          if (it == acts.end() || fit == final_acts.end()) {
            throw InputError(quoted(request.checkpoints[t]) + ": layer '" + name +
                             "' produced no floating-point tensor for this input");
          }
          if (!accs[t][l]) accs[t][l] = make_accumulator("dynamics", {name}, {name}, options);
          if (start == 0) {
            first_update([&] { accs[t][l]->update({*it}, {*fit}); });
          } else {
            accs[t][l]->update({*it}, {*fit});
          }
        }
      }
    }
    for (size_t t = 0; t < t_count; ++t) {
      for (size_t l = 0; l < n_layers; ++l) {
        if (accs[t][l]) take(l, t, accs[t][l]->result());
      }
    }
    passes = static_cast<int64_t>(bounds.size());
  } else {
    // Exact: the final checkpoint's layers in passes that fit the budget twice (the final
    // activations beside one checkpoint's), each checkpoint run once per pass.
    int64_t fixed = 0;
    for (const auto& model : models) fixed += parameter_bytes(model);
    const PassPlan plan = plan_passes(planned, n, budget, fixed, 2, "dynamics");
    chunk = plan.chunk;
    int64_t pass = 0;
    for (const auto& group : plan.groups) {
      ++pass;
      const std::string head = "dynamics: pass " + std::to_string(pass) + "/" +
                               std::to_string(plan.groups.size()) + ", ";
      auto final_buffers =
          capture_group(models.back(), final_path, planned, group, input, plan.chunk,
                        head + "final checkpoint, ", progress, options);
      for (size_t t = 0; t < t_count; ++t) {
        std::vector<PlannedLayer> mine = planned;
        std::vector<at::Tensor> buffers =
            t + 1 == t_count
                ? final_buffers
                : capture_group(models[t], request.checkpoints[t], mine, group, input, plan.chunk,
                                head + "checkpoint " + std::to_string(t + 1) + ", ", progress,
                                options);
        for (size_t g = 0; g < group.size(); ++g) {
          const size_t l = group[g];
          const std::string& name = planned[l].name;
          GridBuilder cell({name}, {name}, options);
          if (buffers[g].defined()) {
            cell.add(name, buffers[g]);
          } else {
            cell.add_undefined(name, (t + 1 == t_count ? planned[l] : mine[l]).undefined);
          }
          if (final_buffers[g].defined()) {
            cell.add(name, final_buffers[g], true);
          } else {
            cell.add_undefined(name, planned[l].undefined, true);
          }
          take(l, t, cell.result());
        }
      }
    }
    passes = static_cast<int64_t>(plan.groups.size());
  }

  Grid grid;
  std::set<std::string> seen;
  for (size_t l = 0; l < n_layers; ++l) grid.rows.push_back(planned[l].name);
  for (size_t t = 0; t < t_count; ++t) {
    std::string label = stem(request.checkpoints[t]);
    if (!seen.insert(label).second) label = std::to_string(t) + ":" + label;
    grid.cols.push_back(label);
  }
  grid.values = at::empty({static_cast<int64_t>(n_layers), static_cast<int64_t>(t_count)},
                          at::TensorOptions().dtype(at::kDouble));
  auto v = grid.values.accessor<double, 2>();
  std::map<std::string, size_t> reason_index;
  for (size_t l = 0; l < n_layers; ++l) {
    for (size_t t = 0; t < t_count; ++t) {
      std::string why = reasons[l][t];
      if (why.empty() && !planned[l].undefined.empty()) why = planned[l].undefined;
      v[l][t] = why.empty() ? values[l][t] : NAN;
      if (why.empty()) continue;
      auto it = reason_index.find(why);
      if (it == reason_index.end()) {
        it = reason_index.emplace(why, grid.undefined.size()).first;
        grid.undefined.push_back({why, {}});
      }
      grid.undefined[it->second].cells.push_back(
          {static_cast<int64_t>(l), static_cast<int64_t>(t)});
    }
  }
  grid.measure = to_string(options.measure) + "-to-final";
  grid.row_label = "layer";
  grid.col_label = "checkpoint";
  grid.examples = n;
  grid.options = cell_options;
  grid.options["checkpoints"] = join(request.checkpoints, ",");
  grid.options["final"] = final_path;
  record_run_options(grid, run, budget, passes, chunk);
  return model_grid_report("dynamics", request.checkpoints, input, n, b, request.layers,
                           std::move(grid));
}

int64_t parse_memory(const std::string& option, const std::string& text) {
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::map<std::string, double> kUnits = {{"", 1.0},
                                                       {"B", 1.0},
                                                       {"K", 1024.0},
                                                       {"KB", 1024.0},
                                                       {"KIB", 1024.0},
                                                       {"M", 1048576.0},
                                                       {"MB", 1048576.0},
                                                       {"MIB", 1048576.0},
                                                       {"G", 1073741824.0},
                                                       {"GB", 1073741824.0},
                                                       {"GIB", 1073741824.0},
                                                       {"T", 1099511627776.0},
                                                       {"TB", 1099511627776.0},
                                                       {"TIB", 1099511627776.0}};
  const auto it = kUnits.find(unit);
  if (used == 0 || it == kUnits.end() || !std::isfinite(value) || value <= 0.0 ||
      value * it->second >= 9.2e18) {
    throw UsageError(option + " must be a positive size such as 6G, 512M or 1.5GiB, but got '" +
                     text + "'");
  }
  const double bytes = value * it->second;
  if (bytes < 64.0 * 1048576.0) {
    throw UsageError(option +
                     " must be at least 64M (svcca needs room for the model's forward), "
                     "but got '" +
                     text + "'");
  }
  return static_cast<int64_t>(bytes);
}

InspectionReport inspect_tap(const TapRequest& request) {
  const std::string& out = request.output;
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (fs::is_directory(st)) {
    throw OutputError("tap: -o " + quoted(out) + " is a folder; give the file to write, e.g. " +
                      quoted((fs::path(out) / "model_tapped.pt").string()));
  }
  if (fs::exists(st) && !fs::is_regular_file(st)) {
    throw OutputError("tap: -o " + quoted(out) + " exists and is not a regular file");
  }
  TappedModule model = load_model(request.model);
  // The archive is made in memory, then written to a unique temporary file (mkstemp) beside
  // the target and renamed: an existing file is replaced whole or not at all, and no fixed
  // temporary name (X.tmp, which may be a user's file) is ever touched.
  std::ostringstream bytes;
  try {
    model.module().save(bytes);
  } catch (const std::exception& e) {
    throw OutputError("tap: cannot serialize the tapped model: " + message_of(e));
  }
  const fs::path parent = fs::path(out).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    throw OutputError("tap: cannot write " + quoted(out) + ": the folder " +
                      quoted(parent.string()) + " does not exist");
  }
  try {
    write_file_atomic(out, bytes.str());
  } catch (const std::exception& e) {
    std::string m = message_of(e);
    const std::string prefix = "write_file_atomic: ";
    if (m.rfind(prefix, 0) == 0) m = m.substr(prefix.size());
    throw OutputError("tap: cannot write " + quoted(out) + ": " + m);
  }
  InspectionReport report;
  report.command = "tap";
  report.models = {request.model};
  for (const std::string& name : model.layer_names()) {
    report.layers.push_back({name, model.layer_type(name), {}, "", 0});
  }
  report.tapped_path = request.output;
  report.tapped_method = model.method_name();
  return report;
}

}  // namespace svcca::inspect
