#!/usr/bin/python3
"""How accurate is ``precision="input"`` on float32 activations? (issue 13, item 4)

For each case the same float32 tensors go through svcca twice: with ``precision="float64"`` (the
default: centering, products and decompositions in float64) and with ``precision="input"`` (all of
it in float32, symmetric products by BLAS ssyrk). The script prints the largest absolute
difference of the canonical correlations (cca, sorted; over the leading ones both paths kept when
float32's rank rule keeps fewer), of svcca's and pwcca's score and of linear CKA, and the time of
each path.

Cases:
  bench-small / bench-big  svcca_cca_bench's data: [10000, 256] / [50000, 1024], a random mixing
                           of a shared latent (p/4 dimensions, decaying scales) plus noise;
  ill-<c>                  [20000, 128] layers whose covariance spans a condition number c
                           (1e3, 1e5, 1e7): singular values logspaced, random rotations, a shared
                           part so that the correlations are not all small. Above
                           kRefineCondition (1e4, measures/cca.h) CCA re-orthonormalizes the
                           whitened data against the data itself (the "refinement").

Usage:
  PYTHONPATH=build/torch_ext/python /usr/bin/python3 benchmarks/float32_accuracy.py [--big]
      [--threads 2] [--json FILE]
"""
import argparse
import json
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", action="store_true", help="also the [50000, 1024] case (~1 min)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows to this file")
    return ap.parse_args()


ARGS = parse()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))

import torch  # noqa: E402

import svcca  # noqa: E402


def bench_data(n, p, seed):
    g = torch.Generator().manual_seed(seed)
    d = max(p // 4, 1)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z *= torch.logspace(0, -1, d, dtype=torch.float64)

    def layer():
        a = torch.randn(d, p, generator=g, dtype=torch.float64)
        return z @ a + 0.3 * torch.randn(n, p, generator=g, dtype=torch.float64)

    return layer().float(), layer().float()


def ill_data(n, p, cond, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), p, dtype=torch.float64)
    shared = torch.randn(n, p // 2, generator=g, dtype=torch.float64)

    def layer():
        own = torch.randn(n, p - p // 2, generator=g, dtype=torch.float64)
        base = torch.cat([shared + 0.5 * torch.randn(n, p // 2, generator=g, dtype=torch.float64),
                          own], 1)
        q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
        return (base * s) @ q  # covariance eigenvalues span about cond

    return layer().float(), layer().float()


def timed(f):
    t0 = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t0


def compare(name, x, y):
    rows = []
    for measure in ("cca", "svcca", "pwcca", "linear_cka"):
        def run(precision):
            if measure == "cca":
                return svcca.cca(x, y, precision=precision)[0].double()
            if measure == "svcca":
                return svcca.svcca(x, y, precision=precision)[0].double()
            if measure == "pwcca":
                return svcca.pwcca(x, y, precision=precision)[0].double()
            return svcca.linear_cka(x, y, precision=precision).double()

        try:
            ref, t64 = timed(lambda: run("float64"))
            out, t32 = timed(lambda: run("input"))
        except (ValueError, RuntimeError) as e:
            rows.append({"case": name, "measure": measure, "error": str(e).splitlines()[0]})
            continue
        k = min(ref.numel(), out.numel())
        # float32 keeps fewer directions where the spectrum spans more than its rank_rtol
        # (p * eps_f32): then the error over the leading k both kept, and the counts.
        err = (ref.reshape(-1)[:k] - out.reshape(-1)[:k]).abs().max().item()
        rows.append({"case": name, "measure": measure, "max_abs_err": err,
                     "float64_s": t64, "input_s": t32, "k64": ref.numel(), "k32": out.numel()})
    return rows


def main():
    torch.set_num_threads(ARGS.threads)
    cases = [("bench-small", lambda: bench_data(10000, 256, 1))]
    if ARGS.big:
        cases.append(("bench-big", lambda: bench_data(50000, 1024, 2)))
    for cond in (1e3, 1e5, 1e7):
        cases.append((f"ill-{cond:.0e}", lambda c=cond: ill_data(20000, 128, c, 3)))
    print(f"threads {ARGS.threads}, OPENBLAS_CORETYPE {os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f", torch {torch.__version__}")
    print(f"{'case':<12} {'measure':<11} {'max |f32 - f64|':>16} {'f64 [s]':>9} {'input [s]':>10}"
          f" {'speed-up':>9}")
    rows = []
    for name, make in cases:
        x, y = make()
        for r in compare(name, x, y):
            rows.append(r)
            if "error" in r:
                print(f"{name:<12} {r['measure']:<11} error: {r['error']}")
                continue
            k = "" if r["k64"] == r["k32"] else f"  (kept {r['k64']} vs {r['k32']}: error of the leading {min(r['k64'], r['k32'])})"
            print(f"{name:<12} {r['measure']:<11} {r['max_abs_err']:16.2e} {r['float64_s']:9.3f}"
                  f" {r['input_s']:10.3f} {r['float64_s'] / r['input_s']:8.2f}x{k}")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
