"""Shared fixtures of the pytest suite: the op namespace, golden data and the C++ script runner.

CTest runs this suite with PYTHONPATH (the staged svcca package), SVCCA_RUN_SCRIPT and
SVCCA_GOLDEN_DIR set. A missing torch, package or library is a collection error (a failure),
never a skip.
"""
import json
import os

import numpy as np
import pytest
import torch

import svcca  # noqa: F401  (loads libsvcca_ops.so; an ImportError here fails the run)

_HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def ops():
    """torch.ops.svcca, after the package has loaded the library."""
    return torch.ops.svcca


@pytest.fixture(scope="session")
def golden_dir():
    path = os.environ.get("SVCCA_GOLDEN_DIR") or os.path.join(_HERE, "..", "golden")
    if not os.path.isdir(path):
        pytest.fail("golden data directory not found: %s (set SVCCA_GOLDEN_DIR)" % path)
    return path


def _golden_array(spec):
    """{shape, dtype, data} -> numpy array; null -> NaN, uint8 masks -> bool."""
    if spec["dtype"] == "uint8":
        return np.array(spec["data"], dtype=np.uint8).reshape(spec["shape"]).astype(bool)
    data = [np.nan if v is None else v for v in spec["data"]]
    return np.array(data, dtype=spec["dtype"]).reshape(spec["shape"])


@pytest.fixture(scope="session")
def load_golden(golden_dir):
    """load_golden(name) -> (case dict, {array name: numpy array})."""

    def load(name):
        with open(os.path.join(golden_dir, name + ".json")) as f:
            case = json.load(f)
        arrays = {k: _golden_array(v) for k, v in case.get("arrays", {}).items()}
        return case, arrays

    return load


@pytest.fixture(scope="session")
def run_script_exe():
    """Path of the C++ program that runs a saved TorchScript module (svcca_run_script)."""
    path = os.environ.get("SVCCA_RUN_SCRIPT")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("SVCCA_RUN_SCRIPT must name the built svcca_run_script executable, got %r"
                    % path)
    return path
