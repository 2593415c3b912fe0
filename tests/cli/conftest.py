"""Fixtures of the svcca-inspect end-to-end tests: the executable (CTest sets SVCCA_INSPECT; a
missing executable is a failure, never a skip) and ways to run it.
"""
import json
import os
import subprocess

import pytest


@pytest.fixture(scope="session")
def exe():
    path = os.environ.get("SVCCA_INSPECT")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("SVCCA_INSPECT must name the built svcca-inspect executable, got %r" % path)
    return path


@pytest.fixture
def run(exe):
    def run_(*args):
        return subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True,
                              timeout=300)
    return run_


@pytest.fixture
def ok(run):
    """Runs and requires success with nothing on stderr (stderr is no terminal: no progress)."""
    def ok_(*args):
        r = run(*args)
        assert r.returncode == 0, "exit %d, stderr: %s" % (r.returncode, r.stderr)
        assert r.stderr == ""
        return r
    return ok_


@pytest.fixture
def ok_json(ok):
    return lambda *args: json.loads(ok(*args, "--json").stdout)


@pytest.fixture
def fails(run):
    """Runs and requires exit `code` with exactly one stderr line holding every fragment."""
    def fails_(code, args, *fragments):
        r = run(*args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == code, "exit %d (want %d), stderr: %s" % (r.returncode, code, r.stderr)
        assert len(lines) == 1, "want one line on stderr, got: %r" % r.stderr
        for f in fragments:
            assert f in lines[0], "%r not in %r" % (f, lines[0])
        assert "Exception raised from" not in lines[0] and "Traceback" not in lines[0]
        assert r.stdout == ""
        return lines[0]
    return fails_
