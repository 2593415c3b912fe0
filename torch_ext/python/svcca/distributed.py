"""torch.distributed for svcca's streaming accumulators: all-reduce their state dicts.

The accumulators (``torch.classes.svcca.CovarianceAccumulator`` and
``torch.classes.svcca.MinibatchCkaAccumulator``) expose their state as a dict of tensors
(``acc.state()``); after :func:`all_reduce_state`, ``acc.set_state(reduced)`` on every rank gives
the accumulator of all ranks' rows, as if one process had streamed them all.
"""
import math

import torch
import torch.distributed as dist

__all__ = ["all_reduce_state"]

_NO_UNIT = -1e9  # a rank that has seen only zeros (no spread) in a layer has no unit


def _exponent(scale):
    """k with scale == 2**k (scales in states are powers of two)."""
    mantissa, e = math.frexp(float(scale))
    if mantissa != 0.5:
        raise ValueError("all_reduce_state: scale entries must be finite positive powers of two, "
                         "but got %r" % float(scale))
    return e - 1


def _mul_pow2(t, k):
    """t * 2**k, exact, in steps that stay inside t's dtype's range."""
    step = 100 if t.dtype == torch.float32 else 1000
    while k != 0:
        c = max(-step, min(step, k))
        t = t * math.ldexp(1.0, c)
        k -= c
    return t


def _common_units(local, device, group):
    """MAX over ranks of each entry of ``local`` (``_NO_UNIT`` where a rank has none)."""
    t = _reduce(torch.tensor(local, dtype=torch.float64, device=device), dist.ReduceOp.MAX, group)
    return [0 if v <= _NO_UNIT else int(v) for v in t.cpu().tolist()]


def _reduce(tensor, op, group):
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_reduce_state(state_dict, group=None):
    """All-reduces an accumulator state across the ranks of ``group`` and returns the result.

    A collective: every rank must call it. Which reductions apply:

    * minibatch CKA state (``n_batches``, ``n``, ``hsic_*``): sums (``SUM``), after each rank
      rescales its sums to the common units (``scale_x``, ``scale_y``: ``MAX`` over ranks).
    * covariance state (``n``, ``mean.l``, ``comoment.l``, ``min.l``, ``max.l``, ``cross.a.b``):
      the co-moments are centered on each rank's mean (that keeps them exact), so they add up
      only once recentered to the global mean: ``SUM`` of ``n`` and ``n * mean`` gives the global
      mean, then ``SUM`` of ``comoment + n (mean_r - mean)(mean_r - mean)^T`` (and likewise for
      ``cross``), and ``MIN`` of ``min`` and of ``-max``. Counts are summed in float64 (exact up
      to 2**53 rows). First each layer's power-of-two unit ``scale.l`` reduces with ``MAX`` and
      every rank rescales its moments to it (exact). States without scales (older svcca) work.

    Every rank must have seen at least one batch (shapes come from the first batch); an empty
    state on any rank raises ValueError on every rank instead of hanging. Works with any backend
    that supports the tensors' device (gloo on CPU, nccl on CUDA). ``state_dict`` is not modified.
    """
    is_cov = "mean.0" in state_dict
    is_empty = len(state_dict) == 0
    n_keys = float(len(state_dict))
    device = torch.device("cpu") if is_empty else state_dict["n"].device
    # Agree first: [empty, kind, number of keys] and their negatives under MAX.
    sig = torch.tensor([1.0 if is_empty else 0.0, 1.0 if is_cov else 0.0, n_keys],
                       dtype=torch.float64, device=device)
    both = _reduce(torch.cat([sig, -sig]), dist.ReduceOp.MAX, group).cpu()
    if both[0].item() > 0.5:
        raise ValueError("all_reduce_state: state_dict must come from an accumulator that has seen "
                         "at least one batch on every rank, but at least one rank's is empty")
    if not torch.equal(both[:3], -both[3:]):
        raise ValueError("all_reduce_state: state_dict must have the same kind and keys on every "
                         "rank, but the ranks' states differ")

    if not is_cov:
        if "scale_x" in state_dict:
            # Power-of-two units of x and y (see MinibatchCkaAccumulator): rescale every rank's
            # sums to the largest unit of any rank with spread, then add up.
            state_dict = dict(state_dict)
            kx, ky = _exponent(state_dict["scale_x"]), _exponent(state_dict["scale_y"])
            k = _common_units([float(kx) if state_dict["hsic_xx"].item() > 0 else _NO_UNIT,
                               float(ky) if state_dict["hsic_yy"].item() > 0 else _NO_UNIT],
                              device, group)
            dx, dy = kx - k[0], ky - k[1]
            state_dict["hsic_xx"] = _mul_pow2(state_dict["hsic_xx"], 4 * dx)
            state_dict["hsic_yy"] = _mul_pow2(state_dict["hsic_yy"], 4 * dy)
            state_dict["hsic_xy"] = _mul_pow2(state_dict["hsic_xy"], 2 * dx + 2 * dy)
            scales = {"scale_x": math.ldexp(1.0, k[0]), "scale_y": math.ldexp(1.0, k[1])}
            keys = sorted(k for k in state_dict if k not in scales)
            sums = torch.cat([state_dict[k].reshape(1).to(torch.float64) for k in keys])
            _reduce(sums, dist.ReduceOp.SUM, group)
            out = {k: sums[i].clone().to(state_dict[k].dtype) for i, k in enumerate(keys)}
            for key, v in scales.items():
                out[key] = torch.tensor(v, dtype=state_dict[key].dtype, device=device)
            return out
        keys = sorted(state_dict)
        sums = torch.cat([state_dict[k].reshape(1).to(torch.float64) for k in keys])
        _reduce(sums, dist.ReduceOp.SUM, group)
        return {k: sums[i].clone().to(state_dict[k].dtype) for i, k in enumerate(keys)}

    n_layers = sum(1 for k in state_dict if k.startswith("mean."))
    out_scales = {}
    if "scale.0" in state_dict:
        # Power-of-two units per layer (see CovarianceAccumulator): rescale every rank's moments
        # to the largest unit of any rank with nonzero data in the layer.
        state_dict = dict(state_dict)
        mine = [_exponent(state_dict["scale.%d" % l]) for l in range(n_layers)]
        mags = [torch.maximum(state_dict["min.%d" % l].abs(), state_dict["max.%d" % l].abs())
                .max().item() for l in range(n_layers)]
        k = _common_units([float(m) if g > 0 else _NO_UNIT for m, g in zip(mine, mags)],
                          device, group)
        d = [a - b for a, b in zip(mine, k)]
        for l in range(n_layers):
            state_dict["mean.%d" % l] = _mul_pow2(state_dict["mean.%d" % l], d[l])
            state_dict["comoment.%d" % l] = _mul_pow2(state_dict["comoment.%d" % l], 2 * d[l])
            out_scales["scale.%d" % l] = torch.tensor(
                math.ldexp(1.0, k[l]), dtype=state_dict["scale.%d" % l].dtype, device=device)
        for key in [k for k in state_dict if k.startswith("cross.")]:
            _, a, b = key.split(".")
            state_dict[key] = _mul_pow2(state_dict[key], d[int(a)] + d[int(b)])
    n_local = state_dict["n"].to(torch.float64).reshape(1)
    means = [state_dict["mean.%d" % l] for l in range(n_layers)]
    sums = torch.cat([n_local] + [m.to(torch.float64) * n_local for m in means])
    _reduce(sums, dist.ReduceOp.SUM, group)
    n_total = sums[0]
    global_means, shifts, offset = [], [], 1
    for m in means:
        g = (sums[offset:offset + m.numel()] / n_total).to(m.dtype)
        global_means.append(g)
        shifts.append(m - g)
        offset += m.numel()

    nl = n_local.item()
    keys, moments = [], []
    for l in range(n_layers):
        key = "comoment.%d" % l
        keys.append(key)
        moments.append(state_dict[key] + nl * torch.outer(shifts[l], shifts[l]))
    for key in sorted(k for k in state_dict if k.startswith("cross.")):
        _, a, b = key.split(".")
        keys.append(key)
        moments.append(state_dict[key] + nl * torch.outer(shifts[int(a)], shifts[int(b)]))
    packed = torch.cat([m.reshape(-1) for m in moments])
    _reduce(packed, dist.ReduceOp.SUM, group)

    mins = [state_dict["min.%d" % l] for l in range(n_layers)]
    maxs = [state_dict["max.%d" % l] for l in range(n_layers)]
    extremes = torch.cat([t.to(torch.float64) for t in mins] + [-t.to(torch.float64) for t in maxs])
    _reduce(extremes, dist.ReduceOp.MIN, group)

    out = {"n": n_total.clone().reshape(state_dict["n"].shape)}
    offset = 0
    for key, m in zip(keys, moments):
        out[key] = packed[offset:offset + m.numel()].view(m.shape).clone()
        offset += m.numel()
    offset = 0
    for l in range(n_layers):
        p = mins[l].numel()
        out["mean.%d" % l] = global_means[l]
        out["min.%d" % l] = extremes[offset:offset + p].to(mins[l].dtype)
        offset += p
    for l in range(n_layers):
        p = maxs[l].numel()
        out["max.%d" % l] = (-extremes[offset:offset + p]).to(maxs[l].dtype)
        offset += p
    out.update(out_scales)
    return out
