"""ONNX converters of the math ops added for ONNX coverage (issue 14).

New IR ops: the inverse and hyperbolic trigonometric functions and Tan, Mod, IsNaN, BitShift and CumSum. The rest
are exact compositions of existing ops: Celu, Selu (elu), Mish, Softsign, Shrink, ThresholdedRelu, IsInf
(comparisons with +-inf), CastLike (cast), ReduceL1/L2/LogSum/LogSumExp/SumSquare, ArgMin (arg_max of an
order-reversed operand), Hardmax (arg_max compared with an iota), Trilu (where with a constant mask) and
MeanVarianceNormalization, InstanceNormalization, GroupNormalization, LpNormalization and (opset 23)
RMSNormalization and RotaryEmbedding.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, ints, norm_axis, onnx_dtype, reshape_to


def _scalar(c: Ctx, v, like: Value) -> Value:
    return c.const_value(np.asarray(v).astype(like.type.dtype.np_dtype))


def _need_float(c: Ctx, x: Value, allowed=None) -> None:
    d = x.type.dtype
    if not d.is_float or (allowed is not None and d not in allowed):
        what = "float" if allowed is None else "/".join(a.name for a in allowed)
        raise NodeError(f"{c.node.op_type} of {d.name} tensors is not supported ({what} only)")


# -- elementwise ------------------------------------------------------------------------------------------------
_TRIG = {"Sinh": "sinh", "Cosh": "cosh", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan",
         "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh"}


@converter(*_TRIG)
def _trig(c: Ctx):
    c.attrs()
    return c.op(_TRIG[c.node.op_type], [c.need(0, "input")])


@converter("IsNaN")
def _is_nan(c: Ctx):
    c.attrs()
    return c.op("is_nan", [c.need(0, "X")])


@converter("IsInf")
def _is_inf(c: Ctx):
    a = c.attrs(detect_negative=1, detect_positive=1)
    x = c.need(0, "X")
    _need_float(c, x)
    hits = [c.op("equal", [x, _scalar(c, s * np.inf, x)])
            for s, on in ((1, a["detect_positive"]), (-1, a["detect_negative"])) if on]
    if not hits:
        return c.const_value(np.zeros(x.type.shape, bool))
    return hits[0] if len(hits) == 1 else c.op("or", hits)


@converter("Mod")
def _mod(c: Ctx):
    a = c.attrs(fmod=0)
    x, y = c.need(0, "A"), c.need(1, "B")
    if a["fmod"] not in (0, 1):
        raise NodeError(f"fmod={a['fmod']} is not supported (0 or 1)")
    if x.type.dtype.is_float and not a["fmod"]:
        raise NodeError(f"Mod of {x.type.dtype.name} tensors needs fmod=1 (ONNX defines fmod=0 for integers only)")
    return c.op("mod", [x, y], {"fmod": bool(a["fmod"])})


@converter("BitShift")
def _bit_shift(c: Ctx):
    a = c.attrs(direction=None)
    if a["direction"] not in ("LEFT", "RIGHT"):
        raise NodeError(f"direction {a['direction']!r} is not supported (LEFT or RIGHT)")
    return c.op("bit_shift", [c.need(0, "X"), c.need(1, "Y")], {"direction": a["direction"].lower()})


@converter("CastLike")
def _cast_like(c: Ctx):
    c.attrs(saturate=1)
    x, like = c.need(0, "input"), c.need(1, "target_type")
    to = like.type.dtype
    for d, what in ((to, "to"), (x.type.dtype, "from")):
        if d.name.startswith("f8") or d in (dt.i4, dt.u4):
            raise NodeError(f"CastLike {what} {d.name} is not supported")
    return c.op("cast", [x], {"to": to})


@converter("Celu")
def _celu(c: Ctx):
    a = c.attrs(alpha=1.0)
    x = c.need(0, "X")
    _need_float(c, x)
    if a["alpha"] == 0:
        raise NodeError("alpha=0 is not supported (the formula divides by alpha)")
    al = _scalar(c, a["alpha"], x)
    neg = c.op("mul", [al, c.op("sub", [c.op("exp", [c.op("div", [x, al])]), _scalar(c, 1, x)])])
    return c.op("where", [c.op("less", [x, _scalar(c, 0, x)]), neg, x])


@converter("Selu")
def _selu(c: Ctx):
    a = c.attrs(alpha=1.67326319217681884765625, gamma=1.05070102214813232421875)
    x = c.need(0, "X")
    _need_float(c, x)
    return c.op("mul", [c.op("elu", [x], {"alpha": a["alpha"]}), _scalar(c, a["gamma"], x)])


@converter("Mish")
def _mish(c: Ctx):
    c.attrs()
    x = c.need(0, "X")
    _need_float(c, x)
    return c.op("mul", [x, c.op("tanh", [c.op("softplus", [x])])])


@converter("Softsign")
def _softsign(c: Ctx):
    c.attrs()
    x = c.need(0, "input")
    _need_float(c, x)
    return c.op("div", [x, c.op("add", [c.op("abs", [x]), _scalar(c, 1, x)])])


_F32_F64 = (dt.f32, dt.f64)  # the float attributes compare exactly with these (onnxruntime widens f16 to f32)


@converter("ThresholdedRelu")
def _thresholded_relu(c: Ctx):
    a = c.attrs(alpha=1.0)
    x = c.need(0, "X")
    _need_float(c, x, _F32_F64)
    return c.op("where", [c.op("greater", [x, _scalar(c, a["alpha"], x)]), x, _scalar(c, 0, x)])


@converter("Shrink")
def _shrink(c: Ctx):
    a = c.attrs(bias=0.0, lambd=0.5)
    x = c.need(0, "input")
    if x.type.dtype.is_integer:
        raise NodeError(f"Shrink of {x.type.dtype.name} tensors is not supported: ONNX leaves the rounding of the "
                        "integer x +- bias (a float) unspecified")
    _need_float(c, x, _F32_F64)
    lam, bias = a["lambd"], a["bias"]
    inner = c.op("where", [c.op("greater", [x, _scalar(c, lam, x)]), c.op("sub", [x, _scalar(c, bias, x)]),
                           _scalar(c, 0, x)])
    return c.op("where", [c.op("less", [x, _scalar(c, -lam, x)]), c.op("add", [x, _scalar(c, bias, x)]), inner])


# -- reductions -------------------------------------------------------------------------------------------------
def _reduce_args(c: Ctx, x: Value):
    """(axes, keepdims, noop): axes () for every axis; noop for opset 18's noop_with_empty_axes with no axes
    (then only the elementwise part of the reduction applies, as ONNX says: ReduceSumSquare squares)."""
    if c.opset < 18:
        a = c.attrs(axes=None, keepdims=1)
        axes, noop = a["axes"] or None, False
    else:
        a = c.attrs(keepdims=1, noop_with_empty_axes=0)
        v = c.const(1, "axes")
        axes = None if v is None or np.asarray(v).size == 0 else list(ints(v))
        noop = axes is None and bool(a["noop_with_empty_axes"])
    axes = () if axes is None else tuple(sorted({norm_axis(ax, x.type.rank) for ax in axes}))
    return axes, bool(a["keepdims"]), noop


@converter("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(c: Ctx):
    x = c.need(0, "data")
    kind = c.node.op_type
    axes, keep, noop = _reduce_args(c, x)
    if kind in ("ReduceL2", "ReduceLogSum", "ReduceLogSumExp") and not x.type.dtype.is_float:
        raise NodeError(f"{kind} of {x.type.dtype.name} tensors is not supported: ONNX does not say how the "
                        "integer result is rounded")
    if x.type.dtype == dt.boolean:
        raise NodeError(f"{kind} of bool tensors is not supported")

    def reduce_sum(v):
        return v if noop else c.op("reduce_sum", [v], {"axes": axes, "keepdims": keep})

    if kind == "ReduceL1":
        return reduce_sum(c.op("abs", [x]))
    if kind == "ReduceSumSquare":
        return reduce_sum(c.op("mul", [x, x]))
    if kind == "ReduceL2":
        return c.op("sqrt", [reduce_sum(c.op("mul", [x, x]))])
    if kind == "ReduceLogSum":
        return c.op("log", [reduce_sum(x)])
    if noop:  # log(exp(x)) elementwise
        return c.op("identity", [x])
    # log(sum(exp(x - m))) + m with m the maximum, or 0 where that is infinite (then the plain formula is exact)
    m = c.op("reduce_max", [x], {"axes": axes, "keepdims": True})
    inf = c.op("equal", [c.op("abs", [m]), _scalar(c, np.inf, x)])
    m = c.op("where", [inf, _scalar(c, 0, x), m])
    s = reduce_sum(c.op("exp", [c.op("sub", [x, m])]))
    if not keep:
        m = reshape_to(c, m, s.type.shape)
    return c.op("add", [c.op("log", [s]), m])


@converter("ArgMin")
def _argmin(c: Ctx):
    a = c.attrs(axis=0, keepdims=1, select_last_index=0)
    x = c.need(0, "data")
    d = x.type.dtype
    if d == dt.boolean:
        raise NodeError("ArgMin of bool tensors is not supported")
    if d.is_float:
        rev = c.op("neg", [x])  # exact; ties stay ties
    else:  # -1 - x (signed) or MAX - x (unsigned) reverses the order and never overflows
        rev = c.op("sub", [_scalar(c, -1 if d.signed else d.iinfo()[1], x), x])
    return c.op("arg_max", [rev], {"axis": norm_axis(a["axis"], x.type.rank), "keepdims": bool(a["keepdims"]),
                                   "select_last_index": bool(a["select_last_index"])})


@converter("Hardmax")
def _hardmax(c: Ctx):
    x = c.need(0, "input")
    a = c.attrs(axis=1 if c.opset < 13 else -1)
    _need_float(c, x)
    ax = norm_axis(a["axis"], x.type.rank)
    s = x.type.shape
    v = x
    if c.opset < 13 and ax != x.type.rank - 1:  # coerced to 2-D at axis, as Softmax before opset 13
        v = reshape_to(c, x, (int(np.prod(s[:ax], dtype=np.int64)), int(np.prod(s[ax:], dtype=np.int64))))
        ax = 1
    n = v.type.shape[ax]
    idx = c.op("arg_max", [v], {"axis": ax, "keepdims": True, "select_last_index": False})
    iota = c.const_value(np.arange(n, dtype=np.int64).reshape([n if i == ax else 1 for i in range(v.type.rank)]))
    y = c.op("cast", [c.op("equal", [idx, iota])], {"to": x.type.dtype})
    return reshape_to(c, y, s) if v is not x else y


@converter("CumSum")
def _cumsum(c: Ctx):
    a = c.attrs(exclusive=0, reverse=0)
    x = c.need(0, "x")
    axis = np.asarray(c.const(1, "axis"))
    if axis.size != 1:
        raise NodeError(f"axis must hold one value, got {axis.size}")
    return c.op("cumsum", [x], {"axis": norm_axis(int(axis.reshape(-1)[0]), x.type.rank),
                                "exclusive": bool(a["exclusive"]), "reverse": bool(a["reverse"])})


@converter("Trilu")
def _trilu(c: Ctx):
    a = c.attrs(upper=1)
    x = c.need(0, "input")
    if x.type.rank < 2:
        raise NodeError(f"input must have rank >= 2, got shape {x.type.shape}")
    k = np.asarray(c.const(1, "k", np.int64(0)))
    if k.size != 1:
        raise NodeError(f"k must hold one value, got {k.size}")
    m, n = x.type.shape[-2:]
    k = int(np.clip(k.reshape(-1)[0], -m - 1, n + 1))
    ones = np.ones((m, n), bool)
    mask = np.triu(ones, k) if a["upper"] else np.tril(ones, k)
    if x.type.dtype == dt.boolean:  # mask and x (onnxruntime has no bool Where for the exported graph)
        return c.op("and", [c.const_value(mask), x])
    return c.op("where", [c.const_value(mask), x, _scalar(c, 0, x)])


# -- normalisation ----------------------------------------------------------------------------------------------
def _normalize(c: Ctx, x: Value, axes, eps: float) -> Value:
    """(x - mean) / sqrt(var + eps) over ``axes`` (var the mean of the squared differences)."""
    mean = c.op("reduce_mean", [x], {"axes": axes, "keepdims": True})
    d = c.op("sub", [x, mean])
    var = c.op("reduce_mean", [c.op("mul", [d, d])], {"axes": axes, "keepdims": True})
    return c.op("div", [d, c.op("sqrt", [c.op("add", [var, _scalar(c, eps, x)])])])


@converter("MeanVarianceNormalization")
def _mvn(c: Ctx):
    """ONNX's function body: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)."""
    a = c.attrs(axes=[0, 2, 3])
    x = c.need(0, "X")
    _need_float(c, x)
    axes = tuple(sorted({norm_axis(ax, x.type.rank) for ax in a["axes"]}))
    mean = c.op("reduce_mean", [x], {"axes": axes, "keepdims": True})
    ex2 = c.op("reduce_mean", [c.op("mul", [x, x])], {"axes": axes, "keepdims": True})
    std = c.op("sqrt", [c.op("sub", [ex2, c.op("mul", [mean, mean])])])
    return c.op("div", [c.op("sub", [x, mean]), c.op("add", [std, _scalar(c, 1e-9, x)])])


def _per_channel(c: Ctx, v: Value, rank: int) -> Value:
    return reshape_to(c, v, (v.type.size,) + (1,) * (rank - 2))


@converter("InstanceNormalization")
def _instance_norm(c: Ctx):
    a = c.attrs(epsilon=1e-5)
    x, scale, bias = c.need(0, "input"), c.need(1, "scale"), c.need(2, "B")
    _need_float(c, x)
    r = x.type.rank
    if r < 3:
        raise NodeError(f"input must have rank >= 3 (N, C, D1, ...), got shape {x.type.shape}")
    ch = x.type.shape[1]
    for v, what in ((scale, "scale"), (bias, "B")):
        if v.type.shape != (ch,):
            raise NodeError(f"{what} has shape {v.type.shape}, expected ({ch},)")
    y = _normalize(c, x, tuple(range(2, r)), a["epsilon"])
    return c.op("add", [c.op("mul", [y, _per_channel(c, scale, r)]), _per_channel(c, bias, r)])


@converter("GroupNormalization")
def _group_norm(c: Ctx):
    extra = {"stash_type": 1} if c.opset >= 21 else {}
    a = c.attrs(epsilon=1e-5, num_groups=None, **extra)
    x, scale, bias = c.need(0, "X"), c.need(1, "scale"), c.need(2, "bias")
    if x.type.dtype != dt.f32:
        raise NodeError(f"GroupNormalization of {x.type.dtype.name} tensors is not supported (f32 only)")
    if a.get("stash_type", 1) != 1:
        raise NodeError(f"stash_type {onnx_dtype(a['stash_type'], 'stash_type').name} is not supported (f32 only)")
    g = a["num_groups"]
    s = x.type.shape
    if g is None:
        raise NodeError("attribute 'num_groups' is required")
    if x.type.rank < 3 or g <= 0 or s[1] % g:
        raise NodeError(f"num_groups {g} does not divide the channels of shape {s} (rank >= 3)")
    per = g if c.opset < 21 else s[1]  # opset 18: one scale per group; opset 21: one per channel
    for v, what in ((scale, "scale"), (bias, "bias")):
        if v.type.shape != (per,):
            raise NodeError(f"{what} has shape {v.type.shape}, expected ({per},)")
    grouped = reshape_to(c, x, (s[0], g, int(np.prod(s[1:], dtype=np.int64)) // g))
    y = _normalize(c, grouped, (2,), a["epsilon"])
    if c.opset < 21:
        y = c.op("add", [c.op("mul", [y, reshape_to(c, scale, (g, 1))]), reshape_to(c, bias, (g, 1))])
        return reshape_to(c, y, s)
    y = reshape_to(c, y, s)
    return c.op("add", [c.op("mul", [y, _per_channel(c, scale, len(s))]), _per_channel(c, bias, len(s))])


@converter("LpNormalization")
def _lp_norm(c: Ctx):
    """x / ||x||_p along axis (p = 1: sum |x|; p = 2: sqrt(sum x^2)), 0 where the norm is 0 (as onnxruntime and
    the ONNX reference)."""
    a = c.attrs(axis=-1, p=2)
    x = c.need(0, "input")
    _need_float(c, x)
    if a["p"] not in (1, 2):
        raise NodeError(f"p={a['p']} is not supported (1 or 2)")
    red = {"axes": (norm_axis(a["axis"], x.type.rank),), "keepdims": True}
    if a["p"] == 1:
        norm = c.op("reduce_sum", [c.op("abs", [x])], red)
    else:
        norm = c.op("sqrt", [c.op("reduce_sum", [c.op("mul", [x, x])], red)])
    zero = c.op("equal", [norm, _scalar(c, 0, x)])
    safe = c.op("where", [zero, _scalar(c, 1, x), norm])
    return c.op("where", [zero, _scalar(c, 0, x), c.op("div", [x, safe])])


# -- losses -----------------------------------------------------------------------------------------------------
def _nll(c: Ctx, logp: Value, target: Value, weight: Value | None, reduction: str, ignore_index) -> Value:
    """ONNX NegativeLogLikelihoodLoss of ``logp`` [N, C, d1, ...] and ``target`` [N, d1, ...]:
    loss = -logp[n, target, d...] * weight[target], 0 where target == ignore_index (the ignored positions also
    weigh 0 in the mean, sum(loss) / sum(weight)). A target out of [0, C) that is not ignore_index is undefined
    in ONNX; it is not checked."""
    s = logp.type.shape
    if logp.type.rank < 2:
        raise NodeError(f"input must have rank >= 2 (N, C, d1, ...), got shape {s}")
    td = target.type.dtype
    if td not in (dt.i32, dt.i64):
        raise NodeError(f"target of {td.name} tensors is not supported (int32/int64 only)")
    want = (s[0],) + tuple(s[2:])
    if target.type.shape != want:
        raise NodeError(f"target has shape {target.type.shape}, expected {want} for input of shape {s}")
    if weight is not None:
        if weight.type.shape != (s[1],):
            raise NodeError(f"weight has shape {weight.type.shape}, expected ({s[1]},)")
        if weight.type.dtype != logp.type.dtype:
            raise NodeError(f"weight is {weight.type.dtype.name}, input is {logp.type.dtype.name}")
    if reduction not in ("none", "sum", "mean"):
        raise NodeError(f"reduction {reduction!r} is not supported (none, sum or mean)")
    t = target if td == dt.i64 else c.op("cast", [target], {"to": dt.i64})  # exact; compared with an int64
    mask = None
    if ignore_index is not None:
        mask = c.op("equal", [t, _scalar(c, int(ignore_index), t)])
        t = c.op("where", [mask, _scalar(c, 0, t), t])  # a valid class where ignored (ignore_index may be any int)
    g = c.op("gather_elements", [logp, reshape_to(c, t, (s[0], 1) + tuple(s[2:]))], {"axis": 1})
    loss = c.op("neg", [reshape_to(c, g, want)])
    w = None
    if weight is not None:
        w = c.op("gather", [weight, t], {"axis": 0})
        loss = c.op("mul", [loss, w])
    zero = _scalar(c, 0, logp)
    if mask is not None:  # after the weight: an ignored -inf log-probability gives 0, not nan
        loss = c.op("where", [mask, zero, loss])
        w = c.op("where", [mask, zero, _scalar(c, 1, logp) if w is None else w])
    if reduction == "none":
        return loss
    total = c.op("reduce_sum", [loss], {"axes": (), "keepdims": False})
    if reduction == "sum":
        return total
    if w is None:
        return c.op("reduce_mean", [loss], {"axes": (), "keepdims": False})
    # an all-ignored (or zero-weight) mean is 0 / 0 = nan, as onnxruntime gives
    return c.op("div", [total, c.op("reduce_sum", [w], {"axes": (), "keepdims": False})])


@converter("NegativeLogLikelihoodLoss")
def _nll_loss(c: Ctx):
    a = c.attrs(reduction="mean", ignore_index=None)
    x = c.need(0, "input")
    _need_float(c, x)
    return _nll(c, x, c.need(1, "target"), c.inp(2), a["reduction"], a["ignore_index"])


@converter("SoftmaxCrossEntropyLoss")
def _sce_loss(c: Ctx):
    """NegativeLogLikelihoodLoss of log_softmax(scores) over the class axis 1; the optional second output
    log_prob is that log_softmax."""
    a = c.attrs(reduction="mean", ignore_index=None)
    x = c.need(0, "scores")
    _need_float(c, x)
    if x.type.rank < 2:
        raise NodeError(f"scores must have rank >= 2 (N, C, d1, ...), got shape {x.type.shape}")
    logp = c.op("log_softmax", [x], {"axis": 1})
    loss = _nll(c, logp, c.need(1, "labels"), c.inp(2), a["reduction"], a["ignore_index"])
    return [loss, logp] if len(c.node.output) > 1 and c.node.output[1] else loss


@converter("RMSNormalization")
def _rms_norm(c: Ctx):
    """Opset 23: ``x / sqrt(mean(x^2 over axes axis..rank-1) + epsilon) * scale``, in f32 (stash_type 1)."""
    a = c.attrs(axis=-1, epsilon=1e-5, stash_type=1)
    x, scale = c.need(0, "X"), c.need(1, "scale")
    _need_float(c, x, (dt.f32,))
    if a["stash_type"] != 1:
        raise NodeError(f"stash_type {a['stash_type']} is not supported (1, float32, is)")
    axis = norm_axis(a["axis"], x.type.rank)
    axes = tuple(range(axis, x.type.rank))
    ms = c.op("reduce_mean", [c.op("mul", [x, x])], {"axes": axes, "keepdims": True})
    r = c.op("sqrt", [c.op("add", [ms, _scalar(c, a["epsilon"], x)])])
    return c.op("mul", [c.op("div", [x, r]), scale])


def _sl(c: Ctx, x: Value, axis: int, start: int, end: int, step: int = 1) -> Value:
    return c.op("slice", [x], {"starts": (start,), "ends": (end,), "axes": (axis,), "steps": (step,)})


@converter("RotaryEmbedding")
def _rotary_embedding(c: Ctx):
    """Opset 23, as the spec's reference computes it: X as [batch, seq, heads, head] (a 4-D input is [batch, heads,
    seq, head]; a 3-D one [batch, seq, heads * head], with ``num_heads``), its first ``rotary_embedding_dim``
    channels rotated by the caches (indexed by ``position_ids`` when given) — halves, or even/odd channels with
    ``interleaved`` — the rest passed through; the result in X's layout."""
    a = c.attrs(interleaved=0, rotary_embedding_dim=0, num_heads=0)
    x, cos, sin = c.need(0, "X"), c.need(1, "cos_cache"), c.need(2, "sin_cache")
    pos = c.inp(3)
    _need_float(c, x, (dt.f32,))
    shape = x.type.shape
    if x.type.rank == 4:
        b, h, sq, d = shape
        xs = c.op("transpose", [x], {"perm": (0, 2, 1, 3)})
    elif x.type.rank == 3:
        if a["num_heads"] <= 0 or shape[2] % a["num_heads"]:
            raise NodeError(f"a 3-D input needs num_heads dividing its hidden size {shape[2]}, got {a['num_heads']}")
        b, sq, h, d = shape[0], shape[1], a["num_heads"], shape[2] // a["num_heads"]
        xs = reshape_to(c, x, (b, sq, h, d))
    else:
        raise NodeError(f"input of rank {x.type.rank} is not supported (3 or 4 is)")
    r = a["rotary_embedding_dim"] or d
    if r > d or r % 2:
        raise NodeError(f"rotary_embedding_dim {r} must be even and at most the head size {d}")
    half = r // 2
    if pos is not None:
        if pos.type.shape != (b, sq) or not pos.type.dtype.is_integer:
            raise NodeError(f"position_ids must be integer [{b}, {sq}], got {pos.type}")
        cos, sin = c.op("gather", [cos, pos], {"axis": 0}), c.op("gather", [sin, pos], {"axis": 0})
    for v, nm in ((cos, "cos_cache"), (sin, "sin_cache")):
        if v.type.shape != (b, sq, half):
            raise NodeError(f"{nm} gives shape {list(v.type.shape)}, needs [{b}, {sq}, {half}]")
    cos, sin = reshape_to(c, cos, (b, sq, 1, half)), reshape_to(c, sin, (b, sq, 1, half))
    rot = _sl(c, xs, 3, 0, r)
    if a["interleaved"]:
        x1, x2 = _sl(c, rot, 3, 0, r, 2), _sl(c, rot, 3, 1, r, 2)
    else:
        x1, x2 = _sl(c, rot, 3, 0, half), _sl(c, rot, 3, half, r)
    real = c.op("sub", [c.op("mul", [cos, x1]), c.op("mul", [sin, x2])])
    imag = c.op("add", [c.op("mul", [sin, x1]), c.op("mul", [cos, x2])])
    if a["interleaved"]:
        pair = c.op("concat", [reshape_to(c, real, (b, sq, h, half, 1)), reshape_to(c, imag, (b, sq, h, half, 1))],
                    {"axis": 4})
        rot = reshape_to(c, pair, (b, sq, h, r))
    else:
        rot = c.op("concat", [real, imag], {"axis": 3})
    y = rot if r == d else c.op("concat", [rot, _sl(c, xs, 3, r, d)], {"axis": 3})
    return reshape_to(c, y, shape) if x.type.rank == 3 else c.op("transpose", [y], {"perm": (0, 2, 1, 3)})
