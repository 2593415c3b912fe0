// Layer x layer similarity grids: each layer's own work (centering, Gram matrix, whitening or
// SVD) done once per layer, only the cross terms per pair; one-shot or streamed over batches.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "svcca/conv/recipes.h"
#include "svcca/factors.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

namespace svcca {

// Named activations of one model, in layer order: [n, ...] tensors, axis 0 is examples.
using NamedActivations = std::vector<std::pair<std::string, at::Tensor>>;

// The measure of a grid cell. CCA-family cells are summarised as the mean canonical
// correlation (cca: mean over all; svcca: mean over the SVD-truncated CCA; pwcca: the
// projection-weighted mean, reference weighting, row layer as x).
enum class GridMeasure {
  kLinearCka,    // "cka"
  kDebiasedCka,  // "debiased-cka"
  kRbfCka,       // "rbf-cka"
  kCca,          // "cca"
  kSvcca,        // "svcca"
  kPwcca,        // "pwcca" (not symmetric: the one-model grid is the full L x L matrix)
  // "minibatch-cka": the minibatch CKA estimator of Nguyen et al. (2021), a different estimator
  // from the others: Song's unbiased HSIC_1 averaged over the batches of GridAccumulator, then the
  // ratio (MinibatchCkaAccumulator's definition, linear kernel). Its value depends on how the
  // examples are split into batches; with one batch of all examples (similarity_grid) it equals
  // debiased-cka. Streams over batches with O(b^2) memory per layer, whatever its width.
  kMinibatchCka,
};
// "cka" | "debiased-cka" | "rbf-cka" | "cca" | "svcca" | "pwcca" | "minibatch-cka"; throws
// listing them otherwise.
GridMeasure parse_grid_measure(const char* fn, const std::string& name, const std::string& value);
std::string to_string(GridMeasure measure);
// Every measure's name, in declaration order (for help texts and bindings).
std::vector<std::string> grid_measure_names();

// How a layer with more than two dims ([n, c, h, w], [n, t, d], ...) becomes [rows, features].
enum class GridConv {
  kAuto,     // kFlatten for the CKA family, kPool for the CCA family (the documented default)
  kFlatten,  // [n, c*h*w] (Kornblith et al. 2019)
  kPool,     // [n, c, h, w] (and [n, c, d, h, w]): global average over the spatial axes, [n, c];
             // [n, t, d] (transformer tokens, batch first): the mean over tokens, [n, d];
             // 2-D layers pass unchanged
  kCls,      // as kPool, but [n, t, d] layers keep their first (CLS) token, [n, d]
  kFold,     // positions become examples, [n*h*w, c]; layers are brought to the largest h x w of
             // the grid's 4-D layers with recipe.upsample; cells of a layer that is not 4-D are
             // undefined (null, with the reason)
  kFourier,  // measure kCca only: the mean over frequencies of fourier_cca (per-layer FFT and
             // whitening reused when all layers share h x w); cells of a layer that is not 4-D
             // are undefined (null, with the reason)
};
// "auto" | "flatten" | "pool" | "cls" | "fold" | "fourier"; throws listing them otherwise.
GridConv parse_grid_conv(const char* fn, const std::string& name, const std::string& value);
std::string to_string(GridConv conv);
// Every conv's name ("auto", "flatten", ...).
std::vector<std::string> grid_conv_names();

struct GridOptions {
  GridMeasure measure = GridMeasure::kLinearCka;
  GridConv conv = GridConv::kAuto;
  ConvRecipe recipe = {};   // layout and resize mode used by kFold / kFourier (NCHW default)
  CcaOptions cca = {};      // kCca (and the CCA inside kFourier)
  SvccaOptions svcca = {};  // kSvcca
  PwccaOptions pwcca = {};  // kPwcca
  RbfCkaOptions rbf = {};   // kRbfCka
  Precision precision = Precision::kFloat64;  // compute dtype of the CKA family
  // Side each layer's factors are taken from (svcca/factors.h): kAuto takes the n x n Gram matrix
  // of a layer with more features than rows (linear CKA, debiased CKA, svcca; rbf-cka always
  // works from Gram matrices) and the covariance otherwise. cca and pwcca need rows >= p + 2, so
  // they always take the covariance side (kGram is honoured by cca, ignored by pwcca).
  FactorSide side = FactorSide::kAuto;
  // Memory budget in bytes for GridAccumulator's exact streaming state (0: default_memory_budget).
  int64_t memory_bytes = 0;
};

// The conv `options` resolve to (kAuto: kFlatten for the CKA family, kPool for the CCA family).
GridConv resolved_conv(const GridOptions& options);

// The per-example part of the conv of `options`: under kPool and kCls (and kAuto resolving to
// kPool) a layer's [n, ...] activations become [n, c] (the mean over space or tokens, or the first
// token), which can be applied to any batch of examples before the grid sees them (the CLI pools
// every captured chunk, so a pooled grid holds [n, c] per layer); other convs return acts as is.
at::Tensor per_example_features(const at::Tensor& acts, const GridOptions& options);

// A default memory budget derived from the machine: min(MemTotal / 4, MemAvailable / 2) from
// /proc/meminfo (1 GiB where it cannot be read).
int64_t default_memory_budget();
// The peak resident set size of this process so far (VmHWM), in bytes; 0 where unknown.
int64_t peak_rss_bytes();

// Cells of a grid that are undefined (NaN in Grid::values, null in JSON and CSV), with the one
// cause they share: e.g. a layer that is constant on the examples (its whole row and column), CCA
// with fewer than p + 2 examples, a 2-D layer under conv "fold". A grid never fails for them.
struct UndefinedCells {
  std::string reason;                              // one line, names the layer(s) and the rule
  std::vector<std::pair<int64_t, int64_t>> cells;  // (row, col) indices into Grid::values
};

// Bootstrap intervals and permutation p-values of every cell of a grid
// (svcca/inference/grid_inference.h); empty (resamples = permutations = 0) unless asked for.
struct GridInference {
  int64_t resamples = 0;     // bootstrap resamples per cell (0: no intervals)
  double level = 0.0;        // the intervals' confidence level
  std::string method;        // "percentile" | "bca"
  int64_t permutations = 0;  // permutations per cell (0: no p-values)
  uint64_t seed = 0;         // seed of the resamples and permutations (shared by every cell)
  at::Tensor low, high, standard_error;  // [rows, cols] float64 CPU (NaN: no interval)
  // [rows, cols] float64 CPU: resamples on which the cell's measure is undefined, left out of its
  // interval (NaN: cells not resampled). A share well above 0 biases the interval towards the
  // resamples that remain.
  at::Tensor invalid;
  at::Tensor p_value, null_mean;  // [rows, cols] float64 CPU (NaN: no test)
  // Defined cells without an interval or p-value, with the reason (e.g. too few valid resamples).
  std::vector<UndefinedCells> undefined;
};

// A grid of similarities with its labels. values[i][j] is the measure of rows[i] (x) against
// cols[j] (y). Serialised by svcca/report/report.h.
struct Grid {
  std::vector<std::string> rows;
  std::vector<std::string> cols;
  at::Tensor values;      // [rows.size(), cols.size()], float64, CPU
  std::string measure;    // to_string(GridMeasure), or e.g. "cka-to-final" for dynamics
  std::string row_label;  // axis titles, e.g. "layer", "model A layer"
  std::string col_label;  // e.g. "layer", "model B layer", "checkpoint", "step"
  int64_t examples = 0;   // examples (rows of each layer before folding) the grid is over
  std::map<std::string, std::string> options;  // every option that affects the numbers
  // The NaN cells of `values`, grouped by cause (one entry per distinct reason, in row-major order
  // of their first cell). Empty when every cell is defined.
  std::vector<UndefinedCells> undefined;
  GridInference inference;  // intervals and p-values, when asked for
};

// L x L grid of one model's layers. Every defined cell equals the one-shot pair call on the
// layers after the conv recipe (linear_cka, cca(...).correlations.mean(), svcca(...).score,
// pwcca(...).score with the row layer as x, rbf_cka) up to rounding. Each layer is reduced once
// to its factor (GridBuilder; svcca/factors.h: the centered data or the n x n Gram matrix for
// the CKA family, the whitened basis Z for cca and svcca, covariance factors for pwcca, the
// centered RBF kernel for rbf-cka), then one cross term per cell, formed and dropped. Precision::
// kInput computes each layer in its own dtype. Symmetric measures compute the upper triangle.
// A cell whose measure is undefined for its layers (a layer that is constant or has non-finite
// values, cca / pwcca with rows < p + 2, a layer that is not 4-D under fold / fourier, a failed
// decomposition) is NaN with its reason in Grid::undefined; the grid itself never fails for it.
// Throws when no layer is given, names repeat, a layer is not a float tensor with >= 2 dims,
// layers disagree on the number of examples or device (names them and their shapes), or an
// option does not apply (kFourier with a measure other than cca).
Grid similarity_grid(const NamedActivations& layers, const GridOptions& options = {});
// La x Lb grid of model A's layers (rows) against model B's (cols), on the same examples.
Grid similarity_grid(const NamedActivations& a, const NamedActivations& b,
                     const GridOptions& options = {});

// Streams a grid over batches: exact for cka, cca, svcca and pwcca (float64 moments through
// CovarianceAccumulator, so the result equals similarity_grid on all rows to ~1e-10, whatever
// the batch sizes) and for debiased-cka (plus O(p) fourth-moment sums per layer and pair, see
// detail::debiased_cka_from_sums); minibatch-cka keeps three scalars per cell (each batch needs
// >= 4 rows). rbf-cka and conv kFourier need every example at once and throw at construction.
// kFold's target size comes from the first batch. pwcca's reference weighting has no QR fallback
// from moments (see pwcca.h). Memory of the exact measures is 8 (sum of features)^2 bytes,
// independent of n: the first batch throws (naming the widest layer, its width and the
// alternatives) when that exceeds options.memory_bytes. Undefined cells are NaN with reasons, as
// in similarity_grid.
class GridAccumulator {
 public:
  // rows: layer names of model A; cols: of model B, or empty for a one-model grid.
  GridAccumulator(std::vector<std::string> rows, std::vector<std::string> cols = {},
                  GridOptions options = {});
  ~GridAccumulator();
  GridAccumulator(GridAccumulator&&) noexcept;
  GridAccumulator& operator=(GridAccumulator&&) noexcept;

  // One batch of every layer, by name (same names as at construction, any order; same batch
  // size). Throws, leaving the accumulator unchanged, on missing / extra / repeated names, batch
  // sizes that differ, or a layer whose feature count or dtype changed.
  void update(const NamedActivations& a, const NamedActivations& b = {});
  // Examples seen (rows of each layer before folding).
  int64_t n() const;
  // The grid over every example seen. Throws before the first batch or when a cell cannot be
  // computed (as similarity_grid).
  Grid result() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Builds a grid one layer at a time, so that a layer's activations can be released as soon as
// they are added: add() reduces the layer to its factor at once (svcca/factors.h; nothing of the
// tensor is kept), result() computes every cell from the factors, forming each cross term and
// dropping it. Memory: the factors, O(sum over layers of rows * min(rows, p)) for the moment
// measures (rows^2 per layer for rbf-cka), never O((sum of features)^2). similarity_grid is
// GridBuilder over its layers; the CLI adds layers pass by pass under a memory budget.
//   svcca::GridBuilder b({"conv1", "fc"});  b.add("conv1", a1);  b.add("fc", a2);
//   svcca::Grid g = b.result();
class GridBuilder {
 public:
  // rows: model A's layers (or the one model's); cols: model B's, empty for a one-model grid.
  // Throws on empty or repeated names and on options that do not apply (kFourier: use
  // similarity_grid, which needs every layer at once).
  GridBuilder(std::vector<std::string> rows, std::vector<std::string> cols = {},
              GridOptions options = {});
  ~GridBuilder();
  GridBuilder(GridBuilder&&) noexcept;
  GridBuilder& operator=(GridBuilder&&) noexcept;

  // conv kFold: the h x w every 4-D layer is brought to (the largest of the grid's 4-D layers,
  // as similarity_grid takes it). Needed before the first add() under kFold.
  void set_fold_size(int64_t h, int64_t w);
  // Adds layer `name` (of model B when `col`): [n, ...] activations, reduced to its factor now.
  // A layer whose factor is undefined (constant, non-finite values, too few rows for the
  // measure, not 4-D under kFold) is recorded with its reason. Throws on an unknown or repeated
  // name, a tensor that is not floating with >= 2 dims, or a number of examples (or a device)
  // that differs from the layers added before.
  void add(const std::string& name, const at::Tensor& acts, bool col = false);
  // Records layer `name` as undefined for `reason` (e.g. its output is not one row per example):
  // its cells are NaN with that reason.
  void add_undefined(const std::string& name, const std::string& reason, bool col = false);
  // Bytes held by the factors so far.
  int64_t factor_bytes() const;
  // The grid. Throws when a layer was not added (naming it).
  Grid result() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace svcca
