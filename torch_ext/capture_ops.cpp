// Kernels of the capture ops: svcca::tap (inserted into tapped graphs) and the Python-side
// recording and tapping entry points. Schemas are in schema.cpp.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "svcca/capture/capture.h"

namespace svcca {
namespace ops {
namespace {

void tap_op(const c10::IValue& value, c10::string_view name, bool copy) {
  detail::record_tap(value, std::string(name), copy);
}

bool tap_active_op(c10::string_view name) {
  return detail::tap_active(std::string(name));
}

void capture_begin_op(std::vector<std::string> layers, bool detach, bool shapes_only,
                      const c10::optional<c10::IValue>& pool) {
  detail::begin_recording(layers, detach, shapes_only, pool.value_or(c10::IValue()));
}

std::tuple<std::vector<std::string>, std::vector<at::Tensor>> capture_end_op() {
  std::vector<CaptureRecord> records = detail::end_recording();
  std::vector<std::string> names;
  std::vector<at::Tensor> values;
  names.reserve(records.size());
  values.reserve(records.size());
  for (auto& r : records) {
    names.push_back(std::move(r.name));
    values.push_back(std::move(r.value));
  }
  return {std::move(names), std::move(values)};
}

std::vector<std::string> tap_model_op(c10::string_view path, c10::string_view output_path,
                                      c10::string_view method_name) {
  TappedModule tapped = TappedModule::load(std::string(path), c10::kCPU, std::string(method_name));
  tapped.save(std::string(output_path));
  return tapped.layer_names();
}

}  // namespace

// No tensor arguments: the dispatcher reaches these through the Undefined key, which the
// CompositeImplicitAutograd kernel serves; autograd sees the clone inside tap (detach=False).
TORCH_LIBRARY_IMPL(svcca, CompositeImplicitAutograd, m) {
  m.impl("tap", &tap_op);
  m.impl("_tap_active", &tap_active_op);
  m.impl("_capture_begin", &capture_begin_op);
  m.impl("_capture_end", &capture_end_op);
  m.impl("tap_model", &tap_model_op);
}

}  // namespace ops
}  // namespace svcca
