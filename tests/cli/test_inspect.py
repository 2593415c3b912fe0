"""svcca-inspect end to end: runs the built executable on the bundled models and fixtures, parses
what it writes (JSON, CSV, SVG as XML, PNG header), and checks every bad input for its one-line
message and exit code.

CTest sets SVCCA_INSPECT (the executable) and PYTHONPATH (the staged svcca package, for the
tapped-model round trip). A missing executable is a failure, never a skip.
"""
import csv
import json
import os
import struct
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(_HERE, "..", ".."))
DIGITS = os.path.join(ROOT, "models", "digits")
FIXTURES = os.path.join(ROOT, "models", "fixtures")
DATA = os.path.join(ROOT, "data")
PROBE = os.path.join(DIGITS, "probe.pt")
EPOCHS = [os.path.join(DIGITS, "cnn_epoch%d.pt" % e) for e in (0, 1, 2, 4, 8)]
FINAL = EPOCHS[-1]
DIGITS_LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]

EXIT_RUNTIME, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 1, 2, 3, 4


def linear_cka(x, y):
    """Linear CKA (Kornblith et al. 2019) of [n, p] arrays, the obvious float64 way."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    xy = np.linalg.norm(x.T @ y) ** 2
    return xy / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def read_png_size(path):
    with open(path, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, color = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, color


def check_grid_files(folder, stem, grid):
    """The four files exist; JSON equals the reported grid; CSV, SVG and PNG are well formed."""
    names = sorted(os.listdir(folder))
    assert names == sorted(stem + ext for ext in (".csv", ".json", ".png", ".svg")), names
    with open(os.path.join(folder, stem + ".json")) as f:
        on_disk = json.load(f)
    assert on_disk["rows"] == grid["rows"] and on_disk["cols"] == grid["cols"]
    np.testing.assert_allclose(np.array(on_disk["values"], dtype=float),
                               np.array(grid["values"], dtype=float), rtol=0, atol=0)
    with open(os.path.join(folder, stem + ".csv"), newline="") as f:
        table = list(csv.reader(f))
    assert len(table) == len(grid["rows"]) + 1
    assert table[0][1:] == grid["cols"]
    assert [row[0] for row in table[1:]] == grid["rows"]
    # An undefined (null) cell is an empty CSV field.
    np.testing.assert_allclose(
        np.array([[float(x) if x else np.nan for x in row[1:]] for row in table[1:]]),
        np.array(grid["values"], dtype=float), rtol=1e-15, atol=0)
    svg = ET.parse(os.path.join(folder, stem + ".svg")).getroot()
    assert svg.tag.endswith("svg")
    text = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
    for name in grid["rows"] + grid["cols"]:
        assert name in text, "SVG lacks the label %r" % name
    measure = grid["measure"].replace("-to-final", "")  # dynamics: "cka of each layer to ..."
    assert measure in text, "SVG title lacks the measure"
    width, height, depth, color = read_png_size(os.path.join(folder, stem + ".png"))
    assert (depth, color) == (8, 2)  # RGB8
    # The cells must be distinguishable: at least a few pixels per cell along each axis.
    assert width >= 4 * len(grid["cols"]) and height >= 4 * len(grid["rows"])
    assert os.path.getsize(os.path.join(folder, stem + ".png")) > 60


# ---- help ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sub", [[], ["layers"], ["grid"], ["compare"], ["dynamics"], ["tap"]])
def test_help_exits_zero(run, sub):
    r = run(*sub, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout or "usage" in r.stdout
    if not sub:
        for command in ("layers", "grid", "compare", "dynamics", "tap"):
            assert command in r.stdout
        assert "Exit codes" in r.stdout


def test_no_subcommand_is_a_usage_error(fails):
    fails(EXIT_USAGE, [], "subcommand")


# ---- layers ----------------------------------------------------------------------------------
def test_layers_of_the_digits_cnn(ok_json):
    report = ok_json("layers", FINAL, "--input-shape", "2,1,8,8")
    layers = report["layers"]
    assert [l["name"] for l in layers] == DIGITS_LAYERS
    shapes = {l["name"]: l["shape"] for l in layers}
    assert shapes == {"conv1": [2, 8, 8, 8], "conv2": [2, 16, 8, 8], "conv3": [2, 32, 4, 4],
                      "fc1": [2, 32], "fc2": [2, 10]}
    types = {l["name"]: l["type"] for l in layers}
    assert types["conv1"] == "Conv2d" and types["fc2"] == "Linear"
    assert all(l["dtype"] == "float32" and l["calls"] == 1 for l in layers)


def test_layers_without_input_lists_names_and_types(ok_json, ok):
    report = ok_json("layers", FINAL)
    assert [l["name"] for l in report["layers"]] == DIGITS_LAYERS
    assert all(l["shape"] is None for l in report["layers"])
    text = ok("layers", FINAL).stdout
    assert "conv3" in text and "Conv2d" in text


@pytest.mark.parametrize("name", ["seq", "nested", "resnet", "twice"])
def test_layers_match_python_forward_hooks(ok_json, tmp_path, name):
    expected = torch.jit.load(os.path.join(FIXTURES, name + "_expected.pt"))
    x = expected.inputs[0]
    torch.save(x, tmp_path / "x.pt")
    report = ok_json("layers", os.path.join(FIXTURES, name + "_scripted.pt"), "--input",
                     tmp_path / "x.pt")
    hook_names = list(dict.fromkeys(expected.names))  # first call of each name, in order
    calls = {n: expected.names.count(n) for n in hook_names}
    first = {}
    for n, v in zip(expected.names, expected.values):
        first.setdefault(n, list(v.shape))
    # One row per call, as grid names its layers: "name#1" ... "name#k" for k > 1 calls, in
    # first-call order (the calls of one module together), each with the first call's shape.
    rows = [(n if calls[n] == 1 else "%s#%d" % (n, k), n) for n in hook_names
            for k in range(1, calls[n] + 1)]
    assert [l["name"] for l in report["layers"]] == [r for r, _ in rows]
    assert [l["shape"] for l in report["layers"]] == [first[n] for _, n in rows]
    assert [l["calls"] for l in report["layers"]] == [calls[n] for _, n in rows]


# ---- grid ------------------------------------------------------------------------------------
def test_grid_of_one_model(ok, tmp_path):
    out = tmp_path / "out"
    report = json.loads(ok("grid", FINAL, "--input", PROBE, "--measure", "cka", "--out", out,
                           "--json").stdout)
    grid = report["grid"]
    assert grid["rows"] == DIGITS_LAYERS and grid["cols"] == DIGITS_LAYERS
    assert grid["measure"] == "cka" and grid["examples"] == 359 and report["examples"] == 359
    assert "svcca" in grid["versions"] and "torch" in grid["versions"]
    v = np.array(grid["values"], dtype=float)
    assert v.shape == (5, 5)
    np.testing.assert_allclose(np.diag(v), 1.0, atol=1e-9)
    np.testing.assert_allclose(v, v.T, atol=1e-9)
    assert ((v > 0) & (v <= 1 + 1e-9)).all()
    assert sorted(os.path.basename(f) for f in report["files"]) == [
        "grid.csv", "grid.json", "grid.png", "grid.svg"]
    check_grid_files(out, "grid", grid)


def test_grid_text_output_is_a_heatmap_with_names(ok, tmp_path):
    text = ok("grid", FINAL, "--input", PROBE, "--out", tmp_path / "o").stdout
    for name in DIGITS_LAYERS:
        assert name in text
    assert "\x1b[" not in text  # stdout is no terminal: no colours


@pytest.mark.parametrize("name", ["seq", "nested", "resnet"])
def test_grid_equals_numpy_linear_cka_on_fixtures(ok, tmp_path, name):
    expected = torch.jit.load(os.path.join(FIXTURES, name + "_expected.pt"))
    x = expected.inputs[0]
    torch.save(x, tmp_path / "x.pt")
    report = json.loads(ok("grid", os.path.join(FIXTURES, name + "_scripted.pt"), "--input",
                           tmp_path / "x.pt", "--measure", "cka", "--conv", "flatten", "--out",
                           tmp_path / "o", "--json").stdout)
    grid = report["grid"]
    # One layer per call: a module called k > 1 times is "name#1" ... "name#k".
    calls = {}
    for n in expected.names:
        calls[n] = calls.get(n, 0) + 1
    first, seen = {}, {}
    for n, v in zip(expected.names, expected.values):
        seen[n] = seen.get(n, 0) + 1
        key = n if calls[n] == 1 else "%s#%d" % (n, seen[n])
        first[key] = v.double().reshape(v.shape[0], -1).numpy()
    assert sorted(first) == sorted(grid["rows"])
    values = np.array(grid["values"], dtype=float)
    for i, a in enumerate(grid["rows"]):
        for j, b in enumerate(grid["cols"]):
            np.testing.assert_allclose(values[i, j], linear_cka(first[a], first[b]),
                                       rtol=1e-5, atol=1e-6, err_msg="%s x %s" % (a, b))


def test_grid_of_two_checkpoints_streams_exactly(ok_json, tmp_path):
    common = ["grid", EPOCHS[3], FINAL, "--input", PROBE, "--measure", "cca", "--layers",
              "conv3,fc*"]
    whole = ok_json(*common, "--out", tmp_path / "a")["grid"]
    batched = ok_json(*common, "--batch-size", "50", "--out", tmp_path / "b")["grid"]
    assert whole["rows"] == ["conv3", "fc1", "fc2"] and whole["cols"] == ["conv3", "fc1", "fc2"]
    assert "cnn_epoch4" in whole["row_label"] and "cnn_epoch8" in whole["col_label"]
    # Streamed CCA whitens from moments alone (no refinement against the data): the small
    # directions of these float32 layers, kept by the calibrated rounding floor, agree to ~4e-8.
    np.testing.assert_allclose(np.array(batched["values"], dtype=float),
                               np.array(whole["values"], dtype=float), rtol=1e-6, atol=1e-8)
    assert batched["options"]["batch_size"] == "50"


def test_random_input_is_seeded_and_independent_of_batch_size(ok_json, tmp_path):
    common = ["grid", FINAL, "--input-shape", "300,1,8,8", "--measure", "cka"]
    a = ok_json(*common, "--seed", "7", "--out", tmp_path / "a")["grid"]
    b = ok_json(*common, "--seed", "7", "--batch-size", "64", "--out", tmp_path / "b")["grid"]
    c = ok_json(*common, "--seed", "8", "--out", tmp_path / "c")["grid"]
    va, vb, vc = (np.array(g["values"], dtype=float) for g in (a, b, c))
    np.testing.assert_allclose(vb, va, rtol=1e-8, atol=1e-10)
    assert not np.allclose(va, vc, rtol=0, atol=1e-12)
    assert a["examples"] == 300


def test_debiased_cka_in_batches_equals_one_batch(ok_json, tmp_path):
    common = ["grid", FINAL, "--input", PROBE, "--measure", "debiased-cka"]
    whole = ok_json(*common, "--out", tmp_path / "a")["grid"]
    batched = ok_json(*common, "--batch-size", "50", "--out", tmp_path / "b")["grid"]
    np.testing.assert_allclose(np.array(batched["values"], dtype=float),
                               np.array(whole["values"], dtype=float), rtol=1e-8, atol=1e-10)


def test_grid_reads_npy_inputs(ok_json, tmp_path):
    x = torch.load(PROBE).numpy()
    np.save(tmp_path / "probe64.npy", x.astype(np.float64))  # float64 into a float32 model
    np.save(tmp_path / "probe_f.npy", np.asfortranarray(x))
    from_pt = ok_json("grid", FINAL, "--input", PROBE, "--out", tmp_path / "a")["grid"]
    for f in ("probe64.npy", "probe_f.npy"):
        g = ok_json("grid", FINAL, "--input", tmp_path / f, "--out", tmp_path / f.replace(".", "_"))
        np.testing.assert_allclose(np.array(g["grid"]["values"], dtype=float),
                                   np.array(from_pt["values"], dtype=float), rtol=1e-6, atol=1e-7)


def test_npy_input_in_batches(ok_json, tmp_path):
    np.save(tmp_path / "probe.npy", torch.load(PROBE).numpy())  # memory-mapped, sliced per batch
    args = ["grid", FINAL, EPOCHS[2], "--input", tmp_path / "probe.npy", "--measure", "pwcca",
            "--layers", "fc*"]
    whole = ok_json(*args, "--out", tmp_path / "a")["grid"]
    batched = ok_json(*args, "--batch-size", "37", "--out", tmp_path / "b")["grid"]
    np.testing.assert_allclose(np.array(batched["values"], dtype=float),
                               np.array(whole["values"], dtype=float), rtol=1e-7, atol=1e-9)


def _run_with_terminal_stderr(exe, args):
    """(exit code, stdout, what a terminal on stderr saw)."""
    import pty
    master, slave = pty.openpty()
    proc = subprocess.Popen([exe] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = proc.stdout.read()
    proc.wait(timeout=300)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the pty is closed once the child has exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


def test_progress_only_on_a_terminal_and_not_with_quiet(exe, tmp_path):
    args = ["grid", FINAL, "--input", PROBE, "--batch-size", "100", "--layers", "fc*", "--json"]
    code, out, seen = _run_with_terminal_stderr(exe, args + ["--out", tmp_path / "a"])
    assert code == 0 and json.loads(out)["grid"]["rows"] == ["fc1", "fc2"]
    assert "examples 101-200 of 359" in seen
    code, out, seen = _run_with_terminal_stderr(exe, args + ["--out", tmp_path / "b", "--quiet"])
    assert code == 0 and seen == ""


def test_colours_only_on_a_terminal_and_not_with_no_color(exe):
    import pty
    args = [exe, "compare", os.path.join(DATA, "net_a.pt"), os.path.join(DATA, "net_b.pt")]
    for extra, want_colour in (([], True), (["--no-color"], False)):
        master, slave = pty.openpty()
        env = dict(os.environ)
        env.pop("NO_COLOR", None)
        proc = subprocess.Popen(args + extra, stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        assert proc.wait(timeout=300) == 0
        assert (b"\x1b[" in seen) == want_colour, seen[:200]
        assert b"fc1" in seen


# ---- compare ---------------------------------------------------------------------------------
def test_compare_activation_dicts(ok_json, tmp_path):
    report = ok_json("compare", os.path.join(DATA, "net_a.pt"), os.path.join(DATA, "net_b.pt"),
                     "--measure", "svcca", "--out", tmp_path / "o")
    grid = report["grid"]
    assert grid["rows"] == ["fc1", "fc2", "fc3", "logits"] and grid["cols"] == grid["rows"]
    assert grid["measure"] == "svcca" and grid["examples"] == 400
    v = np.array(grid["values"], dtype=float)
    assert ((v > 0) & (v <= 1 + 1e-9)).all()
    check_grid_files(tmp_path / "o", "compare", grid)


def test_compare_npy_pt_and_layouts_agree(ok_json, tmp_path):
    a = torch.load(os.path.join(DATA, "net_a.pt"))["fc2"]
    b = torch.load(os.path.join(DATA, "net_b.pt"))["fc2"]
    torch.save(a, tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", b.numpy())
    np.save(tmp_path / "a_t.npy", a.numpy().T.copy())  # google/svcca's [neurons, datapoints]
    np.save(tmp_path / "b_t.npy", b.numpy().T.copy())
    x = np.random.RandomState(0).randn(400, 7)
    ref = linear_cka(a.double().numpy(), b.double().numpy())
    one = ok_json("compare", tmp_path / "a.pt", tmp_path / "b.npy")["grid"]
    assert np.array(one["values"]).shape == (1, 1)
    np.testing.assert_allclose(one["values"][0][0], ref, rtol=1e-6)
    t = ok_json("compare", tmp_path / "a_t.npy", tmp_path / "b_t.npy", "--layout",
                "neurons-first")["grid"]
    np.testing.assert_allclose(t["values"][0][0], ref, rtol=1e-6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x_int.npy", (x * 100).astype(np.int32))
    ints = ok_json("compare", tmp_path / "x.npy", tmp_path / "x_int.npy")["grid"]
    assert ints["values"][0][0] > 0.999


def test_compare_reads_python_and_cpp_style_archives(ok_json, tmp_path):
    """torch.save (pickle in a zip), a list of tensors, and torch::save's format (a TorchScript
    archive of tensor attributes, as C++'s torch::save writes)."""
    d = torch.load(os.path.join(DATA, "net_a.pt"))
    torch.save([d["fc1"], d["fc2"]], tmp_path / "list.pt")

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("fc1", d["fc1"].clone())
            self.register_buffer("fc2", d["fc2"].clone())

    torch.jit.script(Holder()).save(str(tmp_path / "archive.pt"))
    grid = ok_json("compare", tmp_path / "list.pt", tmp_path / "archive.pt")["grid"]
    assert grid["rows"] == ["0", "1"] and sorted(grid["cols"]) == ["fc1", "fc2"]
    v = np.array(grid["values"], dtype=float)
    j = {name: k for k, name in enumerate(grid["cols"])}
    np.testing.assert_allclose([v[0, j["fc1"]], v[1, j["fc2"]]], 1.0, atol=1e-9)


def test_compare_reads_files_written_by_cpp(ok_json, tmp_path):
    """torch::save(tensor), torch::save(vector) and torch::pickle_save, from a C++ program."""
    writer = os.environ.get("SVCCA_WRITE_TENSORS")
    if not writer or not os.access(writer, os.X_OK):
        pytest.fail("SVCCA_WRITE_TENSORS must name the built svcca_cli_write_tensors, got %r"
                    % writer)
    subprocess.run([writer, str(tmp_path)], check=True, timeout=120)
    one = ok_json("compare", tmp_path / "cpp_save.pt", tmp_path / "cpp_pickle.pt", "--measure",
                  "cca")["grid"]
    assert one["rows"] == ["cpp_save"] and one["cols"] == ["cpp_pickle"]
    np.testing.assert_allclose(one["values"][0][0], 1.0, atol=1e-6)  # y = x A
    pair = ok_json("compare", tmp_path / "cpp_save_vector.pt", tmp_path / "cpp_save.pt",
                   "--measure", "cka")["grid"]
    assert pair["rows"] == ["0", "1"]
    np.testing.assert_allclose(pair["values"][0][0], 1.0, atol=1e-9)  # the same tensor
    assert pair["values"][1][0] < 1 - 1e-6


# ---- dynamics --------------------------------------------------------------------------------
def test_dynamics_over_checkpoints(ok, tmp_path):
    r = ok("dynamics", *EPOCHS, "--input", PROBE, "--measure", "cka", "--out", tmp_path / "o",
           "--json")
    grid = json.loads(r.stdout)["grid"]
    assert grid["rows"] == DIGITS_LAYERS
    assert grid["cols"] == ["cnn_epoch0", "cnn_epoch1", "cnn_epoch2", "cnn_epoch4", "cnn_epoch8"]
    v = np.array(grid["values"], dtype=float)
    assert v.shape == (5, 5)
    np.testing.assert_allclose(v[:, -1], 1.0, atol=1e-9)  # the final checkpoint against itself
    assert ((v > 0) & (v <= 1 + 1e-9)).all()
    # Training moves the logits most: the untrained fc2 is further from the final one than the
    # epoch-4 fc2 is.
    assert v[4, 0] < v[4, 3]
    check_grid_files(tmp_path / "o", "dynamics", grid)
    text = ok("dynamics", *EPOCHS, "--input", PROBE, "--out", tmp_path / "t").stdout
    assert "cnn_epoch0" in text and "fc2" in text


def test_dynamics_batched_equals_whole(ok_json, tmp_path):
    common = ["dynamics", EPOCHS[0], EPOCHS[2], FINAL, "--input", PROBE, "--measure", "svcca",
              "--layers", "fc*"]
    whole = ok_json(*common, "--out", tmp_path / "a")["grid"]
    batched = ok_json(*common, "--batch-size", "100", "--out", tmp_path / "b")["grid"]
    np.testing.assert_allclose(np.array(batched["values"], dtype=float),
                               np.array(whole["values"], dtype=float), rtol=1e-7, atol=1e-9)


# ---- tap -------------------------------------------------------------------------------------
def test_tap_writes_a_model_python_can_capture_from(ok_json, tmp_path):
    out = tmp_path / "tapped.pt"
    report = ok_json("tap", FINAL, "-o", out)
    assert report["tapped"]["method"] == "forward_tapped"
    assert [l["name"] for l in report["layers"]] == DIGITS_LAYERS
    import svcca  # noqa: F401  (loads the op library the tap op lives in)
    m = torch.jit.load(str(out))
    x = torch.load(PROBE)[:3]
    output, captures = svcca.capture(m, x)
    assert list(captures) == DIGITS_LAYERS
    torch.testing.assert_close(output, m(x))
    assert list(captures["conv3"][0].shape) == [3, 32, 4, 4]
    assert sorted(os.listdir(tmp_path)) == ["tapped.pt"]  # no temporary file left


# ---- bad input -------------------------------------------------------------------------------
def test_missing_model(fails, tmp_path):
    fails(EXIT_INPUT, ["layers", tmp_path / "nope.pt"], "nope.pt")
    fails(EXIT_INPUT, ["grid", tmp_path / "nope.pt", "--input", PROBE, "--out", tmp_path / "o"],
          "nope.pt")
    assert not os.path.exists(tmp_path / "o")


def test_files_that_are_not_torchscript_models(fails, tmp_path):
    state_dict = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), state_dict)
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    truncated = tmp_path / "truncated.pt"
    with open(FINAL, "rb") as f:
        truncated.write_bytes(f.read()[:20000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (state_dict, text, truncated, empty):
        fails(EXIT_INPUT, ["layers", path, "--input-shape", "1,1,8,8"], os.path.basename(path))
        fails(EXIT_INPUT, ["tap", path, "-o", tmp_path / "t.pt"], os.path.basename(path))
    fails(EXIT_INPUT, ["layers", tmp_path], str(tmp_path))  # a folder
    assert not os.path.exists(tmp_path / "t.pt")


def test_frozen_model_is_reported(fails, tmp_path):
    fails(EXIT_INPUT, ["layers", os.path.join(FIXTURES, "frozen_scripted.pt")], "frozen")


def test_input_of_the_wrong_shape_or_dtype(fails, tmp_path):
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "rgb.pt")
    torch.save(torch.zeros(4, 1, 8, 8, dtype=torch.int64), tmp_path / "ints.pt")
    torch.save(torch.zeros(4, 1, 8, 8, dtype=torch.complex64), tmp_path / "complex.pt")
    torch.save({"a": torch.zeros(4, 1, 8, 8), "b": torch.zeros(4, 1, 8, 8)}, tmp_path / "two.pt")
    out = ["--out", tmp_path / "o"]
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "rgb.pt"] + out, "[4, 3, 8, 8]")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "ints.pt"] + out, "ints.pt")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "complex.pt"] + out, "complex.pt")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "two.pt"] + out, "one tensor")
    fails(EXIT_INPUT, ["layers", FINAL, "--input-shape", "2,3,8,8"], "[2, 3, 8, 8]")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "missing.npy"] + out, "missing.npy")
    assert not os.path.exists(tmp_path / "o")


def _npy_header(descr, shape, fortran=False, version=1):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", repr(tuple(shape)))
    header += " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(header)) + header.encode()


def test_npy_reader_reads_versions_and_byte_orders(ok_json, tmp_path):
    x = np.random.RandomState(1).randn(50, 4)
    y = x @ np.random.RandomState(2).randn(4, 4)
    (tmp_path / "v2.npy").write_bytes(_npy_header("<f8", x.shape, version=2) + x.tobytes())
    (tmp_path / "v3be.npy").write_bytes(_npy_header(">f4", y.shape, version=3)
                                        + y.astype(">f4").tobytes())
    g = ok_json("compare", tmp_path / "v2.npy", tmp_path / "v3be.npy", "--measure", "cca")["grid"]
    np.testing.assert_allclose(g["values"][0][0], 1.0, atol=1e-5)  # y = x A: every correlation 1


def test_bad_npy_files(fails, tmp_path):
    good = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "good.npy", good)
    raw = (tmp_path / "good.npy").read_bytes()
    cases = {
        "truncated.npy": (raw[:-10], "truncated"),
        "magic.npy": (b"\x93NUMPX" + raw[6:], "magic"),
        "header.npy": (raw[:10] + raw[10:40].replace(b"descr", b"dscr!") + raw[40:], "header"),
        "version.npy": (raw[:6] + b"\x07" + raw[7:], "version"),
        "longer.npy": (raw + b"\0\0\0\0", "more than"),
        "objects.npy": (_npy_header("|O", (2,)) + b"\0" * 16, "objects"),
        "strings.npy": (_npy_header("<U3", (2,)) + b"\0" * 24, "strings"),
        "complex.npy": (_npy_header("<c16", (2, 2)) + b"\0" * 64, "complex"),
    }
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        fails(EXIT_INPUT, ["compare", tmp_path / name, tmp_path / "good.npy"], name, fragment)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    fails(EXIT_INPUT, ["compare", tmp_path / "pickled.npy", tmp_path / "good.npy"], "objects")
    fails(EXIT_INPUT, ["grid", FINAL, "--input", tmp_path / "truncated.npy", "--out",
                       tmp_path / "o"], "truncated")


def test_compare_bad_activation_files(fails, tmp_path):
    torch.save(torch.randn(30, 4), tmp_path / "a.pt")
    torch.save(torch.randn(20, 4), tmp_path / "b.pt")
    torch.save({"only": torch.randn(30, 4)}, tmp_path / "one_entry.pt")
    torch.save(torch.randn(30), tmp_path / "flat.pt")
    fails(EXIT_INPUT, ["compare", tmp_path / "a.pt", tmp_path / "b.pt"], "examples")
    fails(EXIT_INPUT, ["compare", tmp_path / "a.pt", tmp_path / "one_entry.pt"], "single entry")
    fails(EXIT_INPUT, ["compare", tmp_path / "a.pt", tmp_path / "flat.pt"], "[30]")
    fails(EXIT_INPUT, ["compare", tmp_path / "a.pt", FINAL], "TorchScript model")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "state_dict.pt")
    torch.save(torch.randn(30, 4), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"a": torch.randn(30, 4), "b": "text"}, tmp_path / "mixed.pt")
    (tmp_path / "notes.txt").write_text("0.1 0.2\n")
    fails(EXIT_INPUT, ["compare", tmp_path / "a.pt", tmp_path / "state_dict.pt"], "state_dict")
    fails(EXIT_INPUT, ["compare", tmp_path / "legacy.pt", tmp_path / "a.pt"], "legacy")
    fails(EXIT_INPUT, ["compare", tmp_path / "mixed.pt", tmp_path / "a.pt"], "'b'")
    fails(EXIT_INPUT, ["compare", tmp_path / "notes.txt", tmp_path / "a.pt"], "notes.txt")


def test_unknown_measure_conv_layers_and_options(fails, tmp_path):
    out = ["--out", tmp_path / "o"]
    line = fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--measure", "bogus"] + out,
                 "bogus")
    assert "cka" in line  # the message lists the measures
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--conv", "smear"] + out, "smear")
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--layers", "nothing*"] + out, "nothing*")
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--layers", "conv9"] + out, "conv9")
    fails(EXIT_USAGE, ["grid", FINAL, "--input-shape", "8,x,8"] + out, "--input-shape")
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--input-shape", "2,1,8,8"] + out)
    fails(EXIT_USAGE, ["grid", FINAL] + out, "--input")
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE, "--bogus-flag"] + out, "bogus-flag")
    fails(EXIT_USAGE, ["grid", FINAL, "--input", PROBE], "--out")
    fails(EXIT_USAGE, ["dynamics", FINAL, "--input", PROBE] + out, "two or more")
    fails(EXIT_USAGE, ["compare", PROBE, PROBE, "--layers", "zz*"], "zz*")
    fails(EXIT_USAGE, ["compare", PROBE, PROBE, "--layout", "sideways"], "sideways")
    assert not os.path.exists(tmp_path / "o")


def test_batching_a_measure_that_needs_all_examples(run, tmp_path):
    r = run("grid", FINAL, "--input", PROBE, "--measure", "rbf-cka", "--batch-size", "100",
            "--out", tmp_path / "o")
    if r.returncode == 0:  # the grid part streams it exactly: then it must equal one batch
        return
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == EXIT_USAGE and len(lines) == 1 and "batch" in lines[0], r.stderr
    assert not os.path.exists(tmp_path / "o")


def test_undefined_cells_are_null_with_their_reason(run, tmp_path):
    # CCA of fc1 (32 features) needs n >= 34 examples; 10 are given: a null cell, not a lost grid.
    args = ["grid", FINAL, "--input-shape", "10,1,8,8", "--measure", "cca", "--layers",
            "conv1,fc1"]
    r = run(*args, "--out", tmp_path / "o", "--json")
    assert r.returncode == 0, r.stderr
    grid = json.loads(r.stdout)["grid"]
    assert grid["rows"] == ["conv1", "fc1"]
    assert grid["values"][1][1] is None and grid["values"][0][1] is None
    assert grid["values"][0][0] == pytest.approx(1.0)
    assert len(grid["undefined"]) == 1
    assert "p + 2 = 34" in grid["undefined"][0]["reason"]
    assert sorted(map(tuple, grid["undefined"][0]["cells"])) == [(0, 1), (1, 0), (1, 1)]
    assert "3 cells" in r.stderr and "p + 2 = 34" in r.stderr
    with open(tmp_path / "o" / "grid.json") as f:
        assert json.load(f)["undefined"] == grid["undefined"]
    with open(tmp_path / "o" / "grid.csv") as f:
        assert f.read().splitlines()[2].endswith(",")  # fc1's row ends with an empty cell
    # --strict: any undefined cell is an error, one line, exit 1, nothing written.
    r = run(*args, "--out", tmp_path / "s", "--strict")
    assert r.returncode == EXIT_RUNTIME and "--strict" in r.stderr and "p + 2 = 34" in r.stderr
    assert not os.path.exists(tmp_path / "s")


def test_output_folder_that_cannot_be_written(fails, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["grid", FINAL, "--input", PROBE, "--layers", "fc*"]
    fails(EXIT_OUTPUT, args + ["--out", blocker], "file")              # a file, not a folder
    fails(EXIT_OUTPUT, args + ["--out", blocker / "sub"], "file")      # under a file
    fails(EXIT_OUTPUT, ["tap", FINAL, "-o", blocker / "t.pt"], "t.pt")
    assert sorted(os.listdir(tmp_path)) == ["file"] and blocker.read_text() == "x"
    # Folders nobody can create or write, root included.
    fails(EXIT_OUTPUT, args + ["--out", "/proc/svcca-inspect-out"], "/proc/svcca-inspect-out")
    fails(EXIT_OUTPUT, args + ["--out", "/proc/self"], "/proc/self")
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        fails(EXIT_OUTPUT, args + ["--out", locked], "locked")
        assert os.listdir(locked) == []


def test_memory_budget_splits_the_grid_into_passes(ok_json, fails, tmp_path):
    # 3000 examples: the digits CNN's five layers hold 25 MB. A budget too small for one layer
    # beside the factors and the forward is a usage error that says what would work, before
    # anything large is allocated; the budget it suggests works, in several passes, with the
    # numbers of one pass.
    import re
    common = ["grid", FINAL, "--input-shape", "3000,1,8,8", "--measure", "cka"]
    line = fails(EXIT_USAGE, common + ["--memory", "100M", "--out", tmp_path / "c"],
                 "--memory 100 MiB is too small", "layer 'conv1'", "give --memory")
    suggested = re.search(r"give --memory (\d+) MiB", line).group(1)
    one = ok_json(*common, "--out", tmp_path / "a")["grid"]
    split = ok_json(*common, "--memory", suggested + "M", "--out", tmp_path / "b")["grid"]
    assert int(one["options"]["passes"]) == 1
    assert int(split["options"]["passes"]) > 1
    assert int(split["options"]["memory_budget"]) == int(suggested) * 2**20
    assert int(split["options"]["peak_memory"]) > 0
    assert split["rows"] == one["rows"] == DIGITS_LAYERS
    np.testing.assert_allclose(np.array(split["values"], dtype=float),
                               np.array(one["values"], dtype=float), rtol=1e-12, atol=0)
    fails(EXIT_USAGE, common + ["--memory", "lots", "--out", tmp_path / "c"], "--memory must be")
    fails(EXIT_USAGE, common + ["--memory", "1K", "--out", tmp_path / "c"], "at least 64M")
    assert not os.path.exists(tmp_path / "c")


def test_exclude_and_eval_mode(ok_json, tmp_path):
    grid = ok_json("grid", FINAL, "--input", PROBE, "--exclude", "conv*", "--out",
                   tmp_path / "o")["grid"]
    assert grid["rows"] == ["fc1", "fc2"]
    assert grid["options"]["mode"] == "eval" and grid["options"]["exclude"] == "conv*"


def test_minibatch_cka_streams_and_is_its_own_estimator(ok_json, tmp_path):
    # 130 examples in batches of 64: the last 2 join the batch before (minibatch-cka needs >= 4).
    common = ["grid", FINAL, "--input-shape", "130,1,8,8"]
    mb = ok_json(*common, "--measure", "minibatch-cka", "--batch-size", "64", "--out",
                 tmp_path / "a")["grid"]
    assert int(mb["options"]["passes"]) == 2  # batches
    assert "minibatch" in mb["options"]["estimator"]
    one = ok_json(*common, "--measure", "minibatch-cka", "--out", tmp_path / "b")["grid"]
    debiased = ok_json(*common, "--measure", "debiased-cka", "--out", tmp_path / "c")["grid"]
    v_mb, v_one, v_deb = (np.array(g["values"], dtype=float) for g in (mb, one, debiased))
    np.testing.assert_allclose(v_one, v_deb, rtol=1e-10, atol=1e-12)  # one batch: debiased CKA
    np.testing.assert_allclose(np.diag(v_mb), 1.0, rtol=1e-12)
    assert np.abs(v_mb - v_deb).max() > 1e-4  # two batches: a different estimate
