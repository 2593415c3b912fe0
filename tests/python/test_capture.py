"""Capture from Python: models tapped from C++ (svcca.tap_model), loaded with torch.jit.load, give
the same captures as Python forward hooks on the original nn.Module."""
import importlib.util
import os

import pytest
import torch

import svcca

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "models", "fixtures")
# float32 row of the tolerance table (tests/support/support.h).
RTOL, ATOL = 1e-4, 1e-5


def _load_make_fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", os.path.join(ROOT, "models", "make_fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mf = _load_make_fixtures()
MODELS = {name: (ctor, shape, traced) for name, ctor, shape, traced in mf.MODELS}
FILES = [name + "_scripted" for name in MODELS] + [n + "_traced" for n in MODELS if MODELS[n][2]]


@pytest.fixture
def tapped(tmp_path):
    def make(file):
        out = str(tmp_path / (file + "_tapped.pt"))
        names = svcca.tap_model(os.path.join(FIXTURES, file + ".pt"), out)
        return torch.jit.load(out), names
    return make


def _assert_same(captures, records):
    """captures (dict name -> list) against hook records [(name, type, value)] in order."""
    grouped = {}
    for name, _, value in records:
        grouped.setdefault(name, []).append(value)
    assert list(captures) == list(grouped)
    for name in grouped:
        assert len(captures[name]) == len(grouped[name]), name
        for a, b in zip(captures[name], grouped[name]):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("file", FILES)
def test_tapped_from_cpp_equals_python_forward_hooks(tapped, file):
    name = file.split("_")[0]
    ctor, shape, _ = MODELS[name]
    module = mf.build(name, ctor)
    x = mf.example_input(name, shape)
    out_hooks, records = mf.hook_captures(module, (x,))
    ts, names = tapped(file)
    assert svcca.layer_names(ts) == names
    for n, _, _ in records:
        assert n.split(":")[0] in names or (n == "ident" and file.endswith("_traced"))
    out, captures = svcca.capture(ts, x)
    torch.testing.assert_close(out, out_hooks, rtol=RTOL, atol=ATOL)
    if file.endswith("_traced"):
        records = _flatten_tuple_names(records)
        # The tracer records nn.Identity as a method returning None: nothing to capture.
        records = [r for r in records if r[0] != "ident"]
    _assert_same(captures, records)


def _flatten_tuple_names(records):
    """torch.jit.trace flattens nested tuples returned by submodules: (a, (b, c)) -> (a, b, c)."""
    out, count, prev = [], {}, None
    for name, typ, value in records:
        if ":" in name:
            path = name.split(":")[0]
            if path != prev:
                count[path] = 0
            name = "%s:%d" % (path, count[path])
            count[path] += 1
            prev = path
        else:
            prev = None
        out.append((name, typ, value))
    return out


def test_fixture_expectations_are_current():
    """The saved hook captures equal a fresh run of make_fixtures' modules (fixtures up to date)."""
    for name, (ctor, shape, _) in MODELS.items():
        expected = torch.jit.load(os.path.join(FIXTURES, name + "_expected.pt"))
        _, records = mf.hook_captures(mf.build(name, ctor), (mf.example_input(name, shape),))
        assert list(expected.names) == [n for n, _, _ in records], name
        for v, (_, _, r) in zip(expected.values, records):
            torch.testing.assert_close(v, r, rtol=RTOL, atol=ATOL)


def test_select_layers_by_name_glob_and_regex(tapped):
    ts, names = tapped("resnet_scripted")
    x = mf.example_input("resnet", MODELS["resnet"][1])
    _, caps = svcca.capture(ts, x, layers=["layer2.*.conv1", "re:bn\\d", "fc"])
    assert list(caps) == ["bn1", "layer2.0.conv1", "layer2.1.conv1", "fc"]
    with pytest.raises(ValueError, match="closest existing names: 'layer1.0.conv1'"):
        svcca.capture(ts, x, layers=["layer1.0.conv"])
    with pytest.raises(ValueError, match="must match at least one layer"):
        svcca.capture(ts, x, layers=["layer9.*"])


def test_recording_ends_when_forward_raises(tapped):
    ts, _ = tapped("seq_scripted")
    with pytest.raises(RuntimeError,
                       match=r"(?s)but got \(Tensor \[2, 1, 5, 5\] float32\).*cannot be multiplied"):
        svcca.capture(ts, torch.randn(2, 1, 5, 5))
    _, caps = svcca.capture(ts, torch.randn(2, 1, 6, 6))  # no "already active" error
    assert list(caps) == ["0", "1", "2", "3"]
    with pytest.raises(RuntimeError, match="a recording must be active"):
        torch.ops.svcca._capture_end()


def test_detach_false_keeps_the_autograd_graph(tapped):
    ts, _ = tapped("nested_scripted")
    x = mf.example_input("nested", MODELS["nested"][1])
    _, caps = svcca.capture(ts, x)
    assert not caps["features"][0].requires_grad
    _, caps = svcca.capture(ts, x, layers=["features"], detach=False)
    caps["features"][0].square().sum().backward()
    lin0 = getattr(getattr(ts.features, "0"), "0")
    lin1 = getattr(ts.features, "1")
    w = lin0.weight
    w_ref = w.detach().clone().requires_grad_(True)
    h = torch.tanh(x @ w_ref.t() + lin0.bias.detach())  # features.0: Linear, Tanh
    (torch.nn.functional.linear(h, lin1.weight.detach(), lin1.bias.detach()).square().sum()).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=RTOL, atol=ATOL)
    assert ts.head.weight.grad is None


def test_training_through_tapped_method_matches_forward(tapped):
    ts, _ = tapped("resnet_scripted")
    ref = torch.jit.load(os.path.join(FIXTURES, "resnet_scripted.pt"))
    ts.train()
    ref.train()
    torch.manual_seed(0)
    x, target = torch.randn(4, 1, 5, 5), torch.randn(4, 3)
    opt_a = torch.optim.SGD(ts.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for fn, opt in ((ts.forward_tapped, opt_a), (ref.forward, opt_b)):
            opt.zero_grad()
            (fn(x) - target).square().mean().backward()
            opt.step()
    for (na, a), (nb, b) in zip(ts.named_parameters(), ref.named_parameters()):
        assert na == nb
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_errors(tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="must be a TorchScript archive"):
        svcca.tap_model(str(text), str(tmp_path / "out.pt"))
    state = tmp_path / "state.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), str(state))
    with pytest.raises(ValueError, match="must be a TorchScript archive"):
        svcca.tap_model(str(state), str(tmp_path / "out.pt"))
    with pytest.raises(ValueError, match="module must not be frozen.*module boundaries"):
        svcca.tap_model(os.path.join(FIXTURES, "frozen_scripted.pt"), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()
    plain = torch.jit.load(os.path.join(FIXTURES, "seq_scripted.pt"))
    with pytest.raises(ValueError, match="tapped method 'forward_tapped'"):
        svcca.capture(plain, torch.randn(2, 1, 6, 6))


def test_list_layers_shapes_without_side_effects(tapped):
    ts, names = tapped("resnet_scripted")
    ts.train()
    mean = ts.bn1.running_mean.clone()
    x = mf.example_input("resnet", MODELS["resnet"][1])
    layers = svcca.list_layers(ts, x)
    _, records = mf.hook_captures(mf.build("resnet", MODELS["resnet"][0]), (x,))
    first = {}
    for name, typ, value in records:
        first.setdefault(name, (typ, list(value.shape), 0))
        typ0, shape0, calls = first[name]
        first[name] = (typ0, shape0, calls + 1)
    assert [l["name"] for l in layers] == list(first)
    for l in layers:
        assert (l["type"], l["shape"], l["calls"]) == first[l["name"]]
        assert l["dtype"] == "float32"
    torch.testing.assert_close(ts.bn1.running_mean, mean, rtol=0, atol=0)
    assert ts.training and ts.layer1.training
