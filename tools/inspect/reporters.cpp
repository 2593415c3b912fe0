// Renderers of an InspectionReport: text, JSON, and grid files through svcca/report.
#include "reporters.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "errors.h"
#include "inputs.h"
#include "svcca/report/report.h"

namespace svcca::inspect {
namespace {

std::string layer_table(const InspectionReport& report) {
  const bool shapes = std::any_of(report.layers.begin(), report.layers.end(),
                                  [](const LayerRow& r) { return r.calls > 0; });
  size_t w_name = 5, w_type = 4, w_shape = 5;
  for (const LayerRow& r : report.layers) {
    w_name = std::max(w_name, r.name.size());
    w_type = std::max(w_type, r.type.size());
    w_shape = std::max(w_shape, shape_string(r.shape).size());
  }
  std::string out;
  if (shapes) {
    out += fmt::format("  {:<{}}  {:<{}}  {:<{}}  {:<8}  {}\n", "layer", w_name, "type", w_type,
                       "shape", w_shape, "dtype", "calls");
    for (const LayerRow& r : report.layers) {
      out += fmt::format("  {:<{}}  {:<{}}  {:<{}}  {:<8}  {}\n", r.name, w_name, r.type, w_type,
                         shape_string(r.shape), w_shape, r.dtype, r.calls);
    }
  } else {
    out += fmt::format("  {:<{}}  {}\n", "layer", w_name, "type");
    for (const LayerRow& r : report.layers)
      out += fmt::format("  {:<{}}  {}\n", r.name, w_name, r.type);
  }
  return out;
}

// The numbers themselves, when the grid is small enough to read as a table.
std::string number_table(const Grid& grid) {
  size_t w_row = grid.row_label.size();
  for (const std::string& r : grid.rows) w_row = std::max(w_row, r.size());
  std::vector<size_t> w_col;
  for (const std::string& c : grid.cols) w_col.push_back(std::max<size_t>(7, c.size()));
  std::string out = fmt::format("  {:<{}}", grid.row_label, w_row);
  for (size_t j = 0; j < grid.cols.size(); ++j)
    out += fmt::format("  {:>{}}", grid.cols[j], w_col[j]);
  out += "\n";
  const at::Tensor v = grid.values.to(at::kDouble).contiguous();
  const auto a = v.accessor<double, 2>();
  for (size_t i = 0; i < grid.rows.size(); ++i) {
    out += fmt::format("  {:<{}}", grid.rows[i], w_row);
    for (size_t j = 0; j < grid.cols.size(); ++j) {
      const double x = a[i][j];
      out += std::isfinite(x) ? fmt::format("  {:>{}.4f}", x, w_col[j])
                              : fmt::format("  {:>{}}", "x", w_col[j]);  // as the heatmap
    }
    out += "\n";
  }
  return out;
}

std::string heatmap_title(const InspectionReport& report) {
  const Grid& g = report.grid;
  if (report.command == "dynamics") {
    const std::string base = g.measure.substr(0, g.measure.rfind("-to-final"));
    return fmt::format("{} of each layer to the final checkpoint ({} examples)", base, g.examples);
  }
  return "";  // report.h's default: "<measure> (<examples> examples)"
}

}  // namespace

std::string render_text(const InspectionReport& report, bool color) {
  std::string out;
  const std::string model = report.models.empty() ? "" : report.models[0];
  if (report.command == "layers") {
    out += fmt::format("{}: {} layers", model, report.layers.size());
    out += report.input.empty() ? " (give --input or --input-shape for output shapes)\n"
                                : fmt::format(", input {}\n", report.input);
    out += layer_table(report);
  } else if (report.command == "tap") {
    out += fmt::format("wrote {}: method {}() runs forward and records {} layers\n",
                       report.tapped_path, report.tapped_method, report.layers.size());
    out += layer_table(report);
    out += fmt::format(
        "in Python (svcca loads the op library that records the layers):\n  import torch, svcca\n  "
        "m = torch.jit.load(\"{}\")\n  out, captures = svcca.capture(m, x, method=\"{}\")  # "
        "{{name: [tensor, ...]}}\n",
        report.tapped_path, report.tapped_method);
  } else if (report.has_grid) {
    const Grid& g = report.grid;
    if (report.command == "compare") {
      out += fmt::format("{}: {} against {}, {} examples\n", g.measure, report.models[0],
                         report.models[1], g.examples);
    } else if (report.command == "dynamics") {
      out += fmt::format("{}: {} checkpoints, final {}, {} examples of {}\n", g.measure,
                         report.models.size(), report.models.back(), g.examples, report.input);
    } else {
      out += fmt::format("{}: {}{}, {} examples of {}\n", g.measure, model,
                         report.models.size() > 1 ? " against " + report.models[1] : "", g.examples,
                         report.input);
    }
    const GridInference& inf = g.inference;
    if (inf.resamples > 0) {
      out += fmt::format(
          "  intervals: {:g} % {} bootstrap over {} resamples of the examples, "
          "seed {}\n",
          inf.level * 100.0, inf.method, inf.resamples, inf.seed);
    }
    if (inf.permutations > 0) {
      out += fmt::format("  p-values: {} permutations of the examples, seed {}\n", inf.permutations,
                         inf.seed);
    }
    if (g.rows.size() == 1 && g.cols.size() == 1) {
      const double x = g.values.to(at::kDouble).item<double>();
      std::string extra;
      if (inf.resamples > 0 && std::isfinite(inf.low.item<double>())) {
        extra += fmt::format(" [{:.6f}, {:.6f}]", inf.low.item<double>(), inf.high.item<double>());
      }
      if (inf.permutations > 0 && std::isfinite(inf.p_value.item<double>())) {
        extra += fmt::format(", p = {:.4g} (null mean {:.6f})", inf.p_value.item<double>(),
                             inf.null_mean.item<double>());
      }
      out +=
          std::isfinite(x)
              ? fmt::format("  {} {} / {}: {:.6f}{}\n", g.measure, g.rows[0], g.cols[0], x, extra)
              : fmt::format("  {} {} / {}: undefined\n", g.measure, g.rows[0], g.cols[0]);
      out += undefined_summary(g);
    } else {
      // The heatmap ends with undefined_summary: each reason once, with its cell count.
      out += heatmap_terminal(g, color);
      if (!out.empty() && out.back() != '\n') out += "\n";
      if (g.cols.size() <= 12) out += number_table(g);
    }
  }
  if (!report.files.empty()) {
    out += "wrote";
    for (const std::string& f : report.files) out += " " + f;
    out += "\n";
  }
  return out;
}

nlohmann::json render_json(const InspectionReport& report) {
  nlohmann::json j;
  j["command"] = report.command;
  j["models"] = report.models;
  if (!report.input.empty()) j["input"] = report.input;
  if (report.examples > 0) j["examples"] = report.examples;
  if (report.command == "layers" || report.command == "tap") {
    nlohmann::json layers = nlohmann::json::array();
    for (const LayerRow& r : report.layers) {
      nlohmann::json l = {{"name", r.name}, {"type", r.type}};
      if (r.calls > 0) {
        l["shape"] = r.shape;
        l["dtype"] = r.dtype;
        l["calls"] = r.calls;
      } else {
        l["shape"] = nullptr;
      }
      layers.push_back(std::move(l));
    }
    j["layers"] = std::move(layers);
  }
  if (report.has_grid) j["grid"] = grid_to_json(report.grid);
  if (!report.tapped_path.empty()) {
    j["tapped"] = {{"path", report.tapped_path}, {"method", report.tapped_method}};
  }
  j["files"] = report.files;
  return j;
}

void write_files(InspectionReport& report, const std::string& dir) {
  if (!report.has_grid) return;
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec)) {
    throw OutputError("--out '" + dir + "' exists and is not a folder");
  }
  HeatmapOptions options;
  options.title = heatmap_title(report);
  // Debiased CKA can be slightly negative; the scale still spans [0, 1] unless values leave it.
  const at::Tensor finite = report.grid.values.isfinite();
  if (finite.any().item<bool>()) {
    const at::Tensor v = report.grid.values.masked_select(finite);
    options.vmin = std::min(0.0, v.min().item<double>());
    options.vmax = std::max(1.0, v.max().item<double>());
  }
  try {
    report.files = write_grid_files(report.grid, dir, report.command, options);
  } catch (const std::exception& e) {
    const auto* c10e = dynamic_cast<const c10::Error*>(&e);
    std::string m = one_line(c10e ? c10e->what_without_backtrace() : e.what());
    // The CLI names its option, not the C++ function that wrote the files.
    const std::string prefix = "write_grid_files: ";
    if (m.rfind(prefix, 0) == 0) m = "--out: " + m.substr(prefix.size());
    throw OutputError(m);
  }
}

}  // namespace svcca::inspect
