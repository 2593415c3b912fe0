"""svcca-inspect against hostile inputs (issue 12): files that change or never end, sizes beyond
the machine, output sets cut short by a full disk, and command lines that used to be taken the
wrong way. Each case ends with one line on stderr and its documented exit code, never a crash,
a hang or a file set that mixes two runs.
"""
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_inspect import (DIGITS, EXIT_INPUT, EXIT_OUTPUT, EXIT_RUNTIME, EXIT_USAGE,  # noqa: E402,F401
                          FINAL, PROBE, _npy_header)

OUT_SET = ["grid.csv", "grid.json", "grid.png", "grid.svg"]


# ---- inputs: files that change, never end, or claim too much ---------------------------------

def _open_by(pid, path):
    """Whether process `pid` has `path` open (a descriptor) or mapped."""
    real = os.path.realpath(path)
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == real:
                    return True
            except OSError:
                pass
        with open("/proc/%d/maps" % pid) as f:
            return real in f.read()
    except OSError:
        return False


def test_npy_truncated_during_the_run_is_an_input_error_not_sigbus(exe, tmp_path):
    # np.save over the input while a streamed grid reads it: the file shrinks under the reader.
    x = np.random.RandomState(0).randn(60000, 1, 8, 8).astype(np.float32)
    path = tmp_path / "input.npy"
    np.save(path, x)
    header = len(_npy_header("<f4", x.shape))
    p = subprocess.Popen([exe, "grid", FINAL, "--input", str(path), "--batch-size", "200",
                          "--layers", "conv1,fc2", "--out", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _open_by(p.pid, path) and p.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    os.truncate(path, header + 4096)
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_INPUT, "exit %d, stderr: %s" % (p.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "input.npy" in lines[0] and "changed while" in lines[0], err
    assert not os.path.exists(tmp_path / "o" / "grid.json")


def test_non_regular_files_are_refused_at_once(fails, tmp_path):
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    out = ["--out", tmp_path / "o"]
    fails(EXIT_INPUT, ["grid", FINAL, "--input", fifo] + out, "fifo.npy", "FIFO")
    fails(EXIT_INPUT, ["compare", fifo, PROBE], "fifo.npy", "FIFO")
    fails(EXIT_INPUT, ["compare", "/dev/zero", PROBE], "/dev/zero", "character device")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", "/dev/zero"] + out, "/dev/zero", "device")
    fails(EXIT_INPUT, ["layers", "/dev/zero"], "/dev/zero", "device")
    fails(EXIT_INPUT, ["layers", fifo], "fifo.npy", "FIFO")
    assert not os.path.exists(tmp_path / "o")


def test_a_file_that_is_no_model_is_reported_without_cpp_names(fails, tmp_path):
    (tmp_path / "notes.pt").write_text("not a model\n")
    line = fails(EXIT_INPUT, ["layers", tmp_path / "notes.pt"], "notes.pt", "TorchScript")
    assert "TappedModule" not in line


def test_symlink_loop_is_not_a_missing_file(fails, tmp_path):
    loop = tmp_path / "loop.npy"
    os.symlink(loop, loop)
    for args in (["compare", loop, PROBE], ["layers", loop],
                 ["grid", FINAL, "--input", loop, "--out", tmp_path / "o"]):
        line = fails(EXIT_INPUT, args, "loop.npy", "symbolic link loop")
        assert "no such file" not in line


def test_sizes_beyond_the_memory_are_refused_with_what_they_need(fails, tmp_path):
    # 99999999 images of 8 x 8: 25.6 GB of input alone, refused before anything is allocated.
    line = fails(EXIT_USAGE, ["layers", FINAL, "--input-shape", "99999999,1,8,8"],
                 "needs about", "GiB", "available", "--input-shape 2,1,8,8")
    # A sparse .npy whose header is consistent with its size (1 TiB of float32), read whole.
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:
        f.write(_npy_header("<f4", (2 ** 20, 2 ** 18)))
    os.truncate(big, len(_npy_header("<f4", (2 ** 20, 2 ** 18))) + 4 * 2 ** 38)
    fails(EXIT_INPUT, ["compare", big, big], "big.npy", "1048576", "needs", "available")
    # A grid whose layer alone exceeds the machine: no --memory suggestion beyond it.
    line = fails(EXIT_USAGE, ["grid", FINAL, "--input-shape", "99999999,1,8,8", "--out",
                              tmp_path / "o"], "conv1", "more than this machine's",
                 "fewer examples")
    assert "give --memory" not in line
        # Shapes whose product overflows.
    fails(EXIT_USAGE, ["layers", FINAL, "--input-shape", "999999999999,999999999999"],
          "--input-shape")
    del line


def test_npy_header_oddities_give_whole_messages(fails, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((6, 4), dtype=np.float32))
    huge = tmp_path / "huge_dtype.npy"
    huge.write_bytes(_npy_header("<f99999999999999999999", (6, 4)) + b"\0" * 96)
    line = fails(EXIT_INPUT, ["compare", huge, good], "huge_dtype.npy", "not supported")
    assert "stoll" not in line
    nul = tmp_path / "nul.npy"
    nul.write_bytes(_npy_header("<f\0" + "4", (6, 4)) + b"\0" * 96)
    fails(EXIT_INPUT, ["compare", nul, good], "nul.npy", "\\x00", "not understood")


def test_inputs_with_nan_are_input_errors(fails, tmp_path):
    x = np.random.RandomState(0).randn(40, 4)
    x[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "good.npy", np.random.RandomState(1).randn(40, 4))
    fails(EXIT_INPUT, ["compare", tmp_path / "nan.npy", tmp_path / "good.npy"], "nan.npy",
          "NaN", "example 8")
    images = np.random.RandomState(2).randn(20, 1, 8, 8).astype(np.float32)
    images[3, 0, 1, 1] = np.inf
    np.save(tmp_path / "inf_images.npy", images)
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "inf_images.npy", "--out",
                       tmp_path / "o"], "inf_images.npy", "example 4")
    torch.save(torch.from_numpy(images), tmp_path / "inf_images.pt")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "inf_images.pt", "--out",
                       tmp_path / "o"], "inf_images.pt", "NaN or infinite")
    assert not os.path.exists(tmp_path / "o")


# ---- output sets -----------------------------------------------------------------------------

def _read_set(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_full_disk_leaves_the_previous_set_whole(exe, ok, tmp_path):
    out = tmp_path / "o"
    common = ["grid", FINAL, "--input", PROBE, "--layers", "fc*", "--out", out]
    ok(*common, "--measure", "cka")
    before = _read_set(out)
    assert sorted(before) == OUT_SET
    # A file size limit that lets grid.json and grid.csv through but not the heatmaps: the
    # write fails as on a full disk (EFBIG instead of ENOSPC).
    limit = max(len(before["grid.json"]), len(before["grid.csv"])) + 512
    assert limit < min(len(before["grid.svg"]), len(before["grid.png"]))

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([exe] + [str(a) for a in common] + ["--measure", "debiased-cka"],
                       capture_output=True, text=True, preexec_fn=limited, timeout=300)
    assert r.returncode == EXIT_OUTPUT, r.stderr
    after = _read_set(out)
    assert sorted(after) == OUT_SET  # no temporaries left
    mixed = [name for name in OUT_SET if after[name] != before[name]]
    assert mixed == [], "files of the new run beside the old ones: %s" % mixed
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unchanged" in lines[0], r.stderr
    assert lines[0].startswith("svcca-inspect: --out: ") and "write_grid_files" not in lines[0]


def test_a_killed_writer_leaves_no_lasting_temporaries(ok, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / (".grid.tmp.%d.AbC123" % dead.pid)  # what a SIGKILL mid-write leaves
    stale.mkdir()
    (stale / "grid.json").write_text("{")
    live = out / (".grid.tmp.%d.XyZ789" % os.getpid())  # a writer still running
    live.mkdir()
    ok("grid", FINAL, "--input", PROBE, "--layers", "fc*", "--out", out)
    assert sorted(os.listdir(out)) == sorted(OUT_SET + [live.name])


def test_tap_uses_a_unique_temporary_and_refuses_a_folder(ok, fails, tmp_path):
    target = tmp_path / "t.pt"
    user_file = tmp_path / "t.pt.tmp"
    user_file.write_text("the user's own file")
    ok("tap", FINAL, "-o", target)
    assert user_file.read_text() == "the user's own file"
    assert sorted(os.listdir(tmp_path)) == ["t.pt", "t.pt.tmp"]
    with open(target, "rb") as f:
        assert f.read(2) == b"PK"  # a zip archive (TorchScript)
    folder = tmp_path / "folder"
    folder.mkdir()
    fails(EXIT_OUTPUT, ["tap", FINAL, "-o", folder], "folder", "is a folder")
    assert sorted(os.listdir(tmp_path)) == ["folder", "t.pt", "t.pt.tmp"]
    assert os.listdir(folder) == []


# ---- command-line details --------------------------------------------------------------------

def test_empty_names_are_usage_errors(fails, tmp_path):
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--out", ""], "--out", "empty")
    fails(EXIT_USAGE, ["dynamics", FINAL, FINAL, "--input", PROBE, "--out", ""], "--out")
    fails(EXIT_USAGE, ["compare", PROBE, PROBE, "--out", ""], "--out", "empty")
    fails(EXIT_USAGE, ["tap", FINAL, "-o", ""], "-o", "empty")
    fails(EXIT_USAGE, ["layers", FINAL, "--input", ""], "--input", "empty")


def test_seeds_out_of_range_are_usage_errors(ok_json, fails):
    for seed in ("-1", "18446744073709551616", "12345678901234567890123", "1e3", " 7"):
        fails(EXIT_USAGE, ["layers", FINAL, "--input-shape", "2,1,8,8", "--seed", seed],
              "--seed", "18446744073709551615")
    top = ok_json("layers", FINAL, "--input-shape", "2,1,8,8", "--seed", "18446744073709551615")
    assert "seed 18446744073709551615" in top["input"]
    zero = ok_json("layers", FINAL, "--input-shape", "2,1,8,8", "--seed", "0")
    assert "seed 0" in zero["input"]


def test_batch_size_zero_is_a_usage_error_like_minus_one(fails, tmp_path):
    for b in ("0", "-1"):
        fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--batch-size", b, "--out",
                           tmp_path / "o"], "--batch-size must be at least 1", b)
        fails(EXIT_USAGE, ["dynamics", FINAL, FINAL, "--input", PROBE, "--batch-size", b,
                           "--out", tmp_path / "o"], "--batch-size")
    # Out of int64's range: CLI11 clamped it and the grid ran with it.
    for b in ("99999999999999999999", "1e3", "12x"):
        fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--batch-size", b, "--out",
                           tmp_path / "o"], "--batch-size must be a whole number", b)
    assert not os.path.exists(tmp_path / "o")


def test_layer_lists_with_empty_items_and_swallowed_flags(fails, tmp_path):
    out = ["--out", tmp_path / "o"]
    base = ["grid", FINAL, "--input", PROBE]
    for value in (",", ",,", "fc1,", ",fc1", "fc1,,fc2"):
        fails(EXIT_USAGE, base + ["--layers", value] + out, "--layers", "empty name")
    fails(EXIT_USAGE, base + ["--exclude", ","] + out, "--exclude", "empty name")
    fails(EXIT_USAGE, ["compare", PROBE, PROBE, "--layers", ","], "--layers", "empty name")
    # A flag right after an option that needs a value is not taken as that value.
    fails(EXIT_USAGE, base + ["--layers", "--out", tmp_path / "o"], "--layers", "'--out'")
    fails(EXIT_USAGE, base + ["--out", "--layers", "fc1"], "--out", "'--layers'")
    assert not os.path.exists(tmp_path / "o")


def test_options_that_cannot_work_fail_before_any_model_runs(fails, tmp_path):
    # The model does not exist: an option error must come first (exit 2, not 3).
    missing = tmp_path / "missing.pt"
    out = ["--out", tmp_path / "o"]
    for measure in ("svcca", "pwcca", "cka"):
        fails(EXIT_USAGE, ["grid", missing, "--input-shape", "4,1,8,8", "--measure", measure,
                           "--conv", "fourier"] + out, "--conv fourier", "--measure cca", measure)
    fails(EXIT_USAGE, ["dynamics", missing, missing, "--input-shape", "4,1,8,8", "--measure",
                       "cca", "--conv", "fourier"] + out, "fourier")
    line = fails(EXIT_USAGE, ["grid", missing, "--input-shape", "4,1,8,8", "--measure",
                              "rbf-cka", "--batch-size", "2"] + out, "--batch-size", "rbf-cka")
    assert "GridAccumulator" not in line and "::" not in line
    fails(EXIT_USAGE, ["grid", missing, "--input-shape", "4,1,8,8", "--measure", "cca",
                       "--conv", "fourier", "--batch-size", "2"] + out, "--batch-size", "fourier")
    fails(EXIT_USAGE, ["compare", missing, missing, "--measure", "svcca", "--conv", "fourier"],
          "--conv fourier")
    assert not os.path.exists(tmp_path / "o")


def _wide_activations(tmp_path):
    # 80 named tensors: a grid whose JSON (about 200 KB) is far larger than a pipe's buffer.
    torch.save({"t%02d" % i: torch.randn(12, 3, generator=torch.Generator().manual_seed(i))
                for i in range(80)}, tmp_path / "many.pt")
    return tmp_path / "many.pt"


def test_a_closed_stdout_pipe_ends_quietly(exe, tmp_path):
    many = _wide_activations(tmp_path)
    p = subprocess.Popen([exe, "compare", str(many), str(many), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)  # as `| head -c 10`
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == EXIT_OUTPUT, "exit %d (SIGPIPE is -13), stderr %r" % (p.returncode, err)
    assert err == b""


def test_a_full_stdout_is_an_output_error_with_a_message(exe, tmp_path):
    with open("/dev/full", "w") as full:
        r = subprocess.run([exe, "layers", FINAL], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert r.returncode == EXIT_OUTPUT and "cannot write to stdout" in r.stderr, r.stderr


def test_help_documents_the_exit_codes_of_output_errors(ok):
    text = ok("--help").stdout
    assert "stdout" in text and "| head" in text and "--measure cca only" in text
