// The one TORCH_LIBRARY(svcca, m): the whole operator surface of torch.ops.svcca in one place.
#include <torch/library.h>

TORCH_LIBRARY(svcca, m) {
  // Modern API: activations are [n_examples, n_features].
  m.def(
      "cca(Tensor x, Tensor y, float epsilon=0., float variance_cutoff=0., float? rank_rtol=None, "
      "str precision=\"float64\") -> (Tensor correlations, Tensor x_weights, Tensor y_weights, "
      "Tensor x_mask, Tensor y_mask)");
  m.def(
      "svcca(Tensor x, Tensor y, float fraction=0.99, int? dims=None, str keep=\"variance\", "
      "float epsilon=0., float variance_cutoff=0., float? rank_rtol=None, "
      "str precision=\"float64\") -> (Tensor score, Tensor correlations, int x_dims, int y_dims)");
  m.def(
      "pwcca(Tensor x, Tensor y, str weighting=\"reference\", float epsilon=0., "
      "float variance_cutoff=0., float? rank_rtol=None, str precision=\"float64\") -> "
      "(Tensor score, Tensor weights, Tensor correlations)");

  // google/svcca compatibility: activations are [n_neurons, n_datapoints].
  m.def(
      "get_cca_similarity(Tensor acts1, Tensor acts2, float epsilon=0., float threshold=0.98, "
      "bool compute_coefs=True, bool compute_dirns=False) -> Dict(str, Tensor)");
  m.def("compute_pwcca(Tensor acts1, Tensor acts2, float epsilon=0.) -> (Tensor, Tensor, Tensor)");
  m.def("sum_threshold(Tensor array, float threshold) -> int");
  m.def("get_pls_similarity(Tensor acts1, Tensor acts2) -> Dict(str, Tensor)");
  m.def("get_pca(Tensor acts, bool compute_dirns=False) -> Dict(str, Tensor)");

  // CKA family and Procrustes.

  // Streaming accumulators.

  // Conv-layer recipes and Fourier CCA.
}
