"""Activation capture from tapped TorchScript models (svcca.capture, svcca.tap_model).

A tapped model is a TorchScript module with a method ``forward_tapped`` next to ``forward``: the
same computation, with ``torch.ops.svcca.tap`` after every submodule call. Make one with
:func:`tap_model` (or ``svcca::TappedModule`` in C++), load it with ``torch.jit.load`` after
``import svcca`` (which loads the op library), and read its captures with :func:`capture`.
"""
import fnmatch
import re

import torch

__all__ = ["capture", "tap_model", "layer_names", "list_layers"]

_LAYERS_ATTR = "svcca_layers"
_TYPES_ATTR = "svcca_layer_types"


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
    """
    fn = getattr(module, method, None)
    if fn is None:
        raise ValueError("capture: module must have the tapped method %r (make it with "
                         "svcca.tap_model), but got a %s without it" % (method, type(module).__name__))
    names = _resolve(module, layers)
    torch.ops.svcca._capture_begin(names, bool(detach))
    try:
        output = fn(*inputs)
    except RuntimeError as e:
        raise RuntimeError("capture: inputs must be accepted by the model's forward, but got %s; "
                           "the model raised: %s" % (_describe(inputs), e)) from e
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
    ``torch.no_grad()``, recording shapes only: no activation is kept.
    """
    fn = getattr(module, method, None)
    if fn is None:
        raise ValueError("list_layers: module must have the tapped method %r (make it with "
                         "svcca.tap_model), but got a %s without it" % (method, type(module).__name__))
    types = dict(zip(getattr(module, _LAYERS_ATTR, []), getattr(module, _TYPES_ATTR, [])))
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            torch.ops.svcca._capture_begin([], True, True)
            try:
                fn(*inputs)
            finally:
                names, values = torch.ops.svcca._capture_end()
    finally:
        for m, training in modes:  # parents first: children then get their own flag back
            m.train(training)
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
