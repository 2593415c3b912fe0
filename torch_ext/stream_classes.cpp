// TorchScript custom classes torch.classes.svcca.CovarianceAccumulator and
// torch.classes.svcca.MinibatchCkaAccumulator: the streaming accumulators for Python and
// TorchScript (torch 1.13 and 2.x), registered from schema.cpp's TORCH_LIBRARY block.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <map>
#include <string>
#include <vector>

#include "svcca/svcca.h"

namespace svcca {
namespace ops {
namespace {

std::map<std::string, at::Tensor> to_map(const c10::Dict<std::string, at::Tensor>& d) {
  std::map<std::string, at::Tensor> m;
  for (const auto& kv : d) m[kv.key()] = kv.value();
  return m;
}

c10::Dict<std::string, at::Tensor> to_dict(const std::map<std::string, at::Tensor>& m) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& kv : m) d.insert(kv.first, kv.second);
  return d;
}

at::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float64") return at::kDouble;
  if (dtype == "float32") return at::kFloat;
  TORCH_CHECK_VALUE(false,
                    "CovarianceAccumulator: dtype must be \"float64\" or \"float32\", but got \"",
                    dtype, "\"");
}

struct CovarianceAccumulatorHolder : torch::CustomClassHolder {
  CovarianceAccumulator acc;
  explicit CovarianceAccumulatorHolder(CovarianceAccumulator a) : acc(std::move(a)) {}
};

struct MinibatchCkaHolder : torch::CustomClassHolder {
  MinibatchCkaAccumulator acc;
  explicit MinibatchCkaHolder(MinibatchCkaAccumulator a) : acc(std::move(a)) {}
};

using Cov = c10::intrusive_ptr<CovarianceAccumulatorHolder>;
using Mb = c10::intrusive_ptr<MinibatchCkaHolder>;

}  // namespace

// torch.classes.svcca.CovarianceAccumulator(layers: List[str], pairs: List[str] (flattened
// [a0, b0, a1, b1, ...]; empty: every pair), dtype: str = "float64"). Methods:
// update(List[Tensor]), update_named(Dict[str, Tensor]), merge(other), n(), cca(x, y) ->
// correlations, r2_cca(x, y), svcca(x, y, fraction) -> score, pwcca(x, y) -> score, linear_cka(x,
// y), state() -> Dict[str, Tensor], set_state(Dict[str, Tensor]), save(path), load(path) (replaces
// this accumulator's layers and state with the file's).
// torch.classes.svcca.MinibatchCkaAccumulator(kernel: str "linear" | "rbf", sigma: float?,
// threshold: float): update(x, y), merge, cka(), n_batches(), state(), set_state, save, load.
void register_stream_classes(torch::Library& m) {
  m.class_<CovarianceAccumulatorHolder>("CovarianceAccumulator")
      .def(torch::init([](std::vector<std::string> layers, std::vector<std::string> pairs,
                          std::string dtype) {
        TORCH_CHECK_VALUE(pairs.size() % 2 == 0,
                          "CovarianceAccumulator: pairs must be a flat list [a0, b0, a1, b1, ...] "
                          "of even length, but got ",
                          pairs.size(), " names");
        CovarianceAccumulatorOptions o;
        o.layers = std::move(layers);
        for (size_t i = 0; i < pairs.size(); i += 2) o.pairs.push_back({pairs[i], pairs[i + 1]});
        o.dtype = parse_dtype(dtype);
        return c10::make_intrusive<CovarianceAccumulatorHolder>(CovarianceAccumulator(o));
      }))
      .def("update",
           [](const Cov& self, std::vector<at::Tensor> batches) { self->acc.update(batches); })
      .def("update_named",
           [](const Cov& self, c10::Dict<std::string, at::Tensor> batches) {
             self->acc.update(to_map(batches));
           })
      .def("merge", [](const Cov& self, const Cov& other) { self->acc.merge(other->acc); })
      .def("n", [](const Cov& self) { return self->acc.n(); })
      .def("cca", [](const Cov& self, std::string x,
                     std::string y) { return self->acc.cca(x, y).correlations; })
      .def("r2_cca",
           [](const Cov& self, std::string x, std::string y) { return self->acc.r2_cca(x, y); })
      .def("svcca",
           [](const Cov& self, std::string x, std::string y, double fraction) {
             SvccaOptions o;
             o.fraction = fraction;
             return self->acc.svcca(x, y, o).score;
           })
      .def("pwcca", [](const Cov& self, std::string x,
                       std::string y) { return self->acc.pwcca(x, y).score; })
      .def("linear_cka",
           [](const Cov& self, std::string x, std::string y) { return self->acc.linear_cka(x, y); })
      .def("state", [](const Cov& self) { return to_dict(self->acc.state()); })
      .def("set_state",
           [](const Cov& self, c10::Dict<std::string, at::Tensor> state) {
             self->acc.set_state(to_map(state));
           })
      .def("save", [](const Cov& self, std::string path) { self->acc.save(path); })
      .def("load", [](const Cov& self, std::string path) {
        self->acc = CovarianceAccumulator::load(path);
      });

  m.class_<MinibatchCkaHolder>("MinibatchCkaAccumulator")
      .def(torch::init([](std::string kernel, c10::optional<double> sigma, double threshold) {
        MinibatchCkaOptions o;
        if (kernel == "linear") {
          o.kernel = CkaKernel::kLinear;
        } else if (kernel == "rbf") {
          o.kernel = CkaKernel::kRbf;
        } else {
          TORCH_CHECK_VALUE(
              false, "MinibatchCkaAccumulator: kernel must be \"linear\" or \"rbf\", but got \"",
              kernel, "\"");
        }
        if (sigma) o.sigma = *sigma;
        o.threshold = threshold;
        return c10::make_intrusive<MinibatchCkaHolder>(MinibatchCkaAccumulator(o));
      }))
      .def("update", [](const Mb& self, at::Tensor x, at::Tensor y) { self->acc.update(x, y); })
      .def("merge", [](const Mb& self, const Mb& other) { self->acc.merge(other->acc); })
      .def("n_batches", [](const Mb& self) { return self->acc.n_batches(); })
      .def("cka", [](const Mb& self) { return self->acc.cka(); })
      .def("state", [](const Mb& self) { return to_dict(self->acc.state()); })
      .def("set_state",
           [](const Mb& self, c10::Dict<std::string, at::Tensor> state) {
             self->acc.set_state(to_map(state));
           })
      .def("save", [](const Mb& self, std::string path) { self->acc.save(path); })
      .def("load", [](const Mb& self, std::string path) {
        self->acc = MinibatchCkaAccumulator::load(path);
      });
}

}  // namespace ops
}  // namespace svcca
