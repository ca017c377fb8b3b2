"""lower-qdq: run quantized convolutions and matmuls as integer ops instead of float simulation.

A QDQ graph (what onnxruntime's ``quantize_static`` writes, and what lowbit's ``quantize`` pass produces)
computes ``quantize(conv2d(dequantize(xq), dequantize(wq), bias))`` in float. This pass rewrites

    quantize(conv2d(dequantize(xq), dequantize(wq) [, bias]))          -> qconv2d(xq, wq [, bias_i32])
    quantize(relu(conv2d(...)))                                         -> qconv2d(...) {activation = "relu"}
    quantize(matmul | gemm(dequantize(xq), dequantize(wq) [, bias]))    -> qmatmul(xq, wq' [, bias_i32])
    quantize(max_pool2d(dequantize(xq))), same parameters in and out    -> max_pool2d(xq)

where ``xq`` is a per-tensor u8/i8 value, ``wq`` a constant i8 weight with zero point 0 (per tensor or per
output channel), and the bias is either ``dequantize`` of an i32 constant whose scale is ``sx * sw`` (as
onnxruntime writes it; used as is) or a float constant (rounded to i32 in units of ``sx * sw``). The integer
ops accumulate exactly in i32 and requantize once with an f32 multiplier (see the ops' docs), which is how
integer runtimes execute QDQ graphs: results may differ from the float simulation by one quantization step
where the float computation rounds differently. A gemm must have alpha = beta = 1 and no transposed A.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Graph
from ..ir.types import QuantParams, TensorType
from ..quant import scheme
from .base import Pass, PassContext, register_pass
from .rewriter import Any, Pat, Rule, apply_rules


def _dq_const(v):
    """The quantized constant under ``dequantize(const)``, else None."""
    p = v.producer
    if p is None or p.opname != "dequantize" or not p.operands[0].is_const:
        return None
    return p.operands[0]


def _dq_input(v):
    p = v.producer
    return p.operands[0] if p is not None and p.opname == "dequantize" else None


def _weight_ok(wq, out_axis: int) -> str | None:
    if wq is None:
        return "the weight is not dequantize(constant)"
    q = wq.type.quant
    if wq.type.dtype != dt.i8 or q.group is not None or any(z != 0 for z in q.zero_point):
        return f"the weight is {wq.type}, not i8 with zero point 0"
    if q.axis is not None and q.axis != out_axis % wq.type.rank:
        return f"the weight is quantized along axis {q.axis}, not its output-channel axis"
    return None


def _bias_i32(bias, xq, wq, n_out: int):
    """The bias as i32 in units of sx * sw (per output channel), or a reason it cannot be."""
    sw = wq.type.quant.scale_array()
    unit = scheme.bias_unit(xq.type.quant.scale[0], sw, n_out)
    bq = _dq_const(bias)
    if bq is not None:
        q = bq.type.quant
        if bq.type.dtype != dt.i32 or any(z != 0 for z in q.zero_point):
            return None, f"the bias is {bq.type}, not i32 with zero point 0"
        scale = q.scale_array().astype(np.float64) * np.ones(n_out)
        if not np.allclose(scale, unit, rtol=1e-5, atol=0):
            return None, "the bias scale is not input scale x weight scale"
        return bq.const_value.astype(np.int32).reshape(n_out), None
    if bias.is_const and bias.type.dtype == dt.f32:
        b = scheme.bias_to_i32(bias.const_value, xq.type.quant.scale[0], sw, n_out)
        if b is None:
            return None, "the float bias does not fit i32 in units of input scale x weight scale"
        return b, None
    return None, "the bias is neither dequantize(i32 constant) nor a float constant"


def _unwrap(root):
    """(compute op, activation) under the quantize root: relu is folded into the integer op, and so is a
    Clip(0, hi) (ReLU6) whose upper bound the result's saturation already enforces: the largest representable
    value, (qmax - zp) * scale, rounds to at most hi."""
    y = root.operands[0].producer
    if y is not None and y.opname == "relu":
        return y.operands[0].producer, "relu"
    if y is not None and y.opname == "clip" and y.attrs["min"] == 0.0:
        if scheme.relu_folds_into_saturation(root.result.type, y.attrs["max"]):
            return y.operands[0].producer, "relu"
    return y, "none"


def _input_ok(xq) -> str | None:
    if xq is None:
        return "the input is not dequantize(...)"
    t = xq.type
    if t.dtype not in (dt.u8, dt.i8) or t.quant.axis is not None:
        return f"the input is {t}, not a per-tensor u8/i8 tensor"
    return None


def _result_ok(root) -> str | None:
    r = root.result.type
    if r.dtype not in (dt.u8, dt.i8) or r.quant.axis is not None:
        return f"the result is {r}, not a per-tensor u8/i8 tensor"
    return None


def _check_conv(root, m):
    conv, _ = _unwrap(root)
    if conv is None or conv.opname != "conv2d":
        return "not quantize(conv2d) or quantize(relu(conv2d))"
    xq, wq = _dq_input(conv.operands[0]), _dq_const(conv.operands[1])
    reason = _input_ok(xq) or _weight_ok(wq, 0) or _result_ok(root)
    if reason:
        return reason
    if len(conv.operands) > 2:
        _, reason = _bias_i32(conv.operands[2], xq, wq, conv.result.type.shape[1])
    return reason


def _rewrite_conv(g: Graph, root, m):
    conv, act = _unwrap(root)
    xq, wq = _dq_input(conv.operands[0]), _dq_const(conv.operands[1])
    ops = [xq, wq]
    if len(conv.operands) > 2:
        b, _ = _bias_i32(conv.operands[2], xq, wq, conv.result.type.shape[1])
        ops.append(g.const(b, loc=conv.loc, before=root))
    attrs = dict(conv.attrs, activation=act)
    return [g.create("qconv2d", ops, attrs, [root.result.type], loc=conv.loc, before=root).result]


def _matmul_parts(root):
    """(op, xq, weight as [K, N] i8 constant value + quant, float bias value or None) or a reason."""
    mm, act = _unwrap(root)
    if mm is None or mm.opname not in ("matmul", "gemm"):
        return None, "not quantize(matmul | gemm)"
    if mm.opname == "gemm":
        a = mm.attrs
        if a["trans_a"] or a["alpha"] != 1.0 or (len(mm.operands) > 2 and a["beta"] != 1.0):
            return None, "gemm with transposed A, alpha or beta other than 1"
    xq, wq = _dq_input(mm.operands[0]), _dq_const(mm.operands[1])
    trans = mm.opname == "gemm" and mm.attrs["trans_b"]
    reason = _input_ok(xq) or _weight_ok(wq, 0 if trans else 1) or _result_ok(root)
    if reason:
        return None, reason
    if wq.type.rank != 2:
        return None, "the weight is not 2-D"
    bias = mm.operands[2] if len(mm.operands) > 2 else None
    n = mm.result.type.shape[-1]
    if bias is not None and bias.type.size != n:
        return None, "the bias is not one value per output column"
    return (mm, act, xq, wq, trans, bias), None


def _check_matmul(root, m):
    parts, reason = _matmul_parts(root)
    if reason:
        return reason
    mm, _, xq, wq, _, bias = parts
    if bias is not None:
        _, reason = _bias_i32(bias, xq, wq, mm.result.type.shape[-1])
    return reason


def _rewrite_matmul(g: Graph, root, m):
    (mm, act, xq, wq, trans, bias), _ = _matmul_parts(root)
    w = wq.const_value
    q = wq.type.quant
    if trans:  # [N, K] per-channel on axis 0 -> [K, N] on axis 1
        w = np.ascontiguousarray(w.T)
        q = QuantParams(q.scale, q.zero_point, None if q.axis is None else 1)
    wv = g.const(w, loc=mm.loc, before=root, type=TensorType(w.shape, dt.i8, q))
    ops = [xq, wv]
    if bias is not None:
        b, _ = _bias_i32(bias, xq, wq, mm.result.type.shape[-1])
        ops.append(g.const(b, loc=mm.loc, before=root))
    return [g.create("qmatmul", ops, {"activation": act}, [root.result.type], loc=mm.loc, before=root).result]


def _check_pool(root, m):
    pool = root.operands[0].producer
    if pool is None or pool.opname != "max_pool2d":
        return "not quantize(max_pool2d)"
    xq = _dq_input(pool.operands[0])
    reason = _input_ok(xq) or _result_ok(root)
    if reason:
        return reason
    if xq.type.dtype != root.result.type.dtype or xq.type.quant != root.result.type.quant:
        return "the pool's input and output are quantized differently"
    return None


def _rewrite_pool(g: Graph, root, m):
    """quantize(max_pool2d(dequantize(xq))) with the same parameters -> max_pool2d(xq): a max commutes with a
    positive scale, and an all-padding window is the lowest value either way."""
    pool = root.operands[0].producer
    xq = _dq_input(pool.operands[0])
    return [g.create("max_pool2d", [xq], dict(pool.attrs), [root.result.type], loc=pool.loc, before=root).result]


RULES = [
    Rule("max_pool2d", Pat("quantize", Any()), _rewrite_pool, _check_pool),
    Rule("qconv2d", Pat("quantize", Any()), _rewrite_conv, _check_conv),
    Rule("qmatmul", Pat("quantize", Any()), _rewrite_matmul, _check_matmul),
]


@register_pass
@dataclass(frozen=True)
class LowerQDQ(Pass):
    name = "lower-qdq"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        apply_rules(graph, RULES, ctx)
