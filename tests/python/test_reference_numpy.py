"""pytest suite of benchmarks/reference_numpy.py, the numpy google/svcca formulas compat_bench.py
times svcca against: it must reproduce google/svcca's golden numbers (at each file's own
tolerance), its qr_cca must equal svcca.cca, and the checks must reject a wrong epsilon.

benchmarks/ is not a package, so the reference is imported by path. Layouts: the reference takes
google/svcca's [n_neurons, n_datapoints]; qr_cca and svcca.cca take [n_examples, n_features].
"""
import importlib.util
import os
import warnings

import numpy as np
import pytest
import torch

import svcca
from test_ops import _golden_tol, assert_close, correlated_pair, row_signs, t, tol

_HERE = os.path.dirname(os.path.abspath(__file__))
_REFERENCE_PATH = os.path.join(_HERE, "..", "..", "benchmarks", "reference_numpy.py")


@pytest.fixture(scope="module")
def ref():
    """benchmarks/reference_numpy.py as a module."""
    spec = importlib.util.spec_from_file_location("reference_numpy", _REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- get_cca_similarity -------------------------------------------------------------------------
def _check_golden_cca(case, a, out):
    """Masks exact; numbers at the file's tolerances (test_ops' golden default for keys it does
    not list); singular vectors up to one sign per canonical pair, rows >= k by their projector;
    cca_dirns rows of the kept neurons, minus the means, up to the same signs."""
    assert np.array_equal(out["x_idxs"], a["x_idxs"]), "x_idxs"
    assert np.array_equal(out["y_idxs"], a["y_idxs"]), "y_idxs"
    assert out["cca_coef1"] is out["cca_coef2"]
    for key in ("cca_coef1", "cca_coef2", "mean", "sum"):
        assert_close(np.asarray(out[key]), a[key], _golden_tol(case, key, "cca_coef1"), what=key)
    for key in ("invsqrt_xx", "invsqrt_yy", "full_invsqrt_xx", "full_invsqrt_yy"):
        assert_close(out[key], a[key], _golden_tol(case, key, "invsqrt_xx"), what=key)
    for key in ("neuron_means1", "neuron_means2"):
        assert_close(out[key], a[key], _golden_tol(case, key, "neuron_means1"), what=key)

    k = a["cca_coef1"].size
    vec_tol = _golden_tol(case, "coef_vectors_after_sign_alignment", default="golden_vectors")
    cx, cy = out["coef_x"], out["coef_y"]
    signs = row_signs(cx[:k], a["coef_x"][:k])
    assert_close(signs[:, None] * cx[:k], a["coef_x"][:k], vec_tol, what="coef_x rows < k")
    assert_close(signs[:, None] * cy[:k], a["coef_y"][:k], vec_tol, what="coef_y rows < k")
    for key, c in (("coef_x", cx), ("coef_y", cy)):
        rest, e_rest = c[k:], a[key][k:]
        assert_close(rest.T @ rest, e_rest.T @ e_rest, vec_tol, what=key + " projector rows >= k")
    for key, kept, mask in (("full_coef_x", cx, a["x_idxs"]), ("full_coef_y", cy, a["y_idxs"])):
        full = out[key]
        assert np.all(full[~mask, :] == 0) and np.all(full[:, ~mask] == 0), key
        assert np.array_equal(full[np.ix_(mask, mask)], kept), key
    for d, means, mask in (("cca_dirns1", "neuron_means1", "x_idxs"),
                           ("cca_dirns2", "neuron_means2", "y_idxs")):
        rows = np.flatnonzero(a[mask])[:k]
        got = (out[d] - a[means])[rows]
        want = (a[d] - a[means])[rows]
        scale = np.abs(want).max(axis=1, keepdims=True)
        assert_close(signs[:, None] * got / scale, want / scale, vec_tol, what=d + " rows < k")


@pytest.mark.parametrize("name,epsilon", [("cca_small", 0.0), ("cca_dead_neurons", 1e-10)])
def test_golden_get_cca_similarity(ref, load_golden, name, epsilon):
    case, a = load_golden(name)
    out = ref.get_cca_similarity(a["acts1"], a["acts2"], epsilon=epsilon, threshold=0.98,
                                 compute_coefs=True, compute_dirns=True)
    assert set(out) == {"cca_coef1", "cca_coef2", "x_idxs", "y_idxs", "mean", "sum", "coef_x",
                        "coef_y", "invsqrt_xx", "invsqrt_yy", "full_coef_x", "full_coef_y",
                        "full_invsqrt_xx", "full_invsqrt_yy", "neuron_means1", "neuron_means2",
                        "cca_dirns1", "cca_dirns2"}
    _check_golden_cca(case, a, out)
    if "sum_threshold_idx" in a:
        assert ref.sum_threshold(out["cca_coef1"], 0.98) == int(a["sum_threshold_idx"][0])


@pytest.mark.parametrize("name,wrong_epsilon", [("cca_small", 1e-6), ("cca_dead_neurons", 1e-8)])
def test_golden_check_rejects_wrong_epsilon(ref, load_golden, name, wrong_epsilon):
    """The comparison has teeth: a small change of the (relative) ridge is caught."""
    case, a = load_golden(name)
    out = ref.get_cca_similarity(a["acts1"], a["acts2"], epsilon=wrong_epsilon,
                                 compute_dirns=True)
    with pytest.raises(AssertionError, match="cca_coef1"):
        _check_golden_cca(case, a, out)


@pytest.mark.parametrize("epsilon", [1e-3, 0.3])
def test_large_epsilon_matches_port(ref, load_golden, epsilon):
    """At the golden files' epsilons (0, 1e-10) the ridge moves the numbers by ~1e-11, below the
    files' tolerances; at large epsilons (cut-off and ridge both visible: 0.3 drops 10 of acts2's
    24 neurons) the reference must agree with svcca's compat port, itself held to the golden data
    by test_ops."""
    _, a = load_golden("cca_dead_neurons")
    x, y = t(a["acts1"]), t(a["acts2"])
    out = ref.get_cca_similarity(a["acts1"], a["acts2"], epsilon=epsilon)
    want = svcca.get_cca_similarity(x, y, epsilon=epsilon)
    assert np.array_equal(out["x_idxs"], want["x_idxs"].numpy())
    assert np.array_equal(out["y_idxs"], want["y_idxs"].numpy())
    for key in ("cca_coef1", "mean", "sum", "invsqrt_xx", "invsqrt_yy"):
        assert_close(np.asarray(out[key]), want[key], tol(torch.float64), what=key)
    value, weights, coefs = ref.compute_pwcca(a["acts1"], a["acts2"], epsilon=epsilon)
    want_value, want_weights, want_coefs = svcca.compute_pwcca(x, y, epsilon)
    assert_close(np.asarray(value), want_value, tol(torch.float64), what="pwcca")
    assert_close(weights, want_weights, tol(torch.float64), what="weights")
    assert_close(coefs, want_coefs, tol(torch.float64), what="coefs")


def test_golden_threshold_edges(ref, load_golden):
    case, a = load_golden("cca_threshold_edges")
    rho = ref.get_cca_similarity(a["acts1"], a["acts2"])["cca_coef1"]
    for threshold, mean, idx in zip(a["thresholds"], a["mean"], a["sum_threshold_idx"]):
        got_idx = ref.sum_threshold(rho, float(threshold))
        assert (-1 if got_idx is None else got_idx) == int(idx), threshold
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            # threshold 0: the mean of an empty prefix, NaN with a RuntimeWarning, as the original.
            warnings.simplefilter("ignore", RuntimeWarning)
            got = ref.get_cca_similarity(a["acts1"], a["acts2"], threshold=float(threshold))
        assert_close(np.asarray(got["mean"]), [mean, mean], _golden_tol(case, "mean"),
                     what="mean at threshold %g" % threshold)


def test_all_removed_raises(ref, load_golden):
    case, _ = load_golden("cca_all_removed_error")
    _, a = load_golden(case["inputs_from"].replace(".json", ""))
    with pytest.raises(ValueError, match="removes every neuron"):
        ref.get_cca_similarity(a["acts1"], a["acts2"], epsilon=2.0)


# ---- compute_pwcca ------------------------------------------------------------------------------
def test_golden_compute_pwcca(ref, load_golden):
    case, a = load_golden("pwcca_equal50_dead")
    value, weights, coefs = ref.compute_pwcca(a["acts1"], a["acts2"], epsilon=1e-10)
    assert_close(np.asarray(value), a["pwcca"][0], _golden_tol(case, "pwcca"), what="pwcca")
    assert_close(weights, a["weights"], _golden_tol(case, "weights"), what="weights")
    assert_close(coefs, a["coefs"], _golden_tol(case, "coefs"), what="coefs")
    # epsilon = 0 keeps the dead neurons: a different number, which the check must see.
    wrong, _, _ = ref.compute_pwcca(a["acts1"], a["acts2"], epsilon=0.0)
    with pytest.raises(AssertionError):
        assert_close(np.asarray(wrong), a["pwcca"][0], _golden_tol(case, "pwcca"), what="pwcca")


def test_compute_pwcca_else_branch_uses_acts2(ref):
    """kx > ky: weights and directions from acts2 (the original's acts1[y_idxs] is its bug),
    as svcca.compute_pwcca does."""
    rng = np.random.RandomState(3)
    acts1 = rng.randn(12, 600)
    acts2 = rng.randn(9, 12) @ acts1 + 0.5 * rng.randn(9, 600) + 1.0
    value, weights, coefs = ref.compute_pwcca(acts1, acts2, epsilon=1e-10)
    assert weights.shape == (9,) and coefs.shape == (9,)
    want_value, want_weights, want_coefs = svcca.compute_pwcca(t(acts1), t(acts2), 1e-10)
    assert_close(np.asarray(value), want_value, tol(torch.float64), what="pwcca")
    assert_close(weights, want_weights, tol(torch.float64), what="weights")
    assert_close(coefs, want_coefs, tol(torch.float64), what="coefs")


# ---- SVCCA recipe -------------------------------------------------------------------------------
def _svcca_top20_inputs(case, a):
    """The stored inputs when the file has them (shared/golden), else regenerated from 'data'
    with numpy's legacy RandomState(4), draws in the order the description lists them."""
    if "acts1" in a:
        return a["acts1"], a["acts2"]
    assert case["data"].startswith("RandomState(4): lat=randn(30,2000)"), case["data"]
    rng = np.random.RandomState(4)
    lat = rng.randn(30, 2000) * np.linspace(3, .3, 30)[:, None]
    acts1 = rng.randn(100, 30) @ lat + 0.05 * rng.randn(100, 2000) + rng.randn(100, 1)
    shared = np.vstack([lat[:20], rng.randn(10, 2000)])
    acts2 = rng.randn(80, 30) @ shared + 0.05 * rng.randn(80, 2000)
    return acts1, acts2


def test_golden_svcca_top20(ref, load_golden):
    case, a = load_golden("svcca_top20")
    acts1, acts2 = _svcca_top20_inputs(case, a)
    out = ref.svcca_recipe(acts1, acts2, dims1=20, epsilon=1e-10)
    assert_close(out["sv1"], a["sv1"], _golden_tol(case, "sv1"), what="sv1")
    assert_close(out["sv2"], a["sv2"], _golden_tol(case, "sv2", "sv1"), what="sv2")
    assert_close(out["cca_coef1"], a["cca_coef1"], _golden_tol(case, "cca_coef1"), what="coef1")
    assert_close(np.asarray(out["mean"]), a["mean"], _golden_tol(case, "mean", "cca_coef1"),
                 what="mean")
    assert_close(np.asarray(out["svcca_score"]), a["svcca_score"][0],
                 _golden_tol(case, "svcca_score"), what="svcca_score")
    # 19 directions instead of 20 gives another score, which the check must see.
    wrong = ref.svcca_recipe(acts1, acts2, dims1=19, epsilon=1e-10)["svcca_score"]
    with pytest.raises(AssertionError):
        assert_close(np.asarray(wrong), a["svcca_score"][0], _golden_tol(case, "svcca_score"))


def test_get_svcca_similarity_is_the_recipe(ref, load_golden):
    """svcca.get_svcca_similarity (covariance eigenvectors, no wide SVD) gives the recipe's
    numbers: the golden case at its tolerances, unequal dims against the numpy recipe."""
    case, a = load_golden("svcca_top20")
    acts1, acts2 = _svcca_top20_inputs(case, a)
    out = svcca.get_svcca_similarity(t(acts1), t(acts2), 20)
    assert_close(out["cca_coef1"], a["cca_coef1"], _golden_tol(case, "cca_coef1"), what="coef1")
    assert_close(out["svcca_score"].reshape(1), a["svcca_score"], _golden_tol(case, "svcca_score"),
                 what="svcca_score")
    assert_close(out["sv1"], a["sv1"][:20], _golden_tol(case, "sv1"), what="sv1")
    assert_close(out["sv2"], a["sv2"][:20], _golden_tol(case, "sv2", "sv1"), what="sv2")
    want = ref.svcca_recipe(acts1, acts2, dims1=30, dims2=12, epsilon=1e-10)
    got = svcca.get_svcca_similarity(t(acts1), t(acts2), dims1=30, dims2=12)
    assert got["cca_coef1"].shape == (12,)
    assert_close(got["cca_coef1"], want["cca_coef1"], tol(torch.float64), what="dims 30/12")
    assert_close(got["mean"], np.asarray(want["mean"]), tol(torch.float64), what="mean 30/12")
    with pytest.raises(ValueError, match=r"dims2 must be in \[1, 80\]"):
        svcca.get_svcca_similarity(t(acts1), t(acts2), dims1=20, dims2=81)


# ---- qr_cca, the torch baseline -----------------------------------------------------------------
def test_qr_cca_equals_svcca_cca(ref):
    x, y = correlated_pair(600, 14, 10, seed=21)
    got = ref.qr_cca(t(x), t(y))
    want = svcca.cca(t(x), t(y))[0]
    assert got.dtype == torch.float64 and got.shape == want.shape == (10,)
    assert torch.max(torch.abs(got - want)).item() <= 1e-10
    # Without the centring (correlated_pair has non-zero means) the numbers move far past 1e-10.
    q1, _ = torch.linalg.qr(t(x))
    q2, _ = torch.linalg.qr(t(y))
    assert torch.max(torch.abs(torch.linalg.svdvals(q1.T @ q2) - want)).item() > 1e-6
