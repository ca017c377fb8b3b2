"""ONNX converters for neural-network ops: reductions, ArgMax, Softmax/LogSoftmax, Layer/Batch
normalisation and LRN; MatMul and Gemm; Conv, ConvTranspose and pooling (1-D forms as the 2-D ops over a
unit height, 3-D forms composed of them in ``onnx_nn3d``).
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Value
from . import onnx_nn3d as nn3d
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
    x = c.need(0, "X")
    ax = norm_axis(a["axis"], x.type.rank)
    ops = [x, c.need(1, "Scale")] + ([c.inp(2)] if c.inp(2) is not None else [])
    y = c.op("layer_norm", ops, {"axis": ax, "epsilon": a["epsilon"]})
    if not any(o for o in c.node.output[1:]):
        return y
    if a["stash_type"] != 1 or x.type.dtype != dt.f32:
        raise NodeError(f"the Mean and InvStdDev outputs need an f32 input and stash_type 1, got "
                        f"{x.type.dtype.name} and {a['stash_type']}")
    # Mean and InvStdDev as layer_norm's reference computes them: mean, then the mean of squared deviations
    axes = tuple(range(ax, x.type.rank))
    mean = c.op("reduce_mean", [x], {"axes": axes, "keepdims": True})
    d = c.op("sub", [x, mean])
    var = c.op("reduce_mean", [c.op("mul", [d, d])], {"axes": axes, "keepdims": True})
    eps = c.const_value(np.float32(a["epsilon"]))
    return [y, mean, c.op("reciprocal", [c.op("sqrt", [c.op("add", [var, eps])])])]


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
    nd = len(in_hw)
    if auto in ("NOTSET", ""):
        pads = a["pads"] if a["pads"] is not None else [0] * 2 * nd
        if len(pads) != 2 * nd:
            raise NodeError(f"pads {pads} should have {2 * nd} values")
        return tuple(pads)
    if auto == "VALID":
        return (0,) * 2 * nd
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


def _spatial_rank(x: Value) -> int:
    """1, 2 or 3: the number of spatial dimensions; 1-D ops run as the 2-D ops over a unit height, 3-D ones as
    compositions of them (``onnx_nn3d``)."""
    if x.type.rank not in (3, 4, 5):
        raise NodeError(f"only 1-D, 2-D and 3-D spatial inputs (NCW, NCHW, NCDHW) are supported, got shape "
                        f"{x.type.shape}")
    return x.type.rank - 2


def _unit_height(c: Ctx, x: Value) -> Value:
    """[N, C, W] as [N, C, 1, W]."""
    s = x.type.shape
    return reshape_to(c, x, s[:2] + (1,) + s[2:])


def _geometry(a, nd: int, keys=("strides", "dilations")) -> dict:
    """The 2-D form of per-spatial-axis attributes: a 1-D value v becomes (1, v); absent ones default to 1."""
    out = {}
    for k in keys:
        v = tuple(a[k]) if a.get(k) is not None else (1,) * nd
        if len(v) != nd:
            raise NodeError(f"{k} {list(v)} should have {nd} value{'s' if nd > 1 else ''}")
        out[k] = (1,) + v if nd == 1 else v
    return out


def _pads_2d(pads, nd: int):
    return (0, pads[0], 0, pads[1]) if nd == 1 else tuple(pads)


def _squeeze_height(c: Ctx, y: Value, nd: int) -> Value:
    if nd == 2:
        return y
    s = y.type.shape
    return reshape_to(c, y, s[:2] + s[3:])


@converter("Conv")
def _conv(c: Ctx):
    a = c.attrs(kernel_shape=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET")
    return convolution(c, c.need(0, "X"), c.need(1, "W"), c.inp(2), a)


def convolution(c: Ctx, x: Value, w: Value, b: Value | None, a: dict) -> Value:
    """ONNX Conv of ``x`` by ``w`` (+ ``b``) with Conv's attributes ``a`` (kernel_shape, strides, pads, dilations,
    group, auto_pad), 1-D, 2-D or 3-D, in the operands' dtype (ConvInteger calls it with i32 operands)."""
    nd = _spatial_rank(x)
    if w.type.rank != nd + 2:
        raise NodeError(f"weight shape {w.type.shape} does not match a {nd}-D convolution")
    if a["kernel_shape"] is not None and tuple(a["kernel_shape"]) != w.type.shape[2:]:
        raise NodeError(f"kernel_shape {list(a['kernel_shape'])} differs from the weight's {list(w.type.shape[2:])}")
    g = _geometry(a, nd)
    pads = _spatial_pads(c, a, x.type.shape[2:], w.type.shape[2:], g["strides"][-nd:], g["dilations"][-nd:])
    if nd == 3:
        return nn3d.conv3d(c, x, w, b, g["strides"], pads, g["dilations"], a["group"])
    if nd == 1:
        x, w = _unit_height(c, x), _unit_height(c, w)
    ops = [x, w] + ([b] if b is not None else [])
    y = c.op("conv2d", ops, {"strides": g["strides"], "pads": _pads_2d(pads, nd), "dilations": g["dilations"],
                             "groups": a["group"]})
    return _squeeze_height(c, y, nd)


def _transpose_pads(a, nd: int, in_sizes, kernel, strides, dilations, out_pad) -> tuple:
    """ConvTranspose's (pads, output_padding): explicit, or made for ``output_shape`` / ``auto_pad`` SAME (an
    output of input x stride) from the total padding ``full - wanted`` (full = stride * (in - 1) + output_padding
    + (k - 1) * dilation + 1): SAME_UPPER puts the odd one at the end, anything else at the beginning, as the spec
    and onnxruntime do."""
    auto = a["auto_pad"] or "NOTSET"
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise NodeError(f"auto_pad '{auto}' is not supported")
    full = [s * (i - 1) + op + (k - 1) * d + 1 for i, s, op, k, d in zip(in_sizes, strides, out_pad, kernel, dilations)]
    if a["output_shape"] is not None:
        if a["pads"] is not None:
            raise NodeError("attribute 'output_shape' together with 'pads' is not supported")
        want = list(a["output_shape"])
        want = want[2:] if len(want) == nd + 2 else want
        if len(want) != nd:
            raise NodeError(f"output_shape {list(a['output_shape'])} should have {nd} values")
        what = f"output_shape {want}"
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        want = [i * s for i, s in zip(in_sizes, strides)]
        what = f"auto_pad '{auto}' (an output of input x stride, {want})"
    elif auto == "VALID":
        return (0,) * 2 * nd, out_pad
    else:
        pads = tuple(a["pads"]) if a["pads"] is not None else (0,) * 2 * nd
        if len(pads) != 2 * nd:
            raise NodeError(f"pads {list(pads)} should have {2 * nd} values")
        return pads, out_pad
    total = [f - o for f, o in zip(full, want)]
    # a wanted size past the full one: onnxruntime pads nothing and appends the rows (zeros plus bias) at the end,
    # as more output_padding, up to stride - 1 of it in all
    for t, op, s in zip(total, out_pad, strides):
        if t < 0 and a["output_shape"] is None:  # onnxruntime then gives the full size, the spec asks for more
            raise NodeError(f"{what} is more than the full transposed convolution {full}, which is not supported")
        if t < 0 and op - t >= s:
            raise NodeError(f"{what} is {-t} past the full transposed convolution {full}: with "
                            f"output_padding {op}, more than stride - 1 = {s - 1} rows at the end")
    begin = [max(t, 0) // 2 if auto == "SAME_UPPER" else max(t, 0) - max(t, 0) // 2 for t in total]
    pads = tuple(begin) + tuple(max(t, 0) - b for t, b in zip(total, begin))
    return pads, tuple(op - min(t, 0) for t, op in zip(total, out_pad))


@converter("ConvTranspose")
def _conv_transpose(c: Ctx):
    a = c.attrs(kernel_shape=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET",
                output_padding=None, output_shape=None)
    x, w = c.need(0, "X"), c.need(1, "W")
    nd = _spatial_rank(x)
    if w.type.rank != nd + 2:
        raise NodeError(f"weight shape {w.type.shape} does not match a {nd}-D transposed convolution")
    g = _geometry(a, nd)
    out_pad = tuple(a["output_padding"]) if a["output_padding"] is not None else (0,) * nd
    if len(out_pad) != nd:
        raise NodeError(f"output_padding {list(out_pad)} should have {nd} value{'s' if nd > 1 else ''}")
    pads, out_pad = _transpose_pads(a, nd, x.type.shape[2:], w.type.shape[2:], g["strides"][-nd:],
                                    g["dilations"][-nd:], out_pad)
    if nd == 3:
        return nn3d.conv_transpose3d(c, x, w, c.inp(2), g["strides"], pads, g["dilations"], a["group"], out_pad)
    if nd == 1:
        x, w, out_pad = _unit_height(c, x), _unit_height(c, w), (0,) + out_pad
    ops = [x, w] + ([c.inp(2)] if c.inp(2) is not None else [])
    y = c.op("conv_transpose2d", ops, {
        "strides": g["strides"], "pads": _pads_2d(pads, nd), "dilations": g["dilations"], "groups": a["group"],
        "output_padding": out_pad})
    return _squeeze_height(c, y, nd)


@converter("MaxPool", "AveragePool")
def _pool(c: Ctx):
    is_max = c.node.op_type == "MaxPool"
    extra = {"dilations": None, "storage_order": 0} if is_max else {"count_include_pad": 0, "dilations": None}
    a = c.attrs(kernel_shape=None, strides=None, pads=None, ceil_mode=0, auto_pad="NOTSET", **extra)
    x = c.need(0, "X")
    nd = _spatial_rank(x)
    if a["kernel_shape"] is None or len(a["kernel_shape"]) != nd:
        raise NodeError(f"kernel_shape {a['kernel_shape']} should have {nd} value{'s' if nd > 1 else ''}")
    g = _geometry(a, nd)
    k = a["kernel_shape"]
    pads = _spatial_pads(c, a, x.type.shape[2:], k, g["strides"][-nd:], g["dilations"][-nd:])
    if not is_max and (nd == 3 or any(d != 1 for d in g["dilations"])):
        return _avg_pool_3d(c, x, nd, k, g["strides"][-nd:], pads, g["dilations"][-nd:], a)
    if nd == 3:
        if len(c.node.output) > 1 and c.node.output[1]:
            raise NodeError("the Indices output of a 3-D MaxPool is not supported")
        return nn3d.max_pool3d(c, x, k, g["strides"], pads, g["dilations"], bool(a["ceil_mode"]))
    x4 = _unit_height(c, x) if nd == 1 else x
    attrs = {"kernel": (1,) * (2 - nd) + tuple(k), "strides": g["strides"], "pads": _pads_2d(pads, nd),
             "ceil_mode": bool(a["ceil_mode"])}
    if not is_max:
        attrs["count_include_pad"] = bool(a["count_include_pad"])
        return _squeeze_height(c, c.op("avg_pool2d", [x4], attrs), nd)
    attrs["dilations"] = g["dilations"]
    y = _squeeze_height(c, c.op("max_pool2d", [x4], attrs), nd)
    if len(c.node.output) < 2 or not c.node.output[1]:
        return y
    idx = c.op("max_pool2d_indices", [x4], dict(attrs, storage_order=a["storage_order"]))
    return [y, _squeeze_height(c, idx, nd)]


def _avg_pool_3d(c: Ctx, x: Value, nd: int, k, strides, pads, dilations, a) -> Value:
    """A 3-D AveragePool, or a dilated 1-D / 2-D one (which avg_pool2d has no attribute for) as the 3-D
    composition over unit leading spatial dimensions."""
    lift = 3 - nd
    s = x.type.shape
    x5 = reshape_to(c, x, s[:2] + (1,) * lift + s[2:]) if lift else x
    pads5 = (0,) * lift + tuple(pads[:nd]) + (0,) * lift + tuple(pads[nd:])
    y = nn3d.avg_pool3d(c, x5, (1,) * lift + tuple(k), (1,) * lift + tuple(strides), pads5,
                        (1,) * lift + tuple(dilations), bool(a["ceil_mode"]), bool(a["count_include_pad"]))
    return reshape_to(c, y, y.type.shape[:2] + y.type.shape[2 + lift:]) if lift else y


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Ctx):
    c.attrs()
    return c.op("global_avg_pool" if c.node.op_type == "GlobalAveragePool" else "global_max_pool", [c.need(0, "X")])
