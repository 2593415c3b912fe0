"""Two gloo ranks on loopback, each streaming half of the rows into the svcca accumulators:
svcca.all_reduce_state must give every rank the single-process numbers."""
import multiprocessing
import os
import tempfile
import traceback
from datetime import timedelta

import pytest
import torch

import svcca

WORLD = 2
ROWS = 500
SPLIT = 187
TIMEOUT_S = 120


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, 9, generator=g, dtype=torch.float64) * 2.0 + 500.0
    x[:, 4] = 0.3  # exactly constant feature
    y = (x[:, :5] - 500.0) @ torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = y + torch.randn(ROWS, 7, generator=g, dtype=torch.float64)
    return x, y


def _scaled(x, y):
    """Rows in different magnitudes per rank (centered first: rows at 0 far from the others'
    mean would make the numbers ill-conditioned, whatever the scaling)."""
    xs, ys = x - 500.0, y.clone()
    xs[SPLIT:] *= 1e200
    ys[:SPLIT] *= 1e-200
    return xs, ys


def _worker(rank, init_file, queue):
    try:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        import torch.distributed as dist
        import svcca as s  # loads the op library in the child

        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                                world_size=WORLD, timeout=timedelta(seconds=60))
        x, y = _data()
        begin, end = (0, SPLIT) if rank == 0 else (SPLIT, ROWS)
        step = 11 if rank == 0 else 64
        acc = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
        for i in range(begin, end, step):
            acc.update([x[i:min(i + step, end)], y[i:min(i + step, end)]])
        acc.set_state(s.all_reduce_state(acc.state()))

        mb = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
        for b, i in enumerate(range(0, ROWS - 49, 50)):
            if b % WORLD == rank:
                mb.update(x[i:i + 50], y[i:i + 50])
        mb.set_state(s.all_reduce_state(mb.state()))

        # Ranks in different power-of-two units (rank 1's x rows at 1e200, rank 0's y rows at
        # 1e-200): all_reduce_state rescales them to common units.
        xs, ys = _scaled(x, y)
        sacc = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
        for i in range(begin, end, step):
            sacc.update([xs[i:min(i + step, end)], ys[i:min(i + step, end)]])
        sacc.set_state(s.all_reduce_state(sacc.state()))
        smb = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
        for b, i in enumerate(range(0, ROWS - 49, 50)):
            if b % WORLD == rank:
                smb.update(xs[i:i + 50], ys[i:i + 50])
        smb.set_state(s.all_reduce_state(smb.state()))

        # An empty state on one rank raises on every rank (no hang).
        empty = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
        if rank == 0:
            empty.update([x[:20], y[:20]])
        try:
            s.all_reduce_state(empty.state())
            empty_error = None
        except ValueError as e:
            empty_error = str(e)

        # Plain Python values: tensors sent through a Queue share their storage through a
        # socket that disappears when this process exits before the parent reads.
        queue.put((rank, {
            "n": acc.n(),
            "cca": acc.cca("x", "y").tolist(),
            "pwcca": acc.pwcca("x", "y").tolist(),
            "svcca": acc.svcca("x", "y", 0.99).tolist(),
            "linear_cka": acc.linear_cka("x", "y").tolist(),
            "minibatch_cka": mb.cka().tolist(),
            "scaled_cca": sacc.cca("x", "y").tolist(),
            "scaled_linear_cka": sacc.linear_cka("x", "y").tolist(),
            "scaled_minibatch_cka": smb.cka().tolist(),
            "empty_error": empty_error,
        }))
        dist.destroy_process_group()
    except Exception:  # report instead of dying silently
        queue.put((rank, traceback.format_exc()))


def test_two_gloo_ranks_equal_one_process():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_worker, args=(r, init_file, queue)) for r in range(WORLD)]
        for p in procs:
            p.start()
        results = {}
        try:
            for _ in range(WORLD):
                rank, res = queue.get(timeout=TIMEOUT_S)
                results[rank] = res
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    for rank in range(WORLD):
        assert isinstance(results[rank], dict), results[rank]

    x, y = _data()
    rho = svcca.cca(x, y)[0]
    single = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    for i in range(0, ROWS - 49, 50):
        single.update(x[i:i + 50], y[i:i + 50])
    xs, ys = _scaled(x, y)
    scaled_one = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
    scaled_one.update([xs, ys])
    scaled_mb = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    for i in range(0, ROWS - 49, 50):
        scaled_mb.update(xs[i:i + 50], ys[i:i + 50])
    # tests/support/support.h: tol::kStreamed64
    close = dict(rtol=1e-10, atol=1e-12)
    for rank in range(WORLD):
        r = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, (list, float)) else v
             for k, v in results[rank].items()}
        assert r["n"] == ROWS
        torch.testing.assert_close(r["cca"], rho, **close)
        torch.testing.assert_close(r["pwcca"], svcca.pwcca(x, y)[0], **close)
        torch.testing.assert_close(r["svcca"], svcca.svcca(x, y)[0], **close)
        xc, yc = x - x.mean(0), y - y.mean(0)
        cka = (xc.T @ yc).square().sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
        torch.testing.assert_close(r["linear_cka"], cka, **close)
        torch.testing.assert_close(r["minibatch_cka"], single.cka(), **close)
        torch.testing.assert_close(r["scaled_cca"], scaled_one.cca("x", "y"), **close)
        torch.testing.assert_close(r["scaled_linear_cka"], scaled_one.linear_cka("x", "y"), **close)
        torch.testing.assert_close(r["scaled_minibatch_cka"], scaled_mb.cka(), **close)
        assert r["empty_error"] is not None and "at least one batch on every rank" in \
            r["empty_error"]


def test_state_round_trip_and_errors_in_python(tmp_path):
    x, y = _data()
    acc = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
    acc.update([x[:200], y[:200]])
    path = str(tmp_path / "acc.svst")
    acc.save(path)
    other = torch.classes.svcca.CovarianceAccumulator(["a"], [], "float32")
    other.load(path)
    other.update([x[200:], y[200:]])
    torch.testing.assert_close(other.cca("x", "y"), svcca.cca(x, y)[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="must have the same number of rows"):
        acc.update([x[:3], y[:4]])
    with pytest.raises(ValueError, match="at least 4 rows per batch"):
        torch.classes.svcca.MinibatchCkaAccumulator("rbf", 2.0, 1.0).update(x[:3], y[:3])
    with open(path, "r+b") as f:
        f.seek(60)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="does not match its checksum"):
        other.load(path)
