"""ONNX converters for elementwise ops: binary and unary arithmetic, Pow, variadic Max/Min/Sum/Mean,
activations (Gelu, HardSigmoid, LeakyRelu, Elu, Clip), Where, Cast and Dropout.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from .onnx_ctx import Ctx, NodeError, converter, onnx_dtype


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
    x = c.need(0, "data")
    y = c.op("dropout", [x], {"ratio": float(ratio)})
    if len(c.node.output) > 1 and c.node.output[1]:
        if c.opset < 10:  # the mask's value in inference is not defined before opset 10 (onnxruntime gives 0s):
            return y      # computed only where nothing reads it (the import refuses a mask that is used)
        return [y, c.const_value(np.ones(x.type.shape, bool))]  # inference: every element kept
    return y
