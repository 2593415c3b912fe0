// TrainingMonitor: probe-set summaries per layer and step, and the grids derived from them.
#include "svcca/grid/monitor.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <utility>

#include "svcca/checks.h"
#include "svcca/factors.h"
#include "svcca/linalg.h"
#include "svcca/stream/state_file.h"

namespace svcca {
namespace {

constexpr const char* kKind = "training_monitor";

bool is_cca_family(GridMeasure m) {
  return m == GridMeasure::kCca || m == GridMeasure::kSvcca || m == GridMeasure::kPwcca;
}

// Examples a measure needs on summaries of `k` columns.
int64_t min_examples(GridMeasure m, int64_t k) {
  if (is_cca_family(m)) return k + 2;  // CCA needs n >= p + 2 (checks.h)
  if (m == GridMeasure::kDebiasedCka) return 4;
  return 2;
}

std::string steps_str(const std::vector<int64_t>& steps) {
  std::ostringstream out;
  out << steps.size() << " recorded: ";
  // Long runs are abbreviated: the first three and the last two are enough to see the spacing.
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps.size() > 6 && i == 3) {
      out << "..., ";
      i = steps.size() - 2;
    }
    out << steps[i] << (i + 1 < steps.size() ? ", " : "");
  }
  return out.str();
}

// One layer's output as an [n, p] float64 matrix (flattened or spatially pooled).
at::Tensor layer_matrix(const char* fn, const std::string& name, const at::Tensor& acts,
                        GridConv conv) {
  TORCH_CHECK_TYPE(!acts.is_complex(), fn, ": layer ", name,
                   " must have a real output, but got dtype ", acts.scalar_type());
  at::Tensor x = acts.to(at::kDouble);
  if (x.dim() == 1) return x.unsqueeze(1);
  if (x.dim() > 2 && conv == GridConv::kPool) {
    std::vector<int64_t> spatial;
    for (int64_t d = 2; d < x.dim(); ++d) spatial.push_back(d);
    x = x.mean(spatial);
  }
  return x.reshape({x.size(0), -1});
}

// U_k S_k of centered x: [n, p]: the top-k principal components, computed from whichever of
// X^T X ([p, p]) and X X^T ([n, n]) is smaller; the wide side from column blocks
// (detail::centered_gram: no float64 [n, p] copy). A layer with p <= k is kept whole.
at::Tensor reduce(const at::Tensor& x, int64_t summary_dims) {
  const int64_t n = x.size(0);
  const int64_t p = x.size(1);
  // Centered data has rank <= n - 1, so more columns would only add zeros.
  const int64_t k = std::min(summary_dims, n - 1);
  if (p <= summary_dims) return detail::center(x, at::kDouble).data.contiguous();
  if (p <= n) {
    const at::Tensor xc = detail::center(x, at::kDouble).data;
    auto [evals, evecs] = at::linalg_eigh(at::matmul(xc.t(), xc));
    // eigh sorts ascending: the top k are the last k columns, reversed into descending order.
    return at::matmul(xc, evecs.narrow(1, p - k, k).flip({1})).contiguous();
  }
  const detail::GramStats g = detail::centered_gram(x, at::kDouble);
  auto [evals, evecs] = at::linalg_eigh(g.gram);
  at::Tensor s = evals.narrow(0, n - k, k).flip({0}).clamp_min(0).sqrt() * g.scale;
  return (evecs.narrow(1, n - k, k).flip({1}) * s).contiguous();
}

// The model's own message: the TorchScript interpreter prefixes its error with both tracebacks,
// whose last line ("RuntimeError: ...") is the part that says what was wrong.
std::string model_message(const char* what) {
  std::string msg(what);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (msg.find("Traceback of TorchScript") == std::string::npos) return msg;
  const auto nl = msg.rfind('\n');
  return nl == std::string::npos ? msg : msg.substr(nl + 1);
}

// Runs the model on the probe for `layers`, in eval mode without gradients, restoring every
// training flag afterwards; an error of the model is rethrown as a c10::Error naming `fn`, the
// probe's shape and `when` (e.g. " at step 40").
Capture run_probe(const char* fn, const TappedModule& model, const at::Tensor& probe,
                  const std::vector<std::string>& layers, const std::string& when) {
  std::string error;
  {
    // Every submodule in eval mode, each one's own flag put back afterwards (a model with, say,
    // frozen batch-norm layers in eval mode keeps them so; Module::train(bool) would not). The
    // guard is counted per submodule and holds back runs of other threads (see EvalMode).
    EvalMode eval(model.module());
    at::NoGradGuard no_grad;
    try {
      return model.run({probe}, layers);
    } catch (const c10::Error& e) {
      error = model_message(e.what_without_backtrace());
    } catch (const std::exception& e) {  // the interpreter throws std::runtime_error
      error = model_message(e.what());
    }
  }
  TORCH_CHECK_VALUE(false, fn, ": the model must accept the probe, but it rejected probe of shape ",
                    detail::shape_str(probe), when, ": ", error);
}

}  // namespace

TrainingMonitor::TrainingMonitor(torch::jit::Module module, at::Tensor probe,
                                 MonitorOptions options)
    : TrainingMonitor(TappedModule(std::move(module)), std::move(probe), std::move(options)) {}

TrainingMonitor::TrainingMonitor(TappedModule model, at::Tensor probe, MonitorOptions options)
    : model_(std::move(model)), probe_(std::move(probe)), options_(std::move(options)) {
  constexpr const char* fn = "TrainingMonitor";
  TORCH_CHECK_VALUE(options_.summary_dims >= 1, fn, ": options.summary_dims must be >= 1, but got ",
                    options_.summary_dims);
  const GridConv conv = options_.grid.conv;
  TORCH_CHECK_VALUE(
      conv == GridConv::kAuto || conv == GridConv::kFlatten || conv == GridConv::kPool, fn,
      ": options.grid.conv must be auto, flatten or pool (fold and fourier "
      "change the examples a summary is over), but got ",
      to_string(conv));
  TORCH_CHECK_VALUE(probe_.defined(), fn,
                    ": probe must be a defined tensor, but got an "
                    "undefined one");
  TORCH_CHECK_VALUE(probe_.dim() >= 1 && probe_.size(0) >= 1, fn,
                    ": probe must have at least one example along dim 0, but got shape ",
                    detail::shape_str(probe_));
  examples_ = probe_.size(0);
  const int64_t needed = min_examples(options_.grid.measure, options_.summary_dims);
  TORCH_CHECK_VALUE(
      examples_ >= needed, fn, ": probe must have at least ", needed, " examples for the measure ",
      to_string(options_.grid.measure),
      is_cca_family(options_.grid.measure) ? " (summary_dims + 2: CCA needs n >= p + 2)" : "",
      ", but got ", examples_, " (probe shape ", detail::shape_str(probe_), ")");
  cell_options_ = options_.grid;
  cell_options_.conv = GridConv::kFlatten;
  layers_ = model_.select(options_.layers);
  TORCH_CHECK_VALUE(!layers_.empty(), fn,
                    ": the model must have at least one layer to record "
                    "(a module whose forward calls submodules), but got none");

  // A dry run validates the probe against the model and every layer's output now, rather than
  // at the first record() deep inside a training loop.
  const Capture cap = run_probe(fn, model_, probe_, layers_, "");
  for (const auto& name : layers_) {
    const auto values = cap.values(name);
    TORCH_CHECK_VALUE(!values.empty(), fn, ": layer ", name,
                      " must produce an output for the "
                      "probe, but it did not run (a branch forward did not take?)");
    const at::Tensor& v = values.front();
    TORCH_CHECK_VALUE(v.dim() >= 1 && v.size(0) == examples_, fn, ": layer ", name,
                      " must output one row per probe example (dim 0 = ", examples_,
                      "), but got shape ", detail::shape_str(v), " for probe shape ",
                      detail::shape_str(probe_));
  }
}

void TrainingMonitor::record(int64_t step) {
  record_from("TrainingMonitor::record", step, model_);
}

void TrainingMonitor::record(int64_t step, const TappedModule& model) {
  constexpr const char* fn = "TrainingMonitor::record";
  const auto& names = model.layer_names();
  for (const auto& name : layers_) {
    TORCH_CHECK_VALUE(std::find(names.begin(), names.end(), name) != names.end(), fn,
                      ": model must have every monitored layer, but it has no layer ", name);
  }
  record_from(fn, step, model);
}

void TrainingMonitor::record_from(const char* fn, int64_t step, const TappedModule& model) {
  TORCH_CHECK_VALUE(records_.empty() || step > records_.back().step, fn,
                    ": step must be greater than the last recorded step ",
                    records_.empty() ? 0 : records_.back().step, ", but got ", step);
  const Capture cap = run_probe(fn, model, probe_, layers_, " at step " + std::to_string(step));
  Record rec;
  rec.step = step;
  for (const auto& name : layers_) {
    const auto values = cap.values(name);
    TORCH_CHECK_VALUE(!values.empty(), fn, ": layer ", name,
                      " must produce an output for the probe, but it did not run at step ", step);
    const at::Tensor& v = values.front();
    TORCH_CHECK_VALUE(v.dim() >= 1 && v.size(0) == examples_, fn, ": layer ", name,
                      " must output one row per probe example (dim 0 = ", examples_,
                      "), but got shape ", detail::shape_str(v), " at step ", step);
    at::Tensor x = layer_matrix(fn, name, v, options_.grid.conv);
    // A diverged model (NaN/Inf) is reported here, not as NaN similarities later.
    TORCH_CHECK_VALUE(at::isfinite(x).all().item<bool>(), fn, ": layer ", name,
                      " must have finite activations on the probe, but got non-finite values at "
                      "step ",
                      step, " (did training diverge?)");
    rec.summaries.push_back(reduce(x, options_.summary_dims).cpu());
  }
  records_.push_back(std::move(rec));
}

std::vector<int64_t> TrainingMonitor::steps() const {
  std::vector<int64_t> out;
  out.reserve(records_.size());
  for (const auto& r : records_) out.push_back(r.step);
  return out;
}

const TrainingMonitor::Record& TrainingMonitor::find(const char* fn, int64_t step) const {
  const auto it = std::find_if(records_.begin(), records_.end(),
                               [step](const Record& r) { return r.step == step; });
  TORCH_CHECK_VALUE(it != records_.end(), fn, ": step must be a recorded step (",
                    steps_str(steps()), "), but got ", step);
  return *it;
}

at::Tensor TrainingMonitor::summary(const std::string& layer, int64_t step) const {
  constexpr const char* fn = "TrainingMonitor::summary";
  const auto it = std::find(layers_.begin(), layers_.end(), layer);
  TORCH_CHECK_VALUE(it != layers_.end(), fn, ": layer must be a monitored layer, but got ", layer);
  return find(fn, step).summaries[static_cast<size_t>(it - layers_.begin())];
}

Grid TrainingMonitor::grid(int64_t step) const {
  const Record& rec = find("TrainingMonitor::grid", step);
  NamedActivations acts;
  for (size_t i = 0; i < layers_.size(); ++i) acts.emplace_back(layers_[i], rec.summaries[i]);
  Grid g = similarity_grid(acts, cell_options_);
  g.options["summary_dims"] = std::to_string(options_.summary_dims);
  g.options["summary_conv"] = to_string(options_.grid.conv);
  g.options["step"] = std::to_string(step);
  return g;
}

double TrainingMonitor::to_latest(size_t layer, size_t r, std::string* reason) const {
  const std::string& name = layers_[layer];
  const Grid g = similarity_grid({{name, records_[r].summaries[layer]}},
                                 {{name, records_.back().summaries[layer]}}, cell_options_);
  if (reason != nullptr) *reason = g.undefined.empty() ? std::string() : g.undefined[0].reason;
  return g.values.item<double>();
}

Grid TrainingMonitor::dynamics() const {
  TORCH_CHECK_VALUE(!records_.empty(),
                    "TrainingMonitor::dynamics: at least one step must be "
                    "recorded, but got none (call record(step) first)");
  Grid g;
  g.rows = layers_;
  for (const auto& r : records_) g.cols.push_back(std::to_string(r.step));
  g.values = at::empty(
      {static_cast<int64_t>(layers_.size()), static_cast<int64_t>(records_.size())}, at::kDouble);
  auto v = g.values.accessor<double, 2>();
  std::map<std::string, size_t> reasons;
  for (size_t i = 0; i < layers_.size(); ++i) {
    for (size_t r = 0; r < records_.size(); ++r) {
      std::string why;
      const auto row = static_cast<int64_t>(i), col = static_cast<int64_t>(r);
      v[row][col] = to_latest(i, r, &why);
      if (why.empty()) continue;
      auto it = reasons.emplace(why, g.undefined.size()).first;
      if (it->second == g.undefined.size()) g.undefined.push_back({why, {}});
      g.undefined[it->second].cells.push_back({row, col});
    }
  }
  g.measure = to_string(options_.grid.measure) + "-to-latest";
  g.row_label = "layer";
  g.col_label = "step";
  g.examples = examples_;
  g.options["summary_dims"] = std::to_string(options_.summary_dims);
  g.options["summary_conv"] = to_string(options_.grid.conv);
  g.options["latest_step"] = std::to_string(records_.back().step);
  return g;
}

std::vector<int64_t> TrainingMonitor::convergence_steps(double threshold) const {
  constexpr const char* fn = "TrainingMonitor::convergence_steps";
  detail::check_unit_interval(fn, "threshold", threshold);
  TORCH_CHECK_VALUE(!records_.empty(), fn, ": at least one step must be recorded, but got none");
  std::vector<int64_t> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    size_t first = records_.size() - 1;
    if (std::isnan(to_latest(i, first))) {  // undefined (a constant layer): never converged
      out.push_back(-1);
      continue;
    }
    // Walk back from the latest until the similarity first drops below the threshold.
    while (first > 0 && to_latest(i, first - 1) >= threshold) --first;
    out.push_back(records_[first].step);
  }
  return out;
}

std::vector<std::string> TrainingMonitor::converged(double threshold, int64_t window) const {
  constexpr const char* fn = "TrainingMonitor::converged";
  detail::check_unit_interval(fn, "threshold", threshold);
  TORCH_CHECK_VALUE(window >= 1, fn, ": window must be >= 1, but got ", window);
  std::vector<std::string> out;
  if (static_cast<int64_t>(records_.size()) < window + 1) return out;
  const size_t latest = records_.size() - 1;
  for (size_t i = 0; i < layers_.size(); ++i) {
    bool ok = true;
    for (size_t r = latest - static_cast<size_t>(window); r < latest && ok; ++r) {
      ok = to_latest(i, r) >= threshold;
    }
    if (ok) out.push_back(layers_[i]);
  }
  return out;
}

std::vector<std::string> TrainingMonitor::freeze_suggestion(double threshold,
                                                            int64_t window) const {
  const auto done = converged(threshold, window);
  std::vector<std::string> out;
  for (const auto& name : layers_) {
    if (std::find(done.begin(), done.end(), name) == done.end()) break;
    out.push_back(name);
  }
  return out;
}

void TrainingMonitor::save(const std::string& path) const {
  auto payload = detail::make_payload(kKind);
  payload.insert(std::string("layers"), c10::List<std::string>(layers_));
  payload.insert(std::string("examples"), examples_);
  std::map<std::string, at::Tensor> state;
  state["steps"] = at::tensor(steps(), at::kLong);
  // One [records, n, k] tensor per layer: k is fixed per layer, so the records stack.
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::vector<at::Tensor> per_step;
    for (const auto& r : records_) per_step.push_back(r.summaries[i]);
    state["layer/" + layers_[i]] =
        records_.empty() ? at::empty({0, examples_, 0}, at::kDouble) : at::stack(per_step);
  }
  detail::put_state(payload, state);
  detail::save_stream_file("TrainingMonitor::save", path, payload);
}

void TrainingMonitor::load(const std::string& path) {
  constexpr const char* fn = "TrainingMonitor::load";
  const auto payload = detail::load_stream_file(fn, path, kKind);
  const auto layers_iv = detail::payload_get(fn, path, payload, "layers");
  const auto examples_iv = detail::payload_get(fn, path, payload, "examples");
  if (!layers_iv.isList() || !examples_iv.isInt()) detail::throw_corrupt(fn, path, "header");
  std::vector<std::string> layers;
  for (const auto& l : layers_iv.toListRef()) {
    if (!l.isString()) detail::throw_corrupt(fn, path, "layers");
    layers.push_back(l.toStringRef());
  }
  TORCH_CHECK_VALUE(layers == layers_, fn, ": the file's layers must equal the monitor's (",
                    c10::Join(", ", layers_), "), but ", path, " has ", c10::Join(", ", layers));
  TORCH_CHECK_VALUE(examples_iv.toInt() == examples_, fn,
                    ": the file's probe examples must equal "
                    "the monitor's (",
                    examples_, "), but ", path, " has ", examples_iv.toInt());
  auto state = detail::get_state(fn, path, payload, at::kCPU);
  const auto steps_it = state.find("steps");
  if (steps_it == state.end() || steps_it->second.dim() != 1 ||
      steps_it->second.scalar_type() != at::kLong) {
    detail::throw_corrupt(fn, path, "steps");
  }
  const at::Tensor steps_t = steps_it->second;
  const int64_t n_records = steps_t.size(0);
  std::vector<Record> records(static_cast<size_t>(n_records));
  for (int64_t r = 0; r < n_records; ++r) {
    records[static_cast<size_t>(r)].step = steps_t[r].item<int64_t>();
    if (r > 0 && records[static_cast<size_t>(r)].step <= records[static_cast<size_t>(r - 1)].step) {
      detail::throw_corrupt(fn, path, "steps (not increasing)");
    }
  }
  for (const auto& name : layers_) {
    const auto it = state.find("layer/" + name);
    if (it == state.end() || it->second.dim() != 3 || it->second.size(0) != n_records ||
        it->second.size(1) != examples_ || it->second.scalar_type() != at::kDouble) {
      detail::throw_corrupt(fn, path, "summaries");
    }
    if (!at::isfinite(it->second).all().item<bool>()) {
      detail::throw_corrupt(fn, path, "summaries (NaN or Inf)");
    }
    for (int64_t r = 0; r < n_records; ++r) {
      records[static_cast<size_t>(r)].summaries.push_back(it->second[r].contiguous());
    }
  }
  records_ = std::move(records);
}

}  // namespace svcca
