"""Activation capture from tapped TorchScript models (svcca.capture, svcca.tap_model).

A tapped model is a TorchScript module with a method ``forward_tapped`` next to ``forward``: the
same computation, with ``torch.ops.svcca.tap`` after every submodule call. Make one with
:func:`tap_model` (or ``svcca::TappedModule`` in C++), load it with ``torch.jit.load`` after
``import svcca`` (which loads the op library), and read its captures with :func:`capture`.
"""
import contextlib
import fnmatch
import re
import threading

import torch

__all__ = ["capture", "tap_model", "layer_names", "list_layers"]

_LAYERS_ATTR = "svcca_layers"
_TYPES_ATTR = "svcca_layer_types"


class _ModeGate:
    """Which modules are held in eval mode, by which threads, and which run in their own mode.

    Shared by :func:`list_layers`, :func:`capture` and :func:`svcca.module_grid` (the Python
    counterpart of C++'s ``svcca::EvalMode``). ``eval_mode(modules)``: every submodule's
    training flag is counted, so the first holder saves it and sets ``False`` and the last puts
    it back, whatever the order in which threads finish; it first waits for captures of other
    threads running in the module's own mode. ``run(module)``: a capture on a thread that holds
    the module in eval mode runs at once (in eval mode); on any other thread it waits until no
    thread holds it, so it never runs in a mode it did not ask for. Keyed by ``id`` of the module
    passed (a gate on a submodule does not hold back its parent's captures).
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._holders = {}  # id(module) -> {thread id: count}
        self._plain = {}    # id(module) -> captures in flight in the module's own mode
        self._flags = {}    # id(submodule) -> [count, saved flag]

    @contextlib.contextmanager
    def eval_mode(self, modules):
        tid = threading.get_ident()
        keys = [id(m) for m in modules]
        with self._cv:
            self._cv.wait_for(lambda: all(self._plain.get(k, 0) == 0 for k in keys))
            for k in keys:
                holders = self._holders.setdefault(k, {})
                holders[tid] = holders.get(tid, 0) + 1
            subs = list({id(mod): mod for m in modules for mod in m.modules()}.values())
            fresh = []
            for mod in subs:  # save every flag before changing any
                f = self._flags.get(id(mod))
                if f is None:
                    f = self._flags[id(mod)] = [0, mod.training]
                    fresh.append(mod)
                f[0] += 1
            for mod in fresh:
                mod.training = False  # this module only (train(False) would recurse)
        try:
            yield
        finally:
            with self._cv:
                for mod in subs:
                    f = self._flags[id(mod)]
                    f[0] -= 1
                    if f[0] == 0:
                        mod.training = f[1]
                        del self._flags[id(mod)]
                for k in keys:
                    holders = self._holders[k]
                    holders[tid] -= 1
                    if holders[tid] == 0:
                        del holders[tid]
                    if not holders:
                        del self._holders[k]
                self._cv.notify_all()

    @contextlib.contextmanager
    def run(self, module):
        tid = threading.get_ident()
        k = id(module)
        with self._cv:
            plain = tid not in self._holders.get(k, {})
            if plain:
                self._cv.wait_for(lambda: not self._holders.get(k))
                self._plain[k] = self._plain.get(k, 0) + 1
        try:
            yield
        finally:
            if plain:
                with self._cv:
                    self._plain[k] -= 1
                    if self._plain[k] == 0:
                        del self._plain[k]
                    self._cv.notify_all()


_GATE = _ModeGate()


def tap_model(path, output_path, method_name="forward_tapped"):
    """Load the TorchScript model at ``path``, add the tapped method, save it to ``output_path``.

    The file is written to a temporary name and renamed. Returns the layer names (module paths
    such as ``"layer1.0.conv1"``, in graph order). Raises for a file that is not a TorchScript
    archive and for a frozen model (``torch.jit.freeze`` removes module boundaries: tap first).
    """
    return list(torch.ops.svcca.tap_model(str(path), str(output_path), method_name))


def layer_names(module):
    """The layer names stored in a tapped module (empty list when the module was not tapped)."""
    return list(getattr(module, _LAYERS_ATTR, []))


def _edit_distance(a, b):
    """Levenshtein distance (the C++ side ranks the closest names the same way)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[-1]


def _resolve(module, layers):
    """Exact names, globs (``*`` crosses dots) and ``"re:<regex>"`` patterns to layer names."""
    if layers is None:
        return []
    if isinstance(layers, str):
        layers = [layers]
    names = layer_names(module)
    if not names:  # no stored names: pass them through, the taps match by name
        return list(layers)
    chosen = set()
    for pattern in layers:
        if pattern.startswith("re:"):
            rx = re.compile(pattern[3:])
            hits = [n for n in names if rx.fullmatch(n)]
        elif any(c in pattern for c in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        else:
            if pattern not in names:
                close = sorted(names, key=lambda n: _edit_distance(pattern, n))[:3]
                raise ValueError("capture: layer name must exist in the module, but got %r; "
                                 "closest existing names: %s" % (pattern, ", ".join(map(repr, close))))
            hits = [pattern]
        if not hits:
            raise ValueError("capture: pattern must match at least one layer, but got %r, which "
                             "matches none of %s" % (pattern, ", ".join(map(repr, names[:8]))))
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _describe(inputs):
    return "(%s)" % ", ".join("Tensor %s %s" % (list(x.shape), str(x.dtype).replace("torch.", ""))
                              if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)


def capture(module, *inputs, layers=None, detach=True, method="forward_tapped"):
    """Run ``module.<method>(*inputs)`` and return ``(output, captures)``.

    ``captures`` maps each record name to the list of its values in call order (a module called
    twice has two; tuple outputs are recorded element-wise as ``"<name>:<i>"``). ``layers``: names,
    globs or ``"re:<regex>"`` patterns (default: every layer); an unknown name is a ValueError that
    lists the closest names. ``detach=False`` keeps the captures in the autograd graph (for
    similarity losses). The recording always ends, also when forward raises.

    The module runs in its current mode: call ``module.eval()`` first to measure a model saved in
    training mode (BatchNorm batch statistics, dropout). Thread-safe: while another thread holds
    the module in eval mode for :func:`list_layers` or :func:`svcca.module_grid`, the capture
    waits for it to end rather than run in a mode it did not ask for.
    """
    fn = getattr(module, method, None)
    if fn is None:
        raise ValueError("capture: module must have the tapped method %r (make it with "
                         "svcca.tap_model), but got a %s without it" % (method, type(module).__name__))
    names = _resolve(module, layers)
    with _GATE.run(module):
        torch.ops.svcca._capture_begin(names, bool(detach))
        try:
            output = fn(*inputs)
        except RuntimeError as e:
            raise RuntimeError("capture: inputs must be accepted by the model's forward, but got "
                               "%s; the model raised: %s" % (_describe(inputs), e)) from e
        finally:
            record_names, values = torch.ops.svcca._capture_end()
    captures = {}
    for name, value in zip(record_names, values):
        captures.setdefault(name, []).append(value)
    return output, captures


def list_layers(module, *inputs, method="forward_tapped"):
    """Names, module types and output shapes of every record of one forward on ``inputs``.

    Returns a list of dicts ``{"name", "type", "shape", "dtype", "calls"}`` in call order (the
    shape of the first call; ``calls``: how many times the module ran). Runs the tapped method
    once in eval mode (so BatchNorm statistics do not move; every module's flag is restored) under
    ``torch.no_grad()``, recording shapes only: no activation is kept. Thread-safe: concurrent
    calls count the modules they hold in eval mode (the last one restores each flag), and a
    :func:`capture` of the module on another thread waits until they are done.
    """
    fn = getattr(module, method, None)
    if fn is None:
        raise ValueError("list_layers: module must have the tapped method %r (make it with "
                         "svcca.tap_model), but got a %s without it" % (method, type(module).__name__))
    types = dict(zip(getattr(module, _LAYERS_ATTR, []), getattr(module, _TYPES_ATTR, [])))
    with _GATE.eval_mode([module]), torch.no_grad():
        torch.ops.svcca._capture_begin([], True, True)
        try:
            fn(*inputs)
        finally:
            names, values = torch.ops.svcca._capture_end()
    layers, index = [], {}
    for name, value in zip(names, values):
        if name in index:
            layers[index[name]]["calls"] += 1
            continue
        index[name] = len(layers)
        layers.append({"name": name, "type": types.get(name.split(":")[0], ""),
                       "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                       "calls": 1})
    return layers
