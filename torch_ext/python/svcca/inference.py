"""How sure is a similarity: bootstrap intervals over examples, paired differences, permutation
tests, and all of them for every cell of a grid (torch.ops.svcca.bootstrap, ...).

Measures: ``"cka"``, ``"debiased-cka"``, ``"rbf-cka"``, ``"cca"``, ``"svcca"``, ``"pwcca"``,
``"procrustes"``. Resamples and permutations are seeded (``seed``) and the same on every
platform. A resample costs O(n^2) per pair for the CKA family (index products of each layer's
n x n Gram matrix) and the weighted moments O(n p1 p2) plus the decompositions for cca, svcca and
procrustes; pwcca reruns the measure on the resampled rows. rbf-cka keeps the full sample's
bandwidth on every resample.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch

__all__ = ["BootstrapResult", "PermutationResult", "GridInference", "bootstrap",
           "bootstrap_difference", "permutation_test", "grid_inference"]


class BootstrapResult(NamedTuple):
    estimate: float          # the measure on all examples
    low: float               # the interval at `level`
    high: float
    standard_error: float    # standard deviation of the resampled values
    resamples: torch.Tensor  # [resamples] float64, NaN where the measure is undefined
    invalid: int             # NaN resamples (left out of the interval)


class PermutationResult(NamedTuple):
    estimate: float
    p_value: float           # (b + 1) / (m + 1)
    null_mean: float         # the measure's mean under independence
    null: torch.Tensor       # [permutations] float64
    exceed: int              # b: null values >= the estimate


class GridInference(NamedTuple):
    values: torch.Tensor          # [rows, cols] the grid
    low: Optional[torch.Tensor]   # [rows, cols] (None without resamples)
    high: Optional[torch.Tensor]
    standard_error: Optional[torch.Tensor]
    p_value: Optional[torch.Tensor]    # (None without permutations)
    null_mean: Optional[torch.Tensor]
    undefined: List[Tuple[str, torch.Tensor]]  # (reason, [k, 2] (row, col)) without an interval
    invalid: Optional[torch.Tensor] = None  # [rows, cols] resamples left out (measure undefined)


def _ops():
    return torch.ops.svcca


def bootstrap(x, y, measure="cka", resamples=1000, level=0.95, seed=0, method="percentile",
              fraction=0.99, dims=None, epsilon=0.0, sigma=None, workers=0,
              allow_forced_correlations=False):
    """Bootstrap interval of ``measure(x, y)`` over examples. ``x: [n, p1]``, ``y: [n, p2]``.

    ``method``: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated; adds n
    leave-one-out evaluations). ``fraction`` / ``dims``: svcca's; ``epsilon``: the CCA family's
    ridge; ``sigma``: rbf-cka's absolute bandwidth (None: the median rule of all examples).
    ``workers``: resamples run at once on their own threads (cca, svcca, pwcca, procrustes; 0: as
    many as the BLAS has threads, within the memory budget; 1: one at a time); the same numbers
    to rounding (a worker's BLAS calls run single-threaded). ``allow_forced_correlations``: the
    CCA family's option (cca, svcca, pwcca); without it a resample whose layers keep more
    directions than its distinct examples - 1 (about 0.63 n) is undefined, as such a pair is in
    the one-shot measures, since its correlations would be forced to 1. Raises ValueError for resamples < 1, level outside (0, 1), an unknown measure,
    workers < 0, or fewer than 2 resamples on which the measure is defined.

        r = svcca.bootstrap(x, y, "cka", resamples=1000)   # r.low, r.high
    """
    out = _ops().bootstrap(x, y, measure, resamples, level, seed, method, fraction, dims, epsilon,
                           sigma, workers, allow_forced_correlations)
    return BootstrapResult(out[0].item(), out[1].item(), out[2].item(), out[3].item(), out[4],
                           out[5])


def bootstrap_difference(a, b, c, measure="cka", resamples=1000, level=0.95, seed=0,
                         method="percentile", fraction=0.99, dims=None, epsilon=0.0, sigma=None,
                         workers=0, allow_forced_correlations=False):
    """Paired bootstrap of ``measure(a, c) - measure(b, c)`` (is a more similar to c than b is?)
    on the same resamples; options as :func:`bootstrap`."""
    out = _ops().bootstrap_difference(a, b, c, measure, resamples, level, seed, method, fraction,
                                      dims, epsilon, sigma, workers, allow_forced_correlations)
    return BootstrapResult(out[0].item(), out[1].item(), out[2].item(), out[3].item(), out[4],
                           out[5])


def permutation_test(x, y, measure="cka", permutations=1000, seed=0, fraction=0.99, dims=None,
                     epsilon=0.0, sigma=None, workers=0, allow_forced_correlations=False):
    """One-sided permutation test of "no relation between x and y": y's examples permuted.

    Returns the p-value (b + 1) / (m + 1) and the null's mean (biased CKA of independent layers
    is far above 0 at small n). ``workers`` as in :func:`bootstrap`. Raises ValueError for
    permutations < 1, workers < 0 or an unknown measure.
    """
    out = _ops().permutation_test(x, y, measure, permutations, seed, fraction, dims, epsilon,
                                  sigma, workers, allow_forced_correlations)
    return PermutationResult(out[0].item(), out[1].item(), out[2].item(), out[3], out[4])


def grid_inference(x, y=None, measure="cka", conv="auto", resamples=0, level=0.95,
                   method="percentile", permutations=0, seed=0, fraction=0.99, dims=None,
                   epsilon=0.0, sigma=None, workers=0, allow_forced_correlations=False):
    """A grid (as :func:`svcca.similarity_grid` on lists of tensors) with every cell's bootstrap
    interval (``resamples`` > 0) and permutation p-value (``permutations`` > 0), all cells on the
    same resamples. conv: ``"auto"``, ``"flatten"``, ``"pool"`` or ``"cls"``. ``workers`` as in
    :func:`bootstrap`."""
    out = _ops()._grid_inference(list(x), None if y is None else list(y), measure, conv, resamples,
                                 level, method, permutations, seed, fraction, dims, epsilon, sigma,
                                 workers, allow_forced_correlations)

    def part(t):
        return t if t.numel() > 0 else None

    return GridInference(out[0], part(out[1]), part(out[2]), part(out[3]), part(out[4]),
                         part(out[5]), list(zip(out[6], out[7])), part(out[8]))
