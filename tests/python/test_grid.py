"""pytest suite of torch.ops.svcca.similarity_grid: every cell against the one-shot ops (and linear
CKA against a numpy formula), one model and A vs B, conv layers, errors, TorchScript.
"""
from typing import List

import numpy as np
import pytest
import torch

from test_ops import assert_close, assert_error, tol

MEASURES = ["cka", "debiased-cka", "rbf-cka", "cca", "svcca", "pwcca"]


def layers(widths, n, seed, dtype=torch.float64):
    rng = np.random.RandomState(seed)
    z = rng.randn(n, 4)
    out = []
    for i, p in enumerate(widths):
        x = z @ rng.randn(4, p) + (0.5 + 0.3 * i) * rng.randn(n, p) + 2.0
        out.append(torch.tensor(x, dtype=dtype))
    return out


def one_shot(ops, measure, x, y):
    if measure == "cka":
        return ops.linear_cka(x, y)
    if measure == "debiased-cka":
        return ops.linear_cka(x, y, debiased=True)
    if measure == "rbf-cka":
        return ops.rbf_cka(x, y)
    if measure == "cca":
        return ops.cca(x, y)[0].mean()
    if measure == "svcca":
        return ops.svcca(x, y)[0]
    return ops.pwcca(x, y)[0]


def numpy_linear_cka(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("measure", MEASURES)
def test_one_model_grid_equals_pair_ops(ops, measure):
    xs = layers([3, 6, 10], 70, seed=1)
    g = ops.similarity_grid(xs, measure=measure)
    assert g.shape == (3, 3) and g.dtype == torch.float64
    expected = [[float(one_shot(ops, measure, a, b)) for b in xs] for a in xs]
    assert_close(g, expected, tol(torch.float64), what=measure)


@pytest.mark.parametrize("measure", MEASURES)
def test_two_model_grid_equals_pair_ops(ops, measure):
    xs = layers([4, 8], 60, seed=2)
    ys = layers([5, 3, 7], 60, seed=3)
    g = ops.similarity_grid(xs, ys, measure=measure)
    assert g.shape == (2, 3)
    expected = [[float(one_shot(ops, measure, a, b)) for b in ys] for a in xs]
    assert_close(g, expected, tol(torch.float64), what=measure)


def test_linear_cka_grid_against_numpy():
    xs = layers([2, 5, 9, 4], 50, seed=4, dtype=torch.float32)
    g = torch.ops.svcca.similarity_grid(xs)
    expected = [[numpy_linear_cka(a, b) for b in xs] for a in xs]
    assert_close(g, expected, tol(torch.float32))


def test_conv_layers(ops):
    rng = np.random.RandomState(5)
    a = torch.tensor(rng.randn(40, 3, 4, 4))
    b = torch.tensor(rng.randn(40, 2, 4, 4)) + 0.5 * a[:, :2]
    # auto: flatten for CKA, pool for CCA.
    g = ops.similarity_grid([a, b])
    assert_close(g[0, 1], float(ops.linear_cka(a.reshape(40, -1), b.reshape(40, -1))),
                 tol(torch.float64))
    g = ops.similarity_grid([a, b], measure="cca")
    assert_close(g[0, 1], float(ops.cca(a.mean((2, 3)), b.mean((2, 3)))[0].mean()),
                 tol(torch.float64))
    g = ops.similarity_grid([a, b], measure="cca", conv="fold")
    fx, fy = ops.conv_features(a, b)
    assert_close(g[0, 1], float(ops.cca(fx, fy)[0].mean()), tol(torch.float64))
    g = ops.similarity_grid([a, b], measure="cca", conv="fourier")
    assert_close(g[0, 1], float(ops.fourier_cca(a, b)[4]), tol(torch.float64))


def test_errors(ops):
    xs = layers([3], 50, seed=6)
    ys = layers([3], 40, seed=7)
    assert_error(ValueError, ["similarity_grid: a and b must have the same number of examples",
                              "[50, 3]", "[40, 3]"], ops.similarity_grid, xs, ys)
    assert_error(ValueError, ["measure must be one of", "\"nope\""], ops.similarity_grid, xs,
                 measure="nope")
    assert_error(ValueError, ["conv must be one of"], ops.similarity_grid, xs, conv="nope")
    assert_error(ValueError, ["at least one layer"], ops.similarity_grid, [])
    assert_error(ValueError, ["conv \"fourier\" must go with measure \"cca\""],
                 ops.similarity_grid, xs, conv="fourier")


def test_torchscript(ops):
    @torch.jit.script
    def grid(xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.ops.svcca.similarity_grid(xs, None, "svcca", "auto")

    xs = layers([3, 5], 40, seed=8)
    assert_close(grid(xs), ops.similarity_grid(xs, measure="svcca"), tol(torch.float64, "closed_form"))


def test_package_wrapper():
    import svcca
    xs = layers([3, 4], 30, seed=9)
    ys = layers([2], 30, seed=10)
    assert_close(svcca.similarity_grid(xs, ys, measure="cca"),
                 torch.ops.svcca.similarity_grid(xs, ys, "cca", "auto"), tol(torch.float64, "closed_form"))
