// The one TORCH_LIBRARY(svcca, m): the whole operator surface of torch.ops.svcca in one place.
#include <torch/library.h>

namespace svcca::ops {
// torch_ext/stream_classes.cpp: torch.classes.svcca.CovarianceAccumulator and friends.
void register_stream_classes(torch::Library& m);
// torch_ext/monitor_class.cpp: torch.classes.svcca.TrainingMonitor.
void register_monitor_class(torch::Library& m);
// torch_ext/grid_ops.cpp: torch.classes.svcca.GridBuilder.
void register_grid_builder_class(torch::Library& m);
}  // namespace svcca::ops

TORCH_LIBRARY(svcca, m) {
  // Modern API: activations are [n_examples, n_features].
  m.def(
      "cca(Tensor x, Tensor y, float epsilon=0., float variance_cutoff=0., float? rank_rtol=None, "
      "str precision=\"float64\", bool allow_forced_correlations=False) -> (Tensor correlations, "
      "Tensor x_weights, Tensor y_weights, "
      "Tensor x_mask, Tensor y_mask)");
  m.def(
      "svcca(Tensor x, Tensor y, float fraction=0.99, int? dims=None, str keep=\"variance\", "
      "float epsilon=0., float variance_cutoff=0., float? rank_rtol=None, "
      "str precision=\"float64\", bool allow_forced_correlations=False) -> (Tensor score, "
      "Tensor correlations, int x_dims, int y_dims)");
  m.def(
      "pwcca(Tensor x, Tensor y, str weighting=\"reference\", float epsilon=0., "
      "float variance_cutoff=0., float? rank_rtol=None, str precision=\"float64\", "
      "bool allow_forced_correlations=False) -> (Tensor score, Tensor weights, "
      "Tensor correlations)");

  // google/svcca compatibility: activations are [n_neurons, n_datapoints].
  m.def(
      "get_cca_similarity(Tensor acts1, Tensor acts2, float epsilon=0., float threshold=0.98, "
      "bool compute_coefs=True, bool compute_dirns=False) -> Dict(str, Tensor)");
  m.def("compute_pwcca(Tensor acts1, Tensor acts2, float epsilon=0.) -> (Tensor, Tensor, Tensor)");
  m.def(
      "get_svcca_similarity(Tensor acts1, Tensor acts2, int dims1=20, int dims2=-1, "
      "float epsilon=1e-10, float threshold=0.98) -> Dict(str, Tensor)");
  m.def("sum_threshold(Tensor array, float threshold) -> int");
  m.def("get_pls_similarity(Tensor acts1, Tensor acts2) -> Dict(str, Tensor)");
  m.def("get_pca(Tensor acts, bool compute_dirns=False) -> Dict(str, Tensor)");

  // CKA family and Procrustes.
  m.def("linear_cka(Tensor x, Tensor y, bool debiased=False, str precision=\"float64\") -> Tensor");
  m.def(
      "rbf_cka(Tensor x, Tensor y, float threshold=1.0, float? sigma=None, bool debiased=False, "
      "str precision=\"float64\") -> Tensor");
  m.def("procrustes(Tensor x, Tensor y, str precision=\"float64\") -> Tensor");
  m.def("procrustes_distance(Tensor x, Tensor y, str precision=\"float64\") -> Tensor");

  // Streaming accumulators.
  svcca::ops::register_stream_classes(m);

  // Conv-layer recipes and Fourier CCA.
  m.def(
      "fourier_ccas(Tensor conv_acts1, Tensor conv_acts2, float epsilon=0.) -> Dict(str, Tensor)");
  m.def(
      "fourier_cca(Tensor x, Tensor y, str layout=\"NCHW\", float epsilon=0., "
      "float variance_cutoff=0., float? rank_rtol=None, str precision=\"float64\") -> "
      "(Tensor correlations, Tensor valid, Tensor x_mask, Tensor y_mask, Tensor mean, "
      "Tensor mean_without_dc)");
  m.def(
      "conv_features(Tensor x, Tensor y, str reduction=\"fold\", str match=\"interpolate\", "
      "str mode=\"reference\", str layout=\"NCHW\", int position_stride=1) -> (Tensor, Tensor)");
  m.def("fold_positions(Tensor acts, str layout=\"NCHW\", int position_stride=1) -> Tensor");
  m.def("global_avg_pool(Tensor acts, str layout=\"NCHW\") -> Tensor");
  m.def(
      "resize_spatial(Tensor acts, int[2] size, str mode=\"reference\", str layout=\"NCHW\") -> "
      "Tensor");

  // Inference (torch_ext/inference_ops.cpp): bootstrap intervals over examples, the paired
  // difference measure(a, c) - measure(b, c), permutation tests; values as float64 0-d tensors.
  // allow_forced_correlations: as the measures' (resamples whose directions exceed the distinct
  // examples drawn - 1 count too). workers: resamples / permutations run at once (0: as many as
  // the BLAS has threads, within the memory budget; 1: one at a time; the same numbers to
  // rounding: a worker runs its BLAS calls single-threaded).
  m.def(
      "bootstrap(Tensor x, Tensor y, str measure=\"cka\", int resamples=1000, float level=0.95, "
      "int seed=0, str method=\"percentile\", float fraction=0.99, int? dims=None, "
      "float epsilon=0., float? sigma=None, int workers=0, bool allow_forced_correlations=False) "
      "-> (Tensor estimate, Tensor low, Tensor high, Tensor standard_error, Tensor resamples, "
      "int invalid)");
  m.def(
      "bootstrap_difference(Tensor a, Tensor b, Tensor c, str measure=\"cka\", "
      "int resamples=1000, float level=0.95, int seed=0, str method=\"percentile\", "
      "float fraction=0.99, int? dims=None, float epsilon=0., float? sigma=None, "
      "int workers=0, bool allow_forced_correlations=False) -> (Tensor estimate, Tensor low, "
      "Tensor high, Tensor standard_error, Tensor resamples, int invalid)");
  m.def(
      "permutation_test(Tensor x, Tensor y, str measure=\"cka\", int permutations=1000, "
      "int seed=0, float fraction=0.99, int? dims=None, float epsilon=0., float? sigma=None, "
      "int workers=0, bool allow_forced_correlations=False) -> (Tensor estimate, "
      "Tensor p_value, Tensor null_mean, Tensor null, int exceed)");
  // A grid with every cell's interval and p-value ([0, 0] tensors for what was not asked for);
  // reasons / cells: cells without one ([k, 2] int64 (row, col) per reason).
  m.def(
      "_grid_inference(Tensor[] x, Tensor[]? y=None, str measure=\"cka\", str conv=\"auto\", "
      "int resamples=0, float level=0.95, str method=\"percentile\", int permutations=0, "
      "int seed=0, float fraction=0.99, int? dims=None, float epsilon=0., float? sigma=None, "
      "int workers=0, bool allow_forced_correlations=False) -> (Tensor values, Tensor low, "
      "Tensor high, Tensor standard_error, Tensor p_value, Tensor null_mean, str[] reasons, "
      "Tensor[] cells, Tensor invalid)");

  // Layer x layer grids (torch_ext/grid_ops.cpp): values [len(x), len(y or x)], float64 on the CPU.
  m.def(
      "similarity_grid(Tensor[] x, Tensor[]? y=None, str measure=\"cka\", str conv=\"auto\") -> "
      "Tensor");
  // The whole grid, for svcca.similarity_grid / svcca.Grid (svcca/grid.py): undefined_cells holds
  // one [k, 2] int64 tensor of (row, col) per reason in undefined_reasons.
  m.def(
      "_similarity_grid(Tensor[] x, str[] x_names, Tensor[]? y=None, str[]? y_names=None, "
      "str measure=\"cka\", str conv=\"auto\", float fraction=0.99, int? dims=None, "
      "float epsilon=0., str precision=\"float64\", str side=\"auto\", float? rank_rtol=None, "
      "bool allow_forced_correlations=False) -> (Tensor values, "
      "str[] rows, str[] cols, str measure, int examples, Dict(str, str) options, "
      "str[] undefined_reasons, Tensor[] undefined_cells, str row_label, str col_label)");
  // svcca::write_grid_files of a grid given by its fields: <dir>/<stem>.json, .csv, .svg, .png.
  m.def(
      "_write_grid_files(Tensor values, str[] rows, str[] cols, str measure, int examples, "
      "Dict(str, str) options, str[] undefined_reasons, Tensor[] undefined_cells, str row_label, "
      "str col_label, str dir, str stem=\"grid\", str title=\"\", float vmin=0., "
      "float vmax=1.) -> str[]");
  // svcca::default_memory_budget(): min(MemTotal / 4, MemAvailable / 2) bytes.
  m.def("default_memory_budget() -> int");
  // Layers added one at a time (svcca.module_grid).
  svcca::ops::register_grid_builder_class(m);

  // Activation capture (torch_ext/capture_ops.cpp). CONSERVATIVE: side effects the JIT must keep.
  constexpr auto kConservative = c10::AliasAnalysisKind::CONSERVATIVE;
  m.def(torch::schema("tap(Any value, str name, bool copy=True) -> ()", kConservative));
  m.def(torch::schema("_tap_active(str name) -> bool", kConservative));
  // pool: None, or the buffer pool TappedModule::run passes (an internal capsule).
  m.def(torch::schema(
      "_capture_begin(str[] layers, bool detach, bool shapes_only=False, Any? pool=None) -> ()",
      kConservative));
  m.def(torch::schema("_capture_end() -> (str[], Tensor[])", kConservative));
  // Training monitor over a TorchScript module (torch_ext/monitor_class.cpp).
  svcca::ops::register_monitor_class(m);
  m.def(torch::schema(
      "tap_model(str path, str output_path, str method_name=\"forward_tapped\") -> str[]",
      kConservative));
}
