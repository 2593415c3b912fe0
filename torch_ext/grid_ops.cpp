// Grids for Python and TorchScript (schemas in schema.cpp): torch.ops.svcca.similarity_grid (the
// values), the full grid behind svcca.similarity_grid, torch.classes.svcca.GridBuilder (layers
// added one at a time, for svcca.module_grid), the report files and the default memory budget.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "svcca/grid/grid.h"
#include "svcca/measures/cca.h"
#include "svcca/report/report.h"

namespace svcca {
namespace ops {
namespace {

NamedActivations numbered(at::TensorList tensors) {
  NamedActivations out;
  out.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) out.push_back({std::to_string(i), tensors[i]});
  return out;
}

NamedActivations named(const char* fn, const char* arg, at::TensorList tensors,
                       const std::vector<std::string>& names) {
  TORCH_CHECK_VALUE(names.size() == tensors.size(), fn, ": ", arg,
                    "_names must have one name per tensor of ", arg, ", but got ", names.size(),
                    " names for ", tensors.size(), " tensors");
  NamedActivations out;
  out.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) out.push_back({names[i], tensors[i]});
  return out;
}

FactorSide parse_side(const char* fn, const std::string& side) {
  if (side == "auto") return FactorSide::kAuto;
  if (side == "features") return FactorSide::kFeatures;
  if (side == "gram") return FactorSide::kGram;
  TORCH_CHECK_VALUE(false, fn, ": side must be one of \"auto\", \"features\", \"gram\", but got \"",
                    side, "\"");
}

Precision parse_precision(const char* fn, const std::string& precision) {
  if (precision == "float64") return Precision::kFloat64;
  if (precision == "input") return Precision::kInput;
  TORCH_CHECK_VALUE(false, fn, ": precision must be \"float64\" or \"input\", but got \"",
                    precision, "\"");
}

// The options every grid entry point of this file takes. epsilon and precision apply to every
// measure that has them (the grid only reads the ones of its measure).
GridOptions grid_options(const char* fn, const std::string& measure, const std::string& conv,
                         double fraction, c10::optional<int64_t> dims, double epsilon,
                         const std::string& precision, const std::string& side,
                         c10::optional<double> rank_rtol, bool allow_forced_correlations) {
  GridOptions o;
  o.measure = parse_grid_measure(fn, "measure", measure);
  o.conv = parse_grid_conv(fn, "conv", conv);
  o.side = parse_side(fn, side);
  const Precision p = parse_precision(fn, precision);
  o.precision = p;
  o.rbf.precision = p;
  for (CcaOptions* c : {&o.cca, &o.svcca.cca, &o.pwcca.cca}) {
    c->precision = p;
    c->epsilon = epsilon;
    if (rank_rtol) c->rank_rtol = *rank_rtol;
    c->allow_forced_correlations = allow_forced_correlations;
  }
  if (rank_rtol) detail::check_cca_options(fn, o.cca);  // rank_rtol in [0, 1]
  o.svcca.fraction = fraction;
  if (dims) o.svcca.dims = *dims;
  return o;
}

// A grid as (values, rows, cols, measure, examples, options, undefined reasons, undefined cells
// ([k, 2] int64 (row, col) per reason), row_label, col_label): svcca/grid.py's Grid.
using GridTuple =
    std::tuple<at::Tensor, std::vector<std::string>, std::vector<std::string>, std::string, int64_t,
               c10::Dict<std::string, std::string>, std::vector<std::string>,
               std::vector<at::Tensor>, std::string, std::string>;

GridTuple unpack(const Grid& g) {
  c10::Dict<std::string, std::string> options;
  for (const auto& kv : g.options) options.insert(kv.first, kv.second);
  std::vector<std::string> reasons;
  std::vector<at::Tensor> cells;
  for (const UndefinedCells& u : g.undefined) {
    reasons.push_back(u.reason);
    at::Tensor c = at::empty({static_cast<int64_t>(u.cells.size()), 2}, at::kLong);
    auto a = c.accessor<int64_t, 2>();
    for (size_t k = 0; k < u.cells.size(); ++k) {
      a[k][0] = u.cells[k].first;
      a[k][1] = u.cells[k].second;
    }
    cells.push_back(c);
  }
  return {g.values, g.rows,  g.cols, g.measure,   g.examples,
          options,  reasons, cells,  g.row_label, g.col_label};
}

at::Tensor similarity_grid_op(at::TensorList x, c10::optional<at::TensorList> y,
                              c10::string_view measure, c10::string_view conv) {
  constexpr const char* fn = "similarity_grid";
  GridOptions o;
  o.measure = parse_grid_measure(fn, "measure", std::string(measure));
  o.conv = parse_grid_conv(fn, "conv", std::string(conv));
  Grid g = y ? similarity_grid(numbered(x), numbered(*y), o) : similarity_grid(numbered(x), o);
  return g.values;
}

GridTuple similarity_grid_full_op(at::TensorList x, std::vector<std::string> x_names,
                                  c10::optional<at::TensorList> y,
                                  c10::optional<std::vector<std::string>> y_names,
                                  c10::string_view measure, c10::string_view conv, double fraction,
                                  c10::optional<int64_t> dims, double epsilon,
                                  c10::string_view precision, c10::string_view side,
                                  c10::optional<double> rank_rtol, bool allow_forced_correlations) {
  constexpr const char* fn = "similarity_grid";
  GridOptions o =
      grid_options(fn, std::string(measure), std::string(conv), fraction, dims, epsilon,
                   std::string(precision), std::string(side), rank_rtol, allow_forced_correlations);
  NamedActivations a = named(fn, "x", x, x_names);
  if (!y) return unpack(similarity_grid(a, o));
  TORCH_CHECK_VALUE(y_names.has_value(), fn, ": y_names must be given with y");
  return unpack(similarity_grid(a, named(fn, "y", *y, *y_names), o));
}

std::vector<std::string> write_grid_files_op(
    const at::Tensor& values, std::vector<std::string> rows, std::vector<std::string> cols,
    c10::string_view measure, int64_t examples, c10::Dict<std::string, std::string> options,
    std::vector<std::string> undefined_reasons, at::TensorList undefined_cells,
    c10::string_view row_label, c10::string_view col_label, c10::string_view dir,
    c10::string_view stem, c10::string_view title, double vmin, double vmax) {
  constexpr const char* fn = "write_grid_files";
  TORCH_CHECK_VALUE(undefined_reasons.size() == undefined_cells.size(), fn,
                    ": undefined_cells must have one tensor per reason in undefined_reasons, but "
                    "got ",
                    undefined_cells.size(), " tensors for ", undefined_reasons.size(), " reasons");
  Grid g;
  g.values = values;
  g.rows = std::move(rows);
  g.cols = std::move(cols);
  g.measure = std::string(measure);
  g.examples = examples;
  for (const auto& kv : options) g.options[kv.key()] = kv.value();
  g.row_label = std::string(row_label);
  g.col_label = std::string(col_label);
  for (size_t e = 0; e < undefined_reasons.size(); ++e) {
    at::Tensor c = undefined_cells[e];
    TORCH_CHECK_VALUE(c.dim() == 2 && c.size(1) == 2, fn, ": undefined_cells[", e,
                      "] must be a [k, 2] tensor of (row, col) indices, but got shape ", c.sizes());
    c = c.to(at::kCPU, at::kLong).contiguous();
    UndefinedCells u;
    u.reason = undefined_reasons[e];
    auto a = c.accessor<int64_t, 2>();
    for (int64_t k = 0; k < c.size(0); ++k) u.cells.push_back({a[k][0], a[k][1]});
    g.undefined.push_back(std::move(u));
  }
  HeatmapOptions h;
  h.title = std::string(title);
  h.vmin = vmin;
  h.vmax = vmax;
  return write_grid_files(g, std::string(dir), std::string(stem), h);
}

int64_t default_memory_budget_op() {
  return default_memory_budget();
}

struct GridBuilderHolder : torch::CustomClassHolder {
  GridBuilder builder;
  explicit GridBuilderHolder(GridBuilder b) : builder(std::move(b)) {}
};

using Gb = c10::intrusive_ptr<GridBuilderHolder>;

}  // namespace

// torch.classes.svcca.GridBuilder(rows: List[str], cols: List[str] (empty: one-model grid),
// measure: str, conv: str, fraction: float, dims: Optional[int], epsilon: float, precision: str,
// side: str, rank_rtol: Optional[float], allow_forced_correlations: bool): svcca::GridBuilder.
// Methods: add(name, acts, col), add_undefined(name, reason, col), set_fold_size(h, w),
// factor_bytes(), result() -> the grid tuple of _similarity_grid.
void register_grid_builder_class(torch::Library& m) {
  m.class_<GridBuilderHolder>("GridBuilder")
      .def(torch::init([](std::vector<std::string> rows, std::vector<std::string> cols,
                          std::string measure, std::string conv, double fraction,
                          c10::optional<int64_t> dims, double epsilon, std::string precision,
                          std::string side, c10::optional<double> rank_rtol,
                          bool allow_forced_correlations) {
        GridOptions o = grid_options("GridBuilder", measure, conv, fraction, dims, epsilon,
                                     precision, side, rank_rtol, allow_forced_correlations);
        return c10::make_intrusive<GridBuilderHolder>(
            GridBuilder(std::move(rows), std::move(cols), std::move(o)));
      }))
      .def("add", [](const Gb& self, std::string name, at::Tensor acts,
                     bool col) { self->builder.add(name, acts, col); })
      .def("add_undefined", [](const Gb& self, std::string name, std::string reason,
                               bool col) { self->builder.add_undefined(name, reason, col); })
      .def("set_fold_size",
           [](const Gb& self, int64_t h, int64_t w) { self->builder.set_fold_size(h, w); })
      .def("factor_bytes", [](const Gb& self) { return self->builder.factor_bytes(); })
      .def("result", [](const Gb& self) { return unpack(self->builder.result()); });
}

}  // namespace ops
}  // namespace svcca

// The values are a float64 CPU tensor computed outside autograd: CompositeExplicitAutograd, so
// that autograd reports the op as not differentiable instead of returning no gradient silently.
TORCH_LIBRARY_IMPL(svcca, CompositeExplicitAutograd, m) {
  m.impl("similarity_grid", &svcca::ops::similarity_grid_op);
  m.impl("_similarity_grid", &svcca::ops::similarity_grid_full_op);
  m.impl("_write_grid_files", &svcca::ops::write_grid_files_op);
}

// No tensor argument: as tap_model, a composite kernel serves every dispatch key.
TORCH_LIBRARY_IMPL(svcca, CompositeImplicitAutograd, m) {
  m.impl("default_memory_budget", &svcca::ops::default_memory_budget_op);
}
