"""svcca-inspect --bootstrap / --ci / --ci-method / --permutations (grid and compare): intervals
and p-values in the JSON and in <command>_cells.csv, equal to the Python API on the same seed,
reproducible from --seed, and every bad value rejected with a one-line usage error.

CTest sets SVCCA_INSPECT and PYTHONPATH (the staged svcca package).
"""
import csv
import json
import os

import numpy as np
import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(_HERE, "..", ".."))
DIGITS = os.path.join(ROOT, "models", "digits")
PROBE = os.path.join(DIGITS, "probe.pt")
FINAL = os.path.join(DIGITS, "cnn_epoch8.pt")
EXIT_USAGE = 2


def ok_json(run, *args):
    r = run(*args, "--json")
    assert r.returncode == 0, "exit %d, stderr: %s" % (r.returncode, r.stderr)
    return json.loads(r.stdout)


def arr(rows):
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


@pytest.fixture
def acts(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(120, 3, generator=g, dtype=torch.float64)
    a = {"a1": z @ torch.randn(3, 5, generator=g, dtype=torch.float64)
         + 0.5 * torch.randn(120, 5, generator=g, dtype=torch.float64),
         "a2": torch.randn(120, 4, generator=g, dtype=torch.float64)}
    b = {"b1": z @ torch.randn(3, 6, generator=g, dtype=torch.float64)
         + 0.5 * torch.randn(120, 6, generator=g, dtype=torch.float64),
         "b2": torch.randn(120, 2, generator=g, dtype=torch.float64)}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    return a, b, tmp_path / "a.pt", tmp_path / "b.pt"


def test_compare_intervals_and_p_values_equal_the_python_api(run, acts, tmp_path):
    import svcca
    a, b, pa, pb = acts
    j = ok_json(run, "compare", pa, pb, "--bootstrap", 50, "--ci", 0.9, "--permutations", 39,
                "--seed", 3, "--out", tmp_path / "o")
    inf = j["grid"]["inference"]
    assert inf["resamples"] == 50 and inf["permutations"] == 39 and inf["seed"] == 3
    assert inf["level"] == 0.9 and inf["method"] == "percentile"
    rows, cols = j["grid"]["rows"], j["grid"]["cols"]
    for i, name in enumerate(rows):
        for k, other in enumerate(cols):
            r = svcca.bootstrap(a[name], b[other], "cka", resamples=50, level=0.9, seed=3)
            p = svcca.permutation_test(a[name], b[other], "cka", permutations=39, seed=3)
            np.testing.assert_allclose(inf["low"][i][k], r.low, rtol=1e-12)
            np.testing.assert_allclose(inf["high"][i][k], r.high, rtol=1e-12)
            np.testing.assert_allclose(inf["standard_error"][i][k], r.standard_error, rtol=1e-12)
            np.testing.assert_allclose(inf["p_value"][i][k], p.p_value, rtol=1e-12)
            np.testing.assert_allclose(inf["null_mean"][i][k], p.null_mean, rtol=1e-12)
    related, b1 = rows.index("a1"), cols.index("b1")
    assert inf["p_value"][related][b1] == pytest.approx(1 / 40)
    assert inf["low"][related][b1] > inf["high"][1 - related][b1]  # a1 is related to b1, a2 not
    # The long CSV: one record per cell, the same numbers.
    with open(tmp_path / "o" / "compare_cells.csv", newline="") as f:
        recs = list(csv.reader(f))
    assert recs[0][2:] == ["value", "low", "high", "standard_error", "invalid", "p_value",
                          "null_mean"]
    assert len(recs) == 1 + len(rows) * len(cols)
    for rec in recs[1:]:
        i, k = rows.index(rec[0]), cols.index(rec[1])
        np.testing.assert_allclose(float(rec[3]), inf["low"][i][k], rtol=1e-15)
        assert float(rec[6]) == inf["invalid"][i][k] == 0  # every resample defined
        np.testing.assert_allclose(float(rec[7]), inf["p_value"][i][k], rtol=1e-15)


def test_same_seed_same_numbers_other_seed_others(run, acts):
    _, _, pa, pb = acts
    one = ok_json(run, "compare", pa, pb, "--bootstrap", 30, "--seed", 1)["grid"]["inference"]
    two = ok_json(run, "compare", pa, pb, "--bootstrap", 30, "--seed", 1)["grid"]["inference"]
    other = ok_json(run, "compare", pa, pb, "--bootstrap", 30, "--seed", 2)["grid"]["inference"]
    assert one["low"] == two["low"] and one["high"] == two["high"]
    assert one["low"] != other["low"]
    assert "p_value" not in one  # only what was asked for


def test_workers_do_not_change_the_numbers(run, acts):
    _, _, pa, pb = acts
    args = ("compare", pa, pb, "--measure", "svcca", "--bootstrap", 20, "--permutations", 9,
            "--seed", 4)
    serial = ok_json(run, *args, "--workers", 1)["grid"]["inference"]
    for workers in (0, 3):
        got = ok_json(run, *args, "--workers", workers)["grid"]["inference"]
        # Equal to rounding (a worker's BLAS calls run single-threaded).
        for key in ("low", "high", "p_value"):
            np.testing.assert_allclose(arr(got[key]), arr(serial[key]), rtol=1e-10, atol=1e-12)


def test_grid_on_a_model_every_cell_has_an_interval(run, tmp_path):
    j = ok_json(run, "grid", FINAL, "--input", PROBE, "--bootstrap", 40, "--ci-method", "bca",
                "--permutations", 19, "--out", tmp_path / "g")
    g = j["grid"]
    inf = g["inference"]
    v, lo, hi, p = arr(g["values"]), arr(inf["low"]), arr(inf["high"]), arr(inf["p_value"])
    assert inf["method"] == "bca" and g["options"]["bootstrap"] == "40"
    assert np.isfinite(lo).all() and (lo <= hi + 1e-12).all()
    np.testing.assert_allclose(lo, lo.T, rtol=0, atol=0)  # cka is symmetric: mirrored cells
    np.testing.assert_allclose(np.diag(p), 1 / 20)  # a layer against itself
    assert ((p > 0) & (p <= 1)).all() and np.isfinite(v).all()
    off = ~np.eye(len(v), dtype=bool)
    assert (hi[off] - lo[off] > 0).all()  # resampling moves every off-diagonal cell
    assert os.path.exists(tmp_path / "g" / "grid_cells.csv")


@pytest.mark.parametrize("args,fragment", [
    (["--bootstrap", -1], "--bootstrap must be >= 2 (0: off), but got -1"),
    (["--permutations", -5], "--permutations must be >= 1 (0: off), but got -5"),
    (["--bootstrap", 1], "resamples must be >= 2"),
    (["--bootstrap", 10, "--ci", 1.5], "--ci must lie in (0, 1), e.g. 0.95, but got 1.5"),
    (["--bootstrap", 10, "--ci", 0], "--ci must lie in (0, 1)"),
    (["--bootstrap", 10, "--ci-method", "normal"], "--ci-method"),
    (["--bootstrap", 10, "--measure", "minibatch-cka"], "minibatch-cka"),
    (["--bootstrap", 10, "--conv", "fold"], "conv must be \"flatten\", \"pool\" or \"cls\""),
    (["--bootstrap", 10, "--workers", -1], "--workers must be >= 0 (0: auto, 1: one at a time)"),
])
def test_bad_values_are_usage_errors(run, acts, args, fragment):
    _, _, pa, pb = acts
    r = run("compare", pa, pb, *args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == EXIT_USAGE, r.stderr
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert r.stdout == ""


def test_grid_streaming_with_bootstrap_is_a_usage_error(run, tmp_path):
    r = run("grid", FINAL, "--input", PROBE, "--batch-size", 16, "--bootstrap", 10, "--out",
            tmp_path / "g")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "leave out --batch-size" in r.stderr
    assert not os.path.exists(tmp_path / "g")
