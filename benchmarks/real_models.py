"""svcca-inspect on real torchvision models at 224 x 224: peak memory, time, null cells, and a
plain-PyTorch baseline of the debiased-CKA grid.

    /usr/bin/python3 benchmarks/real_models.py                   # every case, full size
    /usr/bin/python3 benchmarks/real_models.py --list            # the cases and their goals
    /usr/bin/python3 benchmarks/real_models.py --cases resnet18-64-cka,baseline-resnet18-64
    /usr/bin/python3 benchmarks/real_models.py --n-override 4 --size 64   # a quick check

Models: torchvision 0.14 constructors with random weights (torch.manual_seed(0) before each),
eval mode, torch.jit.script, saved once into --cache (default /tmp/svcca-real-models) as
<model>.pt, with the inputs x_<n>.npy: [n, 3, 224, 224] float32, standard normal from
numpy.random.default_rng(0) (other sizes: x_<n>_s<size>.npy; vit_b_16 is built for the image
size, so a non-224 size gives vit_b_16_s<size>.pt).

Each case runs `svcca-inspect grid MODEL.pt --input x_N.npy --measure M [--conv C] --out DIR
--quiet --json [--extra ...]` under `/usr/bin/time -v` with OMP_NUM_THREADS=--threads, and
reports exit code, wall seconds, peak RSS (decimal GB, from "Maximum resident set size"), the
number of layers and of null cells in DIR/grid.json, and the options "passes" and "peak_memory"
of grid.json when present. The case `baseline-resnet18-64` also runs the baseline (below) under
/usr/bin/time -v on the same model and inputs, compares every cell and prints the speed ratio.

The baseline does what hook-based tools (torch_cka, CKA.pytorch) do: the eager torchvision model
with the scripted model's state_dict, forward hooks on the modules svcca-inspect reports (read
from grid.json's rows; the k-th call of a module for svcca's "<name>#k", cloned, as svcca's
capture records it),
one forward in eval mode under torch.no_grad(), each output flattened to [n, -1] float32, and for
every pair of layers the two n x n Gram matrices K = X X^T, L = Y Y^T recomputed, then debiased
CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) with Song et al.'s unbiased HSIC_1. Float32,
torch.set_num_threads(--threads), no Gram reused across pairs. It computes the upper triangle
with the diagonal and mirrors it (the peers loop over all L x L pairs, twice the work).

Results go to --results (default benchmarks/out/real_models.json) as JSON, one object per case.
Exit status: 0 once every selected case has run, whatever its goals (read the table); 2 on a
usage error (an unknown case, no svcca-inspect). A command that dies still leaves its row; when
it wrote grid.json before dying, the grid is read anyway ("grid_despite_exit").
"""
import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(_HERE, ".."))
# The first that exists (the build tree has had both layouts).
CLI_CANDIDATES = [os.path.join(ROOT, "build", "tools", "inspect", "svcca-inspect"),
                  os.path.join(ROOT, "build", "tools", "svcca-inspect")]
DEFAULT_CLI = next((c for c in CLI_CANDIDATES if os.access(c, os.X_OK)), CLI_CANDIDATES[0])
DEFAULT_CACHE = "/tmp/svcca-real-models"
DEFAULT_RESULTS = os.path.join(_HERE, "out", "real_models.json")
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "vit_b_16"]
FULL_SIZE = 224


class Case:
    """One svcca-inspect grid run and its goal.

    goal_gb: peak RSS limit (decimal GB), or None for "completes". null_layers: layers whose
    rows and columns must be null (a constant output). baseline: also run and compare the
    plain-PyTorch baseline (goal: max abs diff <= 1e-3, svcca >= 10x faster).
    """

    def __init__(self, name, model, n, measure, conv=None, goal_gb=None, null_layers=(),
                 baseline=False):
        self.name, self.model, self.n, self.measure, self.conv = name, model, n, measure, conv
        self.goal_gb, self.null_layers, self.baseline = goal_gb, list(null_layers), baseline

    def goal_text(self):
        parts = []
        if self.goal_gb is not None:
            parts.append("peak RSS <= %g GB" % self.goal_gb)
        else:
            parts.append("completes")
        if self.null_layers:
            parts.append("%s null" % ",".join(self.null_layers))
        if self.baseline:
            parts.append("cells within %g of the float64 reference, same nulls, >= %gx "
                         "faster than the baseline" % (BASELINE_TOL, BASELINE_SPEEDUP))
        return "; ".join(parts)


BASELINE_TOL = 1e-3
BASELINE_SPEEDUP = 10.0

CASES = [
    Case("resnet18-64-cka", "resnet18", 64, "cka", goal_gb=4),
    Case("resnet18-64-debiased-cka", "resnet18", 64, "debiased-cka", goal_gb=4),
    Case("resnet18-512-cka", "resnet18", 512, "cka", goal_gb=8),
    Case("resnet50-256-cka", "resnet50", 256, "cka", goal_gb=8),
    Case("resnet50-256-svcca", "resnet50", 256, "svcca", goal_gb=8),
    Case("mobilenet_v2-64-cka-pool", "mobilenet_v2", 64, "cka", conv="pool", goal_gb=4),
    Case("densenet121-64-cka-pool", "densenet121", 64, "cka", conv="pool", goal_gb=4),
    Case("vit_b_16-64-cka", "vit_b_16", 64, "cka", null_layers=["heads.head"]),
    Case("baseline-resnet18-64", "resnet18", 64, "debiased-cka", baseline=True),
]


# ---- the cache: scripted models and inputs ----------------------------------------------------
def model_path(cache, model, size):
    # Only the ViT depends on the image size (its position embedding is built for it).
    suffix = "_s%d" % size if model == "vit_b_16" and size != FULL_SIZE else ""
    return os.path.join(cache, model + suffix + ".pt")


def input_path(cache, n, size):
    suffix = "" if size == FULL_SIZE else "_s%d" % size
    return os.path.join(cache, "x_%d%s.npy" % (n, suffix))


def build_eager(model, size):
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs = {"image_size": size} if model == "vit_b_16" else {}
    return getattr(torchvision.models, model)(weights=None, **kwargs).eval()


def ensure_model(cache, model, size, log):
    """Writes the scripted model once (atomically) and returns its path and how it was made."""
    import torch

    path = model_path(cache, model, size)
    how_path = path + ".how"
    if os.path.exists(path):
        how = "script"
        if os.path.exists(how_path):
            with open(how_path) as f:
                how = f.read().strip() or how
        return path, how
    os.makedirs(cache, exist_ok=True)
    eager = build_eager(model, size)
    try:
        saved, how = torch.jit.script(eager), "script"
    except Exception as e:  # torchvision 0.14 scripts all five; keep a fallback for others
        log("  %s: torch.jit.script failed (%s); tracing instead" % (model, str(e)[:200]))
        with torch.no_grad():
            saved, how = torch.jit.trace(eager, torch.randn(1, 3, size, size)), "trace"
    tmp = path + ".tmp%d" % os.getpid()
    saved.save(tmp)
    os.replace(tmp, path)
    with open(how_path, "w") as f:
        f.write(how + "\n")
    log("  wrote %s (%s, %.0f MB)" % (path, how, os.path.getsize(path) / 1e6))
    return path, how


def ensure_input(cache, n, size, log):
    path = input_path(cache, n, size)
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    x = np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32)
    tmp = path + ".tmp%d.npy" % os.getpid()
    np.save(tmp, x)
    os.replace(tmp, path)
    log("  wrote %s (%.0f MB)" % (path, os.path.getsize(path) / 1e6))
    return path


# ---- running a command under /usr/bin/time -v -------------------------------------------------
def parse_time_v(text):
    """The fields of GNU time -v we report: peak RSS (kB), wall, user and system seconds."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    if m:
        out["peak_rss_kb"] = int(m.group(1))
        out["peak_rss_gb"] = int(m.group(1)) * 1024 / 1e9
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)", text)
    if m:
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["wall_s"] = secs
    for key, field in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)")):
        m = re.search(re.escape(field) + r":\s*([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Command terminated by signal (\d+)", text)
    if m:
        out["signal"] = int(m.group(1))
    return out


def group_rss_bytes(pgid):
    """Resident memory of every process in the process group `pgid` (from /proc)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            # pgrp is the 3rd field after the ")" that ends the command name
            if int(stat[stat.rindex(")") + 2:].split()[2]) != pgid:
                continue
            with open("/proc/%s/statm" % entry) as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def timed_run(cmd, env, timeout, tag_dir, max_rss_gb=0):
    """Runs cmd under /usr/bin/time -v (its report in a file of its own, so the command's stderr
    stays apart). Returns the exit code, stdout, stderr and the time -v fields. A watchdog kills
    the command's process group when its resident memory passes max_rss_gb (0: no watchdog):
    the machine has no swap, and an OOM kill could take another process with it."""
    os.makedirs(tag_dir, exist_ok=True)
    time_file = os.path.join(tag_dir, "time-v.txt")
    full = ["/usr/bin/time", "-v", "-o", time_file] + cmd
    t0 = time.monotonic()
    p = subprocess.Popen(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    killed = {}
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            rss = group_rss_bytes(p.pid)
            killed["seen_rss_gb"] = max(killed.get("seen_rss_gb", 0.0), rss / 1e9)
            if max_rss_gb and rss > max_rss_gb * 1e9:
                killed["watchdog_rss_gb"] = rss / 1e9
                _kill_group(p.pid)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)
        stdout, stderr = p.communicate()
        rc = "timeout"
    done.set()
    watcher.join()
    wall_outer = time.monotonic() - t0
    tv = {}
    if os.path.exists(time_file):
        with open(time_file) as f:
            tv = parse_time_v(f.read())
    tv.setdefault("wall_s", wall_outer)
    seen = killed.pop("seen_rss_gb", None)
    if "peak_rss_gb" not in tv and seen is not None:
        tv["peak_rss_gb"] = seen  # time -v was killed too: the watchdog's largest sample
    if killed:
        tv.update(killed)
        rc = "killed (RSS > %g GB)" % max_rss_gb
    return rc, stdout, stderr, tv


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)  # the group of the one command this script started
    except ProcessLookupError:
        pass


def child_env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env.pop("OPENBLAS_NUM_THREADS", None)
    return env


# ---- reading grid.json ------------------------------------------------------------------------
def read_grid(out_dir):
    path = os.path.join(out_dir, "grid.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def grid_values(grid):
    """values as a float64 array with NaN for null."""
    return np.array([[np.nan if v is None else v for v in row] for row in grid["values"]],
                    dtype=np.float64)


def grid_summary(grid):
    v = grid_values(grid)
    options = grid.get("options", {})
    s = {
        "rows": len(grid["rows"]),
        "cols": len(grid["cols"]),
        "null_cells": int(np.isnan(v).sum()),
        "cells": int(v.size),
        "measure": grid.get("measure"),
        "examples": grid.get("examples"),
        "options": options,
    }
    for key in ("passes", "peak_memory"):
        if key in options:
            s[key] = options[key]
    if "undefined" in grid:  # causes of the null cells, when the CLI writes them
        s["undefined"] = grid["undefined"]
    return s


def null_rows_ok(grid, layers):
    """Every cell in the rows and columns of `layers` is null; returns (ok, message)."""
    v = grid_values(grid)
    bad = []
    for name in layers:
        if name not in grid["rows"]:
            bad.append("%s is not a row" % name)
            continue
        i = grid["rows"].index(name)
        defined = int((~np.isnan(v[i, :])).sum())
        if name in grid["cols"]:
            defined += int((~np.isnan(v[:, grid["cols"].index(name)])).sum())
        if defined:
            bad.append("%s has %d defined cells" % (name, defined))
    return not bad, "; ".join(bad) if bad else "null as expected"


# ---- the baseline (a child process: --baseline-worker) ----------------------------------------
def debiased_cka_gram(K, L):
    """Debiased CKA from two n x n Gram matrices (Song et al. 2012's unbiased HSIC_1; the
    U-centering form: zero the diagonal, then the closed form)."""
    import torch

    n = K.shape[0]

    def hsic1(A, B):
        # tr(A B) = sum(A * B) for symmetric A, B; 1^T A B 1 = (A 1) . (B 1).
        a1, b1 = A.sum(1), B.sum(1)
        return ((A * B).sum() + a1.sum() * b1.sum() / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * torch.dot(a1, b1)) / (n * (n - 3))

    K = K.clone()
    L = L.clone()
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    return hsic1(K, L) / torch.sqrt(hsic1(K, K) * hsic1(L, L))


def baseline_worker(args):
    """Runs in its own process, under /usr/bin/time -v. Writes the grid and timings as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.baseline_dtype)
    t_start = time.monotonic()
    with open(args.layers_file) as f:
        names = json.load(f)
    eager = build_eager(args.model, args.size)
    scripted = torch.jit.load(args.model_file)
    eager.load_state_dict(scripted.state_dict(), strict=True)  # the very weights svcca sees
    del scripted
    modules = dict(eager.named_modules())
    store = {}

    def hook_for(name, element, call):
        seen = [0]

        def hook(module, inputs, output):
            # svcca names the k-th call of a module called more than once "<name>#k"; a plain
            # name is the only call.
            seen[0] += 1
            if seen[0] != call:
                return
            value = output if element is None else output[element]
            # A copy: a later in-place op (ReLU(inplace=True) after a BatchNorm) rewrites the
            # module's output tensor after the hook has run.
            store[name] = value.detach().clone().reshape(value.shape[0], -1).to(dtype)
        return hook

    handles = []
    for name in names:
        base, element, call = name, None, 1
        c = re.fullmatch(r"(.*)#(\d+)", name)
        if c:
            base, call = c.group(1), int(c.group(2))
        m = re.fullmatch(r"(.*?)((?::\d+)+)", base)
        if m:  # "<path>:<i>": element i of a tuple output (one level; nested ones are rare)
            base = m.group(1)
            idx = [int(i) for i in m.group(2).split(":")[1:]]
            element = idx[0] if len(idx) == 1 else None
            if len(idx) > 1:
                raise SystemExit("baseline: nested tuple records (%s) are not supported" % name)
        if base not in modules:
            raise SystemExit("baseline: svcca's layer %r is no module of the eager model" % name)
        handles.append(modules[base].register_forward_hook(hook_for(name, element, call)))

    x = torch.from_numpy(np.load(args.input_file))
    t_forward = time.monotonic()
    with torch.no_grad():
        eager(x)
    for h in handles:
        h.remove()
    t_grid = time.monotonic()
    missing = [nm for nm in names if nm not in store]
    if missing:
        raise SystemExit("baseline: no hook output for %s" % ", ".join(missing))
    acts = [store[nm] for nm in names]
    count = len(acts)
    values = np.full((count, count), np.nan)
    with torch.no_grad():
        for i in range(count):
            for j in range(i, count):
                X, Y = acts[i], acts[j]
                K = X @ X.T  # recomputed for every pair, as the hook-based tools do
                L = Y @ Y.T
                v = float(debiased_cka_gram(K, L))
                values[i, j] = values[j, i] = v
    t_end = time.monotonic()
    # Not timed, not part of the baseline: the same cells in float64 from the same float32
    # activations (each Gram once, features centered first: HSIC_1 does not change, since
    # U-centering removes the terms a shift adds to K, but much less cancels), to tell the
    # baseline's float32 rounding from a real difference between it and svcca.
    with torch.no_grad():
        grams = []
        for X in acts:
            X = X.double()
            X = X - X.mean(0)
            grams.append(X @ X.T)
        del X
        reference = np.full((count, count), np.nan)
        for i in range(count):
            for j in range(i, count):
                reference[i, j] = reference[j, i] = float(debiased_cka_gram(grams[i], grams[j]))
    t_ref = time.monotonic()
    clean = lambda a: [[None if not math.isfinite(v) else v for v in row] for row in a.tolist()]
    result = {
        "layers": names,
        "values": clean(values),
        "reference_float64": clean(reference),
        "reference_s": t_ref - t_end,
        "setup_s": t_forward - t_start,
        "forward_s": t_grid - t_forward,
        "grid_s": t_end - t_grid,
        "pairs": count * (count + 1) // 2,
        "torch_threads": torch.get_num_threads(),
        "dtype": args.baseline_dtype,
    }
    with open(args.baseline_out, "w") as f:
        json.dump(result, f)
    return 0


def run_baseline(case, cli_summary, grid, model_file, input_file, size, args, work):
    """Runs the baseline worker on svcca's layers and compares it with svcca's grid."""
    layers_file = os.path.join(work, "layers.json")
    with open(layers_file, "w") as f:
        json.dump(grid["rows"], f)
    out_file = os.path.join(work, "baseline.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--baseline-worker",
           "--model", case.model, "--model-file", model_file, "--input-file", input_file,
           "--size", str(size), "--layers-file", layers_file, "--baseline-out", out_file,
           "--threads", str(args.threads), "--baseline-dtype", args.baseline_dtype]
    rc, stdout, stderr, tv = timed_run(cmd, child_env(args.threads), args.timeout,
                                       os.path.join(work, "baseline-time"), args.max_rss)
    res = {"command": " ".join(shlex.quote(c) for c in cmd), "exit": rc,
           "wall_s": tv.get("wall_s"), "peak_rss_gb": tv.get("peak_rss_gb"),
           "user_s": tv.get("user_s"), "sys_s": tv.get("sys_s")}
    if rc != 0 or not os.path.exists(out_file):
        res["stderr"] = stderr[-2000:]
        return res
    with open(out_file) as f:
        b = json.load(f)
    res.update({k: b[k] for k in ("setup_s", "forward_s", "grid_s", "pairs", "torch_threads",
                                  "dtype")})
    sv = grid_values(grid)
    as_array = lambda rows: np.array([[np.nan if v is None else v for v in row] for row in rows])
    bv = as_array(b["values"])
    rv = as_array(b["reference_float64"])

    def max_diff(a, c):
        both = ~np.isnan(a) & ~np.isnan(c)
        if not both.any():
            return None, None
        d = np.where(both, np.abs(a - c), -1.0)
        i, j = np.unravel_index(np.argmax(d), d.shape)
        return float(d[i, j]), [grid["rows"][i], grid["cols"][j]]

    res["max_abs_diff"], res["max_abs_diff_at"] = max_diff(sv, bv)
    # Where the difference comes from: svcca against the float64 reference (same activations,
    # same formula), and the float32 baseline against it (its own rounding).
    res["svcca_vs_float64"], res["svcca_vs_float64_at"] = max_diff(sv, rv)
    res["baseline_vs_float64"], res["baseline_vs_float64_at"] = max_diff(bv, rv)
    res["reference_s"] = b.get("reference_s")
    # The reference is no part of the baseline: its time comes off the process's wall time.
    res["process_wall_s"] = res["wall_s"]
    res["wall_s"] = res["wall_s"] - (b.get("reference_s") or 0.0)
    rows = grid["rows"]
    pairs = lambda mask: [[rows[i], rows[j]] for i, j in zip(*np.nonzero(mask)) if i <= j]
    res["svcca_null_cells"] = int(np.isnan(sv).sum())
    res["baseline_nan_cells"] = int(np.isnan(bv).sum())
    # svcca null but baseline finite, and the other way round (upper triangle, names).
    res["null_in_svcca_only"] = pairs(np.isnan(sv) & ~np.isnan(bv))
    res["nan_in_baseline_only"] = pairs(~np.isnan(sv) & np.isnan(bv))
    res["null_in_both"] = pairs(np.isnan(sv) & np.isnan(bv))
    res["null_vs_float64_differ"] = pairs(np.isnan(sv) != np.isnan(rv))
    if cli_summary.get("wall_s"):
        res["speedup"] = res["wall_s"] / cli_summary["wall_s"]
    return res


# ---- the cases --------------------------------------------------------------------------------
def run_case(case, args, log):
    n = args.n_override or case.n
    size = args.size
    res = {"case": case.name, "model": case.model, "n": n, "size": size, "measure": case.measure,
           "conv": case.conv, "goal": case.goal_text(), "threads": args.threads}
    model_file, how = ensure_model(args.cache, case.model, size, log)
    input_file = ensure_input(args.cache, n, size, log)
    res["model_file"], res["export"], res["input_file"] = model_file, how, input_file
    work = os.path.join(args.work, case.name)
    shutil.rmtree(work, ignore_errors=True)
    out_dir = os.path.join(work, "grid")
    cmd = [args.cli, "grid", model_file, "--input", input_file, "--measure", case.measure]
    if case.conv:
        cmd += ["--conv", case.conv]
    cmd += ["--out", out_dir, "--quiet", "--json"] + args.extra
    res["command"] = " ".join(shlex.quote(c) for c in cmd)
    log("  %s" % res["command"])
    rc, stdout, stderr, tv = timed_run(cmd, child_env(args.threads), args.timeout,
                                       os.path.join(work, "time"), args.max_rss)
    res.update({"exit": rc, "wall_s": tv.get("wall_s"), "peak_rss_gb": tv.get("peak_rss_gb"),
                "user_s": tv.get("user_s"), "sys_s": tv.get("sys_s")})
    if "signal" in tv:
        res["signal"] = tv["signal"]
    if stderr.strip():
        res["stderr"] = stderr.strip()[-2000:]
    # The CLI writes grid.json (to a temporary name, then renamed) before it prints the report,
    # so a grid can be there after a crash at the end: read it anyway (the case still fails).
    grid = read_grid(out_dir)
    if grid is not None:
        res["grid"] = grid_summary(grid)
        if rc != 0:
            res["grid_despite_exit"] = True

    failures = []
    if rc != 0:
        failures.append("exit %s" % rc)
    elif grid is None:
        failures.append("no grid.json")
    if case.goal_gb is not None and (res["peak_rss_gb"] is None
                                     or res["peak_rss_gb"] > case.goal_gb):
        failures.append("peak RSS %s GB > %g" % (fmt(res["peak_rss_gb"], 2), case.goal_gb))
    if grid is not None and case.null_layers:
        ok, msg = null_rows_ok(grid, case.null_layers)
        res["null_layers_check"] = msg
        if not ok:
            failures.append(msg)
    if case.baseline and grid is not None:
        log("  baseline: %d layers, %d pairs" % (len(grid["rows"]),
                                                  len(grid["rows"]) * (len(grid["rows"]) + 1) // 2))
        b = run_baseline(case, res, grid, model_file, input_file, size, args, work)
        res["baseline"] = b
        if b.get("exit") != 0 or "max_abs_diff" not in b:
            failures.append("baseline failed (exit %s)" % b.get("exit"))
        else:
            key, what = (("svcca_vs_float64", "vs float64 reference")
                         if args.accuracy_against == "float64" else ("max_abs_diff", "vs baseline"))
            b["accuracy_goal"] = "max |svcca - %s| <= %g" % (
                "float64 reference" if key == "svcca_vs_float64" else "float32 baseline",
                BASELINE_TOL)
            if b[key] is None or b[key] > BASELINE_TOL:
                failures.append("max |diff| %s %s > %g" % (what, fmt(b[key], 2, "e"),
                                                           BASELINE_TOL))
            if b["null_in_svcca_only"] or b["nan_in_baseline_only"]:
                failures.append("null cells differ (%d svcca only, %d baseline only)" % (
                    len(b["null_in_svcca_only"]), len(b["nan_in_baseline_only"])))
            if b["null_vs_float64_differ"]:
                failures.append("null cells differ from the float64 reference's NaNs (%d)" %
                                len(b["null_vs_float64_differ"]))
            if b.get("speedup") is None or b["speedup"] < BASELINE_SPEEDUP:
                failures.append("speed-up %sx < %gx" % (fmt(b.get("speedup"), 1),
                                                         BASELINE_SPEEDUP))
    res["pass"] = not failures
    res["failures"] = failures
    if args.n_override or size != FULL_SIZE:
        res["note"] = "sizes overridden (n=%d, %dx%d): goals are for the full-size case" % (
            n, size, size)
    return res


def default_max_rss():
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1))
        return round(0.75 * kb * 1024 / 1e9, 1)
    except (OSError, AttributeError):
        return 0.0


def fmt(x, digits, kind="f"):
    if x is None:
        return "-"
    return ("%." + str(digits) + kind) % x


def print_table(results, out=sys.stdout):
    head = ["case", "exit", "wall s", "peak GB", "layers", "null", "passes", "peak_memory",
            "goal", "result"]
    rows = []
    for r in results:
        g = r.get("grid", {})
        rows.append([r["case"], str(r.get("exit")), fmt(r.get("wall_s"), 1),
                     fmt(r.get("peak_rss_gb"), 2), str(g.get("rows", "-")),
                     str(g.get("null_cells", "-")), str(g.get("passes", "-")),
                     str(g.get("peak_memory", "-")), r["goal"],
                     "PASS" if r["pass"] else "FAIL: " + "; ".join(r["failures"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(head), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in rows:
        print(line(row), file=out)
    for r in results:
        b = r.get("baseline")
        if not b:
            continue
        print("\n%s: svcca-inspect %s s, %s GB; baseline %s s (setup %s, forward %s, grid %s: "
              "%s pairs), %s GB; speed-up %sx; max |diff| %s at %s (svcca vs float64 "
              "reference %s, baseline vs float64 reference %s); null cells svcca %s, "
              "baseline NaN %s, svcca-only %s, baseline-only %s" % (
                  r["case"], fmt(r.get("wall_s"), 2), fmt(r.get("peak_rss_gb"), 2),
                  fmt(b.get("wall_s"), 2), fmt(b.get("setup_s"), 1), fmt(b.get("forward_s"), 1),
                  fmt(b.get("grid_s"), 1), b.get("pairs", "-"), fmt(b.get("peak_rss_gb"), 2),
                  fmt(b.get("speedup"), 1), fmt(b.get("max_abs_diff"), 2, "e"),
                  b.get("max_abs_diff_at", "-"), fmt(b.get("svcca_vs_float64"), 2, "e"),
                  fmt(b.get("baseline_vs_float64"), 2, "e"), b.get("svcca_null_cells", "-"),
                  b.get("baseline_nan_cells", "-"), b.get("null_in_svcca_only", "-"),
                  b.get("nan_in_baseline_only", "-")), file=out)
    for r in results:
        if r.get("note"):
            print("\nnote: " + r["note"], file=out)
            break


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cli", default=os.environ.get("SVCCA_INSPECT", DEFAULT_CLI),
                   help="svcca-inspect executable (default: $SVCCA_INSPECT or %(default)s)")
    p.add_argument("--cache", default=DEFAULT_CACHE,
                   help="folder for the scripted models and inputs (default %(default)s)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="JSON results (default %(default)s)")
    p.add_argument("--work", default=None,
                   help="folder for the grid outputs (default: <cache>/runs)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and their goals")
    p.add_argument("--threads", type=int, default=2,
                   help="OMP_NUM_THREADS for svcca-inspect, torch threads for the baseline")
    p.add_argument("--extra", action="append", default=[],
                   help="extra svcca-inspect grid arguments, shell-quoted, e.g. "
                        "--extra='--memory 4G' (repeatable)")
    p.add_argument("--n-override", type=int, default=0, help="use this n for every case")
    p.add_argument("--size", type=int, default=FULL_SIZE, help="image size (default 224)")
    p.add_argument("--max-rss", type=float, default=default_max_rss(),
                   help="kill a command whose resident memory passes this many GB (0: never; "
                        "default 75%% of MemTotal, %(default).1f here: there is no swap)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per command")
    p.add_argument("--prepare", action="store_true",
                   help="only write the models and inputs of the selected cases")
    p.add_argument("--accuracy-against", default="float64", choices=["float64", "baseline"],
                   help="what svcca's cells must be within %g of: the float64 reference of the "
                        "baseline process (default) or the float32 baseline itself" % BASELINE_TOL)
    p.add_argument("--baseline-dtype", default="float32", choices=["float32", "float64"],
                   help="the baseline's dtype (default float32, as the peers; float64 only to "
                        "tell float32 rounding from a real difference)")
    # the baseline child process
    p.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--model", "--model-file", "--input-file", "--layers-file", "--baseline-out"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.baseline_worker:
        return baseline_worker(args)

    args.extra = [a for text in args.extra for a in shlex.split(text)]
    if args.list:
        for c in CASES:
            print("%-26s %-13s n=%-4d %-13s conv=%-6s goal: %s" % (
                c.name, c.model, c.n, c.measure, c.conv or "auto", c.goal_text()))
        return 0
    cases = CASES
    if args.cases:
        wanted = [s.strip() for s in args.cases.split(",") if s.strip()]
        known = {c.name: c for c in CASES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            p.error("unknown case(s) %s; --list shows them" % ", ".join(unknown))
        cases = [known[w] for w in wanted]
    args.work = args.work or os.path.join(args.cache, "runs")
    log = lambda s: print(s, file=sys.stderr, flush=True)

    if args.prepare:
        for c in cases:
            ensure_model(args.cache, c.model, args.size, log)
            ensure_input(args.cache, args.n_override or c.n, args.size, log)
        return 0
    if not os.access(args.cli, os.X_OK):
        p.error("svcca-inspect not found at %s (--cli or $SVCCA_INSPECT)" % args.cli)

    results = []
    for c in cases:
        log("%s (%s)" % (c.name, c.goal_text()))
        results.append(run_case(c, args, log))
        r = results[-1]
        log("  exit %s, %s s, %s GB: %s" % (r["exit"], fmt(r["wall_s"], 1),
                                           fmt(r["peak_rss_gb"], 2),
                                           "PASS" if r["pass"] else "FAIL " + "; ".join(
                                               r["failures"])))
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:  # after every case, so a long run keeps its results
            json.dump({"cli": args.cli, "threads": args.threads, "extra": args.extra,
                       "results": results}, f, indent=2)
    print_table(results)
    print("\nresults: %s" % args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
