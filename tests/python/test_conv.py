"""pytest suite of the conv-layer ops: Fourier CCA against a slow numpy reference at a few
frequencies, google/svcca's dft_same_size golden case through torch.ops.svcca.fourier_ccas, the
spatial recipes against numpy, and error messages.

Tolerances, comparison and error helpers come from test_ops.py (the one table).
"""
import subprocess
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

import svcca
from test_ops import GRADCHECK, assert_close, assert_error, tol


def conv_pair(n, c1, c2, hw1, hw2, seed=0):
    """x: [n, c1, *hw1], y: [n, c2, *hw2] (NCHW float64) with y depending on x plus noise."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, c1, *hw1)
    xr = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), hw2).numpy()
    y = np.einsum("dc,nchw->ndhw", rng.randn(c2, c1), xr) + 0.7 * rng.randn(n, c2, *hw2)
    return x, y


def numpy_frequency_cca(xf, yf):
    """Canonical correlations of complex [n, p] coefficient matrices (centered QR, then SVD)."""
    qx, _ = np.linalg.qr(xf - xf.mean(0))
    qy, _ = np.linalg.qr(yf - yf.mean(0))
    return np.linalg.svd(qx.conj().T @ qy, compute_uv=False)


def numpy_reference_cca(xf, yf, epsilon):
    """google/svcca's get_cca_similarity recipe on complex [n, p] coefficients -> (s, x_idxs)."""
    c = np.cov(xf.T, yf.T)
    nx = xf.shape[1]
    sxx, sxy, syy = c[:nx, :nx], c[:nx, nx:], c[nx:, nx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    xi = np.abs(np.diag(sxx)) >= epsilon
    yi = np.abs(np.diag(syy)) >= epsilon
    sxx = sxx[xi][:, xi] + epsilon * np.eye(xi.sum())
    syy = syy[yi][:, yi] + epsilon * np.eye(yi.sum())
    sxy = sxy[xi][:, yi]

    def invsqrt(a):
        w, v = np.linalg.eigh(np.linalg.pinv(a))
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.conj().T

    s = np.linalg.svd(invsqrt(sxx) @ sxy @ invsqrt(syy), compute_uv=False)
    return np.abs(s), xi


FREQUENCIES = [(0, 0), (1, 2), (4, 3), (2, 0), (3, 4)]


def test_fourier_cca_matches_numpy_at_several_frequencies():
    x, y = conv_pair(40, 4, 3, (5, 6), (5, 6))
    corr, valid, x_mask, y_mask, mean, mean_wo = svcca.fourier_cca(torch.tensor(x),
                                                                   torch.tensor(y))
    assert corr.shape == (5, 6, 3) and corr.dtype == torch.float64
    assert bool(valid.all()) and bool(x_mask.all()) and bool(y_mask.all())
    xf, yf = np.fft.fft2(x, axes=(2, 3)), np.fft.fft2(y, axes=(2, 3))
    for i, j in FREQUENCIES:
        assert_close(corr[i, j], numpy_frequency_cca(xf[:, :, i, j], yf[:, :, i, j]),
                     tol(torch.float64), what="frequency (%d, %d)" % (i, j))
    c = corr.numpy()
    assert_close(mean, c.mean(), tol(torch.float64, "closed_form"))
    assert_close(mean_wo, (c.sum() - c[0, 0].sum()) / (c.size - 3),
                 tol(torch.float64, "closed_form"))


def test_fourier_cca_crops_unequal_sizes_like_the_reference():
    x, y = conv_pair(30, 3, 3, (8, 8), (6, 6))
    corr = svcca.fourier_cca(torch.tensor(x), torch.tensor(y))[0]
    assert corr.shape == (6, 6, 3)
    keep8 = [0, 1, 2, 5, 6, 7]  # frequencies -3 <= f < 3 of an 8-point axis
    xf = np.fft.fft2(x, axes=(2, 3))[:, :, keep8][:, :, :, keep8]
    yf = np.fft.fft2(y, axes=(2, 3))
    for i, j in [(3, 1), (3, 5), (1, 3), (5, 4)]:  # (3, *) lost its conjugate partner
        assert_close(corr[i, j], numpy_frequency_cca(xf[:, :, i, j], yf[:, :, i, j]),
                     tol(torch.float64), what="frequency (%d, %d)" % (i, j))


def test_fourier_ccas_golden_dft_same_size(load_golden):
    case, arrays = load_golden("dft_same_size")
    r = svcca.fourier_ccas(torch.tensor(arrays["conv_acts1"]), torch.tensor(arrays["conv_acts2"]))
    for key in ("cca_coef1", "mean", "sum"):
        t = tol(torch.float64, "golden_default")._replace(
            rtol=case["tolerance"][key][0], atol=case["tolerance"][key][1])
        assert_close(r[key], arrays[key], t, dtype=torch.float64, what=key)
    assert_close(r["cca_coef2"], arrays["cca_coef1"], t, what="cca_coef2")
    assert np.array_equal(r["x_idxs"].numpy(), arrays["x_idxs"])
    assert np.array_equal(r["y_idxs"].numpy(), arrays["y_idxs"])


def test_fourier_ccas_epsilon_matches_the_reference_recipe():
    x, y = conv_pair(30, 4, 3, (4, 4), (4, 4), seed=3)
    x[:, 1] *= 1e-3  # removed by epsilon at every frequency
    a, b = x.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1)
    r = torch.ops.svcca.fourier_ccas(torch.tensor(a), torch.tensor(b), 1e-2)
    af = np.fft.fft2(a.astype(np.complex64), axes=(1, 2))
    bf = np.fft.fft2(b.astype(np.complex64), axes=(1, 2))
    for i, j in [(0, 0), (1, 3), (2, 2)]:
        s, xi = numpy_reference_cca(af[:, i, j, :], bf[:, i, j, :], 1e-2)
        assert np.array_equal(r["x_idxs"][i, j].numpy(), xi)
        assert_close(r["cca_coef1"][i, j], s, tol(torch.float64, "golden_default")._replace(
            rtol=0.0, atol=1e-5), what="(%d, %d)" % (i, j))  # complex64 FFT on both sides


def test_conv_features_and_reference_interpolation():
    x, y = conv_pair(6, 3, 2, (4, 4), (2, 2))
    fx, fy = svcca.conv_features(torch.tensor(x), torch.tensor(y))
    assert fx.shape == (6 * 16, 3) and fy.shape == (6 * 16, 2)
    assert_close(fx, x.transpose(0, 2, 3, 1).reshape(-1, 3), tol(torch.float64, "closed_form"))

    # The tutorial's rule: bilinear at source position i * h / H, clamped to h - 1.
    def interp(m, size):
        h = m.shape[0]
        p = np.minimum(np.arange(size) * h / size, h - 1)
        i0 = np.floor(p).astype(int)
        i1 = np.minimum(i0 + 1, h - 1)
        t = p - i0
        a = np.zeros((size, h))
        np.add.at(a, (np.arange(size), i0), 1 - t)
        np.add.at(a, (np.arange(size), i1), t)
        return a @ m @ a.T

    up = np.stack([[interp(y[n, c], 4) for c in range(2)] for n in range(6)])
    assert_close(fy, up.transpose(0, 2, 3, 1).reshape(-1, 2), tol(torch.float64, "closed_form"))
    pooled = svcca.conv_features(torch.tensor(x), torch.tensor(y), match="pool")[0]
    assert_close(pooled, x.reshape(6, 3, 2, 2, 2, 2).mean((3, 5)).transpose(0, 2, 3, 1)
                 .reshape(-1, 3), tol(torch.float64, "closed_form"))
    gap = svcca.conv_features(torch.tensor(x), torch.tensor(y), reduction="global_avg_pool")
    assert_close(gap[1], y.mean((2, 3)), tol(torch.float64, "closed_form"))
    r = svcca.resize_spatial(torch.tensor(y), (4, 4), mode="bilinear")
    assert_close(r, torch.nn.functional.interpolate(torch.tensor(y), size=(4, 4), mode="bilinear",
                                                    align_corners=False),
                 tol(torch.float64, "closed_form"))
    s = svcca.conv_similarity(torch.tensor(x), torch.tensor(y))
    assert_close(s, svcca.cca(fx, fy)[0].mean(), tol(torch.float64, "closed_form"))


def test_errors():
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    assert_error(ValueError, ["fourier_cca: x must be a 4-D tensor of conv activations"],
                 svcca.fourier_cca, x[0], x)
    assert_error(ValueError, ["x and y must have the same batch size (dim 0)", "[9, 3, 4, 4]"],
                 svcca.fourier_cca, x, x[:9])
    assert_error(ValueError, ["y must have more examples than channels at every frequency",
                              "at least 14 examples for 12 channels"],
                 svcca.fourier_cca, x, torch.randn(10, 12, 4, 4, dtype=torch.float64))
    assert_error(TypeError, ["x must be a real floating tensor"], svcca.fourier_cca,
                 x.to(torch.complex128), x)
    assert_error(ValueError, ["layout must be one of \"NCHW\", \"NHWC\""], svcca.fourier_cca, x,
                 x, layout="CHWN")
    a = torch.randn(10, 8, 8, 4, dtype=torch.float64)
    assert_error(ValueError, ["fourier_ccas: conv_acts2 must have square spatial maps"],
                 svcca.fourier_ccas, a, torch.randn(10, 6, 5, 4, dtype=torch.float64))
    assert_error(ValueError, ["conv_acts1 must have more examples than channels",
                              "at least 11 examples for 10 channels"],
                 svcca.fourier_ccas, torch.randn(10, 4, 4, 10, dtype=torch.float64), a[:, :4, :4])
    assert_error(ValueError, ["mode must be one of"], svcca.conv_features, x, x, mode="linear")
    assert_error(ValueError, ["position_stride must be >= 1"], svcca.fold_positions, x,
                 position_stride=0)


def test_float32_policy():
    x, y = conv_pair(30, 3, 3, (4, 4), (4, 4))
    d = svcca.fourier_cca(torch.tensor(x), torch.tensor(y))[0]
    f = svcca.fourier_cca(torch.tensor(x).float(), torch.tensor(y).float())[0]
    g = svcca.fourier_cca(torch.tensor(x).float(), torch.tensor(y).float(), precision="input")[0]
    assert f.dtype == torch.float32 and g.dtype == torch.float32
    assert_close(f, d, tol(torch.float32))
    assert_close(g, d, tol(torch.float32))


# ------------------------------------------------------------------------------------------------
# The CKA family through the recipes (conv_similarity accepts any measure of two [n, p] tensors)
# ------------------------------------------------------------------------------------------------
def numpy_linear_cka(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


@pytest.mark.parametrize("reduction", ["fold", "global_avg_pool"])
def test_linear_cka_through_the_recipes(reduction):
    x, y = conv_pair(12, 3, 4, (4, 4), (2, 2), seed=3)
    got = svcca.conv_similarity(torch.tensor(x), torch.tensor(y), svcca.linear_cka,
                                reduction=reduction, match="pool")
    if reduction == "fold":
        xp = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), (2, 2)).numpy()
        a = xp.transpose(0, 2, 3, 1).reshape(-1, 3)
        b = y.transpose(0, 2, 3, 1).reshape(-1, 4)
    else:
        a, b = x.mean((2, 3)), y.mean((2, 3))
    assert_close(got, numpy_linear_cka(a, b), tol(torch.float64, "closed_form"))
    rbf = svcca.conv_similarity(torch.tensor(x), torch.tensor(y), svcca.rbf_cka,
                                reduction=reduction, match="pool")
    assert 0.0 < float(rbf) <= 1.0
    # CKA of a layer with itself is 1 whatever the recipe.
    assert_close(svcca.conv_similarity(torch.tensor(x), torch.tensor(x), svcca.linear_cka,
                                       reduction=reduction), 1.0, tol(torch.float64))


# ------------------------------------------------------------------------------------------------
# gradcheck (float64) of the differentiable conv ops
# ------------------------------------------------------------------------------------------------
CONV_GRAD_FUNCTIONS = {
    "fold_positions": lambda x, y: svcca.fold_positions(x, position_stride=2),
    "global_avg_pool": lambda x, y: svcca.global_avg_pool(y),
    "resize_reference": lambda x, y: svcca.resize_spatial(y, (3, 3)),
    "resize_bilinear": lambda x, y: svcca.resize_spatial(y, (3, 3), mode="bilinear"),
    "conv_features_fold": lambda x, y: svcca.conv_features(x, y),
    "conv_features_pool": lambda x, y: svcca.conv_features(x, y, match="pool"),
    "linear_cka_fold": lambda x, y: svcca.conv_similarity(x, y, svcca.linear_cka),
    "fourier_cca_mean": lambda x, y: svcca.fourier_cca(x, y)[4],
    "fourier_cca_mean_without_dc": lambda x, y: svcca.fourier_cca(x, y)[5],
}


@pytest.mark.parametrize("name", list(CONV_GRAD_FUNCTIONS))
def test_conv_gradcheck(name):
    x, y = conv_pair(16, 2, 2, (3, 3), (3, 3) if name.startswith("fourier") else (2, 2), seed=21)
    if name.startswith("fourier"):
        # Distinct canonical correlations at every frequency keep the SVD differentiable.
        rho = svcca.fourier_cca(torch.tensor(x), torch.tensor(y))[0].reshape(-1, 2).numpy()
        assert np.min(np.abs(rho[:, 0] - rho[:, 1])) > 1e-3, rho
    inputs = (torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True))
    assert torch.autograd.gradcheck(CONV_GRAD_FUNCTIONS[name], inputs, **GRADCHECK)


# ------------------------------------------------------------------------------------------------
# TorchScript: the conv ops in a scripted module, saved, and run again from C++
# ------------------------------------------------------------------------------------------------
class ConvOps(torch.nn.Module):
    """Calls every conv op with keyword arguments (a TorchScript round trip of their schemas)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
            torch.Tensor, Dict[str, torch.Tensor]]:
        rho, valid, _, _, mean, mean_without_dc = torch.ops.svcca.fourier_cca(
            x, y, layout="NCHW", epsilon=0.0, precision="float64")
        a, b = torch.ops.svcca.conv_features(x, y, reduction="fold", match="pool", mode="bilinear")
        folded = torch.ops.svcca.fold_positions(x, position_stride=3)
        pooled = torch.ops.svcca.global_avg_pool(y.permute(0, 2, 3, 1), layout="NHWC")
        resized = torch.ops.svcca.resize_spatial(y, [5, 5], mode="reference")
        nhwc = torch.ops.svcca.fourier_ccas(x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1) * 2.0)
        return (rho, valid, torch.stack([mean, mean_without_dc]), torch.cat([a, b], 1), folded,
                pooled, resized, nhwc)


def test_conv_ops_torchscript_round_trip_through_cpp(tmp_path, run_script_exe):
    x, y = (torch.tensor(a) for a in conv_pair(20, 3, 3, (4, 4), (4, 4), seed=5))
    module = torch.jit.script(ConvOps())
    want = module(x, y)
    eager = ConvOps()(x, y)
    for g, w in zip(want[:7], eager[:7]):
        assert torch.equal(g, w)
    paths = [str(tmp_path / n) for n in ("module.pt", "inputs.pt", "output.pt")]
    torch.jit.save(module, paths[0])
    torch.save((x, y), paths[1])
    proc = subprocess.run([run_script_exe] + paths, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # torch::pickle_save tags dicts with torch.jit._pickle.restore_type_tag, which torch.load's
    # weights_only default (torch >= 2.6) refuses; the file is this test's own output.
    got = torch.load(paths[2], weights_only=False)
    assert len(got) == len(want)
    for i in range(7):
        if want[i].is_floating_point():
            assert_close(got[i], want[i].numpy(), tol(torch.float64), torch.float64, "out[%d]" % i)
        else:
            assert torch.equal(got[i], want[i]), "out[%d]" % i
    assert set(got[7].keys()) == set(want[7].keys())
    for key in want[7]:
        assert_close(got[7][key], want[7][key].double().numpy(), tol(torch.float64),
                     what="fourier_ccas[%r]" % key)
