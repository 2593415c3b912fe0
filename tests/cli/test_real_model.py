"""svcca-inspect on a real torchvision model: resnet18 (random weights, seed 0) scripted into a
temporary folder, 4 random images of 3 x 64 x 64, a CKA grid of every layer.

The smoke test for benchmarks/real_models.py (which runs the full-size models): the grid has one
row and column per layer that `svcca-inspect layers` lists for the same input, its diagonal is 1
wherever it is defined, every value is finite or null, and it is symmetric.

Like test_inspect.py, CTest sets SVCCA_INSPECT; a missing executable is a failure, never a skip.
So is a missing torchvision (Debian: python3-torchvision).
"""
import json
import subprocess

import numpy as np
import pytest
import torch

try:
    import torchvision
except ImportError:  # a failure, not a skip: CI must have it
    torchvision = None

N, SIZE = 4, 64


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    if torchvision is None:
        pytest.fail("torchvision is needed to build the model (Debian: python3-torchvision)")
    folder = tmp_path_factory.mktemp("real_model")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    path = folder / "resnet18.pt"
    torch.jit.script(model).save(str(path))
    x = np.random.default_rng(0).standard_normal((N, 3, SIZE, SIZE), dtype=np.float32)
    inputs = folder / "x.npy"
    np.save(inputs, x)
    return path, inputs, folder


def run_json(exe, *args):
    r = subprocess.run([exe] + [str(a) for a in args] + ["--quiet", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "exit %d, stderr: %s" % (r.returncode, r.stderr)
    return json.loads(r.stdout)


def test_resnet18_cka_grid(exe, resnet18):
    model, inputs, folder = resnet18
    layers = run_json(exe, "layers", model, "--input", inputs)["layers"]
    assert len(layers) > 50  # resnet18: 75 module calls (convs, BNs, ReLUs, blocks, fc)
    report = run_json(exe, "grid", model, "--input", inputs, "--measure", "cka", "--out",
                      folder / "grid")
    grid = report["grid"]
    with open(folder / "grid" / "grid.json") as f:
        on_disk = json.load(f)
    assert on_disk["rows"] == grid["rows"] and on_disk["values"] == grid["values"]
    L = len(layers)
    assert len(grid["rows"]) == L and grid["cols"] == grid["rows"]
    assert grid["examples"] == N
    values = grid["values"]
    assert len(values) == L and all(len(row) == L for row in values)
    for row in values:
        for v in row:
            assert v is None or (isinstance(v, (int, float)) and np.isfinite(v)), v
    v = np.array([[np.nan if x is None else x for x in row] for row in values], dtype=float)
    defined = ~np.isnan(v)
    assert defined.any()
    assert (defined == defined.T).all(), "null cells are not symmetric"
    diag = np.diag(v)[np.diag(defined)]
    np.testing.assert_allclose(diag, 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v[defined], v.T[defined], rtol=0, atol=1e-9)
