"""Property tests (hypothesis): random shapes, scales from 1e-150 to 1e150 and both float dtypes.

For every measure the result is finite and in its valid range, invariant where the math says so
(the scale of a layer for all of them; rotations for CKA and Procrustes; invertible linear maps
for CCA), or the call raises a clear ValueError / TypeError: never NaN, inf or another exception.
Seeded (derandomize) so that CI runs the same cases every time.
"""
import math
import re

import pytest
import torch

import svcca

# A missing hypothesis is a failure, not a skip (scripts/common.sh installs python3-hypothesis).
from hypothesis import given, settings, strategies as st  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

MEASURES = {
    "linear_cka": lambda x, y: svcca.linear_cka(x, y),
    "debiased_cka": lambda x, y: svcca.linear_cka(x, y, debiased=True),
    "rbf_cka": lambda x, y: svcca.rbf_cka(x, y),
    "procrustes": lambda x, y: svcca.procrustes(x, y),
    "cca": lambda x, y: svcca.cca(x, y)[0].mean(),
    "svcca": lambda x, y: svcca.svcca(x, y)[0],
    "pwcca": lambda x, y: svcca.pwcca(x, y)[0],
}
# Valid range of each measure's value (debiased CKA can be slightly negative).
RANGES = {"debiased_cka": (-1.0, 1.0)}
ROTATION_INVARIANT = ("linear_cka", "debiased_cka", "rbf_cka", "procrustes", "cca", "svcca", "pwcca")


@st.composite
def pairs(draw):
    n = draw(st.integers(4, 60))
    p1 = draw(st.integers(1, 40))
    p2 = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    exp_x = draw(st.integers(-150, 150))
    exp_y = draw(st.integers(-150, 150))
    if dtype == torch.float32:  # stay inside float32's range (about 1e-38 to 3e38)
        exp_x, exp_y = exp_x // 5, exp_y // 5
    seed = draw(st.integers(0, 2**31 - 1))
    coupling = draw(st.sampled_from([0.0, 0.5, 2.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p1, generator=g, dtype=torch.float64)
    y = coupling * (x @ torch.randn(p1, p2, generator=g, dtype=torch.float64)) + torch.randn(
        n, p2, generator=g, dtype=torch.float64)
    return (x * 10.0**exp_x).to(dtype), (y * 10.0**exp_y).to(dtype)


def value_or_error(fn, x, y):
    """The measure's value as a float, or None when it raised a clear error."""
    try:
        v = fn(x, y)
    except (ValueError, TypeError) as e:
        msg = str(e)
        # A clear message: never one that reports a NaN or inf it computed.
        assert msg and not re.search(r"(?<![a-z])-?(nan|inf)(?![a-z])", msg.lower()), msg
        return None
    assert isinstance(v, torch.Tensor) and v.dim() == 0
    return v.item()


def tol_for(x):
    return 2e-3 if x.dtype == torch.float32 else 1e-7


@pytest.mark.parametrize("name", sorted(MEASURES))
@SETTINGS
@given(pair=pairs())
def test_finite_in_range_or_clear_error(name, pair):
    x, y = pair
    v = value_or_error(MEASURES[name], x, y)
    if v is None:
        return
    lo, hi = RANGES.get(name, (0.0, 1.0))
    assert math.isfinite(v), (name, v)
    assert lo - 1e-6 <= v <= hi + 1e-6, (name, v)


@pytest.mark.parametrize("name", sorted(MEASURES))
@SETTINGS
@given(pair=pairs(), exponent=st.integers(-60, 60))
def test_scale_invariance(name, pair, exponent):
    x, y = pair
    if x.dtype == torch.float32:
        exponent //= 5
    xs = x * 2.0**exponent * 1.5  # 1.5: not only exponent shifts
    if not torch.isfinite(xs).all():
        return
    v = value_or_error(MEASURES[name], x, y)
    vs = value_or_error(MEASURES[name], xs, y)
    if v is None or vs is None:
        # Whether a pair is refused must not depend on the scale (float32 rounding aside).
        if x.dtype == torch.float64:
            assert (v is None) == (vs is None), (name, v, vs)
        return
    assert abs(v - vs) <= tol_for(x) * max(1.0, abs(v)), (name, v, vs)


@pytest.mark.parametrize("name", ROTATION_INVARIANT)
@SETTINGS
@given(pair=pairs(), seed=st.integers(0, 2**31 - 1))
def test_rotation_invariance(name, pair, seed):
    x, y = pair
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64))
    xr = (x.double() @ q).to(x.dtype)
    v = value_or_error(MEASURES[name], x, y)
    vr = value_or_error(MEASURES[name], xr, y)
    if v is None or vr is None or x.dtype == torch.float32:
        return
    # pwcca's reference weights use raw (uncentered) features: not rotation invariant.
    if name == "pwcca":
        return
    assert abs(v - vr) <= tol_for(x) * max(1.0, abs(v)), (name, v, vr)


@SETTINGS
@given(pair=pairs(), seed=st.integers(0, 2**31 - 1))
def test_cca_is_invariant_to_invertible_maps(pair, seed):
    x, y = pair
    if x.dtype == torch.float32:
        return
    g = torch.Generator().manual_seed(seed)
    p = x.shape[1]
    # A well-conditioned invertible map (orthogonal times a diagonal within [0.5, 2]).
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    a = q * (0.5 + 1.5 * torch.rand(p, generator=g, dtype=torch.float64))
    v = value_or_error(MEASURES["cca"], x, y)
    va = value_or_error(MEASURES["cca"], x @ a + 3.0, y)
    if v is None or va is None:
        return
    assert abs(v - va) <= 1e-6, (v, va)


@SETTINGS
@given(pair=pairs())
def test_grid_cells_are_finite_or_listed_as_undefined(pair):
    x, y = pair
    for measure in ("cka", "debiased-cka", "rbf-cka", "cca", "svcca", "pwcca"):
        try:
            g = svcca.similarity_grid([x, y], measure=measure)
        except (ValueError, TypeError):
            continue
        values = g.values
        undefined = {tuple(c) for _, cells in g.undefined for c in cells}
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j].item()
                if (i, j) in undefined:
                    assert math.isnan(v)
                else:
                    assert math.isfinite(v), (measure, i, j, v)
