"""Schemas and numpy references of the math ops added for ONNX coverage (issue 14).

The other ONNX math ops of issue 14 (Celu, Selu, Mish, Softsign, Shrink, ThresholdedRelu, IsInf, CastLike, the
L1/L2/LogSum/LogSumExp/SumSquare reductions, ArgMin, Hardmax, Trilu and the normalisations) are compositions of
existing ops in ``frontend/onnx_math.py``; only what no composition computes exactly is an op here:

- ``sinh`` ``cosh`` ``tan`` ``asin`` ``acos`` ``atan`` ``asinh`` ``acosh`` ``atanh``: float, NaN outside the domain
- ``mod``: fmod=1 the C remainder (sign of the dividend), fmod=0 the floor remainder (sign of the divisor, integers
  only, as ONNX); an integer remainder by 0 is an error
- ``is_nan``: float -> bool
- ``bit_shift``: unsigned integers; a shift by the bit width or more gives 0 (as onnxruntime)
- ``cumsum``: running sum along ``axis`` in the operand dtype, ``exclusive`` (the element itself left out) and
  ``reverse`` (from the end)
"""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from . import dtypes as dt
from .interp import impl
from .registry import Attr, OpSchema, broadcast_shapes, register
from .types import TensorType

_ELEMENTWISE = frozenset({"elementwise"})


def _same_dtype(types):
    d = types[0].dtype
    if any(t.dtype != d for t in types[1:]):
        raise ValueError(f"operand dtypes differ: {', '.join(t.dtype.name for t in types)}")
    return d


def _float_unary(result_dtype=None):
    """Type inference of a unary op on floats: the operand's shape, its dtype or ``result_dtype``."""
    def infer(types, attrs):
        (x,) = types
        if not x.dtype.is_float:
            raise ValueError(f"needs a float operand, got {x.dtype.name}")
        return [TensorType(x.shape, result_dtype or x.dtype)]
    return infer


_infer_float_unary = _float_unary()


def _infer_mod(types, attrs):
    d = _same_dtype(types)
    if d == dt.boolean:
        raise ValueError("needs numeric operands, got bool")
    if d.is_float and not attrs["fmod"]:
        raise ValueError(f"fmod=0 (floor remainder) needs integer operands, got {d.name}")
    return [TensorType(broadcast_shapes(*(t.shape for t in types)), d)]


_infer_is_nan = _float_unary(dt.boolean)


def _infer_bit_shift(types, attrs):
    d = _same_dtype(types)
    if d.kind != "uint":
        raise ValueError(f"needs unsigned integer operands, got {d.name}")
    return [TensorType(broadcast_shapes(*(t.shape for t in types)), d)]


def _infer_cumsum(types, attrs):
    (x,) = types
    if x.rank == 0:
        raise ValueError("needs an operand of rank >= 1")
    if not -x.rank <= attrs["axis"] < x.rank:
        raise ValueError(f"axis {attrs['axis']} out of range for rank {x.rank}")
    if x.dtype == dt.boolean:
        raise ValueError("needs a numeric operand, got bool")
    return [TensorType(x.shape, x.dtype)]


TRIG = ("sinh", "cosh", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh")
for _n in TRIG:
    register(OpSchema(_n, (1, 1), {}, _infer_float_unary, doc=f"elementwise {_n}; NaN outside its domain",
                      traits=_ELEMENTWISE))
register(OpSchema("mod", (2, 2), {"fmod": Attr("bool", False)}, _infer_mod, traits=_ELEMENTWISE,
                  doc="numpy-broadcast remainder: fmod=1 C fmod (sign of the dividend), fmod=0 floor remainder "
                      "(sign of the divisor; integers only)"))
register(OpSchema("is_nan", (1, 1), {}, _infer_is_nan, doc="x != x", traits=_ELEMENTWISE))
register(OpSchema("bit_shift", (2, 2), {"direction": Attr("str", "left", ("left", "right"))}, _infer_bit_shift,
                  doc="unsigned x << y or x >> y, truncated to the dtype; a shift >= the bit width gives 0",
                  traits=_ELEMENTWISE))
register(OpSchema("cumsum", (1, 1), {"axis": Attr("int"), "exclusive": Attr("bool", False),
                                     "reverse": Attr("bool", False)}, _infer_cumsum,
                  doc="running sum along axis in the operand dtype; exclusive leaves each element out, reverse "
                      "sums from the end"))


# -- references ---------------------------------------------------------------------------------------------------
_NP_TRIG = {"sinh": np.sinh, "cosh": np.cosh, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
            "atan": np.arctan, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh}


@impl(*TRIG)
def _trig(op, x):
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _NP_TRIG[op.opname](x.astype(np.float64)).astype(x.dtype)


@impl("mod")
def _mod(op, a, b):
    if np.issubdtype(a.dtype, np.integer):
        if np.any(b == 0):
            raise LowbitError(f"{op.describe()}: integer remainder by zero")
        return np.fmod(a, b) if op.attrs["fmod"] else np.mod(a, b)
    with np.errstate(invalid="ignore"):
        return np.fmod(a, b)


impl("is_nan")(lambda op, x: np.isnan(x))


@impl("bit_shift")
def _bit_shift(op, x, y):
    bits = np.iinfo(x.dtype).bits
    y = np.broadcast_to(y, np.broadcast_shapes(x.shape, y.shape))
    small = np.where(y < bits, y, 0).astype(x.dtype)
    shifted = np.left_shift(x, small) if op.attrs["direction"] == "left" else np.right_shift(x, small)
    return np.where(y < bits, shifted, 0).astype(x.dtype)


@impl("cumsum")
def _cumsum(op, x):
    ax = op.attrs["axis"] % x.ndim
    if op.attrs["reverse"]:
        x = np.flip(x, ax)
    y = np.cumsum(x, axis=ax, dtype=x.dtype)
    if op.attrs["exclusive"]:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=ax)), np.take(y, range(x.shape[ax] - 1), axis=ax)],
                           axis=ax)
    return np.flip(y, ax) if op.attrs["reverse"] else y
