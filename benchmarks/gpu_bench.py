"""GPU timings of the svcca Python package, each checked against a CPU float64 computation.

Two parts, each case recorded on its own (a failing case does not stop the others):

* matrix: cca, svcca, pwcca and linear CKA at ``[n, p]`` (default ``[50000, 1024]``) in float32
  and float64 on the GPU, against the three covariance products in float64 on the same tensors
  (``ratio``, as ``svcca_cca_bench``'s ``x_prod_f64``). The check: the same call on the first
  ``--check-rows`` rows on the GPU against the CPU on those rows in float64.
* resnet18: ``svcca.module_grid`` of torchvision's resnet18 (random weights, eval mode) on the
  GPU at ``n`` images of 224 x 224 (default 256), timed; checked on the first ``--grid-check-n``
  images against the same model and images on the CPU in float64. Skipped, with the reason, when
  torchvision cannot be imported.

Inputs as in ``svcca_cca_bench``: x and y mix a shared latent (``p/4`` dims, decaying scales)
through different random matrices, plus noise; float32 is the float64 pair cast. Every timed
call is bracketed by ``torch.cuda.synchronize()``. Results: a table on stdout and
``<out>/gpu_bench.json`` (``--out``, default ``$OUT`` or ``./out``). Exit status 0 when every case
ran and passed its check, 1 otherwise.

    python3 benchmarks/gpu_bench.py                        # on a CUDA machine
    python3 benchmarks/gpu_bench.py --device cpu --n 3000 --p 64 --check-rows 1000 \
        --resnet-n 8 --grid-check-n 4 --image-size 64      # a quick dry run of the script
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch

# Tolerances of the checks, by input dtype: GPU result vs CPU float64 result on the same rows.
# float32 inputs differ from the float64 reference by their rounding (numerics are float64 on
# both sides, so that rounding is all there is); float64 by the decompositions' rounding only.
CHECK_TOL = {
    "float64": {"rtol": 1e-8, "atol": 1e-10},
    "float32": {"rtol": 1e-4, "atol": 1e-5},
}
# The resnet grid: activations come from two different convolution implementations (cuDNN and
# the CPU's), in float32 on the GPU against float64 on the CPU; TF32 is off for that check.
GRID_TOL = {"rtol": 1e-3, "atol": 1e-3}

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MEASURES = ["cca", "svcca", "pwcca", "linear_cka"]


def log(*args):
    print(*args, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup=1):
    """(result of the last call, [seconds per timed call]); each call between two syncs."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, times


def make_inputs(n, p, device, seed=20240601):
    """float64 x, y [n, p]: a shared latent [n, p/4] with decaying scales, mixed, plus noise."""
    g = torch.Generator(device=device)
    g.manual_seed(seed + n + p)
    o = dict(dtype=torch.float64, device=device)
    d = max(p // 4, 1)
    scales = 1.0 / (1.0 + torch.arange(d, **o) / 8.0)
    z = torch.randn(n, d, generator=g, **o) * scales

    def mix():
        a = torch.randn(d, p, generator=g, **o)
        return (z @ a).add_(torch.randn(n, p, generator=g, **o), alpha=0.3)

    return mix(), mix()


def measure_fn(name):
    """name -> f(x, y) returning (value for the table, tensor compared in the check)."""
    import svcca

    if name == "cca":
        def f(x, y):
            rho = svcca.cca(x, y)[0]
            return rho.mean(), rho
    elif name == "svcca":
        def f(x, y):
            score, rho, kx, ky = svcca.svcca(x, y)
            return score, score
    elif name == "pwcca":
        def f(x, y):
            score = svcca.pwcca(x, y)[0]
            return score, score
    elif name == "linear_cka":
        def f(x, y):
            v = svcca.linear_cka(x, y)
            return v, v
    else:
        raise ValueError("unknown measure %r" % name)
    return f


def products_f64(x, y):
    """X^T X, Y^T Y, X^T Y of the float64 tensors (what every measure here must compute)."""
    return x.t().mm(x), y.t().mm(y), x.t().mm(y)


def compare(actual, expected, tol):
    """{max_abs_diff, worst_rel, ok}: np.isclose's rule, entry by entry, on CPU float64."""
    a = actual.detach().to("cpu", torch.float64).reshape(-1)
    e = expected.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != e.shape:
        return {"ok": False, "why": "shape %s, expected %s" % (list(a.shape), list(e.shape))}
    diff = (a - e).abs()
    bound = tol["atol"] + tol["rtol"] * e.abs()
    finite = bool(torch.isfinite(a).all() and torch.isfinite(e).all())
    ok = finite and bool((diff <= bound).all())
    return {"ok": ok, "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
            "entries": int(a.numel()), "finite": finite, **tol}


def run_matrix(args, device, results):
    log("== matrix: x, y [%d, %d] on %s, %d timed calls after 1 warm-up" %
        (args.n, args.p, device, args.repeats))
    t0 = time.perf_counter()
    x64, y64 = make_inputs(args.n, args.p, device)
    sync(device)
    log("inputs: %.2f s" % (time.perf_counter() - t0))
    _, prod_times = timed(lambda: products_f64(x64, y64), device, args.repeats)
    prod = statistics.median(prod_times)
    results["matrix_products_f64_s"] = prod
    log("products f64 (X^T X, Y^T Y, X^T Y): median %.4f s" % prod)
    m = min(args.check_rows, args.n)
    xs64, ys64 = x64[:m].cpu(), y64[:m].cpu()  # the CPU float64 reference's rows
    refs = {}
    log("%-11s %-8s %10s %10s %8s %12s %12s %s" % ("measure", "dtype", "median s", "min s",
                                                   "x prod", "value", "check diff", "check"))
    for name in args.measures:
        f = measure_fn(name)
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            case = {"measure": name, "dtype": dname, "n": args.n, "p": args.p,
                    "device": str(device)}
            results["matrix"].append(case)
            try:
                x, y = x64.to(dtype), y64.to(dtype)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                out, times = timed(lambda: f(x, y), device, args.repeats)
                case.update(times_s=times, median_s=statistics.median(times), min_s=min(times),
                            ratio_to_products_f64=statistics.median(times) / prod,
                            value=float(out[0]), result_dtype=str(out[0].dtype),
                            result_device=str(out[0].device))
                if device.type == "cuda":
                    case["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
                del x, y
                # The check: the same call on the first m rows, GPU (this dtype) vs CPU float64.
                if name not in refs:
                    refs[name] = f(xs64, ys64)[1]
                got = f(x64[:m].to(dtype), y64[:m].to(dtype))[1]
                chk = compare(got, refs[name], CHECK_TOL[dname])
                chk["rows"] = m
                case["check"] = chk
                case["ok"] = chk["ok"] and str(out[0].device).startswith(device.type) and \
                    out[0].dtype == dtype
                log("%-11s %-8s %10.4f %10.4f %8.2f %12.8f %12.3g %s" % (
                    name, dname, case["median_s"], case["min_s"], case["ratio_to_products_f64"],
                    case["value"], chk.get("max_abs_diff", float("nan")),
                    "ok" if case["ok"] else "FAIL"))
            except Exception as e:  # noqa: BLE001  (recorded; the next case still runs)
                case.update(ok=False, error="%s: %s" % (type(e).__name__, e),
                            traceback=traceback.format_exc())
                log("%-11s %-8s ERROR %s" % (name, dname, case["error"]))


def resnet18():
    import torchvision

    torch.manual_seed(0)
    try:
        model = torchvision.models.resnet18(weights=None)
    except TypeError:  # torchvision < 0.13
        model = torchvision.models.resnet18(pretrained=False)
    return model.eval()


def run_resnet(args, device, results):
    r = results["resnet18"] = {"n": args.resnet_n, "image_size": args.image_size,
                               "measures": args.grid_measures}
    try:
        import torchvision
        r["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        r.update(skipped="torchvision cannot be imported (%s: %s)" % (type(e).__name__, e))
        log("== resnet18: skipped: %s" % r["skipped"])
        return
    import svcca

    log("== resnet18: module_grid at n = %d, %d x %d, model on %s" %
        (args.resnet_n, args.image_size, args.image_size, device))
    r["cases"] = []
    # The captured activations live on the device: budget them against its free memory (the
    # default, svcca.default_memory_budget(), reads the host's /proc/meminfo).
    if args.grid_memory:
        r["memory_budget"] = args.grid_memory
    elif device.type == "cuda":
        r["memory_budget"] = int(torch.cuda.mem_get_info(device)[0] // 4)
    else:
        r["memory_budget"] = None
    try:
        model = resnet18().to(device)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(args.resnet_n, 3, args.image_size, args.image_size, generator=g)
        x = images.to(device)
    except Exception as e:  # noqa: BLE001
        r.update(ok=False, error="%s: %s" % (type(e).__name__, e), traceback=traceback.format_exc())
        log("resnet18 setup ERROR %s" % r["error"])
        return
    for measure in args.grid_measures:
        case = {"measure": measure}
        r["cases"].append(case)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            grid = svcca.module_grid(model, x, measure=measure, batch_size=args.resnet_batch,
                                     memory=r["memory_budget"])
            sync(device)
            case["wall_s"] = time.perf_counter() - t0
            v = grid.values
            case.update(layers=len(grid.rows),
                        undefined_cells=sum(len(c) for _, c in grid.undefined),
                        passes=grid.options.get("passes"),
                        finite_cells=int(torch.isfinite(v).sum()))
            if device.type == "cuda":
                case["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
            # The check: first k images, this model on the device (float32, TF32 off) against a
            # float64 copy of it on the CPU.
            k = min(args.grid_check_n, args.resnet_n)
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                got = svcca.module_grid(model, x[:k], measure=measure, batch_size=k).values
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            cpu_model = resnet18().double()
            cpu_model.load_state_dict({n: t.detach().cpu().double() if t.is_floating_point()
                                       else t.detach().cpu()
                                       for n, t in model.state_dict().items()})
            t1 = time.perf_counter()
            ref = svcca.module_grid(cpu_model, images[:k].double(), measure=measure,
                                    batch_size=k).values
            case["cpu_check_s"] = time.perf_counter() - t1
            chk = compare(got, ref, GRID_TOL)
            # NaN cells (undefined) must be the same on both sides; compare the defined ones.
            same_nan = bool((torch.isnan(got) == torch.isnan(ref)).all())
            mask = ~torch.isnan(ref)
            chk = compare(got[mask], ref[mask], GRID_TOL) if same_nan else chk
            chk.update(images=k, same_undefined_cells=same_nan)
            case["check"] = chk
            case["ok"] = chk["ok"] and same_nan
            log("grid %-8s layers %d, %.2f s on %s (passes %s, %d undefined cells); check on %d "
                "images vs CPU float64: max diff %.3g %s" % (
                    measure, case["layers"], case["wall_s"], device, case["passes"],
                    case["undefined_cells"], k, chk.get("max_abs_diff", float("nan")),
                    "ok" if case["ok"] else "FAIL"))
        except Exception as e:  # noqa: BLE001
            case.update(ok=False, error="%s: %s" % (type(e).__name__, e),
                        traceback=traceback.format_exc())
            log("grid %s ERROR %s" % (measure, case["error"]))
    r["ok"] = all(c.get("ok") for c in r["cases"])


def environment(device):
    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    try:
        import svcca
        env["svcca_library"] = svcca.library_path
    except Exception as e:  # noqa: BLE001
        env["svcca_import_error"] = "%s: %s" % (type(e).__name__, e)
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "out",
                    help="folder of gpu_bench.json (default $OUT, else ./out)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--p", type=int, default=1024)
    ap.add_argument("--check-rows", type=int, default=4096,
                    help="rows of the CPU float64 check (cca and pwcca need more than 2p + 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measures", default=",".join(MEASURES))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--resnet-n", type=int, default=256)
    ap.add_argument("--resnet-batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--grid-measures", default="cka")
    ap.add_argument("--grid-check-n", type=int, default=16)
    ap.add_argument("--grid-memory", type=int, default=0,
                    help="module_grid's memory budget in bytes (default: a quarter of the GPU's "
                         "free memory; on the CPU svcca.default_memory_budget())")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args(argv)
    args.measures = [m for m in args.measures.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.grid_measures = [m for m in args.grid_measures.split(",") if m]

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_bench.json")
    results = {"args": {k: v for k, v in vars(args).items()}, "matrix": [], "errors": []}

    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)

    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch.cuda.is_available() is False (torch %s, "
                               "built with CUDA %s)" % (torch.__version__, torch.version.cuda))
        results["env"] = environment(device)
        log(json.dumps(results["env"]))
    except Exception as e:  # noqa: BLE001
        results["errors"].append("%s: %s" % (type(e).__name__, e))
        results["ok"] = False
        save()
        log("ERROR", results["errors"][-1])
        return 1
    for part, run, skip in (("matrix", run_matrix, args.skip_matrix),
                            ("resnet18", run_resnet, args.skip_resnet)):
        if skip:
            continue
        try:
            run(args, device, results)
        except Exception as e:  # noqa: BLE001
            results["errors"].append("%s: %s: %s" % (part, type(e).__name__, e))
            log("ERROR in %s: %s" % (part, traceback.format_exc()))
        except KeyboardInterrupt:  # device_check.sh's stage timeout: keep what was measured
            results["errors"].append("%s: interrupted (time limit)" % part)
            results["ok"] = False
            save()
            raise
        save()
    oks = [c.get("ok", False) for c in results["matrix"]]
    r = results.get("resnet18")
    if r is not None and "skipped" not in r:
        oks.append(bool(r.get("ok")))
    results["ok"] = bool(oks) and all(oks) and not results["errors"]
    save()
    log("gpu_bench: %s (%d cases, %s)" % ("ok" if results["ok"] else "FAILED", len(oks), path))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
