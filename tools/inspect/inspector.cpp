// svcca-inspect's commands as functions from a request to an InspectionReport.
#include "inspector.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "errors.h"
#include "inputs.h"
#include "svcca/capture/capture.h"

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
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(quoted(path) + ": no such file");
  if (fs::is_directory(path, ec))
    throw InputError(quoted(path) + ": is a folder, not a model file");
  try {
    return TappedModule::load(path);
  } catch (const std::exception& e) {
    std::string m = message_of(e);
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

GridOptions grid_options(const char* fn, const std::string& measure, const std::string& conv) {
  GridOptions o;
  try {
    o.measure = parse_grid_measure(fn, "--measure", measure);
    o.conv = parse_grid_conv(fn, "--conv", conv);
  } catch (const std::exception& e) {
    throw UsageError(message_of(e));
  }
  return o;
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

// Runs `model` on one batch and keeps the first output of every selected layer that is a
// floating tensor (integer outputs such as argmax are no activations to compare).
NamedActivations capture(const TappedModule& model, const std::string& path,
                         const std::vector<std::string>& layers, const at::Tensor& batch,
                         const InputSource& input) {
  Capture cap;
  const at::Tensor x = to_model_dtype(model, batch);
  try {
    cap = model.run({x}, layers);
  } catch (const std::exception& e) {
    throw InputError(quoted(path) + " rejected the input (" + input.description() +
                     ": a batch of shape " + shape_string(x.sizes()) + ", dtype " +
                     dtype_name(c10::toString(x.scalar_type())) + "): " + model_error(e));
  }
  NamedActivations out;
  for (auto& [name, value] : cap.first_values()) {
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

std::string batch_text(int64_t start, int64_t count, int64_t n) {
  return "examples " + std::to_string(start + 1) + "-" + std::to_string(start + count) + " of " +
         std::to_string(n);
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
  try {
    return std::make_unique<GridAccumulator>(std::move(rows), std::move(cols), options);
  } catch (const std::exception& e) {
    // Construction fails only on options, e.g. a measure that needs every example at once.
    throw UsageError(std::string(fn) + ": --batch-size cannot be used here: " + message_of(e) +
                     " (leave out --batch-size to use every example in one batch)");
  }
}

std::vector<std::string> names_of(const NamedActivations& acts) {
  std::vector<std::string> names;
  for (const auto& [name, t] : acts) names.push_back(name);
  return names;
}

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
  const at::Tensor x = to_model_dtype(model, input.batch(0, input.n()));
  std::vector<LayerInfo> infos;
  try {
    infos = model.list_layers({x});
  } catch (const std::exception& e) {
    throw InputError(quoted(request.model) + " rejected the input (" + input.description() +
                     ": shape " + shape_string(x.sizes()) + ", dtype " +
                     dtype_name(c10::toString(x.scalar_type())) + "): " + model_error(e));
  }
  for (const LayerInfo& info : infos) {
    report.layers.push_back({info.name, info.type, info.shape, dtype_name(info.dtype), info.calls});
  }
  return report;
}

InspectionReport inspect_grid(const GridRequest& request, const Progress& progress) {
  TORCH_INTERNAL_ASSERT(request.models.size() == 1 || request.models.size() == 2);
  const GridOptions options = grid_options("grid", request.measure, request.conv);
  std::vector<TappedModule> models;
  std::vector<std::vector<std::string>> layers;
  for (const std::string& path : request.models) {
    models.push_back(load_model(path));
    layers.push_back(select_layers(models.back(), path, request.layers));
  }
  const InputSource input = make_input("grid", request.input);
  const int64_t n = input.n();
  const int64_t b = effective_batch("grid", request.batch_size, n);

  Grid grid;
  std::unique_ptr<GridAccumulator> acc;
  for (int64_t start = 0; start < n; start += b) {
    const int64_t count = std::min(b, n - start);
    if (progress)
      progress("grid: running the model" + std::string(models.size() > 1 ? "s" : "") + " on " +
               batch_text(start, count, n));
    const at::Tensor x = input.batch(start, count);
    std::vector<NamedActivations> acts;
    for (size_t m = 0; m < models.size(); ++m) {
      acts.push_back(capture(models[m], request.models[m], layers[m], x, input));
    }
    if (b >= n) {
      if (progress) progress("grid: computing " + to_string(options.measure));
      grid = acts.size() == 1 ? similarity_grid(acts[0], options)
                              : similarity_grid(acts[0], acts[1], options);
      break;
    }
    if (!acc) {
      acc = make_accumulator("grid", names_of(acts[0]),
                             acts.size() == 2 ? names_of(acts[1]) : std::vector<std::string>{},
                             options);
    }
    acts.size() == 1 ? acc->update(acts[0]) : acc->update(acts[0], acts[1]);
  }
  if (acc) {
    if (progress) progress("grid: computing " + to_string(options.measure));
    grid = acc->result();
  }

  if (models.size() == 2) {
    const bool same = stem(request.models[0]) == stem(request.models[1]);
    grid.row_label = (same ? std::string("model A") : stem(request.models[0])) + " layer";
    grid.col_label = (same ? std::string("model B") : stem(request.models[1])) + " layer";
    grid.options["other_model"] = request.models[1];
  }
  grid.options["model"] = request.models[0];
  return model_grid_report("grid", request.models, input, n, b, request.layers, std::move(grid));
}

InspectionReport inspect_compare(const CompareRequest& request) {
  const GridOptions options = grid_options("compare", request.measure, request.conv);
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
  const GridOptions options = grid_options("dynamics", request.measure, request.conv);
  std::vector<TappedModule> models;
  for (size_t t = 0; t < t_count; ++t) {
    if (progress) progress("dynamics: loading " + request.checkpoints[t]);
    models.push_back(load_model(request.checkpoints[t]));
  }
  const std::string& final_path = request.checkpoints.back();
  const std::vector<std::string> names = select_layers(models.back(), final_path, request.layers);
  for (size_t t = 0; t + 1 < t_count; ++t) {
    const auto& have = models[t].layer_names();
    for (const std::string& name : names) {
      if (std::find(have.begin(), have.end(), name) == have.end()) {
        throw InputError(quoted(request.checkpoints[t]) + " has no layer '" + name + "', which " +
                         quoted(final_path) + " has (checkpoints must share one architecture)");
      }
    }
  }
  const InputSource input = make_input("dynamics", request.input);
  const int64_t n = input.n();
  const int64_t b = effective_batch("dynamics", request.batch_size, n);

  // Layer l at checkpoint t against layer l at the final checkpoint: a 1 x 1 grid per cell, so
  // only the diagonal of each checkpoint's layers-by-layers grid is computed.
  std::vector<std::string> layer_names;
  std::vector<std::vector<double>> values;  // [layer][checkpoint]
  std::map<std::string, std::string> cell_options;
  // Streaming: one accumulator per (checkpoint, layer).
  std::vector<std::vector<std::unique_ptr<GridAccumulator>>> accs(t_count);

  for (int64_t start = 0; start < n; start += b) {
    const int64_t count = std::min(b, n - start);
    const at::Tensor x = input.batch(start, count);
    if (progress)
      progress("dynamics: " + final_path + (b < n ? ", " + batch_text(start, count, n) : ""));
    const NamedActivations final_acts = capture(models.back(), final_path, names, x, input);
    if (layer_names.empty()) {
      layer_names = names_of(final_acts);
      values.assign(layer_names.size(), std::vector<double>(t_count, 0.0));
    }
    for (size_t t = 0; t < t_count; ++t) {
      if (progress) {
        progress("dynamics: checkpoint " + std::to_string(t + 1) + "/" + std::to_string(t_count) +
                 (b < n ? ", " + batch_text(start, count, n) : ""));
      }
      const NamedActivations acts =
          t + 1 == t_count ? final_acts
                           : capture(models[t], request.checkpoints[t], names, x, input);
      for (size_t l = 0; l < layer_names.size(); ++l) {
        const std::string& name = layer_names[l];
        const auto it =
            std::find_if(acts.begin(), acts.end(), [&](const auto& a) { return a.first == name; });
        if (it == acts.end()) {
          throw InputError(quoted(request.checkpoints[t]) + ": layer '" + name +
                           "' produced no floating-point tensor for this input");
        }
        const NamedActivations row{*it};
        const NamedActivations col{final_acts[l]};
        if (b >= n) {
          const Grid cell = similarity_grid(row, col, options);
          values[l][t] = cell.values[0][0].item<double>();
          if (cell_options.empty()) cell_options = cell.options;
        } else {
          if (accs[t].empty()) accs[t].resize(layer_names.size());
          if (!accs[t][l]) accs[t][l] = make_accumulator("dynamics", {name}, {name}, options);
          accs[t][l]->update(row, col);
        }
      }
    }
  }
  if (b < n) {
    for (size_t t = 0; t < t_count; ++t) {
      for (size_t l = 0; l < layer_names.size(); ++l) {
        const Grid cell = accs[t][l]->result();
        values[l][t] = cell.values[0][0].item<double>();
        if (cell_options.empty()) cell_options = cell.options;
      }
    }
  }

  Grid grid;
  grid.rows = layer_names;
  std::set<std::string> seen;
  for (size_t t = 0; t < t_count; ++t) {
    std::string label = stem(request.checkpoints[t]);
    if (!seen.insert(label).second) label = std::to_string(t) + ":" + label;
    grid.cols.push_back(label);
  }
  grid.values = at::empty({static_cast<int64_t>(layer_names.size()), static_cast<int64_t>(t_count)},
                          at::TensorOptions().dtype(at::kDouble));
  auto v = grid.values.accessor<double, 2>();
  for (size_t l = 0; l < layer_names.size(); ++l) {
    for (size_t t = 0; t < t_count; ++t) v[l][t] = values[l][t];
  }
  grid.measure = to_string(options.measure) + "-to-final";
  grid.row_label = "layer";
  grid.col_label = "checkpoint";
  grid.examples = n;
  grid.options = cell_options;
  grid.options["checkpoints"] = join(request.checkpoints, ",");
  grid.options["final"] = final_path;
  return model_grid_report("dynamics", request.checkpoints, input, n, b, request.layers,
                           std::move(grid));
}

InspectionReport inspect_tap(const TapRequest& request) {
  TappedModule model = load_model(request.model);
  try {
    model.save(request.output);
  } catch (const std::exception& e) {
    std::string m = message_of(e);
    if (m.find(request.output) == std::string::npos)
      m = "cannot write " + quoted(request.output) + ": " + m;
    throw OutputError(m);
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
