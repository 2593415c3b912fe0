// Layer x layer similarity grids: per-layer moments and factors once, cross terms per pair.
#include "svcca/grid/grid.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "svcca/checks.h"
#include "svcca/conv/fourier.h"
#include "svcca/linalg.h"
#include "svcca/stream/covariance_accumulator.h"

namespace svcca {
namespace {

constexpr const char* kGridFn = "similarity_grid";

const std::vector<std::pair<GridMeasure, const char*>>& measure_names() {
  static const std::vector<std::pair<GridMeasure, const char*>> names = {
      {GridMeasure::kLinearCka, "cka"},  {GridMeasure::kDebiasedCka, "debiased-cka"},
      {GridMeasure::kRbfCka, "rbf-cka"}, {GridMeasure::kCca, "cca"},
      {GridMeasure::kSvcca, "svcca"},    {GridMeasure::kPwcca, "pwcca"}};
  return names;
}

const std::vector<std::pair<GridConv, const char*>>& conv_names() {
  static const std::vector<std::pair<GridConv, const char*>> names = {
      {GridConv::kAuto, "auto"},
      {GridConv::kFlatten, "flatten"},
      {GridConv::kPool, "pool"},
      {GridConv::kFold, "fold"},
      {GridConv::kFourier, "fourier"}};
  return names;
}

template <typename E>
std::string quoted_list(const std::vector<std::pair<E, const char*>>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << '"' << names[i].second << '"';
  return out.str();
}

bool is_cka_family(GridMeasure m) {
  return m == GridMeasure::kLinearCka || m == GridMeasure::kDebiasedCka ||
         m == GridMeasure::kRbfCka;
}

GridConv resolve_conv(GridConv conv, GridMeasure measure) {
  if (conv != GridConv::kAuto) return conv;
  return is_cka_family(measure) ? GridConv::kFlatten : GridConv::kPool;
}

Precision grid_precision(const GridOptions& o) {
  switch (o.measure) {
    case GridMeasure::kCca:
      return o.cca.precision;
    case GridMeasure::kSvcca:
      return o.svcca.cca.precision;
    case GridMeasure::kPwcca:
      return o.pwcca.cca.precision;
    case GridMeasure::kRbfCka:
      return o.rbf.precision;
    default:
      return o.precision;
  }
}

// Shortest decimal that reads back as the same double.
std::string num_str(double v) {
  for (int digits : {6, 15, 17}) {
    std::ostringstream out;
    out.precision(digits);
    out << v;
    if (digits == 17 || std::stod(out.str()) == v) return out.str();
  }
  return {};
}

const char* resize_mode_name(ResizeMode m) {
  switch (m) {
    case ResizeMode::kReference:
      return "reference";
    case ResizeMode::kNearest:
      return "nearest";
    case ResizeMode::kBilinear:
      return "bilinear";
    case ResizeMode::kBilinearAlignCorners:
      return "bilinear_align_corners";
    case ResizeMode::kBicubic:
      return "bicubic";
    case ResizeMode::kArea:
      return "area";
  }
  return "?";
}

void check_options(const char* fn, const GridOptions& o) {
  const GridConv conv = resolve_conv(o.conv, o.measure);
  switch (o.measure) {
    case GridMeasure::kCca:
      detail::check_cca_options(fn, o.cca);
      break;
    case GridMeasure::kSvcca:
      detail::check_svcca_options(fn, o.svcca);
      break;
    case GridMeasure::kPwcca:
      detail::check_cca_options(fn, o.pwcca.cca);
      break;
    case GridMeasure::kRbfCka:
      detail::check_bandwidth_options(fn, o.rbf);
      break;
    default:
      break;
  }
  TORCH_CHECK_VALUE(conv != GridConv::kFourier || o.measure == GridMeasure::kCca, fn,
                    ": conv \"fourier\" must go with measure \"cca\" (the mean Fourier CCA over "
                    "frequencies), but got measure \"",
                    to_string(o.measure), "\"");
  TORCH_CHECK_VALUE(o.recipe.position_stride >= 1, fn,
                    ": recipe.position_stride must be >= 1, but got ", o.recipe.position_stride);
}

std::map<std::string, std::string> options_map(const GridOptions& o) {
  std::map<std::string, std::string> m;
  const GridConv conv = resolve_conv(o.conv, o.measure);
  m["conv"] = to_string(conv);
  if (conv == GridConv::kFold || conv == GridConv::kFourier || conv == GridConv::kPool) {
    m["layout"] = o.recipe.layout == ConvLayout::kNCHW ? "NCHW" : "NHWC";
  }
  if (conv == GridConv::kFold) {
    const bool up = o.recipe.match == SpatialMatch::kInterpolateUp;
    m["match"] = up ? "interpolate" : "pool";
    m["resize"] = up ? resize_mode_name(o.recipe.upsample) : "area";
    m["position_stride"] = std::to_string(o.recipe.position_stride);
  }
  auto cca_opts = [&m](const CcaOptions& c) {
    m["epsilon"] = num_str(c.epsilon);
    m["variance_cutoff"] = num_str(c.variance_cutoff);
    m["rank_rtol"] = c.rank_rtol ? num_str(*c.rank_rtol) : "auto";
  };
  const Precision precision = grid_precision(o);
  m["precision"] = precision == Precision::kFloat64 ? "float64" : "input";
  switch (o.measure) {
    case GridMeasure::kLinearCka:
    case GridMeasure::kDebiasedCka:
      m["kernel"] = "linear";
      m["debiased"] = o.measure == GridMeasure::kDebiasedCka ? "true" : "false";
      break;
    case GridMeasure::kRbfCka:
      m["kernel"] = "rbf";
      m["debiased"] = o.rbf.debiased ? "true" : "false";
      if (o.rbf.sigma) {
        m["sigma"] = num_str(*o.rbf.sigma);
      } else {
        m["threshold"] = num_str(o.rbf.threshold);
      }
      break;
    case GridMeasure::kCca:
      cca_opts(o.cca);
      m["summary"] = conv == GridConv::kFourier ? "mean over frequencies" : "mean correlation";
      break;
    case GridMeasure::kSvcca:
      cca_opts(o.svcca.cca);
      if (o.svcca.dims) {
        m["dims"] = std::to_string(*o.svcca.dims);
      } else {
        m["fraction"] = num_str(o.svcca.fraction);
        m["keep"] = o.svcca.keep == SvccaKeep::kVariance ? "variance" : "singular_value_mass";
      }
      break;
    case GridMeasure::kPwcca:
      cca_opts(o.pwcca.cca);
      m["weighting"] =
          o.pwcca.weighting == PwccaWeighting::kReference ? "reference" : "canonical_variates";
      break;
  }
  return m;
}

// `layer "conv1"` or `layer "conv1" of a`.
std::string layer_label(const std::string& name, const char* side) {
  std::string s = "layer \"" + name + "\"";
  if (side != nullptr) s += std::string(" of ") + side;
  return s;
}

void check_layer_tensor(const char* fn, const std::string& label, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), fn, ": ", label,
                    " must be a defined tensor, but got an undefined one");
  TORCH_CHECK_VALUE(t.dim() >= 2 && t.numel() > 0, fn, ": ", label,
                    " must be a non-empty tensor with at least 2 dims ([n, features] or "
                    "[n, c, h, w]), but got shape ",
                    detail::shape_str(t));
  detail::check_matrix(fn, label.c_str(), t.dim() == 2 ? t : t.reshape({t.size(0), -1}));
}

// One model's layers (side: nullptr, "a" or "b"): non-empty, unique names, valid tensors.
void check_layers(const char* fn, const NamedActivations& layers, const char* side) {
  TORCH_CHECK_VALUE(!layers.empty(), fn, ": ", side ? side : "layers",
                    " must hold at least one layer, but got none");
  std::set<std::string> seen;
  for (const auto& [name, t] : layers) {
    TORCH_CHECK_VALUE(seen.insert(name).second, fn, ": layer names must be unique",
                      side ? std::string(" within ") + side : std::string(), ", but \"", name,
                      "\" is repeated");
    check_layer_tensor(fn, layer_label(name, side), t);
  }
}

// A layer of the union A ++ B, with the label that errors use.
struct LayerRef {
  std::string name;
  std::string label;
  at::Tensor acts;  // as given
};

void check_same_examples_and_device(const char* fn, const std::vector<LayerRef>& layers,
                                    bool two_models) {
  const LayerRef& first = layers.front();
  for (const auto& l : layers) {
    TORCH_CHECK_VALUE(
        l.acts.size(0) == first.acts.size(0), fn, ": ", two_models ? "a and b" : "layers",
        " must have the same number of examples (dim 0), but got ", first.label, " with shape ",
        detail::shape_str(first.acts), " and ", l.label, " with shape ", detail::shape_str(l.acts));
    TORCH_CHECK_VALUE(l.acts.device() == first.acts.device(), fn, ": ",
                      two_models ? "a and b" : "layers", " must be on the same device, but got ",
                      first.label, " on ", first.acts.device(), " and ", l.label, " on ",
                      l.acts.device());
  }
}

// Target spatial size of kFold: the largest (or, pooling down, the smallest) h and w of the grid.
std::pair<int64_t, int64_t> fold_size(const char* fn, const std::vector<LayerRef>& layers,
                                      const ConvRecipe& recipe) {
  const bool up = recipe.match == SpatialMatch::kInterpolateUp;
  int64_t h = up ? 0 : INT64_MAX, w = up ? 0 : INT64_MAX;
  for (const auto& l : layers) {
    TORCH_CHECK_VALUE(l.acts.dim() == 4, fn, ": ", l.label,
                      " must be 4-D ([n, c, h, w] or NHWC) for conv \"fold\" and \"fourier\", "
                      "but got shape ",
                      detail::shape_str(l.acts));
    at::Tensor t = detail::to_nchw(l.acts, recipe.layout);
    h = up ? std::max(h, t.size(2)) : std::min(h, t.size(2));
    w = up ? std::max(w, t.size(3)) : std::min(w, t.size(3));
  }
  return {h, w};
}

// A layer's [rows, features] matrix under the (resolved) conv.
at::Tensor layer_features(const at::Tensor& acts, GridConv conv, const ConvRecipe& recipe,
                          std::pair<int64_t, int64_t> fold_hw) {
  if (acts.dim() == 2) return acts;
  switch (conv) {
    case GridConv::kPool:
      if (acts.dim() == 4) return global_avg_pool(acts, recipe.layout);
      return acts.reshape({acts.size(0), acts.size(1), -1}).mean(2);
    case GridConv::kFold: {
      const bool up = recipe.match == SpatialMatch::kInterpolateUp;
      at::Tensor t = detail::to_nchw(acts, recipe.layout);
      if (t.size(2) != fold_hw.first || t.size(3) != fold_hw.second) {
        t = resize_spatial(t, fold_hw.first, fold_hw.second,
                           up ? recipe.upsample : ResizeMode::kArea);
      }
      return fold_positions(t, ConvLayout::kNCHW, recipe.position_stride);
    }
    default:
      return acts.reshape({acts.size(0), -1});
  }
}

// The cells to compute: layer indices into the union (x, y) and where the value goes; `mirror`
// also writes values[j][i] (one-model grids of symmetric measures).
struct Cell {
  int64_t x, y;
  int64_t row, col;
  bool mirror;
};

std::vector<Cell> grid_cells(int64_t n_rows, int64_t n_cols, bool two_models, bool symmetric) {
  std::vector<Cell> cells;
  for (int64_t i = 0; i < n_rows; ++i) {
    for (int64_t j = 0; j < n_cols; ++j) {
      if (two_models) {
        cells.push_back({i, n_rows + j, i, j, false});
      } else if (!symmetric || j >= i) {
        cells.push_back({i, j, i, j, symmetric && j > i});
      }
    }
  }
  return cells;
}

// Re-raises an error of one cell with the pair's names in front, keeping its type.
[[noreturn]] void rethrow_for_cell(const char* fn, const c10::Error& e, const std::string& x,
                                   const std::string& y) {
  const std::string msg = e.what_without_backtrace();
  if (dynamic_cast<const c10::ValueError*>(&e) != nullptr) {
    TORCH_CHECK_VALUE(false, fn, ": the cell of ", x, " (row) and ", y,
                      " (column) cannot be computed: ", msg);
  }
  if (dynamic_cast<const c10::TypeError*>(&e) != nullptr) {
    TORCH_CHECK_TYPE(false, fn, ": the cell of ", x, " (row) and ", y,
                     " (column) cannot be computed: ", msg);
  }
  TORCH_CHECK(false, fn, ": the cell of ", x, " (row) and ", y,
              " (column) cannot be computed: ", msg);
}

// Per-layer second-order statistics, from data or from an accumulator's state.
struct LayerMoments {
  std::string label;
  int64_t rows = 0;  // examples after the conv recipe
  int64_t features = 0;
  at::Tensor mean;          // [p], compute dtype
  at::Tensor cov;           // [p, p] unbiased covariance
  at::Tensor non_constant;  // [p] bool, exact
  at::Tensor centered;      // [rows, p] or undefined (streamed)
  // dtype of the layer's values (the default rank rule floors at their rounding level).
  at::ScalarType input_dtype = at::ScalarType::Undefined;
};

// Cross-covariances keyed by (min, max) layer index: streamed ones, or computed from the centered
// data when a cell first asks for them (so measures that do not need them never pay for them).
using CrossMap = std::map<std::pair<int64_t, int64_t>, at::Tensor>;

at::Tensor sxy_of(const std::vector<LayerMoments>& layers, CrossMap& cross, int64_t a, int64_t b) {
  if (a == b) return layers[a].cov;
  const std::pair<int64_t, int64_t> key{std::min(a, b), std::max(a, b)};
  auto it = cross.find(key);
  if (it == cross.end()) {
    const auto& lo = layers[key.first];
    const auto& hi = layers[key.second];
    TORCH_INTERNAL_ASSERT(
        lo.centered.defined() && hi.centered.defined(),
        "similarity_grid: a cross-covariance was neither streamed nor computable");
    it = cross.emplace(key, detail::cross_covariance(lo.centered, hi.centered)).first;
  }
  return a < b ? it->second : it->second.t();
}

detail::PairMoments pair_of(const std::vector<LayerMoments>& layers, CrossMap& cross, int64_t a,
                            int64_t b) {
  detail::PairMoments m;
  m.n = layers[a].rows;
  m.x_mean = layers[a].mean;
  m.y_mean = layers[b].mean;
  m.sxx = layers[a].cov;
  m.syy = layers[b].cov;
  m.sxy = sxy_of(layers, cross, a, b);
  m.x_non_constant = layers[a].non_constant;
  m.y_non_constant = layers[b].non_constant;
  m.x_centered = layers[a].centered;
  m.y_centered = layers[b].centered;
  m.result_dtype = at::kDouble;
  m.x_input_dtype = layers[a].input_dtype;
  m.y_input_dtype = layers[b].input_dtype;
  return m;
}

// Layers that some cell uses.
std::vector<int64_t> used_layers(const std::vector<Cell>& cells, size_t n_layers) {
  std::vector<bool> used(n_layers, false);
  for (const auto& c : cells) used[c.x] = used[c.y] = true;
  std::vector<int64_t> out;
  for (size_t l = 0; l < n_layers; ++l) {
    if (used[l]) out.push_back(static_cast<int64_t>(l));
  }
  return out;
}

// Cell values (0-d tensors, in cells' order) of the moment-based measures: cka, debiased-cka,
// cca, svcca, pwcca. Each layer's factors (eigh, whitening, ZCA) are computed once.
std::vector<at::Tensor> moment_cells(const char* fn, const std::vector<LayerMoments>& layers,
                                     CrossMap& cross, const std::vector<Cell>& cells,
                                     const GridOptions& o) {
  std::vector<at::Tensor> out;
  out.reserve(cells.size());
  const std::vector<int64_t> used = used_layers(cells, layers.size());
  const int64_t rows = layers.front().rows;
  auto guarded = [&](const Cell& c, auto&& compute) {
    try {
      out.push_back(compute());
    } catch (const c10::Error& e) {
      rethrow_for_cell(fn, e, layers[c.x].label, layers[c.y].label);
    }
  };

  if (o.measure == GridMeasure::kLinearCka || o.measure == GridMeasure::kDebiasedCka) {
    const bool debiased = o.measure == GridMeasure::kDebiasedCka;
    TORCH_CHECK_VALUE(rows >= 2, fn, ": layers must have at least 2 examples, but got ", rows);
    if (debiased) detail::check_debiased_examples(fn, rows);
    for (int64_t l : used)
      detail::check_not_constant(fn, layers[l].label.c_str(), layers[l].non_constant);
    for (const auto& c : cells) {
      guarded(c, [&] {
        return detail::linear_cka_from_moments(fn, pair_of(layers, cross, c.x, c.y), debiased);
      });
    }
    return out;
  }

  // CCA family: factors once per layer.
  detail::FactorOptions fopt;
  if (o.measure == GridMeasure::kCca) fopt = detail::factor_options(o.cca);
  if (o.measure == GridMeasure::kSvcca) fopt = detail::svcca_factor_options(o.svcca);
  if (o.measure == GridMeasure::kPwcca) fopt = detail::factor_options(o.pwcca.cca);
  std::vector<detail::LayerFactors> factors(layers.size());
  std::vector<at::Tensor> zca(layers.size());
  const bool need_zca =
      o.measure == GridMeasure::kPwcca && o.pwcca.weighting == PwccaWeighting::kReference;
  for (int64_t l : used) {
    const auto& lm = layers[l];
    if (o.measure != GridMeasure::kSvcca) {
      TORCH_CHECK_VALUE(lm.rows >= lm.features + 2, fn, ": ", lm.label,
                        " must have at least p + 2 = ", lm.features + 2, " examples for ",
                        to_string(o.measure), " (centered data has rank <= n - 1), but got ",
                        lm.rows, " examples of ", lm.features,
                        " features; use measure svcca or fewer features");
    } else {
      TORCH_CHECK_VALUE(lm.rows >= 2, fn, ": ", lm.label,
                        " must have at least 2 examples, but got ", lm.rows);
    }
    factors[l] =
        detail::factor_layer(fn, lm.label.c_str(), lm.cov, lm.non_constant,
                             detail::with_input_floor(fopt, lm.input_dtype, lm.mean, lm.cov));
    if (need_zca) zca[l] = detail::symmetric_whitening(factors[l]);
  }
  // With the data at hand, cca and svcca cells need only each layer's whitened data
  // Z = X_kept W ([rows, r]): Wx^T Sxy Wy = Zx^T Zy / (rows - 1). A pair then costs rows * rx * ry
  // (SVCCA keeps r < p directions) instead of rows * px * py plus two O(p^3) products.
  bool whitened = o.measure == GridMeasure::kCca || o.measure == GridMeasure::kSvcca;
  for (int64_t l : used) whitened = whitened && layers[l].centered.defined();
  std::vector<at::Tensor> z(layers.size());
  if (whitened) {
    for (int64_t l : used) {
      z[l] = detail::whitened_data(factors[l], layers[l].centered,
                                   detail::ill_conditioned(factors[l]));
    }
  }
  for (const auto& c : cells) {
    guarded(c, [&]() -> at::Tensor {
      if (whitened) {
        at::Tensor m = at::mm(detail::mh(z[c.x]), z[c.y]).div_(static_cast<double>(rows - 1));
        // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
        return at::linalg_svdvals(m).clamp(0.0, 1.0).mean();
      }
      if (o.measure == GridMeasure::kPwcca) {
        return detail::pwcca_from_factors(fn, factors[c.x], factors[c.y], zca[c.x], zca[c.y],
                                          pair_of(layers, cross, c.x, c.y), o.pwcca)
            .score;
      }
      return detail::cca_core(factors[c.x], factors[c.y], sxy_of(layers, cross, c.x, c.y),
                              /*with_vectors=*/false)
          .correlations.mean();
    });
  }
  return out;
}

std::vector<at::Tensor> rbf_cells(const char* fn, const std::vector<LayerRef>& refs,
                                  const std::vector<at::Tensor>& mats,
                                  const std::vector<Cell>& cells, const GridOptions& o) {
  const RbfCkaOptions& r = o.rbf;
  const int64_t n = mats.front().size(0);
  TORCH_CHECK_VALUE(n >= 2, fn, ": layers must have at least 2 examples, but got ", n);
  if (r.debiased) detail::check_debiased_examples(fn, n);
  std::vector<at::Tensor> kc(mats.size()), self(mats.size());
  for (int64_t l : used_layers(cells, mats.size())) {
    const char* label = refs[l].label.c_str();
    detail::check_not_constant(fn, label, detail::non_constant_columns(mats[l]));
    const auto dtype = detail::compute_dtype(mats[l], mats[l], r.precision);
    at::Tensor k =
        detail::rbf_gram(fn, label, detail::center(mats[l], dtype).data, r.threshold, r.sigma);
    kc[l] = detail::center_gram(k, r.debiased);
    self[l] = kc[l].square().sum();
    detail::check_self_hsic(fn, label, self[l], k.square().sum(), n, r.debiased);
  }
  std::vector<at::Tensor> out;
  for (const auto& c : cells) {
    out.push_back((kc[c.x] * kc[c.y]).sum() / (self[c.x] * self[c.y]).sqrt());
  }
  return out;
}

// Fourier CCA cells. When every layer has one spatial size, the frequency grid is shared and each
// layer's own work is done once: FFT at the solved frequencies, centering, batched covariance and
// whitening W, and the whitened spectra Z = X W ([F, N, C]); a pair is then Zx^H Zy / (N - 1)
// (= Wx^H Sxy Wy, what fourier_cca decomposes) and batched svdvals, with fourier_cca's rules for
// valid correlations, mirrored frequencies and the mean. Layers of different sizes crop the
// frequency grid per pair, so there each cell runs fourier_cca itself.
std::vector<at::Tensor> fourier_cells(const char* fn, const std::vector<LayerRef>& refs,
                                      const std::vector<Cell>& cells, const GridOptions& o) {
  std::vector<at::Tensor> nchw;
  bool same_size = true;
  for (const auto& r : refs) {
    nchw.push_back(detail::to_nchw(r.acts, o.recipe.layout));
    same_size = same_size && nchw.back().size(2) == nchw.front().size(2) &&
                nchw.back().size(3) == nchw.front().size(3);
  }
  std::vector<at::Tensor> out;
  if (!same_size) {
    FourierCcaOptions f;
    f.layout = o.recipe.layout;
    f.epsilon = o.cca.epsilon;
    f.variance_cutoff = o.cca.variance_cutoff;
    f.rank_rtol = o.cca.rank_rtol;
    f.precision = o.cca.precision;
    for (const auto& c : cells) {
      try {
        out.push_back(fourier_cca(refs[c.x].acts, refs[c.y].acts, f).mean);
      } catch (const c10::Error& e) {
        rethrow_for_cell(fn, e, refs[c.x].label, refs[c.y].label);
      }
    }
    return out;
  }

  at::ScalarType real = at::kDouble;
  if (o.cca.precision == Precision::kInput) {
    real = nchw.front().scalar_type();
    for (const auto& t : nchw) real = at::promote_types(real, t.scalar_type());
  }
  const at::ScalarType cplx = real == at::kFloat ? at::kComplexFloat : at::kComplexDouble;
  const int64_t n = nchw.front().size(0);
  const auto grid = detail::frequency_grid(nchw.front().size(2), nchw.front().size(3),
                                           nchw.front().size(2), nchw.front().size(3),
                                           /*conjugate_symmetry=*/true);
  detail::FactorOptions fopt = detail::factor_options(o.cca);
  std::vector<at::Tensor> z(refs.size()), rank(refs.size());
  for (int64_t l : used_layers(cells, refs.size())) {
    const at::Tensor& a = nchw[l];
    const int64_t c = a.size(1);
    TORCH_CHECK_VALUE(n >= c + 2, fn, ": ", refs[l].label, " must have at least C + 2 = ", c + 2,
                      " examples for Fourier CCA (each frequency is one CCA of the channels over "
                      "the examples), but got shape ",
                      detail::shape_str(refs[l].acts));
    at::Tensor non_constant = (a.amax(0) != a.amin(0)).flatten(1).any(1);
    TORCH_CHECK_VALUE(non_constant.any().item<bool>(), fn, ": ", refs[l].label,
                      " must have at least one non-constant channel, but all ", c,
                      " channels are constant over the examples");
    at::Tensor xs =
        detail::spectra_at(a, grid.x_rows, grid.x_cols, grid.solved, grid.w, cplx, cplx);
    xs = xs - xs.mean(1, /*keepdim=*/true);
    at::Tensor cov = detail::batched_cross_covariance(xs, xs);  // [F, C, C]
    auto w = detail::batched_whitening(cov, non_constant, fopt,
                                       detail::spectral_noise_floor(a, cov, o.cca.rank_rtol, real));
    z[l] = at::matmul(xs, w.whitening);  // [F, N, C]
    rank[l] = w.rank;
  }
  const at::Tensor src = at::tensor(grid.source, at::kLong).to(nchw.front().device());
  for (const auto& c : cells) {
    at::Tensor m = at::matmul(detail::mh(z[c.x]), z[c.y]).div_(static_cast<double>(n - 1));
    // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
    at::Tensor s = at::linalg_svdvals(m).clamp(0.0, 1.0);  // [F, k]
    const int64_t k = s.size(1);
    at::Tensor valid = at::arange(k, s.options().dtype(at::kLong)).unsqueeze(0) <
                       at::minimum(rank[c.x], rank[c.y]).unsqueeze(1);
    s = (s * valid.to(s.scalar_type())).index_select(0, src);
    out.push_back(s.sum() / valid.index_select(0, src).sum().to(s.scalar_type()));
  }
  return out;
}

Grid assemble(const std::vector<std::string>& rows, const std::vector<std::string>& cols,
              bool two_models, const std::vector<Cell>& cells, const std::vector<at::Tensor>& vals,
              int64_t examples, const GridOptions& o) {
  Grid g;
  g.rows = rows;
  g.cols = cols;
  g.measure = to_string(o.measure);
  g.row_label = two_models ? "model A layer" : "layer";
  g.col_label = two_models ? "model B layer" : "layer";
  g.examples = examples;
  g.options = options_map(o);
  std::vector<at::Tensor> flat;
  flat.reserve(vals.size());
  for (const auto& v : vals) flat.push_back(v.detach().reshape({}).to(at::kDouble));
  // One transfer for all cells (not one .item() per cell).
  at::Tensor stacked = at::stack(flat).to(at::kCPU).contiguous();
  const double* p = stacked.data_ptr<double>();
  g.values = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(cols.size())},
                      std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  auto acc = g.values.accessor<double, 2>();
  for (size_t k = 0; k < cells.size(); ++k) {
    const auto& c = cells[k];
    acc[c.row][c.col] = p[k];
    if (c.mirror) acc[c.col][c.row] = p[k];
  }
  return g;
}

Grid grid_impl(const NamedActivations& a, const NamedActivations* b, const GridOptions& o) {
  const char* fn = kGridFn;
  const bool two_models = b != nullptr;
  check_options(fn, o);
  check_layers(fn, a, two_models ? "a" : nullptr);
  if (two_models) check_layers(fn, *b, "b");

  std::vector<LayerRef> refs;
  std::vector<std::string> row_names, col_names;
  for (const auto& [name, t] : a) {
    refs.push_back({name, layer_label(name, two_models ? "a" : nullptr), t});
    row_names.push_back(name);
  }
  if (two_models) {
    for (const auto& [name, t] : *b) {
      refs.push_back({name, layer_label(name, "b"), t});
      col_names.push_back(name);
    }
  } else {
    col_names = row_names;
  }
  check_same_examples_and_device(fn, refs, two_models);

  const GridConv conv = resolve_conv(o.conv, o.measure);
  const bool symmetric = o.measure != GridMeasure::kPwcca;
  const auto cells = grid_cells(static_cast<int64_t>(row_names.size()),
                                static_cast<int64_t>(col_names.size()), two_models, symmetric);
  const int64_t examples = refs.front().acts.size(0);

  std::vector<at::Tensor> vals;
  if (conv == GridConv::kFourier) {
    fold_size(fn, refs, o.recipe);  // every layer 4-D
    vals = fourier_cells(fn, refs, cells, o);
    return assemble(row_names, col_names, two_models, cells, vals, examples, o);
  }
  std::pair<int64_t, int64_t> hw{0, 0};
  if (conv == GridConv::kFold) hw = fold_size(fn, refs, o.recipe);
  std::vector<at::Tensor> mats;
  for (const auto& r : refs) mats.push_back(layer_features(r.acts, conv, o.recipe, hw));

  if (o.measure == GridMeasure::kRbfCka) {
    vals = rbf_cells(fn, refs, mats, cells, o);
    return assemble(row_names, col_names, two_models, cells, vals, examples, o);
  }

  // Compute dtype: float64, or (kInput) the promoted dtype of all layers, so that every pair
  // runs in one dtype.
  at::ScalarType dtype = at::kDouble;
  if (grid_precision(o) == Precision::kInput) {
    dtype = mats.front().scalar_type();
    for (const auto& m : mats) dtype = at::promote_types(dtype, m.scalar_type());
  }
  std::vector<LayerMoments> layers(mats.size());
  for (int64_t l : used_layers(cells, mats.size())) {
    auto c = detail::center(mats[l], dtype);
    LayerMoments& lm = layers[l];
    lm.label = refs[l].label;
    lm.rows = mats[l].size(0);
    lm.features = mats[l].size(1);
    lm.mean = c.mean;
    lm.centered = c.data;
    lm.cov = detail::covariance(c.data);
    lm.non_constant = detail::non_constant_columns(mats[l]);
    lm.input_dtype = mats[l].scalar_type();
  }
  CrossMap cross;
  vals = moment_cells(fn, layers, cross, cells, o);
  return assemble(row_names, col_names, two_models, cells, vals, examples, o);
}

}  // namespace

GridMeasure parse_grid_measure(const char* fn, const std::string& name, const std::string& value) {
  for (const auto& [m, s] : measure_names()) {
    if (value == s) return m;
  }
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of ", quoted_list(measure_names()),
                    ", but got \"", value, "\"");
}

std::string to_string(GridMeasure measure) {
  for (const auto& [m, s] : measure_names()) {
    if (m == measure) return s;
  }
  return "?";
}

GridConv parse_grid_conv(const char* fn, const std::string& name, const std::string& value) {
  for (const auto& [c, s] : conv_names()) {
    if (value == s) return c;
  }
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of ", quoted_list(conv_names()),
                    ", but got \"", value, "\"");
}

std::string to_string(GridConv conv) {
  for (const auto& [c, s] : conv_names()) {
    if (c == conv) return s;
  }
  return "?";
}

Grid similarity_grid(const NamedActivations& layers, const GridOptions& options) {
  return grid_impl(layers, nullptr, options);
}

Grid similarity_grid(const NamedActivations& a, const NamedActivations& b,
                     const GridOptions& options) {
  return grid_impl(a, &b, options);
}

// ---- Streaming ---------------------------------------------------------------------------------

struct GridAccumulator::Impl {
  std::vector<std::string> rows, cols;
  bool two_models = false;
  GridOptions options;
  GridConv conv = GridConv::kFlatten;
  std::optional<std::pair<int64_t, int64_t>> fold_hw;  // fixed by the first batch
  CovarianceAccumulator acc;
  int64_t examples = 0;
  std::vector<int64_t> features;       // per layer after the conv recipe, from the first batch
  std::vector<at::ScalarType> dtypes;  // per layer, from the first batch
  // debiased-cka: the fourth-moment sums its unbiased HSIC needs beyond the co-moments, taken
  // about a fixed shift per layer c (the first batch's mean; HSIC_1 is translation invariant, and
  // the shift keeps the sums from cancelling when features have large means). With x' = x - c and
  // a = ||x'||^2 per row: per layer sum a^2 and sum a x'; per kept pair (i, j) sum a_i a_j,
  // sum a_i x'_j and sum a_j x'_i. float64, on the layers' device.
  std::vector<at::Tensor> shift, sum_aa, sum_ax;
  std::map<std::pair<int64_t, int64_t>, std::array<at::Tensor, 3>> pair_sums;

  void add_debiased_sums(const std::vector<at::Tensor>& mats);
  at::Tensor streamed_debiased_cka(const char* fn, const std::map<std::string, at::Tensor>& state,
                                   int64_t i, int64_t j, int64_t n) const;

  Impl(std::vector<std::string> r, std::vector<std::string> c, GridOptions o,
       CovarianceAccumulatorOptions acc_options)
      : rows(std::move(r)),
        cols(std::move(c)),
        two_models(!cols.empty()),
        options(std::move(o)),
        conv(resolve_conv(options.conv, options.measure)),
        acc(std::move(acc_options)) {}
};

namespace {

void check_names(const char* fn, const std::vector<std::string>& names, const char* what) {
  TORCH_CHECK_VALUE(!names.empty(), fn, ": ", what, " must name at least one layer, but got none");
  std::set<std::string> seen;
  for (const auto& n : names) {
    TORCH_CHECK_VALUE(seen.insert(n).second, fn, ": ", what, " must be unique, but \"", n,
                      "\" is repeated");
  }
}

// Internal accumulator layer names: A's layers then B's, by index (A and B may share names).
CovarianceAccumulatorOptions accumulator_options(size_t n_rows, size_t n_cols) {
  CovarianceAccumulatorOptions o;
  o.layers.clear();
  for (size_t i = 0; i < n_rows + n_cols; ++i) o.layers.push_back(std::to_string(i));
  if (n_cols > 0) {
    for (size_t i = 0; i < n_rows; ++i) {
      for (size_t j = 0; j < n_cols; ++j) o.pairs.push_back({o.layers[i], o.layers[n_rows + j]});
    }
  }
  return o;
}

// The batch's tensors in the order of `names`, matched by name.
std::vector<at::Tensor> by_name(const char* fn, const NamedActivations& batch,
                                const std::vector<std::string>& names, const char* side) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : batch) {
    TORCH_CHECK_VALUE(m.emplace(name, t).second, fn, ": ", side,
                      " must name each layer once, but \"", name, "\" is repeated");
  }
  std::vector<at::Tensor> out;
  for (const auto& n : names) {
    auto it = m.find(n);
    TORCH_CHECK_VALUE(it != m.end(), fn, ": ", side,
                      " must hold every layer given at construction, but \"", n, "\" is missing");
    out.push_back(it->second);
  }
  TORCH_CHECK_VALUE(m.size() == names.size(), fn, ": ", side, " must hold only the ", names.size(),
                    " layers given at construction, but got ", m.size());
  return out;
}

}  // namespace

// Adds one batch's debiased-cka sums (see Impl); the first batch fixes the shifts. Called after
// the covariance accumulator accepted the batch, so shapes and values are already checked.
void GridAccumulator::Impl::add_debiased_sums(const std::vector<at::Tensor>& mats) {
  Impl& s = *this;
  std::vector<at::Tensor> xs, as;
  for (size_t l = 0; l < mats.size(); ++l) {
    at::Tensor x = mats[l].to(at::kDouble);
    if (s.shift.size() <= l) {
      s.shift.push_back(x.mean(0));
      s.sum_aa.push_back(at::zeros({}, x.options()));
      s.sum_ax.push_back(at::zeros({x.size(1)}, x.options()));
    }
    x = x - s.shift[l];
    at::Tensor a = x.square().sum(1);
    s.sum_aa[l] += at::dot(a, a);
    s.sum_ax[l] += at::mv(x.t(), a);
    xs.push_back(x);
    as.push_back(a);
  }
  for (const auto& [i, j] : s.acc.pair_indices()) {
    auto it = s.pair_sums.find({i, j});
    if (it == s.pair_sums.end()) {
      it = s.pair_sums
               .emplace(std::make_pair(i, j),
                        std::array<at::Tensor, 3>{at::zeros({}, xs[i].options()),
                                                  at::zeros({xs[j].size(1)}, xs[j].options()),
                                                  at::zeros({xs[i].size(1)}, xs[i].options())})
               .first;
    }
    it->second[0] += at::dot(as[i], as[j]);
    it->second[1] += at::mv(xs[j].t(), as[i]);
    it->second[2] += at::mv(xs[i].t(), as[j]);
  }
}

// Debiased linear CKA of layers i and j (i <= j) from the streamed sums. With d = mean - c,
// e the same for j, G = sum x' y'^T = C + n d e^T (C the centered cross co-moment) and the
// centered row norms |x - mean|^2 = a - 2 x'.d + |d|^2:
//   sum_rows |x - mean|^2 |y - mean|^2 = sum a b - 2 e.(sum a y') - 2 d.(sum b x') + 4 d^T G e
//       + |e|^2 sum a + |d|^2 sum b - 3 n |d|^2 |e|^2,   sum a = tr(C_ii) + n |d|^2.
at::Tensor GridAccumulator::Impl::streamed_debiased_cka(
    const char* fn, const std::map<std::string, at::Tensor>& state, int64_t i, int64_t j,
    int64_t n) const {
  const Impl& s = *this;
  auto comoment = [&](int64_t a, int64_t b) {
    if (a == b) return state.at("comoment." + std::to_string(a));
    return state.at("cross." + std::to_string(a) + "." + std::to_string(b));
  };
  auto shift_of = [&](int64_t l) { return state.at("mean." + std::to_string(l)) - s.shift[l]; };
  const double nd = static_cast<double>(n);
  // sum over rows of |x - mean|^2 |y - mean|^2 for layers a <= b.
  auto dd = [&](int64_t a, int64_t b) {
    at::Tensor d = shift_of(a), e = shift_of(b);
    at::Tensor g = comoment(a, b) + nd * at::outer(d, e);
    at::Tensor sab, say, sbx;
    if (a == b) {
      sab = s.sum_aa[a];
      say = s.sum_ax[a];
      sbx = s.sum_ax[a];
    } else {
      const auto& p = s.pair_sums.at({a, b});
      sab = p[0];
      say = p[1];
      sbx = p[2];
    }
    at::Tensor dsq = d.dot(d), esq = e.dot(e);
    at::Tensor sum_a = comoment(a, a).trace() + nd * dsq;
    at::Tensor sum_b = comoment(b, b).trace() + nd * esq;
    return sab - 2.0 * e.dot(say) - 2.0 * d.dot(sbx) + 4.0 * d.dot(at::mv(g, e)) + esq * sum_a +
           dsq * sum_b - 3.0 * nd * dsq * esq;
  };
  detail::DebiasedSums sums;
  sums.xty_sq = comoment(i, j).square().sum();
  sums.xtx_sq = comoment(i, i).square().sum();
  sums.yty_sq = comoment(j, j).square().sum();
  sums.dxdy = dd(i, j);
  sums.dxdx = dd(i, i);
  sums.dydy = dd(j, j);
  sums.sqx = comoment(i, i).trace();
  sums.sqy = comoment(j, j).trace();
  return detail::debiased_cka_from_sums(fn, sums, n);
}

GridAccumulator::GridAccumulator(std::vector<std::string> rows, std::vector<std::string> cols,
                                 GridOptions options) {
  constexpr const char* fn = "GridAccumulator";
  check_options(fn, options);
  check_names(fn, rows, "rows");
  if (!cols.empty()) check_names(fn, cols, "cols");
  const GridMeasure m = options.measure;
  TORCH_CHECK_VALUE(m == GridMeasure::kLinearCka || m == GridMeasure::kDebiasedCka ||
                        m == GridMeasure::kCca || m == GridMeasure::kSvcca ||
                        m == GridMeasure::kPwcca,
                    fn,
                    ": measure must be one that streams exactly through moments (\"cka\", "
                    "\"debiased-cka\", \"cca\", \"svcca\" or \"pwcca\"), but got \"",
                    to_string(m),
                    "\" (it needs every example at once: use similarity_grid, or "
                    "MinibatchCkaAccumulator for the minibatch estimator)");
  TORCH_CHECK_VALUE(resolve_conv(options.conv, m) != GridConv::kFourier, fn,
                    ": conv must not be \"fourier\" when streaming (it needs every example at "
                    "once), but got \"fourier\"");
  auto acc_options = accumulator_options(rows.size(), cols.size());
  impl_ = std::make_unique<Impl>(std::move(rows), std::move(cols), std::move(options),
                                 std::move(acc_options));
}

GridAccumulator::~GridAccumulator() = default;
GridAccumulator::GridAccumulator(GridAccumulator&&) noexcept = default;
GridAccumulator& GridAccumulator::operator=(GridAccumulator&&) noexcept = default;

void GridAccumulator::update(const NamedActivations& a, const NamedActivations& b) {
  constexpr const char* fn = "GridAccumulator::update";
  Impl& s = *impl_;
  if (!s.two_models) {
    TORCH_CHECK_VALUE(b.empty(), fn,
                      ": b must be empty for a one-model grid (constructed without "
                      "cols), but got ",
                      b.size(), " layers");
  }
  const char* side_a = s.two_models ? "a" : "layers";
  std::vector<LayerRef> refs;
  auto ta = by_name(fn, a, s.rows, side_a);
  for (size_t i = 0; i < ta.size(); ++i) {
    refs.push_back({s.rows[i], layer_label(s.rows[i], s.two_models ? "a" : nullptr), ta[i]});
  }
  if (s.two_models) {
    auto tb = by_name(fn, b, s.cols, "b");
    for (size_t j = 0; j < tb.size(); ++j)
      refs.push_back({s.cols[j], layer_label(s.cols[j], "b"), tb[j]});
  }
  for (const auto& r : refs) check_layer_tensor(fn, r.label, r.acts);
  check_same_examples_and_device(fn, refs, s.two_models);

  std::pair<int64_t, int64_t> hw{0, 0};
  if (s.conv == GridConv::kFold)
    hw = s.fold_hw ? *s.fold_hw : fold_size(fn, refs, s.options.recipe);
  std::vector<at::Tensor> mats;
  for (const auto& r : refs) {
    if (s.conv == GridConv::kFold) {
      TORCH_CHECK_VALUE(r.acts.dim() == 4, fn, ": ", r.label,
                        " must be 4-D ([n, c, h, w] or NHWC) for conv \"fold\", but got shape ",
                        detail::shape_str(r.acts));
    }
    mats.push_back(layer_features(r.acts, s.conv, s.options.recipe, hw));
  }
  // CovarianceAccumulator checks these too, but only knows its internal layer numbers.
  for (size_t l = 0; l < mats.size() && !s.features.empty(); ++l) {
    TORCH_CHECK_VALUE(mats[l].size(1) == s.features[l], fn, ": ", refs[l].label, " must have ",
                      s.features[l], " features (after conv \"", to_string(s.conv),
                      "\") as in earlier batches, but got ", mats[l].size(1), " from shape ",
                      detail::shape_str(refs[l].acts));
    TORCH_CHECK_TYPE(mats[l].scalar_type() == s.dtypes[l], fn, ": ", refs[l].label,
                     " must have dtype ", s.dtypes[l], " as in earlier batches, but got ",
                     mats[l].scalar_type());
  }
  s.acc.update(mats);
  if (s.options.measure == GridMeasure::kDebiasedCka) s.add_debiased_sums(mats);
  if (s.features.empty()) {
    for (const auto& m : mats) {
      s.features.push_back(m.size(1));
      s.dtypes.push_back(m.scalar_type());
    }
  }
  if (s.conv == GridConv::kFold) s.fold_hw = hw;
  s.examples += refs.front().acts.size(0);
}

int64_t GridAccumulator::n() const {
  return impl_->examples;
}

Grid GridAccumulator::result() const {
  constexpr const char* fn = "GridAccumulator::result";
  const Impl& s = *impl_;
  TORCH_CHECK_VALUE(s.examples > 0, fn,
                    ": the accumulator must have seen at least one batch, but "
                    "it is empty");
  const int64_t rows = s.acc.n();
  TORCH_CHECK_VALUE(rows >= 2, fn, ": layers must have at least 2 examples, but got ", rows);
  const auto state = s.acc.state();
  const size_t n_layers = s.rows.size() + s.cols.size();
  const double scale = 1.0 / static_cast<double>(rows - 1);
  std::vector<LayerMoments> layers(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string id = std::to_string(l);
    LayerMoments& lm = layers[l];
    const bool is_row = l < s.rows.size();
    lm.label = is_row ? layer_label(s.rows[l], s.two_models ? "a" : nullptr)
                      : layer_label(s.cols[l - s.rows.size()], "b");
    lm.rows = rows;
    lm.mean = state.at("mean." + id);
    lm.cov = state.at("comoment." + id).mul_(scale);
    lm.features = lm.cov.size(0);
    lm.non_constant = state.at("max." + id) != state.at("min." + id);
    lm.input_dtype = s.acc.input_dtypes().at(l);
  }
  CrossMap cross;
  for (const auto& [a, b] : s.acc.pair_indices()) {
    cross[{a, b}] = state.at("cross." + std::to_string(a) + "." + std::to_string(b)).mul_(scale);
  }
  const bool symmetric = s.options.measure != GridMeasure::kPwcca;
  const auto cells = grid_cells(static_cast<int64_t>(s.rows.size()),
                                static_cast<int64_t>(s.two_models ? s.cols.size() : s.rows.size()),
                                s.two_models, symmetric);
  std::vector<at::Tensor> vals;
  if (s.options.measure == GridMeasure::kDebiasedCka) {
    detail::check_debiased_examples(fn, rows);
    for (const auto& lm : layers) detail::check_not_constant(fn, lm.label.c_str(), lm.non_constant);
    const auto raw = s.acc.state();  // co-moments (the covariances above were scaled in place)
    for (const auto& c : cells) {
      try {
        vals.push_back(
            s.streamed_debiased_cka(fn, raw, std::min(c.x, c.y), std::max(c.x, c.y), rows));
      } catch (const c10::Error& e) {
        rethrow_for_cell(fn, e, layers[c.x].label, layers[c.y].label);
      }
    }
  } else {
    vals = moment_cells(fn, layers, cross, cells, s.options);
  }
  return assemble(s.rows, s.two_models ? s.cols : s.rows, s.two_models, cells, vals, s.examples,
                  s.options);
}

}  // namespace svcca
