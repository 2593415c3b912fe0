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
};
// "cka" | "debiased-cka" | "rbf-cka" | "cca" | "svcca" | "pwcca"; throws listing them otherwise.
GridMeasure parse_grid_measure(const char* fn, const std::string& name, const std::string& value);
std::string to_string(GridMeasure measure);

// How a layer with more than two dims ([n, c, h, w], [n, t, d], ...) becomes [rows, features].
enum class GridConv {
  kAuto,     // kFlatten for the CKA family, kPool for the CCA family (the documented default)
  kFlatten,  // [n, c*h*w] (Kornblith et al. 2019)
  kPool,     // global average over the spatial axes: [n, c] (2-D layers pass unchanged)
  kFold,     // positions become examples, [n*h*w, c]; every layer of the grid must be 4-D;
             // layers are brought to the largest h x w of the grid with recipe.upsample
  kFourier,  // measure kCca only, every layer 4-D: the mean over frequencies of fourier_cca
             // (per-layer FFT and whitening reused when all layers share h x w)
};
// "auto" | "flatten" | "pool" | "fold" | "fourier"; throws listing them otherwise.
GridConv parse_grid_conv(const char* fn, const std::string& name, const std::string& value);
std::string to_string(GridConv conv);

struct GridOptions {
  GridMeasure measure = GridMeasure::kLinearCka;
  GridConv conv = GridConv::kAuto;
  ConvRecipe recipe = {};   // layout and resize mode used by kFold / kFourier (NCHW default)
  CcaOptions cca = {};      // kCca (and the CCA inside kFourier)
  SvccaOptions svcca = {};  // kSvcca
  PwccaOptions pwcca = {};  // kPwcca
  RbfCkaOptions rbf = {};   // kRbfCka
  Precision precision = Precision::kFloat64;  // compute dtype of the CKA family
};

// Cells of a grid that are undefined (NaN in Grid::values, null in JSON and CSV), with the one
// cause they share: e.g. a layer that is constant on the examples (its whole row and column), CCA
// with fewer than p + 2 examples, a 2-D layer under conv "fold". A grid never fails for them.
struct UndefinedCells {
  std::string reason;                              // one line, names the layer(s) and the rule
  std::vector<std::pair<int64_t, int64_t>> cells;  // (row, col) indices into Grid::values
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
};

// L x L grid of one model's layers. Every cell equals the one-shot pair call on the layers after
// the conv recipe (linear_cka, cca(...).correlations.mean(), svcca(...).score, pwcca(...).score
// with the row layer as x, rbf_cka) up to rounding. Cost: each layer is centered (float64 by
// default), its covariance and factors (eigh, whitening) computed once, then one cross-covariance
// per pair; memory holds every layer's centered [rows, p] data and covariances. rbf-cka holds one
// centered [n, n] kernel matrix per layer. Precision::kInput computes every pair in the dtype
// promoted over all layers. Symmetric measures compute the upper triangle and mirror it.
// Throws when fewer than one layer is given, names repeat, a layer is not a finite float tensor
// with >= 2 dims, layers disagree on the number of examples or device (names them and their
// shapes), an option does not apply (kFourier with a measure other than cca, kFold / kFourier
// with a layer that is not 4-D), or a cell cannot be computed (the message names the layer, e.g.
// cca and pwcca need rows >= p + 2, or the pair of layers).
Grid similarity_grid(const NamedActivations& layers, const GridOptions& options = {});
// La x Lb grid of model A's layers (rows) against model B's (cols), on the same examples.
Grid similarity_grid(const NamedActivations& a, const NamedActivations& b,
                     const GridOptions& options = {});

// Streams a grid over batches: exact for cka, cca, svcca and pwcca (float64 moments through
// CovarianceAccumulator, so the result equals similarity_grid on all rows to ~1e-10, whatever
// the batch sizes) and for debiased-cka (plus O(p) fourth-moment sums per layer and pair, see
// detail::debiased_cka_from_sums); rbf-cka and conv kFourier need every example at once and throw
// at construction. kFold's target size comes from the first batch. pwcca's reference weighting
// has no QR fallback from moments (see pwcca.h). Memory is O((sum of features)^2), independent
// of n.
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

}  // namespace svcca
