"""svcca.TrainingMonitor from Python: a TorchScript model trained by a Python loop, monitored by the
C++ monitor through torch.classes.svcca.TrainingMonitor (the same module object, shared
parameters)."""
import pytest
import torch

import svcca

# float32 and float64-after-decomposition rows of the tolerance table (tests/support/support.h).
RTOL32, ATOL32 = 1e-4, 1e-5
RTOL64, ATOL64 = 1e-8, 1e-10


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _model():
    torch.manual_seed(0)
    return torch.jit.script(Net())


def _probe(n=40):
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def test_monitor_follows_python_training_of_the_same_module():
    model = _model()
    monitor = svcca.TrainingMonitor(model, _probe(), summary_dims=8)
    assert monitor.layers == ["conv", "bn", "drop", "fc1", "fc2"]
    assert monitor.examples == 40
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 1, 6, 6)
    y = torch.randint(0, 3, (64,))
    model.train()
    for step in range(6):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        monitor.record(step * 10)
    assert monitor.steps == [0, 10, 20, 30, 40, 50]
    # record() ran in eval mode and put every training flag back.
    assert model.training and all(m.training for m in model.modules())
    values, layers, steps = monitor.dynamics()
    assert layers == monitor.layers and steps == monitor.steps
    assert values.shape == (5, 6)
    assert torch.allclose(values[:, -1], torch.ones(5, dtype=torch.float64), RTOL64, ATOL64)
    # Training moved every layer, so the first step is not the latest state.
    assert bool((values[:, 0] < 1 - 1e-6).all())
    # The grid at a step is the similarity grid of that step's summaries.
    grid, names = monitor.grid(20)
    summaries = [monitor.summary(name, 20) for name in names]
    expected = svcca.similarity_grid(summaries).values
    assert torch.allclose(grid, expected, RTOL64, ATOL64)


def test_layers_whose_parameters_stop_changing_converge_and_are_suggested_for_freezing():
    model = _model()
    monitor = svcca.TrainingMonitor(model, _probe(), layers=["conv", "bn", "fc1", "fc2"])
    for step in range(5):
        # Only fc2 changes from step to step (the monitor sees the module Python modifies).
        with torch.no_grad():
            model.fc2.weight.copy_(torch.randn(3, 16, generator=torch.Generator().manual_seed(step)))
        monitor.record(step)
    converged_at = monitor.convergence_steps(0.999)
    assert converged_at == {"conv": 0, "bn": 0, "fc1": 0, "fc2": 4}
    assert monitor.converged(0.999, window=2) == ["conv", "bn", "fc1"]
    assert monitor.freeze_suggestion(0.999, window=2) == ["conv", "bn", "fc1"]


def test_eval_mode_leaves_batchnorm_statistics_and_dropout_alone():
    model = _model()
    model.train()
    before = model.bn.running_mean.clone()
    monitor = svcca.TrainingMonitor(model, _probe(), layers=["drop"])
    monitor.record(0)
    monitor.record(1)
    assert torch.equal(model.bn.running_mean, before)
    # Dropout is off while recording: two records of unchanged weights are identical.
    assert torch.equal(monitor.summary("drop", 0), monitor.summary("drop", 1))


def test_checkpoints_and_save_load(tmp_path):
    model = _model()
    monitor = svcca.TrainingMonitor(model, _probe(), summary_dims=4, measure="cka")
    monitor.record(0)
    later = _model()
    with torch.no_grad():
        for p in later.parameters():
            p.add_(0.1 * torch.randn_like(p))
    monitor.record(5, later)  # another module with the same layers
    values, _, steps = monitor.dynamics()
    assert steps == [0, 5]
    path = tmp_path / "monitor.svcca"
    monitor.save(path)
    other = svcca.TrainingMonitor(_model(), _probe(), summary_dims=4)
    other.load(path)
    assert other.steps == [0, 5]
    assert torch.equal(other.dynamics()[0], values)


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="module must be a TorchScript module"):
        svcca.TrainingMonitor(Net(), _probe())
    with pytest.raises(ValueError, match=r"probe of shape \[40, 1, 5, 5\]"):
        svcca.TrainingMonitor(_model(), torch.randn(40, 1, 5, 5))
    with pytest.raises(ValueError, match="nope"):
        svcca.TrainingMonitor(_model(), _probe(), layers=["nope"])
    with pytest.raises(ValueError, match="measure"):
        svcca.TrainingMonitor(_model(), _probe(), measure="cosine")
    monitor = svcca.TrainingMonitor(_model(), _probe())
    monitor.record(3)
    with pytest.raises(ValueError, match="3"):
        monitor.record(3)
    with pytest.raises(ValueError, match="recorded"):
        monitor.grid(7)
    with pytest.raises(TypeError, match="module must be a TorchScript module"):
        monitor.record(4, Net())
