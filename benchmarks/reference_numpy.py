"""A numpy implementation of google/svcca's formulas, the clock and the check of compat_bench.py.

Written from shared/spec/reference-semantics.md (sections 2, 3 and 7), not from google's code: no
third-party code is in this file. It computes what google/svcca 1f3fbf1 computes, step for step
and with the same numpy calls (np.cov, pinv, eigh, a full SVD, QR), quirks included, so that its
wall time is what a google/svcca user pays and its numbers are the golden ones
(tests/python/test_reference_numpy.py checks both). Differences from the original, all outside the
numbers of the normal path:

* no ``verbose`` argument and no printing (the original prints 5 progress lines by default);
* "no neuron kept" raises a ValueError with a message (the original dies with the same exception
  type, ``too many values to unpack``, see section 2.6 step 5);
* compute_pwcca's else-branch (``kx > ky``) uses acts2's rows, as the C++ port does; the original
  indexes acts1 with acts2's mask there (google/svcca PR #9, section 3 step 3).

Layout: activations are ``[neurons, datapoints]`` numpy arrays (google/svcca's), float64 results.
``qr_cca`` at the end is the torch baseline of the "QR-based CCA" ports, in ``[examples,
features]``.
"""
import numpy as np


def positivedef_matrix_sqrt(array):
    """``v diag(sqrt(w)) v^H`` from ``eigh``; no clamping, so a negative eigenvalue gives NaN."""
    w, v = np.linalg.eigh(array)
    return np.dot(v, np.dot(np.diag(np.sqrt(w)), v.T.conj()))


def remove_small(sigma_xx, sigma_xy, sigma_yx, sigma_yy, epsilon):
    """Keep neurons whose (rescaled) variance is ``>= epsilon``: epsilon = 0 keeps every neuron."""
    x_idxs = np.abs(np.diagonal(sigma_xx)) >= epsilon
    y_idxs = np.abs(np.diagonal(sigma_yy)) >= epsilon
    sigma_xx_crop = sigma_xx[x_idxs][:, x_idxs]
    sigma_xy_crop = sigma_xy[x_idxs][:, y_idxs]
    sigma_yx_crop = sigma_yx[y_idxs][:, x_idxs]
    sigma_yy_crop = sigma_yy[y_idxs][:, y_idxs]
    return sigma_xx_crop, sigma_xy_crop, sigma_yx_crop, sigma_yy_crop, x_idxs, y_idxs


def compute_ccas(sigma_xx, sigma_xy, sigma_yx, sigma_yy, epsilon):
    """Crop, ridge, ``pinv``, square root of the pseudo-inverse, full SVD of the whitened block.

    Returns ``([u, |s|, vh], invsqrt_xx, invsqrt_yy, x_idxs, y_idxs)``. sigma_yx is cropped
    but never used, as in the original.
    """
    sigma_xx, sigma_xy, sigma_yx, sigma_yy, x_idxs, y_idxs = remove_small(
        sigma_xx, sigma_xy, sigma_yx, sigma_yy, epsilon)
    numx, numy = sigma_xx.shape[0], sigma_yy.shape[0]
    if numx == 0 or numy == 0:
        # The original returns a 6-tuple here and its caller's 5-way unpack raises ValueError.
        raise ValueError("get_cca_similarity: epsilon = %r removes every neuron of %s (the "
                         "reference raises 'too many values to unpack (expected 5)')"
                         % (epsilon, "acts1" if numx == 0 else "acts2"))
    # The ridge goes on the cropped copies, after the cut-off.
    sigma_xx = sigma_xx + epsilon * np.eye(numx)
    sigma_yy = sigma_yy + epsilon * np.eye(numy)
    inv_xx = np.linalg.pinv(sigma_xx)
    inv_yy = np.linalg.pinv(sigma_yy)
    # The square root of the pseudo-inverse, not the pseudo-inverse of the square root.
    invsqrt_xx = positivedef_matrix_sqrt(inv_xx)
    invsqrt_yy = positivedef_matrix_sqrt(inv_yy)
    arr = np.dot(invsqrt_xx, np.dot(sigma_xy, invsqrt_yy))
    u, s, vh = np.linalg.svd(arr)  # full_matrices=True: u is kx x kx, vh ky x ky
    return [u, np.abs(s), vh], invsqrt_xx, invsqrt_yy, x_idxs, y_idxs


def sum_threshold(array, threshold):
    """First ``i`` in ``0 .. len-1`` with ``sum(array[:i]) / sum(array) >= threshold``, else None.

    threshold 0 gives 0 (an empty prefix, so a NaN mean later); None means "all of it".
    """
    assert 0 <= threshold <= 1, "threshold must be in [0, 1], got %r" % threshold
    for i in range(len(array)):
        if np.sum(array[:i]) / np.sum(array) >= threshold:
            return i
    return None


def get_cca_similarity(acts1, acts2, epsilon=0., threshold=0.98, compute_coefs=True,
                       compute_dirns=False):
    """google/svcca's cca_core.get_cca_similarity: ``acts1: [nx, m]``, ``acts2: [ny, m]``.

    Returns the dict of reference-semantics.md section 2.6 (``cca_coef1`` is the same array
    as ``cca_coef2``; ``mean`` is thresholded by sum_threshold, ``sum`` is not). epsilon is
    relative to each layer's largest variance (the covariance blocks are rescaled first).
    Raises AssertionError for ``nx >= m`` or unequal m, ValueError when no neuron is kept,
    KeyError for ``compute_dirns`` without ``compute_coefs`` (as the original).
    """
    assert acts1.shape[1] == acts2.shape[1], "dimensions don't match"
    assert acts1.shape[0] < acts1.shape[1], "input must be number of neurons by datapoints"
    return_dict = {}
    numx, numy = acts1.shape[0], acts2.shape[0]

    covariance = np.cov(acts1, acts2)  # stacked rows, row means removed, ddof 1
    sigmaxx = covariance[:numx, :numx]
    sigmaxy = covariance[:numx, numx:]
    sigmayx = covariance[numx:, :numx]
    sigmayy = covariance[numx:, numx:]

    # Rescale in place (views of covariance): CCA does not change, epsilon becomes relative.
    xmax = np.max(np.abs(sigmaxx))
    ymax = np.max(np.abs(sigmayy))
    sigmaxx /= xmax
    sigmayy /= ymax
    sigmaxy /= np.sqrt(xmax * ymax)
    sigmayx /= np.sqrt(xmax * ymax)

    ([u, s, v], invsqrt_xx, invsqrt_yy, x_idxs, y_idxs) = compute_ccas(
        sigmaxx, sigmaxy, sigmayx, sigmayy, epsilon=epsilon)

    if compute_coefs:
        x_mask = np.outer(x_idxs, x_idxs)
        y_mask = np.outer(y_idxs, y_idxs)
        return_dict["coef_x"] = u.T
        return_dict["invsqrt_xx"] = invsqrt_xx
        return_dict["full_coef_x"] = np.zeros((numx, numx))
        # np.place fills the mask's True entries row-major: (p, q) -> (kept[p], kept[q]).
        np.place(return_dict["full_coef_x"], x_mask, return_dict["coef_x"])
        return_dict["full_invsqrt_xx"] = np.zeros((numx, numx))
        np.place(return_dict["full_invsqrt_xx"], x_mask, return_dict["invsqrt_xx"])

        return_dict["coef_y"] = v
        return_dict["invsqrt_yy"] = invsqrt_yy
        return_dict["full_coef_y"] = np.zeros((numy, numy))
        np.place(return_dict["full_coef_y"], y_mask, return_dict["coef_y"])
        return_dict["full_invsqrt_yy"] = np.zeros((numy, numy))
        np.place(return_dict["full_invsqrt_yy"], y_mask, return_dict["invsqrt_yy"])

        return_dict["neuron_means1"] = np.mean(acts1, axis=1, keepdims=True)
        return_dict["neuron_means2"] = np.mean(acts2, axis=1, keepdims=True)

    if compute_dirns:
        # Variate p lands at row kept[p], plus that neuron's mean (a shift without meaning).
        cca_dirns1 = np.dot(np.dot(return_dict["full_coef_x"], return_dict["full_invsqrt_xx"]),
                            (acts1 - return_dict["neuron_means1"])) + return_dict["neuron_means1"]
        cca_dirns2 = np.dot(np.dot(return_dict["full_coef_y"], return_dict["full_invsqrt_yy"]),
                            (acts2 - return_dict["neuron_means2"])) + return_dict["neuron_means2"]

    idx1 = sum_threshold(s, threshold)
    idx2 = sum_threshold(s, threshold)

    return_dict["cca_coef1"] = s
    return_dict["cca_coef2"] = s
    return_dict["x_idxs"] = x_idxs
    return_dict["y_idxs"] = y_idxs
    return_dict["mean"] = (np.mean(s[:idx1]), np.mean(s[:idx2]))
    return_dict["sum"] = (np.sum(s), np.sum(s))
    if compute_dirns:
        return_dict["cca_dirns1"] = cca_dirns1
        return_dict["cca_dirns2"] = cca_dirns2
    return return_dict


def compute_pwcca(acts1, acts2, epsilon=0.):
    """google/svcca's pwcca.compute_pwcca: ``(pwcca_value, weights, coefs)``.

    The layer that keeps fewer neurons (acts1 on a tie) supplies the weights:
    ``weights_i ∝ sum_j |<q_i, a_j>|`` with ``q_i`` the QR-orthonormalised rows of
    ``coef @ (A - mu) + mu`` (no whitening, means added back) and ``a_j`` the kept neurons' raw,
    uncentred rows. Not symmetric in acts1 and acts2.

    The original's else-branch (``kx > ky``) builds its directions from ``acts1[y_idxs]`` with
    acts2's means: an IndexError when nx != ny and a silently wrong number when nx == ny
    (google/svcca PR #9). Here, as in the C++ port, that branch uses ``acts2[y_idxs]``.
    """
    sresults = get_cca_similarity(acts1, acts2, epsilon=epsilon, compute_dirns=False,
                                  compute_coefs=True)
    if np.sum(sresults["x_idxs"]) <= np.sum(sresults["y_idxs"]):
        kept = acts1[sresults["x_idxs"]]
        means = sresults["neuron_means1"][sresults["x_idxs"]]
        dirns = np.dot(sresults["coef_x"], kept - means) + means
        coefs = sresults["cca_coef1"]
        acts = acts1
        idxs = sresults["x_idxs"]
    else:
        kept = acts2[sresults["y_idxs"]]  # the original: acts1[y_idxs] (the bug, see above)
        means = sresults["neuron_means2"][sresults["y_idxs"]]
        dirns = np.dot(sresults["coef_y"], kept - means) + means
        coefs = sresults["cca_coef2"]
        acts = acts2
        idxs = sresults["y_idxs"]
    P, _ = np.linalg.qr(dirns.T)  # reduced: [m, k'] with orthonormal columns
    weights = np.sum(np.abs(np.dot(P.T, acts[idxs].T)), axis=1)
    weights = weights / np.sum(weights)
    return np.sum(weights * coefs), weights, coefs


def svcca_recipe(acts1, acts2, dims1=20, dims2=None, epsilon=1e-10, threshold=0.98):
    """The SVCCA recipe of google/svcca's tutorial 001, with a fixed number of directions.

    Each layer is centred over its datapoints, reduced by a wide SVD (``full_matrices=False``)
    to ``svacts = (s[:k] * eye(k)) @ Vh[:k]`` (``= U[:, :k]^T c``), then get_cca_similarity.
    Returns that dict plus ``svcca_score`` (the plain mean of ``cca_coef1``, what the tutorial
    reports; ``mean`` stays thresholded) and the singular values ``sv1``, ``sv2``.
    """
    if dims2 is None:
        dims2 = dims1
    cacts1 = acts1 - np.mean(acts1, axis=1, keepdims=True)
    cacts2 = acts2 - np.mean(acts2, axis=1, keepdims=True)
    _, s1, vh1 = np.linalg.svd(cacts1, full_matrices=False)
    _, s2, vh2 = np.linalg.svd(cacts2, full_matrices=False)
    svacts1 = np.dot(s1[:dims1] * np.eye(dims1), vh1[:dims1])
    svacts2 = np.dot(s2[:dims2] * np.eye(dims2), vh2[:dims2])
    results = get_cca_similarity(svacts1, svacts2, epsilon=epsilon, threshold=threshold)
    results["svcca_score"] = np.mean(results["cca_coef1"])
    results["sv1"] = s1
    results["sv2"] = s2
    return results


def qr_cca(x, y):
    """Canonical correlations the way the torch "QR-based CCA" ports compute them (float64).

    ``x: [n, p1]``, ``y: [n, p2]`` (examples x features, torch tensors): centre the columns,
    thin QR of each, singular values of ``Q1^T Q2`` (descending, ``min(p1, p2)`` of them).
    No rank handling: a rank-deficient layer gives spurious correlations, so use full-rank data.
    """
    import torch  # only this function needs torch

    x = x.to(torch.float64)
    y = y.to(torch.float64)
    q1, _ = torch.linalg.qr(x - x.mean(dim=0, keepdim=True))
    q2, _ = torch.linalg.qr(y - y.mean(dim=0, keepdim=True))
    return torch.linalg.svdvals(q1.T @ q2)
