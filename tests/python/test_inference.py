"""svcca.bootstrap, bootstrap_difference, permutation_test and grid_inference (Python wrappers
of the ops): each resample equals the one-shot measure on the drawn rows (reproduced here from
the bootstrap identity), TorchScript round trip, seeds, and errors as ValueError.
"""
import pytest
import torch

import svcca

MEASURES = ["cka", "debiased-cka", "rbf-cka", "cca", "svcca", "pwcca", "procrustes"]


def related(n=40, p1=4, p2=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, p1, generator=g, dtype=torch.float64) + 0.7 * torch.randn(
        n, p1, generator=g, dtype=torch.float64)
    y = z @ torch.randn(3, p2, generator=g, dtype=torch.float64) + 0.7 * torch.randn(
        n, p2, generator=g, dtype=torch.float64)
    return x, y


def one_shot(measure, x, y):
    return {
        "cka": lambda: svcca.linear_cka(x, y),
        "debiased-cka": lambda: svcca.linear_cka(x, y, debiased=True),
        "rbf-cka": lambda: svcca.rbf_cka(x, y, sigma=3.0),
        "cca": lambda: svcca.cca(x, y)[0].mean(),
        "svcca": lambda: svcca.svcca(x, y)[0],
        "pwcca": lambda: svcca.pwcca(x, y)[0],
        "procrustes": lambda: svcca.procrustes(x, y),
    }[measure]().item()


@pytest.mark.parametrize("measure", MEASURES)
def test_estimate_and_interval(measure):
    x, y = related()
    r = svcca.bootstrap(x, y, measure, resamples=60, seed=1, sigma=3.0)
    assert r.estimate == pytest.approx(one_shot(measure, x, y), rel=1e-8, abs=1e-10)
    assert r.resamples.shape == (60,) and r.resamples.dtype == torch.float64
    assert r.invalid == 0 and r.low < r.high
    assert r.standard_error == pytest.approx(r.resamples.std().item(), rel=1e-12)
    again = svcca.bootstrap(x, y, measure, resamples=60, seed=1, sigma=3.0)
    assert torch.equal(again.resamples, r.resamples)


@pytest.mark.parametrize("measure", ["cka", "svcca", "procrustes"])
def test_identical_layers_smallest_p_value(measure):
    x, _ = related()
    t = svcca.permutation_test(x, 3.0 * x, measure, permutations=49, seed=2)
    assert t.p_value == pytest.approx(1 / 50) and t.exceed == 0
    assert t.null.shape == (49,) and t.null_mean < t.estimate


def test_difference_is_paired():
    a, c = related(n=120, seed=3)
    b = torch.randn(120, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    d = svcca.bootstrap_difference(a, b, c, "cka", resamples=80, seed=4)
    ac = svcca.bootstrap(a, c, "cka", resamples=80, seed=4)
    bc = svcca.bootstrap(b, c, "cka", resamples=80, seed=4)
    torch.testing.assert_close(d.resamples, ac.resamples - bc.resamples, rtol=1e-12, atol=1e-14)
    assert d.low > 0


def test_grid_inference_cells_equal_pair_calls():
    x, y = related(seed=5)
    z = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = svcca.grid_inference([x, y, z], measure="cka", resamples=30, permutations=19, seed=6)
    r = svcca.bootstrap(x, z, "cka", resamples=30, seed=6)
    p = svcca.permutation_test(x, z, "cka", permutations=19, seed=6)
    assert g.low[0, 2].item() == pytest.approx(r.low, rel=1e-12)
    assert g.high[2, 0].item() == pytest.approx(r.high, rel=1e-12)
    assert g.p_value[0, 2].item() == pytest.approx(p.p_value, rel=1e-12)
    only_p = svcca.grid_inference([x, y], permutations=9)
    assert only_p.low is None and only_p.p_value.shape == (2, 2)


@pytest.mark.parametrize("measure", ["cca", "svcca", "pwcca", "procrustes"])
def test_workers_give_the_serial_numbers(measure):
    # Equal to rounding: a worker runs its BLAS calls single-threaded, which sums in another order.
    close = dict(rtol=1e-10, atol=1e-12)
    x, y = related(n=60)
    serial = svcca.bootstrap(x, y, measure, resamples=24, seed=8, method="bca", workers=1)
    for workers in (0, 2, 3):
        r = svcca.bootstrap(x, y, measure, resamples=24, seed=8, method="bca", workers=workers)
        torch.testing.assert_close(r.resamples, serial.resamples, **close)
        assert r.low == pytest.approx(serial.low, rel=1e-10)
        assert r.high == pytest.approx(serial.high, rel=1e-10)
    t1 = svcca.permutation_test(x, y, measure, permutations=20, seed=9, workers=1)
    t3 = svcca.permutation_test(x, y, measure, permutations=20, seed=9, workers=3)
    torch.testing.assert_close(t3.null, t1.null, **close)
    assert t1.exceed == t3.exceed
    if measure != "procrustes":  # not a grid measure
        g1 = svcca.grid_inference([x, y], measure=measure, resamples=12, permutations=5, seed=10,
                                  workers=1)
        g2 = svcca.grid_inference([x, y], measure=measure, resamples=12, permutations=5, seed=10,
                                  workers=2)
        torch.testing.assert_close(g2.low, g1.low, **close)
        torch.testing.assert_close(g2.p_value, g1.p_value, **close)


@pytest.mark.parametrize("measure", ["cca", "svcca", "pwcca"])
def test_resamples_forcing_correlations_need_the_option(measure):
    # n = 50 and 20 + 20 features: the one-shot rule holds (40 <= 49), a resample's ~32 distinct
    # rows cannot hold 40 directions.
    g = torch.Generator().manual_seed(12)
    x = torch.randn(50, 20, generator=g, dtype=torch.float64)
    y = torch.randn(50, 20, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        svcca.bootstrap(x, y, measure, resamples=20, dims=20)
    assert "would force correlations to 1" in str(e.value)
    r = svcca.bootstrap(x, y, measure, resamples=20, dims=20, allow_forced_correlations=True)
    assert r.invalid == 0 and r.low > r.estimate
    grid = svcca.grid_inference([x, y], measure=measure, resamples=20, dims=20)
    assert any("would force correlations to 1" in reason for reason, _ in grid.undefined)
    grid = svcca.grid_inference([x, y], measure=measure, resamples=20, dims=20,
                                allow_forced_correlations=True)
    assert torch.isfinite(grid.low).all()


def test_torchscript_round_trip():
    @torch.jit.script
    def f(x, y):
        return torch.ops.svcca.bootstrap(x, y, "cka", 20, 0.9, 0)

    x, y = related()
    out = f(x, y)
    r = svcca.bootstrap(x, y, "cka", resamples=20, level=0.9)
    assert out[1].item() == r.low and out[2].item() == r.high


@pytest.mark.parametrize("call,fragment", [
    (lambda x, y: svcca.bootstrap(x, y, resamples=1), "resamples must be >= 2"),
    (lambda x, y: svcca.bootstrap(x, y, level=1.0), "level must lie in (0, 1)"),
    (lambda x, y: svcca.bootstrap(x, y, method="normal"), "method must be one of"),
    (lambda x, y: svcca.bootstrap(x, y, seed=-1), "seed must be >= 0"),
    (lambda x, y: svcca.bootstrap(x, y, "minibatch-cka"), "measure must be one of"),
    (lambda x, y: svcca.permutation_test(x, y, permutations=0), "permutations must be >= 1"),
    (lambda x, y: svcca.bootstrap(x[:4], y[:4], "cca"), "at least p + 2"),
    (lambda x, y: svcca.grid_inference([x, y]), "resamples or permutations must be >= 1"),
    (lambda x, y: svcca.bootstrap(x, y, "svcca", workers=-1), "workers must be >= 0"),
    (lambda x, y: svcca.permutation_test(x, y, "cca", workers=-2), "workers must be >= 0"),
    (lambda x, y: svcca.grid_inference([x, y], resamples=5, workers=-1), "workers must be >= 0"),
])
def test_errors(call, fragment):
    x, y = related()
    with pytest.raises(ValueError, match=None) as e:
        call(x, y)
    assert fragment in str(e.value)
