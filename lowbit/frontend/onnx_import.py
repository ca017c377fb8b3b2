"""ONNX → lowbit IR.

Shapes are static: symbolic dimensions must be bound by the caller (``shapes={"input_ids": (1, 128)}``).
Ops whose operands are all constant are evaluated at import with the reference interpreter, so shape
sub-graphs (Shape→Gather→Concat→Reshape) become constants. Every op, attribute value or dtype that lowbit
does not implement exactly is refused with an error naming the node; unsupported op types are collected
over the whole model and reported together.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from ..ir.dtypes import DType
from ..ir.graph import Graph, Value
from ..ir.interp import evaluate_op
from ..ir.types import QuantParams, TensorType

MIN_OPSET, MAX_OPSET = 9, 22

# ONNX TensorProto element types lowbit understands.
_ONNX_DTYPES = {1: dt.f32, 2: dt.u8, 3: dt.i8, 5: dt.i16, 6: dt.i32, 7: dt.i64, 9: dt.boolean, 10: dt.f16,
                11: dt.f64, 16: dt.bf16, 17: dt.f8e4m3, 19: dt.f8e5m2, 21: dt.u4, 22: dt.i4}
_ONNX_DTYPE_NAMES = {0: "UNDEFINED", 4: "UINT16", 8: "STRING", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
                     15: "COMPLEX128", 18: "FLOAT8E4M3FNUZ", 20: "FLOAT8E5M2FNUZ", 23: "FLOAT4E2M1"}

# Ops that are never evaluated at import even when their operands are constant: folding a dequantize of an
# int8 weight would throw away the quantization the model asks for.
_NO_FOLD = {"quantize", "dequantize", "requantize"}


class NodeError(Exception):
    """Raised inside a converter; the importer prefixes the node's type and name."""


def onnx_dtype(code: int, what: str) -> DType:
    if code in _ONNX_DTYPES:
        return _ONNX_DTYPES[code]
    raise NodeError(f"{what} has ONNX element type {_ONNX_DTYPE_NAMES.get(code, code)}, which lowbit does not support")


class Ctx:
    """What a converter sees: the graph under construction and helpers for operands and attributes."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.env: dict[str, Value] = {}
        self.node = None

    # -- operands --------------------------------------------------------------------------------------
    def inp(self, i: int) -> Value | None:
        names = self.node.input
        if i >= len(names) or names[i] == "":
            return None
        return self.env[names[i]]

    def need(self, i: int, what: str) -> Value:
        v = self.inp(i)
        if v is None:
            raise NodeError(f"input {i} ({what}) is required")
        return v

    def const(self, i: int, what: str, default=None):
        """The value of input ``i`` as a numpy array; it must be constant (static shapes)."""
        v = self.inp(i)
        if v is None:
            return default
        if not v.is_const:
            raise NodeError(f"input {i} ({what}) must be a constant: lowbit compiles static shapes, and "
                            f"'{self.node.input[i]}' is computed at run time")
        return v.const_value

    # -- attributes -----------------------------------------------------------------------------------------
    def attrs(self, **defaults) -> dict:
        """Node attributes with ``defaults``; an attribute not listed there is refused by name."""
        from onnx import helper

        out = dict(defaults)
        for a in self.node.attribute:
            if a.name not in defaults:
                raise NodeError(f"attribute '{a.name}' is not supported")
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
            out[a.name] = v
        return out

    # -- building -----------------------------------------------------------------------------------------
    def op(self, opname: str, operands, attrs=None, result_types=None) -> Value:
        return self.op_multi(opname, operands, attrs, result_types)[0]

    def op_multi(self, opname: str, operands, attrs=None, result_types=None) -> list[Value]:
        try:
            op = self.graph.create(opname, operands, attrs or {}, result_types, loc=self.node.name or None)
        except ValueError as e:
            raise NodeError(str(e)) from None
        if opname not in _NO_FOLD and all(v.is_const for v in operands) and operands:
            return self.fold(op)
        return op.results

    def fold(self, op) -> list[Value]:
        """Evaluate an op whose operands are all constant and replace it by constants."""
        try:
            vals = evaluate_op(op, [v.const_value for v in op.operands])
        except LowbitError as e:
            raise NodeError(str(e)) from None
        new = [self.graph.const(a, loc=op.loc, type=r.type) for a, r in zip(vals, op.results)]
        self.graph.replace_op(op, new)
        return new

    def const_value(self, array, type: TensorType | None = None) -> Value:
        return self.graph.const(array, loc=self.node.name or None, type=type)


CONVERTERS: dict[str, Callable[[Ctx], list[Value] | Value]] = {}


def converter(*names):
    def deco(fn):
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return deco


def _ints(v) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise NodeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


# -- elementwise ------------------------------------------------------------------------------------------------
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal", "Less": "less",
           "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal", "And": "and",
           "Or": "or", "Xor": "xor", "PRelu": "prelu"}
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
          "Reciprocal": "reciprocal", "Erf": "erf", "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sin": "sin",
          "Cos": "cos", "Neg": "neg", "Abs": "abs", "Sign": "sign", "Not": "not", "Softplus": "softplus",
          "Identity": "identity", "HardSwish": "hard_swish"}


@converter(*_BINARY)
def _binary(c: Ctx):
    c.attrs()
    return c.op(_BINARY[c.node.op_type], [c.need(0, "A"), c.need(1, "B")])


@converter(*_UNARY)
def _unary(c: Ctx):
    c.attrs()
    return c.op(_UNARY[c.node.op_type], [c.need(0, "X")])


@converter("Pow")
def _pow(c: Ctx):
    c.attrs()
    x, y = c.need(0, "X"), c.need(1, "Y")
    if y.type.dtype != x.type.dtype:
        if not x.type.dtype.is_float:
            raise NodeError(f"Pow of {x.type.dtype.name} by {y.type.dtype.name} is not supported")
        y = c.op("cast", [y], {"to": x.type.dtype})
    return c.op("pow", [x, y])


@converter("Max", "Min", "Sum", "Mean")
def _variadic(c: Ctx):
    c.attrs()
    xs = [c.need(i, "data") for i in range(len(c.node.input))]
    name = {"Max": "max", "Min": "min", "Sum": "add", "Mean": "add"}[c.node.op_type]
    acc = xs[0]
    for x in xs[1:]:
        acc = c.op(name, [acc, x])
    if c.node.op_type == "Mean" and len(xs) > 1:
        acc = c.op("div", [acc, c.const_value(np.asarray(len(xs), acc.type.dtype.np_dtype))])
    elif len(xs) == 1:
        acc = c.op("identity", [acc])
    return acc


@converter("Gelu")
def _gelu(c: Ctx):
    a = c.attrs(approximate="none")
    return c.op("gelu", [c.need(0, "X")], {"approximate": a["approximate"]})


@converter("HardSigmoid")
def _hard_sigmoid(c: Ctx):
    a = c.attrs(alpha=0.2, beta=0.5)
    return c.op("hard_sigmoid", [c.need(0, "X")], a)


@converter("LeakyRelu", "Elu")
def _alpha_unary(c: Ctx):
    a = c.attrs(alpha=0.01 if c.node.op_type == "LeakyRelu" else 1.0)
    return c.op({"LeakyRelu": "leaky_relu", "Elu": "elu"}[c.node.op_type], [c.need(0, "X")], a)


@converter("Clip")
def _clip(c: Ctx):
    x = c.need(0, "input")
    if c.opset < 11:
        a = c.attrs(min=float("-inf"), max=float("inf"))
        lo, hi = a["min"], a["max"]
    else:
        c.attrs()
        lo = c.const(1, "min")
        hi = c.const(2, "max")
        lo = float("-inf") if lo is None else float(lo)
        hi = float("inf") if hi is None else float(hi)
    return c.op("clip", [x], {"min": lo, "max": hi})


@converter("Where")
def _where(c: Ctx):
    c.attrs()
    return c.op("where", [c.need(0, "condition"), c.need(1, "X"), c.need(2, "Y")])


@converter("Cast")
def _cast(c: Ctx):
    a = c.attrs(to=0, saturate=1, round_mode="up")
    to = onnx_dtype(a["to"], "Cast's target")
    if to.name.startswith("f8") or to in (dt.i4, dt.u4):
        raise NodeError(f"Cast to {to.name} is not supported")
    x = c.need(0, "input")
    if x.type.dtype.name.startswith("f8"):
        raise NodeError(f"Cast from {x.type.dtype.name} is not supported")
    return c.op("cast", [x], {"to": to})


@converter("Dropout")
def _dropout(c: Ctx):
    if c.opset < 12:
        a = c.attrs(ratio=0.5, is_test=0)
        ratio = a["ratio"]
    else:
        a = c.attrs(seed=0)
        ratio = c.const(1, "ratio", 0.5)
        if c.inp(2) is not None and bool(c.const(2, "training_mode")):
            raise NodeError("Dropout in training mode is not supported (inference only)")
    if len(c.node.output) > 1 and c.node.output[1]:
        raise NodeError("Dropout's mask output is not supported")
    return c.op("dropout", [c.need(0, "data")], {"ratio": float(ratio)})


# -- constants and shapes ---------------------------------------------------------------------------------------
@converter("Constant")
def _constant(c: Ctx):
    from onnx import numpy_helper

    if len(c.node.attribute) != 1:
        raise NodeError("Constant needs exactly one value attribute")
    a = c.node.attribute[0]
    if a.name == "value":
        onnx_dtype(a.t.data_type, "the constant")
        arr = numpy_helper.to_array(a.t)
    elif a.name == "value_float":
        arr = np.asarray(a.f, np.float32)
    elif a.name == "value_floats":
        arr = np.asarray(list(a.floats), np.float32)
    elif a.name == "value_int":
        arr = np.asarray(a.i, np.int64)
    elif a.name == "value_ints":
        arr = np.asarray(list(a.ints), np.int64)
    else:
        raise NodeError(f"attribute '{a.name}' is not supported")
    return c.const_value(arr)


@converter("Shape")
def _shape(c: Ctx):
    a = c.attrs(start=0, end=None)
    shape = np.asarray(c.need(0, "data").type.shape, np.int64)
    end = a["end"] if a["end"] is not None else len(shape)
    return c.const_value(shape[a["start"]:end])


@converter("Size")
def _size(c: Ctx):
    c.attrs()
    return c.const_value(np.asarray(c.need(0, "data").type.size, np.int64))


@converter("ConstantOfShape")
def _constant_of_shape(c: Ctx):
    from onnx import numpy_helper

    a = c.attrs(value=None)
    shape = _ints(c.const(0, "shape"))
    fill = np.zeros(1, np.float32) if a["value"] is None else numpy_helper.to_array(a["value"]).reshape(-1)
    return c.const_value(np.full(shape, fill[0], dtype=fill.dtype))


@converter("Range")
def _range(c: Ctx):
    c.attrs()
    start, limit, delta = (c.const(i, n) for i, n in enumerate(("start", "limit", "delta")))
    n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    return c.const_value((start + np.arange(n) * delta).astype(np.asarray(start).dtype))


def _reshape_to(c: Ctx, x: Value, shape) -> Value:
    return c.op("reshape", [x], {"shape": tuple(int(d) for d in shape)})


@converter("Reshape")
def _reshape(c: Ctx):
    a = c.attrs(allowzero=0)
    x = c.need(0, "data")
    target = list(_ints(c.const(1, "shape")))
    for i, d in enumerate(target):
        if d == 0 and not a["allowzero"]:
            if i >= x.type.rank:
                raise NodeError(f"shape {target} copies dimension {i}, but the input has rank {x.type.rank}")
            target[i] = x.type.shape[i]
    if target.count(-1) > 1:
        raise NodeError(f"shape {target} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        if known == 0 or x.type.size % known:
            raise NodeError(f"cannot reshape {x.type.shape} to {target}")
        target[target.index(-1)] = x.type.size // known
    return _reshape_to(c, x, target)


@converter("Flatten")
def _flatten(c: Ctx):
    a = c.attrs(axis=1)
    x = c.need(0, "input")
    ax = a["axis"] % x.type.rank if x.type.rank else 0
    if a["axis"] == x.type.rank:
        ax = x.type.rank
    s = x.type.shape
    return _reshape_to(c, x, (int(np.prod(s[:ax], dtype=np.int64)), int(np.prod(s[ax:], dtype=np.int64))))


def _axes_input(c: Ctx, attr_opset: int, name="axes"):
    """Axes from an attribute (opset < attr_opset) or from input 1 (later opsets)."""
    if c.opset < attr_opset:
        return c.attrs(**{name: None})[name]
    c.attrs()
    v = c.const(1, name)
    return None if v is None else list(_ints(v))


@converter("Squeeze")
def _squeeze(c: Ctx):
    x = c.need(0, "data")
    axes = _axes_input(c, 13)
    shape = x.type.shape
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {_axis(a, x.type.rank) for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise NodeError(f"cannot squeeze axes {sorted(axes)} of shape {shape}")
    return _reshape_to(c, x, [d for i, d in enumerate(shape) if i not in axes])


@converter("Unsqueeze")
def _unsqueeze(c: Ctx):
    x = c.need(0, "data")
    axes = _axes_input(c, 13)
    if axes is None:
        raise NodeError("axes are required")
    rank = x.type.rank + len(axes)
    axes = sorted(_axis(a, rank) for a in axes)
    shape = list(x.type.shape)
    for a in axes:
        shape.insert(a, 1)
    return _reshape_to(c, x, shape)


@converter("Transpose")
def _transpose(c: Ctx):
    x = c.need(0, "data")
    a = c.attrs(perm=None)
    perm = a["perm"] if a["perm"] is not None else list(range(x.type.rank))[::-1]
    return c.op("transpose", [x], {"perm": tuple(perm)})


@converter("Concat")
def _concat(c: Ctx):
    a = c.attrs(axis=None)
    if a["axis"] is None:
        raise NodeError("attribute 'axis' is required")
    xs = [c.need(i, "inputs") for i in range(len(c.node.input))]
    ax = _axis(a["axis"], xs[0].type.rank)
    kept = [x for x in xs if x.type.shape[ax] != 0] or xs[:1]
    if len(kept) == 1:
        return c.op("identity", kept)
    return c.op("concat", kept, {"axis": ax})


@converter("Split")
def _split(c: Ctx):
    x = c.need(0, "input")
    if c.opset < 13:
        a = c.attrs(axis=0, split=None)
        sizes = a["split"]
    else:
        a = c.attrs(axis=0, num_outputs=None)
        s = c.const(1, "split")
        sizes = None if s is None else list(_ints(s))
    ax = _axis(a["axis"], x.type.rank)
    dim, n = x.type.shape[ax], len(c.node.output)
    if sizes is None:
        chunk = -(-dim // n)
        if c.opset < 18 and dim % n:
            raise NodeError(f"cannot split dimension {dim} into {n} equal parts")
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return c.op_multi("split", [x], {"axis": ax, "sizes": tuple(sizes)})


@converter("Slice")
def _slice(c: Ctx):
    x = c.need(0, "data")
    if c.opset < 10:
        a = c.attrs(starts=None, ends=None, axes=None)
        starts, ends, axes, steps = a["starts"], a["ends"], a["axes"], None
    else:
        c.attrs()
        starts, ends = _ints(c.const(1, "starts")), _ints(c.const(2, "ends"))
        axes, steps = c.const(3, "axes"), c.const(4, "steps")
        axes = None if axes is None else _ints(axes)
        steps = None if steps is None else _ints(steps)
    axes = list(range(len(starts))) if axes is None else [_axis(a, x.type.rank) for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)

    def clamp(v, dim):  # keep ONNX meaning, drop INT64_MAX-style sentinels
        return int(min(max(v, -dim - 1), dim))

    starts = [clamp(s, x.type.shape[ax]) for s, ax in zip(starts, axes)]
    ends = [clamp(e, x.type.shape[ax]) for e, ax in zip(ends, axes)]
    return c.op("slice", [x], {"starts": tuple(starts), "ends": tuple(ends), "axes": tuple(axes),
                               "steps": tuple(steps)})


@converter("Gather")
def _gather(c: Ctx):
    a = c.attrs(axis=0)
    data = c.need(0, "data")
    return c.op("gather", [data, c.need(1, "indices")], {"axis": _axis(a["axis"], data.type.rank)})


@converter("GatherElements")
def _gather_elements(c: Ctx):
    a = c.attrs(axis=0)
    data = c.need(0, "data")
    return c.op("gather_elements", [data, c.need(1, "indices")], {"axis": _axis(a["axis"], data.type.rank)})


@converter("Expand")
def _expand(c: Ctx):
    c.attrs()
    return c.op("expand", [c.need(0, "input")], {"shape": _ints(c.const(1, "shape"))})


@converter("Tile")
def _tile(c: Ctx):
    c.attrs()
    return c.op("tile", [c.need(0, "input")], {"repeats": _ints(c.const(1, "repeats"))})


@converter("Pad")
def _pad(c: Ctx):
    x = c.need(0, "data")
    r = x.type.rank
    if c.opset < 11:
        a = c.attrs(mode="constant", pads=None, value=0.0)
        pads, value = list(a["pads"]), a["value"]
    else:
        a = c.attrs(mode="constant")
        pads = list(_ints(c.const(1, "pads")))
        v = c.const(2, "constant_value")
        value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
        axes = c.const(3, "axes")
        if axes is not None:
            axes = [_axis(ax, r) for ax in _ints(axes)]
            full = [0] * (2 * r)
            for i, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[i], pads[i + len(axes)]
            pads = full
    if a["mode"] not in ("constant", "reflect", "edge"):
        raise NodeError(f"pad mode '{a['mode']}' is not supported")
    return c.op("pad", [x], {"pads": tuple(pads), "mode": a["mode"], "value": value})


# -- resize -------------------------------------------------------------------------------------------------------
def _resize_common(c: Ctx, x: Value, scales, sizes, mode, ctm, nearest_mode):
    shape = x.type.shape
    if sizes is not None:
        sizes = list(sizes)
        scales = [float(np.float32(o) / np.float32(i)) if i else 1.0 for o, i in zip(sizes, shape)]
    else:
        scales = [float(np.float32(s)) for s in scales]
        sizes = [int(math.floor(i * s)) for i, s in zip(shape, scales)]
    if len(sizes) != x.type.rank:
        raise NodeError(f"needs one scale or size per dimension of {shape}")
    return c.op("resize", [x], {"sizes": tuple(sizes), "scales": tuple(scales), "mode": mode,
                                "coordinate_transformation_mode": ctm, "nearest_mode": nearest_mode})


def _legacy_resize(c: Ctx, x: Value, scales, mode):
    """Upsample (opset 9) and Resize-10: asymmetric coordinates; nearest floors when upsampling."""
    if mode not in ("nearest", "linear", "bilinear"):
        raise NodeError(f"mode '{mode}' is not supported")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if mode == "nearest" and any(s < 1 for s in scales) and any(s > 1 for s in scales):
        raise NodeError("nearest resize that up- and down-samples at once is not supported")
    nearest = "ceil" if any(s < 1 for s in scales) else "floor"
    return _resize_common(c, x, scales, None, "linear" if mode == "bilinear" else mode, "asymmetric", nearest)


@converter("Upsample")
def _upsample(c: Ctx):
    a = c.attrs(mode="nearest", scales=None)
    scales = a["scales"] if a["scales"] is not None else c.const(1, "scales")
    return _legacy_resize(c, c.need(0, "X"), scales, a["mode"])


@converter("Resize")
def _resize(c: Ctx):
    x = c.need(0, "X")
    if c.opset < 11:
        a = c.attrs(mode="nearest")
        return _legacy_resize(c, x, c.const(1, "scales"), a["mode"])
    a = c.attrs(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, antialias=0, axes=None,
                keep_aspect_ratio_policy="stretch")
    if a["mode"] not in ("nearest", "linear"):
        raise NodeError(f"mode '{a['mode']}' is not supported (nearest and linear are)")
    if a["coordinate_transformation_mode"] == "tf_crop_and_resize":
        raise NodeError("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
    if a["mode"] == "linear" and (a["exclude_outside"] or a["antialias"]):
        raise NodeError("linear resize with exclude_outside or antialias is not supported")
    if a["keep_aspect_ratio_policy"] != "stretch":
        raise NodeError(f"keep_aspect_ratio_policy '{a['keep_aspect_ratio_policy']}' is not supported")
    scales = c.const(2, "scales")
    sizes = c.const(3, "sizes")
    if scales is not None and np.asarray(scales).size == 0:
        scales = None
    if sizes is not None and np.asarray(sizes).size == 0:
        sizes = None
    if (scales is None) == (sizes is None):
        raise NodeError("exactly one of scales and sizes must be given")
    vals = list(np.asarray(scales if sizes is None else sizes).reshape(-1))
    if a["axes"] is not None:
        full = [1.0] * x.type.rank if sizes is None else list(x.type.shape)
        for ax, v in zip(a["axes"], vals):
            full[_axis(ax, x.type.rank)] = v
        vals = full
    if sizes is None:
        return _resize_common(c, x, vals, None, a["mode"], a["coordinate_transformation_mode"], a["nearest_mode"])
    return _resize_common(c, x, None, [int(v) for v in vals], a["mode"], a["coordinate_transformation_mode"],
                          a["nearest_mode"])


# -- reductions and normalisation -------------------------------------------------------------------------------
_REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod"}


@converter(*_REDUCE)
def _reduce(c: Ctx):
    x = c.need(0, "data")
    attr_opset = 13 if c.node.op_type == "ReduceSum" else 18
    if c.opset < attr_opset:
        a = c.attrs(axes=None, keepdims=1)
        axes = a["axes"]
    else:
        a = c.attrs(keepdims=1, noop_with_empty_axes=0)
        v = c.const(1, "axes")
        axes = None if v is None or np.asarray(v).size == 0 else list(_ints(v))
        if axes is None and a["noop_with_empty_axes"]:
            return c.op("identity", [x])
    axes = () if axes is None else tuple(sorted(_axis(ax, x.type.rank) for ax in axes))
    return c.op(_REDUCE[c.node.op_type], [x], {"axes": axes, "keepdims": bool(a["keepdims"])})


@converter("ArgMax")
def _argmax(c: Ctx):
    a = c.attrs(axis=0, keepdims=1, select_last_index=0)
    x = c.need(0, "data")
    return c.op("arg_max", [x], {"axis": _axis(a["axis"], x.type.rank), "keepdims": bool(a["keepdims"]),
                                 "select_last_index": bool(a["select_last_index"])})


@converter("Softmax", "LogSoftmax")
def _softmax(c: Ctx):
    x = c.need(0, "input")
    name = "softmax" if c.node.op_type == "Softmax" else "log_softmax"
    a = c.attrs(axis=1 if c.opset < 13 else -1)
    ax = _axis(a["axis"], x.type.rank)
    if c.opset >= 13 or ax == x.type.rank - 1:
        return c.op(name, [x], {"axis": ax})
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over all trailing dimensions.
    s = x.type.shape
    flat = _reshape_to(c, x, (int(np.prod(s[:ax], dtype=np.int64)), int(np.prod(s[ax:], dtype=np.int64))))
    return _reshape_to(c, c.op(name, [flat], {"axis": 1}), s)


@converter("LayerNormalization")
def _layer_norm(c: Ctx):
    a = c.attrs(axis=-1, epsilon=1e-5, stash_type=1)
    if any(o for o in c.node.output[1:]):
        raise NodeError("the Mean and InvStdDev outputs are not supported")
    x = c.need(0, "X")
    ops = [x, c.need(1, "Scale")] + ([c.inp(2)] if c.inp(2) is not None else [])
    return c.op("layer_norm", ops, {"axis": _axis(a["axis"], x.type.rank), "epsilon": a["epsilon"]})


@converter("BatchNormalization")
def _batch_norm(c: Ctx):
    a = c.attrs(epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1)
    if a["training_mode"] or any(o for o in c.node.output[1:]):
        raise NodeError("training-mode batch normalization is not supported (inference only)")
    if not a["spatial"]:
        raise NodeError("spatial=0 is not supported")
    ops = [c.need(i, n) for i, n in enumerate(("X", "scale", "B", "input_mean", "input_var"))]
    return c.op("batch_norm", ops, {"epsilon": a["epsilon"]})


@converter("LRN")
def _lrn(c: Ctx):
    a = c.attrs(size=None, alpha=1e-4, beta=0.75, bias=1.0)
    if a["size"] is None or a["size"] % 2 == 0:
        raise NodeError(f"size {a['size']} is not supported (odd sizes are; onnxruntime refuses even ones too)")
    return c.op("lrn", [c.need(0, "X")], a)


# -- linear algebra, convolution, pooling -------------------------------------------------------------------------
@converter("MatMul")
def _matmul(c: Ctx):
    c.attrs()
    return c.op("matmul", [c.need(0, "A"), c.need(1, "B")])


@converter("Gemm")
def _gemm(c: Ctx):
    a = c.attrs(alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=1)
    ops = [c.need(0, "A"), c.need(1, "B")] + ([c.inp(2)] if c.inp(2) is not None else [])
    return c.op("gemm", ops, {"alpha": a["alpha"], "beta": a["beta"], "trans_a": bool(a["transA"]),
                              "trans_b": bool(a["transB"])})


def _spatial_pads(c: Ctx, a, in_hw, kernel, strides, dilations):
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = a["pads"] if a["pads"] is not None else [0] * 4
        if len(pads) != 4:
            raise NodeError(f"pads {pads} should have 4 values")
        return tuple(pads)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return tuple(begin + end)
    raise NodeError(f"auto_pad '{auto}' is not supported")


def _need_2d(x: Value):
    if x.type.rank != 4:
        raise NodeError(f"only 2-D spatial inputs (NCHW) are supported, got shape {x.type.shape}")


@converter("Conv")
def _conv(c: Ctx):
    a = c.attrs(kernel_shape=None, strides=[1, 1], pads=None, dilations=[1, 1], group=1, auto_pad="NOTSET")
    x, w = c.need(0, "X"), c.need(1, "W")
    _need_2d(x)
    pads = _spatial_pads(c, a, x.type.shape[2:], w.type.shape[2:], a["strides"], a["dilations"])
    ops = [x, w] + ([c.inp(2)] if c.inp(2) is not None else [])
    return c.op("conv2d", ops, {"strides": tuple(a["strides"]), "pads": pads, "dilations": tuple(a["dilations"]),
                                "groups": a["group"]})


@converter("ConvTranspose")
def _conv_transpose(c: Ctx):
    a = c.attrs(kernel_shape=None, strides=[1, 1], pads=None, dilations=[1, 1], group=1, auto_pad="NOTSET",
                output_padding=[0, 0], output_shape=None)
    if a["output_shape"] is not None:
        raise NodeError("attribute 'output_shape' is not supported (give pads and output_padding)")
    if a["auto_pad"] not in ("NOTSET", ""):
        raise NodeError(f"auto_pad '{a['auto_pad']}' is not supported")
    x, w = c.need(0, "X"), c.need(1, "W")
    _need_2d(x)
    ops = [x, w] + ([c.inp(2)] if c.inp(2) is not None else [])
    return c.op("conv_transpose2d", ops, {
        "strides": tuple(a["strides"]), "pads": tuple(a["pads"] or (0, 0, 0, 0)),
        "dilations": tuple(a["dilations"]), "groups": a["group"], "output_padding": tuple(a["output_padding"])})


@converter("MaxPool", "AveragePool")
def _pool(c: Ctx):
    is_max = c.node.op_type == "MaxPool"
    extra = {"dilations": [1, 1], "storage_order": 0} if is_max else {"count_include_pad": 0, "dilations": [1, 1]}
    a = c.attrs(kernel_shape=None, strides=[1, 1], pads=None, ceil_mode=0, auto_pad="NOTSET", **extra)
    if is_max and len(c.node.output) > 1 and c.node.output[1]:
        raise NodeError("MaxPool's Indices output is not supported")
    x = c.need(0, "X")
    _need_2d(x)
    k = a["kernel_shape"]
    if not is_max and tuple(a["dilations"]) != (1, 1):
        raise NodeError("AveragePool with dilations is not supported")
    pads = _spatial_pads(c, a, x.type.shape[2:], k, a["strides"], a["dilations"])
    attrs = {"kernel": tuple(k), "strides": tuple(a["strides"]), "pads": pads, "ceil_mode": bool(a["ceil_mode"])}
    if is_max:
        attrs["dilations"] = tuple(a["dilations"])
        return c.op("max_pool2d", [x], attrs)
    attrs["count_include_pad"] = bool(a["count_include_pad"])
    return c.op("avg_pool2d", [x], attrs)


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Ctx):
    c.attrs()
    return c.op("global_avg_pool" if c.node.op_type == "GlobalAveragePool" else "global_max_pool", [c.need(0, "X")])


# -- quantization -------------------------------------------------------------------------------------------------
def _qparams(c: Ctx, x_shape, scale_idx, zp_idx, axis_attr, default_zp_dtype):
    scale = np.asarray(c.const(scale_idx, "scale"))
    zp_v = c.inp(zp_idx)
    zp = np.zeros(scale.shape, default_zp_dtype.np_dtype) if zp_v is None else np.asarray(c.const(zp_idx, "zero_point"))
    if scale.dtype != np.float32:
        raise NodeError(f"scale of dtype {scale.dtype} is not supported (float32 is)")
    qdtype = default_zp_dtype if zp_v is None else zp_v.type.dtype
    if qdtype not in (dt.u8, dt.i8, dt.i16, dt.i32, dt.u4, dt.i4):
        raise NodeError(f"quantized type {qdtype.name} is not supported")
    if scale.size == 1 and scale.ndim <= 1:  # a 1-element vector is per-tensor, as onnxruntime reads it
        return QuantParams((float(scale.reshape(-1)[0]),), (int(zp.reshape(-1)[0]),)), qdtype
    if scale.ndim != 1:
        raise NodeError("block-wise quantization parameters are not supported")
    axis = _axis(axis_attr, len(x_shape))
    if x_shape[axis] != scale.size:
        raise NodeError(f"{scale.size} scales do not match axis {axis} of shape {x_shape}")
    return QuantParams(tuple(scale.tolist()), tuple(zp.reshape(-1).tolist()), axis), qdtype


@converter("QuantizeLinear")
def _quantize(c: Ctx):
    a = c.attrs(axis=1, saturate=1, block_size=0, output_dtype=0)
    if a["block_size"]:
        raise NodeError("block-wise quantization (block_size) is not supported")
    x = c.need(0, "x")
    if x.type.dtype != dt.f32:
        raise NodeError(f"quantizing {x.type.dtype.name} is not supported (f32 is)")
    default = onnx_dtype(a["output_dtype"], "output_dtype") if a["output_dtype"] else dt.u8
    q, qdtype = _qparams(c, x.type.shape, 1, 2, a["axis"], default)
    return c.op("quantize", [x], result_types=[TensorType(x.type.shape, qdtype, q)])


@converter("DequantizeLinear")
def _dequantize(c: Ctx):
    a = c.attrs(axis=1, block_size=0, output_dtype=0)
    if a["block_size"]:
        raise NodeError("block-wise quantization (block_size) is not supported")
    if a["output_dtype"] not in (0, 1):
        raise NodeError("output_dtype other than float32 is not supported")
    x = c.need(0, "x")
    q, qdtype = _qparams(c, x.type.shape, 1, 2, a["axis"], x.type.dtype)
    if qdtype != x.type.dtype:
        raise NodeError(f"zero point dtype {qdtype.name} differs from input dtype {x.type.dtype.name}")
    qtype = TensorType(x.type.shape, x.type.dtype, q)
    if x.is_const:  # a quantized weight: its parameters move into the constant's type
        x = c.const_value(x.const_value, type=qtype)
    elif x.producer is None and x.type.quant is None:  # an integer graph input: it is this quantized tensor
        x.type = qtype
    elif x.type.quant != q:
        raise NodeError(f"input '{c.node.input[0]}' is not quantized with this node's scale and zero point "
                        "(only DequantizeLinear of a constant or of a matching QuantizeLinear is supported)")
    return c.op("dequantize", [x])


# -- the driver ---------------------------------------------------------------------------------------------------
def _read_model(source) -> tuple[object, str]:
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "<bytes>"
    elif hasattr(source, "graph") and hasattr(source, "opset_import"):
        return source, "<ModelProto>"
    else:
        name = os.fspath(source)
        if not os.path.exists(name):
            raise LowbitError(f"{name}: no such file")
        if os.path.isdir(name):
            raise LowbitError(f"{name}: is a directory, expected an ONNX file")
        with open(name, "rb") as f:
            data = f.read()
    if not data:
        raise LowbitError(f"{name}: the file is empty, expected an ONNX model")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise LowbitError(f"{name}: not a valid ONNX model (the protobuf does not parse: {e}); "
                          "is the file truncated or of another format?") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output) or model.ir_version <= 0:
        raise LowbitError(f"{name}: not an ONNX model (no graph or IR version found); is it of another format?")
    if any(t.data_location == 1 for t in model.graph.initializer):
        if isinstance(source, (bytes, bytearray)):
            raise LowbitError(f"{name}: the model keeps weights in external files; load it from its path")
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(name)))
        except (OSError, ValueError) as e:
            raise LowbitError(f"{name}: cannot read external weight data: {e}") from None
    return model, name


def _input_type(vi, shapes: dict, name_for_errors: str, unbound: list) -> TensorType | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise LowbitError(f"{name_for_errors}: input '{vi.name}' is not a tensor")
    try:
        dtype = onnx_dtype(t.elem_type, f"input '{vi.name}'")
    except NodeError as e:
        raise LowbitError(f"{name_for_errors}: {e}") from None
    dims = list(t.shape.dim) if t.HasField("shape") else None
    if vi.name in shapes:
        bound = tuple(int(d) for d in shapes[vi.name])
        if dims is not None:
            if len(dims) != len(bound):
                raise LowbitError(f"{name_for_errors}: shape {bound} given for input '{vi.name}' has rank "
                                  f"{len(bound)}, the model says rank {len(dims)}")
            for i, (d, b) in enumerate(zip(dims, bound)):
                if d.HasField("dim_value") and d.dim_value != b:
                    raise LowbitError(f"{name_for_errors}: shape {bound} given for input '{vi.name}' conflicts "
                                      f"with its static dimension {i} = {d.dim_value}")
        return TensorType(bound, dtype)
    if dims is None:
        unbound.append(f"'{vi.name}' (unknown rank)")
        return None
    shape, sym = [], []
    for i, d in enumerate(dims):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        else:
            sym.append(f"{d.dim_param or '?'} (dim {i})")
    if sym:
        unbound.append(f"'{vi.name}' dims {', '.join(sym)}")
        return None
    return TensorType(tuple(shape), dtype)


def import_onnx(source, shapes: dict | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a verified ``Graph``."""
    from onnx import numpy_helper

    model, name = _read_model(source)
    shapes = dict(shapes or {})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise LowbitError(f"{name}: the model does not import the default ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LowbitError(f"{name}: opset {opset} is not supported (lowbit reads opsets {MIN_OPSET}-{MAX_OPSET})")
    mg = model.graph

    unsupported: dict[str, str] = {}
    for node in mg.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if (node.domain not in ("", "ai.onnx") or node.op_type not in CONVERTERS) and key not in unsupported:
            unsupported[key] = node.name or "(unnamed)"
    if unsupported:
        listing = ", ".join(f"{k} (first at node '{v}')" for k, v in unsupported.items())
        raise LowbitError(f"{name}: unsupported op{'s' if len(unsupported) > 1 else ''}: {listing}")

    g = Graph(mg.name or "main")
    ctx = Ctx(g, opset)
    init_names = {t.name for t in mg.initializer}
    unbound: list[str] = []
    real_inputs = [vi for vi in mg.input if vi.name not in init_names]
    unknown = sorted(set(shapes) - {vi.name for vi in real_inputs})
    if unknown:
        raise LowbitError(f"{name}: shapes given for unknown input(s) {', '.join(unknown)}; the model's inputs are "
                          f"{', '.join(vi.name for vi in real_inputs)}")
    for vi in real_inputs:
        t = _input_type(vi, shapes, name, unbound)
        if t is not None:
            ctx.env[vi.name] = g.add_input(vi.name, t)
    if unbound:
        first = real_inputs[0].name
        raise LowbitError(f"{name}: symbolic input dimensions must be bound: {'; '.join(unbound)} "
                          f"(CLI: --shape {first}=1x128; API: shapes={{'{first}': (1, 128)}})")
    for t in mg.initializer:
        try:
            onnx_dtype(t.data_type, f"initializer '{t.name}'")
            arr = numpy_helper.to_array(t)
        except NodeError as e:
            raise LowbitError(f"{name}: {e}") from None
        ctx.env[t.name] = g.const(arr, loc=t.name)
    for node in mg.node:
        ctx.node = node
        where = f"{name}: {node.op_type} node '{node.name or '(unnamed)'}'"
        for i in node.input:
            if i and i not in ctx.env:
                raise LowbitError(f"{where}: input '{i}' is not defined before use")
        try:
            out = CONVERTERS[node.op_type](ctx)
        except NodeError as e:
            raise LowbitError(f"{where}: {e}") from None
        outs = out if isinstance(out, (list, tuple)) else [out]
        for oname, v in zip(node.output, outs):
            if oname:
                ctx.env[oname] = v
    outputs = []
    for vi in mg.output:
        if vi.name not in ctx.env:
            raise LowbitError(f"{name}: graph output '{vi.name}' is not produced by any node")
        outputs.append(ctx.env[vi.name])
    g.set_outputs(outputs, [vi.name for vi in mg.output])
    g.remove_dead_ops()
    try:
        g.verify()
    except ValueError as e:
        raise LowbitError(f"{name}: imported graph does not verify: {e}") from None
    return g
