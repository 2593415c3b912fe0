"""pytest suite of the CKA family and Procrustes ops: slow numpy references (Kornblith et al.'s
formulas from google-research/representation_similarity), the published demo values, gradcheck,
errors, TorchScript and the dtype policy.

Layout: [n_examples, n_features]. Tolerances and comparison helpers come from test_ops (the one
table).
"""
from typing import Tuple

import numpy as np
import pytest
import torch

import svcca
from test_ops import GRADCHECK, assert_close, assert_error, correlated_pair, over_dtypes, t, tol


# ---- Slow, obvious float64 references (Kornblith et al.'s Demo.ipynb formulas) ----------------
def gram_linear(x):
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def _sq_distances(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)


def gram_rbf(x, threshold=1.0, sigma=None):
    """exp(-d / (2 sigma^2)); sigma = threshold * sqrt(np.median(d)) over the full n x n matrix
    (zero diagonal included) unless an absolute sigma is given."""
    d = _sq_distances(x)
    if sigma is None:
        return np.exp(-d / (2 * threshold ** 2 * np.median(d)))
    return np.exp(-d / (2 * sigma ** 2))


def center_gram(gram, unbiased=False):
    gram = np.array(gram, dtype=np.float64)
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka(gram_x, gram_y, debiased=False):
    gx = center_gram(gram_x, debiased)
    gy = center_gram(gram_y, debiased)
    return gx.ravel().dot(gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy))


def song_unbiased_hsic(k, l):
    """HSIC_1 of Song et al. (2012), written as in the paper (a check of the U-centered form)."""
    n = k.shape[0]
    k = k - np.diag(np.diag(k))
    l = l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def expected_procrustes(x, y):
    """Nuclear norm of X^T Y for centered, unit-Frobenius-norm X, Y."""
    xc = np.asarray(x, np.float64) - np.mean(x, 0)
    yc = np.asarray(y, np.float64) - np.mean(y, 0)
    xc /= np.linalg.norm(xc)
    yc /= np.linalg.norm(yc)
    return np.sum(np.linalg.svd(xc.T @ yc, compute_uv=False))


def published_data():
    """Kornblith et al.'s demo data (tests/golden/README.md, "Published values")."""
    rng = np.random.RandomState(1337)
    x = rng.randn(100, 10)
    y = x + rng.randn(100, 10)
    return x, y


PAIRS = [(3, 4), (5, 2), (6, 6)]
pairs = pytest.mark.parametrize("p1,p2", PAIRS, ids=["p%d-p%d" % p for p in PAIRS])
debiased_or_not = pytest.mark.parametrize("debiased", [False, True], ids=["biased", "debiased"])


# ================================================================================================
# 1. Against the references
# ================================================================================================
def test_package_wrappers_forward_arguments(ops):
    """The Python wrappers pass every argument to the op in schema order."""
    x, y = _xy()
    assert torch.equal(svcca.linear_cka(x, y, True, "input"),
                       ops.linear_cka(x, y, debiased=True, precision="input"))
    assert torch.equal(svcca.rbf_cka(x, y, 0.5, None, True, "input"),
                       ops.rbf_cka(x, y, threshold=0.5, debiased=True, precision="input"))
    assert torch.equal(svcca.rbf_cka(x, y, 0.5, 2.0), ops.rbf_cka(x, y, sigma=2.0))
    assert torch.equal(svcca.procrustes(x, y, "input"), ops.procrustes(x, y, precision="input"))
    assert torch.equal(svcca.procrustes_distance(x, y, "input"),
                       ops.procrustes_distance(x, y, precision="input"))
    for name in CKA_OPS:
        assert name in svcca.__all__
        schema = str(getattr(ops, name).default._schema)
        assert schema.startswith("svcca::%s(Tensor x, Tensor y" % name), schema


def test_song_estimator_equals_u_centered_form():
    # The reference's U-centering is the estimator of Song et al.: check the reference itself.
    x, y = correlated_pair(30, 3, 4, seed=3)
    k, l = gram_linear(x), gram_linear(y)
    n = k.shape[0]
    u = center_gram(k, True).ravel().dot(center_gram(l, True).ravel())
    assert_close(u / (n * (n - 3)), song_unbiased_hsic(k, l), tol(torch.float64, "closed_form"))


@over_dtypes
@pairs
@debiased_or_not
def test_linear_cka_matches_reference(ops, dtype, p1, p2, debiased):
    x, y = correlated_pair(80, p1, p2, seed=p1 * 10 + p2)
    xt, yt = t(x, dtype), t(y, dtype)
    got = ops.linear_cka(xt, yt, debiased=debiased)
    # Uncentered Gram matrices: the reference centers the Gram matrix, not the data.
    want = cka(gram_linear(xt.double().numpy()), gram_linear(yt.double().numpy()), debiased)
    assert_close(got, want, tol(dtype), dtype, "linear_cka")


@over_dtypes
@pairs
@debiased_or_not
@pytest.mark.parametrize("bandwidth", [dict(threshold=1.0), dict(threshold=0.4),
                                       dict(sigma=2.5)], ids=["median", "median0.4", "sigma2.5"])
def test_rbf_cka_matches_reference(ops, dtype, p1, p2, debiased, bandwidth):
    x, y = correlated_pair(50, p1, p2, seed=p1 * 10 + p2 + 1)
    xt, yt = t(x, dtype), t(y, dtype)
    got = ops.rbf_cka(xt, yt, debiased=debiased, **bandwidth)
    xr, yr = xt.double().numpy(), yt.double().numpy()
    want = cka(gram_rbf(xr, **bandwidth), gram_rbf(yr, **bandwidth), debiased)
    assert_close(got, want, tol(dtype), dtype, "rbf_cka %s" % bandwidth)


def test_rbf_median_is_numpy_median_of_the_full_matrix(ops):
    # n^2 even: numpy averages the two middle entries, which differ here (each off-diagonal
    # distance appears twice and the diagonal adds n zeros). Taking either one alone, or the
    # median of the off-diagonal distances only, gives a different number.
    x, y = correlated_pair(20, 3, 3, seed=8)
    d = np.sort(_sq_distances(x).ravel())
    lo, hi = d[len(d) // 2 - 1], d[len(d) // 2]
    got = ops.rbf_cka(t(x), t(y), sigma=None, threshold=1.0)
    want = cka(gram_rbf(x), gram_rbf(y))
    tolerance = tol(torch.float64)
    assert_close(got, want, tolerance)
    # Either middle entry alone would be caught, with a wide margin.
    for wrong in (lo, hi):
        wrong_value = cka(gram_rbf(x, sigma=np.sqrt(wrong)), gram_rbf(y))
        assert abs(wrong_value - want) > 100 * (tolerance.atol + tolerance.rtol * want)
    off_diagonal = _sq_distances(x)[np.triu_indices(20, 1)]
    wrong_value = cka(gram_rbf(x, sigma=np.sqrt(np.median(off_diagonal))), gram_rbf(y))
    assert abs(wrong_value - want) > 100 * (tolerance.atol + tolerance.rtol * want)


@over_dtypes
@pairs
def test_procrustes_matches_reference(ops, dtype, p1, p2):
    x, y = correlated_pair(60, p1, p2, seed=p1 + 7 * p2)
    xt, yt = t(x, dtype), t(y, dtype)
    want = expected_procrustes(xt.double().numpy(), yt.double().numpy())
    assert_close(ops.procrustes(xt, yt), want, tol(dtype), dtype, "procrustes")
    assert_close(ops.procrustes_distance(xt, yt), 2 - 2 * want, tol(dtype), dtype,
                 "procrustes_distance")


def test_procrustes_distance_is_min_over_orthogonal_maps(ops):
    x, y = correlated_pair(60, 4, 4, seed=21)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    u, _, vt = np.linalg.svd(xc.T @ yc)
    best = np.sum((xc @ (u @ vt) - yc) ** 2)
    assert_close(ops.procrustes_distance(t(x), t(y)), best, tol(torch.float64))
    q, _ = np.linalg.qr(np.random.RandomState(0).randn(4, 4))
    assert np.sum((xc @ q - yc) ** 2) > best + 1e-3


# ================================================================================================
# 2. Published values (Kornblith et al. 2019, representation_similarity/Demo.ipynb)
# ================================================================================================
# Published numbers are quoted to 5 decimals: half a unit in the last place (support.h's kQuoted5).
PUBLISHED_ATOL = 5e-6


def test_published_values(ops):
    x, y = published_data()
    np.testing.assert_allclose(x[0, :3], [-0.703187, -0.490282, -0.321814], atol=5e-7, rtol=0)
    xt, yt = t(x), t(y)
    assert abs(ops.linear_cka(xt, yt).item() - 0.55761) <= PUBLISHED_ATOL
    assert abs(ops.linear_cka(xt, yt, debiased=True).item() - 0.51346) <= PUBLISHED_ATOL
    assert abs(ops.rbf_cka(xt, yt, threshold=0.5).item() - 0.65483) <= PUBLISHED_ATOL


# ================================================================================================
# 3. Properties through the ops
# ================================================================================================
@debiased_or_not
def test_invariances(ops, debiased):
    x, y = correlated_pair(70, 4, 5, seed=8)
    q, _ = np.linalg.qr(np.random.RandomState(1).randn(4, 4))
    base = ops.linear_cka(t(x), t(y), debiased=debiased)
    moved = ops.linear_cka(t(3.0 * x @ q + 5.0), t(y), debiased=debiased)
    assert_close(moved, base.item(), tol(torch.float64))
    assert_close(ops.linear_cka(t(y), t(x), debiased=debiased), base.item(), tol(torch.float64))
    assert_close(ops.rbf_cka(t(x), t(3.0 * x @ q + 5.0), debiased=debiased), 1.0,
                 tol(torch.float64))
    assert_close(ops.procrustes(t(x), t(3.0 * x @ q + 5.0)), 1.0, tol(torch.float64))


def test_linear_cka_of_one_feature_is_squared_pearson(ops):
    x, y = correlated_pair(100, 1, 1, seed=4)
    r = np.corrcoef(x[:, 0], y[:, 0])[0, 1]
    assert_close(ops.linear_cka(t(x), t(y)), r * r, tol(torch.float64, "closed_form"))


# ================================================================================================
# 4. Errors
# ================================================================================================
def _xy(n=30, p1=3, p2=4, dtype=torch.float64):
    x, y = correlated_pair(n, p1, p2, seed=2)
    return t(x, dtype), t(y, dtype)


CKA_OPS = {
    "linear_cka": lambda x, y, **kw: svcca.linear_cka(x, y, **kw),
    "rbf_cka": lambda x, y, **kw: svcca.rbf_cka(x, y, **kw),
    "procrustes": lambda x, y, **kw: svcca.procrustes(x, y, **kw),
    "procrustes_distance": lambda x, y, **kw: svcca.procrustes_distance(x, y, **kw),
}
over_ops = pytest.mark.parametrize("name", list(CKA_OPS))


@over_ops
def test_error_mismatched_examples(name):
    x, y = _xy()
    assert_error(ValueError, ["%s: x and y must have the same number of examples (dim 0), but "
                              "got x with shape [30, 3] and y with shape [20, 4]" % name],
                 CKA_OPS[name], x, y[:20])


@over_ops
def test_error_integer_dtype_is_type_error(name):
    x, y = _xy()
    assert_error(TypeError, ["%s: y must be a floating tensor (float32 or float64)" % name],
                 CKA_OPS[name], x, y.to(torch.int64))


@over_ops
def test_error_constant_layer(name):
    x, _ = _xy()
    constant = torch.full((30, 2), 4.0, dtype=torch.float64)
    assert_error(ValueError, ["%s: y must have at least one non-constant feature, but all 2 "
                              "features are constant" % name], CKA_OPS[name], x, constant)


@pytest.mark.parametrize("name", ["linear_cka", "rbf_cka"])
def test_error_debiased_needs_four_examples(name):
    x, y = _xy()
    assert_error(ValueError, ["%s: x and y must have at least 4 examples (dim 0) for debiased "
                              "CKA" % name, "but got 3"], CKA_OPS[name], x[:3], y[:3],
                 debiased=True)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=0.0), "rbf_cka: sigma must be finite and > 0, but got 0"),
    (dict(sigma=-1.0), "rbf_cka: sigma must be finite and > 0, but got -1"),
    (dict(threshold=0.0), "rbf_cka: threshold must be finite and > 0, but got 0"),
    (dict(threshold=float("inf")), "rbf_cka: threshold must be finite and > 0, but got inf"),
])
def test_error_rbf_bandwidth(kwargs, message):
    x, y = _xy()
    assert_error(ValueError, [message], svcca.rbf_cka, x, y, **kwargs)


def test_error_rbf_zero_median():
    x, y = _xy()
    x = x.clone()
    x[:25] = 1.0  # 25 of 30 examples identical: 625 of 900 squared distances are 0
    assert_error(ValueError, ["rbf_cka: x must have a positive median squared distance",
                              "give an absolute sigma instead"], svcca.rbf_cka, x, y)
    assert torch.isfinite(svcca.rbf_cka(x, y, sigma=1.0))


def test_error_bad_precision():
    x, y = _xy()
    assert_error(ValueError, ['procrustes: precision must be "float64" or "input", but got "x"'],
                 svcca.procrustes, x, y, precision="x")


# ================================================================================================
# 5. gradcheck (float64)
# ================================================================================================
GRAD_FUNCTIONS = {
    "linear_cka": lambda x, y: torch.ops.svcca.linear_cka(x, y),
    "linear_cka_debiased": lambda x, y: torch.ops.svcca.linear_cka(x, y, debiased=True),
    "rbf_cka_sigma": lambda x, y: torch.ops.svcca.rbf_cka(x, y, sigma=2.0),
    "rbf_cka_median": lambda x, y: torch.ops.svcca.rbf_cka(x, y, threshold=0.8),
    "rbf_cka_median_debiased":
        lambda x, y: torch.ops.svcca.rbf_cka(x, y, threshold=0.8, debiased=True),
    "procrustes": lambda x, y: torch.ops.svcca.procrustes(x, y),
    "procrustes_distance": lambda x, y: torch.ops.svcca.procrustes_distance(x, y),
}


@pytest.mark.parametrize("name", list(GRAD_FUNCTIONS))
def test_gradcheck(name):
    x, y = correlated_pair(15, 3, 4, seed=11)
    inputs = (t(x, requires_grad=True), t(y, requires_grad=True))
    assert torch.autograd.gradcheck(GRAD_FUNCTIONS[name], inputs, **GRADCHECK)


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs "
                    "torch >= 2.4")
@pytest.mark.parametrize("name,kwargs", [("linear_cka", {}), ("rbf_cka", {"threshold": 0.5}),
                                         ("procrustes", {}), ("procrustes_distance", {})])
def test_opcheck(ops, name, kwargs):
    x, y = _xy()
    torch.library.opcheck(getattr(ops, name).default, (x, y), kwargs)


# ================================================================================================
# 6. TorchScript and the dtype policy
# ================================================================================================
def test_scripted_function(ops):
    @torch.jit.script
    def scores(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.ops.svcca.linear_cka(x, y, debiased=True),
                torch.ops.svcca.rbf_cka(x, y, 0.5, None, False),
                torch.ops.svcca.procrustes(x, y))

    graph = str(scores.graph)
    for name in ("svcca::linear_cka", "svcca::rbf_cka", "svcca::procrustes"):
        assert name in graph
    x, y = _xy()
    got = scores(x, y)
    want = (ops.linear_cka(x, y, debiased=True), ops.rbf_cka(x, y, threshold=0.5),
            ops.procrustes(x, y))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@over_dtypes
@over_ops
def test_results_are_0d_in_input_dtype(name, dtype):
    x, y = _xy(dtype=dtype)
    out = CKA_OPS[name](x, y)
    assert out.dim() == 0 and out.dtype == dtype and out.device == x.device
    assert CKA_OPS[name](x, y.double()).dtype == torch.float64


@over_ops
def test_precision_input_stays_within_float32_tolerance(name):
    x, y = _xy(dtype=torch.float32)
    assert_close(CKA_OPS[name](x, y, precision="input"), CKA_OPS[name](x, y).item(),
                 tol(torch.float32), torch.float32, name)
