// Intervals and p-values for every cell of a grid, on resamples and permutations shared by all.
#include "svcca/inference/grid_inference.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>

#include "svcca/inference/permutation.h"
#include "svcca/inference/resampling.h"

namespace svcca {
namespace {

constexpr const char* kFn = "grid inference";

struct Slot {
  bool added = false;
  std::shared_ptr<const detail::ResampleLayer> layer;  // null: undefined, see reason
  std::string reason;
};

void add_reason(std::vector<UndefinedCells>& list, const std::string& reason, int64_t i,
                int64_t j) {
  for (auto& u : list) {
    if (u.reason == reason) {
      u.cells.emplace_back(i, j);
      return;
    }
  }
  list.push_back({reason, {{i, j}}});
}

}  // namespace

struct InferenceGridBuilder::Impl {
  std::vector<std::string> rows, cols;
  GridOptions grid_options;
  GridInferenceOptions options;
  std::string measure;
  std::unique_ptr<detail::Resampler> resampler;
  std::map<std::string, Slot> row_slots, col_slots;
  int64_t n = -1;
  int64_t bytes = 0;  // held by the layers' resampling state
  std::optional<at::Device> device;

  Slot& slot(const std::string& name, bool col) {
    auto& slots = (col && !cols.empty()) ? col_slots : row_slots;
    auto it = slots.find(name);
    TORCH_CHECK_VALUE(it != slots.end(), kFn, ": name must be a layer of the ",
                      col ? "columns" : "rows", ", but got \"", name, "\"");
    TORCH_CHECK_VALUE(!it->second.added, kFn, ": layer \"", name, "\" must be added once");
    return it->second;
  }
};

InferenceGridBuilder::InferenceGridBuilder(std::vector<std::string> rows,
                                           std::vector<std::string> cols, GridOptions grid_options,
                                           GridInferenceOptions options)
    : impl_(std::make_unique<Impl>()) {
  TORCH_CHECK_VALUE(!rows.empty(), kFn, ": rows must name at least one layer, but got none");
  TORCH_CHECK_VALUE(options.resamples >= 0, kFn, ": resamples must be >= 0, but got ",
                    options.resamples);
  TORCH_CHECK_VALUE(options.permutations >= 0, kFn, ": permutations must be >= 0, but got ",
                    options.permutations);
  TORCH_CHECK_VALUE(options.resamples > 0 || options.permutations > 0, kFn,
                    ": resamples or permutations must be >= 1, but both are 0");
  if (options.resamples > 0) detail::check_bootstrap_options(kFn, options.resamples, options.level);
  detail::check_workers(kFn, options.workers);
  const std::string measure = to_string(grid_options.measure);
  TORCH_CHECK_VALUE(grid_options.measure != GridMeasure::kMinibatchCka, kFn,
                    ": measure must be one of the one-shot measures for intervals and p-values, "
                    "but got \"minibatch-cka\" (its value depends on the batching)");
  const GridConv conv = resolved_conv(grid_options);
  TORCH_CHECK_VALUE(conv == GridConv::kFlatten || conv == GridConv::kPool || conv == GridConv::kCls,
                    kFn,
                    ": conv must be \"flatten\", \"pool\" or \"cls\" for intervals and "
                    "p-values, but got \"",
                    to_string(conv), "\"");
  impl_->resampler = detail::make_resampler(kFn, measure, grid_options, options.permutations > 0);
  impl_->measure = measure;
  for (const auto& r : rows) impl_->row_slots[r];
  for (const auto& c : cols) impl_->col_slots[c];
  impl_->rows = std::move(rows);
  impl_->cols = std::move(cols);
  impl_->grid_options = std::move(grid_options);
  impl_->options = options;
}

InferenceGridBuilder::~InferenceGridBuilder() = default;
InferenceGridBuilder::InferenceGridBuilder(InferenceGridBuilder&&) noexcept = default;
InferenceGridBuilder& InferenceGridBuilder::operator=(InferenceGridBuilder&&) noexcept = default;

void InferenceGridBuilder::add(const std::string& name, const at::Tensor& acts, bool col) {
  Slot& s = impl_->slot(name, col);
  TORCH_CHECK_VALUE(acts.defined() && acts.dim() >= 2 && acts.is_floating_point(), kFn,
                    ": layer \"", name, "\" must be a floating tensor [n, ...] with >= 2 dims");
  const int64_t n = acts.size(0);
  if (impl_->n < 0) {
    impl_->n = n;
    impl_->device = acts.device();
  }
  TORCH_CHECK_VALUE(n == impl_->n, kFn, ": layer \"", name, "\" must have ", impl_->n,
                    " examples as the layers before, but has ", n);
  s.added = true;
  at::Tensor mat = per_example_features(acts, impl_->grid_options);
  mat = mat.reshape({n, -1});
  if (!at::isfinite(mat).all().item<bool>()) {
    s.reason = "layer \"" + name + "\" has non-finite values";
    return;
  }
  try {
    s.layer = impl_->resampler->layer(kFn, name, mat);
  } catch (const c10::Error& e) {
    s.reason = e.what_without_backtrace();
    return;
  }
  impl_->bytes += s.layer->bytes();
  const int64_t budget = impl_->grid_options.memory_bytes;
  TORCH_CHECK_VALUE(budget <= 0 || impl_->bytes <= budget, kFn,
                    ": the layers' resampling state must fit memory_bytes = ", budget,
                    " bytes, but it holds ", impl_->bytes, " bytes after layer \"", name, "\" (",
                    impl_->n,
                    " examples: the CKA family keeps an n x n Gram matrix per "
                    "wide layer); use fewer examples or layers, or more memory");
}

void InferenceGridBuilder::add_undefined(const std::string& name, const std::string& reason,
                                         bool col) {
  Slot& s = impl_->slot(name, col);
  s.added = true;
  s.reason = reason;
}

void InferenceGridBuilder::apply(Grid& grid) const {
  const Impl& m = *impl_;
  const bool two = !m.cols.empty();
  const std::vector<std::string>& cols = two ? m.cols : m.rows;
  TORCH_CHECK_VALUE(grid.rows == m.rows && grid.cols == cols, kFn,
                    ": grid must have the rows and columns the builder was made with");
  std::vector<const Slot*> slots;
  for (const auto& r : m.rows) slots.push_back(&m.row_slots.at(r));
  if (two) {
    for (const auto& c : m.cols) slots.push_back(&m.col_slots.at(c));
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    const std::string& name = i < m.rows.size() ? m.rows[i] : m.cols[i - m.rows.size()];
    TORCH_CHECK_VALUE(slots[i]->added, kFn, ": layer \"", name, "\" must be added before apply()");
  }
  const int64_t nr = static_cast<int64_t>(m.rows.size());
  const int64_t nc = static_cast<int64_t>(cols.size());
  const int64_t off = two ? nr : 0;
  const at::Tensor values = grid.values.to(at::kDouble).cpu().contiguous();
  const double* v = values.data_ptr<double>();
  const bool mirror = !two && m.resampler->symmetric();

  GridInference out;
  out.resamples = m.options.resamples;
  out.level = m.options.resamples > 0 ? m.options.level : 0.0;
  out.method = m.options.resamples > 0 ? to_string(m.options.method) : "";
  out.permutations = m.options.permutations;
  out.seed = m.options.seed;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto full = [&] { return at::full({nr, nc}, nan, at::kDouble); };
  if (out.resamples > 0) {
    out.low = full(), out.high = full(), out.standard_error = full(), out.invalid = full();
  }
  if (out.permutations > 0) out.p_value = full(), out.null_mean = full();

  // The cells to evaluate, and the layers they need.
  std::vector<const detail::ResampleLayer*> layers;
  for (const Slot* s : slots) layers.push_back(s->layer.get());
  std::vector<std::pair<int64_t, int64_t>> cells, at;
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = mirror ? i : 0; j < nc; ++j) {
      if (!std::isfinite(v[i * nc + j])) continue;  // undefined in the grid, with its reason
      const Slot* a = slots[i];
      const Slot* b = slots[off + j];
      if (!a->layer || !b->layer) {
        const std::string& why = a->layer ? b->reason : a->reason;
        add_reason(out.undefined, why, i, j);
        if (mirror && i != j) add_reason(out.undefined, why, j, i);
        continue;
      }
      cells.emplace_back(i, off + j);
      at.emplace_back(i, j);
    }
  }
  auto set = [&](const at::Tensor& t, int64_t i, int64_t j, double x) {
    t[i][j] = x;
    if (mirror) t[j][i] = x;
  };
  if (!cells.empty() && m.n >= 1) {
    const at::Device device = *m.device;
    const int64_t workers = detail::resample_workers(
        *m.resampler, layers, device, m.grid_options.memory_bytes, m.options.workers);
    if (out.resamples > 0) {
      const detail::Resampler& r = *m.resampler;
      at::Tensor est =
          detail::resampled_cells(r, layers, cells, at::ones({m.n, 1}, at::kDouble), device);
      at::Tensor res = detail::resampled_cells(
          r, layers, cells, detail::Draws(m.options.seed).bootstrap_weights(m.n, out.resamples),
          device, workers);
      at::Tensor jack;
      if (m.options.method == IntervalMethod::kBca) {
        std::vector<at::Tensor> parts;
        const int64_t step = std::max<int64_t>(r.batch(), 64);  // as bootstrap(): slices to share
        for (int64_t s = 0; s < m.n; s += step) {
          const int64_t count = std::min(step, m.n - s);
          parts.push_back(detail::resampled_cells(
              r, layers, cells, detail::jackknife_weights(m.n, s, count), device, workers));
        }
        jack = at::cat(parts, 1);
      }
      for (size_t c = 0; c < cells.size(); ++c) {
        detail::Interval iv;
        std::string why;
        const auto [i, j] = at[c];
        if (detail::interval_of(est[c][0].item<double>(), res[c],
                                jack.defined() ? jack[c] : at::Tensor(), m.options.level,
                                m.options.method, &iv, &why)) {
          set(out.invalid, i, j, static_cast<double>(iv.invalid));
          set(out.low, i, j, iv.low);
          set(out.high, i, j, iv.high);
          set(out.standard_error, i, j, iv.standard_error);
        } else {
          set(out.invalid, i, j, static_cast<double>(iv.invalid));
          add_reason(out.undefined, "no interval: " + why, i, j);
          if (mirror && i != j) add_reason(out.undefined, "no interval: " + why, j, i);
        }
      }
    }
    if (out.permutations > 0) {
      const at::Tensor perms = detail::Draws(m.options.seed).permutations(m.n, out.permutations);
      const at::Tensor identity = at::arange(m.n, at::kLong).unsqueeze(0);
      for (size_t c = 0; c < cells.size(); ++c) {
        const auto [li, lj] = cells[c];
        const auto [i, j] = at[c];
        const double e =
            m.resampler->permuted(*layers[li], *layers[lj], identity)[0].item<double>();
        const at::Tensor null =
            detail::permuted_values(*m.resampler, *layers[li], *layers[lj], perms, workers);
        if (!std::isfinite(e) || !at::isfinite(null).all().item<bool>()) {
          add_reason(out.undefined, "no p-value: the measure is undefined on a permutation", i, j);
          continue;
        }
        set(out.p_value, i, j, detail::permutation_p_value(e, null, nullptr));
        set(out.null_mean, i, j, null.mean().item<double>());
      }
    }
  }
  grid.inference = std::move(out);
}

void add_grid_inference(Grid& grid, const NamedActivations& a, const NamedActivations& b,
                        const GridOptions& grid_options, const GridInferenceOptions& options) {
  std::vector<std::string> rows, cols;
  for (const auto& [name, t] : a) rows.push_back(name);
  for (const auto& [name, t] : b) cols.push_back(name);
  InferenceGridBuilder builder(rows, cols, grid_options, options);
  for (const auto& [name, t] : a) builder.add(name, t);
  for (const auto& [name, t] : b) builder.add(name, t, true);
  builder.apply(grid);
}

}  // namespace svcca
