"""svcca: representation similarity (CCA, SVCCA, PWCCA, CKA, Procrustes) as torch ops.

Loading this package loads the op library (``libsvcca_ops.so``) with
``torch.ops.load_library``; the ops are then also reachable as ``torch.ops.svcca.*``,
including from TorchScript functions (which can be saved and run from C++ with the library
loaded).

Modern functions take activations as ``[n_examples, n_features]`` tensors (float32 or float64,
any device); numerics run in float64 unless ``precision="input"``; results come back in the
input dtype. The google/svcca-compatible functions (``get_cca_similarity``, ``compute_pwcca``,
``sum_threshold``, ``get_pls_similarity``, ``get_pca``) take google/svcca's
``[n_neurons, n_datapoints]`` layout and return float64, with google/svcca's keys.

The library is found, in order, through the ``SVCCA_OPS_LIBRARY`` environment variable, next to
this file, or in the ``lib`` directory two levels up (an installed tree).
"""
import os as _os

import torch

__all__ = [
    "library_path",
    "cca",
    "svcca",
    "pwcca",
    "linear_cka",
    "rbf_cka",
    "procrustes",
    "procrustes_distance",
    "get_cca_similarity",
    "compute_pwcca",
    "get_svcca_similarity",
    "sum_threshold",
    "get_pls_similarity",
    "get_pca",
    "fourier_ccas",
    "fourier_cca",
    "conv_features",
    "conv_similarity",
    "fold_positions",
    "global_avg_pool",
    "resize_spatial",
    "Grid",
    "similarity_grid",
    "module_grid",
    "default_memory_budget",
    "capture",
    "tap_model",
    "layer_names",
    "list_layers",
    "TrainingMonitor",
    "bootstrap",
    "bootstrap_difference",
    "permutation_test",
    "grid_inference",
]

_LIB_NAME = "libsvcca_ops.so"


def _find_library():
    env = _os.environ.get("SVCCA_OPS_LIBRARY")
    if env:
        return env
    here = _os.path.dirname(_os.path.abspath(__file__))
    for candidate in (_os.path.join(here, _LIB_NAME), _os.path.join(here, "..", "..", _LIB_NAME)):
        if _os.path.exists(candidate):
            return _os.path.normpath(candidate)
    raise ImportError(
        "svcca: cannot find %s next to %s; build the project (cmake --build build) or set "
        "SVCCA_OPS_LIBRARY to the library's path" % (_LIB_NAME, here))


library_path = _find_library()
torch.ops.load_library(library_path)
_ops = torch.ops.svcca
from svcca.distributed import all_reduce_state  # noqa: E402,F401  (torch.distributed helper)
from svcca.capture import capture, layer_names, list_layers, tap_model  # noqa: E402,F401
from svcca.monitor import TrainingMonitor  # noqa: E402,F401
from svcca.grid import (Grid, default_memory_budget, module_grid,  # noqa: E402,F401
                        similarity_grid)
from svcca.inference import (bootstrap, bootstrap_difference,  # noqa: E402,F401
                             grid_inference, permutation_test)


def cca(x, y, epsilon=0.0, variance_cutoff=0.0, rank_rtol=None, precision="float64",
        allow_forced_correlations=False):
    """Canonical correlation analysis of ``x: [n, p1]`` and ``y: [n, p2]``.

    Returns ``(correlations, x_weights, y_weights, x_mask, y_mask)``: canonical correlations
    (descending, ``k = min(rank x, rank y)``), canonical weights (``x_c @ x_weights`` are the
    canonical variates; zero rows for dropped features) and boolean masks of kept features.

    ``epsilon``: ridge relative to each layer's largest feature variance. ``variance_cutoff``:
    drop features with variance <= cutoff * largest (constant features are always dropped).
    ``rank_rtol``: eigenvalues <= rank_rtol * largest count as zero (default p * machine eps
    of the compute dtype, plus a floor at the rounding level of the input dtype).
    ``precision``: ``"float64"`` (default) or ``"input"``.
    ``allow_forced_correlations``: a pair whose kept directions number ``rx + ry > n - 1`` is
    refused by default (the spans must intersect, forcing ``rx + ry - (n - 1)`` correlations to
    1 for any data); True computes it anyway. The same option exists for svcca and pwcca.
    Raises ValueError / TypeError on bad input (n <= p, NaN, mismatched n, ...).
    """
    return _ops.cca(x, y, epsilon, variance_cutoff, rank_rtol, precision,
                    allow_forced_correlations)


def svcca(x, y, fraction=0.99, dims=None, keep="variance", epsilon=0.0, variance_cutoff=0.0,
          rank_rtol=None, precision="float64", allow_forced_correlations=False):
    """SVCCA (Raghu et al. 2017): SVD-reduce each layer, then CCA.

    Keeps ``dims`` top directions per layer when given; otherwise the smallest number reaching
    ``fraction`` of the variance (``keep="variance"``: squared singular values, the paper's
    prose; default) or of the singular-value mass (``keep="singular_value_mass"``: google/svcca's
    tutorial). Returns ``(score, correlations, x_dims, y_dims)``; score is the mean correlation.
    """
    return _ops.svcca(x, y, fraction, dims, keep, epsilon, variance_cutoff, rank_rtol, precision,
                      allow_forced_correlations)


def pwcca(x, y, weighting="reference", epsilon=0.0, variance_cutoff=0.0, rank_rtol=None,
          precision="float64", allow_forced_correlations=False):
    """Projection-weighted CCA (Morcos et al. 2018). Not symmetric in x and y.

    ``weighting="reference"`` (default) reproduces google/svcca's compute_pwcca (with its
    wrong-layer branch fixed); ``"canonical_variates"`` is the paper's formula (weights from x's
    canonical variates and centered features). Returns ``(score, weights, correlations)``.
    """
    return _ops.pwcca(x, y, weighting, epsilon, variance_cutoff, rank_rtol, precision,
                      allow_forced_correlations)


def linear_cka(x, y, debiased=False, precision="float64"):
    """Linear CKA (Kornblith et al. 2019) of ``x: [n, p1]`` and ``y: [n, p2]``: a 0-d tensor.

    ``debiased=False``: ``||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` of the centered data (the
    biased HSIC estimator; Kornblith's "CKA"). ``debiased=True``: the ratio of unbiased HSIC_1
    estimates of Song et al. (2012) (Kornblith's ``center_gram(unbiased=True)``, "debiased CKA";
    needs n >= 4; not the minibatch estimator some tools call "unbiased CKA"). Computed in feature
    space, ``O(n p^2)``, without an ``n x n`` matrix. Raises ValueError for a constant layer.
    """
    return _ops.linear_cka(x, y, debiased, precision)


def rbf_cka(x, y, threshold=1.0, sigma=None, debiased=False, precision="float64"):
    """Kernel CKA with the RBF kernel ``exp(-||a - b||^2 / (2 sigma^2))``: a 0-d tensor.

    Without ``sigma``, each layer gets ``sigma = threshold * sqrt(median squared distance)``, the
    median over the full ``n x n`` matrix including its zero diagonal (Kornblith's rule; numpy's
    median). An absolute ``sigma`` applies to both layers. ``debiased`` as in :func:`linear_cka`.
    Builds ``n x n`` kernel matrices. Raises ValueError for ``threshold``/``sigma`` <= 0, a
    constant layer, or a zero median squared distance (pass ``sigma`` then).
    """
    return _ops.rbf_cka(x, y, threshold, sigma, debiased, precision)


def procrustes(x, y, precision="float64"):
    """Orthogonal Procrustes similarity ``||X^T Y||_*`` (nuclear norm), in [0, 1].

    ``X``, ``Y``: ``x``, ``y`` centered and scaled to unit Frobenius norm (``p1 != p2`` is fine).
    1 when ``y`` is a rotated/reflected, scaled, translated copy of ``x``. Symmetric.
    See :func:`procrustes_distance` for the distance ``2 - 2 * procrustes(x, y)``.
    """
    return _ops.procrustes(x, y, precision)


def procrustes_distance(x, y, precision="float64"):
    """Orthogonal Procrustes distance ``2 - 2 ||X^T Y||_* = min_Q ||X Q - Y||_F^2``, in [0, 2].

    Squared Procrustes distance of Ding et al. (2021) on centered, unit-Frobenius-norm inputs (the
    minimum over orthogonal ``Q``, after zero-padding the narrower layer when ``p1 != p2``).
    """
    return _ops.procrustes_distance(x, y, precision)


def get_cca_similarity(acts1, acts2, epsilon=0.0, threshold=0.98, compute_coefs=True,
                       compute_dirns=False):
    """google/svcca's cca_core.get_cca_similarity on ``[neurons, datapoints]`` tensors.

    Returns a dict with google/svcca's keys (``cca_coef1``, ``mean``, ``x_idxs``, ...); ``mean``
    and ``sum`` are 2-element tensors. Raises ValueError where the reference would crash or
    return NaN (all neurons removed, threshold 0).
    """
    return _ops.get_cca_similarity(acts1, acts2, epsilon, threshold, compute_coefs, compute_dirns)


def compute_pwcca(acts1, acts2, epsilon=0.0):
    """google/svcca's pwcca.compute_pwcca: returns ``(pwcca_value, weights, coefs)``."""
    return _ops.compute_pwcca(acts1, acts2, epsilon)


def get_svcca_similarity(acts1, acts2, dims1=20, dims2=None, epsilon=1e-10, threshold=0.98):
    """SVCCA as google/svcca's tutorial runs it, on ``[neurons, datapoints]`` tensors.

    Keeps each layer's top ``dims1`` / ``dims2`` (default: ``dims1``) singular directions of the
    centered activations, then runs ``get_cca_similarity(svacts1, svacts2, epsilon, threshold)``.
    Returns its keys plus ``svcca_score`` (the plain mean of ``cca_coef1``, what the tutorial
    reports) and ``sv1`` / ``sv2`` (the kept singular values). The directions come from one
    symmetric product per layer and an eigendecomposition of the neuron covariance, not the wide
    SVD: the same numbers, an order of magnitude faster at ``[1024, 50000]``.
    """
    return _ops.get_svcca_similarity(acts1, acts2, dims1, -1 if dims2 is None else dims2, epsilon,
                                     threshold)


def sum_threshold(array, threshold):
    """google/svcca's sum_threshold; returns -1 where the reference returns None."""
    return _ops.sum_threshold(array, threshold)


def get_pls_similarity(acts1, acts2):
    """google/svcca's numpy_pls.get_pls_similarity (works for unequal neuron counts too)."""
    return _ops.get_pls_similarity(acts1, acts2)


def get_pca(acts, compute_dirns=False):
    """google/svcca's numpy_pca.get_pca: ``eigenvals`` are singular values, not variances."""
    return _ops.get_pca(acts, compute_dirns)


# ---- Conv layers and Fourier CCA ---------------------------------------------------------------
def fourier_ccas(conv_acts1, conv_acts2, epsilon=0.0):
    """google/svcca's dft_ccas.fourier_ccas on NHWC ``[N, H, W, C]`` conv activations.

    2-D FFT over (H, W) in complex64 (as the reference), then get_cca_similarity's numbers at
    every spatial frequency, all frequencies in one batched pass. Returns a dict over the
    frequency grid ``[h, w]`` (numpy fft order): ``cca_coef1``/``cca_coef2`` ``[h, w, k]``,
    ``x_idxs``/``y_idxs`` ``[h, w, C]`` (bool), ``mean`` and ``sum`` ``[h, w]`` (float64).
    Different spatial sizes need square maps and are cropped to frequencies ``[-s/2, s/2)``,
    ``s = min(H1, H2)``. ``epsilon`` is explicit (the reference passes ``compute_dirns`` there).
    Raises ValueError for non-4-D input, unequal N, ``N <= C``, non-square maps of unequal sizes;
    TypeError for complex input.
    """
    return _ops.fourier_ccas(conv_acts1, conv_acts2, epsilon)


def fourier_cca(x, y, layout="NCHW", epsilon=0.0, variance_cutoff=0.0, rank_rtol=None,
                precision="float64"):
    """Fourier CCA (Raghu et al. 2017): one complex CCA of the channels per spatial frequency.

    ``x: [N, C1, H1, W1]``, ``y: [N, C2, H2, W2]`` (``layout="NHWC"`` for ``[N, H, W, C]``).
    Returns ``(correlations, valid, x_mask, y_mask, mean, mean_without_dc)``: correlations
    ``[H', W', k]`` (``k = min(C1, C2)``, descending per frequency, 0 where not ``valid``), the
    kept channels per frequency, and the mean over all frequencies and valid correlations, with and
    without the zero frequency. Unequal sizes are cropped per axis to ``[-s/2, s/2)`` with
    ``s = min`` (non-square maps allowed). Needs ``N >= C + 2`` per layer. Numerics in complex128
    unless ``precision="input"``; results in the input dtype. Real inputs only.
    """
    return _ops.fourier_cca(x, y, layout, epsilon, variance_cutoff, rank_rtol, precision)


def conv_features(x, y, reduction="fold", match="interpolate", mode="reference", layout="NCHW",
                  position_stride=1):
    """Turn two conv layers into ``[n, C1]`` and ``[n, C2]`` matrices for any measure.

    ``reduction="fold"`` (default): every spatial position is an example, ``[N*H*W, C]``, keeping
    every ``position_stride``-th row; unequal spatial sizes are matched first by ``match``:
    ``"interpolate"`` (default: the smaller map up, with ``mode``) or ``"pool"`` (adaptive average
    pooling down). ``reduction="global_avg_pool"``: ``[N, C]``. ``mode``: ``"reference"``
    (google/svcca tutorial: bilinear at ``i*h/H`` clamped to the edge), ``"nearest"``,
    ``"bilinear"``, ``"bilinear_align_corners"``, ``"bicubic"``, ``"area"``.
    """
    return _ops.conv_features(x, y, reduction, match, mode, layout, position_stride)


def conv_similarity(x, y, measure=None, **recipe):
    """``measure(*conv_features(x, y, **recipe))``; default measure: the mean canonical correlation.

    ``measure`` is any callable of two ``[n, p]`` tensors, e.g. ``svcca.linear_cka`` or
    ``lambda a, b: svcca.svcca(a, b)[0]``.
    """
    if measure is None:
        def measure(a, b):
            return cca(a, b)[0].mean()
    a, b = conv_features(x, y, **recipe)
    return measure(a, b)


def fold_positions(acts, layout="NCHW", position_stride=1):
    """``[N*H*W, C]``: spatial positions folded into examples (rows ordered n, h, w)."""
    return _ops.fold_positions(acts, layout, position_stride)


def global_avg_pool(acts, layout="NCHW"):
    """``[N, C]``: mean over the spatial axes."""
    return _ops.global_avg_pool(acts, layout)


def resize_spatial(acts, size, mode="reference", layout="NCHW"):
    """Resize the spatial maps to ``size = (height, width)``; modes as in :func:`conv_features`."""
    return _ops.resize_spatial(acts, list(size), mode, layout)
