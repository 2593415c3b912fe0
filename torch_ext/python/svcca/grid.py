"""Layer x layer grids in Python: svcca.Grid, svcca.similarity_grid and svcca.module_grid.

``similarity_grid`` compares tensors you already have; ``module_grid`` runs an eager
``torch.nn.Module`` (no scripting) with forward hooks and compares the outputs of its submodules,
in as many passes over the inputs as a memory budget needs. Both return a :class:`Grid`, which
writes the report files of ``svcca::write_grid_files`` (``grid.json``, ``.csv``, ``.svg``,
``.png``). The C++ side is ``torch.classes.svcca.GridBuilder`` (``svcca::GridBuilder``: each layer
is reduced to its factor when it is added, so its activations can be dropped at once).
"""
import collections.abc
import fnmatch
import math
import re
import sys

import torch

from .capture import _GATE, _edit_distance

__all__ = ["Grid", "similarity_grid", "module_grid", "default_memory_budget"]

_OPTION_DEFAULTS = {"fraction": 0.99, "dims": None, "epsilon": 0.0, "precision": "float64",
                    "side": "auto", "rank_rtol": None, "allow_forced_correlations": False}


def default_memory_budget():
    """The C++ ``svcca::default_memory_budget()`` in bytes: ``min(MemTotal / 4, MemAvailable / 2)``
    from ``/proc/meminfo`` (1 GiB where it cannot be read)."""
    return int(torch.ops.svcca.default_memory_budget())


class Grid:
    """A grid of similarities with its labels (C++ ``svcca::Grid``).

    ``values``: ``[len(rows), len(cols)]`` float64 CPU tensor; ``values[i, j]`` is ``measure`` of
    ``rows[i]`` (x) against ``cols[j]`` (y). ``undefined``: the NaN cells grouped by cause, a list
    of ``(reason, [[row, col], ...])``, empty when every cell is defined. ``options``: every option
    that affected the numbers (``{str: str}``). ``examples``: the number of examples compared.
    """

    def __init__(self, values, rows, cols, measure, examples=0, options=None, undefined=None,
                 row_label="layer", col_label="layer"):
        self.values = torch.as_tensor(values, dtype=torch.float64)
        self.rows = [str(r) for r in rows]
        self.cols = [str(c) for c in cols]
        if tuple(self.values.shape) != (len(self.rows), len(self.cols)):
            raise ValueError("Grid: values must have shape [rows, cols] = [%d, %d], but got %s"
                             % (len(self.rows), len(self.cols), list(self.values.shape)))
        self.measure = str(measure)
        self.examples = int(examples)
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.undefined = [(str(reason), [[int(i), int(j)] for i, j in cells])
                          for reason, cells in (undefined or [])]
        self.row_label = str(row_label)
        self.col_label = str(col_label)

    @classmethod
    def _from_tuple(cls, t):
        values, rows, cols, measure, examples, options, reasons, cells, row_label, col_label = t
        undefined = [(r, c.tolist()) for r, c in zip(reasons, cells)]
        return cls(values, list(rows), list(cols), measure, examples, dict(options), undefined,
                   row_label, col_label)

    @property
    def shape(self):
        """``(len(rows), len(cols))``."""
        return tuple(self.values.shape)

    def raise_if_undefined(self):
        """Return this grid when every cell is defined; else raise ValueError listing each reason
        once with its number of cells."""
        if not self.undefined:
            return self
        total = sum(len(c) for _, c in self.undefined)
        lines = ["  %s (%d cell%s)" % (r, len(c), "" if len(c) == 1 else "s")
                 for r, c in self.undefined]
        raise ValueError("Grid: every cell must be defined, but %d of %d cells are undefined:\n%s"
                         % (total, self.values.numel(), "\n".join(lines)))

    def to_dict(self):
        """The fields of ``grid.json`` (without ``versions``): ``rows``, ``cols``, ``values``
        (nested lists, ``None`` for NaN), ``measure``, ``row_label``, ``col_label``, ``examples``,
        ``options``, ``undefined`` (``[{"reason", "cells": [[row, col], ...]}]``)."""
        values = [[v if math.isfinite(v) else None for v in row] for row in self.values.tolist()]
        return {"rows": list(self.rows), "cols": list(self.cols), "values": values,
                "measure": self.measure, "row_label": self.row_label,
                "col_label": self.col_label, "examples": self.examples,
                "options": dict(self.options),
                "undefined": [{"reason": r, "cells": [list(c) for c in cells]}
                              for r, cells in self.undefined]}

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`; also reads a parsed ``grid.json`` (``None`` -> NaN)."""
        values = [[float("nan") if v is None else float(v) for v in row] for row in d["values"]]
        values = torch.tensor(values, dtype=torch.float64).reshape(len(d["rows"]), len(d["cols"]))
        undefined = [(u["reason"], u["cells"]) for u in d.get("undefined", [])]
        return cls(values, d["rows"], d["cols"], d["measure"], d.get("examples", 0),
                   d.get("options", {}), undefined, d.get("row_label", "layer"),
                   d.get("col_label", "layer"))

    def write(self, dir, stem="grid", title=None, vmin=0.0, vmax=1.0):
        """Write ``<dir>/<stem>.json``, ``.csv``, ``.svg`` and ``.png`` (each to a temporary name,
        then renamed; ``dir`` is created if missing) and return their paths. ``title``: the
        heatmaps' title (default ``"<measure> (<examples> examples)"``); ``vmin``/``vmax``: the
        colour scale. Raises for a path that cannot be written."""
        cells = [torch.tensor(c, dtype=torch.int64).reshape(-1, 2) for _, c in self.undefined]
        return list(torch.ops.svcca._write_grid_files(
            self.values, self.rows, self.cols, self.measure, self.examples, self.options,
            [r for r, _ in self.undefined], cells, self.row_label, self.col_label, str(dir),
            str(stem), "" if title is None else str(title), float(vmin), float(vmax)))

    def __repr__(self):
        n_undef = sum(len(c) for _, c in self.undefined)
        head = "Grid(%s, %d x %d, %d examples%s)" % (
            self.measure, len(self.rows), len(self.cols), self.examples,
            ", %d undefined cells" % n_undef if n_undef else "")
        limit = 10
        rows, cols = self.rows[:limit], self.cols[:limit]

        def short(s, w=14):
            return s if len(s) <= w else "..." + s[-(w - 3):]
        width = max([len(short(r)) for r in rows] + [4])
        lines = [head, " " * width + "".join(" %8s" % short(c, 8) for c in cols)
                 + (" ..." if len(self.cols) > limit else "")]
        vals = self.values.tolist()
        for i, r in enumerate(rows):
            cells = "".join(" %8s" % ("%.4f" % v if math.isfinite(v) else "null")
                            for v in vals[i][:limit])
            lines.append(short(r).ljust(width) + cells + (" ..." if len(self.cols) > limit else ""))
        if len(self.rows) > limit:
            lines.append("... (%d more rows)" % (len(self.rows) - limit))
        for reason, cells in self.undefined:
            lines.append("undefined (%d): %s" % (len(cells), reason))
        return "\n".join(lines)


def _named_layers(fn, arg, layers):
    """[(name, tensor)] from a list of tensors ("0", "1", ...), a dict, or (name, tensor) pairs."""
    if torch.is_tensor(layers):
        raise TypeError("%s: %s must be a list or dict of tensors (one per layer), but got a single "
                        "tensor of shape %s; wrap it in a list" % (fn, arg, list(layers.shape)))
    if isinstance(layers, dict):
        items = [(str(k), v) for k, v in layers.items()]
    else:
        items = list(layers)
        if all(torch.is_tensor(v) for v in items):
            items = [(str(i), v) for i, v in enumerate(items)]
        elif all(isinstance(v, (tuple, list)) and len(v) == 2 and isinstance(v[0], str)
                 and torch.is_tensor(v[1]) for v in items):
            items = [(k, v) for k, v in items]
        else:
            raise TypeError("%s: %s must be a list of tensors, a dict of tensors or a list of "
                            "(name, tensor) pairs, but got %s" % (fn, arg, [type(v).__name__
                                                                            for v in items][:6]))
    for name, v in items:
        if not torch.is_tensor(v):
            raise TypeError("%s: %s[%r] must be a tensor, but got %s"
                            % (fn, arg, name, type(v).__name__))
    return items


def _options(fn, options):
    unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
    if unknown:
        raise TypeError("%s: unexpected option(s) %s; the options are %s"
                        % (fn, ", ".join(unknown), ", ".join(_OPTION_DEFAULTS)))
    o = dict(_OPTION_DEFAULTS)
    o.update(options)
    if not isinstance(o["allow_forced_correlations"], bool):
        raise TypeError("%s: allow_forced_correlations must be a bool, but got %r"
                        % (fn, o["allow_forced_correlations"]))
    return (float(o["fraction"]), None if o["dims"] is None else int(o["dims"]),
            float(o["epsilon"]), str(o["precision"]), str(o["side"]),
            None if o["rank_rtol"] is None else float(o["rank_rtol"]),
            o["allow_forced_correlations"])


def similarity_grid(x, y=None, measure="cka", conv="auto", **options):
    """Layer x layer grid of ``x``'s layers (rows) against ``y``'s (columns; ``x``'s again when
    ``y`` is None): a :class:`Grid`, each layer's own work done once.

    ``x``, ``y``: a list of tensors (named ``"0"``, ``"1"``, ...), a dict ``{name: tensor}`` or a
    list of ``(name, tensor)`` pairs; every tensor is ``[n, ...]`` with the same ``n``.
    ``measure``: ``"cka"``, ``"debiased-cka"``, ``"rbf-cka"``, ``"cca"``, ``"svcca"``,
    ``"pwcca"`` (CCA family: the mean correlation; PWCCA is not symmetric) or ``"minibatch-cka"``.
    ``conv`` turns layers with more than 2 dims into ``[rows, features]``: ``"auto"`` (flatten for
    the CKA family, pool for the CCA family), ``"flatten"``, ``"pool"``, ``"cls"``, ``"fold"``,
    ``"fourier"`` (cca only). ``options``: ``fraction`` and ``dims`` (svcca), ``epsilon`` (the
    CCA family's ridge), ``precision`` (``"float64"`` or ``"input"``), ``side`` (``"auto"``,
    ``"features"``, ``"gram"``), ``rank_rtol`` (the CCA family's rank tolerance, None: automatic)
    and ``allow_forced_correlations`` (compute CCA-family cells whose layers keep more directions
    than n - 1, where some correlations are 1 for any data; default False: such cells are
    undefined, with that reason). A cell whose measure is undefined for its layers (a constant
    layer, cca with fewer than p + 2 examples, ...) is NaN and listed in ``Grid.undefined``; call
    ``grid.raise_if_undefined()`` to make that an error. ``torch.ops.svcca.similarity_grid`` is
    the TorchScript-callable op that returns the values only.

        g = svcca.similarity_grid({"conv1": a1, "fc": a2}, measure="svcca")
        g.values            # [2, 2] float64
        g.write("out")      # out/grid.json, .csv, .svg, .png
    """
    fraction, dims, epsilon, precision, side, rank_rtol, forced = _options("similarity_grid",
                                                                           options)
    a = _named_layers("similarity_grid", "x", x)
    b = None if y is None else _named_layers("similarity_grid", "y", y)
    t = torch.ops.svcca._similarity_grid(
        [v for _, v in a], [k for k, _ in a], None if b is None else [v for _, v in b],
        None if b is None else [k for k, _ in b], measure, conv, fraction, dims, epsilon,
        precision, side, rank_rtol, forced)
    return Grid._from_tuple(t)


# ---- module_grid ---------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a hook once every wanted output of a batch is captured: the rest of forward is
    not needed."""


def _match(arg, names, patterns):
    """Module names matched by exact names, fnmatch globs (``*`` crosses dots) or ``re:`` regexes.
    Raises ValueError for an unknown exact name (listing the closest) and a pattern matching
    nothing."""
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError("module_grid: %s must be names or patterns (str), but got %s"
                            % (arg, type(p).__name__))
        if p.startswith("re:"):
            rx = re.compile(p[3:])
            hits = [n for n in names if rx.fullmatch(n)]
        elif any(c in p for c in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        else:
            if p not in names:
                close = sorted(names, key=lambda n: (_edit_distance(p, n), n))[:5]
                raise ValueError("module_grid: %s must name modules of the model, but got %r; "
                                 "closest module names: %s"
                                 % (arg, p, ", ".join(map(repr, close))))
            hits = [p]
        if not hits:
            raise ValueError("module_grid: %s pattern %r must match at least one module, but it "
                             "matches none of %s%s" % (arg, p, ", ".join(map(repr, names[:8])),
                                                       ", ..." if len(names) > 8 else ""))
        chosen.update(hits)
    return chosen


def _select(model, layers, exclude):
    names = [n for n, _ in model.named_modules() if n != ""]
    if not names:
        raise ValueError("module_grid: model must have submodules (the grid compares their "
                         "outputs), but a %s has none" % type(model).__name__)
    chosen = set(names) if layers is None else _match("layers", names, layers)
    if exclude is not None:
        chosen -= _match("exclude", names, exclude)
    selected = [n for n in names if n in chosen]
    if not selected:
        raise ValueError("module_grid: layers and exclude must leave at least one module, but the "
                         "selection is empty (layers=%r, exclude=%r)" % (layers, exclude))
    return selected


def _batches(inputs, batch_size, device):
    """Batches of examples from a tensor (split along dim 0) or an iterable of batches (a tensor,
    or a tuple / list whose first element is the tensor)."""
    if torch.is_tensor(inputs):
        for b in torch.split(inputs, batch_size):
            yield b.to(device)
        return
    for k, b in enumerate(inputs):
        if isinstance(b, (tuple, list)) and len(b) > 0:
            b = b[0]
        if not torch.is_tensor(b):
            raise TypeError("module_grid: inputs must give tensors or (tensor, ...) tuples, but "
                            "batch %d is a %s" % (k, type(b).__name__))
        yield b.to(device)


def _flatten_output(output):
    """[(suffix, tensor)] of a module output: a tensor (""), or a tuple / list / dict of them
    (":0", ":1", ... or ":<key>"); other values are skipped."""
    if torch.is_tensor(output):
        return [("", output)]
    if isinstance(output, (tuple, list)):
        return [(":%d" % i, v) for i, v in enumerate(output) if torch.is_tensor(v)]
    if isinstance(output, dict):
        return [(":%s" % k, v) for k, v in output.items() if torch.is_tensor(v)]
    return []


_CKA_FAMILY = ("cka", "debiased-cka", "rbf-cka", "minibatch-cka")


def _pool(v, conv):
    """The C++ grid's kPool / kCls reduction of one batch (per example, so exact batch by batch):
    [n, c, h, w] and [n, c, ...] -> mean over the spatial axes; [n, t, d] -> the mean over tokens
    (pool) or the first token (cls)."""
    if v.dim() == 3:
        return v[:, 0] if conv == "cls" else v.mean(1)
    if v.dim() == 4:
        return v.mean((2, 3))
    return v.reshape(v.shape[0], v.shape[1], -1).mean(2)


class _Recorder:
    """Forward hooks on the selected modules of one model. A record key is (module name, call
    index, output suffix); ``wanted`` None records every floating output (the first batch)."""

    def __init__(self, model, names):
        modules = dict(model.named_modules())
        self.order = {n: i for i, n in enumerate(names)}
        self.modules = [(n, modules[n]) for n in names]
        self.handles = []
        self.wanted = None
        self.store = {}
        self.calls = {}
        self.remaining = 0
        self.pool = None  # "pool" / "cls": reduce conv and token layers as they are recorded
        self.batch_n = -1

    def hook(self, name):
        def fn(module, inputs, output):
            k = self.calls.get(name, 0) + 1
            self.calls[name] = k
            for suffix, v in _flatten_output(output):
                if not v.is_floating_point():
                    continue
                key = (name, k, suffix)
                if self.wanted is not None and key not in self.wanted:
                    continue
                if self.pool is not None and v.dim() >= 3 and v.shape[0] == self.batch_n:
                    v = _pool(v.detach(), self.pool).clone()
                else:
                    v = v.detach().clone()  # later in-place ops in forward would rewrite it
                if v.dtype not in (torch.float32, torch.float64):
                    v = v.float()
                self.store.setdefault(key, []).append(v)
                if self.wanted is not None:
                    self.remaining -= 1
                    if self.remaining == 0:
                        raise _Stop()
        return fn

    def attach(self, names):
        self.detach()
        for n, m in self.modules:
            if n in names:
                self.handles.append(m.register_forward_hook(self.hook(n)))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def run(self, model, batch):
        self.calls = {}
        self.batch_n = batch.shape[0] if batch.dim() > 0 else -1
        self.remaining = 0 if self.wanted is None else len(self.wanted)
        try:
            model(batch)
        except _Stop:
            pass


def _entry_names(keys):
    """Row names of record keys: "name", "name#k" for a module called more than once per forward,
    then the output suffix."""
    most = {}
    for n, k, _ in keys:
        most[n] = max(most.get(n, 0), k)
    return {key: key[0] + ("#%d" % key[1] if most[key[0]] > 1 else "") + key[2] for key in keys}


def _fmt_bytes(b):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return "%.1f %s (%d bytes)" % (b / size, unit, b)
    return "%d bytes" % b


def module_grid(model, inputs, other=None, layers=None, exclude=None, measure="cka", conv="auto",
                batch_size=64, memory=None, device=None, progress=False, **options):
    """Layer x layer grid of an eager ``torch.nn.Module``'s submodule outputs (no scripting).

    Forward hooks on ``model.named_modules()`` record each selected module's output; by default
    every module except the root (containers included: a ``Sequential``'s output is its last
    child's). ``layers`` / ``exclude``: module names, fnmatch globs (``*`` crosses dots:
    ``"layer1.*"``) or ``"re:<regex>"`` patterns; an unknown exact name is a ValueError listing
    the closest names. Each output is cloned (in-place ops later in forward would rewrite it);
    only floating tensors are kept (float16 / bfloat16 become float32); a tuple / list output gives
    one layer per tensor element, ``"name:0"``, ``"name:1"`` (a dict: ``"name:<key>"``); a module
    called more than once per forward gives one layer per call, ``"name#1"``, ``"name#2"``, ...;
    an output that is not ``[examples, ...]`` (a 1-D ``[examples]`` output becomes
    ``[examples, 1]``) gives undefined cells with the reason. Rows are in module order.

    ``inputs``: a tensor ``[n, ...]`` (run in batches of ``batch_size``) or an iterable of batches
    (a ``DataLoader``: each batch a tensor or a ``(tensor, label, ...)`` tuple, of which the first
    element is fed). The model may need several passes over the inputs (see ``memory``), so an
    iterable must give the same batches, in the same order, every time it is iterated (a
    ``DataLoader`` with ``shuffle=False`` and no random augmentation; not a generator): the
    number of examples is checked on every pass. ``other``: a second model run on the same inputs;
    its layers are the columns (``layers`` / ``exclude`` apply to both). The models run in eval
    mode under ``torch.no_grad()`` (BatchNorm statistics do not move) and every module gets its
    own training flag back afterwards, also on error. Batches are moved to ``device`` (default:
    the device of the model's first parameter, else the CPU); the model is not moved.

    ``memory``: budget in bytes for the captured activations (default
    :func:`default_memory_budget`). Each layer's size for all ``n`` examples is estimated from the
    first batch (numel per example x element size x n); layers are grouped, in module order, into
    passes whose activations fit the budget. In each pass every layer's batches are concatenated,
    added to the C++ ``GridBuilder`` (which keeps only its factor) and dropped before the next
    pass; a pass runs forward only until its last layer's output. Under ``conv="pool"`` /
    ``"cls"`` (and ``"auto"`` with a CCA-family measure) conv and token layers are pooled as they
    are recorded, so a layer takes ``c`` numbers per example instead of ``c * h * w``. A layer
    larger than the budget alone is a ValueError (use ``conv="pool"``, fewer examples, or a larger
    ``memory``). Beyond the budget, the first batch of every selected layer is held once, and one
    layer's concatenated copy during its hand-off. When ``inputs`` is an iterable the number of
    examples is only known after the first pass, which keeps the layers that still fit as it goes.

    ``measure``, ``conv`` and ``options`` (``fraction``, ``dims``, ``epsilon``, ``precision``,
    ``side``, ``rank_rtol``, ``allow_forced_correlations``) as in :func:`similarity_grid`; ``conv="fourier"`` needs every layer at once and is
    not supported here (capture the layers and use :func:`similarity_grid`). Returns a
    :class:`Grid` whose options also record ``passes``, ``memory_budget``, ``layers`` (the
    selection), ``exclude`` and ``batch_size``. ``progress``: one line per pass on stderr.

        g = svcca.module_grid(model, images[:256], layers=["layer*", "fc"], measure="cka")
        g.write("out")

    Raises ValueError naming the argument: an unknown layer name, an empty selection, a memory
    budget smaller than one layer, inputs whose number of examples differs between passes, a
    non-positive ``batch_size`` or ``memory``.
    """
    fn = "module_grid"
    opts = _options(fn, options)
    models = [model] if other is None else [model, other]
    for arg, m in zip(("model", "other"), models):
        if isinstance(m, torch.jit.ScriptModule):
            raise TypeError("module_grid: %s must be an eager torch.nn.Module (TorchScript modules "
                            "do not run Python forward hooks: use svcca.tap_model and "
                            "svcca.capture), but got a %s" % (arg, type(m).__name__))
        if not isinstance(m, torch.nn.Module):
            raise TypeError("module_grid: %s must be a torch.nn.Module, but got %s"
                            % (arg, type(m).__name__))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("module_grid: batch_size must be a positive int, but got %r" % (batch_size,))
    budget = default_memory_budget() if memory is None else memory
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError("module_grid: memory must be a positive number of bytes, but got %r"
                         % (memory,))
    if conv == "fourier":
        raise ValueError("module_grid: conv \"fourier\" needs every layer at once, which "
                         "module_grid does not hold; capture the layers and call "
                         "svcca.similarity_grid(..., measure=\"cca\", conv=\"fourier\")")
    # Bad measure / conv / options fail here, before the model runs.
    torch.classes.svcca.GridBuilder(["x"], [], measure, conv, *opts)
    pool = conv if conv in ("pool", "cls") else (
        "pool" if conv == "auto" and measure not in _CKA_FAMILY else None)
    if torch.is_tensor(inputs):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise ValueError("module_grid: inputs must be a tensor [n, ...] with n >= 1, but got "
                             "shape %s" % list(inputs.shape))
        n_known = int(inputs.shape[0])
    else:
        n_known = None
    one_shot = isinstance(inputs, collections.abc.Iterator)  # (iter() would start a pass)
    selected = [_select(m, layers, exclude) for m in models]
    if device is None:
        p = next(model.parameters(), None)
        if p is None:
            p = next(model.buffers(), None)
        device = p.device if p is not None else torch.device("cpu")
    recorders = [_Recorder(m, names) for m, names in zip(models, selected)]
    for r in recorders:
        r.pool = pool

    def say(msg):
        if progress:
            print("module_grid: " + msg, file=sys.stderr, flush=True)

    try:
        # Eval mode for every submodule, each flag put back afterwards; counted per submodule and
        # shared with svcca.list_layers / svcca.capture on other threads (svcca.capture._GATE).
        with _GATE.eval_mode(models), torch.no_grad():
            return _module_grid(fn, models, recorders, selected, inputs, n_known, one_shot,
                                batch_size, budget, device, measure, conv,
                                opts, layers, exclude, say)
    finally:
        for r in recorders:
            r.detach()


def _module_grid(fn, models, recorders, selected, inputs, n_known, one_shot, batch_size, budget,
                 device, measure, conv, opts, layers, exclude, say):
    # Pass 1, first batch: every selected module records everything, to learn the layers.
    for r, names in zip(recorders, selected):
        r.attach(set(names))
        r.wanted = None
    batches = iter(_batches(inputs, batch_size, device))
    first = next(batches, None)
    if first is None:
        raise ValueError("module_grid: inputs must give at least one batch, but gave none")
    b0 = first.shape[0] if first.dim() > 0 else 0
    for m, r in zip(models, recorders):
        r.run(m, first)
    units = []  # in module order: model's layers, then other's
    for side, r in enumerate(recorders):
        keys = sorted(r.store, key=lambda k: (r.order[k[0]], k[1], k[2]))
        names = _entry_names(keys)
        for key in keys:
            v = r.store[key][0]
            u = {"side": side, "key": key, "name": names[key], "reason": None}
            if v.dim() == 1 and v.shape[0] == b0:
                r.store[key][0] = v = v.unsqueeze(1)
            if v.dim() < 2 or v.shape[0] != b0:
                u["reason"] = ("layer \"%s\": its output of shape %s is not one row per example "
                               "(the batch has %d examples)" % (names[key], list(v.shape), b0))
                del r.store[key]
            u["per_example"] = v[0].numel() * v.element_size() if v.dim() >= 1 else 0
            u["shape"] = list(v.shape[1:])
            units.append(u)
    for side, names in enumerate(selected):
        got = {u["key"][0] for u in units if u["side"] == side}
        if layers is not None and not got:
            raise ValueError("module_grid: layers must select modules with floating tensor "
                             "outputs, but none of %s gives one" % ", ".join(map(repr, names[:8])))
    rows = [u["name"] for u in units if u["side"] == 0]
    cols = [u["name"] for u in units if u["side"] == 1]
    if not rows or (len(models) == 2 and not cols):
        which = "model" if not rows else "other"
        raise ValueError("module_grid: layers must select modules whose output is a floating "
                         "tensor, but no selected module of %s gives one" % which)
    builder = torch.classes.svcca.GridBuilder(rows, cols, measure, conv, *opts)
    for u in units:
        if u["reason"] is not None:
            builder.add_undefined(u["name"], u["reason"], u["side"] == 1)
    todo = [u for u in units if u["reason"] is None]
    if conv == "fold":
        hw = [u["shape"][1:] for u in todo if len(u["shape"]) == 3]
        if hw:
            builder.set_fold_size(max(h for h, _ in hw), max(w for _, w in hw))

    def too_big(u, n):
        return ValueError(
            "module_grid: memory must hold at least one layer, but layer \"%s\" (%s per example) "
            "needs %s for %d examples and the budget is %s; use conv=\"pool\" (a [n, c] layer "
            "per conv layer), fewer examples, or a larger memory"
            % (u["name"], _fmt_bytes(u["per_example"]), _fmt_bytes(u["per_example"] * n), n,
               _fmt_bytes(budget)))

    def plan(units_left, n):
        passes, cur, used = [], [], 0
        for u in units_left:
            need = u["per_example"] * n
            if need > budget:
                raise too_big(u, n)
            if cur and used + need > budget:
                passes.append(cur)
                cur, used = [], 0
            cur.append(u)
            used += need
        if cur:
            passes.append(cur)
        return passes

    def admit(n):
        """The prefix of `todo` that fits for n examples (pass 1)."""
        out, used = [], 0
        for u in todo:
            need = u["per_example"] * n
            if not out and need > budget:
                raise too_big(u, n)
            if used + need > budget:
                break
            out.append(u)
            used += need
        return out

    def want(pass_units):
        for side, r in enumerate(recorders):
            keys = {u["key"] for u in pass_units if u["side"] == side}
            r.wanted = keys
            r.attach({k[0] for k in keys})
            r.store = {k: v for k, v in r.store.items() if k in keys}

    def hand_off(pass_units):
        for u in pass_units:
            r = recorders[u["side"]]
            parts = r.store.pop(u["key"])
            t = torch.cat([p.unsqueeze(1) if p.dim() == 1 else p for p in parts])
            del parts
            builder.add(u["name"], t, u["side"] == 1)
            del t

    def run_batch(batch, pass_units):
        for side, (m, r) in enumerate(zip(models, recorders)):
            if r.wanted:
                r.run(m, batch)
                missing = [u["name"] for u in pass_units if u["side"] == side
                           and len(r.store.get(u["key"], ())) != n_batches[0]]
                if missing:
                    raise ValueError("module_grid: inputs must make every selected module run "
                                     "as on the first batch, but batch %d gave no output for %s"
                                     % (n_batches[0] - 1, ", ".join(map(repr, missing[:5]))))

    # Pass 1: the layers that fit (for n_known, or for the examples seen so far).
    if n_known is not None:
        plan(todo, n_known)  # a layer larger than the budget fails before any work
    n_seen = b0
    first_pass = admit(n_known if n_known is not None else n_seen)
    want(first_pass)
    n_batches = [1]
    passes_done = 1
    say("pass 1: %d layer(s)%s" % (len(first_pass), "" if n_known is not None else
                                    " (fewer if they stop fitting as examples come)"))
    for batch in batches:
        n_batches[0] += 1
        run_batch(batch, first_pass)
        n_seen += batch.shape[0]
        if n_known is None:
            fit = admit(n_seen)
            if len(fit) < len(first_pass):
                first_pass = fit
                want(first_pass)  # drops the evicted layers' batches
    n = n_seen
    hand_off(first_pass)
    done = {id(u) for u in first_pass}
    rest = plan([u for u in todo if id(u) not in done], n)
    total = 1 + len(rest)
    for p, pass_units in enumerate(rest, start=2):
        if one_shot:
            raise ValueError("module_grid: inputs must be iterable more than once (a tensor, a "
                             "list or a DataLoader, not an iterator or generator): %d passes are "
                             "needed under the memory budget of %s" % (total, _fmt_bytes(budget)))
        say("pass %d/%d: %d layer(s)" % (p, total, len(pass_units)))
        want(pass_units)
        n_batches[0] = 0
        count = 0
        for batch in _batches(inputs, batch_size, device):
            n_batches[0] += 1
            run_batch(batch, pass_units)
            count += batch.shape[0]
        if count != n:
            raise ValueError("module_grid: inputs must give the same batches every time they are "
                             "iterated, but pass %d gave %d examples and pass 1 gave %d"
                             % (p, count, n))
        hand_off(pass_units)
        passes_done += 1
    g = Grid._from_tuple(builder.result())
    g.options["passes"] = str(passes_done)
    g.options["memory_budget"] = str(budget)
    g.options["layers"] = "all modules but the root" if layers is None else (
        layers if isinstance(layers, str) else ", ".join(layers))
    if exclude is not None:
        g.options["exclude"] = exclude if isinstance(exclude, str) else ", ".join(exclude)
    g.options["batch_size"] = str(batch_size) if torch.is_tensor(inputs) else "from inputs"
    return g
