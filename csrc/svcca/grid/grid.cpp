// Layer x layer similarity grids: each layer reduced once to its factor (from the smaller side),
// one cross term per cell; undefined cells are NaN with a reason; one-shot or streamed.
#include "svcca/grid/grid.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
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

// ---- Measures as declarations ------------------------------------------------------------------
//
// A grid measure is one declaration (MeasureDecl, in kMeasures below): its name, whether it is of
// the CKA family (conv auto = flatten), symmetric, how it streams, its option checks and report
// entries, and a CellMeasure: what it keeps of each layer (a LayerFactor, computed once when the
// layer is added) and its value for a pair of factors. The grid, the builder, the accumulator,
// the CLI's names and the Python wrappers read the table; adding a measure is one CellMeasure and
// one line in kMeasures.

// What a measure keeps of one layer.
struct LayerFactor {
  virtual ~LayerFactor() = default;
  virtual int64_t bytes() const = 0;
};

class CellMeasure {
 public:
  virtual ~CellMeasure() = default;
  // The factor of one layer ([rows, p] after the conv recipe, finite). Throws c10::Error when the
  // measure is undefined for the layer (its cells become NaN with the message as the reason).
  virtual std::shared_ptr<const LayerFactor> factor(const char* fn, const std::string& label,
                                                    const at::Tensor& mat) const = 0;
  // The cell of two factors, 0-d. Throws c10::Error when undefined for the pair.
  virtual at::Tensor cell(const char* fn, const LayerFactor& x, const LayerFactor& y) const = 0;
};

template <class F>
struct Held : LayerFactor {
  explicit Held(F v) : f(std::move(v)) {}
  int64_t bytes() const override { return f.bytes(); }
  F f;
};

template <class F>
const F& held(const LayerFactor& l) {
  return static_cast<const Held<F>&>(l).f;
}

// CCA and PWCCA need rows >= p + 2 (centered data has rank <= rows - 1; below it every
// correlation is 1 whatever the data).
void check_rows_for_cca(const char* fn, const std::string& label, const at::Tensor& mat,
                        const char* measure) {
  const int64_t rows = mat.size(0), p = mat.size(1);
  TORCH_CHECK_VALUE(rows >= p + 2, fn, ": ", label, " must have at least p + 2 = ", p + 2,
                    " examples for ", measure, " (centered data has rank <= n - 1), but got ", rows,
                    " examples of ", p, " features; use measure svcca, conv pool or more ",
                    "examples");
}

class LinearCkaMeasure : public CellMeasure {
 public:
  LinearCkaMeasure(bool debiased, Precision precision, FactorSide side)
      : debiased_(debiased), precision_(precision), side_(side) {}
  std::shared_ptr<const LayerFactor> factor(const char* fn, const std::string& label,
                                            const at::Tensor& mat) const override {
    return std::make_shared<Held<detail::KernelFactor>>(
        detail::linear_kernel_factor(fn, label.c_str(), mat, precision_, side_, debiased_));
  }
  at::Tensor cell(const char* fn, const LayerFactor& x, const LayerFactor& y) const override {
    return detail::linear_cka_of(fn, held<detail::KernelFactor>(x), held<detail::KernelFactor>(y),
                                 debiased_);
  }

 private:
  bool debiased_;
  Precision precision_;
  FactorSide side_;
};

struct RbfFactor {
  at::Tensor centered;  // [n, n] centered (or U-centered) kernel matrix
  at::Tensor self;      // 0-d <kc, kc>
  int64_t bytes() const { return centered.numel() * centered.element_size(); }
};

class RbfCkaMeasure : public CellMeasure {
 public:
  explicit RbfCkaMeasure(RbfCkaOptions o) : o_(std::move(o)) {}
  std::shared_ptr<const LayerFactor> factor(const char* fn, const std::string& label,
                                            const at::Tensor& mat) const override {
    const int64_t n = mat.size(0);
    TORCH_CHECK_VALUE(n >= 2, fn, ": ", label, " must have at least 2 examples, but got ", n);
    if (o_.debiased) detail::check_debiased_examples(fn, n);
    // The Gram matrix from column blocks (any width); distances are translation invariant, so
    // the centered Gram gives them without cancellation against large means.
    detail::GramStats g = detail::centered_gram(mat, detail::compute_dtype(mat, mat, o_.precision));
    detail::check_not_constant(fn, label.c_str(), g.non_constant);
    at::Tensor d = detail::squared_distances_from_gram(g.gram);
    // The Gram is of X_c / scale: the median rule is scale free; an absolute sigma is taken to
    // the same units (rather than the distances to the data's, which could overflow).
    std::optional<double> sigma;
    if (o_.sigma) sigma = *o_.sigma / g.scale;
    at::Tensor k = detail::rbf_kernel(fn, label.c_str(), d, o_.threshold, sigma);
    RbfFactor f;
    f.centered = detail::center_gram(k, o_.debiased);
    f.self = detail::sum_squares(f.centered);
    detail::check_self_hsic(fn, label.c_str(), f.self, detail::sum_squares(k), n, o_.debiased);
    return std::make_shared<Held<RbfFactor>>(std::move(f));
  }
  at::Tensor cell(const char*, const LayerFactor& x, const LayerFactor& y) const override {
    const RbfFactor& a = held<RbfFactor>(x);
    const RbfFactor& b = held<RbfFactor>(y);
    return (a.centered * b.centered).sum() / (a.self * b.self).sqrt();
  }

 private:
  RbfCkaOptions o_;
};

// cca and svcca: the whitened basis of each layer; a cell is the mean canonical correlation.
class WhitenedMeasure : public CellMeasure {
 public:
  WhitenedMeasure(const char* name, detail::FactorOptions fopt, Precision precision,
                  FactorSide side, bool needs_rows_above_p, bool allow_forced)
      : name_(name),
        fopt_(std::move(fopt)),
        precision_(precision),
        side_(side),
        needs_rows_above_p_(needs_rows_above_p),
        allow_forced_(allow_forced) {}
  std::shared_ptr<const LayerFactor> factor(const char* fn, const std::string& label,
                                            const at::Tensor& mat) const override {
    if (needs_rows_above_p_) check_rows_for_cca(fn, label, mat, name_);
    return std::make_shared<Held<detail::WhitenedFactor>>(
        detail::whitened_factor(fn, label.c_str(), mat, fopt_, precision_, side_));
  }
  at::Tensor cell(const char* fn, const LayerFactor& x, const LayerFactor& y) const override {
    const auto& fx = held<detail::WhitenedFactor>(x);
    const auto& fy = held<detail::WhitenedFactor>(y);
    // A layer against itself (the diagonal of a one-model grid) is 1 by definition, not by force.
    detail::check_forced_correlations(fn, fx.rank, fy.rank, fx.z.size(0), allow_forced_ || &x == &y,
                                      std::string(name_) == "svcca");
    return detail::canonical_correlations(fx, fy).mean();
  }

 private:
  const char* name_;
  detail::FactorOptions fopt_;
  Precision precision_;
  FactorSide side_;
  bool needs_rows_above_p_;
  bool allow_forced_;
};

// pwcca: covariance-side factors (its weights sum over the layer's own features).
struct PwccaFactor {
  std::string label;
  detail::LayerFactors factors;
  at::Tensor zca;  // symmetric whitening (reference weighting), else undefined
  at::Tensor mean, centered;
  at::Tensor non_constant;
  int64_t rows = 0;
  int64_t bytes() const {
    int64_t b = centered.numel() * centered.element_size();
    b += factors.cov.numel() * factors.cov.element_size() * 3;  // cov, eigenvectors, whitening
    if (zca.defined()) b += zca.numel() * zca.element_size();
    return b;
  }
};

class PwccaMeasure : public CellMeasure {
 public:
  explicit PwccaMeasure(PwccaOptions o) : o_(std::move(o)) {}
  std::shared_ptr<const LayerFactor> factor(const char* fn, const std::string& label,
                                            const at::Tensor& mat) const override {
    check_rows_for_cca(fn, label, mat, "pwcca");
    PwccaFactor f;
    f.label = label;
    f.rows = mat.size(0);
    auto c = detail::center(mat, detail::compute_dtype(mat, mat, o_.cca.precision),
                            /*rescale=*/true);
    f.mean = c.mean;
    f.centered = c.data;
    f.non_constant = detail::non_constant_columns(mat);
    at::Tensor cov = detail::covariance(c.data);
    f.factors =
        detail::factor_layer(fn, label.c_str(), cov, f.non_constant,
                             detail::with_input_floor(detail::factor_options(o_.cca),
                                                      mat.scalar_type(), c.mean, cov, mat.size(0)));
    if (o_.weighting == PwccaWeighting::kReference) f.zca = detail::symmetric_whitening(f.factors);
    return std::make_shared<Held<PwccaFactor>>(std::move(f));
  }
  at::Tensor cell(const char* fn, const LayerFactor& x, const LayerFactor& y) const override {
    const PwccaFactor& a = held<PwccaFactor>(x);
    const PwccaFactor& b = held<PwccaFactor>(y);
    detail::PairMoments m;
    m.n = a.rows;
    m.x_mean = a.mean;
    m.y_mean = b.mean;
    m.sxy = detail::cross_covariance(a.centered, b.centered);  // formed for this cell only
    m.x_centered = a.centered;
    m.y_centered = b.centered;
    m.result_dtype = at::kDouble;
    return detail::pwcca_from_factors(fn, a.factors, b.factors, a.zca, b.zca, m, o_).score;
  }

 private:
  PwccaOptions o_;
};

Precision cka_precision(const GridOptions& o) {
  return o.precision;
}

void no_check(const char*, const GridOptions&) {}

void describe_linear(const GridOptions& o, std::map<std::string, std::string>& m) {
  m["kernel"] = "linear";
  m["debiased"] = o.measure == GridMeasure::kLinearCka ? "false" : "true";
  if (o.measure == GridMeasure::kMinibatchCka)
    m["estimator"] = "minibatch (Nguyen et al. 2021): mean HSIC_1 over batches, then the ratio";
}

void describe_cca_options(const CcaOptions& c, std::map<std::string, std::string>& m) {
  m["epsilon"] = num_str(c.epsilon);
  m["variance_cutoff"] = num_str(c.variance_cutoff);
  m["rank_rtol"] = c.rank_rtol ? num_str(*c.rank_rtol) : "auto";
  if (c.allow_forced_correlations) m["allow_forced_correlations"] = "true";
}

std::unique_ptr<CellMeasure> make_linear(const GridOptions& o) {
  return std::make_unique<LinearCkaMeasure>(o.measure != GridMeasure::kLinearCka, o.precision,
                                            o.side);
}

struct MeasureDecl {
  GridMeasure id;
  const char* name;
  bool cka_family;  // conv auto = flatten (else pool)
  bool symmetric;   // a one-model grid computes the upper triangle
  bool streams;     // GridAccumulator streams it (exactly through moments, or minibatch-cka)
  void (*check)(const char* fn, const GridOptions& o);
  Precision (*precision)(const GridOptions& o);
  void (*describe)(const GridOptions& o, std::map<std::string, std::string>& m);
  std::unique_ptr<CellMeasure> (*make)(const GridOptions& o);
};

const std::vector<MeasureDecl>& measures() {
  static const std::vector<MeasureDecl> kMeasures = {
      {GridMeasure::kLinearCka, "cka", true, true, true, no_check, cka_precision, describe_linear,
       make_linear},
      {GridMeasure::kDebiasedCka, "debiased-cka", true, true, true, no_check, cka_precision,
       describe_linear, make_linear},
      {GridMeasure::kRbfCka, "rbf-cka", true, true, false,
       [](const char* fn, const GridOptions& o) { detail::check_bandwidth_options(fn, o.rbf); },
       [](const GridOptions& o) { return o.rbf.precision; },
       [](const GridOptions& o, std::map<std::string, std::string>& m) {
         m["kernel"] = "rbf";
         m["debiased"] = o.rbf.debiased ? "true" : "false";
         if (o.rbf.sigma) {
           m["sigma"] = num_str(*o.rbf.sigma);
         } else {
           m["threshold"] = num_str(o.rbf.threshold);
         }
       },
       [](const GridOptions& o) -> std::unique_ptr<CellMeasure> {
         return std::make_unique<RbfCkaMeasure>(o.rbf);
       }},
      {GridMeasure::kCca, "cca", false, true, true,
       [](const char* fn, const GridOptions& o) { detail::check_cca_options(fn, o.cca); },
       [](const GridOptions& o) { return o.cca.precision; },
       [](const GridOptions& o, std::map<std::string, std::string>& m) {
         describe_cca_options(o.cca, m);
       },
       [](const GridOptions& o) -> std::unique_ptr<CellMeasure> {
         return std::make_unique<WhitenedMeasure>("cca", detail::factor_options(o.cca),
                                                  o.cca.precision, o.side, true,
                                                  o.cca.allow_forced_correlations);
       }},
      {GridMeasure::kSvcca, "svcca", false, true, true,
       [](const char* fn, const GridOptions& o) { detail::check_svcca_options(fn, o.svcca); },
       [](const GridOptions& o) { return o.svcca.cca.precision; },
       [](const GridOptions& o, std::map<std::string, std::string>& m) {
         describe_cca_options(o.svcca.cca, m);
         if (o.svcca.dims) {
           m["dims"] = std::to_string(*o.svcca.dims);
         } else {
           m["fraction"] = num_str(o.svcca.fraction);
           m["keep"] = o.svcca.keep == SvccaKeep::kVariance ? "variance" : "singular_value_mass";
         }
       },
       [](const GridOptions& o) -> std::unique_ptr<CellMeasure> {
         return std::make_unique<WhitenedMeasure>("svcca", detail::svcca_factor_options(o.svcca),
                                                  o.svcca.cca.precision, o.side, false,
                                                  o.svcca.cca.allow_forced_correlations);
       }},
      {GridMeasure::kPwcca, "pwcca", false, false, true,
       [](const char* fn, const GridOptions& o) { detail::check_cca_options(fn, o.pwcca.cca); },
       [](const GridOptions& o) { return o.pwcca.cca.precision; },
       [](const GridOptions& o, std::map<std::string, std::string>& m) {
         describe_cca_options(o.pwcca.cca, m);
         m["weighting"] =
             o.pwcca.weighting == PwccaWeighting::kReference ? "reference" : "canonical_variates";
       },
       [](const GridOptions& o) -> std::unique_ptr<CellMeasure> {
         return std::make_unique<PwccaMeasure>(o.pwcca);
       }},
      {GridMeasure::kMinibatchCka, "minibatch-cka", true, true, true, no_check, cka_precision,
       describe_linear, make_linear},
  };
  return kMeasures;
}

const MeasureDecl& decl(GridMeasure m) {
  for (const auto& d : measures()) {
    if (d.id == m) return d;
  }
  TORCH_INTERNAL_ASSERT(false, "similarity_grid: a measure without a declaration");
}

const std::vector<std::pair<GridConv, const char*>>& conv_names() {
  static const std::vector<std::pair<GridConv, const char*>> names = {
      {GridConv::kAuto, "auto"}, {GridConv::kFlatten, "flatten"}, {GridConv::kPool, "pool"},
      {GridConv::kCls, "cls"},   {GridConv::kFold, "fold"},       {GridConv::kFourier, "fourier"}};
  return names;
}

std::string quoted_names(const std::vector<const char*>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << '"' << names[i] << '"';
  return out.str();
}

GridConv resolve_conv(GridConv conv, GridMeasure measure) {
  if (conv != GridConv::kAuto) return conv;
  return decl(measure).cka_family ? GridConv::kFlatten : GridConv::kPool;
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
  decl(o.measure).check(fn, o);
  TORCH_CHECK_VALUE(conv != GridConv::kFourier || o.measure == GridMeasure::kCca, fn,
                    ": conv \"fourier\" must go with measure \"cca\" (the mean Fourier CCA over "
                    "frequencies), but got measure \"",
                    to_string(o.measure), "\"");
  TORCH_CHECK_VALUE(o.recipe.position_stride >= 1, fn,
                    ": recipe.position_stride must be >= 1, but got ", o.recipe.position_stride);
  TORCH_CHECK_VALUE(o.memory_bytes >= 0, fn, ": memory_bytes must be >= 0, but got ",
                    o.memory_bytes);
}

std::map<std::string, std::string> options_map(const GridOptions& o) {
  std::map<std::string, std::string> m;
  const GridConv conv = resolve_conv(o.conv, o.measure);
  m["conv"] = to_string(conv);
  if (conv == GridConv::kFold || conv == GridConv::kFourier || conv == GridConv::kPool ||
      conv == GridConv::kCls) {
    m["layout"] = o.recipe.layout == ConvLayout::kNCHW ? "NCHW" : "NHWC";
  }
  if (conv == GridConv::kFold) {
    const bool up = o.recipe.match == SpatialMatch::kInterpolateUp;
    m["match"] = up ? "interpolate" : "pool";
    m["resize"] = up ? resize_mode_name(o.recipe.upsample) : "area";
    m["position_stride"] = std::to_string(o.recipe.position_stride);
  }
  const MeasureDecl& d = decl(o.measure);
  m["precision"] = d.precision(o) == Precision::kFloat64 ? "float64" : "input";
  d.describe(o, m);
  if (o.measure == GridMeasure::kCca)
    m["summary"] = conv == GridConv::kFourier ? "mean over frequencies" : "mean correlation";
  if (o.measure != GridMeasure::kPwcca) {
    m["side"] = o.side == FactorSide::kAuto       ? "auto (gram when features > rows)"
                : o.side == FactorSide::kFeatures ? "features"
                                                  : "gram";
  }
  return m;
}

// `layer "conv1"` or `layer "conv1" of a`.
std::string layer_label(const std::string& name, const char* side) {
  std::string s = "layer \"" + name + "\"";
  if (side != nullptr) s += std::string(" of ") + side;
  return s;
}

// Structure (API misuse: throws): defined, floating, >= 2 dims, non-empty.
void check_layer_structure(const char* fn, const std::string& label, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), fn, ": ", label,
                    " must be a defined tensor, but got an undefined one");
  TORCH_CHECK_VALUE(t.dim() >= 2 && t.numel() > 0, fn, ": ", label,
                    " must be a non-empty tensor with at least 2 dims ([n, features] or "
                    "[n, c, h, w]), but got shape ",
                    detail::shape_str(t));
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, fn, ": ", label,
                   " must be a floating tensor (float32 or float64), but got dtype ",
                   t.scalar_type());
}

// Values (data: the layer's cells become undefined): finite.
void check_layer_values(const char* fn, const std::string& label, const at::Tensor& t) {
  detail::check_matrix(fn, label.c_str(), t.dim() == 2 ? t : t.reshape({t.size(0), -1}));
}

void check_layer_tensor(const char* fn, const std::string& label, const at::Tensor& t) {
  check_layer_structure(fn, label, t);
  check_layer_values(fn, label, t);
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
    check_layer_structure(fn, layer_label(name, side), t);
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

void check_4d_for(const char* fn, const std::string& label, const at::Tensor& acts, GridConv conv) {
  TORCH_CHECK_VALUE(acts.dim() == 4, fn, ": ", label,
                    " must be 4-D ([n, c, h, w] or NHWC) for conv \"", to_string(conv),
                    "\", but got shape ", detail::shape_str(acts));
}

// Target spatial size of kFold: the largest (or, pooling down, the smallest) h and w of the
// grid's 4-D layers; {0, 0} when there are none.
std::pair<int64_t, int64_t> fold_size(const std::vector<LayerRef>& layers,
                                      const ConvRecipe& recipe) {
  const bool up = recipe.match == SpatialMatch::kInterpolateUp;
  int64_t h = up ? 0 : INT64_MAX, w = up ? 0 : INT64_MAX;
  bool any = false;
  for (const auto& l : layers) {
    if (l.acts.dim() != 4) continue;
    any = true;
    at::Tensor t = detail::to_nchw(l.acts, recipe.layout);
    h = up ? std::max(h, t.size(2)) : std::min(h, t.size(2));
    w = up ? std::max(w, t.size(3)) : std::min(w, t.size(3));
  }
  if (!any) return {0, 0};
  return {h, w};
}

// A layer's [rows, features] matrix under the (resolved) conv. Throws (the layer's cells are
// undefined) for a layer the conv does not apply to.
at::Tensor layer_features(const char* fn, const std::string& label, const at::Tensor& acts,
                          GridConv conv, const ConvRecipe& recipe,
                          std::pair<int64_t, int64_t> fold_hw) {
  if (conv == GridConv::kFold) check_4d_for(fn, label, acts, conv);
  if (acts.dim() == 2) return acts;
  switch (conv) {
    case GridConv::kPool:
    case GridConv::kCls:
      if (acts.dim() == 4) return global_avg_pool(acts, recipe.layout);
      // [n, t, d]: transformer tokens (batch first): the mean over tokens, or the first token.
      if (acts.dim() == 3) return conv == GridConv::kCls ? acts.select(1, 0) : acts.mean(1);
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

std::string message_of(const c10::Error& e) {
  std::string m = e.what_without_backtrace();
  for (char& c : m) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return m;
}

// Per cell: its value, or why it is undefined.
struct CellValues {
  std::vector<at::Tensor> values;    // 0-d, undefined where reasons[k] is set
  std::vector<std::string> reasons;  // empty: defined
};

// Evaluates every cell: a layer with a reason makes its cells undefined with that reason; a cell
// that throws is undefined with the message. `compute` returns a 0-d tensor.
template <class F>
CellValues evaluate_cells(const std::vector<Cell>& cells,
                          const std::vector<std::string>& layer_reason,
                          const std::vector<std::string>& labels, F&& compute) {
  CellValues out;
  out.values.resize(cells.size());
  out.reasons.resize(cells.size());
  for (size_t k = 0; k < cells.size(); ++k) {
    const Cell& c = cells[k];
    if (!layer_reason[c.x].empty()) {
      out.reasons[k] = layer_reason[c.x];
    } else if (!layer_reason[c.y].empty()) {
      out.reasons[k] = layer_reason[c.y];
    } else {
      try {
        out.values[k] = compute(c);
      } catch (const c10::Error& e) {
        out.reasons[k] = "the cell of " + labels[c.x] + " (row) and " + labels[c.y] +
                         " (column) cannot be computed: " + message_of(e);
      }
    }
  }
  return out;
}

Grid assemble(const std::vector<std::string>& rows, const std::vector<std::string>& cols,
              bool two_models, const std::vector<Cell>& cells, const CellValues& cv,
              int64_t examples, const GridOptions& o) {
  Grid g;
  g.rows = rows;
  g.cols = cols;
  g.measure = to_string(o.measure);
  g.row_label = two_models ? "model A layer" : "layer";
  g.col_label = two_models ? "model B layer" : "layer";
  g.examples = examples;
  g.options = options_map(o);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<at::Tensor> flat;
  std::vector<size_t> where;
  for (size_t k = 0; k < cells.size(); ++k) {
    if (!cv.reasons[k].empty()) continue;
    flat.push_back(cv.values[k].detach().reshape({}).to(at::kDouble));
    where.push_back(k);
  }
  std::vector<double> vals(cells.size(), nan);
  std::vector<std::string> reasons = cv.reasons;
  if (!flat.empty()) {
    // One transfer for all cells (not one .item() per cell).
    at::Tensor stacked = at::stack(flat).to(at::kCPU).contiguous();
    const double* p = stacked.data_ptr<double>();
    for (size_t i = 0; i < where.size(); ++i) {
      vals[where[i]] = p[i];
      if (!std::isfinite(p[i])) {
        reasons[where[i]] = "the measure gave a non-finite value (" + num_str(p[i]) +
                            ") for a pair of layers; please report it with the layers' shapes";
        vals[where[i]] = nan;
      }
    }
  }
  g.values = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(cols.size())}, nan,
                      at::kDouble);
  auto acc = g.values.accessor<double, 2>();
  // Undefined cells grouped by reason, in row-major order of their first cell.
  std::vector<std::pair<int64_t, int64_t>> undefined_at;
  std::vector<std::string> undefined_why;
  for (size_t k = 0; k < cells.size(); ++k) {
    const auto& c = cells[k];
    acc[c.row][c.col] = vals[k];
    if (c.mirror) acc[c.col][c.row] = vals[k];
    if (reasons[k].empty()) continue;
    undefined_at.push_back({c.row, c.col});
    undefined_why.push_back(reasons[k]);
    if (c.mirror) {
      undefined_at.push_back({c.col, c.row});
      undefined_why.push_back(reasons[k]);
    }
  }
  std::vector<size_t> order(undefined_at.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return undefined_at[a] < undefined_at[b]; });
  std::map<std::string, size_t> index;
  for (size_t i : order) {
    auto it = index.find(undefined_why[i]);
    if (it == index.end()) {
      it = index.emplace(undefined_why[i], g.undefined.size()).first;
      g.undefined.push_back({undefined_why[i], {}});
    }
    g.undefined[it->second].cells.push_back(undefined_at[i]);
  }
  return g;
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

// Streamed cross-covariances keyed by (min, max) layer index.
using CrossMap = std::map<std::pair<int64_t, int64_t>, at::Tensor>;

at::Tensor sxy_of(const std::vector<LayerMoments>& layers, const CrossMap& cross, int64_t a,
                  int64_t b) {
  if (a == b) return layers[a].cov;
  const std::pair<int64_t, int64_t> key{std::min(a, b), std::max(a, b)};
  auto it = cross.find(key);
  TORCH_INTERNAL_ASSERT(it != cross.end(), "GridAccumulator: a cross-covariance was not streamed");
  return a < b ? it->second : it->second.t();
}

detail::PairMoments pair_of(const std::vector<LayerMoments>& layers, const CrossMap& cross,
                            int64_t a, int64_t b) {
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

// Cells of the streamed moment measures (cka, cca, svcca, pwcca) from every layer's moments and
// the streamed cross-covariances; each layer's factors (eigh, whitening, ZCA) once.
CellValues streamed_cells(const char* fn, const std::vector<LayerMoments>& layers,
                          const CrossMap& cross, const std::vector<Cell>& cells,
                          const GridOptions& o) {
  std::vector<std::string> reasons(layers.size()), labels;
  for (const auto& l : layers) labels.push_back(l.label);
  if (o.measure == GridMeasure::kLinearCka) {
    for (size_t l = 0; l < layers.size(); ++l) {
      try {
        detail::check_not_constant(fn, labels[l].c_str(), layers[l].non_constant);
      } catch (const c10::Error& e) {
        reasons[l] = message_of(e);
      }
    }
    return evaluate_cells(cells, reasons, labels, [&](const Cell& c) {
      return detail::linear_cka_from_moments(fn, pair_of(layers, cross, c.x, c.y), false);
    });
  }
  detail::FactorOptions fopt;
  if (o.measure == GridMeasure::kCca) fopt = detail::factor_options(o.cca);
  if (o.measure == GridMeasure::kSvcca) fopt = detail::svcca_factor_options(o.svcca);
  if (o.measure == GridMeasure::kPwcca) fopt = detail::factor_options(o.pwcca.cca);
  std::vector<detail::LayerFactors> factors(layers.size());
  std::vector<at::Tensor> zca(layers.size());
  const bool need_zca =
      o.measure == GridMeasure::kPwcca && o.pwcca.weighting == PwccaWeighting::kReference;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& lm = layers[l];
    try {
      if (o.measure != GridMeasure::kSvcca) {
        check_rows_for_cca(fn, lm.label, at::empty({lm.rows, lm.features}, at::kMeta),
                           to_string(o.measure).c_str());
      }
      factors[l] = detail::factor_layer(
          fn, lm.label.c_str(), lm.cov, lm.non_constant,
          detail::with_input_floor(fopt, lm.input_dtype, lm.mean, lm.cov, lm.rows));
      if (need_zca) zca[l] = detail::symmetric_whitening(factors[l]);
    } catch (const c10::Error& e) {
      reasons[l] = message_of(e);
    }
  }
  return evaluate_cells(cells, reasons, labels, [&](const Cell& c) -> at::Tensor {
    if (o.measure == GridMeasure::kPwcca) {
      return detail::pwcca_from_factors(fn, factors[c.x], factors[c.y], zca[c.x], zca[c.y],
                                        pair_of(layers, cross, c.x, c.y), o.pwcca)
          .score;
    }
    const bool allow = o.measure == GridMeasure::kSvcca ? o.svcca.cca.allow_forced_correlations
                                                        : o.cca.allow_forced_correlations;
    detail::check_forced_correlations(fn, factors[c.x].rank, factors[c.y].rank, layers[c.x].rows,
                                      allow || c.x == c.y, o.measure == GridMeasure::kSvcca);
    return detail::cca_core(factors[c.x], factors[c.y], sxy_of(layers, cross, c.x, c.y),
                            /*with_vectors=*/false)
        .correlations.mean();
  });
}

// Fourier CCA cells. When every 4-D layer has one spatial size, the frequency grid is shared and
// each layer's own work is done once: FFT at the solved frequencies, centering, batched covariance
// and whitening W, and the whitened spectra Z = X W ([F, N, C]); a pair is then Zx^H Zy / (N - 1)
// (= Wx^H Sxy Wy, what fourier_cca decomposes) and batched svdvals, with fourier_cca's rules for
// valid correlations, mirrored frequencies and the mean. Layers of different sizes crop the
// frequency grid per pair, so there each cell runs fourier_cca itself. layer_reason: set for
// layers that are undefined already (not 4-D, non-finite); filled here for the others.
CellValues fourier_cells(const char* fn, const std::vector<LayerRef>& refs,
                         const std::vector<Cell>& cells, std::vector<std::string> layer_reason,
                         const GridOptions& o) {
  std::vector<std::string> labels;
  std::vector<at::Tensor> nchw(refs.size());
  int64_t h = -1, w = -1;
  bool same_size = true;
  for (size_t l = 0; l < refs.size(); ++l) {
    labels.push_back(refs[l].label);
    if (!layer_reason[l].empty()) continue;
    nchw[l] = detail::to_nchw(refs[l].acts, o.recipe.layout);
    if (h < 0) h = nchw[l].size(2), w = nchw[l].size(3);
    same_size = same_size && nchw[l].size(2) == h && nchw[l].size(3) == w;
  }
  if (h < 0 || !same_size) {
    FourierCcaOptions f;
    f.layout = o.recipe.layout;
    f.epsilon = o.cca.epsilon;
    f.variance_cutoff = o.cca.variance_cutoff;
    f.rank_rtol = o.cca.rank_rtol;
    f.precision = o.cca.precision;
    return evaluate_cells(cells, layer_reason, labels, [&](const Cell& c) {
      return fourier_cca(refs[c.x].acts, refs[c.y].acts, f).mean;
    });
  }

  at::ScalarType real = at::kDouble;
  if (o.cca.precision == Precision::kInput) {
    real = at::ScalarType::Undefined;
    for (const auto& t : nchw) {
      if (t.defined())
        real = real == at::ScalarType::Undefined ? t.scalar_type()
                                                 : at::promote_types(real, t.scalar_type());
    }
  }
  const at::ScalarType cplx = real == at::kFloat ? at::kComplexFloat : at::kComplexDouble;
  const int64_t n = refs.front().acts.size(0);
  const auto grid = detail::frequency_grid(h, w, h, w, /*conjugate_symmetry=*/true);
  detail::FactorOptions fopt = detail::factor_options(o.cca);
  std::vector<at::Tensor> z(refs.size()), rank(refs.size());
  for (size_t l = 0; l < refs.size(); ++l) {
    if (!layer_reason[l].empty()) continue;
    try {
      const at::Tensor& a = nchw[l];
      const int64_t c = a.size(1);
      TORCH_CHECK_VALUE(n >= c + 2, fn, ": ", refs[l].label, " must have at least C + 2 = ", c + 2,
                        " examples for Fourier CCA (each frequency is one CCA of the channels "
                        "over the examples), but got shape ",
                        detail::shape_str(refs[l].acts));
      at::Tensor non_constant = (a.amax(0) != a.amin(0)).flatten(1).any(1);
      TORCH_CHECK_VALUE(non_constant.any().item<bool>(), fn, ": ", refs[l].label,
                        " must have at least one non-constant channel, but all ", c,
                        " channels are constant over the examples");
      at::Tensor xs =
          detail::spectra_at(a, grid.x_rows, grid.x_cols, grid.solved, grid.w, cplx, cplx);
      xs = xs - xs.mean(1, /*keepdim=*/true);
      at::Tensor cov = detail::batched_covariance(xs);  // [F, C, C]
      auto wh = detail::batched_whitening(
          cov, non_constant, fopt, detail::spectral_noise_floor(a, cov, o.cca.rank_rtol, real));
      z[l] = at::matmul(xs, wh.whitening);  // [F, N, C]
      rank[l] = wh.rank;
    } catch (const c10::Error& e) {
      layer_reason[l] = message_of(e);
    }
  }
  const at::Tensor src = at::tensor(grid.source, at::kLong).to(refs.front().acts.device());
  return evaluate_cells(cells, layer_reason, labels, [&](const Cell& c) {
    at::Tensor m = at::matmul(detail::mh(z[c.x]), z[c.y]).div_(static_cast<double>(n - 1));
    // Singular values of a whitened cross-covariance are cosines: clamp rounding above 1.
    at::Tensor s = at::linalg_svdvals(m).clamp(0.0, 1.0);  // [F, k]
    const int64_t k = s.size(1);
    at::Tensor valid = at::arange(k, s.options().dtype(at::kLong)).unsqueeze(0) <
                       at::minimum(rank[c.x], rank[c.y]).unsqueeze(1);
    s = (s * valid.to(s.scalar_type())).index_select(0, src);
    return s.sum() / valid.index_select(0, src).sum().to(s.scalar_type());
  });
}

}  // namespace

// ---- GridBuilder -------------------------------------------------------------------------------

struct GridBuilder::Impl {
  std::vector<std::string> rows, cols;
  bool two_models = false;
  GridOptions options;
  GridConv conv = GridConv::kFlatten;
  std::unique_ptr<CellMeasure> measure;
  std::optional<std::pair<int64_t, int64_t>> fold_hw;
  // Per layer of the union rows ++ cols:
  std::vector<std::string> labels;
  std::vector<bool> added;
  std::vector<std::string> reasons;  // layer undefined: why
  std::vector<std::shared_ptr<const LayerFactor>> factors;
  int64_t examples = -1;
  std::string examples_from;  // label of the first layer added with data
  std::string first_shape;
  std::optional<at::Device> device;

  size_t index_of(const char* fn, const std::string& name, bool col) const {
    TORCH_CHECK_VALUE(!col || two_models, fn,
                      ": col must be false for a one-model grid (built "
                      "without cols), but layer \"",
                      name, "\" was added as a column");
    const auto& names = col ? cols : rows;
    auto it = std::find(names.begin(), names.end(), name);
    TORCH_CHECK_VALUE(it != names.end(), fn, ": ", col ? "cols" : "rows",
                      " must include every layer added, but \"", name, "\" is not among them");
    const size_t i = static_cast<size_t>(it - names.begin()) + (col ? rows.size() : 0);
    TORCH_CHECK_VALUE(!added[i], fn, ": ", labels[i],
                      " must be added once, but it was added again");
    return i;
  }
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

}  // namespace

GridBuilder::GridBuilder(std::vector<std::string> rows, std::vector<std::string> cols,
                         GridOptions options)
    : impl_(std::make_unique<Impl>()) {
  constexpr const char* fn = "GridBuilder";
  check_options(fn, options);
  check_names(fn, rows, "rows");
  if (!cols.empty()) check_names(fn, cols, "cols");
  Impl& s = *impl_;
  s.conv = resolve_conv(options.conv, options.measure);
  TORCH_CHECK_VALUE(s.conv != GridConv::kFourier, fn,
                    ": conv must not be \"fourier\" here (Fourier CCA needs every layer at once: "
                    "use similarity_grid), but got \"fourier\"");
  s.two_models = !cols.empty();
  for (const auto& r : rows) s.labels.push_back(layer_label(r, s.two_models ? "a" : nullptr));
  for (const auto& c : cols) s.labels.push_back(layer_label(c, "b"));
  s.rows = std::move(rows);
  s.cols = std::move(cols);
  s.added.assign(s.labels.size(), false);
  s.reasons.assign(s.labels.size(), {});
  s.factors.resize(s.labels.size());
  s.measure = decl(options.measure).make(options);
  s.options = std::move(options);
}

GridBuilder::~GridBuilder() = default;
GridBuilder::GridBuilder(GridBuilder&&) noexcept = default;
GridBuilder& GridBuilder::operator=(GridBuilder&&) noexcept = default;

void GridBuilder::set_fold_size(int64_t h, int64_t w) {
  TORCH_CHECK_VALUE(h >= 1 && w >= 1, "GridBuilder::set_fold_size: h and w must be >= 1, but got ",
                    h, " and ", w);
  impl_->fold_hw = std::make_pair(h, w);
}

void GridBuilder::add(const std::string& name, const at::Tensor& acts, bool col) {
  constexpr const char* fn = "similarity_grid";
  Impl& s = *impl_;
  const size_t i = s.index_of("GridBuilder::add", name, col);
  const std::string& label = s.labels[i];
  check_layer_structure(fn, label, acts);
  if (s.examples < 0) {
    s.examples = acts.size(0);
    s.examples_from = label;
    s.first_shape = detail::shape_str(acts);
    s.device = acts.device();
  }
  const char* who = s.two_models ? "a and b" : "layers";
  TORCH_CHECK_VALUE(acts.size(0) == s.examples, fn, ": ", who,
                    " must have the same number of examples (dim 0), but got ", s.examples_from,
                    " with shape ", s.first_shape, " and ", label, " with shape ",
                    detail::shape_str(acts));
  TORCH_CHECK_VALUE(acts.device() == *s.device, fn, ": ", who,
                    " must be on the same device, but got ", s.examples_from, " on ", *s.device,
                    " and ", label, " on ", acts.device());
  if (s.conv == GridConv::kFold && acts.dim() == 4) {
    TORCH_CHECK_VALUE(s.fold_hw.has_value(),
                      "GridBuilder::add: conv \"fold\" needs set_fold_size "
                      "before the first layer is added");
  }
  s.added[i] = true;
  try {
    check_layer_values(fn, label, acts);
    at::Tensor mat = layer_features(fn, label, acts, s.conv, s.options.recipe,
                                    s.fold_hw.value_or(std::make_pair<int64_t, int64_t>(0, 0)));
    s.factors[i] = s.measure->factor(fn, label, mat);
  } catch (const c10::Error& e) {
    s.reasons[i] = message_of(e);
  }
}

void GridBuilder::add_undefined(const std::string& name, const std::string& reason, bool col) {
  Impl& s = *impl_;
  const size_t i = s.index_of("GridBuilder::add_undefined", name, col);
  TORCH_CHECK_VALUE(!reason.empty(), "GridBuilder::add_undefined: reason must not be empty");
  s.added[i] = true;
  s.reasons[i] = reason;
}

int64_t GridBuilder::factor_bytes() const {
  int64_t b = 0;
  for (const auto& f : impl_->factors) {
    if (f) b += f->bytes();
  }
  return b;
}

Grid GridBuilder::result() const {
  constexpr const char* fn = "similarity_grid";
  const Impl& s = *impl_;
  for (size_t i = 0; i < s.added.size(); ++i) {
    TORCH_CHECK_VALUE(s.added[i], "GridBuilder::result: every layer must be added first, but ",
                      s.labels[i], " was not");
  }
  const MeasureDecl& d = decl(s.options.measure);
  const auto cells = grid_cells(static_cast<int64_t>(s.rows.size()),
                                static_cast<int64_t>(s.two_models ? s.cols.size() : s.rows.size()),
                                s.two_models, d.symmetric);
  const CellValues cv = evaluate_cells(cells, s.reasons, s.labels, [&](const Cell& c) {
    return s.measure->cell(fn, *s.factors[c.x], *s.factors[c.y]);
  });
  return assemble(s.rows, s.two_models ? s.cols : s.rows, s.two_models, cells, cv,
                  std::max<int64_t>(s.examples, 0), s.options);
}

namespace {

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
  }
  check_same_examples_and_device(fn, refs, two_models);
  const GridConv conv = resolve_conv(o.conv, o.measure);

  if (conv == GridConv::kFourier) {
    std::vector<std::string> reasons(refs.size());
    for (size_t l = 0; l < refs.size(); ++l) {
      try {
        check_4d_for(fn, refs[l].label, refs[l].acts, conv);
        check_layer_values(fn, refs[l].label, refs[l].acts);
      } catch (const c10::Error& e) {
        reasons[l] = message_of(e);
      }
    }
    const auto cells =
        grid_cells(static_cast<int64_t>(row_names.size()),
                   static_cast<int64_t>(two_models ? col_names.size() : row_names.size()),
                   two_models, decl(o.measure).symmetric);
    const CellValues cv = fourier_cells(fn, refs, cells, std::move(reasons), o);
    return assemble(row_names, two_models ? col_names : row_names, two_models, cells, cv,
                    refs.front().acts.size(0), o);
  }

  GridBuilder builder(row_names, col_names, o);
  if (conv == GridConv::kFold) {
    const auto hw = fold_size(refs, o.recipe);
    if (hw.first > 0) builder.set_fold_size(hw.first, hw.second);
  }
  for (const auto& [name, t] : a) builder.add(name, t, false);
  if (two_models) {
    for (const auto& [name, t] : *b) builder.add(name, t, true);
  }
  return builder.result();
}

}  // namespace

GridMeasure parse_grid_measure(const char* fn, const std::string& name, const std::string& value) {
  std::vector<const char*> names;
  for (const auto& d : measures()) {
    if (value == d.name) return d.id;
    names.push_back(d.name);
  }
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of ", quoted_names(names), ", but got \"",
                    value, "\"");
}

std::string to_string(GridMeasure measure) {
  return decl(measure).name;
}

std::vector<std::string> grid_measure_names() {
  std::vector<std::string> out;
  for (const auto& d : measures()) out.push_back(d.name);
  return out;
}

std::vector<std::string> grid_conv_names() {
  std::vector<std::string> out;
  for (const auto& [c, name] : conv_names()) out.push_back(name);
  return out;
}

GridConv parse_grid_conv(const char* fn, const std::string& name, const std::string& value) {
  std::vector<const char*> names;
  for (const auto& [c, s] : conv_names()) {
    if (value == s) return c;
    names.push_back(s);
  }
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of ", quoted_names(names), ", but got \"",
                    value, "\"");
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

at::Tensor per_example_features(const at::Tensor& acts, const GridOptions& options) {
  const GridConv conv = resolve_conv(options.conv, options.measure);
  if ((conv != GridConv::kPool && conv != GridConv::kCls) || !acts.defined() || acts.dim() <= 2)
    return acts;
  return layer_features("per_example_features", "acts", acts, conv, options.recipe, {0, 0});
}

GridConv resolved_conv(const GridOptions& options) {
  return resolve_conv(options.conv, options.measure);
}

int64_t default_memory_budget() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t value = 0;
  std::string unit;
  int64_t total = 0, available = 0;
  while (in >> key >> value >> unit) {
    if (key == "MemTotal:") total = value * 1024;
    if (key == "MemAvailable:") available = value * 1024;
  }
  if (total <= 0 || available <= 0) return int64_t{1} << 30;
  return std::min(total / 4, available / 2);
}

int64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      int64_t kb = 0;
      fields >> kb;
      return kb * 1024;
    }
  }
  return 0;
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
  // minibatch-cka: sum over batches of b (b - 3) HSIC_1 / (b (b - 3)) for every pair of layers of
  // the union, [L, L] float64 (the CovarianceAccumulator is not used).
  at::Tensor minibatch_hsic;
  // Each layer's unit (its first batch's Gram scale): later batches' Gram matrices are taken to
  // it, so that batches add at their true relative scale and no HSIC overflows or underflows.
  std::vector<double> minibatch_unit;
  int64_t batches = 0;
  int64_t memory_bytes = 0;  // budget of the exact state

  void add_minibatch(const char* fn, const std::vector<at::Tensor>& mats,
                     const std::vector<LayerRef>& refs);
  void check_state_size(const char* fn, const std::vector<at::Tensor>& mats,
                        const std::vector<LayerRef>& refs) const;

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
  std::vector<const char*> streaming;
  for (const auto& d : measures()) {
    if (d.streams) streaming.push_back(d.name);
  }
  TORCH_CHECK_VALUE(decl(m).streams, fn, ": measure must be one that streams over batches (",
                    quoted_names(streaming), "), but got \"", to_string(m),
                    "\" (it needs every example at once: leave out the batches and compute the "
                    "grid from all examples, or use \"minibatch-cka\", a minibatch estimator)");
  TORCH_CHECK_VALUE(resolve_conv(options.conv, m) != GridConv::kFourier, fn,
                    ": conv must not be \"fourier\" when streaming (it needs every example at "
                    "once), but got \"fourier\"");
  auto acc_options = accumulator_options(rows.size(), cols.size());
  const int64_t budget = options.memory_bytes > 0 ? options.memory_bytes : default_memory_budget();
  impl_ = std::make_unique<Impl>(std::move(rows), std::move(cols), std::move(options),
                                 std::move(acc_options));
  impl_->memory_bytes = budget;
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
  if (s.conv == GridConv::kFold) {
    for (const auto& r : refs) check_4d_for(fn, r.label, r.acts, s.conv);
    hw = s.fold_hw ? *s.fold_hw : fold_size(refs, s.options.recipe);
  }
  std::vector<at::Tensor> mats;
  for (const auto& r : refs)
    mats.push_back(layer_features(fn, r.label, r.acts, s.conv, s.options.recipe, hw));
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
  if (s.options.measure == GridMeasure::kMinibatchCka) {
    s.add_minibatch(fn, mats, refs);
  } else {
    if (s.features.empty()) s.check_state_size(fn, mats, refs);
    s.acc.update(mats);
    if (s.options.measure == GridMeasure::kDebiasedCka) s.add_debiased_sums(mats);
  }
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
  const size_t n_layers = s.rows.size() + s.cols.size();
  std::vector<std::string> labels(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const bool is_row = l < s.rows.size();
    labels[l] = is_row ? layer_label(s.rows[l], s.two_models ? "a" : nullptr)
                       : layer_label(s.cols[l - s.rows.size()], "b");
  }
  const bool symmetric = decl(s.options.measure).symmetric;
  const auto cells = grid_cells(static_cast<int64_t>(s.rows.size()),
                                static_cast<int64_t>(s.two_models ? s.cols.size() : s.rows.size()),
                                s.two_models, symmetric);
  std::vector<std::string> reasons(n_layers);
  if (s.options.measure == GridMeasure::kMinibatchCka) {
    at::Tensor h = s.minibatch_hsic.to(at::kCPU);
    for (size_t l = 0; l < n_layers; ++l) {
      const double self = h[l][l].item<double>();
      if (!(self > 0.0)) {
        reasons[l] = std::string(fn) + ": " + labels[l] +
                     " must have a positive mean unbiased HSIC with itself over the batches, but "
                     "got " +
                     num_str(self) + " (a constant layer)";
      }
    }
    const CellValues cv = evaluate_cells(cells, reasons, labels, [&](const Cell& c) {
      return s.minibatch_hsic[c.x][c.y] /
             (s.minibatch_hsic[c.x][c.x] * s.minibatch_hsic[c.y][c.y]).sqrt();
    });
    return assemble(s.rows, s.two_models ? s.cols : s.rows, s.two_models, cells, cv, s.examples,
                    s.options);
  }
  const int64_t rows = s.acc.n();
  TORCH_CHECK_VALUE(rows >= 2, fn, ": layers must have at least 2 examples, but got ", rows);
  const auto state = s.acc.state();
  const double scale = 1.0 / static_cast<double>(rows - 1);
  std::vector<LayerMoments> layers(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string id = std::to_string(l);
    LayerMoments& lm = layers[l];
    lm.label = labels[l];
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
  CellValues cv;
  if (s.options.measure == GridMeasure::kDebiasedCka) {
    // The data's own co-moments (the covariances above were scaled in place, and are in the
    // accumulator's power-of-two units, while the fourth-moment sums are not).
    const auto raw = s.acc.unscaled_state();
    for (size_t l = 0; l < n_layers; ++l) {
      try {
        detail::check_debiased_examples(fn, rows);
        detail::check_not_constant(fn, labels[l].c_str(), layers[l].non_constant);
      } catch (const c10::Error& e) {
        reasons[l] = message_of(e);
      }
    }
    cv = evaluate_cells(cells, reasons, labels, [&](const Cell& c) {
      return s.streamed_debiased_cka(fn, raw, std::min(c.x, c.y), std::max(c.x, c.y), rows);
    });
  } else {
    cv = streamed_cells(fn, layers, cross, cells, s.options);
  }
  return assemble(s.rows, s.two_models ? s.cols : s.rows, s.two_models, cells, cv, s.examples,
                  s.options);
}

// minibatch-cka: each layer's U-centered Gram matrix of the batch (from column blocks, so any
// width), then every pair's <U(K), U(L)> / (b (b - 3)) at once as one product of the flattened
// matrices.
void GridAccumulator::Impl::add_minibatch(const char* fn, const std::vector<at::Tensor>& mats,
                                          const std::vector<LayerRef>& refs) {
  const int64_t b = mats.front().size(0);
  TORCH_CHECK_VALUE(b >= 4, fn,
                    ": every batch must have at least 4 examples for minibatch-cka "
                    "(the unbiased HSIC estimator divides by b - 3), but got a batch of ",
                    b, " (", refs.front().label, " with shape ",
                    detail::shape_str(refs.front().acts), ")");
  std::vector<at::Tensor> flat;
  if (minibatch_unit.empty()) minibatch_unit.assign(mats.size(), 0.0);
  for (size_t l = 0; l < mats.size(); ++l) {
    // Batches add up at their true relative scale: the Gram of X_c / scale, in units of the
    // layer's first batch.
    detail::GramStats g = detail::centered_gram(mats[l], at::kDouble);
    if (minibatch_unit[l] == 0.0) minibatch_unit[l] = g.scale;
    const double r = g.scale / minibatch_unit[l];
    TORCH_CHECK_VALUE(std::isfinite(r * r) && r * r > 0.0, fn, ": ", refs[l].label,
                      " must stay within 1e150 of its first batch's scale for minibatch-cka, but "
                      "this batch's largest |value| is ",
                      g.scale / 2.0, " against ", minibatch_unit[l] / 2.0, " in the first batch");
    at::Tensor k = g.gram * (r * r);
    flat.push_back(detail::center_gram(k, /*unbiased=*/true).reshape({-1}));
  }
  at::Tensor u = at::stack(flat);  // [L, b^2]
  at::Tensor h = at::mm(u, u.t()).div_(static_cast<double>(b * (b - 3)));
  minibatch_hsic = minibatch_hsic.defined() ? minibatch_hsic + h : h;
  ++batches;
}

// The exact streaming state is 8 (sum p_l^2 + sum over kept pairs p_a p_b) bytes: refuse before
// allocating it when it exceeds the budget.
void GridAccumulator::Impl::check_state_size(const char* fn, const std::vector<at::Tensor>& mats,
                                             const std::vector<LayerRef>& refs) const {
  double bytes = 0.0;
  size_t widest = 0;
  for (size_t l = 0; l < mats.size(); ++l) {
    const double p = static_cast<double>(mats[l].size(1));
    bytes += 8.0 * p * p;
    if (mats[l].size(1) > mats[widest].size(1)) widest = l;
  }
  for (const auto& [a, b] : acc.pair_indices()) {
    bytes += 8.0 * static_cast<double>(mats[a].size(1)) * static_cast<double>(mats[b].size(1));
  }
  TORCH_CHECK_VALUE(bytes <= static_cast<double>(memory_bytes), fn, ": exact streaming of \"",
                    to_string(options.measure), "\" keeps p x p moments of every layer and pair (",
                    num_str(bytes / 1073741824.0),
                    " GiB here), which must fit the memory budget of ",
                    num_str(static_cast<double>(memory_bytes) / 1073741824.0), " GiB, but ",
                    refs[widest].label, " has ", mats[widest].size(1), " features (shape ",
                    detail::shape_str(refs[widest].acts), " under conv \"", to_string(conv),
                    "\"); use measure \"minibatch-cka\" (a different estimator), conv \"pool\", "
                    "fewer layers, or all examples at once (no batches: wide layers are then "
                    "reduced to n x n Gram matrices)");
}

}  // namespace svcca
