"""The op registry: each op declares its operands, attributes (with defaults), type inference and traits.

Adding an op means one ``register(OpSchema(...))`` here, one reference implementation in ``interp.py``, a
lowering rule (or a named refusal) in the code generator and an exporter (or a named refusal) in
``export.py``; ``tests/test_registry.py`` fails for an op without all of them.

Traits say what kind of op it is, for passes, importers and code generators to ask (``has_trait``, ``ops_with``)
instead of keeping lists of op names:

- ``elementwise``: result shape = the operands' numpy broadcast; result[i] depends only on operand elements at i
- ``no_fold``: fold-constants and the ONNX importer never evaluate it at compile time, even on constants
- ``integer_kernel``: computed by an integer kernel (exact integer accumulation, then one rounding to the result)
- ``compute``: a conv/matmul-class op that carries weights

(For quantize/dequantize/requantize "elementwise" allows per-axis parameters: they vary along the quantized axis.)

>>> schema("conv2d").attrs["groups"].default
1
>>> has_trait("qmatmul", "integer_kernel"), has_trait("qmatmul", "elementwise")
(True, False)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import dtypes as dt
from .dtypes import DType
from .graph import Op, Value, install
from ..quant.scheme import group_shape, storage_range
from .types import TensorType

REQUIRED = object()
TRAITS = frozenset({"elementwise", "no_fold", "integer_kernel", "compute"})


@dataclass(frozen=True)
class Attr:
    kind: str  # int, float, str, bool, ints, floats, dtype, tensor
    default: object = REQUIRED
    choices: tuple = ()


@dataclass(frozen=True)
class OpSchema:
    name: str
    operands: tuple[int, int | None]  # (min, max); max None = variadic
    attrs: dict[str, Attr] = field(default_factory=dict)
    # Returns result types from operand types and attributes; None for ops whose result type is
    # declared (const, quantize, requantize) and checked by ``check`` instead.
    infer: Callable[[list[TensorType], dict], list[TensorType]] | None = None
    check: Callable[[list[TensorType], dict, list[TensorType]], None] | None = None
    doc: str = ""
    traits: frozenset[str] = frozenset()

    def __post_init__(self):
        object.__setattr__(self, "traits", frozenset(self.traits))
        unknown = self.traits - TRAITS
        if unknown:
            raise ValueError(f"op '{self.name}': unknown trait(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(TRAITS))})")


_SCHEMAS: dict[str, OpSchema] = {}


def register(s: OpSchema) -> OpSchema:
    if s.name in _SCHEMAS:
        raise ValueError(f"op '{s.name}' registered twice")
    _SCHEMAS[s.name] = s
    return s


def schema(name: str) -> OpSchema:
    try:
        return _SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown op '{name}'") from None


def all_ops() -> list[str]:
    return sorted(_SCHEMAS)


def _known_trait(trait: str) -> str:
    if trait not in TRAITS:
        raise ValueError(f"unknown trait '{trait}' (known: {', '.join(sorted(TRAITS))})")
    return trait


def has_trait(opname: str, trait: str) -> bool:
    """Whether registered op ``opname`` has ``trait``; an unknown op or trait is an error, not False."""
    return _known_trait(trait) in schema(opname).traits


def ops_with(trait: str) -> frozenset[str]:
    """The names of every registered op with ``trait``."""
    _known_trait(trait)
    return frozenset(n for n, s in _SCHEMAS.items() if trait in s.traits)


# -- attribute normalisation ---------------------------------------------------------------------------
def _coerce(kind: str, v, where: str):
    try:
        if kind == "int":
            if isinstance(v, (bool, np.bool_)) or int(v) != v:
                raise TypeError
            return int(v)
        if kind == "float":
            return float(v)
        if kind == "bool":
            if not isinstance(v, (bool, np.bool_, int)) or v not in (0, 1):
                raise TypeError
            return bool(v)
        if kind == "str":
            if not isinstance(v, str):
                raise TypeError
            return v
        if kind == "ints":
            return tuple(_coerce("int", x, where) for x in v)
        if kind == "floats":
            return tuple(float(x) for x in v)
        if kind == "dtype":
            return v if isinstance(v, DType) else DType.parse(v)
        if kind == "tensor":
            return np.asarray(v)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{where}: expected {kind}, got {v!r}")


def normalize_attrs(s: OpSchema, attrs: dict, where: str) -> dict:
    out = {}
    for k in attrs:
        if k not in s.attrs:
            raise ValueError(f"{where}: unknown attribute '{k}' (known: {', '.join(s.attrs) or 'none'})")
    for k, spec in s.attrs.items():
        if k in attrs and attrs[k] is not None:
            v = _coerce(spec.kind, attrs[k], f"{where} attribute '{k}'")
            if spec.choices and v not in spec.choices:
                raise ValueError(f"{where}: attribute '{k}' = {v!r} is not one of {', '.join(map(str, spec.choices))}")
            out[k] = v
        elif spec.default is REQUIRED:
            raise ValueError(f"{where}: missing attribute '{k}'")
        else:
            out[k] = spec.default
    return out


def _check_arity(s: OpSchema, n: int, where: str) -> None:
    lo, hi = s.operands
    if n < lo or (hi is not None and n > hi):
        want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
        raise ValueError(f"{where}: takes {want} operands, got {n}")


def build_op(opname, operands: list[Value], attrs: dict, result_types, loc) -> Op:
    s = schema(opname)
    where = f"{opname} '{loc}'" if loc else opname
    _check_arity(s, len(operands), where)
    attrs = normalize_attrs(s, attrs, where)
    if result_types is None:
        if s.infer is None:
            raise ValueError(f"{where}: result type must be given")
        try:
            result_types = s.infer([v.type for v in operands], attrs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    op = Op(opname, operands, attrs, result_types, loc)
    if s.infer is None and s.check is not None:
        try:
            s.check([v.type for v in operands], attrs, list(result_types))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return op


def verify_op(op: Op) -> None:
    s = schema(op.opname)
    where = op.describe()
    _check_arity(s, len(op.operands), where)
    if set(op.attrs) != set(s.attrs):
        raise ValueError(f"{where}: attributes {sorted(op.attrs)} differ from the schema's {sorted(s.attrs)}")
    types = [v.type for v in op.operands]
    got = [r.type for r in op.results]
    try:
        if s.infer is not None:
            want = s.infer(types, op.attrs)
            if len(want) != len(got) or any(w.shape != g.shape or w.dtype != g.dtype for w, g in zip(want, got)):
                raise ValueError(f"result types {', '.join(map(str, got))} differ from inferred "
                                 f"{', '.join(map(str, want))}")
        if s.check is not None:
            s.check(types, op.attrs, got)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


# -- inference helpers -----------------------------------------------------------------------------------
def broadcast_shapes(*shapes) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ValueError(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast") from None


def _same_dtype(types):
    d = types[0].dtype
    for t in types[1:]:
        if t.dtype != d:
            raise ValueError(f"operand dtypes differ: {', '.join(t.dtype.name for t in types)}")
    return d


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def _elementwise(result_dtype: DType | None = None, want: str | None = None):
    def infer(types, attrs):
        d = _same_dtype(types)
        if want == "float" and not d.is_float:
            raise ValueError(f"needs a float operand, got {d.name}")
        if want == "bool" and d != dt.boolean:
            raise ValueError(f"needs bool operands, got {d.name}")
        return [TensorType(broadcast_shapes(*(t.shape for t in types)), result_dtype or d)]
    return infer


_ELEMENTWISE = frozenset({"elementwise"})
_QUANT = frozenset({"elementwise", "no_fold"})
_COMPUTE = frozenset({"compute"})
_INTEGER = frozenset({"compute", "integer_kernel"})


def _unary(name, want="float", attrs=None, doc=""):
    register(OpSchema(name, (1, 1), attrs or {}, _elementwise(want=want), doc=doc, traits=_ELEMENTWISE))


def _binary(name, result_dtype=None, want=None, doc=""):
    register(OpSchema(name, (2, 2), {}, _elementwise(result_dtype, want), doc=doc, traits=_ELEMENTWISE))


# -- elementwise ------------------------------------------------------------------------------------------
for _n in ("add", "sub", "mul", "div", "pow", "max", "min"):
    _binary(_n, doc=f"numpy-broadcast {_n}; integer div truncates toward zero")
for _n in ("equal", "less", "greater", "less_equal", "greater_equal"):
    _binary(_n, result_dtype=dt.boolean)
for _n in ("and", "or", "xor"):
    _binary(_n, want="bool")
for _n in ("relu", "sigmoid", "tanh", "exp", "log", "sqrt", "reciprocal", "erf", "floor", "ceil", "round",
           "sin", "cos", "softplus", "hard_swish"):
    _unary(_n)
for _n in ("neg", "abs", "identity", "sign"):
    _unary(_n, want=None)
_unary("not", want="bool")
_unary("gelu", attrs={"approximate": Attr("str", "none", ("none", "tanh"))})
_unary("hard_sigmoid", attrs={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)})
_unary("leaky_relu", attrs={"alpha": Attr("float", 0.01)})
_unary("elu", attrs={"alpha": Attr("float", 1.0)})
_unary("clip", want=None, attrs={"min": Attr("float", float("-inf")), "max": Attr("float", float("inf"))})
_unary("dropout", want=None, attrs={"ratio": Attr("float", 0.5)})
register(OpSchema("prelu", (2, 2), {}, lambda t, a: [TensorType(broadcast_shapes(t[0].shape, t[1].shape), _same_dtype(t))],
                  traits=_ELEMENTWISE))
register(OpSchema("where", (3, 3), {}, lambda t, a: _infer_where(t), traits=_ELEMENTWISE))
register(OpSchema("cast", (1, 1), {"to": Attr("dtype")}, lambda t, a: [TensorType(t[0].shape, a["to"])],
                  traits=_ELEMENTWISE))


def _infer_where(t):
    if t[0].dtype != dt.boolean:
        raise ValueError(f"condition must be bool, got {t[0].dtype.name}")
    d = _same_dtype(t[1:])
    return [TensorType(broadcast_shapes(t[0].shape, t[1].shape, t[2].shape), d)]


# -- constants and quantization -------------------------------------------------------------------------
def _check_const(types, attrs, results):
    v = attrs["value"]
    r = results[0]
    if tuple(v.shape) != r.shape or np.dtype(v.dtype) != r.dtype.np_dtype:
        raise ValueError(f"value of shape {tuple(v.shape)} and dtype {v.dtype} does not match type {r}")
    if r.encoding is not None:
        why = r.encoding.check(v)
        if why is not None:
            raise ValueError(f"value does not honour its encoding {r.encoding}: {why}")


register(OpSchema("const", (0, 0), {"value": Attr("tensor")}, None, _check_const, doc="a constant tensor",
                  traits=frozenset({"no_fold"})))


def _check_quantize(types, attrs, results):
    (x,), (r,) = types, results
    if not x.dtype.is_float:
        raise ValueError(f"quantizes a float tensor, got {x.dtype.name}")
    _check_quant_type(r, x.shape)


def _check_quant_type(r: TensorType, shape):
    if r.shape != tuple(shape):
        raise ValueError(f"result shape {r.shape} differs from operand shape {tuple(shape)}")
    if not r.dtype.is_integer or r.quant is None:
        raise ValueError(f"result must be an integer tensor with quantization parameters, got {r}")
    q = r.quant
    if q.axis is not None and q.group is None:
        if not 0 <= q.axis < r.rank or r.shape[q.axis] != len(q.scale):
            raise ValueError(f"{len(q.scale)} scales do not match axis {q.axis} of {r}")
    if q.group is not None:
        _check_group(r)
    lo, hi = storage_range(r.dtype, q)
    if any(not lo <= z <= hi for z in q.zero_point):
        raise ValueError(f"zero point out of range for {r.dtype.name}")


def _check_requantize(types, attrs, results):
    (x,), (r,) = types, results
    if x.quant is None or not x.dtype.is_integer:
        raise ValueError(f"operand must be a quantized integer tensor, got {x}")
    _check_quant_type(r, x.shape)


def _check_group(t: TensorType):
    """A group-wise type: rank 2, a per-channel ``axis``, ``group`` >= 1, one (scale, zp) per cell of its
    ``group_shape`` grid."""
    q = t.quant
    if q.axis is None or q.group < 1:
        raise ValueError(f"group-wise quantization needs an axis and a group of at least 1, got {t}")
    grid = group_shape(q, t.shape)
    if len(q.scale) != int(np.prod(grid)):
        raise ValueError(f"{len(q.scale)} scales do not fill the {'x'.join(map(str, grid))} group grid of {t}")


def _infer_dequantize(types, attrs):
    (x,) = types
    if x.quant is None or not x.dtype.is_integer:
        raise ValueError(f"operand must be a quantized integer tensor, got {x}")
    if x.quant.group is not None:
        _check_group(x)
    return [TensorType(x.shape, dt.f32)]


# no_fold: folding a dequantize of an int8 weight would discard the quantization the graph asks for.
register(OpSchema("quantize", (1, 1), {}, None, _check_quantize, traits=_QUANT,
                  doc="q = saturate(round_half_even(x / scale) + zp); parameters from the result type"))
register(OpSchema("requantize", (1, 1), {}, None, _check_requantize, traits=_QUANT,
                  doc="re-express a quantized tensor with the result type's parameters (exact via f32)"))
register(OpSchema("dequantize", (1, 1), {}, _infer_dequantize, doc="x = (q - zp) * scale in f32", traits=_QUANT))


# -- shape ops ----------------------------------------------------------------------------------------------
def _infer_reshape(t, a):
    shape = a["shape"]
    if any(d < 0 for d in shape):
        raise ValueError(f"reshape target {shape} must be fully static")
    if int(np.prod(shape, dtype=np.int64)) != t[0].size:
        raise ValueError(f"cannot reshape {t[0].shape} ({t[0].size} elements) to {shape}")
    return [TensorType(shape, t[0].dtype)]


def _infer_transpose(t, a):
    perm = a["perm"]
    if sorted(perm) != list(range(t[0].rank)):
        raise ValueError(f"perm {perm} is not a permutation of rank {t[0].rank}")
    return [TensorType(tuple(t[0].shape[p] for p in perm), t[0].dtype)]


def _infer_concat(t, a):
    d = _same_dtype(t)
    rank = t[0].rank
    ax = _norm_axis(a["axis"], rank)
    shape = list(t[0].shape)
    for x in t[1:]:
        if x.rank != rank or any(x.shape[i] != shape[i] for i in range(rank) if i != ax):
            raise ValueError(f"cannot concatenate {t[0].shape} and {x.shape} on axis {ax}")
        shape[ax] += x.shape[ax]
    return [TensorType(shape, d)]


def _infer_split(t, a):
    ax = _norm_axis(a["axis"], t[0].rank)
    if sum(a["sizes"]) != t[0].shape[ax]:
        raise ValueError(f"split sizes {a['sizes']} do not add up to dimension {t[0].shape[ax]}")
    return [TensorType(t[0].shape[:ax] + (s,) + t[0].shape[ax + 1:], t[0].dtype) for s in a["sizes"]]


def slice_dim(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """Clamp ONNX-style slice bounds like numpy; end == -1 with step < 0 means 'through index 0'."""
    if step == 0:
        raise ValueError("slice step must not be 0")
    if step > 0:
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        n = max(0, -(-(end - start) // step))
    else:
        start = min(max(start + dim if start < 0 else start, -1), dim - 1)
        end = min(max(end + dim if end < 0 else end, -1), dim - 1)
        n = max(0, -(-(start - end) // -step))
    return start, end, n


def _infer_slice(t, a):
    shape = list(t[0].shape)
    if not len(a["starts"]) == len(a["ends"]) == len(a["axes"]) == len(a["steps"]):
        raise ValueError("starts, ends, axes and steps must have equal lengths")
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
        ax = _norm_axis(ax, t[0].rank)
        shape[ax] = slice_dim(t[0].shape[ax], s, e, st)[2]
    return [TensorType(shape, t[0].dtype)]


def _infer_gather(t, a):
    data, idx = t
    if not idx.dtype.is_integer:
        raise ValueError(f"indices must be integers, got {idx.dtype.name}")
    ax = _norm_axis(a["axis"], data.rank)
    return [TensorType(data.shape[:ax] + idx.shape + data.shape[ax + 1:], data.dtype)]


def _infer_gather_elements(t, a):
    data, idx = t
    if not idx.dtype.is_integer:
        raise ValueError(f"indices must be integers, got {idx.dtype.name}")
    if data.rank != idx.rank:
        raise ValueError(f"data rank {data.rank} and indices rank {idx.rank} differ")
    _norm_axis(a["axis"], data.rank)
    return [TensorType(idx.shape, data.dtype)]


def _infer_expand(t, a):
    return [TensorType(broadcast_shapes(t[0].shape, a["shape"]), t[0].dtype)]


def _infer_pad(t, a):
    pads = a["pads"]
    r = t[0].rank
    if len(pads) != 2 * r:
        raise ValueError(f"pads needs {2 * r} values for rank {r}, got {len(pads)}")
    shape = [d + pads[i] + pads[i + r] for i, d in enumerate(t[0].shape)]
    if any(d < 0 for d in shape):
        raise ValueError(f"pads {pads} make a negative dimension")
    return [TensorType(shape, t[0].dtype)]


def _infer_tile(t, a):
    if len(a["repeats"]) != t[0].rank:
        raise ValueError("repeats needs one value per dimension")
    return [TensorType([d * r for d, r in zip(t[0].shape, a["repeats"])], t[0].dtype)]


def _infer_resize(t, a):
    x = t[0]
    if len(a["sizes"]) != x.rank or len(a["scales"]) != x.rank:
        raise ValueError("sizes and scales need one value per dimension")
    if a["mode"] == "linear" and x.rank > 2 and any(s != d for s, d in zip(a["sizes"][:2], x.shape[:2])):
        raise ValueError("linear resize of batch or channel dimensions is not implemented")
    if not x.dtype.is_float and a["mode"] == "linear":
        raise ValueError("linear resize needs a float tensor")
    return [TensorType(a["sizes"], x.dtype)]


register(OpSchema("reshape", (1, 1), {"shape": Attr("ints")}, _infer_reshape))
register(OpSchema("transpose", (1, 1), {"perm": Attr("ints")}, _infer_transpose))
register(OpSchema("concat", (1, None), {"axis": Attr("int")}, _infer_concat))
register(OpSchema("split", (1, 1), {"axis": Attr("int"), "sizes": Attr("ints")}, _infer_split))
register(OpSchema("slice", (1, 1), {"starts": Attr("ints"), "ends": Attr("ints"), "axes": Attr("ints"),
                                    "steps": Attr("ints")}, _infer_slice))
register(OpSchema("gather", (2, 2), {"axis": Attr("int", 0)}, _infer_gather,
                  doc="np.take; negative indices count from the end"))
register(OpSchema("gather_elements", (2, 2), {"axis": Attr("int", 0)}, _infer_gather_elements,
                  doc="out[.., j, ..] = data[.., index[.., j, ..], ..] on axis; negative indices count from the end"))
register(OpSchema("expand", (1, 1), {"shape": Attr("ints")}, _infer_expand))
register(OpSchema("pad", (1, 1), {"pads": Attr("ints"), "mode": Attr("str", "constant", ("constant", "reflect", "edge")),
                                  "value": Attr("float", 0.0)}, _infer_pad,
                  doc="pads = [begin_0..begin_n, end_0..end_n] as in ONNX"))
register(OpSchema("tile", (1, 1), {"repeats": Attr("ints")}, _infer_tile))
register(OpSchema("resize", (1, 1), {
    "sizes": Attr("ints"), "scales": Attr("floats"), "mode": Attr("str", "nearest", ("nearest", "linear")),
    "coordinate_transformation_mode": Attr("str", "half_pixel", (
        "half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric")),
    "nearest_mode": Attr("str", "round_prefer_floor", ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")),
}, _infer_resize, doc="ONNX Resize: output coordinate x maps to input (x + 0.5) / scale - 0.5 (half_pixel) etc."))


# -- reductions and normalisation ---------------------------------------------------------------------------
def _reduced_shape(shape, axes, keepdims):
    axes = sorted({_norm_axis(a, len(shape)) for a in axes}) if axes else list(range(len(shape)))
    return tuple((1 if i in axes else d) for i, d in enumerate(shape) if keepdims or i not in axes)


def _infer_reduce(t, a):
    return [TensorType(_reduced_shape(t[0].shape, a["axes"], a["keepdims"]), t[0].dtype)]


for _n in ("reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod"):
    register(OpSchema(_n, (1, 1), {"axes": Attr("ints", ()), "keepdims": Attr("bool", True)}, _infer_reduce,
                      doc="axes=() reduces over every axis"))


def _infer_argmax(t, a):
    return [TensorType(_reduced_shape(t[0].shape, (a["axis"],), a["keepdims"]), dt.i64)]


register(OpSchema("arg_max", (1, 1), {"axis": Attr("int", 0), "keepdims": Attr("bool", True),
                                      "select_last_index": Attr("bool", False)}, _infer_argmax))


def _infer_same_float(t, a):
    if not t[0].dtype.is_float:
        raise ValueError(f"needs a float operand, got {t[0].dtype.name}")
    if "axis" in a:
        _norm_axis(a["axis"], t[0].rank)
    return [t[0].with_dtype(t[0].dtype)]


register(OpSchema("softmax", (1, 1), {"axis": Attr("int", -1)}, _infer_same_float))
register(OpSchema("log_softmax", (1, 1), {"axis": Attr("int", -1)}, _infer_same_float))
register(OpSchema("layer_norm", (2, 3), {"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5)}, _infer_same_float,
                  doc="normalise over axes [axis, rank); operands x, scale, optional bias"))
register(OpSchema("batch_norm", (5, 5), {"epsilon": Attr("float", 1e-5)}, _infer_same_float,
                  doc="inference batch norm over axis 1; operands x, scale, bias, mean, var"))
register(OpSchema("lrn", (1, 1), {"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
                                  "bias": Attr("float", 1.0)}, _infer_same_float))


# -- linear algebra and convolution -------------------------------------------------------------------------
def _infer_matmul(t, a):
    x, w = t
    d = _same_dtype(t)
    if x.rank == 0 or w.rank == 0:
        raise ValueError("matmul operands must have rank >= 1")
    xs = (1,) + x.shape if x.rank == 1 else x.shape
    ws = w.shape + (1,) if w.rank == 1 else w.shape
    if xs[-1] != ws[-2]:
        raise ValueError(f"inner dimensions differ: {x.shape} @ {w.shape}")
    batch = broadcast_shapes(xs[:-2], ws[:-2])
    shape = batch + (xs[-2], ws[-1])
    if x.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if w.rank == 1:
        shape = shape[:-1]
    return [TensorType(shape, d)]


def _infer_gemm(t, a):
    d = _same_dtype(t)
    A, B = t[0].shape, t[1].shape
    if len(A) != 2 or len(B) != 2:
        raise ValueError(f"gemm needs 2-D A and B, got {A} and {B}")
    m, k = (A[1], A[0]) if a["trans_a"] else A
    k2, n = (B[1], B[0]) if a["trans_b"] else B
    if k != k2:
        raise ValueError(f"inner dimensions differ: {A} and {B} (trans_a={a['trans_a']}, trans_b={a['trans_b']})")
    if len(t) == 3:
        broadcast_shapes(t[2].shape, (m, n))
    return [TensorType((m, n), d)]


def conv_out(size, k, stride, pad_begin, pad_end, dilation, ceil_mode=False):
    eff = (k - 1) * dilation + 1
    num = size + pad_begin + pad_end - eff
    if ceil_mode:
        out = -(-num // stride) + 1
        if (out - 1) * stride >= size + pad_begin:  # last window must start inside the input or left pad
            out -= 1
        return out
    return num // stride + 1


def _infer_conv(t, a):
    x, w = t[0], t[1]
    d = _same_dtype(t)
    if x.rank != 4 or w.rank != 4:
        raise ValueError(f"conv2d needs NCHW input and OIHW weight, got {x.shape} and {w.shape}")
    g = a["groups"]
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise ValueError(f"channels do not match: input {x.shape}, weight {w.shape}, groups {g}")
    if len(t) == 3 and t[2].shape != (w.shape[0],):
        raise ValueError(f"bias shape {t[2].shape} should be ({w.shape[0]},)")
    s, p, dl = a["strides"], a["pads"], a["dilations"]
    oh = conv_out(x.shape[2], w.shape[2], s[0], p[0], p[2], dl[0])
    ow = conv_out(x.shape[3], w.shape[3], s[1], p[1], p[3], dl[1])
    if oh <= 0 or ow <= 0:
        raise ValueError("kernel larger than padded input")
    return [TensorType((x.shape[0], w.shape[0], oh, ow), d)]


def _infer_conv_transpose(t, a):
    x, w = t[0], t[1]
    d = _same_dtype(t)
    if x.rank != 4 or w.rank != 4:
        raise ValueError(f"conv_transpose2d needs NCHW input and IOHW weight, got {x.shape} and {w.shape}")
    g = a["groups"]
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"channels do not match: input {x.shape}, weight {w.shape}")
    cout = w.shape[1] * g
    if len(t) == 3 and t[2].shape != (cout,):
        raise ValueError(f"bias shape {t[2].shape} should be ({cout},)")
    s, p, dl, op_ = a["strides"], a["pads"], a["dilations"], a["output_padding"]
    oh = s[0] * (x.shape[2] - 1) + op_[0] + (w.shape[2] - 1) * dl[0] + 1 - p[0] - p[2]
    ow = s[1] * (x.shape[3] - 1) + op_[1] + (w.shape[3] - 1) * dl[1] + 1 - p[1] - p[3]
    return [TensorType((x.shape[0], cout, oh, ow), d)]


def _infer_pool(t, a):
    x = t[0]
    if x.rank != 4:
        raise ValueError(f"pooling needs NCHW input, got {x.shape}")
    k, s, p = a["kernel"], a["strides"], a["pads"]
    dl = a.get("dilations", (1, 1))
    oh = conv_out(x.shape[2], k[0], s[0], p[0], p[2], dl[0], a["ceil_mode"])
    ow = conv_out(x.shape[3], k[1], s[1], p[1], p[3], dl[1], a["ceil_mode"])
    return [TensorType((x.shape[0], x.shape[1], oh, ow), x.dtype)]


def _infer_global_pool(t, a):
    x = t[0]
    if x.rank < 3:
        raise ValueError(f"global pooling needs rank >= 3, got {x.shape}")
    return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]


_CONV = {"strides": Attr("ints", (1, 1)), "pads": Attr("ints", (0, 0, 0, 0)), "dilations": Attr("ints", (1, 1)),
         "groups": Attr("int", 1)}
register(OpSchema("matmul", (2, 2), {}, _infer_matmul, doc="numpy matmul semantics", traits=_COMPUTE))


def _float_view(t: TensorType) -> TensorType:
    return TensorType(t.shape, dt.f32)


def _check_integer_op(infer_float, weight_axis):
    """Checks for qconv2d / qmatmul: a per-tensor u8/i8 input, an i8 weight with zero points 0 (per-tensor
    or per output channel along ``weight_axis``), an optional i32 bias, a per-tensor u8/i8 result."""
    def check(types, attrs, results):
        x, w = types[0], types[1]
        (r,) = results
        if x.dtype not in (dt.u8, dt.i8) or x.quant is None or x.quant.axis is not None:
            raise ValueError(f"input must be a per-tensor quantized u8/i8 tensor, got {x}")
        q = w.quant
        if w.dtype != dt.i8 or q is None or q.group is not None or q.axis not in (None, weight_axis % w.rank) \
                or any(z != 0 for z in q.zero_point):
            raise ValueError(f"weight must be i8 with zero point 0, per tensor or per output channel, got {w}")
        if len(types) == 3 and (types[2].dtype != dt.i32 or types[2].quant is not None):
            raise ValueError(f"bias must be a plain i32 tensor in units of input scale x weight scale, got {types[2]}")
        (f,) = infer_float([_float_view(t) for t in types[:2]], attrs)
        if len(types) == 3 and types[2].shape != (f.shape[1 if weight_axis == 0 else -1],):
            raise ValueError(f"bias shape {types[2].shape} is not one value per output channel")
        if r.shape != f.shape:
            raise ValueError(f"result shape {r.shape} should be {f.shape}")
        if r.dtype not in (dt.u8, dt.i8) or r.quant is None or r.quant.axis is not None:
            raise ValueError(f"result must be a per-tensor quantized u8/i8 tensor, got {r}")
        _check_quant_type(r, r.shape)
    return check


def _infer_qmatmul_dynamic(types, attrs):
    x, w = types[0], types[1]
    if x.dtype != dt.f32:
        raise ValueError(f"input must be f32, got {x}")
    q = w.quant
    if q is not None and q.group is not None:  # group-wise along K, one (scale, zero point) per group and column
        if w.dtype not in (dt.i4, dt.u4, dt.i8, dt.u8) or w.rank != 2 or q.axis != 1:
            raise ValueError(f"a group-wise weight must be a 2-D i4/u4/i8/u8 [K, N] grouped along K (axis=1), got {w}")
        if q.codebook is not None and not q.integer_codebook():
            bad = next(v for v in q.codebook if not (v.is_integer() and -127 <= v <= 127))
            raise ValueError(f"qmatmul_dynamic multiplies by integer codebook values in -127..127 (pow2, apot); this "
                             f"codebook holds {bad:g} (a float codebook such as nf4 has no integer form: keep "
                             f"matmul(x, dequantize(w)))")
    elif w.dtype != dt.i8 or w.rank != 2 or q is None or q.axis not in (None, 1) or any(z != 0 for z in q.zero_point):
        raise ValueError(f"weight must be a 2-D i8 [K, N] with zero point 0, per tensor or per column, or group-wise, "
                         f"got {w}")
    (f,) = _infer_matmul([x, _float_view(w)], attrs)
    if len(types) == 3 and (types[2].dtype != dt.f32 or types[2].shape != (f.shape[-1],)):
        raise ValueError(f"bias must be f32 [{f.shape[-1]}], got {types[2]}")
    return [f]


register(OpSchema("qmatmul_dynamic", (2, 3), {"per_row": Attr("bool", False)}, _infer_qmatmul_dynamic,
                  doc="x quantized at run time to u8 over [min(x, 0), max(x, 0)] (scale = range / 255, zp = "
                      "round(-min / scale)) — over the whole tensor (onnxruntime's DynamicQuantizeLinear) or, with "
                      "per_row, over each row of the last axis (one scale per token) — exact i32 matmul with the i8 "
                      "weight, y = f32(acc) * f32(sx * sw) + bias rounded once (a fused multiply-add). A group-wise "
                      "weight (i4/u4/i8/u8, one scale and zero point per group of K and column): exact sums "
                      "acc_g = sum over the group of (xq - zx) * (w - zw_g); from the bias (or 0), each group in order "
                      "adds f32(acc_g) * f32(sx * sw_g), rounded once",
                  traits=_INTEGER))


_INTEGER_DOC = ("acc = sum((x - zx) * w) + bias exactly in integers; y = saturate(round_half_even(f32(acc) * m) + zy), "
                "m = f32(sx * sw) / sy per output channel in f32; activation relu clamps at zy")
register(OpSchema("qmatmul", (2, 3), {"activation": Attr("str", "none", ("none", "relu"))}, None,
                  _check_integer_op(_infer_matmul, -1), doc="x[.., K] @ w[K, N] in integers; " + _INTEGER_DOC,
                  traits=_INTEGER))
register(OpSchema("gemm", (2, 3), {"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                                   "trans_a": Attr("bool", False), "trans_b": Attr("bool", False)}, _infer_gemm,
                  traits=_COMPUTE))
register(OpSchema("conv2d", (2, 3), dict(_CONV), _infer_conv,
                  doc="NCHW x OIHW; pads = [top, left, bottom, right]", traits=_COMPUTE))
register(OpSchema("qconv2d", (2, 3), dict(_CONV, activation=Attr("str", "none", ("none", "relu"))), None,
                  _check_integer_op(_infer_conv, 0), doc="conv2d in integers; " + _INTEGER_DOC, traits=_INTEGER))
def _check_bf16_op(infer_float, name):
    """conv2d_bf16 / matmul_bf16: an f32 input, a bf16 weight, an optional f32 bias, an f32 result."""
    def infer(types, attrs):
        x, w = types[0], types[1]
        if x.dtype != dt.f32 or x.quant is not None:
            raise ValueError(f"{name}: input must be f32 (rounded to bf16 inside), got {x}")
        if w.dtype != dt.bf16 or w.quant is not None:
            raise ValueError(f"{name}: weight must be bf16, got {w}")
        if len(types) == 3 and (types[2].dtype != dt.f32 or types[2].quant is not None):
            raise ValueError(f"{name}: bias must be f32, got {types[2]}")
        return infer_float([x, _float_view(w)] + list(types[2:]), attrs)
    return infer


def _infer_matmul_bf16(t, a):
    x, w = t[0], t[1]
    if w.rank != 2 or x.rank < 2:
        raise ValueError(f"matmul_bf16 needs x[.., K] (rank >= 2) and w[K, N], got {x.shape} and {w.shape}")
    (r,) = _infer_matmul(t[:2], a)
    if len(t) == 3 and t[2].shape != (w.shape[1],):
        raise ValueError(f"bias shape {t[2].shape} should be ({w.shape[1]},)")
    return [r]


_BF16_DOC = ("x rounded to bf16 (to nearest, ties to even), times the bf16 weight: every product exact in f32, "
             "summed in f32 (in any order), + bias; activation relu clamps at 0. The result is f32")
register(OpSchema("conv2d_bf16", (2, 3), dict(_CONV, activation=Attr("str", "none", ("none", "relu"))),
                  _check_bf16_op(_infer_conv, "conv2d_bf16"), doc="conv2d in bf16; " + _BF16_DOC, traits=_COMPUTE))
register(OpSchema("matmul_bf16", (2, 3), {"activation": Attr("str", "none", ("none", "relu"))},
                  _check_bf16_op(_infer_matmul_bf16, "matmul_bf16"),
                  doc="x[.., K] @ w[K, N] in bf16; " + _BF16_DOC, traits=_COMPUTE))

register(OpSchema("conv_transpose2d", (2, 3), dict(_CONV, output_padding=Attr("ints", (0, 0))),
                  _infer_conv_transpose, doc="NCHW x IOHW (ONNX ConvTranspose)", traits=_COMPUTE))
register(OpSchema("max_pool2d", (1, 1), {"kernel": Attr("ints"), "strides": Attr("ints", (1, 1)),
                                         "pads": Attr("ints", (0, 0, 0, 0)), "dilations": Attr("ints", (1, 1)),
                                         "ceil_mode": Attr("bool", False)}, _infer_pool))
register(OpSchema("avg_pool2d", (1, 1), {"kernel": Attr("ints"), "strides": Attr("ints", (1, 1)),
                                         "pads": Attr("ints", (0, 0, 0, 0)), "ceil_mode": Attr("bool", False),
                                         "count_include_pad": Attr("bool", False)}, _infer_pool))
register(OpSchema("global_avg_pool", (1, 1), {}, _infer_global_pool))
register(OpSchema("global_max_pool", (1, 1), {}, _infer_global_pool))


install(build_op=build_op, verify_op=verify_op)
