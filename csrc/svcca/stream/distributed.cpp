// all_reduce of the streaming accumulators over a c10d ProcessGroup.
#include "svcca/stream/distributed.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#ifdef SVCCA_C10D_HAS_BACKEND
#include <torch/csrc/distributed/c10d/Backend.hpp>
#endif

#include <vector>

#include "svcca/stream/scaling.h"

namespace svcca {
namespace {

constexpr const char* kFn = "all_reduce";

// All-reduces one float64 tensor in place with `op` and waits for it. Group, here and below:
// c10d::ProcessGroup or (LibTorch 2.x) c10d::Backend, which share allreduce, getRank, getSize.
template <typename Group>
void reduce(Group& pg, at::Tensor& t, c10d::ReduceOp::RedOpType op) {
  std::vector<at::Tensor> tensors{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp(op);
  auto work = pg.allreduce(tensors, opts);
  work->wait();
}

// Every rank contributes `signature` (of one length on every rank; entry 1 is 1 for an empty
// accumulator). Throws on every rank when any two ranks differ or any is empty, so that no rank
// goes on to a collective the others never join.
template <typename Group>
void agree(Group& pg, const std::vector<double>& signature, at::Device device, const char* what) {
  const int64_t k = static_cast<int64_t>(signature.size());
  at::Tensor s = at::tensor(signature, at::kDouble);
  at::Tensor both = at::cat({s, -s}).to(device);
  reduce(pg, both, c10d::ReduceOp::MAX);
  both = both.cpu();
  const bool same = at::equal(both.narrow(0, 0, k), -both.narrow(0, k, k));
  const bool some_empty = both[1].item<double>() > 0.5;
  TORCH_CHECK_VALUE(!some_empty, kFn,
                    ": accumulator must have seen at least one batch on every rank of the process "
                    "group (shapes are learned from the first batch), but at least one of the ",
                    pg.getSize(), " ranks has an empty ", what, " accumulator");
  TORCH_CHECK_VALUE(same, kFn,
                    ": accumulator must have the same layers, feature counts and dtypes ",
                    "on every rank, but the ", pg.getSize(), " ranks' ", what,
                    " accumulators differ (rank ", pg.getRank(), ")");
}

double dtype_code(at::ScalarType t) {
  return static_cast<double>(static_cast<int>(t));
}

// A rank that has seen only zeros (or no spread) in a layer has no unit: it takes any other's.
constexpr double kNoUnit = -1e9;

// The exponents of the common units: the MAX over ranks of each rank's (kNoUnit where it has
// none); 0 where no rank has one.
template <typename Group>
std::vector<int> common_units(Group& pg, const std::vector<double>& local, at::Device device) {
  at::Tensor t = at::tensor(local, at::kDouble).to(device);
  reduce(pg, t, c10d::ReduceOp::MAX);
  t = t.cpu();
  std::vector<int> out;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t[i].item<double>();
    out.push_back(v <= kNoUnit ? 0 : static_cast<int>(v));
  }
  return out;
}

template <typename Group>
void all_reduce_covariance(CovarianceAccumulator& accumulator, Group& process_group) {
  auto& pg = process_group;
  auto state = accumulator.state();
  const auto& pairs = accumulator.pair_indices();
  const size_t n_layers = accumulator.options().layers.size();
  // First agree on the number of layers and pairs (so that the signatures below have the same
  // length on every rank), then on [length, empty, dtype, (p_l, input dtype_l)..., pairs...].
  const bool empty = accumulator.empty();
  at::Device device = empty ? at::Device(at::kCPU) : state.at("n").device();
  std::vector<double> head{static_cast<double>(n_layers), static_cast<double>(pairs.size())};
  {
    at::Tensor h =
        at::tensor(std::vector<double>{head[0], head[1], -head[0], -head[1]}, at::kDouble)
            .to(device);
    reduce(pg, h, c10d::ReduceOp::MAX);
    h = h.cpu();
    TORCH_CHECK_VALUE(
        h[0].item<double>() == -h[2].item<double>() && h[1].item<double>() == -h[3].item<double>(),
        kFn, ": accumulator must have the same layers and pairs on every rank, but the ",
        pg.getSize(), " ranks' covariance accumulators differ");
  }
  std::vector<double> sig{0.0, empty ? 1.0 : 0.0, dtype_code(accumulator.options().dtype)};
  for (size_t l = 0; l < n_layers; ++l) {
    sig.push_back(empty ? -1.0 : static_cast<double>(accumulator.n_features()[l]));
    sig.push_back(empty ? -1.0 : dtype_code(state.at("min." + std::to_string(l)).scalar_type()));
  }
  for (const auto& pr : pairs) {
    sig.push_back(static_cast<double>(pr.first));
    sig.push_back(static_cast<double>(pr.second));
  }
  sig[0] = static_cast<double>(sig.size());
  agree(pg, sig, device, "covariance");

  // Round 0: the common unit of each layer (see Scale in covariance_accumulator.h); every rank
  // rescales its moments to it (powers of two: exact, barring negligible underflow).
  {
    std::vector<double> local;
    std::vector<int> mine;
    for (size_t l = 0; l < n_layers; ++l) {
      const std::string i = std::to_string(l);
      const double m =
          at::maximum(state.at("min." + i).abs(), state.at("max." + i).abs()).max().item<double>();
      mine.push_back(detail::parse_scale(kFn, "state[\"scale." + i + "\"]",
                                         state.at("scale." + i).item<double>()));
      local.push_back(m > 0.0 ? static_cast<double>(mine.back()) : kNoUnit);
    }
    const std::vector<int> k = common_units(pg, local, device);
    for (size_t l = 0; l < n_layers; ++l) {
      const std::string i = std::to_string(l);
      const int d = mine[l] - k[l];
      state["mean." + i] = detail::mul_pow2(state.at("mean." + i), d);
      state["comoment." + i] = detail::mul_pow2(state.at("comoment." + i), 2 * d);
      state["scale." + i] = at::scalar_tensor(detail::pow2(k[l]), state.at("n").options());
    }
    for (const auto& pr : pairs) {
      const std::string key = "cross." + std::to_string(pr.first) + "." + std::to_string(pr.second);
      state[key] = detail::mul_pow2(
          state.at(key), (mine[pr.first] - k[pr.first]) + (mine[pr.second] - k[pr.second]));
    }
  }

  // Round 1: n and n * mean -> the global mean.
  const double n_local = state.at("n").item<double>();
  std::vector<at::Tensor> parts{state.at("n").to(at::kDouble).reshape({1})};
  for (size_t l = 0; l < n_layers; ++l) {
    parts.push_back(state.at("mean." + std::to_string(l)).to(at::kDouble) * n_local);
  }
  at::Tensor sums = at::cat(parts);
  reduce(pg, sums, c10d::ReduceOp::SUM);
  const double n_total = sums[0].item<double>();
  std::vector<at::Tensor> mean(n_layers), shift(n_layers);
  int64_t offset = 1;
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string i = std::to_string(l);
    const at::Tensor& local = state.at("mean." + i);
    const int64_t p = local.numel();
    mean[l] = (sums.narrow(0, offset, p) / n_total).to(local.scalar_type());
    shift[l] = local - mean[l];
    offset += p;
  }

  // Round 2: co-moments recentered to the global mean add up across ranks.
  std::vector<std::string> keys;
  std::vector<at::Tensor> moments;
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string key = "comoment." + std::to_string(l);
    keys.push_back(key);
    moments.push_back(at::addr(state.at(key), shift[l], shift[l], 1.0, n_local));
  }
  for (const auto& pr : pairs) {
    const std::string key = "cross." + std::to_string(pr.first) + "." + std::to_string(pr.second);
    keys.push_back(key);
    moments.push_back(at::addr(state.at(key), shift[pr.first], shift[pr.second], 1.0, n_local));
  }
  std::vector<at::Tensor> flat;
  for (const auto& m : moments) flat.push_back(m.reshape({-1}));
  at::Tensor packed = at::cat(flat);
  reduce(pg, packed, c10d::ReduceOp::SUM);

  // Round 3: exact column min and max (float32 -> float64 -> float32 is exact).
  std::vector<at::Tensor> ext;
  for (size_t l = 0; l < n_layers; ++l) {
    ext.push_back(state.at("min." + std::to_string(l)).to(at::kDouble));
    ext.push_back(-state.at("max." + std::to_string(l)).to(at::kDouble));
  }
  at::Tensor extremes = at::cat(ext);
  reduce(pg, extremes, c10d::ReduceOp::MIN);

  std::map<std::string, at::Tensor> out;
  out["n"] = at::scalar_tensor(n_total, state.at("n").options());
  offset = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const int64_t numel = moments[i].numel();
    out[keys[i]] = packed.narrow(0, offset, numel).view(moments[i].sizes());
    offset += numel;
  }
  offset = 0;
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string i = std::to_string(l);
    const at::Tensor& mn = state.at("min." + i);
    const int64_t p = mn.numel();
    out["mean." + i] = mean[l];
    out["scale." + i] = state.at("scale." + i);
    out["min." + i] = extremes.narrow(0, offset, p).to(mn.scalar_type());
    out["max." + i] = (-extremes.narrow(0, offset + p, p)).to(mn.scalar_type());
    offset += 2 * p;
  }
  accumulator.set_state(out);
}

template <typename Group>
void all_reduce_minibatch(MinibatchCkaAccumulator& accumulator, Group& process_group) {
  auto state = accumulator.state();
  const bool empty = accumulator.n_batches() == 0;
  at::Device device = empty ? at::Device(at::kCPU) : state.at("n").device();
  const auto& o = accumulator.options();
  std::vector<double> sig{0.0, empty ? 1.0 : 0.0, static_cast<double>(static_cast<int>(o.kernel)),
                          o.sigma ? *o.sigma : -1.0, o.threshold};
  sig[0] = static_cast<double>(sig.size());
  agree(process_group, sig, device, "minibatch CKA");
  // The common units of x and y (MAX over the ranks that have any spread), then sums.
  const int kx = detail::parse_scale(kFn, "state[\"scale_x\"]", state.at("scale_x").item<double>());
  const int ky = detail::parse_scale(kFn, "state[\"scale_y\"]", state.at("scale_y").item<double>());
  const std::vector<int> k =
      common_units(process_group,
                   {state.at("hsic_xx").item<double>() > 0.0 ? static_cast<double>(kx) : kNoUnit,
                    state.at("hsic_yy").item<double>() > 0.0 ? static_cast<double>(ky) : kNoUnit},
                   device);
  const int dx = kx - k[0], dy = ky - k[1];
  state["hsic_xx"] = detail::mul_pow2(state.at("hsic_xx"), 4 * dx);
  state["hsic_yy"] = detail::mul_pow2(state.at("hsic_yy"), 4 * dy);
  state["hsic_xy"] = detail::mul_pow2(state.at("hsic_xy"), 2 * dx + 2 * dy);
  const std::vector<std::string> keys{"n_batches", "n", "hsic_xy", "hsic_xx", "hsic_yy"};
  std::vector<at::Tensor> parts;
  for (const auto& k : keys) parts.push_back(state.at(k).reshape({1}));
  at::Tensor sums = at::cat(parts);
  reduce(process_group, sums, c10d::ReduceOp::SUM);
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < keys.size(); ++i) out[keys[i]] = sums[static_cast<int64_t>(i)].clone();
  out["scale_x"] = at::scalar_tensor(detail::pow2(k[0]), state.at("n").options());
  out["scale_y"] = at::scalar_tensor(detail::pow2(k[1]), state.at("n").options());
  accumulator.set_state(out);
}

}  // namespace

void all_reduce(CovarianceAccumulator& accumulator, c10d::ProcessGroup& process_group) {
  all_reduce_covariance(accumulator, process_group);
}

void all_reduce(MinibatchCkaAccumulator& accumulator, c10d::ProcessGroup& process_group) {
  all_reduce_minibatch(accumulator, process_group);
}

#ifdef SVCCA_C10D_HAS_BACKEND
void all_reduce(CovarianceAccumulator& accumulator, c10d::Backend& process_group) {
  all_reduce_covariance(accumulator, process_group);
}

void all_reduce(MinibatchCkaAccumulator& accumulator, c10d::Backend& process_group) {
  all_reduce_minibatch(accumulator, process_group);
}
#endif

}  // namespace svcca
