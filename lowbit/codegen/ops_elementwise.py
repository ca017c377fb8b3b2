"""Lowering rules of elementwise ops (arithmetic, activations, comparisons, clip, where, cast)."""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from .lowering import bcast, np_dtype, rule


# -- elementwise --------------------------------------------------------------------------------------------------
_BIN = {"add": "add", "sub": "subtract", "mul": "multiply", "max": "maximum", "min": "minimum",
        "equal": "equal", "less": "less", "greater": "greater", "less_equal": "less_equal",
        "greater_equal": "greater_equal", "and": "logical_and", "or": "logical_or", "xor": "logical_xor"}
_UN = {"sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt", "erf": "erf",
       "floor": "floor", "ceil": "ceil", "sin": "sin", "cos": "cos", "neg": "negative", "abs": "abs",
       "sign": "sign", "not": "logical_not"}


_COMPARE = ("equal", "less", "greater", "less_equal", "greater_equal")


@rule(*_BIN, layout_agnostic=True)
def _binary(L: Lowerer, op: Op, a, b):
    if op.opname in _COMPARE and op.operands[0].type.dtype == dt.boolean:
        # TVM 0.27's LLVM codegen compares bools as floats (an invalid fcmp on i1): compare them as int8
        a, b = L.emit(L.R.astype(a, "int8")), L.emit(L.R.astype(b, "int8"))
    return getattr(L.R, _BIN[op.opname])(a, b)


@rule(*_UN, layout_agnostic=True)
def _unary(L: Lowerer, op: Op, x):
    return getattr(L.R, _UN[op.opname])(x)


@rule("div", layout_agnostic=True)  # (for float results, the only ones another layout holds)
def _div(L: Lowerer, op: Op, a, b):
    if op.result.type.dtype.is_float:
        return L.R.divide(a, b)
    shape = op.result.type.shape

    def fn(A, B):  # C semantics: truncate toward zero (relax/topi floor-divides integers)
        return L.te.compute(shape, lambda *i: L.tir.truncdiv(bcast(A, i, shape), bcast(B, i, shape)))
    return L.te_(fn, a, b, name="lowbit_truncdiv")


@rule("pow")
def _pow(L, op, a, b):
    """x ** y with C pow semantics on every backend: CUDA's pow goes through exp(y * log x), which is NaN for
    a negative base, so small constant exponents become multiplies and the rest |x| ** y with the sign of
    an odd integral exponent restored."""
    e = op.operands[1]
    shape = op.result.type.shape
    if e.is_const and e.type.size == 1 and op.operands[0].type.shape == shape:
        v = float(e.const_value.reshape(-1)[0])
        if v == 1.0:
            return a
        if v == 2.0:
            return L.R.multiply(a, a)
        if v == 3.0:
            return L.R.multiply(L.emit(L.R.multiply(a, a)), a)
        if v == 0.5:
            return L.R.sqrt(a)
    tir = L.tir
    d = np_dtype(op.result.type)

    def fn(X, Y):
        def body(*i):
            x, y = bcast(X, i, shape), bcast(Y, i, shape)
            r = tir.power(tir.abs(x), y)
            integral = tir.floor(y) == y
            odd = tir.all(integral, tir.floor(y * tir.const(0.5, d)) * tir.const(2, d) != y)
            neg = tir.Select(integral, tir.Select(odd, -r, r), tir.const(float("nan"), d))
            return tir.Select(x < tir.const(0, d), neg, r)
        return L.te.compute(shape, body)
    return L.te_(fn, a, b, name="lowbit_pow")


@rule("identity", "dropout", layout_agnostic=True)
def _identity(L, op, x):
    return x


@rule("relu", layout_agnostic=True)
def _relu(L, op, x):
    return L.R.nn.relu(x)


@rule("reciprocal")
def _reciprocal(L, op, x):
    return L.R.divide(L.scalar(1, np_dtype(op.result.type)), x)


@rule("round")
def _round(L, op, x):
    shape = op.result.type.shape
    return L.te_(lambda X: L.te.compute(shape, lambda *i: L.tir.nearbyint(X[i])), x, name="lowbit_round")


@rule("softplus", layout_agnostic=True)
def _softplus(L, op, x):
    return L.R.nn.softplus(x)


@rule("gelu", layout_agnostic=True)
def _gelu(L, op, x):
    if op.attrs["approximate"] == "none" and op.result.type.dtype == dt.f32:
        # x/2 * (1 + erf(x/sqrt 2)) with TOPI's vectorizable erf (max error 3.3e-7, measured); LLVM's erf is a
        # scalar call per lane
        from tvm import topi

        half, k = L.scalar(0.5, "float32"), L.scalar(float(1 / np.sqrt(2)), "float32")
        e = L.te_(topi.fast_erf, L.emit(L.R.multiply(x, k)), name="fast_erf")
        return L.R.multiply(L.R.multiply(x, half), L.R.add(L.emit(e), L.scalar(1.0, "float32")))
    return L.R.nn.gelu(x) if op.attrs["approximate"] == "none" else L.R.nn.gelu_tanh(x)


@rule("hard_sigmoid", layout_agnostic=True)
def _hard_sigmoid(L, op, x):
    d = np_dtype(op.result.type)
    y = L.R.add(L.R.multiply(x, L.scalar(op.attrs["alpha"], d)), L.scalar(op.attrs["beta"], d))
    return L.R.minimum(L.R.maximum(y, L.scalar(0, d)), L.scalar(1, d))


@rule("hard_swish", layout_agnostic=True)
def _hard_swish(L, op, x):
    d = np_dtype(op.result.type)
    y = L.R.add(L.R.multiply(x, L.scalar(1 / 6, d)), L.scalar(0.5, d))
    return L.R.multiply(x, L.R.minimum(L.R.maximum(y, L.scalar(0, d)), L.scalar(1, d)))


@rule("leaky_relu", layout_agnostic=True)
def _leaky_relu(L, op, x):
    d = np_dtype(op.result.type)
    return L.R.where(L.R.less(x, L.scalar(0, d)), L.R.multiply(x, L.scalar(op.attrs["alpha"], d)), x)


@rule("elu", layout_agnostic=True)
def _elu(L, op, x):
    d = np_dtype(op.result.type)
    neg = L.R.multiply(L.scalar(op.attrs["alpha"], d), L.R.subtract(L.R.exp(x), L.scalar(1, d)))
    return L.R.where(L.R.less(x, L.scalar(0, d)), neg, x)


@rule("prelu")
def _prelu(L, op, x, s):
    d = np_dtype(op.result.type)
    return L.R.where(L.R.less(x, L.scalar(0, d)), L.R.multiply(x, s), x)


@rule("clip", layout_agnostic=True)
def _clip(L, op, x):
    t = op.result.type
    d = np_dtype(t)
    lo, hi = op.attrs["min"], op.attrs["max"]
    if t.dtype.is_integer:
        info = np.iinfo(t.dtype.np_dtype)
        lo = info.min if lo == float("-inf") else int(lo)
        hi = info.max if hi == float("inf") else int(hi)
    y = x
    if lo != float("-inf"):
        y = L.R.maximum(y, L.scalar(lo, d))
    if hi != float("inf"):
        y = L.R.minimum(y, L.scalar(hi, d))
    return y


@rule("where")
def _where(L, op, c, a, b):
    return L.R.where(c, a, b)


@rule("cast")
def _cast(L, op, x):
    to = op.attrs["to"]
    if to == dt.boolean:
        if op.operands[0].type.dtype == dt.boolean:
            return x  # (not_equal on bools is an invalid fcmp in TVM 0.27's LLVM codegen)
        return L.R.not_equal(x, L.scalar(0, np_dtype(op.operands[0].type)))
    if to.name.startswith("f8") or to in (dt.i4, dt.u4):
        raise LowbitError(f"{op.describe()}: codegen of casts to {to.name} is not implemented")
    return L.R.astype(x, np_dtype(op.result.type))
