"""pytest suite of svcca.module_grid (eager models, forward hooks, passes under a memory budget)
and of Grid.write: every grid against similarity_grid on activations captured by hand.
"""
import json
import os

import pytest
import torch
import torchvision

import svcca
from test_ops import assert_close, assert_error, tol


class SmallCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.relu = torch.nn.ReLU(inplace=True)  # in place: captures must be clones
        self.pool = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.conv2(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def small_cnn(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = SmallCnn().to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
    return m


def images(n, dtype=torch.float64, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype)


def by_hand(model, x, names=None):
    """Every submodule's outputs on one forward of all of x (eval mode), named as module_grid
    names them: "name", or "name#k" when called k > 1 times; in named_modules order."""
    caps = {}
    handles = [m.register_forward_hook(
        lambda mod, i, o, n=n: caps.setdefault(n, []).append(o.detach().clone()))
        for n, m in model.named_modules() if n]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = []
    for n, _ in model.named_modules():
        for k, v in enumerate(caps.get(n, [])):
            out.append((n if len(caps[n]) == 1 else "%s#%d" % (n, k + 1), v))
    if names is not None:
        index = dict(out)
        out = [(n, index[n]) for n in names]
    return out


@pytest.mark.parametrize("measure,kind", [("cka", "closed_form"), ("svcca", "svd"),
                                          ("cca", "svd")])
def test_small_cnn_equals_similarity_grid_by_hand(measure, kind):
    model, x = small_cnn(), images(40)
    g = svcca.module_grid(model, x, measure=measure, batch_size=16)
    assert g.rows == ["conv1", "bn1", "relu#1", "relu#2", "pool", "conv2", "gap", "fc"]
    assert g.cols == g.rows and g.examples == 40 and g.measure == measure
    assert g.options["passes"] == "1" and g.options["layers"] == "all modules but the root"
    assert int(g.options["memory_budget"]) == svcca.default_memory_budget()
    expected = svcca.similarity_grid(by_hand(model, x), measure=measure)
    assert expected.rows == g.rows
    assert_close(g.values, expected.values, tol(torch.float64, kind), what=measure)
    assert g.undefined == expected.undefined
    # bn1 is followed by an in-place ReLU: the capture must be the BatchNorm output, not the ReLU's.
    hand = dict(by_hand(model, x))
    assert not torch.equal(hand["bn1"], hand["relu#1"])
    assert float(g.values[1, 2]) < 1 - 1e-6


def test_resnet18_equals_similarity_grid_by_hand():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = images(6, torch.float32, seed=2, size=32)
    g = svcca.module_grid(model, x, batch_size=4)
    assert "layer1.0.conv1" in g.rows and "fc" in g.rows and g.rows[0] == "conv1"
    assert "layer1.0.relu#1" in g.rows and "layer1.0.relu#2" in g.rows
    expected = svcca.similarity_grid(by_hand(model, x, g.rows))
    assert_close(g.values, expected.values, tol(torch.float32), what="resnet18")
    # layers + exclude, globs crossing dots
    sub = svcca.module_grid(model, x, layers=["layer1.*", "fc"], exclude="*.bn*", measure="svcca",
                            batch_size=4)
    assert sub.rows[0] == "layer1.0" and sub.rows[-1] == "fc"
    assert not any(".bn" in r for r in sub.rows) and "layer1.0.conv2" in sub.rows
    assert not any(r.startswith("layer2") for r in sub.rows)
    expected = svcca.similarity_grid(by_hand(model, x, sub.rows), measure="svcca")
    assert_close(sub.values, expected.values, tol(torch.float32), what="resnet18 svcca")


@pytest.mark.parametrize("as_batches", [False, True])
def test_tiny_memory_budget_gives_the_one_pass_grid(as_batches):
    model, x = small_cnn(), images(24)
    one = svcca.module_grid(model, x, batch_size=8)
    # conv1 needs 6*8*8*8 bytes per example = 73,728 bytes for 24 examples: a few layers per pass.
    inputs = list(torch.split(x, 8)) if as_batches else x
    many = svcca.module_grid(model, inputs, batch_size=8, memory=80000)
    assert int(many.options["passes"]) > 2 and many.options["memory_budget"] == "80000"
    assert one.options["passes"] == "1"
    assert many.rows == one.rows
    assert_close(many.values, one.values, tol(torch.float64, "closed_form"))


def test_two_models():
    a, b, x = small_cnn(seed=0), small_cnn(seed=5), images(30)
    # cca pools conv layers (conv auto): 48, 64 and 40 bytes per example, so 2500 bytes for 30
    # examples holds one or two layers per pass.
    g = svcca.module_grid(a, x, other=b, layers=["conv*", "fc"], measure="cca", batch_size=7,
                          memory=2500)
    assert g.rows == g.cols == ["conv1", "conv2", "fc"]
    assert g.row_label == "model A layer" and int(g.options["passes"]) > 1
    expected = svcca.similarity_grid(by_hand(a, x, g.rows), by_hand(b, x, g.cols), measure="cca")
    assert_close(g.values, expected.values, tol(torch.float64))
    assert float(g.values[2, 2]) < 0.999  # two different models


def test_training_flags_and_batchnorm_statistics_restored():
    model, x = small_cnn(), images(16)
    model.train()
    model.conv2.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    svcca.module_grid(model, x, batch_size=5)
    assert {n: m.training for n, m in model.named_modules()} == flags
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # running_mean, running_var, num_batches_tracked
    # also when module_grid fails after the model ran (memory too small, found on the first batch)
    with pytest.raises(ValueError):
        svcca.module_grid(model, x, memory=100)
    assert {n: m.training for n, m in model.named_modules()} == flags


class Twice(torch.nn.Module):
    """block runs twice per forward; split returns a tuple."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Linear(4, 4)
        self.split = Split()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        a, b, _ = self.split(torch.tanh(self.block(torch.tanh(self.block(x)))))
        return self.head(a * b)


class Split(torch.nn.Module):
    def forward(self, x):
        return x.sin(), x.cos(), x.argmax(1)  # the int tensor is not a layer


def test_module_called_twice_and_tuple_outputs():
    torch.manual_seed(3)
    model = Twice().double()
    x = torch.randn(20, 4, dtype=torch.float64)
    g = svcca.module_grid(model, x, batch_size=6)
    assert g.rows == ["block#1", "block#2", "split:0", "split:1", "head"]
    with torch.no_grad():
        h1 = model.block(x)
        h2 = model.block(torch.tanh(h1))
        s = torch.tanh(h2)
    expected = svcca.similarity_grid([("block#1", h1), ("block#2", h2), ("split:0", s.sin()),
                                      ("split:1", s.cos()), ("head", model(x).detach())])
    assert_close(g.values, expected.values, tol(torch.float64, "closed_form"))
    assert float(g.values[0, 1]) < 1 - 1e-6  # the two calls differ


def test_zero_layer_gives_undefined_cells_listed_once():
    model, x = small_cnn(), images(20)
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.bias.zero_()
    g = svcca.module_grid(model, x, layers=["conv1", "conv2", "pool"], batch_size=6)
    assert g.rows == ["conv1", "pool", "conv2"]
    assert len(g.undefined) == 1
    reason, cells = g.undefined[0]
    assert "\"conv2\"" in reason and "constant" in reason
    assert sorted(map(tuple, cells)) == [(0, 2), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert torch.isnan(g.values[2]).all() and not torch.isnan(g.values[:2, :2]).any()
    assert_error(ValueError, ["5 of 9 cells are undefined", "conv2"], g.raise_if_undefined)


class Changing:
    """An iterable that gives one batch fewer every time it is iterated (not allowed)."""

    def __init__(self, x):
        self.batches = list(torch.split(x, 4))

    def __iter__(self):
        out = iter(list(self.batches))
        self.batches = self.batches[:-1]
        return out


def test_bad_arguments():
    model, x = small_cnn(), images(12)
    assert_error(ValueError, ["layers must name modules of the model", "'conv3'",
                              "closest module names: 'conv1'"],
                 svcca.module_grid, model, x, layers=["conv3"])
    assert_error(ValueError, ["layers pattern 'block*' must match at least one module"],
                 svcca.module_grid, model, x, layers="block*")
    assert_error(ValueError, ["exclude must name modules", "'fcc'"], svcca.module_grid, model, x,
                 exclude=["fcc"])
    assert_error(ValueError, ["layers and exclude must leave at least one module",
                              "selection is empty"],
                 svcca.module_grid, model, x, layers="conv*", exclude=["conv1", "conv2"])
    assert_error(ValueError, ["memory must hold at least one layer", "layer \"conv1\"",
                              "36864 bytes", "budget is 1000 bytes", "conv=\"pool\""],
                 svcca.module_grid, model, x, memory=1000)
    assert_error(ValueError, ["inputs must give the same batches every time",
                              "pass 2 gave 8 examples and pass 1 gave 12"],
                 svcca.module_grid, model, Changing(x), memory=40000)
    assert_error(ValueError, ["inputs must be iterable more than once"],
                 svcca.module_grid, model, iter(list(torch.split(x, 4))), memory=40000)
    assert_error(ValueError, ["batch_size must be a positive int", "0"], svcca.module_grid,
                 model, x, batch_size=0)
    assert_error(ValueError, ["memory must be a positive number of bytes"], svcca.module_grid,
                 model, x, memory=-5)
    assert_error(ValueError, ["measure must be one of", "\"nope\""], svcca.module_grid, model, x,
                 measure="nope")
    assert_error(ValueError, ["conv \"fourier\" needs every layer at once"], svcca.module_grid,
                 model, x, measure="cca", conv="fourier")
    assert_error(TypeError, ["model must be an eager torch.nn.Module"], svcca.module_grid,
                 torch.jit.script(model), x)
    assert_error(TypeError, ["unexpected option(s) fracton"], svcca.module_grid, model, x,
                 fracton=0.5)


def test_pool_shrinks_the_capture():
    # Pooled as recorded: the budget that flatten needs several passes for fits in one.
    model, x = small_cnn(), images(24)
    # Pooled, the 8 layers take 1152 to 1536 bytes each for 24 examples (10,368 in all);
    # flattened, conv1 alone takes 6*8*8*8*24 = 73,728.
    pooled = svcca.module_grid(model, x, measure="cca", memory=12000)  # auto: pool for cca
    assert pooled.options["passes"] == "1" and pooled.options["conv"] == "pool"
    expected = svcca.similarity_grid(by_hand(model, x, pooled.rows), measure="cca")
    assert_close(pooled.values, expected.values, tol(torch.float64))
    assert_error(ValueError, ["memory must hold at least one layer", "\"conv1\"", "73728 bytes"],
                 svcca.module_grid, model, x, measure="cca", conv="flatten", memory=12000)
    tokens = svcca.module_grid(model, x, measure="cca", conv="cls", memory=12000)
    assert_close(tokens.values, pooled.values, tol(torch.float64))  # no [n, t, d] layers here


def test_dataloader_with_labels():
    model, x = small_cnn(), images(18)
    data = torch.utils.data.TensorDataset(x, torch.arange(18))
    loader = torch.utils.data.DataLoader(data, batch_size=5, shuffle=False)
    g = svcca.module_grid(model, loader, memory=60000)
    assert g.examples == 18 and int(g.options["passes"]) > 1
    assert g.options["batch_size"] == "from inputs"
    assert_close(g.values, svcca.module_grid(model, x).values, tol(torch.float64, "closed_form"))


def test_grid_write_files(tmp_path):
    model, x = small_cnn(), images(20)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    g = svcca.module_grid(model, x, layers=["conv1", "fc"])
    out = tmp_path / "report"
    paths = g.write(str(out), stem="cnn", title="small cnn")
    assert paths == [str(out / ("cnn" + ext)) for ext in (".json", ".csv", ".svg", ".png")]
    for p in paths:
        assert os.path.getsize(p) > 0
    with open(paths[3], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "small cnn" in open(paths[2]).read()
    with open(paths[0]) as f:
        d = json.load(f)
    assert d["rows"] == ["conv1", "fc"] and d["values"][1][1] is None
    assert d["options"]["passes"] == "1" and d["examples"] == 20
    assert_error(RuntimeError, ["write_grid_files", "/proc/no/such/dir"], g.write,
                 "/proc/no/such/dir")


def test_grid_json_has_undefined(tmp_path):
    # Needs the report's JSON with "undefined" (report-work branch, grid_to_json).
    model, x = small_cnn(), images(20)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    g = svcca.module_grid(model, x, layers=["conv1", "fc"])
    paths = g.write(str(tmp_path))
    with open(paths[0]) as f:
        d = json.load(f)
    assert "undefined" in d
    assert d["undefined"] == g.to_dict()["undefined"] and len(d["undefined"]) == 1
    assert svcca.Grid.from_dict(d).undefined == g.undefined
