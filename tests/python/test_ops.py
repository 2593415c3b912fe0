"""pytest suite of torch.ops.svcca: loading, slow float64 numpy references, google/svcca golden
data, error paths, gradcheck, TorchScript round trips through C++, and the dtype policy.

Layouts: the modern ops (cca, svcca, pwcca) take [n_examples, n_features]; the compat ops
(get_cca_similarity, compute_pwcca, ...) take google/svcca's [n_neurons, n_datapoints].
"""
import collections
import os
import subprocess
import sys
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

import svcca

# ---- Tolerances: the one table. Tighten or loosen here, never in a test. ----------------------
Tol = collections.namedtuple("Tol", ["rtol", "atol"])

TOL = {
    # float64, closed form (no decomposition between input and output).
    (torch.float64, "closed_form"): Tol(1e-10, 1e-12),
    # float64 after SVD / QR / eigh / Cholesky.
    (torch.float64, "svd"): Tol(1e-8, 1e-10),
    # float32 results (rounded from float64, or computed in float32 with precision="input").
    (torch.float32, "closed_form"): Tol(1e-4, 1e-5),
    (torch.float32, "svd"): Tol(1e-4, 1e-5),
    # golden data: used for outputs whose file states no tolerance of its own.
    (torch.float64, "golden_default"): Tol(1e-6, 1e-8),
    # golden singular vectors after sign alignment (the README's atol 1e-6).
    (torch.float64, "golden_vectors"): Tol(0.0, 1e-6),
}
# torch.autograd.gradcheck's own defaults, written out so that they are visible.
GRADCHECK = dict(eps=1e-6, atol=1e-5, rtol=1e-3)

DTYPES = [torch.float32, torch.float64]
over_dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
OP_NAMES = ["cca", "svcca", "pwcca", "get_cca_similarity", "compute_pwcca", "sum_threshold",
            "get_pls_similarity", "get_pca", "linear_cka", "rbf_cka", "procrustes",
            "procrustes_distance", "fourier_ccas", "fourier_cca", "conv_features",
            "fold_positions", "global_avg_pool", "resize_spatial"]


def tol(dtype, kind="svd"):
    return TOL[(dtype, kind)]


# ---- Comparison helpers ------------------------------------------------------------------------
def to_numpy(value):
    if torch.is_tensor(value):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value)


def assert_close(actual, expected, tolerance, dtype=None, what=""):
    """Shape, then dtype (when given), then values, reporting the worst entry."""
    if dtype is not None:
        assert actual.dtype == dtype, "%s: dtype %s, expected %s" % (what, actual.dtype, dtype)
    a, e = to_numpy(actual), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, "%s: shape %s, expected %s" % (what, a.shape, e.shape)
    if a.size == 0:
        return
    ok = np.isclose(a, e, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    if not ok.all():
        err = np.abs(a - e)
        i = np.unravel_index(np.nanargmax(np.where(ok, 0.0, err)), a.shape)
        raise AssertionError(
            "%s: %d of %d entries differ (rtol %g, atol %g); worst at %s: got %r, expected %r "
            "(abs err %.3g)" % (what, (~ok).sum(), a.size, tolerance.rtol, tolerance.atol,
                                tuple(int(j) for j in i), a[i], e[i], err[i]))


def row_signs(actual, expected):
    """+-1 per row aligning actual rows with expected rows (SVD vectors carry arbitrary signs)."""
    return np.where(np.sum(actual * expected, axis=1) < 0, -1.0, 1.0)


def assert_error(exc_type, substrings, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for s in substrings:
        assert s in message, "%r not in error message: %s" % (s, message)


# ---- Deterministic inputs (numpy RandomState, converted to torch) ------------------------------
def t(a, dtype=torch.float64, requires_grad=False):
    return torch.tensor(a, dtype=dtype, requires_grad=requires_grad)


def centered_orthonormal(rng, n, k):
    """[n, k] orthonormal columns, each orthogonal to the ones vector (i.e. already centered)."""
    z = rng.randn(n, k)
    q, _ = np.linalg.qr(z - z.mean(0))
    return q


def correlated_pair(n, p1, p2, seed, noise=1.0):
    """Well-conditioned x: [n, p1], y: [n, p2] (n >> p) with distinct canonical correlations
    strictly between 0 and 1, and non-zero feature means (exercises centering)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, p1) @ (np.eye(p1) + 0.3 * rng.randn(p1, p1))
    y = x @ rng.randn(p1, p2) / np.sqrt(p1) + noise * rng.randn(n, p2)
    return x + 3.0 * rng.randn(p1), y - 2.0 * rng.randn(p2)


def spectrum_pair(n=400, seed=7):
    """x: [n, 8], y: [n, 6] whose centered data have exactly the singular values SX, SY, and
    partly shared directions, so that the SVCCA truncation rules have clear-cut answers."""
    rng = np.random.RandomState(seed)
    q = centered_orthonormal(rng, n, 12)
    qy, _ = np.linalg.qr(q[:, :6] @ rng.randn(6, 6) + 0.7 * q[:, 6:] @ rng.randn(6, 6))
    vx, _ = np.linalg.qr(rng.randn(8, 8))
    vy, _ = np.linalg.qr(rng.randn(6, 6))
    x = q[:, :8] @ np.diag(SX) @ vx.T + rng.randn(8)
    y = qy @ np.diag(SY) @ vy.T + rng.randn(6)
    return x, y


SX = np.array([8.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
SY = np.array([6.0, 4.0, 2.0, 1.0, 0.3, 0.1])


# ---- Slow, obvious float64 references ----------------------------------------------------------
def _center(a):
    a = np.asarray(a, dtype=np.float64)
    return a - a.mean(0)


def _cca_svd(x, y):
    """QR of the centered data, SVD of Qx^T Qy: (Qx, U, rho, Vt)."""
    qx, _ = np.linalg.qr(_center(x))
    qy, _ = np.linalg.qr(_center(y))
    u, s, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return qx, u, np.clip(s, 0.0, 1.0), vt


def expected_cca(x, y):
    """Canonical correlations, descending."""
    return _cca_svd(x, y)[2]


def _svd_reduce(a, fraction, dims, keep):
    """Top directions of the centered a (numpy SVD) as [n, k] coordinates, and k."""
    u, s, _ = np.linalg.svd(_center(a), full_matrices=False)
    if dims is not None:
        k = min(dims, len(s))
    else:
        cum = np.cumsum(s ** 2 if keep == "variance" else s)
        k = max(1, int(np.sum(cum < fraction * cum[-1])) + 1)
    return u[:, :k] * s[:k], k


def expected_svcca(x, y, fraction=0.99, dims=None, keep="variance"):
    """(score, correlations, x_dims, y_dims): SVD-reduce each layer, then CCA."""
    rx, kx = _svd_reduce(x, fraction, dims, keep)
    ry, ky = _svd_reduce(y, fraction, dims, keep)
    rho = expected_cca(rx, ry)
    return rho.mean(), rho, kx, ky


def _ref_inv_sqrt(sigma):
    """google/svcca: positivedef_matrix_sqrt(pinv(sigma)) (eigh, sqrt of the eigenvalues)."""
    w, v = np.linalg.eigh(np.linalg.pinv(sigma))
    return (v * np.sqrt(w)) @ v.T


def expected_pwcca_reference(x, y):
    """google/svcca's compute_pwcca (epsilon 0) in its [neurons, datapoints] layout, with the
    wrong-layer branch (PR #9) fixed to use acts2: (score, weights, correlations)."""
    acts1, acts2 = np.asarray(x, np.float64).T, np.asarray(y, np.float64).T
    mu1, mu2 = acts1.mean(1, keepdims=True), acts2.mean(1, keepdims=True)
    c = np.cov(acts1, acts2)
    nx = acts1.shape[0]
    sxx, sxy, syy = c[:nx, :nx], c[:nx, nx:], c[nx:, nx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    arr = _ref_inv_sqrt(sxx) @ (sxy @ _ref_inv_sqrt(syy))
    u, s, vh = np.linalg.svd(arr)  # full_matrices=True, as the reference
    s = np.abs(s)
    if acts1.shape[0] <= acts2.shape[0]:
        coef, acts, mu = u.T, acts1, mu1
    else:
        coef, acts, mu = vh, acts2, mu2
    dirns = coef @ (acts - mu) + mu
    q, _ = np.linalg.qr(dirns.T)
    weights = np.abs(q.T @ acts.T).sum(axis=1)  # sum_j |<q_i, raw neuron j>|
    weights = weights / weights.sum()
    return np.sum(weights * s), weights, s


def expected_pwcca_canonical(x, y):
    """Morcos et al. 2018: alpha_i ∝ sum_j |<h_i, z_j>|, h_i the canonical variates of x, z_j
    the centered features of x: (score, weights, correlations)."""
    qx, u, rho, _ = _cca_svd(x, y)
    h = qx @ u  # [n, k] canonical variates of x (unit norm; a common scale cancels)
    weights = np.abs(h.T @ _center(x)).sum(axis=1)
    weights = weights / weights.sum()
    return np.sum(weights * rho), weights, rho


# ================================================================================================
# 1. Loading
# ================================================================================================
@pytest.mark.parametrize("name", OP_NAMES)
def test_package_loads_every_op(name):
    assert os.path.isfile(svcca.library_path)
    # Loading the same library again through the plain torch API is harmless.
    torch.ops.load_library(svcca.library_path)
    packet = getattr(torch.ops.svcca, name)
    assert str(packet.default._schema).startswith("svcca::%s(" % name)
    assert callable(getattr(svcca, name))


def test_plain_load_library_in_fresh_interpreter():
    """torch.ops.load_library alone (no svcca package) registers every op."""
    code = (
        "import sys, torch\n"
        "torch.ops.load_library(sys.argv[1])\n"
        "assert 'svcca' not in sys.modules\n"
        "for name in sys.argv[2:]:\n"
        "    getattr(torch.ops.svcca, name)\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(50, 3, dtype=torch.float64)\n"
        "print(float(torch.ops.svcca.cca(x, 2.0 * x + 1.0)[0].min()))\n")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code, svcca.library_path] + OP_NAMES,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout.strip()) - 1.0) < 1e-10


def test_package_wrappers_forward_arguments(ops):
    """The thin Python wrappers pass every argument to the op in schema order."""
    x, y = (t(a) for a in correlated_pair(200, 5, 4, seed=1))
    for a, b in zip(svcca.cca(x, y, 1e-3, 0.0, 1e-9, "input"),
                    ops.cca(x, y, epsilon=1e-3, rank_rtol=1e-9, precision="input")):
        assert torch.equal(a, b)
    got = svcca.svcca(x, y, 0.5, 2, "singular_value_mass", 1e-3, 0.0, None, "float64")
    want = ops.svcca(x, y, dims=2, keep="singular_value_mass", epsilon=1e-3)
    assert torch.equal(got[1], want[1]) and got[2:] == want[2:] == (2, 2)
    for a, b in zip(svcca.pwcca(x, y, "canonical_variates", 1e-3),
                    ops.pwcca(x, y, weighting="canonical_variates", epsilon=1e-3)):
        assert torch.equal(a, b)
    got = svcca.get_cca_similarity(x.t(), y.t(), 1e-3, 0.5, False, True)
    assert "coef_x" not in got and "cca_dirns1" in got
    assert torch.equal(got["mean"], ops.get_cca_similarity(x.t(), y.t(), 1e-3, 0.5)["mean"])
    assert torch.equal(svcca.compute_pwcca(x.t(), y.t(), 1e-3)[0],
                       ops.compute_pwcca(x.t(), y.t(), 1e-3)[0])
    assert svcca.sum_threshold(t([1.0, 1.0, 1.0, 1.0]), 0.75) == 3
    assert set(svcca.get_pls_similarity(x.t(), y.t())) == set(ops.get_pls_similarity(x.t(), y.t()))
    assert "pca_dirns" in svcca.get_pca(x.t(), True) and "pca_dirns" not in svcca.get_pca(x.t())


# ================================================================================================
# 2. Modern ops against the float64 numpy references
# ================================================================================================
@over_dtypes
@pytest.mark.parametrize("p1,p2", [(4, 6), (6, 4), (5, 5)])
def test_cca_matches_reference(ops, dtype, p1, p2):
    x, y = (t(a, dtype) for a in correlated_pair(300, p1, p2, seed=p1 * 10 + p2))
    rho, x_weights, y_weights, x_mask, y_mask = ops.cca(x, y)
    k = min(p1, p2)
    assert_close(rho, expected_cca(to_numpy(x), to_numpy(y)), tol(dtype), dtype, "correlations")
    assert x_weights.shape == (p1, k) and y_weights.shape == (p2, k)
    assert x_weights.dtype == y_weights.dtype == dtype
    assert x_mask.dtype == torch.bool and bool(x_mask.all()) and x_mask.shape == (p1,)
    assert y_mask.dtype == torch.bool and bool(y_mask.all()) and y_mask.shape == (p2,)


@over_dtypes
def test_cca_weights_give_canonical_variates(ops, dtype):
    """x_c @ x_weights and y_c @ y_weights have identity covariance and cross-covariance
    diag(correlations)."""
    x, y = (t(a, dtype) for a in correlated_pair(300, 4, 6, seed=3))
    rho, wx, wy, _, _ = ops.cca(x, y)
    n = x.shape[0]
    hx = _center(to_numpy(x)) @ to_numpy(wx)
    hy = _center(to_numpy(y)) @ to_numpy(wy)
    eye = np.eye(rho.numel())
    assert_close(t(hx.T @ hx / (n - 1)), eye, tol(dtype), what="cov(h_x)")
    assert_close(t(hy.T @ hy / (n - 1)), eye, tol(dtype), what="cov(h_y)")
    assert_close(t(hx.T @ hy / (n - 1)), np.diag(to_numpy(rho)), tol(dtype), what="cov(h_x, h_y)")


def test_cca_drops_constant_feature(ops):
    x, y = correlated_pair(300, 4, 5, seed=4)
    x_const = np.insert(x, 2, 7.5, axis=1)  # feature 2 of x is constant
    rho, wx, _, x_mask, y_mask = ops.cca(t(x_const), t(y))
    assert x_mask.tolist() == [True, True, False, True, True] and bool(y_mask.all())
    assert_close(rho, expected_cca(x, y), tol(torch.float64), torch.float64, "correlations")
    assert_close(wx[2], np.zeros(4), tol(torch.float64, "closed_form"), what="dropped row")


SVCCA_CASES = [
    dict(fraction=0.99, keep="variance"),             # SX: k=5, SY: k=4
    dict(fraction=0.99, keep="singular_value_mass"),  # SX: k=7, SY: k=5
    dict(fraction=0.9, keep="variance"),
    dict(fraction=0.9, keep="singular_value_mass"),
    dict(fraction=1.0, keep="variance"),              # every direction: plain CCA
    dict(dims=3),
    dict(dims=20),                                    # more than the rank: every direction
]


@over_dtypes
@pytest.mark.parametrize("case", SVCCA_CASES,
                         ids=lambda c: "-".join("%s=%s" % kv for kv in c.items()))
def test_svcca_matches_reference(ops, dtype, case):
    x, y = (t(a, dtype) for a in spectrum_pair())
    score, rho, x_dims, y_dims = ops.svcca(x, y, **case)
    e_score, e_rho, e_kx, e_ky = expected_svcca(to_numpy(x), to_numpy(y), **case)
    assert (x_dims, y_dims) == (e_kx, e_ky)
    assert_close(rho, e_rho, tol(dtype), dtype, "correlations")
    assert_close(score, e_score, tol(dtype), dtype, "score")
    assert score.dim() == 0


def test_svcca_rules_keep_the_documented_counts(ops):
    """The two fraction rules differ: singular-value mass keeps more directions than variance."""
    x, y = (t(a) for a in spectrum_pair())
    assert ops.svcca(x, y, fraction=0.99, keep="variance")[2:] == (5, 4)
    assert ops.svcca(x, y, fraction=0.99, keep="singular_value_mass")[2:] == (7, 5)


@over_dtypes
@pytest.mark.parametrize("p1,p2", [(4, 6), (6, 4), (5, 5)])
def test_pwcca_reference_weighting_matches_compute_pwcca_formula(ops, dtype, p1, p2):
    x, y = (t(a, dtype) for a in correlated_pair(300, p1, p2, seed=20 + p1))
    score, weights, rho = ops.pwcca(x, y)
    e_score, e_weights, e_rho = expected_pwcca_reference(to_numpy(x), to_numpy(y))
    assert_close(rho, e_rho[:min(p1, p2)], tol(dtype), dtype, "correlations")
    assert_close(weights, e_weights, tol(dtype), dtype, "weights")
    assert_close(score, e_score, tol(dtype), dtype, "score")
    # The compat entry point computes the same formula, in float64 and the reference layout.
    value, c_weights, coefs = ops.compute_pwcca(x.t(), y.t())
    f64 = tol(torch.float64)
    assert_close(coefs, e_rho[:min(p1, p2)], f64, torch.float64, "compute_pwcca coefs")
    assert_close(c_weights, e_weights, f64, torch.float64, "compute_pwcca weights")
    assert_close(value, e_score, f64, torch.float64, "compute_pwcca value")


@over_dtypes
@pytest.mark.parametrize("p1,p2", [(4, 6), (6, 4)])
def test_pwcca_canonical_variates_matches_paper_formula(ops, dtype, p1, p2):
    x, y = (t(a, dtype) for a in correlated_pair(300, p1, p2, seed=30 + p1))
    score, weights, rho = ops.pwcca(x, y, weighting="canonical_variates")
    e_score, e_weights, e_rho = expected_pwcca_canonical(to_numpy(x), to_numpy(y))
    assert_close(rho, e_rho, tol(dtype), dtype, "correlations")
    assert_close(weights, e_weights, tol(dtype), dtype, "weights")
    assert_close(score, e_score, tol(dtype), dtype, "score")


def test_pwcca_is_not_symmetric(ops):
    x, y = (t(a) for a in correlated_pair(300, 4, 6, seed=5))
    a, b = ops.pwcca(x, y)[0], ops.pwcca(y, x)[0]
    assert abs(float(a) - float(b)) > 1e-3
    assert_close(b, expected_pwcca_reference(to_numpy(y), to_numpy(x))[0], tol(torch.float64))


# ================================================================================================
# 3. google/svcca golden data (svcca_top20 has its inputs stripped: the C++ suite regenerates them)
# ================================================================================================
def _golden_tol(case, *keys, default="golden_default"):
    """The case file's [rtol, atol] for the first of keys it lists, else TOL's default."""
    spec = case.get("tolerance", {})
    for key in keys:
        if key in spec:
            return Tol(*spec[key])
    return tol(torch.float64, default)


def _check_golden_cca(case, a, out):
    """Masks exact; coefficients and matrices at the file's tolerances; singular vectors up to
    one shared sign per canonical pair; rows beyond k through their projector."""
    assert torch.equal(out["x_idxs"], torch.from_numpy(a["x_idxs"]))
    assert torch.equal(out["y_idxs"], torch.from_numpy(a["y_idxs"]))
    for key in ("cca_coef1", "cca_coef2", "mean", "sum"):
        assert_close(out[key], a[key], _golden_tol(case, key, "cca_coef1"), torch.float64, key)
    for key in ("invsqrt_xx", "invsqrt_yy", "full_invsqrt_xx", "full_invsqrt_yy"):
        assert_close(out[key], a[key], _golden_tol(case, key, "invsqrt_xx"), torch.float64, key)
    for key in ("neuron_means1", "neuron_means2"):
        assert_close(out[key], a[key], _golden_tol(case, key, "neuron_means1"), torch.float64, key)

    k = a["cca_coef1"].size
    vec_tol = _golden_tol(case, "coef_vectors_after_sign_alignment", default="golden_vectors")
    cx, cy = to_numpy(out["coef_x"]), to_numpy(out["coef_y"])
    signs = row_signs(cx[:k], a["coef_x"][:k])
    assert_close(t(signs[:, None] * cx[:k]), a["coef_x"][:k], vec_tol, what="coef_x rows < k")
    assert_close(t(signs[:, None] * cy[:k]), a["coef_y"][:k], vec_tol, what="coef_y rows < k")
    for key, c in (("coef_x", cx), ("coef_y", cy)):
        rest, e_rest = c[k:], a[key][k:]
        assert_close(t(rest.T @ rest), e_rest.T @ e_rest, vec_tol,
                     what=key + " projector of rows >= k")
    for key, kept, mask in (("full_coef_x", cx, a["x_idxs"]), ("full_coef_y", cy, a["y_idxs"])):
        full = to_numpy(out[key])
        assert np.all(full[~mask, :] == 0) and np.all(full[:, ~mask] == 0), key
        assert np.array_equal(full[np.ix_(mask, mask)], kept), key

    # Canonical variate p sits at row kept[p], plus that neuron's mean (reference quirk).
    for d, means, mask in (("cca_dirns1", "neuron_means1", "x_idxs"),
                           ("cca_dirns2", "neuron_means2", "y_idxs")):
        if d not in a:
            continue
        rows = np.flatnonzero(a[mask])[:k]
        got = (to_numpy(out[d]) - a[means])[rows]
        want = (a[d] - a[means])[rows]
        scale = np.abs(want).max(axis=1, keepdims=True)
        assert_close(t(signs[:, None] * got / scale), want / scale, vec_tol, what=d + " rows < k")


@pytest.mark.parametrize("name,epsilon", [("cca_small", 0.0), ("cca_dead_neurons", 1e-10)])
def test_golden_get_cca_similarity(ops, load_golden, name, epsilon):
    case, a = load_golden(name)
    out = ops.get_cca_similarity(t(a["acts1"]), t(a["acts2"]), epsilon=epsilon, threshold=0.98,
                                 compute_coefs=True, compute_dirns=True)
    expected_keys = {"cca_coef1", "cca_coef2", "x_idxs", "y_idxs", "mean", "sum", "coef_x",
                     "coef_y", "invsqrt_xx", "invsqrt_yy", "full_coef_x", "full_coef_y",
                     "full_invsqrt_xx", "full_invsqrt_yy", "neuron_means1", "neuron_means2",
                     "cca_dirns1", "cca_dirns2"}
    assert set(out.keys()) == expected_keys
    _check_golden_cca(case, a, out)
    if "sum_threshold_idx" in a:
        assert ops.sum_threshold(out["cca_coef1"], 0.98) == int(a["sum_threshold_idx"][0])


def test_golden_threshold_edges(ops, load_golden):
    case, a = load_golden("cca_threshold_edges")
    x, y = t(a["acts1"]), t(a["acts2"])
    rho = ops.get_cca_similarity(x, y)["cca_coef1"]
    for threshold, mean, idx in zip(a["thresholds"], a["mean"], a["sum_threshold_idx"]):
        assert ops.sum_threshold(rho, float(threshold)) == int(idx), threshold
        if threshold == 0.0:
            # Documented deviation: the reference's NaN mean of an empty prefix is a ValueError.
            assert np.isnan(mean)
            assert_error(ValueError, ["threshold"], ops.get_cca_similarity, x, y, threshold=0.0)
        else:
            got = ops.get_cca_similarity(x, y, threshold=float(threshold))["mean"]
            assert_close(got, [mean, mean], _golden_tol(case, "mean"), torch.float64, "mean")


def test_golden_all_removed_raises(ops, load_golden):
    case, _ = load_golden("cca_all_removed_error")
    _, a = load_golden(case["inputs_from"].replace(".json", ""))
    assert_error(ValueError, ["epsilon", "acts1"], ops.get_cca_similarity,
                 t(a["acts1"]), t(a["acts2"]), epsilon=2.0)


def test_golden_compute_pwcca(ops, load_golden):
    case, a = load_golden("pwcca_equal50_dead")
    x, y = t(a["acts1"]), t(a["acts2"])
    value, weights, coefs = ops.compute_pwcca(x, y, epsilon=1e-10)
    assert_close(value, a["pwcca"][0], _golden_tol(case, "pwcca"), torch.float64, "pwcca")
    assert_close(weights, a["weights"], _golden_tol(case, "weights"), torch.float64, "weights")
    assert_close(coefs, a["coefs"], _golden_tol(case, "coefs"), torch.float64, "coefs")
    masks = ops.get_cca_similarity(x, y, epsilon=1e-10)
    assert torch.equal(masks["x_idxs"], torch.from_numpy(a["x_idxs"]))
    assert torch.equal(masks["y_idxs"], torch.from_numpy(a["y_idxs"]))


def test_golden_pls(ops, load_golden):
    case, a = load_golden("pls_equal")
    out = ops.get_pls_similarity(t(a["acts1"]), t(a["acts2"]))
    assert set(out.keys()) == {"eigenvals", "neuron_coeffs1", "neuron_coeffs2", "pls_dirns1",
                               "pls_dirns2"}
    assert_close(out["eigenvals"], a["eigenvals"], _golden_tol(case, "eigenvals"), torch.float64,
                 "eigenvals")
    vec_tol = _golden_tol(case, "neuron_coeffs", default="golden_vectors")
    c1, c2 = to_numpy(out["neuron_coeffs1"]), to_numpy(out["neuron_coeffs2"])
    signs = row_signs(c1, a["neuron_coeffs1"])[:, None]
    assert_close(t(signs * c1), a["neuron_coeffs1"], vec_tol, what="neuron_coeffs1")
    assert_close(t(signs * c2), a["neuron_coeffs2"], vec_tol, what="neuron_coeffs2")
    for d, acts in (("pls_dirns1", "acts1"), ("pls_dirns2", "acts2")):
        means = a[acts].mean(axis=1, keepdims=True)
        want = a[d] - means
        scale = np.abs(want).max(axis=1, keepdims=True)
        assert_close(t(signs * (to_numpy(out[d]) - means) / scale), want / scale, vec_tol, what=d)


def test_golden_pca(ops, load_golden):
    case, a = load_golden("pca_basic")
    out = ops.get_pca(t(a["acts"]), compute_dirns=True)
    assert set(out.keys()) == {"eigenvals", "neuron_coefs", "pca_dirns"}
    assert_close(out["eigenvals"], a["eigenvals"], _golden_tol(case, "eigenvals"), torch.float64,
                 "eigenvals")
    vec_tol = _golden_tol(case, "neuron_coefs", default="golden_vectors")
    coefs = to_numpy(out["neuron_coefs"])
    signs = row_signs(coefs, a["neuron_coefs"])[:, None]
    assert_close(t(signs * coefs), a["neuron_coefs"], vec_tol, what="neuron_coefs")
    means = a["acts"].mean(axis=1, keepdims=True)
    want = a["pca_dirns"] - means
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert_close(t(signs * (to_numpy(out["pca_dirns"]) - means) / scale), want / scale, vec_tol,
                 what="pca_dirns")


def test_golden_sum_threshold_table(ops, load_golden):
    case, _ = load_golden("sum_threshold_table")
    assert len(case["table"]) >= 8
    for row in case["table"]:
        want = -1 if row["result"] is None else row["result"]
        assert ops.sum_threshold(t(row["array"]), row["threshold"]) == want, row


# ================================================================================================
# 4. Errors: ValueError / TypeError with the argument's name in the message
# ================================================================================================
# name -> call(ops, x, y, **options) in the modern [n, p] layout (compat ops get x.T, y.T).
def _ref(a):
    """[n, p] -> google/svcca's [neurons, datapoints]; other ranks pass unchanged (to reach
    the rank check)."""
    return a.t() if a.dim() == 2 else a


CALLS = {
    "cca": lambda ops, x, y, **kw: ops.cca(x, y, **kw),
    "svcca": lambda ops, x, y, **kw: ops.svcca(x, y, **kw),
    "pwcca": lambda ops, x, y, **kw: ops.pwcca(x, y, **kw),
    "get_cca_similarity": lambda ops, x, y, **kw: ops.get_cca_similarity(_ref(x), _ref(y), **kw),
    "compute_pwcca": lambda ops, x, y, **kw: ops.compute_pwcca(_ref(x), _ref(y), **kw),
}
COMPAT = ("get_cca_similarity", "compute_pwcca")


def _names(op):
    return ("acts1", "acts2") if op in COMPAT else ("x", "y")


def _shape_str(op, a):
    return str(list((_ref(a) if op in COMPAT else a).shape))


def _good(n=50, p=3, dtype=torch.float64):
    return t(np.random.RandomState(0).randn(n, p), dtype)


@pytest.mark.parametrize("op", list(CALLS))
def test_error_mismatched_examples(ops, op):
    x, y = _good(50), _good(40)
    assert_error(ValueError, ["%s and %s must have the same number of" % _names(op),
                              _shape_str(op, x), _shape_str(op, y)], CALLS[op], ops, x, y)


@pytest.mark.parametrize("op", ["cca", "pwcca", "get_cca_similarity", "compute_pwcca"])
@pytest.mark.parametrize("which", [0, 1])
def test_error_cca_needs_more_examples_than_features(ops, op, which):
    args = [_good(50, 3), _good(50, 3)]
    args[which] = _good(50, 50)
    message = _names(op)[which] + " must have more examples than features"
    assert_error(ValueError, [message, "svcca"], CALLS[op], ops, *args)


def test_svcca_accepts_more_features_than_examples(ops):
    x, y = _good(20, 30), t(np.random.RandomState(1).randn(20, 25))
    score, rho, x_dims, y_dims = ops.svcca(x, y, dims=4)
    assert (x_dims, y_dims) == (4, 4) and rho.shape == (4,)


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", [0, 1])
def test_error_non_finite(ops, op, bad, which):
    args = [_good(), _good()]
    args[which] = args[which].clone()
    args[which][7, 1] = bad
    assert_error(ValueError, [_names(op)[which] + " must contain only finite values"],
                 CALLS[op], ops, *args)


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("shape,message", [((50,), "must be a 2-D tensor"),
                                           ((50, 3, 2), "must be a 2-D tensor"),
                                           ((0, 3), "must be non-empty")])
def test_error_not_a_non_empty_matrix(ops, op, shape, message):
    bad = torch.zeros(shape, dtype=torch.float64)
    assert_error(ValueError, [_names(op)[0] + " " + message], CALLS[op], ops, bad, bad)


def test_error_pca_and_sum_threshold_shapes(ops):
    assert_error(ValueError, ["acts must be a 2-D tensor"], ops.get_pca, torch.zeros(5))
    assert_error(ValueError, ["acts must have more examples than features"], ops.get_pca,
                 _good(8, 5))
    assert_error(ValueError, ["array must be a 1-D tensor"], ops.sum_threshold,
                 torch.ones(2, 2), 0.5)


@pytest.mark.parametrize("op", list(CALLS))
def test_error_negative_epsilon(ops, op):
    assert_error(ValueError, ["epsilon must be finite and >= 0", "-0.5"],
                 CALLS[op], ops, _good(), _good(), epsilon=-0.5)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_error_fraction_and_threshold_outside_unit_interval(ops, value):
    x, y = _good(), _good()
    assert_error(ValueError, ["fraction must be in [0, 1]"], ops.svcca, x, y, fraction=value)
    assert_error(ValueError, ["threshold must be in"], ops.get_cca_similarity, x.t(), y.t(),
                 threshold=value)
    assert_error(ValueError, ["threshold must be in [0, 1]"], ops.sum_threshold,
                 t([0.5, 0.5]), value)
    assert_error(ValueError, ["variance_cutoff must be in [0, 1]"], ops.cca, x, y,
                 variance_cutoff=value)


def test_error_svcca_dims(ops):
    assert_error(ValueError, ["dims must be >= 1", "0"], ops.svcca, _good(), _good(), dims=0)


@pytest.mark.parametrize("op,kwargs,argument", [
    ("svcca", dict(keep="energy"), "keep"),
    ("pwcca", dict(weighting="paper"), "weighting"),
    ("cca", dict(precision="float16"), "precision"),
    ("svcca", dict(precision="double"), "precision"),
    ("pwcca", dict(precision="Float64"), "precision"),
])
def test_error_unknown_string_option(ops, op, kwargs, argument):
    value = list(kwargs.values())[0]
    assert_error(ValueError, ["%s: %s must be" % (op, argument), '"%s"' % value],
                 CALLS[op], ops, _good(), _good(), **kwargs)


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("dtype,message", [(torch.int64, "must be a floating tensor"),
                                           (torch.int32, "must be a floating tensor"),
                                           (torch.complex64, "must be a real floating tensor"),
                                           (torch.complex128, "must be a real floating tensor")])
@pytest.mark.parametrize("which", [0, 1])
def test_error_dtype_is_type_error(ops, op, dtype, message, which):
    args = [_good(), _good()]
    args[which] = (args[which] * 10).to(dtype)
    assert_error(TypeError, [_names(op)[which] + " " + message, "float32 or float64"],
                 CALLS[op], ops, *args)


# ================================================================================================
# 5. gradcheck (float64; inputs with distinct canonical correlations)
# ================================================================================================
GRAD_FUNCTIONS = {
    "cca_correlations": lambda x, y: torch.ops.svcca.cca(x, y)[0],
    "cca_correlation_sum": lambda x, y: torch.ops.svcca.cca(x, y)[0].sum(),
    "svcca_score_all_dims": lambda x, y: torch.ops.svcca.svcca(x, y)[0],
    "svcca_score_dims2": lambda x, y: torch.ops.svcca.svcca(x, y, dims=2)[0],
    "pwcca_reference_score": lambda x, y: torch.ops.svcca.pwcca(x, y)[0],
    "pwcca_canonical_variates_score":
        lambda x, y: torch.ops.svcca.pwcca(x, y, weighting="canonical_variates")[0],
}


@pytest.mark.parametrize("name", list(GRAD_FUNCTIONS))
@pytest.mark.parametrize("swap", [False, True], ids=["p3-p4", "p4-p3"])
def test_gradcheck(name, swap):
    x, y = correlated_pair(40, 3, 4, seed=11)
    if swap:
        x, y = y, x
    rho = expected_cca(x, y)
    assert np.min(np.abs(np.diff(rho))) > 0.05 and rho[-1] > 0.05 and rho[0] < 0.95, rho
    inputs = (t(x, requires_grad=True), t(y, requires_grad=True))
    assert torch.autograd.gradcheck(GRAD_FUNCTIONS[name], inputs, **GRADCHECK)


# ================================================================================================
# 6. TorchScript: a scripted function from Python, and a saved module run from C++
# ================================================================================================
class AllOps(torch.nn.Module):
    """Calls every modern op and the compat get_cca_similarity, with keyword arguments."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
            torch.Tensor, Dict[str, torch.Tensor]]:
        rho, x_weights, _, x_mask, _ = torch.ops.svcca.cca(x, y)
        score, _, x_dims, y_dims = torch.ops.svcca.svcca(x, y, dims=2, keep="singular_value_mass")
        pw_score, pw_weights, _ = torch.ops.svcca.pwcca(x, y, weighting="canonical_variates")
        compat = torch.ops.svcca.get_cca_similarity(x.t(), y.t(), epsilon=1e-10, threshold=0.5)
        dims = torch.tensor([x_dims, y_dims])
        return rho, x_weights, x_mask, score, dims, pw_score, pw_weights, compat


def _assert_same_outputs(got, want, what="output"):
    """Same structure, dtypes and values (floats at the table's tolerance for their dtype)."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_outputs(g, w, "%s[%d]" % (what, i))
    elif isinstance(want, dict):
        assert set(got.keys()) == set(want.keys()), what
        for key in want:
            _assert_same_outputs(got[key], want[key], "%s[%r]" % (what, key))
    elif want.is_floating_point():
        assert_close(got, to_numpy(want), tol(want.dtype), want.dtype, what)
    else:
        assert got.dtype == want.dtype and torch.equal(got, want), what


def test_scripted_function_from_python(ops):
    @torch.jit.script
    def scores(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rho = torch.ops.svcca.cca(x, y, epsilon=0.0)[0]
        return rho.mean(), torch.ops.svcca.svcca(x, y, 0.9)[0], torch.ops.svcca.pwcca(x, y)[0]

    graph = str(scores.graph)
    for name in ("svcca::cca", "svcca::svcca", "svcca::pwcca"):
        assert name in graph
    x, y = (t(a) for a in correlated_pair(200, 4, 5, seed=12))
    got = scores(x, y)
    want = (ops.cca(x, y)[0].mean(), ops.svcca(x, y, fraction=0.9)[0], ops.pwcca(x, y)[0])
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@over_dtypes
def test_torchscript_round_trip_through_cpp(tmp_path, run_script_exe, dtype):
    module = torch.jit.script(AllOps())
    x, y = (t(a, dtype) for a in correlated_pair(200, 4, 5, seed=13))
    want = module(x, y)
    _assert_same_outputs(want, AllOps()(x, y))  # scripted == eager

    module_path, inputs_path, output_path = (str(tmp_path / n) for n in
                                             ("module.pt", "inputs.pt", "output.pt"))
    torch.jit.save(module, module_path)
    torch.save((x, y), inputs_path)
    proc = subprocess.run([run_script_exe, module_path, inputs_path, output_path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # torch::pickle_save tags dicts with torch.jit._pickle.restore_type_tag, which torch.load's
    # weights_only default (torch >= 2.6) refuses; the file is this test's own output.
    got = torch.load(output_path, weights_only=False)
    _assert_same_outputs(got, want)


def test_cpp_runner_reports_op_errors(tmp_path, run_script_exe):
    """An op's ValueError inside the saved module reaches the C++ caller as a message."""
    module_path, inputs_path = str(tmp_path / "module.pt"), str(tmp_path / "inputs.pt")
    torch.jit.save(torch.jit.script(AllOps()), module_path)
    torch.save((_good(10, 20), _good(10, 3)), inputs_path)
    proc = subprocess.run([run_script_exe, module_path, inputs_path, str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "x must have more examples than features" in proc.stderr


# ================================================================================================
# 7. dtype policy
# ================================================================================================
@over_dtypes
def test_results_come_back_in_input_dtype(ops, dtype):
    x, y = (t(a, dtype) for a in correlated_pair(200, 4, 5, seed=14))
    rho, wx, wy, mx, my = ops.cca(x, y)
    assert rho.dtype == wx.dtype == wy.dtype == dtype and mx.dtype == my.dtype == torch.bool
    score, rho, _, _ = ops.svcca(x, y)
    assert score.dtype == rho.dtype == dtype
    for out in ops.pwcca(x, y):
        assert out.dtype == dtype


# op -> (x, y, **options) -> the float outputs worth comparing, flattened into one vector.
PRECISION_CALLS = {
    "cca": lambda ops, x, y, **kw: ops.cca(x, y, **kw)[0],
    "svcca": lambda ops, x, y, **kw: torch.cat([
        o.reshape(-1) for o in ops.svcca(x, y, fraction=0.9, **kw)[:2]]),
    "pwcca": lambda ops, x, y, **kw: torch.cat([o.reshape(-1) for o in ops.pwcca(x, y, **kw)]),
    "pwcca_canonical": lambda ops, x, y, **kw: torch.cat([
        o.reshape(-1) for o in ops.pwcca(x, y, weighting="canonical_variates", **kw)]),
}


@pytest.mark.parametrize("op", list(PRECISION_CALLS))
def test_precision_input_stays_within_float32_tolerance(ops, op):
    x32, y32 = (t(a, torch.float32) for a in correlated_pair(300, 4, 6, seed=15))
    call = PRECISION_CALLS[op]
    exact = call(ops, x32.double(), y32.double())  # float64 answer for the same float32 data
    got = call(ops, x32, y32, precision="input")
    assert_close(got, to_numpy(exact), tol(torch.float32), torch.float32, op)
    # precision="input" really computes in float32: it is not the rounded float64 answer.
    assert not torch.equal(got, call(ops, x32, y32))


@pytest.mark.parametrize("swap", [False, True])
def test_mixed_dtypes_return_float64(ops, swap):
    x, y = (t(a) for a in correlated_pair(200, 4, 5, seed=16))
    x = x.float()
    if swap:
        x, y = y, x
    exact = ops.cca(x.double(), y.double())[0]
    rho, wx, wy, _, _ = ops.cca(x, y)
    assert rho.dtype == wx.dtype == wy.dtype == torch.float64
    assert_close(rho, to_numpy(exact), tol(torch.float64, "closed_form"), torch.float64, "rho")
    assert ops.svcca(x, y)[0].dtype == torch.float64
    assert all(out.dtype == torch.float64 for out in ops.pwcca(x, y))


def test_compat_ops_return_float64_for_float32_input(ops):
    x, y = (t(a, torch.float32) for a in correlated_pair(200, 4, 5, seed=17))
    out = ops.get_cca_similarity(x.t(), y.t())
    want = ops.get_cca_similarity(x.t().double(), y.t().double())
    for key in ("cca_coef1", "mean", "sum", "coef_x", "invsqrt_xx", "neuron_means1"):
        assert out[key].dtype == torch.float64, key
        assert_close(out[key], to_numpy(want[key]), tol(torch.float64, "closed_form"), what=key)
    assert all(r.dtype == torch.float64 for r in ops.compute_pwcca(x.t(), y.t()))
    assert ops.get_pca(x.t())["eigenvals"].dtype == torch.float64


# ================================================================================================
# 8. CUDA: the composite ops on GPU tensors (skipped without a GPU; benchmarks/device_check.sh
#    runs them on one). Same input dtype on both sides, so the float64 numerics of the default
#    policy are compared with each other and the table's tolerance for the dtype applies.
# ================================================================================================
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

# op -> (x, y) -> the float outputs worth comparing, flattened into one vector.
CUDA_CALLS = {
    "cca": lambda x, y: svcca.cca(x, y)[0],
    "svcca": lambda x, y: torch.cat([o.reshape(-1) for o in svcca.svcca(x, y, fraction=0.9)[:2]]),
    "pwcca": lambda x, y: torch.cat([o.reshape(-1) for o in svcca.pwcca(x, y)]),
    "pwcca_canonical": lambda x, y: torch.cat([
        o.reshape(-1) for o in svcca.pwcca(x, y, weighting="canonical_variates")]),
    "linear_cka": lambda x, y: svcca.linear_cka(x, y).reshape(1),
    "debiased_cka": lambda x, y: svcca.linear_cka(x, y, debiased=True).reshape(1),
    "rbf_cka": lambda x, y: svcca.rbf_cka(x, y).reshape(1),
    "procrustes": lambda x, y: svcca.procrustes(x, y).reshape(1),
}


@needs_cuda
@over_dtypes
@pytest.mark.parametrize("op", list(CUDA_CALLS))
def test_cuda_matches_cpu(op, dtype):
    x, y = (t(a, dtype) for a in correlated_pair(300, 6, 5, seed=18))
    want = CUDA_CALLS[op](x, y)
    got = CUDA_CALLS[op](x.cuda(), y.cuda())
    assert got.device.type == "cuda", "%s: result on %s" % (op, got.device)
    assert_close(got, to_numpy(want), tol(dtype), dtype, op)


@needs_cuda
def test_cuda_mixed_devices_are_an_error():
    x, y = (t(a) for a in correlated_pair(100, 3, 3, seed=19))
    assert_error(RuntimeError, ["must be on the same device"], svcca.cca, x, y.cuda())


@needs_cuda
def test_cuda_gradcheck_linear_cka():
    x, y = correlated_pair(40, 3, 4, seed=11)
    inputs = tuple(torch.tensor(a, dtype=torch.float64, device="cuda", requires_grad=True)
                   for a in (x, y))
    assert torch.autograd.gradcheck(lambda a, b: svcca.linear_cka(a, b), inputs, **GRADCHECK)


@needs_cuda
def test_cuda_scripted_function():
    @torch.jit.script
    def score(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.ops.svcca.svcca(x, y, 0.9)[0] + torch.ops.svcca.linear_cka(x, y)

    x, y = (t(a) for a in correlated_pair(200, 4, 5, seed=12))
    got = score(x.cuda(), y.cuda())
    assert got.device.type == "cuda"
    assert_close(got, to_numpy(score(x, y)), tol(torch.float64), torch.float64, "score")
