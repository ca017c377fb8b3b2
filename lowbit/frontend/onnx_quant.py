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
