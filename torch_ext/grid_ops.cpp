// Kernel of torch.ops.svcca.similarity_grid (schema in schema.cpp): the values of a layer x layer
// grid, through svcca::similarity_grid.
#include <torch/library.h>

#include <string>
#include <vector>

#include "svcca/grid/grid.h"

namespace svcca {
namespace ops {
namespace {

NamedActivations numbered(at::TensorList tensors) {
  NamedActivations out;
  out.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) out.push_back({std::to_string(i), tensors[i]});
  return out;
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

}  // namespace
}  // namespace ops
}  // namespace svcca

// The values are a float64 CPU tensor computed outside autograd: CompositeExplicitAutograd, so
// that autograd reports the op as not differentiable instead of returning no gradient silently.
TORCH_LIBRARY_IMPL(svcca, CompositeExplicitAutograd, m) {
  m.impl("similarity_grid", &svcca::ops::similarity_grid_op);
}
