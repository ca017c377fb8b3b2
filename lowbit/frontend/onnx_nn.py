"""ONNX converters for neural-network ops: reductions, ArgMax, Softmax/LogSoftmax, Layer/Batch
normalisation and LRN; MatMul and Gemm; Conv, ConvTranspose and pooling.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, ints, norm_axis, reshape_to


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
        axes = None if v is None or np.asarray(v).size == 0 else list(ints(v))
        if axes is None and a["noop_with_empty_axes"]:
            return c.op("identity", [x])
    axes = () if axes is None else tuple(sorted(norm_axis(ax, x.type.rank) for ax in axes))
    return c.op(_REDUCE[c.node.op_type], [x], {"axes": axes, "keepdims": bool(a["keepdims"])})


@converter("ArgMax")
def _argmax(c: Ctx):
    a = c.attrs(axis=0, keepdims=1, select_last_index=0)
    x = c.need(0, "data")
    return c.op("arg_max", [x], {"axis": norm_axis(a["axis"], x.type.rank), "keepdims": bool(a["keepdims"]),
                                 "select_last_index": bool(a["select_last_index"])})


@converter("Softmax", "LogSoftmax")
def _softmax(c: Ctx):
    x = c.need(0, "input")
    name = "softmax" if c.node.op_type == "Softmax" else "log_softmax"
    a = c.attrs(axis=1 if c.opset < 13 else -1)
    ax = norm_axis(a["axis"], x.type.rank)
    if c.opset >= 13 or ax == x.type.rank - 1:
        return c.op(name, [x], {"axis": ax})
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over all trailing dimensions.
    s = x.type.shape
    flat = reshape_to(c, x, (int(np.prod(s[:ax], dtype=np.int64)), int(np.prod(s[ax:], dtype=np.int64))))
    return reshape_to(c, c.op(name, [flat], {"axis": 1}), s)


@converter("LayerNormalization")
def _layer_norm(c: Ctx):
    a = c.attrs(axis=-1, epsilon=1e-5, stash_type=1)
    if any(o for o in c.node.output[1:]):
        raise NodeError("the Mean and InvStdDev outputs are not supported")
    x = c.need(0, "X")
    ops = [x, c.need(1, "Scale")] + ([c.inp(2)] if c.inp(2) is not None else [])
    return c.op("layer_norm", ops, {"axis": norm_axis(a["axis"], x.type.rank), "epsilon": a["epsilon"]})


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
