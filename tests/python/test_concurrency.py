"""Threads (issue 12, items 9 and 10): accumulators updated and saved from several threads,
list_layers beside list_layers and capture on one module, and scale-invariant streamed moments."""
import os
import threading

import pytest
import torch

import svcca

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "models", "fixtures")
# Rows of the tolerance table (tests/support/support.h): float64 after eigh, float32.
DECOMP64 = dict(rtol=1e-8, atol=1e-10)
FLOAT32 = dict(rtol=1e-4, atol=1e-5)


def _threads(n, target):
    errors = []

    def run(i):
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def _cov():
    return torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, dtype=torch.float64, generator=g)
    y = x[:, :5] + torch.randn(4000, 5, dtype=torch.float64, generator=g)
    return x, y


def test_updates_from_eight_threads_equal_one_thread(data):
    # Before: n was right but the CCA was off by ~1e-5 (torn in-place updates).
    x, y = data
    shared, mb = _cov(), torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)

    def work(t):
        for s in range(t * 500, (t + 1) * 500, 10):
            shared.update([x[s:s + 10], y[s:s + 10]])
            mb.update(x[s:s + 10], y[s:s + 10])
    assert _threads(8, work) == []
    one = _cov()
    one.update([x, y])
    assert shared.n() == 4000
    torch.testing.assert_close(shared.cca("x", "y"), one.cca("x", "y"), **DECOMP64)
    mb_one = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    for s in range(0, 4000, 10):
        mb_one.update(x[s:s + 10], y[s:s + 10])
    torch.testing.assert_close(mb.cka(), mb_one.cka(), **DECOMP64)


def test_saves_from_eight_threads_to_one_path_all_succeed(data, tmp_path):
    # Before: "<path>.tmp.<pid>" was shared by the threads, and some renames failed.
    x, y = data
    acc = _cov()
    acc.update([x[:100], y[:100]])
    path = str(tmp_path / "state.svst")

    def work(_):
        for _ in range(20):
            acc.save(path)
    assert _threads(8, work) == []
    loaded = _cov()
    loaded.load(path)
    torch.testing.assert_close(loaded.linear_cka("x", "y"), acc.linear_cka("x", "y"), rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["state.svst"]


def test_loading_a_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        _cov().load(str(tmp_path))


@pytest.mark.parametrize("scale", [1e-200, 1e-150, 1e150, 1e200])
def test_streamed_moments_are_scale_invariant(data, scale):
    # Before: 1e200 gave "all 6 features are constant (largest variance inf)", 1e150 CKA 0.0.
    x, y = data
    ref, acc = _cov(), _cov()
    mb_ref = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    mb = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    for s in range(0, 600, 100):
        ref.update([x[s:s + 100], y[s:s + 100]])
        acc.update([x[s:s + 100] * scale, y[s:s + 100]])
        mb_ref.update(x[s:s + 100], y[s:s + 100])
        mb.update(x[s:s + 100] * scale, y[s:s + 100] / scale)
    torch.testing.assert_close(acc.cca("x", "y"), ref.cca("x", "y"), **DECOMP64)
    torch.testing.assert_close(acc.linear_cka("x", "y"), ref.linear_cka("x", "y"), **DECOMP64)
    torch.testing.assert_close(mb.cka(), mb_ref.cka(), **DECOMP64)
    assert acc.state()["scale.0"].item() != 1.0
    # The state goes through svcca.all_reduce_state's rescaling rules unchanged on one rank.
    restored = _cov()
    restored.set_state(acc.state())
    torch.testing.assert_close(restored.cca("x", "y"), acc.cca("x", "y"), rtol=0, atol=0)


def test_tampered_state_is_refused(data):
    # Before: a cross co-moment x1000 was accepted (CKA 587770 here, 18911.6 in the issue).
    x, y = data
    acc = _cov()
    acc.update([x[:200], y[:200]])
    st = acc.state()
    st["cross.0.1"] = st["cross.0.1"] * 1000
    with pytest.raises(ValueError, match=r'state\["cross.0.1"\] must satisfy the Cauchy-Schwarz'):
        _cov().set_state(st)


@pytest.fixture
def bn_model(tmp_path):
    """The tapped resnet fixture (BatchNorm) in training mode, and an input."""
    out = str(tmp_path / "resnet_tapped.pt")
    svcca.tap_model(os.path.join(FIXTURES, "resnet_scripted.pt"), out)
    m = torch.jit.load(out)
    m.train()
    m.bn1.eval()  # a frozen batch-norm layer must stay frozen
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    return m, x


def test_concurrent_list_layers_restore_every_flag(bn_model):
    # Before: concurrent calls saved each other's eval flags and left the module in eval mode.
    m, x = bn_model
    flags = {name: mod.training for name, mod in m.named_modules()}

    def work(_):
        for _ in range(10):
            svcca.list_layers(m, x)
    assert _threads(8, work) == []
    assert {name: mod.training for name, mod in m.named_modules()} == flags


def test_capture_beside_list_layers_runs_in_the_module_mode(bn_model):
    # Before: a capture beside list_layers calls could run in eval mode.
    m, x = bn_model
    train_out, _ = svcca.capture(m, x)
    m.eval()
    eval_out, _ = svcca.capture(m, x)
    m.train()
    m.bn1.eval()
    assert not torch.allclose(train_out, eval_out, **FLOAT32)  # the modes differ here
    stop = threading.Event()

    def lister(_):
        while not stop.is_set():
            svcca.list_layers(m, x)
    listers = [threading.Thread(target=lister, args=(i,)) for i in range(3)]
    for t in listers:
        t.start()
    try:
        outs = [svcca.capture(m, x)[0] for _ in range(30)]
    finally:
        stop.set()
        for t in listers:
            t.join()
    for out in outs:
        torch.testing.assert_close(out, train_out, **FLOAT32)
    assert m.training and not m.bn1.training
