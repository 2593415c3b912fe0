"""Training monitor for TorchScript models trained from Python (svcca.TrainingMonitor).

A thin wrapper of ``torch.classes.svcca.TrainingMonitor`` (C++ ``svcca::TrainingMonitor``): every
few steps it runs a fixed probe set through the model (no gradients, eval mode, every submodule's
training flag put back afterwards), keeps each layer's top-``summary_dims`` principal components
of its probe activations, and answers the layer x layer grid at a step, each layer's similarity to
its latest state over time (Raghu et al. 2017, Fig. 4) and which layers have converged.
"""
import torch

__all__ = ["TrainingMonitor"]


def _module_object(module, what="module"):
    if isinstance(module, torch.jit.ScriptModule):
        return module._c
    raise TypeError("TrainingMonitor: %s must be a TorchScript module (torch.jit.script or "
                    "torch.jit.trace of it, or torch.jit.load), but got %s"
                    % (what, type(module).__name__))


class TrainingMonitor:
    """Monitor ``module`` (a ``torch.jit.ScriptModule``) on ``probe`` ([n, ...]) while it trains.

    The monitor runs the very module you train (parameters are shared, nothing is copied); it
    adds a method ``forward_tapped`` to it and leaves ``forward`` as is. ``layers``: names, globs
    or ``"re:<regex>"`` patterns (default: every layer). ``summary_dims``: k of each layer's
    summary. ``measure``: ``"cka"`` (default), ``"debiased-cka"``, ``"rbf-cka"``, ``"cca"``,
    ``"svcca"`` or ``"pwcca"``, computed on the summaries. ``conv``: how layers with more than
    two dims become ``[n, p]``: ``"auto"``/``"flatten"`` or ``"pool"``.

        monitor = svcca.TrainingMonitor(model, probe)
        for step in range(steps):
            train_step(model)
            if step % 10 == 0:
                monitor.record(step)
        values, layers, steps = monitor.dynamics()
        monitor.freeze_suggestion(0.99, window=3)

    Raises ValueError / TypeError / RuntimeError with the argument named: a probe the model
    rejects (the model's message and the probe's shape), a pattern that matches nothing,
    steps that do not increase, an unrecorded step.
    """

    def __init__(self, module, probe, layers=None, summary_dims=32, measure="cka", conv="auto"):
        self._monitor = torch.classes.svcca.TrainingMonitor(
            _module_object(module), probe, list(layers or []), int(summary_dims), measure, conv)

    def record(self, step, module=None):
        """Record every layer's summary at ``step`` (steps must increase). ``module``: record
        another module with the same layers instead (e.g. a checkpoint); default: the monitored
        one."""
        if module is None:
            self._monitor.record(int(step))
        else:
            self._monitor.record_from(int(step), _module_object(module))

    @property
    def layers(self):
        """The recorded layers, input side first."""
        return list(self._monitor.layers())

    @property
    def steps(self):
        """The recorded steps, increasing."""
        return list(self._monitor.steps())

    @property
    def examples(self):
        """Number of probe examples."""
        return self._monitor.examples()

    def summary(self, layer, step):
        """The ``[n, k]`` float64 summary of ``layer`` at ``step``."""
        return self._monitor.summary(layer, int(step))

    def grid(self, step):
        """``(values [L, L], layers)``: the layer x layer grid at a recorded ``step``."""
        values, rows, _ = self._monitor.grid(int(step))
        return values, list(rows)

    def dynamics(self):
        """``(values [L, T], layers, steps)``: ``values[i, t]`` is the measure between layer
        ``i`` at recorded step ``t`` and at the latest step (the last column is 1)."""
        values, rows, cols = self._monitor.dynamics()
        return values, list(rows), [int(c) for c in cols]

    def convergence_steps(self, threshold):
        """``{layer: step}``: the earliest recorded step from which the layer stays at or above
        ``threshold`` similarity to its latest state."""
        return dict(zip(self.layers, self._monitor.convergence_steps(float(threshold))))

    def converged(self, threshold, window):
        """Layers at or above ``threshold`` at each of the ``window`` steps before the latest."""
        return list(self._monitor.converged(float(threshold), int(window)))

    def freeze_suggestion(self, threshold, window):
        """The longest run of converged layers from the input side (safe to freeze)."""
        return list(self._monitor.freeze_suggestion(float(threshold), int(window)))

    def save(self, path):
        """Save the recorded steps and summaries (written to a temporary name, then renamed)."""
        self._monitor.save(str(path))

    def load(self, path):
        """Replace the recorded steps and summaries with those saved at ``path``."""
        self._monitor.load(str(path))
