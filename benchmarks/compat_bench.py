#!/usr/bin/env python3
"""svcca's google/svcca-compatible entry points against the numpy formulas they replace, timed.

One process, the same float64 data, the same BLAS (numpy and torch both load Debian's
libblas.so.3, OpenBLAS) and the same thread count on both sides. Per shape and measure: the best
of N wall times of the reference (benchmarks/reference_numpy.py) and of svcca, the ratio
reference / svcca against the issue's goal, and the largest absolute difference of the outputs,
so that a run also shows the numbers agree. See benchmarks/README.md.

    PYTHONPATH=build/torch_ext/python /usr/bin/python3 benchmarks/compat_bench.py --shapes small

Exit status 1 when some difference exceeds its bound (a goal that is missed is only reported).
"""
import argparse
import json
import os
import sys
import time

SHAPES = {
    # name: (neurons of acts1, neurons of acts2, datapoints)
    "small": (384, 512, 20000),
    "big": (1024, 1024, 50000),
}
# Per row: the goal for (reference time) / (svcca time), and the bound on the largest
# absolute difference of the outputs compared (float64 after SVD/QR; qr_cca's 1e-10 is the issue's).
GOALS = {"get_cca_similarity": 1.1, "compute_pwcca": 2.5, "svcca": 10.0, "qr_cca": 2.0}
BOUNDS = {"get_cca_similarity": 1e-8, "compute_pwcca": 1e-8, "svcca": 1e-8, "qr_cca": 1e-10}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2,
                   help="BLAS and torch threads on both sides (default 2)")
    p.add_argument("--shapes", default="small,big",
                   help="comma-separated subset of: %s (default small,big)" % ",".join(SHAPES))
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per side at the small shape; the best counts (default 3)")
    p.add_argument("--big-repeats", type=int, default=1,
                   help="timed calls per side at the big shape (default 1)")
    p.add_argument("--rows", default="get_cca_similarity,compute_pwcca,svcca,qr_cca",
                   help="comma-separated subset of the rows (default all)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.rows = [r for r in args.rows.split(",") if r]
    for s in args.shapes:
        if s not in SHAPES:
            p.error("unknown shape %r (known: %s)" % (s, ", ".join(SHAPES)))
    for r in args.rows:
        if r not in GOALS:
            p.error("unknown row %r (known: %s)" % (r, ", ".join(GOALS)))
    if args.threads < 1 or args.repeats < 1 or args.big_repeats < 1:
        p.error("--threads, --repeats and --big-repeats must be >= 1")
    return args


ARGS = parse_args(sys.argv[1:])
# Before numpy and torch are imported: OpenBLAS sizes its pool when the library loads.
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import ctypes  # noqa: E402
import gc  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)

import svcca  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_numpy as ref  # noqa: E402


def make_layers(nx, ny, m, seed):
    """acts1: [nx, m], acts2: [ny, m], float64: mixings of one shared latent (nx/8 dimensions,
    decaying scales 3 .. 0.3) plus unit noise and per-neuron offsets, so the leading canonical
    correlations are high and the rest are not."""
    rng = np.random.default_rng(seed)
    d = max(8, min(nx, ny) // 8)
    latent = rng.standard_normal((d, m)) * np.linspace(3.0, 0.3, d)[:, None]
    layers = []
    for n in (nx, ny):
        acts = rng.standard_normal((n, m))
        acts += (rng.standard_normal((n, d)) / np.sqrt(d)) @ latent
        acts += rng.standard_normal((n, 1))
        layers.append(acts)
    return layers


def best_time(fn, repeats):
    """(best wall seconds of `repeats` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        out = None
        gc.collect()
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def max_abs(a, b):
    a = a.detach().cpu().double().numpy() if torch.is_tensor(a) else np.asarray(a, np.float64)
    b = b.detach().cpu().double().numpy() if torch.is_tensor(b) else np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")  # a shape mismatch is a mismatch
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def row_specs(acts1, acts2, x, y, t1, t2):
    """name -> (reference call, svcca call or None when missing, compare(ref_out, our_out) ->
    (max abs difference, what was compared))."""
    specs = {}

    def cmp_cca(r, o):
        return max_abs(r["cca_coef1"], o["cca_coef1"]), "cca_coef1"
    specs["get_cca_similarity"] = (lambda: ref.get_cca_similarity(acts1, acts2),
                                   lambda: svcca.get_cca_similarity(t1, t2), cmp_cca)

    def cmp_pwcca(r, o):
        return (max(max_abs(r[0], o[0]), max_abs(r[1], o[1]), max_abs(r[2], o[2])),
                "pwcca value, weights, coefs")
    specs["compute_pwcca"] = (lambda: ref.compute_pwcca(acts1, acts2),
                              lambda: svcca.compute_pwcca(t1, t2), cmp_pwcca)

    def cmp_svcca(r, o):
        return (max(max_abs(r["svcca_score"], o["svcca_score"]),
                    max_abs(r["cca_coef1"], o["cca_coef1"])), "svcca_score, cca_coef1")
    ours = getattr(svcca, "get_svcca_similarity", None)
    specs["svcca"] = (lambda: ref.svcca_recipe(acts1, acts2, dims1=20, epsilon=1e-10),
                      None if ours is None else
                      (lambda: ours(t1, t2, dims1=20, dims2=None, epsilon=1e-10,
                                    threshold=0.98)),
                      cmp_svcca)

    def cmp_qr(r, o):
        return max_abs(r, o[0]), "canonical correlations"
    specs["qr_cca"] = (lambda: ref.qr_cca(x, y), lambda: svcca.cca(x, y), cmp_qr)
    return specs


SIDES = {
    "get_cca_similarity": ("numpy get_cca_similarity", "svcca.get_cca_similarity"),
    "compute_pwcca": ("numpy compute_pwcca", "svcca.compute_pwcca"),
    "svcca": ("numpy svcca_recipe (dims 20)", "svcca.get_svcca_similarity"),
    "qr_cca": ("torch qr_cca", "svcca.cca"),
}


def blas_info():
    """The BLAS/LAPACK files mapped into this process and OpenBLAS's own core name."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(k in os.path.basename(path) for k in ("blas", "lapack")):
                libs.add(os.path.realpath(path))
    core = None
    try:
        blas = ctypes.CDLL("libblas.so.3")
        blas.openblas_get_corename.restype = ctypes.c_char_p
        core = blas.openblas_get_corename().decode()
    except (OSError, AttributeError):
        pass
    return sorted(libs), core


def header():
    libs, core = blas_info()
    return {
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset: auto-detected)"),
        "openblas_corename": core,
        "threads": ARGS.threads,
        "OPENBLAS_NUM_THREADS": os.environ["OPENBLAS_NUM_THREADS"],
        "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
        "torch_num_threads": torch.get_num_threads(),
        "blas_libraries": libs,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "svcca_library": svcca.library_path,
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seed": ARGS.seed,
    }


def warm_up():
    """First calls carry one-off costs (thread pools, the op library's first dispatch)."""
    a1, a2 = make_layers(24, 32, 200, seed=1)
    specs = row_specs(a1, a2, torch.from_numpy(a1.T.copy()), torch.from_numpy(a2.T.copy()),
                      torch.from_numpy(a1), torch.from_numpy(a2))
    for name in ARGS.rows:
        reference, ours, _ = specs[name]
        reference()
        if ours is not None:
            ours()


def main():
    info = header()
    print("compat_bench: OPENBLAS_CORETYPE=%s (OpenBLAS core %s), threads %d (OPENBLAS_NUM_THREADS"
          "=%s, OMP_NUM_THREADS=%s, torch %d), load average %s"
          % (info["OPENBLAS_CORETYPE"], info["openblas_corename"], info["threads"],
             info["OPENBLAS_NUM_THREADS"], info["OMP_NUM_THREADS"], info["torch_num_threads"],
             " ".join(str(v) for v in info["load_average"])))
    print("BLAS in this process: %s" % ", ".join(info["blas_libraries"]))
    print("numpy %s, torch %s, %s" % (info["numpy"], info["torch"], info["svcca_library"]))
    warm_up()

    rows, bad = [], []
    fmt = "%-6s %-19s %-28s %10s %-27s %10s %8s %6s %-5s %9s  %s"
    print()
    print(fmt % ("shape", "row", "reference", "ref s", "svcca", "svcca s", "ratio", "goal",
                 "met", "max |d|", "compared"))
    for shape in ARGS.shapes:
        nx, ny, m = SHAPES[shape]
        repeats = ARGS.big_repeats if shape == "big" else ARGS.repeats
        acts1, acts2 = make_layers(nx, ny, m, ARGS.seed)
        t1, t2 = torch.from_numpy(acts1), torch.from_numpy(acts2)  # shared memory, no copy
        x, y = torch.from_numpy(acts1.T.copy()), torch.from_numpy(acts2.T.copy())  # [m, n]
        specs = row_specs(acts1, acts2, x, y, t1, t2)
        label = "%dx%d vs %dx%d" % (nx, m, ny, m)
        for name in ARGS.rows:
            reference, ours, compare = specs[name]
            ref_s, ref_out = best_time(reference, repeats)
            row = {"shape": shape, "sizes": label, "row": name, "reference": SIDES[name][0],
                   "svcca": SIDES[name][1], "repeats": repeats, "reference_s": ref_s,
                   "goal": GOALS[name], "bound": BOUNDS[name]}
            if ours is None:
                row.update(svcca_s=None, ratio=None, goal_met=None, max_abs_diff=None,
                           compared=None, numbers_match=None, missing=True)
                print(fmt % (shape, name, SIDES[name][0], "%.3f" % ref_s, SIDES[name][1],
                             "missing", "-", "%.1fx" % GOALS[name], "-", "-", "-"))
            else:
                our_s, our_out = best_time(ours, repeats)
                diff, compared = compare(ref_out, our_out)
                ratio = ref_s / our_s
                row.update(svcca_s=our_s, ratio=ratio, goal_met=ratio >= GOALS[name],
                           max_abs_diff=diff, compared=compared,
                           numbers_match=diff <= BOUNDS[name], missing=False)
                if not row["numbers_match"]:
                    bad.append("%s/%s: max |d| %.3g > %.0e" % (shape, name, diff, BOUNDS[name]))
                print(fmt % (shape, name, SIDES[name][0], "%.3f" % ref_s, SIDES[name][1],
                             "%.3f" % our_s, "%.2fx" % ratio, "%.1fx" % GOALS[name],
                             "yes" if row["goal_met"] else "no", "%.2e" % diff,
                             compared + ("" if row["numbers_match"] else
                                         "  EXCEEDS %.0e" % BOUNDS[name])))
            sys.stdout.flush()
            rows.append(row)
            ref_out = our_out = None
        print("       (%s: best of %d, shared-latent data, seed %d)" % (label, repeats, ARGS.seed))
        del acts1, acts2, t1, t2, x, y, specs
        gc.collect()

    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"header": info, "rows": rows}, f, indent=2)
            f.write("\n")
    if bad:
        print("numbers differ beyond their bounds: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
