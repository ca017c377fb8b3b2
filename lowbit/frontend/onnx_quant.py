"""ONNX converters for quantization: QuantizeLinear and DequantizeLinear (per-tensor and per-axis)."""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.types import QuantParams, TensorType
from .onnx_ctx import Ctx, NodeError, converter, norm_axis, onnx_dtype


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
    axis = norm_axis(axis_attr, len(x_shape))
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


@converter("com.microsoft.DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(c: Ctx):
    """x quantized at run time to u8 (onnxruntime's DynamicQuantizeLinear, one scale per tensor) times a constant
    i8 weight with zero point 0: ``qmatmul_dynamic`` without per-row scales; a bias input stays a float add."""
    c.attrs()
    x = c.need(0, "A")
    w = np.asarray(c.const(1, "B"))
    scale = np.asarray(c.const(2, "b_scale")).astype(np.float32)
    zp = c.const(3, "b_zero_point")
    if x.type.dtype != dt.f32:
        raise NodeError(f"input A of {x.type.dtype.name} is not supported (f32 is)")
    if w.dtype != np.int8 or w.ndim != 2:
        raise NodeError(f"weight B must be a 2-D int8 constant, got {w.dtype} {list(w.shape)} (lowbit's integer "
                        "matmul needs i8 weights with zero point 0)")
    if zp is not None and np.any(np.asarray(zp) != 0):
        raise NodeError("a weight zero point other than 0 is not supported (lowbit's integer matmul needs i8 "
                        "weights with zero point 0)")
    n = w.shape[1]
    if scale.size == 1:
        q = QuantParams((float(scale.reshape(-1)[0]),), (0,))
    elif scale.shape in ((n,), (1, n)):
        q = QuantParams(tuple(float(v) for v in scale.reshape(-1)), (0,) * n, 1)
    else:
        raise NodeError(f"b_scale of shape {list(scale.shape)} is not per tensor or per column of B {list(w.shape)}")
    wv = c.const_value(w, type=TensorType(w.shape, dt.i8, q))
    y = c.op("qmatmul_dynamic", [x, wv], {"per_row": False})
    b = c.inp(4)
    return y if b is None else c.op("add", [y, b])
