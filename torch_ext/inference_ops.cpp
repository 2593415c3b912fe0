// Bootstrap intervals, paired differences, permutation tests and grid inference as ops (schemas in
// schema.cpp): torch.ops.svcca.bootstrap, bootstrap_difference, permutation_test and
// _grid_inference (svcca.bootstrap ... in Python). Values come back as float64 0-d CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "svcca/grid/grid.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/grid_inference.h"
#include "svcca/inference/permutation.h"

namespace svcca {
namespace ops {
namespace {

at::Tensor scalar(double v) {
  return at::scalar_tensor(v, at::kDouble);
}

uint64_t checked_seed(const char* fn, int64_t seed) {
  TORCH_CHECK_VALUE(seed >= 0, fn, ": seed must be >= 0, but got ", seed);
  return static_cast<uint64_t>(seed);
}

// The measure options the ops take: svcca's fraction / dims, the CCA family's epsilon and
// allow_forced_correlations, rbf-cka's absolute sigma (None: the median rule).
GridOptions measure_options(double fraction, c10::optional<int64_t> dims, double epsilon,
                            c10::optional<double> sigma, bool allow_forced_correlations) {
  GridOptions o;
  for (CcaOptions* c : {&o.cca, &o.svcca.cca, &o.pwcca.cca}) {
    c->epsilon = epsilon;
    c->allow_forced_correlations = allow_forced_correlations;
  }
  o.svcca.fraction = fraction;
  if (dims) o.svcca.dims = *dims;
  if (sigma) o.rbf.sigma = *sigma;
  return o;
}

using BootstrapTuple =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t>;

BootstrapTuple to_tuple(const BootstrapResult& r) {
  return {scalar(r.estimate),       scalar(r.low), scalar(r.high),
          scalar(r.standard_error), r.resamples,   r.invalid};
}

BootstrapOptions bootstrap_options(const char* fn, int64_t resamples, double level, int64_t seed,
                                   c10::string_view method, double fraction,
                                   c10::optional<int64_t> dims, double epsilon,
                                   c10::optional<double> sigma, int64_t workers, bool allow) {
  BootstrapOptions o;
  o.workers = workers;
  o.resamples = resamples;
  o.level = level;
  o.seed = checked_seed(fn, seed);
  o.method = parse_interval_method(fn, "method", std::string(method));
  o.measure_options = measure_options(fraction, dims, epsilon, sigma, allow);
  return o;
}

BootstrapTuple bootstrap_op(const at::Tensor& x, const at::Tensor& y, c10::string_view measure,
                            int64_t resamples, double level, int64_t seed, c10::string_view method,
                            double fraction, c10::optional<int64_t> dims, double epsilon,
                            c10::optional<double> sigma, int64_t workers, bool allow) {
  return to_tuple(bootstrap(x, y, std::string(measure),
                            bootstrap_options("bootstrap", resamples, level, seed, method, fraction,
                                              dims, epsilon, sigma, workers, allow)));
}

BootstrapTuple bootstrap_difference_op(const at::Tensor& a, const at::Tensor& b,
                                       const at::Tensor& c, c10::string_view measure,
                                       int64_t resamples, double level, int64_t seed,
                                       c10::string_view method, double fraction,
                                       c10::optional<int64_t> dims, double epsilon,
                                       c10::optional<double> sigma, int64_t workers, bool allow) {
  return to_tuple(
      bootstrap_difference(a, b, c, std::string(measure),
                           bootstrap_options("bootstrap_difference", resamples, level, seed, method,
                                             fraction, dims, epsilon, sigma, workers, allow)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> permutation_test_op(
    const at::Tensor& x, const at::Tensor& y, c10::string_view measure, int64_t permutations,
    int64_t seed, double fraction, c10::optional<int64_t> dims, double epsilon,
    c10::optional<double> sigma, int64_t workers, bool allow) {
  PermutationOptions o;
  o.permutations = permutations;
  o.workers = workers;
  o.seed = checked_seed("permutation_test", seed);
  o.measure_options = measure_options(fraction, dims, epsilon, sigma, allow);
  PermutationResult r = permutation_test(x, y, std::string(measure), o);
  return {scalar(r.estimate), scalar(r.p_value), scalar(r.null_mean), r.null, r.exceed};
}

at::Tensor or_empty(const at::Tensor& t) {
  return t.defined() ? t : at::empty({0, 0}, at::kDouble);
}

// The grid's values with every cell's interval and p-value (empty [0, 0] tensors for what was
// not asked for), and the reasons of cells without one.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           std::vector<std::string>, std::vector<at::Tensor>, at::Tensor>
grid_inference_op(at::TensorList x, c10::optional<at::TensorList> y, c10::string_view measure,
                  c10::string_view conv, int64_t resamples, double level, c10::string_view method,
                  int64_t permutations, int64_t seed, double fraction, c10::optional<int64_t> dims,
                  double epsilon, c10::optional<double> sigma, int64_t workers, bool allow) {
  constexpr const char* fn = "grid_inference";
  GridOptions o = measure_options(fraction, dims, epsilon, sigma, allow);
  o.measure = parse_grid_measure(fn, "measure", std::string(measure));
  o.conv = parse_grid_conv(fn, "conv", std::string(conv));
  GridInferenceOptions io;
  io.resamples = resamples;
  io.level = level;
  io.method = parse_interval_method(fn, "method", std::string(method));
  io.permutations = permutations;
  io.seed = checked_seed(fn, seed);
  io.workers = workers;
  NamedActivations a, b;
  for (size_t i = 0; i < x.size(); ++i) a.push_back({std::to_string(i), x[i]});
  if (y) {
    for (size_t i = 0; i < y->size(); ++i) b.push_back({std::to_string(i), (*y)[i]});
  }
  InferenceGridBuilder check({"0"}, {}, o, io);  // the options first, before any grid work
  Grid g = b.empty() ? similarity_grid(a, o) : similarity_grid(a, b, o);
  add_grid_inference(g, a, b, o, io);
  const GridInference& inf = g.inference;
  std::vector<std::string> reasons;
  std::vector<at::Tensor> cells;
  for (const auto& u : inf.undefined) {
    reasons.push_back(u.reason);
    at::Tensor c = at::empty({static_cast<int64_t>(u.cells.size()), 2}, at::kLong);
    for (size_t k = 0; k < u.cells.size(); ++k) {
      c[k][0] = u.cells[k].first;
      c[k][1] = u.cells[k].second;
    }
    cells.push_back(c);
  }
  return {g.values,
          or_empty(inf.low),
          or_empty(inf.high),
          or_empty(inf.standard_error),
          or_empty(inf.p_value),
          or_empty(inf.null_mean),
          reasons,
          cells,
          or_empty(inf.invalid)};
}

}  // namespace
}  // namespace ops
}  // namespace svcca

TORCH_LIBRARY_IMPL(svcca, CompositeExplicitAutograd, m) {
  m.impl("bootstrap", &svcca::ops::bootstrap_op);
  m.impl("bootstrap_difference", &svcca::ops::bootstrap_difference_op);
  m.impl("permutation_test", &svcca::ops::permutation_test_op);
  m.impl("_grid_inference", &svcca::ops::grid_inference_op);
}
