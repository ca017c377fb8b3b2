"""Export a lowbit graph as an ONNX model in QDQ form, so that onnxruntime (or any ONNX tool) can load and
cross-check what lowbit quantized.

Integer ops are written the way onnxruntime's own quantizer writes them, which onnxruntime then fuses back
into integer kernels:

    qconv2d(xq, wq, b)          -> DequantizeLinear(xq), DequantizeLinear(wq), DequantizeLinear(b as i32 in
                                   units of sx * sw) -> Conv [-> Relu] -> QuantizeLinear(sy, zy)
    qmatmul(xq, wq, b)          -> the same around MatMul + Add
    qmatmul_dynamic (per tensor) -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(sx * sw) [-> Add(b)]
    conv2d_bf16 / matmul_bf16   -> Cast(Cast(x, bf16), f32), Cast(w, f32) -> Conv / MatMul [+ Add] [-> Relu]
    quantize / dequantize       -> QuantizeLinear / DequantizeLinear (per tensor or per axis)
    requantize                  -> DequantizeLinear -> QuantizeLinear
    matmul(x, dequantize(w))    -> com.microsoft MatMulNBits (accuracy_level 0: W dequantized in f32, an f32
      with w group-wise            matmul, as lowbit's reference), the codes made unsigned with their zero
                                   points (an i4 code q becomes q + 8 with zero point 8)

Float ops map to their ONNX namesakes (opset 20; dropout to inference-mode Dropout). Like the importers, export
is a table: ``EXPORTERS`` maps an op to the function that writes it (filled by ``@exporter``), ``REFUSED`` maps an
op with no exact ONNX form to the reason, which the error names; every registered op is in exactly one of the
two (``tests/test_registry.py``, which also runs every exporter in onnxruntime; the integer kernels are run in
``tests/test_quantize.py``). An exporter may still refuse a form of its op with no exact ONNX equivalent —
``qmatmul_dynamic`` with ``per_row`` (ONNX's DynamicQuantizeLinear has one scale per tensor); nothing is
approximated.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .errors import LowbitError
from .quant import scheme
from .ir import dtypes as dt
from .ir.graph import Graph, Op

OPSET = 20

# ops written as one ONNX node of this type, without attributes
_SAME = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "relu": "Relu", "sigmoid": "Sigmoid",
         "tanh": "Tanh", "equal": "Equal", "where": "Where", "matmul": "MatMul", "hard_swish": "HardSwish",
         "global_avg_pool": "GlobalAveragePool", "global_max_pool": "GlobalMaxPool", "exp": "Exp", "sqrt": "Sqrt",
         "neg": "Neg", "abs": "Abs", "max": "Max", "min": "Min", "pow": "Pow", "erf": "Erf", "log": "Log",
         "identity": "Identity", "reciprocal": "Reciprocal", "floor": "Floor", "ceil": "Ceil", "round": "Round",
         "sign": "Sign", "sin": "Sin", "cos": "Cos", "softplus": "Softplus", "prelu": "PRelu", "not": "Not",
         "and": "And", "or": "Or", "xor": "Xor", "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
         "greater_equal": "GreaterOrEqual"}


# An exporter writes ``op`` given its operands' ONNX names ``ins`` and its first result's name ``out``.
Exporter = Callable[["_Writer", Op, list, str], None]
EXPORTERS: dict[str, Exporter] = {}
REFUSED: dict[str, str] = {}  # every registered op has an exact ONNX form today


def exporter(*names):
    def deco(fn):
        for n in names:
            if n in EXPORTERS or n in REFUSED:
                raise ValueError(f"op '{n}' has an exporter or a refusal already")
            EXPORTERS[n] = fn
        return fn
    return deco


def _elem(d) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(d.np_dtype if d != dt.boolean else np.bool_))


class _Writer:
    def __init__(self):
        self.nodes, self.inits, self.names, self.n = [], [], {}, 0
        self.domains: set = set()  # custom op domains used (com.microsoft for MatMulNBits)

    def fresh(self, hint="t") -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def name(self, v) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = self.fresh(v.name or "v")
        return self.names[id(v)]

    def init(self, array, hint="c") -> str:
        from onnx import numpy_helper

        nm = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), nm))
        return nm

    def node(self, op_type, inputs, outputs=None, **attrs) -> str:
        from onnx import helper

        outputs = outputs or [self.fresh(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), **attrs))
        return outputs[0]

    def qparams(self, t):
        """(scale, zero point) initializers of a quantized type, and the axis attribute (per channel)."""
        q = t.quant
        axis = {} if q.axis is None else {"axis": q.axis}
        shape = () if q.axis is None else (len(q.scale),)
        if q.codebook is not None:
            raise LowbitError(f"a {t.dtype.name} codebook weight (shift-add) has no ONNX form: DequantizeLinear "
                              "maps codes linearly; export the graph before shift-add")
        scale = self.init(np.asarray(q.scale, np.float32).reshape(shape), "scale")
        zp = self.init(np.asarray(q.zero_point, _onnx_storage(t.dtype)).reshape(shape), "zero_point")
        return scale, zp, axis

    def dequantize(self, v, vname=None, out=None) -> str:
        s, z, axis = self.qparams(v.type)
        return self.node("DequantizeLinear", [vname or self.name(v), s, z], [out] if out else None, **axis)

    def quantize(self, x: str, t, out: str) -> str:
        s, z, axis = self.qparams(t)
        return self.node("QuantizeLinear", [x, s, z], [out], **axis)

    def bias(self, b, xq, wq, n: int) -> str:
        """The i32 bias constant dequantized with scale sx * sw (per output channel)."""
        sw = np.broadcast_to(wq.type.quant.scale_array().astype(np.float32), (n,))
        bq = self.name(b)
        s = self.init(scheme.scale_product(xq.type.quant.scale[0], sw), "bias_scale")
        z = self.init(np.zeros(n, np.int32), "bias_zero_point")
        return self.node("DequantizeLinear", [bq, s, z], axis=0)


# -- the table ---------------------------------------------------------------------------------------------------
def _ints(w: _Writer, values, hint: str) -> str:
    return w.init(np.asarray(values, np.int64), hint)


@exporter("const")
def _const(w, op, ins, out):
    from onnx import numpy_helper

    if op.result.users and all(u.opname == "dequantize" and _nbits_weight(u.result) for u in op.result.users):
        return  # a MatMulNBits weight: packed by _matmul_nbits
    w.inits.append(numpy_helper.from_array(np.asarray(op.attrs["value"]).astype(_onnx_storage(op.result.type.dtype)),
                                           out))


def _onnx_storage(d) -> np.dtype:
    """The numpy dtype an initializer of lowbit dtype ``d`` is written in: 4-bit codes as 8-bit integers of the
    same values (opset 20's DequantizeLinear takes no int4; the values, and so the meaning, are unchanged)."""
    return np.dtype(np.int8) if d == dt.i4 else np.dtype(np.uint8) if d == dt.u4 else np.dtype(d.np_dtype)


@exporter(*_SAME)
def _same(w, op, ins, out):
    if op.opname == "matmul" and _nbits_weight(op.operands[1]):
        return _matmul_nbits(w, op, ins, out)
    w.node(_SAME[op.opname], ins, [out])


def _nbits_weight(v) -> bool:
    """Whether ``v`` is a group-wise constant's dequantize that only matmuls read (as their weight, x f32 of rank
    >= 2) and that MatMulNBits holds exactly: 2, 4 or 8-bit codes, groups a power of two >= 16."""
    d = v.producer
    if d is None or d.opname != "dequantize" or not d.operands[0].is_const:
        return False
    t = d.operands[0].type
    q = t.quant
    if q is None or q.group is None or q.axis != 1 or t.rank != 2 or q.group < 16 or q.group & (q.group - 1):
        return False
    if q.codebook is not None:  # codebook indices are not MatMulNBits codes
        return False
    lo, hi = scheme.storage_range(t.dtype, q)
    if hi - lo + 1 > 256 or not v.users:
        return False
    return all(u.opname == "matmul" and u.operands[1] is v and u.operands[0] is not v
               and u.operands[0].type.dtype == dt.f32 and u.operands[0].type.rank >= 2 for u in v.users)


def _matmul_nbits(w, op, ins, out):
    """MatMulNBits (com.microsoft) of x and a group-wise weight: B [N, blocks, block * bits / 8] (codes packed
    from the low bits up), scales [N * blocks], zero points packed the same way (bits 2 and 4) or u8 (8)."""
    from onnx import helper

    wc = op.operands[1].producer.operands[0]
    t, q = wc.type, wc.type.quant
    k, n = t.shape
    lo, hi = scheme.storage_range(t.dtype, q)
    bits = next(b for b in (2, 4, 8) if hi - lo + 1 <= 2 ** b)
    off = 2 ** (bits - 1) if lo < 0 else 0  # signed codes move to unsigned with their zero point
    grid = scheme.group_shape(q, t.shape)
    nb = grid[0]
    codes = np.zeros((nb * q.group, n), np.int64)
    codes[:k] = np.asarray(wc.const_value).astype(np.int64) + off
    zp = np.asarray(q.zero_point, np.int64).reshape(grid) + off
    if codes.min() < 0 or codes.max() >= 2 ** bits or zp.min() < 0 or zp.max() >= 2 ** bits:
        raise LowbitError(f"{op.describe()}: codes or zero points do not fit MatMulNBits' {bits}-bit range")
    codes[k:] = np.repeat(zp, q.group, axis=0)[k:]  # the padded rows weigh 0 (onnxruntime ignores them anyway)

    def pack(a):  # [rows, m] codes -> [rows, m * bits / 8] bytes, the first code in the low bits
        per = 8 // bits
        a = np.pad(a, ((0, 0), (0, -a.shape[1] % per)))
        return sum(a[:, i::per] << (bits * i) for i in range(per)).astype(np.uint8)
    b = pack(codes.T).reshape(n, nb, q.group * bits // 8)
    zpb = pack(zp.T).reshape(-1) if bits < 8 else zp.T.astype(np.uint8).reshape(-1)
    scales = np.asarray(q.scale, np.float32).reshape(grid).T.reshape(-1)
    w.domains.add("com.microsoft")
    w.nodes.append(helper.make_node("MatMulNBits", [ins[0], w.init(b, "nbits_B"), w.init(scales, "nbits_scales"),
                                                    w.init(zpb, "nbits_zero_points")], [out], domain="com.microsoft",
                                    K=k, N=n, bits=bits, block_size=q.group, accuracy_level=0))


def _no_groups(op):
    """Refuse group-wise parameters (MatMulNBits weights): opset 20's QuantizeLinear / DequantizeLinear have no
    block_size (opset 21's DequantizeLinear does, and onnxruntime's MatMulNBits is not ONNX-standard)."""
    if any(v.type.quant is not None and v.type.quant.codebook is not None for v in op.operands + op.results):
        raise LowbitError(f"{op.describe()}: a codebook weight (shift-add) has no ONNX form: DequantizeLinear and "
                          "MatMulNBits map codes linearly; export the graph before shift-add")
    if any(v.type.quant is not None and v.type.quant.group is not None for v in op.operands + op.results):
        raise LowbitError(f"{op.describe()}: group-wise quantization (MatMulNBits weights) has no exact ONNX export "
                          f"at opset {OPSET} (DequantizeLinear has no block_size before opset 21)")


@exporter("quantize")
def _quantize(w, op, ins, out):
    _no_groups(op)
    w.quantize(ins[0], op.result.type, out)


@exporter("dequantize")
def _dequantize(w, op, ins, out):
    if _nbits_weight(op.result):  # written into the MatMulNBits of each matmul reading it
        return
    _no_groups(op)
    w.dequantize(op.operands[0], ins[0], out)


@exporter("requantize")
def _requantize(w, op, ins, out):
    _no_groups(op)
    w.quantize(w.dequantize(op.operands[0], ins[0]), op.result.type, out)


@exporter("qconv2d", "qmatmul")
def _integer(w, op, ins, out):
    a = op.attrs
    xq, wq = op.operands[0], op.operands[1]
    conv = op.opname == "qconv2d"
    n = op.result.type.shape[1] if conv else op.result.type.shape[-1]
    xf, wf = w.dequantize(xq, ins[0]), w.dequantize(wq, ins[1])
    if conv:
        args = [xf, wf] + ([w.bias(op.operands[2], xq, wq, n)] if len(op.operands) > 2 else [])
        y = w.node("Conv", args, kernel_shape=list(wq.type.shape[2:]), strides=list(a["strides"]),
                   pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["groups"])
    else:
        y = w.node("MatMul", [xf, wf])
        if len(op.operands) > 2:
            y = w.node("Add", [y, w.bias(op.operands[2], xq, wq, n)])
    if a["activation"] == "relu":
        y = w.node("Relu", [y])
    w.quantize(y, op.result.type, out)


@exporter("qmatmul_dynamic")
def _qmatmul_dynamic(w, op, ins, out):
    import onnx

    if op.operands[1].type.quant.group is not None:
        raise LowbitError(f"{op.describe()}: dynamic quantization by a group-wise weight (W4A8) has no exact ONNX "
                          "form (MatMulNBits' int8 activations are symmetric per block); export the graph before "
                          "quantize{dynamic=true} (--pipeline with quantize-weights only: MatMulNBits)")
    if op.attrs["per_row"]:
        raise LowbitError(f"{op.describe()}: per-row dynamic quantization has no ONNX form "
                          "(DynamicQuantizeLinear has one scale per tensor); export a graph quantized "
                          "with quantize{dynamic=true,per_row=false} or statically (--preset int8)")
    wq = op.operands[1]
    n = wq.type.shape[1]
    xq, xs, xz = w.fresh("xq"), w.fresh("x_scale"), w.fresh("x_zero_point")
    w.node("DynamicQuantizeLinear", [ins[0]], [xq, xs, xz])
    acc = w.node("MatMulInteger", [xq, ins[1], xz])
    ws = np.broadcast_to(wq.type.quant.scale_array().astype(np.float32), (n,)).copy()
    scale = w.node("Mul", [xs, w.init(ws, "w_scale")])
    has_bias = len(op.operands) > 2
    y = w.node("Mul", [w.node("Cast", [acc], to=onnx.TensorProto.FLOAT), scale], None if has_bias else [out])
    if has_bias:
        w.node("Add", [y, ins[2]], [out])


@exporter("conv2d_bf16", "matmul_bf16")
def _bf16(w, op, ins, out):
    """x rounded through a bf16 Cast, the bf16 weight cast to f32 (exactly), then the f32 Conv / MatMul: the
    products of bf16 values are exact in f32, as the op defines."""
    import onnx

    f32, bf16 = onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16
    a = op.attrs
    relu = a["activation"] == "relu"
    x = w.node("Cast", [w.node("Cast", [ins[0]], to=bf16)], to=f32)
    wf = w.node("Cast", [ins[1]], to=f32)
    if op.opname == "conv2d_bf16":
        y = w.node("Conv", [x, wf] + ins[2:], None if relu else [out], kernel_shape=list(op.operands[1].type.shape[2:]),
                   strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["groups"])
    else:
        y = w.node("MatMul", [x, wf], None if relu or len(ins) > 2 else [out])
        if len(ins) > 2:
            y = w.node("Add", [y, ins[2]], None if relu else [out])
    if relu:
        w.node("Relu", [y], [out])


@exporter("conv2d")
def _conv2d(w, op, ins, out):
    if op.operands[0].type.dtype.is_integer:  # ONNX's Conv is float-only; ConvInteger takes u8/i8 with zero points
        raise LowbitError(f"{op.describe()}: an integer conv2d (imported ConvInteger: i32 of the zero-point-centred "
                          "inputs) has no exact ONNX export (Conv is float-only)")
    a = op.attrs
    w.node("Conv", ins, [out], kernel_shape=list(op.operands[1].type.shape[2:]), strides=list(a["strides"]),
           pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["groups"])


@exporter("conv_transpose2d")
def _conv_transpose2d(w, op, ins, out):
    a = op.attrs
    w.node("ConvTranspose", ins, [out], kernel_shape=list(op.operands[1].type.shape[2:]),
           strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
           group=a["groups"], output_padding=list(a["output_padding"]))


@exporter("gemm")
def _gemm(w, op, ins, out):
    a = op.attrs
    w.node("Gemm", ins, [out], alpha=a["alpha"], beta=a["beta"], transA=int(a["trans_a"]), transB=int(a["trans_b"]))


@exporter("max_pool2d")
def _max_pool2d(w, op, ins, out):
    a = op.attrs
    w.node("MaxPool", ins, [out], kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
           pads=list(a["pads"]), dilations=list(a["dilations"]), ceil_mode=int(a["ceil_mode"]))


@exporter("avg_pool2d")
def _avg_pool2d(w, op, ins, out):
    a = op.attrs
    w.node("AveragePool", ins, [out], kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
           pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))


@exporter("reshape", "expand")
def _with_shape(w, op, ins, out):
    w.node(op.opname.capitalize(), [ins[0], _ints(w, op.attrs["shape"], "shape")], [out])


@exporter("transpose")
def _transpose(w, op, ins, out):
    w.node("Transpose", ins, [out], perm=list(op.attrs["perm"]))


@exporter("slice")
def _slice(w, op, ins, out):
    bounds = [_ints(w, op.attrs[k], k) for k in ("starts", "ends", "axes", "steps")]
    w.node("Slice", [ins[0]] + bounds, [out])


@exporter("gather", "concat", "softmax", "log_softmax", "gather_elements")
def _with_axis(w, op, ins, out):
    onnx_name = {"log_softmax": "LogSoftmax", "gather_elements": "GatherElements"}.get(op.opname)
    w.node(onnx_name or op.opname.capitalize(), ins, [out], axis=op.attrs["axis"])


@exporter("split")
def _split(w, op, ins, out):
    w.node("Split", [ins[0], _ints(w, op.attrs["sizes"], "split")], [w.name(r) for r in op.results],
           axis=op.attrs["axis"])


@exporter("tile")
def _tile(w, op, ins, out):
    w.node("Tile", [ins[0], _ints(w, op.attrs["repeats"], "repeats")], [out])


@exporter("pad")
def _pad(w, op, ins, out):
    a = op.attrs
    value = [w.init(np.asarray(a["value"]).astype(op.result.type.dtype.np_dtype), "value")] \
        if a["mode"] == "constant" else []
    w.node("Pad", [ins[0], _ints(w, a["pads"], "pads")] + value, [out], mode=a["mode"])


@exporter("dropout")
def _dropout(w, op, ins, out):  # inference mode (no training_mode input): the identity
    w.node("Dropout", [ins[0], w.init(np.float32(op.attrs["ratio"]), "ratio")], [out])


@exporter("layer_norm")
def _layer_norm(w, op, ins, out):
    w.node("LayerNormalization", ins, [out], axis=op.attrs["axis"], epsilon=op.attrs["epsilon"])


@exporter("gelu")
def _gelu(w, op, ins, out):
    w.node("Gelu", ins, [out], approximate=op.attrs["approximate"])


@exporter("cast")
def _cast(w, op, ins, out):
    w.node("Cast", ins, [out], to=_elem(op.attrs["to"]))


@exporter("hard_sigmoid")
def _hard_sigmoid(w, op, ins, out):
    w.node("HardSigmoid", ins, [out], alpha=op.attrs["alpha"], beta=op.attrs["beta"])


@exporter("leaky_relu", "elu")
def _alpha_unary(w, op, ins, out):
    w.node({"leaky_relu": "LeakyRelu", "elu": "Elu"}[op.opname], ins, [out], alpha=op.attrs["alpha"])


@exporter("reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod")
def _reduce(w, op, ins, out):  # no axes input: over every axis
    a = op.attrs
    args = ins + ([_ints(w, a["axes"], "axes")] if a["axes"] else [])
    w.node("Reduce" + op.opname[len("reduce_"):].capitalize(), args, [out], keepdims=int(a["keepdims"]))


@exporter("arg_max")
def _arg_max(w, op, ins, out):
    a = op.attrs
    w.node("ArgMax", ins, [out], axis=a["axis"], keepdims=int(a["keepdims"]),
           select_last_index=int(a["select_last_index"]))


@exporter("batch_norm")
def _batch_norm(w, op, ins, out):  # inference form: x, scale, bias, mean, var
    w.node("BatchNormalization", ins, [out], epsilon=op.attrs["epsilon"])


@exporter("clip")
def _clip(w, op, ins, out):
    d = op.operands[0].type.dtype  # ONNX Clip's bounds have the input's type; infinite ones saturate integers
    bounds = []
    for k in ("min", "max"):
        v = op.attrs[k]
        if not d.is_float and math.isinf(v):
            v = d.iinfo()[v > 0]
        bounds.append(w.init(np.asarray(v).astype(d.np_dtype), k))
    w.node("Clip", [ins[0], *bounds], [out])


@exporter("lrn")
def _lrn(w, op, ins, out):
    a = op.attrs
    w.node("LRN", ins, [out], size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])


@exporter("resize")
def _resize(w, op, ins, out):
    a = op.attrs
    scales = w.init(np.asarray(a["scales"], np.float32), "scales") if a.get("scales") else ""
    sizes = [_ints(w, a["sizes"], "sizes")] if a.get("sizes") and not scales else []
    w.node("Resize", [ins[0], "", scales] + sizes, [out], mode=a["mode"],
           coordinate_transformation_mode=a["coordinate_transformation_mode"], nearest_mode=a["nearest_mode"])


# -- math ops (issue 14) --
_MATH_SAME = {"sinh": "Sinh", "cosh": "Cosh", "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan",
              "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "is_nan": "IsNaN"}


@exporter(*_MATH_SAME)
def _math_same(w, op, ins, out):
    w.node(_MATH_SAME[op.opname], ins, [out])


@exporter("mod")
def _mod(w, op, ins, out):
    w.node("Mod", ins, [out], fmod=int(op.attrs["fmod"]))


@exporter("bit_shift")
def _bit_shift(w, op, ins, out):
    w.node("BitShift", ins, [out], direction=op.attrs["direction"].upper())


@exporter("cumsum")
def _cumsum(w, op, ins, out):
    a = op.attrs
    w.node("CumSum", [ins[0], w.init(np.int64(a["axis"]), "axis")], [out], exclusive=int(a["exclusive"]),
           reverse=int(a["reverse"]))


# -- tensor ops (issue 14) --
@exporter("topk")
def _topk(w, op, ins, out):
    a = op.attrs
    w.node("TopK", [ins[0], _ints(w, [a["k"]], "k")], [out, w.name(op.results[1])], axis=a["axis"],
           largest=int(a["largest"]), sorted=1)


@exporter("gather_nd")
def _gather_nd(w, op, ins, out):
    w.node("GatherND", ins, [out], batch_dims=op.attrs["batch_dims"])


@exporter("scatter_nd", "scatter_elements")
def _scatter(w, op, ins, out):
    axis = {"axis": op.attrs["axis"]} if op.opname == "scatter_elements" else {}
    w.node("ScatterND" if op.opname == "scatter_nd" else "ScatterElements", ins, [out],
           reduction=op.attrs["reduction"], **axis)


@exporter("max_pool2d_indices")
def _max_pool2d_indices(w, op, ins, out):  # MaxPool's second output; its values are not used
    a = op.attrs
    w.node("MaxPool", ins, [w.fresh("max_pool_values"), out], kernel_shape=list(a["kernel"]),
           strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
           ceil_mode=int(a["ceil_mode"]), storage_order=a["storage_order"])


def to_onnx_qdq(graph: Graph):
    """The graph as an ``onnx.ModelProto`` (opset 20, QDQ form); an op it does not write exactly is refused by
    name, with the reason."""
    import onnx
    from onnx import helper

    w = _Writer()
    for v in graph.inputs:
        w.names[id(v)] = v.name
    for op in graph.ops:
        name = op.opname
        if name not in EXPORTERS:
            why = f": {REFUSED[name]}" if name in REFUSED else ""
            raise LowbitError(f"{op.describe()}: no ONNX export for op '{name}'{why}")
        EXPORTERS[name](w, op, [w.name(v) for v in op.operands], w.name(op.results[0]))
    inputs = [helper.make_tensor_value_info(v.name, _elem(v.type.dtype), list(v.type.shape)) for v in graph.inputs]
    outputs = []
    for nm, v in zip(graph.output_names, graph.outputs):  # outputs keep the model's names
        w.node("Identity", [w.name(v)], [nm])
        outputs.append(helper.make_tensor_value_info(nm, _elem(v.type.dtype), list(v.type.shape)))
    g = helper.make_graph(w.nodes, graph.name or "lowbit", inputs, outputs, w.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]
                              + [helper.make_opsetid(d, 1) for d in sorted(w.domains)], producer_name="lowbit")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
