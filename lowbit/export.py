"""Export a lowbit graph as an ONNX model in QDQ form, so that onnxruntime (or any ONNX tool) can load and
cross-check what lowbit quantized.

Integer ops are written the way onnxruntime's own quantizer writes them, which onnxruntime then fuses back
into integer kernels:

    qconv2d(xq, wq, b)          -> DequantizeLinear(xq), DequantizeLinear(wq), DequantizeLinear(b as i32 in
                                   units of sx * sw) -> Conv [-> Relu] -> QuantizeLinear(sy, zy)
    qmatmul(xq, wq, b)          -> the same around MatMul + Add
    qmatmul_dynamic (per tensor) -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(sx * sw) [-> Add(b)]
    quantize / dequantize       -> QuantizeLinear / DequantizeLinear (per tensor or per axis)

Float ops map to their ONNX namesakes (opset 20). An op without an ONNX form — e.g. ``qmatmul_dynamic`` with
``per_row`` (ONNX's DynamicQuantizeLinear has one scale per tensor) — is refused with its name; nothing is
approximated.
"""
from __future__ import annotations

import numpy as np

from .errors import LowbitError
from .ir import dtypes as dt
from .ir.graph import Graph

OPSET = 20

_SAME = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "relu": "Relu", "sigmoid": "Sigmoid",
         "tanh": "Tanh", "equal": "Equal", "where": "Where", "matmul": "MatMul", "hard_swish": "HardSwish",
         "global_avg_pool": "GlobalAveragePool", "global_max_pool": "GlobalMaxPool", "exp": "Exp", "sqrt": "Sqrt",
         "neg": "Neg", "abs": "Abs", "max": "Max", "min": "Min", "pow": "Pow", "erf": "Erf", "log": "Log",
         "identity": "Identity", "reciprocal": "Reciprocal", "floor": "Floor", "ceil": "Ceil", "round": "Round",
         "sign": "Sign", "sin": "Sin", "cos": "Cos", "softplus": "Softplus", "prelu": "PRelu", "not": "Not",
         "and": "And", "or": "Or", "xor": "Xor", "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
         "greater_equal": "GreaterOrEqual"}


def _elem(d) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(d.np_dtype if d != dt.boolean else np.bool_))


class _Writer:
    def __init__(self):
        self.nodes, self.inits, self.names, self.n = [], [], {}, 0

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
        scale = self.init(np.asarray(q.scale, np.float32).reshape(shape), "scale")
        zp = self.init(np.asarray(q.zero_point, t.dtype.np_dtype).reshape(shape), "zero_point")
        return scale, zp, axis

    def dequantize(self, v, vname=None, out=None) -> str:
        s, z, axis = self.qparams(v.type)
        return self.node("DequantizeLinear", [vname or self.name(v), s, z], [out] if out else None, **axis)

    def quantize(self, x: str, t, out: str) -> str:
        s, z, axis = self.qparams(t)
        return self.node("QuantizeLinear", [x, s, z], [out], **axis)

    def bias(self, b, xq, wq, n: int) -> str:
        """The i32 bias constant dequantized with scale sx * sw (per output channel)."""
        sx = np.float32(xq.type.quant.scale[0])
        sw = np.broadcast_to(wq.type.quant.scale_array().astype(np.float32), (n,))
        bq = self.name(b)
        s = self.init((sx * sw).astype(np.float32), "bias_scale")
        z = self.init(np.zeros(n, np.int32), "bias_zero_point")
        return self.node("DequantizeLinear", [bq, s, z], axis=0)


def to_onnx_qdq(graph: Graph):
    """The graph as an ``onnx.ModelProto`` (opset 20, QDQ form); refuses ops with no exact ONNX form."""
    import onnx
    from onnx import helper

    w = _Writer()
    for v in graph.inputs:
        w.names[id(v)] = v.name
    for op in graph.ops:
        name = op.opname
        a = op.attrs
        ins = [w.name(v) for v in op.operands]
        out = w.name(op.results[0])
        if name == "const":
            v = op.attrs["value"]
            w.inits.append(onnx.numpy_helper.from_array(np.asarray(v).astype(op.result.type.dtype.np_dtype), out))
        elif name in _SAME:
            w.node(_SAME[name], ins, [out])
        elif name == "quantize":
            w.quantize(ins[0], op.result.type, out)
        elif name == "dequantize":
            w.dequantize(op.operands[0], ins[0], out)
        elif name in ("qconv2d", "qmatmul"):
            xq, wq = op.operands[0], op.operands[1]
            n = op.result.type.shape[1] if name == "qconv2d" else op.result.type.shape[-1]
            xf, wf = w.dequantize(xq, ins[0]), w.dequantize(wq, ins[1])
            if name == "qconv2d":
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
        elif name == "qmatmul_dynamic":
            if a["per_row"]:
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
        elif name == "conv2d":
            w.node("Conv", ins, [out], kernel_shape=list(op.operands[1].type.shape[2:]), strides=list(a["strides"]),
                   pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["groups"])
        elif name == "conv_transpose2d":
            w.node("ConvTranspose", ins, [out], kernel_shape=list(op.operands[1].type.shape[2:]),
                   strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
                   group=a["groups"], output_padding=list(a["output_padding"]))
        elif name == "gemm":
            w.node("Gemm", ins, [out], alpha=a["alpha"], beta=a["beta"], transA=int(a["trans_a"]),
                   transB=int(a["trans_b"]))
        elif name == "max_pool2d":
            w.node("MaxPool", ins, [out], kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
                   pads=list(a["pads"]), dilations=list(a["dilations"]), ceil_mode=int(a["ceil_mode"]))
        elif name == "avg_pool2d":
            w.node("AveragePool", ins, [out], kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
                   pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))
        elif name in ("reshape", "expand"):
            w.node(name.capitalize(), [ins[0], w.init(np.asarray(a["shape"], np.int64), "shape")], [out])
        elif name == "transpose":
            w.node("Transpose", ins, [out], perm=list(a["perm"]))
        elif name == "slice":
            bounds = [w.init(np.asarray(a[k], np.int64), k) for k in ("starts", "ends", "axes", "steps")]
            w.node("Slice", [ins[0]] + bounds, [out])
        elif name == "gather":
            w.node("Gather", ins, [out], axis=a["axis"])
        elif name == "concat":
            w.node("Concat", ins, [out], axis=a["axis"])
        elif name == "softmax":
            w.node("Softmax", ins, [out], axis=a["axis"])
        elif name == "layer_norm":
            w.node("LayerNormalization", ins, [out], axis=a["axis"], epsilon=a["epsilon"])
        elif name == "gelu":
            w.node("Gelu", ins, [out], approximate=a["approximate"])
        elif name == "cast":
            w.node("Cast", ins, [out], to=_elem(a["to"]))
        elif name == "hard_sigmoid":
            w.node("HardSigmoid", ins, [out], alpha=a["alpha"], beta=a["beta"])
        elif name == "reduce_mean":
            args = ins + ([w.init(np.asarray(a["axes"], np.int64), "axes")] if a["axes"] else [])
            w.node("ReduceMean", args, [out], keepdims=int(a["keepdims"]))
        elif name == "clip":
            lo, hi = (w.init(np.float32(a[k]), k) for k in ("min", "max"))
            w.node("Clip", [ins[0], lo, hi], [out])
        elif name == "lrn":
            w.node("LRN", ins, [out], size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])
        elif name == "resize":
            scales = w.init(np.asarray(a["scales"], np.float32), "scales") if a.get("scales") else ""
            sizes = [w.init(np.asarray(a["sizes"], np.int64), "sizes")] if a.get("sizes") and not scales else []
            w.node("Resize", [ins[0], "", scales] + sizes, [out], mode=a["mode"],
                   coordinate_transformation_mode=a["coordinate_transformation_mode"], nearest_mode=a["nearest_mode"])
        else:
            raise LowbitError(f"{op.describe()}: no ONNX export for op '{name}'")
    inputs = [helper.make_tensor_value_info(v.name, _elem(v.type.dtype), list(v.type.shape)) for v in graph.inputs]
    outputs = []
    for nm, v in zip(graph.output_names, graph.outputs):  # outputs keep the model's names
        w.node("Identity", [w.name(v)], [nm])
        outputs.append(helper.make_tensor_value_info(nm, _elem(v.type.dtype), list(v.type.shape)))
    g = helper.make_graph(w.nodes, graph.name or "lowbit", inputs, outputs, w.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lowbit")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
