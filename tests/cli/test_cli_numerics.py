"""svcca-inspect and the numerics hardening: forced correlations are null cells (not 0.97 for
independent noise), the CCA family's rank options on the command line, extreme scales.
"""
import json
import subprocess

import numpy as np
import pytest

EXIT_RUNTIME, EXIT_USAGE = 1, 2


def run(exe, *args):
    return subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=300)


def compare_json(exe, *args):
    r = run(exe, "compare", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["grid"], r.stderr


@pytest.fixture
def noise(tmp_path):
    rs = np.random.RandomState(0)
    np.save(tmp_path / "a.npy", rs.randn(100, 300))
    np.save(tmp_path / "b.npy", rs.randn(100, 300))
    return tmp_path / "a.npy", tmp_path / "b.npy"


def test_svcca_of_independent_wide_noise_is_a_null_cell_with_the_counts(exe, noise):
    # Before: 0.966651 for two independent 100 x 300 sets (the spans must intersect).
    grid, err = compare_json(exe, *noise, "--measure", "svcca")
    assert grid["values"] == [[None]]
    reason = grid["undefined"][0]["reason"]
    assert "keeps" in reason and "n = 100" in reason and "allow_forced_correlations" in reason
    assert "keeps" in err


def test_fewer_svcca_directions_make_the_cell_defined(exe, noise):
    grid, _ = compare_json(exe, *noise, "--measure", "svcca", "--dims", "20")
    assert grid["options"]["dims"] == "20"
    assert grid["values"][0][0] < 0.8  # independent noise, 20 + 20 <= 99 directions
    for bad in ("0", "-3", "x", "1e3"):
        r = run(exe, "compare", *noise, "--measure", "svcca", "--dims", bad)
        assert r.returncode == EXIT_USAGE and "--dims" in r.stderr, (bad, r.stderr)


def test_allow_forced_correlations_computes_it_and_says_so(exe, noise):
    grid, _ = compare_json(exe, *noise, "--measure", "svcca", "--allow-forced-correlations")
    assert grid["values"][0][0] > 0.9  # what the refusal protects from
    assert grid["options"]["allow_forced_correlations"] == "true"


def test_rank_rtol_on_the_command_line(exe, tmp_path):
    rs = np.random.RandomState(1)
    x = rs.randn(400, 6)
    y = x @ rs.randn(6, 5) + rs.randn(400, 5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    grid, _ = compare_json(exe, tmp_path / "x.npy", tmp_path / "y.npy", "--measure", "cca",
                           "--rank-rtol", "1e-12")
    assert grid["options"]["rank_rtol"] != "auto"
    default, _ = compare_json(exe, tmp_path / "x.npy", tmp_path / "y.npy", "--measure", "cca")
    assert default["options"]["rank_rtol"] == "auto"
    np.testing.assert_allclose(grid["values"], default["values"], rtol=1e-10)
    for bad in ("-1", "2", "abc", "nan"):
        r = run(exe, "compare", tmp_path / "x.npy", tmp_path / "y.npy", "--rank-rtol", bad)
        assert r.returncode == EXIT_USAGE and "--rank-rtol" in r.stderr, (bad, r.stderr)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_extreme_scales_give_the_unscaled_numbers(exe, tmp_path, scale):
    rs = np.random.RandomState(2)
    x = rs.randn(300, 8)
    y = x @ rs.randn(8, 6) + rs.randn(300, 6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xs.npy", x * scale)
    np.save(tmp_path / "y.npy", y)
    for measure in ("cka", "debiased-cka", "cca", "svcca", "pwcca"):
        base, _ = compare_json(exe, tmp_path / "x.npy", tmp_path / "y.npy", "--measure", measure)
        scaled, _ = compare_json(exe, tmp_path / "xs.npy", tmp_path / "y.npy", "--measure",
                                 measure)
        np.testing.assert_allclose(scaled["values"], base["values"], rtol=1e-8, err_msg=measure)
