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


def test_package_wrapper_returns_grid():
    import svcca
    xs = layers([3, 4], 30, seed=9)
    ys = layers([2], 30, seed=10)
    g = svcca.similarity_grid(xs, ys, measure="cca")
    assert isinstance(g, svcca.Grid)
    assert g.rows == ["0", "1"] and g.cols == ["0"]
    assert g.measure == "cca" and g.examples == 30 and g.undefined == []
    assert g.values.dtype == torch.float64 and g.shape == (2, 1)
    assert g.options["conv"] == "pool" and g.options["epsilon"] == "0"
    assert g.row_label == "model A layer" and g.col_label == "model B layer"
    assert_close(g.values, torch.ops.svcca.similarity_grid(xs, ys, "cca", "auto"),
                 tol(torch.float64, "closed_form"))


def test_package_wrapper_names():
    import svcca
    xs = layers([3, 4, 5], 30, seed=11)
    by_list = svcca.similarity_grid(xs)
    by_dict = svcca.similarity_grid({"a": xs[0], "b": xs[1], "c": xs[2]})
    by_pairs = svcca.similarity_grid([("a", xs[0]), ("b", xs[1]), ("c", xs[2])])
    assert by_list.rows == by_list.cols == ["0", "1", "2"]
    assert by_dict.rows == by_pairs.rows == by_dict.cols == ["a", "b", "c"]
    assert torch.equal(by_dict.values, by_list.values)
    assert torch.equal(by_pairs.values, by_list.values)
    assert_error(TypeError, ["x must be a list or dict of tensors", "wrap it in a list"],
                 svcca.similarity_grid, xs[0])
    assert_error(TypeError, ["x must be a list of tensors, a dict of tensors or a list of (name, "
                             "tensor) pairs"], svcca.similarity_grid, [xs[0], ("b", xs[1])])
    assert_error(TypeError, ["unexpected option(s) fractoin"], svcca.similarity_grid, xs,
                 fractoin=0.5)


def test_package_wrapper_options(ops):
    import svcca
    xs = layers([6, 8], 60, seed=12)
    g = svcca.similarity_grid(xs, measure="svcca", dims=2)
    assert g.options["dims"] == "2"
    assert_close(g.values[0, 1], float(ops.svcca(xs[0], xs[1], dims=2)[0]), tol(torch.float64))
    assert abs(float(g.values[0, 1]) - float(ops.svcca(xs[0], xs[1])[0])) > 1e-3
    g = svcca.similarity_grid(xs, measure="cca", epsilon=0.1)
    assert g.options["epsilon"] == "0.1"
    assert_close(g.values[0, 1], float(ops.cca(xs[0], xs[1], epsilon=0.1)[0].mean()),
                 tol(torch.float64))
    g = svcca.similarity_grid(xs, measure="cka", side="gram")
    assert g.options["side"] == "gram"
    assert_close(g.values, svcca.similarity_grid(xs, side="features").values, tol(torch.float64))
    assert_error(ValueError, ["side must be one of", "\"sideways\""], svcca.similarity_grid, xs,
                 side="sideways")
    assert_error(ValueError, ["precision must be \"float64\" or \"input\""],
                 svcca.similarity_grid, xs, precision="half")


def test_undefined_cells_and_strict():
    import svcca
    xs = layers([3, 4], 30, seed=13)
    const = torch.full((30, 2), 3.0, dtype=torch.float64)
    g = svcca.similarity_grid({"a": xs[0], "flat": const, "b": xs[1]})
    assert len(g.undefined) == 1
    reason, cells = g.undefined[0]
    assert "\"flat\"" in reason and "constant" in reason
    assert sorted(map(tuple, cells)) == [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]
    assert torch.isnan(g.values[1]).all() and not torch.isnan(g.values[0, 0])
    assert g.to_dict()["values"][1][1] is None
    assert_error(ValueError, ["every cell must be defined", "5 of 9 cells", reason, "(5 cells)"],
                 g.raise_if_undefined)
    ok = svcca.similarity_grid(xs)
    assert ok.raise_if_undefined() is ok
    assert "undefined" in repr(g) and "null" in repr(g) and "flat" in repr(g)


def test_to_dict_from_dict_and_repr():
    import svcca
    g = svcca.similarity_grid({"conv1": layers([3], 30, seed=14)[0],
                               "fc": layers([2], 30, seed=15)[0]}, measure="svcca")
    d = g.to_dict()
    assert set(d) == {"rows", "cols", "values", "measure", "row_label", "col_label", "examples",
                      "options", "undefined"}
    back = svcca.Grid.from_dict(d)
    assert torch.equal(back.values, g.values) and back.rows == g.rows and back.cols == g.cols
    assert back.options == g.options and back.examples == 30 and back.measure == "svcca"
    r = repr(g)
    assert r.startswith("Grid(svcca, 2 x 2, 30 examples)") and "conv1" in r and "fc" in r
    assert "%.4f" % float(g.values[0, 1]) in r
    assert_error(ValueError, ["values must have shape [rows, cols] = [2, 1]"], svcca.Grid,
                 torch.zeros(2, 2), ["a", "b"], ["c"], "cka")


def test_grid_builder_class_equals_similarity_grid():
    import svcca
    xs = layers([3, 5, 7], 40, seed=16)
    b = torch.classes.svcca.GridBuilder(["l0", "l1", "l2"], [], "svcca", "auto", 0.99, None, 0.0,
                                        "float64", "auto", None, False)
    for i, x in enumerate(xs):
        b.add("l%d" % i, x, False)
        assert b.factor_bytes() > 0
    g = svcca.Grid._from_tuple(b.result())
    expected = svcca.similarity_grid(xs, measure="svcca")
    assert g.rows == ["l0", "l1", "l2"]
    assert_close(g.values, expected.values, tol(torch.float64, "closed_form"))
    b = torch.classes.svcca.GridBuilder(["a", "b"], ["c"], "cka", "auto", 0.99, None, 0.0,
                                        "float64", "auto", None, False)
    b.add("a", xs[0], False)
    b.add_undefined("b", "b: its output is not one row per example", False)
    assert_error(ValueError, ["every layer must be added first", "\"c\""], b.result)
    b.add("c", xs[1], True)
    g = svcca.Grid._from_tuple(b.result())
    assert g.undefined == [("b: its output is not one row per example", [[1, 0]])]
    assert_close(g.values[0, 0], float(torch.ops.svcca.linear_cka(xs[0], xs[1])),
                 tol(torch.float64, "closed_form"))


def test_rank_rtol_and_forced_correlations_reach_the_grid():
    import svcca
    # n = 20 examples; layers of 12 and 11 features keep 23 > n - 1 = 19 directions together.
    a, b = layers([12, 11], 20, seed=17)
    g = svcca.similarity_grid([a, b], measure="cca")
    assert torch.isnan(g.values[0, 1]) and torch.isnan(g.values[1, 0])
    assert any("allow_forced_correlations" in reason for reason, _ in g.undefined)
    forced = svcca.similarity_grid([a, b], measure="cca", allow_forced_correlations=True)
    want = svcca.cca(a, b, allow_forced_correlations=True)[0].mean()
    assert_close(forced.values[0, 1], float(want), tol(torch.float64, "svd"))
    assert forced.options["allow_forced_correlations"] == "true"
    # rank_rtol: a layer with a direction of relative variance 1e-9 keeps it at 1e-12, drops it
    # at 1e-6, as cca() does.
    x, y = layers([4, 3], 200, seed=18)
    x = x.clone()
    x[:, 3] = x[:, 0] + 3e-5 * y[:, 0]
    cells = []
    for rtol in (1e-12, 1e-6):
        g = svcca.similarity_grid([x, y], measure="cca", rank_rtol=rtol)
        want = svcca.cca(x, y, rank_rtol=rtol)[0].mean()
        assert_close(g.values[0, 1], float(want), tol(torch.float64, "svd"))
        assert float(g.options["rank_rtol"]) == rtol
        cells.append(float(g.values[0, 1]))
    assert abs(cells[0] - cells[1]) > 1e-3  # the tolerance reached the cell
    assert_error(ValueError, ["rank_rtol"], lambda: svcca.similarity_grid([x, y], measure="cca",
                                                                          rank_rtol=2.0))
    assert_error(TypeError, ["allow_forced_correlations must be a bool"],
                 lambda: svcca.similarity_grid([x, y], allow_forced_correlations="yes"))


def test_default_memory_budget():
    import svcca
    b = svcca.default_memory_budget()
    assert isinstance(b, int) and b == torch.ops.svcca.default_memory_budget()
    assert b >= 1 << 20
