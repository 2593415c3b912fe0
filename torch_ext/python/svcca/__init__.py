"""svcca: representation similarity (CCA, SVCCA, PWCCA) as torch ops.

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
    "get_cca_similarity",
    "compute_pwcca",
    "sum_threshold",
    "get_pls_similarity",
    "get_pca",
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


def cca(x, y, epsilon=0.0, variance_cutoff=0.0, rank_rtol=None, precision="float64"):
    """Canonical correlation analysis of ``x: [n, p1]`` and ``y: [n, p2]``.

    Returns ``(correlations, x_weights, y_weights, x_mask, y_mask)``: canonical correlations
    (descending, ``k = min(rank x, rank y)``), canonical weights (``x_c @ x_weights`` are the
    canonical variates; zero rows for dropped features) and boolean masks of kept features.

    ``epsilon``: ridge relative to each layer's largest feature variance. ``variance_cutoff``:
    drop features with variance <= cutoff * largest (constant features are always dropped).
    ``rank_rtol``: eigenvalues <= rank_rtol * largest count as zero (default p * machine eps).
    ``precision``: ``"float64"`` (default) or ``"input"``.
    Raises ValueError / TypeError on bad input (n <= p, NaN, mismatched n, ...).
    """
    return _ops.cca(x, y, epsilon, variance_cutoff, rank_rtol, precision)


def svcca(x, y, fraction=0.99, dims=None, keep="variance", epsilon=0.0, variance_cutoff=0.0,
          rank_rtol=None, precision="float64"):
    """SVCCA (Raghu et al. 2017): SVD-reduce each layer, then CCA.

    Keeps ``dims`` top directions per layer when given; otherwise the smallest number reaching
    ``fraction`` of the variance (``keep="variance"``: squared singular values, the paper's
    prose; default) or of the singular-value mass (``keep="singular_value_mass"``: google/svcca's
    tutorial). Returns ``(score, correlations, x_dims, y_dims)``; score is the mean correlation.
    """
    return _ops.svcca(x, y, fraction, dims, keep, epsilon, variance_cutoff, rank_rtol, precision)


def pwcca(x, y, weighting="reference", epsilon=0.0, variance_cutoff=0.0, rank_rtol=None,
          precision="float64"):
    """Projection-weighted CCA (Morcos et al. 2018). Not symmetric in x and y.

    ``weighting="reference"`` (default) reproduces google/svcca's compute_pwcca (with its
    wrong-layer branch fixed); ``"canonical_variates"`` is the paper's formula (weights from x's
    canonical variates and centered features). Returns ``(score, weights, correlations)``.
    """
    return _ops.pwcca(x, y, weighting, epsilon, variance_cutoff, rank_rtol, precision)


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


def sum_threshold(array, threshold):
    """google/svcca's sum_threshold; returns -1 where the reference returns None."""
    return _ops.sum_threshold(array, threshold)


def get_pls_similarity(acts1, acts2):
    """google/svcca's numpy_pls.get_pls_similarity (works for unequal neuron counts too)."""
    return _ops.get_pls_similarity(acts1, acts2)


def get_pca(acts, compute_dirns=False):
    """google/svcca's numpy_pca.get_pca: ``eigenvals`` are singular values, not variances."""
    return _ops.get_pca(acts, compute_dirns)
