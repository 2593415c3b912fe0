// TorchScript custom class torch.classes.svcca.TrainingMonitor: svcca::TrainingMonitor for Python
// training loops over a TorchScript module (registered from schema.cpp's TORCH_LIBRARY block).
// svcca/monitor.py wraps it; the module arrives as its C++ object (ScriptModule._c), so the
// monitor runs the very module Python trains.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "svcca/grid/monitor.h"

namespace svcca {
namespace ops {
namespace {

struct TrainingMonitorHolder : torch::CustomClassHolder {
  TrainingMonitor monitor;
  explicit TrainingMonitorHolder(TrainingMonitor m) : monitor(std::move(m)) {}
};

using Mon = c10::intrusive_ptr<TrainingMonitorHolder>;

torch::jit::Module as_module(const c10::IValue& module) {
  TORCH_CHECK_TYPE(module.isObject() && module.toObject()->type()->is_module(),
                   "TrainingMonitor: module must be a TorchScript module (a ScriptModule's _c), "
                   "but got ",
                   module.tagKind());
  return torch::jit::Module(module.toObject());
}

// A grid as (values, row names, column names).
std::tuple<at::Tensor, std::vector<std::string>, std::vector<std::string>> unpack(const Grid& g) {
  return {g.values, g.rows, g.cols};
}

}  // namespace

// torch.classes.svcca.TrainingMonitor(module: ScriptModule._c, probe: Tensor, layers: List[str]
// (names, globs, "re:" patterns; empty: all), summary_dims: int, measure: str, conv: str).
// Methods: record(step), record_from(step, module) (checkpoints: another module with the same
// layers), layers(), steps(), examples(), summary(layer, step), grid(step) -> (values, rows,
// cols), dynamics() -> (values, layers, step names), convergence_steps(threshold),
// converged(threshold, window), freeze_suggestion(threshold, window), save(path), load(path).
void register_monitor_class(torch::Library& m) {
  m.class_<TrainingMonitorHolder>("TrainingMonitor")
      .def(torch::init([](c10::IValue module, at::Tensor probe, std::vector<std::string> layers,
                          int64_t summary_dims, std::string measure, std::string conv) {
        constexpr const char* fn = "TrainingMonitor";
        MonitorOptions o;
        o.layers = std::move(layers);
        o.summary_dims = summary_dims;
        o.grid.measure = parse_grid_measure(fn, "measure", measure);
        o.grid.conv = parse_grid_conv(fn, "conv", conv);
        return c10::make_intrusive<TrainingMonitorHolder>(
            TrainingMonitor(as_module(module), std::move(probe), std::move(o)));
      }))
      .def("record", [](const Mon& self, int64_t step) { self->monitor.record(step); })
      .def("record_from",
           [](const Mon& self, int64_t step, c10::IValue module) {
             self->monitor.record(step, TappedModule(as_module(module)));
           })
      .def("layers", [](const Mon& self) { return self->monitor.layers(); })
      .def("steps", [](const Mon& self) { return self->monitor.steps(); })
      .def("examples", [](const Mon& self) { return self->monitor.examples(); })
      .def("summary", [](const Mon& self, std::string layer,
                         int64_t step) { return self->monitor.summary(layer, step); })
      .def("grid", [](const Mon& self, int64_t step) { return unpack(self->monitor.grid(step)); })
      .def("dynamics", [](const Mon& self) { return unpack(self->monitor.dynamics()); })
      .def("convergence_steps",
           [](const Mon& self, double threshold) {
             return self->monitor.convergence_steps(threshold);
           })
      .def("converged", [](const Mon& self, double threshold,
                           int64_t window) { return self->monitor.converged(threshold, window); })
      .def("freeze_suggestion",
           [](const Mon& self, double threshold, int64_t window) {
             return self->monitor.freeze_suggestion(threshold, window);
           })
      .def("save", [](const Mon& self, std::string path) { self->monitor.save(path); })
      .def("load", [](const Mon& self, std::string path) { self->monitor.load(path); });
}

}  // namespace ops
}  // namespace svcca
