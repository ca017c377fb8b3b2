"""The shared core of the ONNX importer: ``Ctx`` (what a converter sees), ``NodeError``, ``onnx_dtype``,
the ``converter`` decorator and its ``CONVERTERS`` table, and small helpers the op-family modules share
(``ints``, ``norm_axis``, ``reshape_to``). It imports no op-family module; they import it.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from ..ir.dtypes import DType
from ..ir.graph import Graph, Value
from ..ir.interp import evaluate_op
from ..ir.types import TensorType
from ..ir.registry import has_trait

# ONNX TensorProto element types lowbit understands.
_ONNX_DTYPES = {1: dt.f32, 2: dt.u8, 3: dt.i8, 5: dt.i16, 6: dt.i32, 7: dt.i64, 9: dt.boolean, 10: dt.f16,
                11: dt.f64, 16: dt.bf16, 17: dt.f8e4m3, 19: dt.f8e5m2, 21: dt.u4, 22: dt.i4}
_ONNX_DTYPE_NAMES = {0: "UNDEFINED", 4: "UINT16", 8: "STRING", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
                     15: "COMPLEX128", 18: "FLOAT8E4M3FNUZ", 20: "FLOAT8E5M2FNUZ", 23: "FLOAT4E2M1"}

# Bits per element of each type above (the 4-bit ones pack two elements a byte), and the TensorProto field
# that holds its data when there is no raw_data.
_ONNX_BITS = {1: 32, 2: 8, 3: 8, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 16: 16, 17: 8, 19: 8, 21: 4, 22: 4}
_DATA_FIELD = {1: "float_data", 7: "int64_data", 11: "double_data"}  # every other type above: int32_data
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
# The most elements one tensor may have: lowbit's kernels index with 32-bit integers. A model asking for more
# (a corrupted dimension, usually) is refused before anything is allocated.
MAX_ELEMENTS = 2**31 - 1

# Ops that are never evaluated at import even when their operands are constant: folding a dequantize of an
# int8 weight would throw away the quantization the model asks for.


class NodeError(Exception):
    """Raised inside a converter; the importer prefixes the node's type and name."""


def onnx_dtype(code: int, what: str) -> DType:
    if code in _ONNX_DTYPES:
        return _ONNX_DTYPES[code]
    raise NodeError(f"{what} has ONNX element type {_ONNX_DTYPE_NAMES.get(code, code)}, which lowbit does not support")


def check_size(shape, what: str) -> int:
    """The element count of ``shape``; a negative dimension or more than ``MAX_ELEMENTS`` is refused."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise NodeError(f"{what} has a negative dimension in shape {dims}")
    n = math.prod(dims)
    if n > MAX_ELEMENTS:
        raise NodeError(f"{what} has shape {dims}, {n} elements: more than lowbit's limit of {MAX_ELEMENTS}")
    return n


def check_tensor(t, what: str) -> None:
    """Check a TensorProto before decoding it: a known element type, sane dims, and exactly as much data as
    the dims need (raw_data bytes or the typed field's count); nothing is allocated."""
    from onnx import TensorProto

    dtype = onnx_dtype(t.data_type, what)
    n = check_size(t.dims, what)
    if t.data_location == TensorProto.EXTERNAL:
        raise NodeError(f"{what} keeps its data in an external file; load the model from its path")
    if t.HasField("segment"):
        raise NodeError(f"{what} is a segment of a larger tensor, which lowbit does not support")
    bits = _ONNX_BITS[t.data_type]
    if t.HasField("raw_data"):
        need = (n * bits + 7) // 8
        if len(t.raw_data) != need:
            raise NodeError(f"{what} has {len(t.raw_data)} bytes of raw data, but {n} {dtype} element(s) of dims "
                            f"{list(t.dims)} need {need}")
        return
    field = _DATA_FIELD.get(t.data_type, "int32_data")
    count = len(getattr(t, field))
    need = (n + 1) // 2 if bits == 4 else n
    if count != need:
        others = [f for f in _DATA_FIELDS if f != field and len(getattr(t, f))]
        if count == 0 and others:
            raise NodeError(f"{what} of type {dtype} holds its data in {others[0]}, expected {field} or raw_data")
        raise NodeError(f"{what} has {count} value(s) in {field}, but its dims {list(t.dims)} need {need}")


def decode_tensor(t, what: str) -> np.ndarray:
    """A checked TensorProto as a numpy array of its dims."""
    from onnx import numpy_helper

    check_tensor(t, what)
    try:
        arr = numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise NodeError(f"{what} cannot be decoded: {one_line(e)}") from None
    if arr.shape != tuple(t.dims):
        raise NodeError(f"{what} decodes to shape {list(arr.shape)}, its dims say {list(t.dims)}")
    return arr


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


class Ctx:
    """What a converter sees: the graph under construction and helpers for operands and attributes."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.env: dict[str, Value] = {}
        self.node = None
        # subgraph(graph_proto, what, bindings) -> output Values: converts a sub-graph (If's branch, Loop's
        # body) inline; set by the importer, which owns the node loop
        self.subgraph: Callable | None = None

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
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
            raise NodeError(one_line(e)) from None
        if not has_trait(opname, "no_fold") and all(v.is_const for v in operands) and operands:
            return self.fold(op)
        return op.results

    def fold(self, op) -> list[Value]:
        """Evaluate an op whose operands are all constant and replace it by constants."""
        for r in op.results:
            check_size(r.type.shape, f"the {op.opname} result")
        try:
            with np.errstate(all="ignore"):
                vals = evaluate_op(op, [v.const_value for v in op.operands])
        except LowbitError as e:
            raise NodeError(one_line(e)) from None
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
            raise NodeError(f"evaluating {op.opname} on the constant operands failed: {one_line(e)}") from None
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


def ints(v) -> tuple[int, ...]:
    return tuple(int(x) for x in np.asarray(v).reshape(-1))


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise NodeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def reshape_to(c: Ctx, x: Value, shape) -> Value:
    return c.op("reshape", [x], {"shape": tuple(int(d) for d in shape)})
