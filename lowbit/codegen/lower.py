"""IR → Relax: one lowering rule per IR op, in one table.

Rules use Relax's own ops where their semantics are exactly the IR's, and TE (``bb.emit_te``) where they are
not (round-half-to-even, truncating integer division, ONNX slice/gather/pad/resize index maths, quantize).
``tests/test_codegen.py`` checks every registered op against the reference interpreter.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from ..ir.graph import Graph, Op
from ..ir.registry import slice_dim

RULES: dict[str, Callable] = {}
SUPPORTED_DTYPES = {dt.f32, dt.f16, dt.bf16, dt.f64, dt.i64, dt.i32, dt.i16, dt.i8, dt.u8, dt.boolean}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


class Lowerer:
    def __init__(self, bb, amx: bool = False):
        from tvm import relax, te
        import tvm.tirx as tir

        self.bb, self.relax, self.R, self.te, self.tir = bb, relax, relax.op, te, tir
        self.amx = amx  # integer convolutions on AMX tiles (``amx.py``)

    def const(self, array, dtype=None):
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype)
        return self.relax.const(a, str(a.dtype))

    def scalar(self, value, dtype: str):
        return self.relax.const(np.asarray(value, dtype=dtype), dtype)

    def emit(self, expr):
        # an alias binding (``lv1 = lv``) would hide the producer from FuseOps: return Vars as they are
        return expr if isinstance(expr, self.relax.Var) else self.bb.emit(expr)

    def te_(self, fn, *args, name="lowbit_te"):
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name)


def _np(t):
    return t.dtype.np_dtype.name if t.dtype != dt.boolean else "bool"


# -- elementwise --------------------------------------------------------------------------------------------------
_BIN = {"add": "add", "sub": "subtract", "mul": "multiply", "max": "maximum", "min": "minimum",
        "equal": "equal", "less": "less", "greater": "greater", "less_equal": "less_equal",
        "greater_equal": "greater_equal", "and": "logical_and", "or": "logical_or", "xor": "logical_xor"}
_UN = {"sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt", "erf": "erf",
       "floor": "floor", "ceil": "ceil", "sin": "sin", "cos": "cos", "neg": "negative", "abs": "abs",
       "sign": "sign", "not": "logical_not"}


@rule(*_BIN)
def _binary(L: Lowerer, op: Op, a, b):
    return getattr(L.R, _BIN[op.opname])(a, b)


@rule(*_UN)
def _unary(L: Lowerer, op: Op, x):
    return getattr(L.R, _UN[op.opname])(x)


@rule("div")
def _div(L: Lowerer, op: Op, a, b):
    if op.result.type.dtype.is_float:
        return L.R.divide(a, b)
    shape = op.result.type.shape

    def fn(A, B):  # C semantics: truncate toward zero (relax/topi floor-divides integers)
        return L.te.compute(shape, lambda *i: L.tir.truncdiv(_bcast(A, i, shape), _bcast(B, i, shape)))
    return L.te_(fn, a, b, name="lowbit_truncdiv")


def _bcast(T, idx, out_shape):
    """Index tensor T (numpy-broadcast to out_shape) at output index idx."""
    off = len(out_shape) - len(T.shape)
    return T[tuple(0 if int(T.shape[k]) == 1 else idx[k + off] for k in range(len(T.shape)))]


@rule("pow")
def _pow(L, op, a, b):
    """x ** y with C pow semantics on every backend: CUDA's pow goes through exp(y * log x), which is NaN for
    a negative base, so small constant exponents become multiplies and the rest |x| ** y with the sign of
    an odd integral exponent restored."""
    e = op.operands[1]
    shape = op.result.type.shape
    if e.is_const and e.type.size == 1 and op.operands[0].type.shape == shape:
        v = float(e.const_value.reshape(-1)[0])
        if v == 1.0:
            return a
        if v == 2.0:
            return L.R.multiply(a, a)
        if v == 3.0:
            return L.R.multiply(L.emit(L.R.multiply(a, a)), a)
        if v == 0.5:
            return L.R.sqrt(a)
    tir = L.tir
    d = _np(op.result.type)

    def fn(X, Y):
        def body(*i):
            x, y = _bcast(X, i, shape), _bcast(Y, i, shape)
            r = tir.power(tir.abs(x), y)
            integral = tir.floor(y) == y
            odd = tir.all(integral, tir.floor(y * tir.const(0.5, d)) * tir.const(2, d) != y)
            neg = tir.Select(integral, tir.Select(odd, -r, r), tir.const(float("nan"), d))
            return tir.Select(x < tir.const(0, d), neg, r)
        return L.te.compute(shape, body)
    return L.te_(fn, a, b, name="lowbit_pow")


@rule("identity", "dropout")
def _identity(L, op, x):
    return x


@rule("relu")
def _relu(L, op, x):
    return L.R.nn.relu(x)


@rule("reciprocal")
def _reciprocal(L, op, x):
    return L.R.divide(L.scalar(1, _np(op.result.type)), x)


@rule("round")
def _round(L, op, x):
    shape = op.result.type.shape
    return L.te_(lambda X: L.te.compute(shape, lambda *i: L.tir.nearbyint(X[i])), x, name="lowbit_round")


@rule("softplus")
def _softplus(L, op, x):
    return L.R.nn.softplus(x)


@rule("gelu")
def _gelu(L, op, x):
    if op.attrs["approximate"] == "none" and op.result.type.dtype == dt.f32:
        # x/2 * (1 + erf(x/sqrt 2)) with TOPI's vectorizable erf (max error 3.3e-7, measured); LLVM's erf is a
        # scalar call per lane
        from tvm import topi

        half, k = L.scalar(0.5, "float32"), L.scalar(float(1 / np.sqrt(2)), "float32")
        e = L.te_(topi.fast_erf, L.emit(L.R.multiply(x, k)), name="fast_erf")
        return L.R.multiply(L.R.multiply(x, half), L.R.add(L.emit(e), L.scalar(1.0, "float32")))
    return L.R.nn.gelu(x) if op.attrs["approximate"] == "none" else L.R.nn.gelu_tanh(x)


@rule("hard_sigmoid")
def _hard_sigmoid(L, op, x):
    d = _np(op.result.type)
    y = L.R.add(L.R.multiply(x, L.scalar(op.attrs["alpha"], d)), L.scalar(op.attrs["beta"], d))
    return L.R.minimum(L.R.maximum(y, L.scalar(0, d)), L.scalar(1, d))


@rule("hard_swish")
def _hard_swish(L, op, x):
    d = _np(op.result.type)
    y = L.R.add(L.R.multiply(x, L.scalar(1 / 6, d)), L.scalar(0.5, d))
    return L.R.multiply(x, L.R.minimum(L.R.maximum(y, L.scalar(0, d)), L.scalar(1, d)))


@rule("leaky_relu")
def _leaky_relu(L, op, x):
    d = _np(op.result.type)
    return L.R.where(L.R.less(x, L.scalar(0, d)), L.R.multiply(x, L.scalar(op.attrs["alpha"], d)), x)


@rule("elu")
def _elu(L, op, x):
    d = _np(op.result.type)
    neg = L.R.multiply(L.scalar(op.attrs["alpha"], d), L.R.subtract(L.R.exp(x), L.scalar(1, d)))
    return L.R.where(L.R.less(x, L.scalar(0, d)), neg, x)


@rule("prelu")
def _prelu(L, op, x, s):
    d = _np(op.result.type)
    return L.R.where(L.R.less(x, L.scalar(0, d)), L.R.multiply(x, s), x)


@rule("clip")
def _clip(L, op, x):
    t = op.result.type
    d = _np(t)
    lo, hi = op.attrs["min"], op.attrs["max"]
    if t.dtype.is_integer:
        info = np.iinfo(t.dtype.np_dtype)
        lo = info.min if lo == float("-inf") else int(lo)
        hi = info.max if hi == float("inf") else int(hi)
    y = x
    if lo != float("-inf"):
        y = L.R.maximum(y, L.scalar(lo, d))
    if hi != float("inf"):
        y = L.R.minimum(y, L.scalar(hi, d))
    return y


@rule("where")
def _where(L, op, c, a, b):
    return L.R.where(c, a, b)


@rule("cast")
def _cast(L, op, x):
    to = op.attrs["to"]
    if to == dt.boolean:
        return L.R.not_equal(x, L.scalar(0, _np(op.operands[0].type)))
    if to.name.startswith("f8") or to in (dt.i4, dt.u4):
        raise LowbitError(f"{op.describe()}: codegen of casts to {to.name} is not implemented")
    return L.R.astype(x, _np(op.result.type))


# -- quantization -------------------------------------------------------------------------------------------------
def _qconsts(L, q, rank):
    """Scale (f32) and zero point (i32) constants shaped to broadcast against a tensor of ``rank``."""
    shape = q.broadcast_shape(rank)
    return (L.const(q.scale_array().reshape(shape)), L.const(q.zero_point_array().astype(np.int32).reshape(shape)))


def _quantize_expr(L, x, t):
    lo, hi = t.dtype.iinfo()
    shape = t.shape
    out = _np(t)

    def fn(X, S, Z):
        def body(*i):
            r = L.tir.nearbyint(X[i] / _bcast(S, i, shape)).astype("int32") + _bcast(Z, i, shape)
            return L.tir.max(L.tir.min(r, hi), lo).astype(out)
        return L.te.compute(shape, body)
    return L.te_(fn, x, *_qconsts(L, t.quant, t.rank), name="lowbit_quantize")


def _dequantize_expr(L, q, t):
    scale, zp = _qconsts(L, t.quant, t.rank)
    return L.R.multiply(L.R.astype(L.R.subtract(L.R.astype(q, "int32"), zp), "float32"), scale)


def _requant_consts(op, channel_axis_len: int):
    """Per-output-channel f32 multipliers m = f32(sx * sw) / sy, as the reference computes them."""
    xt, wt, rt = op.operands[0].type, op.operands[1].type, op.result.type
    m = (np.float32(xt.quant.scale[0]) * wt.quant.scale_array().astype(np.float32)) / np.float32(rt.quant.scale[0])
    return np.ascontiguousarray(np.broadcast_to(m.astype(np.float32), (channel_axis_len,)))


def _requant_body(L, op, acc, m):
    """saturate(round_half_even(f32(acc) * m) + zy) [clamped at zy for relu], in the result dtype."""
    rt = op.result.type
    lo, hi = rt.dtype.iinfo()
    zy = int(rt.quant.zero_point[0])
    if op.attrs["activation"] == "relu":
        lo = max(lo, zy)
    tir = L.tir
    v = tir.nearbyint(acc.astype("float32") * m).astype("int32") + tir.const(zy, "int32")
    return tir.max(tir.min(v, tir.const(hi, "int32")), tir.const(lo, "int32")).astype(_np(rt))


@rule("qconv2d")
def _qconv2d(L, op, x, w, b=None):
    """Integer conv: sum(i32(x) * i32(w)) over the input padded with its zero point, minus zx * sum(w) and plus
    the bias folded into one per-channel i32 constant, requantized per output channel."""
    a = op.attrs
    xt = op.operands[0].type
    (pt, pl, pb, pr), (sh, sw), (dh, dw), g = a["pads"], a["strides"], a["dilations"], a["groups"]
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o, cpg, kh, kw = weight.shape
    _, _, oh, ow = op.result.type.shape
    zx = int(xt.quant.zero_point[0])
    corr = -zx * weight.reshape(o, -1).sum(axis=1)
    if b is not None:
        corr = corr + op.operands[2].const_value.astype(np.int64)
    te, tir = L.te, L.tir
    xd = _np(xt)
    opg = o // g
    if g == c == o and g > 1:  # depthwise: a row kernel over the NCHW input, no padded copy
        from tvm import relax

        from .rows import depthwise_conv, depthwise_conv_planes

        rt = op.result.type
        lo, hi = rt.dtype.iinfo()
        zy = int(rt.quant.zero_point[0])
        if a["activation"] == "relu":
            lo = max(lo, zy)
        bias = op.operands[2].const_value.astype(np.int32) if b is not None else np.zeros(o, np.int32)
        # small planes: one vector run per tap over the whole plane; wide rows: row vectors, no plane copy
        kernel = depthwise_conv_planes if sh == sw and (h + pt + pb) * (wd + pl + pr) <= 2048 else depthwise_conv
        func = kernel(xt.shape, rt.shape, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), xd, zx, _np(rt), zy, lo, hi)
        gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_qconv2d_depthwise")
        args = [x, L.const(np.ascontiguousarray(weight.reshape(o, kh, kw).astype(np.int32))), L.const(bias),
                L.const(_requant_consts(op, o))]
        return relax.call_tir(gv, relax.Tuple(args), relax.TensorType(rt.shape, _np(rt)))
    if g == 1 and xt.dtype == dt.u8 and L.amx:
        from .amx import lower_qconv2d
        return lower_qconv2d(L, op, x, weight, corr)
    if g == 1 and o % 16 == 0 and xt.dtype == dt.u8:
        return _qconv2d_dot4(L, op, x, weight, corr)

    def fn(X, W, Cr, M):
        if any((pt, pl, pb, pr)):
            P = te.compute((n, c, h + pt + pb, wd + pl + pr), lambda i, j, y, z: tir.if_then_else(
                tir.all(y >= pt, y < h + pt, z >= pl, z < wd + pl), X[i, j, y - pt, z - pl],
                tir.const(zx, xd)), name="pad_temp")
        else:
            P = X
        rc, ry, rx = te.reduce_axis((0, cpg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        if g == 1:  # weights packed [C, KH, KW, O]: vectors over output channels
            acc = te.compute((n, o, oh, ow), lambda i, f, y, z: te.sum(
                P[i, rc, y * sh + ry * dh, z * sw + rx * dw].astype("int32") * W[rc, ry, rx, f].astype("int32"),
                axis=[rc, ry, rx]), name="qconv2d_acc")
        else:
            acc = te.compute((n, o, oh, ow), lambda i, f, y, z: te.sum(
                P[i, (f // opg) * cpg + rc, y * sh + ry * dh, z * sw + rx * dw].astype("int32") *
                W[f, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]), name="qconv2d_acc")
        return te.compute((n, o, oh, ow), lambda i, f, y, z: _requant_body(
            L, op, acc[i, f, y, z] + Cr[f], M[f]), name="requantize")
    wp = weight.astype(np.int8)
    wp = np.ascontiguousarray(wp.transpose(1, 2, 3, 0)) if g == 1 else wp
    return L.te_(fn, x, L.const(wp), L.const(corr.astype(np.int32)), L.const(_requant_consts(op, o)),
                 name="lowbit_qconv2d")


def _qconv2d_dot4(L, op, x, weight: np.ndarray, corr: np.ndarray):
    """u8 x i8 dense conv in the shape of the VNNI instruction (vpdpbusd: 16 i32 lanes += 4 u8 . 4 i8 each):
    the input is padded (with its zero point) into [N, C/4, H, W, 4] and the weights packed into
    [O/16, C/4, KH, KW, 16, 4]; the schedule tensorizes the 16 x 4 inner block on CPUs with VNNI
    (``schedules.DotProduct4``), and it is an ordinary integer contraction elsewhere."""
    a = op.attrs
    xt = op.operands[0].type
    (pt, pl, pb, pr), (sh, sw), (dh, dw) = a["pads"], a["strides"], a["dilations"]
    n, c, h, wd = xt.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = op.result.type.shape
    zx = int(xt.quant.zero_point[0])
    c4 = (c + 3) // 4
    wp = np.zeros((o // 16, 16, c4 * 4, kh, kw), np.int8)
    wp[:, :, :c] = weight.reshape(o // 16, 16, c, kh, kw)  # padded channels weigh 0
    wp = np.ascontiguousarray(wp.reshape(o // 16, 16, c4, 4, kh, kw).transpose(0, 2, 4, 5, 1, 3))
    te, tir = L.te, L.tir

    def fn(X, W, Cr, M):
        P = te.compute((n, c4, h + pt + pb, wd + pl + pr, 4), lambda i, j, y, z, k: tir.if_then_else(
            tir.all(j * 4 + k < c, y >= pt, y < h + pt, z >= pl, z < wd + pl),
            X[i, tir.min(j * 4 + k, c - 1), y - pt, z - pl], tir.const(zx, "uint8")), name="pad_dot4")
        rc, ry, rx, rk = (te.reduce_axis((0, c4), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"),
                          te.reduce_axis((0, 4), "rk"))
        acc = te.compute((n, o // 16, oh, ow, 16), lambda i, f, y, z, q: te.sum(
            P[i, rc, y * sh + ry * dh, z * sw + rx * dw, rk].astype("int32") * W[f, rc, ry, rx, q, rk].astype("int32"),
            axis=[rc, ry, rx, rk]), name="qconv2d_dot4")
        return te.compute((n, o, oh, ow), lambda i, f, y, z: _requant_body(
            L, op, acc[i, f // 16, y, z, f % 16] + Cr[f], M[f]), name="requantize")
    return L.te_(fn, x, L.const(wp), L.const(corr.astype(np.int32)), L.const(_requant_consts(op, o)),
                 name="lowbit_qconv2d_dot4")


@rule("qmatmul_dynamic")
def _qmatmul_dynamic(L, op, x, w, b=None):
    """Dynamic quantization, as the reference: the input's range (with 0) over all its elements or over each row,
    u8 parameters, the quantized input, an exact integer matmul (zero point folded per column), f32 rescaling."""
    from tvm import relax

    xt = op.operands[0].type
    weight = op.operands[1].const_value
    k, nn = weight.shape
    sw = np.broadcast_to(op.operands[1].type.quant.scale_array().astype(np.float32), (nn,))
    wsum = weight.astype(np.int32).sum(axis=0).astype(np.int32)
    shape = op.result.type.shape
    per_row = op.attrs["per_row"]
    if L.amx and nn % 16 == 0 and per_row:
        return _qmatmul_dynamic_amx(L, op, x, None, None, weight, sw, wsum, b)
    pv = L.emit(L.bb.emit_te(_dynamic_u8_params(L, xt, per_row), x, primfunc_name_hint="lowbit_dynamic_params"))
    sc, zp = L.emit(relax.TupleGetItem(pv, 0)), L.emit(relax.TupleGetItem(pv, 1))
    if L.amx and nn % 16 == 0:
        return _qmatmul_dynamic_amx(L, op, x, sc, zp, weight, sw, wsum, b)
    te, tir = L.te, L.tir
    f32 = "float32"
    lead = xt.shape[:-1]

    def row(i):  # the flattened leading index of an element (0 when per tensor)
        if not per_row:
            return 0
        r = 0
        for ix, d in zip(i, lead):
            r = r * d + ix
        return r

    def fn(X, SC, ZP, W, S, WS, *B):
        xq = te.compute(xt.shape, lambda *i: tir.max(tir.min(
            tir.nearbyint(X[i] / SC[row(i[:-1])]).astype("int32") + ZP[row(i[:-1])], 255), 0).astype("uint8"),
            name="dyn_quantize")
        r = te.reduce_axis((0, k), "k")
        acc = te.compute(shape, lambda *i: te.sum(xq[i[:-1] + (r,)].astype("int32") * W[r, i[-1]].astype("int32"),
                                                  axis=[r]), name="qmatmul_dynamic_acc")

        def out(*i):
            v = (acc[i] - ZP[row(i[:-1])] * WS[i[-1]]).astype(f32) * (SC[row(i[:-1])] * S[i[-1]])
            return v + B[0][i[-1]] if B else v
        return te.compute(shape, out, name="rescale")
    args = [x, sc, zp, L.const(weight.astype(np.int8)), L.const(np.ascontiguousarray(sw)), L.const(wsum)]
    args += [b] if b is not None else []
    return L.te_(fn, *args, name="lowbit_qmatmul_dynamic")


def _dynamic_u8_params(L, xt, per_row: bool):
    """TE: the input's u8 scales and zero points ([1], or [rows] per row of the last axis), as onnxruntime's
    DynamicQuantizeLinear computes them (the range widened to include 0)."""
    te, tir = L.te, L.tir
    f32 = "float32"
    lead, k = xt.shape[:-1], xt.shape[-1]
    rows = int(np.prod(lead)) if per_row else 1

    def params(X):
        if per_row:
            from .amx import _unravel

            rk, sk = te.reduce_axis((0, k), "rk"), te.reduce_axis((0, k), "sk")
            mn = te.compute((rows,), lambda i: te.min(X[tuple(_unravel(i, lead)) + (rk,)], axis=[rk]), name="dyn_min")
            mx = te.compute((rows,), lambda i: te.max(X[tuple(_unravel(i, lead)) + (sk,)], axis=[sk]), name="dyn_max")
        else:
            ra = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(xt.shape)]
            rb = [te.reduce_axis((0, d), f"s{i}") for i, d in enumerate(xt.shape)]
            mn = te.compute((1,), lambda _: te.min(X[tuple(ra)], axis=ra), name="dyn_min")
            mx = te.compute((1,), lambda _: te.max(X[tuple(rb)], axis=rb), name="dyn_max")
        zero = tir.const(0, f32)

        def scale_of(i):
            s = (tir.max(mx[i], zero) - tir.min(mn[i], zero)) / tir.const(255, f32)
            return tir.if_then_else(s == zero, tir.const(1, f32), s)
        sc = te.compute((rows,), scale_of, name="dyn_scale")
        zp = te.compute((rows,), lambda i: tir.if_then_else(
            tir.max(mx[i], zero) - tir.min(mn[i], zero) == zero, 0,
            tir.max(tir.min(tir.nearbyint(-tir.min(mn[i], zero) / sc[i]).astype("int32"), 255), 0)), name="dyn_zp")
        return [sc, zp]
    return params


def _qmatmul_dynamic_amx(L, op, x, sc, zp, weight, sw, wsum, b):
    """qmatmul_dynamic on AMX tiles: the quantized input as [M, K] rows (padded to 32 x 64), then
    ``amx.matmul_func`` (rescale and bias fused into one multiply-add, as the reference rounds once)."""
    from tvm import relax

    from . import amx

    xt = op.operands[0].type
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    mp, kp = -(-m // 32) * 32, -(-k // 64) * 64
    per_row = op.attrs["per_row"]
    te, tir = L.te, L.tir
    shape = xt.shape

    def quant(X, SC, ZP):
        def at(i, j):
            r = tir.min(i, m - 1) if per_row else 0
            idx = tuple(amx._unravel(tir.min(i, m - 1), shape[:-1])) + (tir.min(j, k - 1),)
            q = tir.max(tir.min(tir.nearbyint(X[idx] / SC[r]).astype("int32") + ZP[r], 255), 0).astype("uint8")
            return tir.if_then_else(tir.all(i < m, j < k), q, tir.const(0, "uint8"))
        return te.compute((mp, kp), at, name="dyn_quantize")
    if sc is None:  # per row: range, parameters and quantized rows in one pass
        f = amx.dynamic_rows_func(shape, m, k, mp, kp)
        gq = L.bb.add_func(f.without_attr("global_symbol"), "lowbit_dynamic_quantize_rows")
        t = L.emit(relax.call_tir(gq, relax.Tuple([x]), [relax.TensorType((mp, kp), "uint8"),
                                                         relax.TensorType((m,), "float32"),
                                                         relax.TensorType((m,), "int32")]))
        xq, sc, zp = (L.emit(relax.TupleGetItem(t, i)) for i in range(3))
    else:
        xq = L.emit(L.te_(quant, x, sc, zp, name="lowbit_dynamic_quantize"))
    bias = b if b is not None else L.const(np.zeros(nn, np.float32))
    func = amx.matmul_func((mp, kp), op.result.type.shape, mp, kp, nn, True, b is not None, per_row=per_row)
    gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_qmatmul_dynamic_amx")
    args = [xq, L.const(amx.pack_matmul_weights(weight.astype(np.int8), kp)), zp, sc, L.const(wsum),
            L.const(np.ascontiguousarray(sw)), bias]
    return relax.call_tir(gv, relax.Tuple(args), relax.TensorType(op.result.type.shape, "float32"))


@rule("qmatmul")
def _qmatmul(L, op, x, w, b=None):
    """Integer matmul by a constant [K, N], the same folding and requantization as qconv2d."""
    xt = op.operands[0].type
    weight = op.operands[1].const_value.astype(np.int32)
    k, nn = weight.shape
    zx = int(xt.quant.zero_point[0])
    corr = -zx * weight.sum(axis=0)
    if b is not None:
        corr = corr + op.operands[2].const_value.astype(np.int64)
    shape = op.result.type.shape
    te = L.te
    if L.amx and xt.dtype == dt.u8:
        from tvm import relax

        from . import amx

        rt = op.result.type
        kp = -(-k // 64) * 64
        xr, shape_x, mp = amx.matmul_input(L, x, xt.shape, kp, zx)
        lo, hi = rt.dtype.iinfo()
        zy = int(rt.quant.zero_point[0])
        if op.attrs["activation"] == "relu":
            lo = max(lo, zy)
        func = amx.matmul_func(shape_x, shape, mp, kp, nn, False, False, zy, lo, hi, _np(rt))
        gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_qmatmul_amx")
        n16 = -(-nn // 16) * 16
        args = [xr, L.const(amx.pack_matmul_weights(weight.astype(np.int8), kp)),
                L.const(np.pad(corr.astype(np.int32), (0, n16 - nn))),
                L.const(np.pad(_requant_consts(op, nn), (0, n16 - nn)))]
        return relax.call_tir(gv, relax.Tuple(args), relax.TensorType(shape, _np(rt)))

    def fn(X, W, Cr, M):
        r = te.reduce_axis((0, k), "k")
        acc = te.compute(shape, lambda *i: te.sum(X[i[:-1] + (r,)].astype("int32") * W[r, i[-1]].astype("int32"),
                                                  axis=[r]), name="qmatmul_acc")
        return te.compute(shape, lambda *i: _requant_body(L, op, acc[i] + Cr[i[-1]], M[i[-1]]), name="requantize")
    return L.te_(fn, x, L.const(weight.astype(np.int8)), L.const(corr.astype(np.int32)),
                 L.const(_requant_consts(op, nn)), name="lowbit_qmatmul")


@rule("quantize")
def _quantize(L, op, x):
    return _quantize_expr(L, x, op.result.type)


@rule("dequantize")
def _dequantize(L, op, q):
    return _dequantize_expr(L, q, op.operands[0].type)


@rule("requantize")
def _requantize(L, op, q):
    return _quantize_expr(L, L.emit(_dequantize_expr(L, q, op.operands[0].type)), op.result.type)


# -- shape ops ----------------------------------------------------------------------------------------------------
@rule("reshape")
def _reshape(L, op, x):
    return L.R.reshape(x, op.attrs["shape"])


@rule("transpose")
def _transpose(L, op, x):
    return L.R.permute_dims(x, list(op.attrs["perm"]))


@rule("concat")
def _concat(L, op, *xs):
    return L.R.concat(list(xs), axis=op.attrs["axis"])


@rule("split")
def _split(L, op, x):
    idx = [int(v) for v in np.cumsum(op.attrs["sizes"])[:-1]]
    t = L.emit(L.R.split(x, idx, axis=op.attrs["axis"]))
    return [L.emit(L.relax.TupleGetItem(t, i)) for i in range(len(op.results))]


@rule("slice")
def _slice(L, op, x):
    in_shape = op.operands[0].type.shape
    shape = op.result.type.shape
    start = [0] * len(in_shape)
    step = [1] * len(in_shape)
    for s, e, ax, st in zip(*(op.attrs[k] for k in ("starts", "ends", "axes", "steps"))):
        start[ax], _, _ = slice_dim(in_shape[ax], s, e, st)
        step[ax] = st
    return L.te_(lambda X: L.te.compute(shape, lambda *i: X[tuple(start[k] + i[k] * step[k] for k in range(len(i)))]),
                 x, name="lowbit_slice")


@rule("gather")
def _gather(L, op, data, idx):
    axis = op.attrs["axis"]
    dshape, ishape, shape = op.operands[0].type.shape, op.operands[1].type.shape, op.result.type.shape
    n = dshape[axis]
    ni = len(ishape)

    def fn(D, I):
        def body(*o):
            j = I[o[axis:axis + ni]].astype("int64")
            j = L.tir.Select(j < 0, j + n, j)
            return D[o[:axis] + (j,) + o[axis + ni:]]
        return L.te.compute(shape, body)
    return L.te_(fn, data, idx, name="lowbit_gather")


@rule("gather_elements")
def _gather_elements(L, op, data, idx):
    axis = op.attrs["axis"]
    n = op.operands[0].type.shape[axis]
    shape = op.result.type.shape

    def fn(D, I):
        def body(*o):
            j = I[o].astype("int64")
            j = L.tir.Select(j < 0, j + n, j)
            return D[o[:axis] + (j,) + o[axis + 1:]]
        return L.te.compute(shape, body)
    return L.te_(fn, data, idx, name="lowbit_gather_elements")


@rule("expand")
def _expand(L, op, x):
    return L.R.broadcast_to(x, op.result.type.shape)


@rule("tile")
def _tile(L, op, x):
    return L.R.tile(x, list(op.attrs["repeats"]))


@rule("pad")
def _pad(L, op, x):
    ishape, shape = op.operands[0].type.shape, op.result.type.shape
    r = len(ishape)
    begin = op.attrs["pads"][:r]
    mode = op.attrs["mode"]
    value = op.attrs["value"]
    d = _np(op.result.type)

    def fn(X):
        def body(*o):
            src = [o[k] - begin[k] for k in range(r)]
            if mode == "constant":
                inside = L.tir.all(*[L.tir.all(s >= 0, s < ishape[k]) for k, s in enumerate(src)])
                safe = [L.tir.max(L.tir.min(s, ishape[k] - 1), 0) for k, s in enumerate(src)]
                return L.tir.if_then_else(inside, X[tuple(safe)], L.tir.const(value, d))
            idx = []
            for k, s in enumerate(src):
                n = ishape[k]
                if mode == "edge" or n == 1:
                    idx.append(L.tir.max(L.tir.min(s, n - 1), 0))
                else:  # reflect (one reflection, as ONNX requires pads < dim)
                    s = L.tir.Select(s < 0, -s, s)
                    idx.append(L.tir.Select(s >= n, 2 * (n - 1) - s, s))
            return X[tuple(idx)]
        return L.te.compute(shape, body)
    return L.te_(fn, x, name="lowbit_pad")


@rule("resize")
def _resize(L, op, x):
    a = op.attrs
    ishape, shape = op.operands[0].type.shape, op.result.type.shape
    f = "float32"
    tir = L.tir

    def coord(o, in_len, out_len, scale):
        xo = o.astype(f)
        s = tir.const(scale, f)
        m = a["coordinate_transformation_mode"]
        half = tir.const(0.5, f)
        if m == "asymmetric":
            return xo / s
        if m == "align_corners":
            return xo * tir.const(in_len - 1, f) / tir.const(out_len - 1, f) if out_len > 1 else tir.const(0, f)
        if m == "pytorch_half_pixel":
            return (xo + half) / s - half if out_len > 1 else tir.const(0, f)
        if m == "half_pixel_symmetric":
            adj = np.float32(out_len) / (np.float32(scale) * np.float32(in_len))
            off = np.float32(in_len) / np.float32(2) * (np.float32(1) - adj)
            return tir.const(float(off), f) + (xo + half) / s - half
        return (xo + half) / s - half

    axes = [k for k in range(len(shape)) if not (shape[k] == ishape[k] and a["scales"][k] == 1.0)]
    if a["mode"] == "nearest":
        def fn(X):
            def body(*o):
                idx = list(o)
                for k in axes:
                    c = coord(o[k], ishape[k], shape[k], a["scales"][k])
                    nm = a["nearest_mode"]
                    half = tir.const(0.5, f)
                    r = (tir.floor(c) if nm == "floor" else tir.ceil(c) if nm == "ceil" else
                         tir.floor(c + half) if nm == "round_prefer_ceil" else tir.ceil(c - half))
                    idx[k] = tir.max(tir.min(r.astype("int64"), ishape[k] - 1), 0)
                return X[tuple(idx)]
            return L.te.compute(shape, body)
        return L.te_(fn, x, name="lowbit_resize_nearest")

    def fn(X):  # linear: separable, weights in float32 from clamped coordinates
        def body(*o):
            terms = [(tir.const(1.0, f), list(o))]
            for k in axes:
                c = coord(o[k], ishape[k], shape[k], a["scales"][k])
                c = tir.max(tir.min(c, tir.const(ishape[k] - 1, f)), tir.const(0, f))
                lo = tir.floor(c).astype("int64")
                hi = tir.min(lo + 1, ishape[k] - 1)
                w = c - tir.floor(c)
                new = []
                for wt, idx in terms:
                    new.append((wt * (tir.const(1.0, f) - w), idx[:k] + [lo] + idx[k + 1:]))
                    new.append((wt * w, idx[:k] + [hi] + idx[k + 1:]))
                terms = new
            acc = None
            for wt, idx in terms:
                v = X[tuple(idx)].astype(f) * wt
                acc = v if acc is None else acc + v
            return acc.astype(X.dtype)
        return L.te.compute(shape, body)
    return L.te_(fn, x, name="lowbit_resize_linear")


# -- reductions and normalisation ---------------------------------------------------------------------------------
_RED = {"reduce_mean": "mean", "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "reduce_prod": "prod"}


@rule(*_RED)
def _reduce(L, op, x):
    axes = list(op.attrs["axes"]) or None
    return getattr(L.R, _RED[op.opname])(x, axis=axes, keepdims=op.attrs["keepdims"])


@rule("arg_max")
def _arg_max(L, op, x):
    ax, keep = op.attrs["axis"], op.attrs["keepdims"]
    if op.attrs["select_last_index"]:
        n = op.operands[0].type.shape[ax]
        idx = L.emit(L.R.astype(L.R.argmax(L.R.flip(x, axis=ax), axis=ax, keepdims=keep), "int64"))
        return L.R.subtract(L.scalar(n - 1, "int64"), idx)
    return L.R.astype(L.R.argmax(x, axis=ax, keepdims=keep), "int64")


@rule("softmax")
def _softmax(L, op, x):
    if op.result.type.dtype == dt.f32:
        # TOPI's fast_exp (max relative error 3e-7 on [-87, 88], measured): the arguments of softmax's exp are
        # never positive, so its clamping at +-88.4 cannot change a result; LLVM's exp is a scalar call per lane
        from tvm import topi

        return L.te_(topi.nn.fast_softmax, x, op.attrs["axis"] % op.result.type.rank, name="softmax")
    return L.R.nn.softmax(x, axis=op.attrs["axis"])


@rule("log_softmax")
def _log_softmax(L, op, x):
    return L.R.nn.log_softmax(x, axis=op.attrs["axis"])


@rule("layer_norm")
def _layer_norm(L, op, x, scale, bias=None):
    t = op.operands[0].type
    axes = list(range(op.attrs["axis"] % t.rank, t.rank))
    d = _np(t)
    mean = L.emit(L.R.mean(x, axis=axes, keepdims=True))
    diff = L.emit(L.R.subtract(x, mean))
    var = L.emit(L.R.mean(L.R.multiply(diff, diff), axis=axes, keepdims=True))
    y = L.R.multiply(L.R.divide(diff, L.R.sqrt(L.R.add(var, L.scalar(op.attrs["epsilon"], d)))), scale)
    return y if bias is None else L.R.add(L.emit(y), bias)


@rule("batch_norm")
def _batch_norm(L, op, x, scale, bias, mean, var):
    t = op.operands[0].type
    shape = [1, -1] + [1] * (t.rank - 2)
    d = _np(t)
    inv = L.emit(L.R.divide(scale, L.R.sqrt(L.R.add(var, L.scalar(op.attrs["epsilon"], d)))))
    y = L.R.multiply(L.R.subtract(x, L.R.reshape(mean, shape)), L.R.reshape(inv, shape))
    return L.R.add(L.emit(y), L.R.reshape(bias, shape))


@rule("lrn")
def _lrn(L, op, x):
    a = op.attrs
    shape = op.result.type.shape
    size, c = a["size"], shape[1]
    lo = (size - 1) // 2
    tir = L.tir

    def fn(X):
        k = L.te.reduce_axis((0, size), name="k")
        sq = L.te.compute(shape, lambda n, ch, *s: L.te.sum(
            tir.if_then_else(tir.all(ch - lo + k >= 0, ch - lo + k < c),
                             X[(n, tir.max(tir.min(ch - lo + k, c - 1), 0)) + s] *
                             X[(n, tir.max(tir.min(ch - lo + k, c - 1), 0)) + s], tir.const(0, X.dtype)), axis=k),
            name="sqsum")
        return L.te.compute(shape, lambda *i: X[i] / tir.power(
            tir.const(a["bias"], X.dtype) + tir.const(a["alpha"] / size, X.dtype) * sq[i], tir.const(a["beta"], X.dtype)))
    return L.te_(fn, x, name="lowbit_lrn")


# -- linear algebra, convolution, pooling --------------------------------------------------------------------------
@rule("matmul")
def _matmul(L, op, a, b):
    w = op.operands[1]
    if w.is_const and w.type.rank == 2 and op.result.type.dtype == dt.f32 and op.operands[0].type.rank >= 2:
        return _matmul_packed(L, op, a, w.const_value)
    return L.R.matmul(a, b)


def _panel(n: int) -> int | None:
    """Columns per packed weight panel: a multiple of 8 (an AVX2 vector) that divides ``n``, the largest <= 64."""
    return next((p for p in range(64, 7, -8) if n % p == 0), None)


def _matmul_packed(L, op, a, weight: np.ndarray):
    """A @ W for a constant W[K, N], W packed at compile time into panels [N/p, K, p]: the inner kernel streams
    one panel contiguously instead of reading p columns of every K-long row (N = 1000: 40-column panels)."""
    k, n = weight.shape
    p = _panel(n)
    if p is None:
        return L.R.matmul(a, L.const(weight))
    wp = L.const(np.ascontiguousarray(weight.astype(np.float32).reshape(k, n // p, p).transpose(1, 0, 2)))
    lead = tuple(op.operands[0].type.shape[:-1])

    def fn(A, W):
        r = L.te.reduce_axis((0, k), "k")
        return L.te.compute(lead + (n // p, p), lambda *i: L.te.sum(
            A[i[:-2] + (r,)] * W[i[-2], r, i[-1]], axis=[r]), name="matmul_packed")
    y = L.te_(fn, a, wp, name="lowbit_matmul")
    return L.R.reshape(L.emit(y), list(op.result.type.shape))


@rule("gemm")
def _gemm(L, op, a, b, c=None):
    at = op.attrs
    d = _np(op.result.type)
    A = L.R.permute_dims(a, [1, 0]) if at["trans_a"] else a
    B = L.R.permute_dims(b, [1, 0]) if at["trans_b"] else b
    if not at["trans_a"] and op.operands[1].is_const and op.result.type.dtype == dt.f32:
        w = op.operands[1].const_value
        y = L.emit(_matmul_packed(L, op, a, np.ascontiguousarray(w.T) if at["trans_b"] else w))
    else:
        y = L.emit(L.R.matmul(A, B))
    if at["alpha"] != 1.0:
        y = L.emit(L.R.multiply(y, L.scalar(at["alpha"], d)))
    if c is not None:
        y = L.R.add(y, c if at["beta"] == 1.0 else L.R.multiply(c, L.scalar(at["beta"], d)))
    return y


def _add_bias(L, y, b):
    return L.R.add(L.emit(y), L.R.reshape(b, [1, -1, 1, 1])) if b is not None else y


@rule("conv2d")
def _conv2d(L, op, x, w, b=None):
    from . import layout

    a = op.attrs
    if _use_packed_conv(op):  # NCHW in and out, weights packed [C, KH, KW, O]: vectors over output channels
        return _add_bias(L, layout.conv2d(L, op, x, None, None), b)
    y = L.R.nn.conv2d(x, w, strides=a["strides"], padding=a["pads"], dilation=a["dilations"], groups=a["groups"])
    return _add_bias(L, y, b)


def _use_packed_conv(op) -> bool:
    """Which dense convs vectorize over output channels (weights packed at compile time) rather than over
    the output width. Measured on this 2-core AVX-512 host: strided convs read every other input column, so
    width vectors gather — packed was 1.4-2.5x faster on ResNet-18's strided shapes; 1x1 convs (MobileNet's
    pointwise layers, 7x7 to 56x56) were 1.0-2.6x faster packed; 3x3 stride-1 convs on 14x14 and 7x7 were
    slower packed (weight traffic), so they keep width vectors."""
    a, w = op.attrs, op.operands[1]
    if a["groups"] != 1 or not w.is_const or not w.type.dtype.is_float:
        return False
    return tuple(a["strides"]) != (1, 1) or tuple(w.type.shape[2:]) == (1, 1)


@rule("conv_transpose2d")
def _conv_transpose2d(L, op, x, w, b=None):
    from . import layout

    a = op.attrs
    if a["groups"] == 1 and op.operands[1].is_const and op.result.type.dtype == dt.f32 and \
            layout.transposed_as_conv(op) is not None:
        # a stride-1 conv over the zero-upsampled input with the flipped kernel: one fused, scheduled kernel
        return _add_bias(L, layout.conv2d(L, op, x, None, None), b)
    y = L.R.nn.conv2d_transpose(x, w, strides=a["strides"], padding=a["pads"], output_padding=a["output_padding"],
                                dilation=a["dilations"], groups=a["groups"])
    return _add_bias(L, y, b)


@rule("max_pool2d")
def _max_pool(L, op, x):
    a = op.attrs
    xt = op.operands[0].type
    kh, kw = a["kernel"]
    if xt.dtype.is_integer and tuple(a["dilations"]) == (1, 1) and not a["ceil_mode"] and \
            all(pd < k for pd, k in zip(a["pads"], (kh, kw, kh, kw))):
        from tvm import relax

        from .rows import max_pool

        func = max_pool(xt.shape, op.result.type.shape, (kh, kw), a["strides"], a["pads"], _np(xt),
                        xt.dtype.iinfo()[0])
        gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_max_pool_int")
        return relax.call_tir(gv, relax.Tuple([x]), relax.TensorType(op.result.type.shape, _np(xt)))
    return L.R.nn.max_pool2d(x, a["kernel"], a["strides"], a["pads"], a["dilations"], ceil_mode=a["ceil_mode"])


@rule("avg_pool2d")
def _avg_pool(L, op, x):
    """Window sums divided by a per-position count computed here, exactly as the reference does."""
    from ..ir.interp import _pool_pad, _windows

    a = op.attrs
    t = op.operands[0].type
    (pt, pl, pb, pr), (eh, ew), geo = _pool_pad(op, np.zeros((1, 1) + t.shape[2:]))
    ones = np.ones((1, 1) + t.shape[2:], np.float32)
    mask = np.pad(ones, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=1 if a["count_include_pad"] else 0)
    mask = np.pad(mask, [(0, 0), (0, 0), (0, eh), (0, ew)])
    count = _windows(mask, *geo).sum(axis=(2, 3)).astype(_np(t))
    xp = L.R.nn.pad(x, [0, 0, 0, 0, pt, pb + eh, pl, pr + ew])
    s = L.emit(L.R.nn.avg_pool2d(xp, a["kernel"], a["strides"], (0, 0, 0, 0), count_include_pad=True))
    k = a["kernel"][0] * a["kernel"][1]
    return L.R.divide(L.R.multiply(s, L.scalar(k, _np(t))), L.const(count))


@rule("global_avg_pool")
def _gap(L, op, x):
    return L.R.mean(x, axis=list(range(2, op.operands[0].type.rank)), keepdims=True)


@rule("global_max_pool")
def _gmp(L, op, x):
    return L.R.max(x, axis=list(range(2, op.operands[0].type.rank)), keepdims=True)


# -- the driver ------------------------------------------------------------------------------------------------------
def _ident(name: str, used: set) -> str:
    base = re.sub(r"\W", "_", name) or "input"
    if base[0].isdigit():
        base = "_" + base
    n, i = base, 1
    while n in used:
        n, i = f"{base}_{i}", i + 1
    used.add(n)
    return n


# -- NHWC integer regions (with AMX) ------------------------------------------------------------------------------
_NHWC_ELEMENTWISE = {"quantize", "dequantize", "add", "sub", "mul", "max", "min", "relu", "clip"}


def _lower_nhwc(L, op, nenv: dict, get, get_nhwc):
    """The op computed on NHWC values (the result NHWC too), or None to lower it as usual. AMX and depthwise
    integer convolutions always write NHWC (a pixel's channels are a tile row); integer max pooling and per-tensor
    elementwise ops stay NHWC when an input already is. Any other consumer gets NCHW back from ``get``."""
    from tvm import relax

    name = op.opname
    rt = op.result.type
    if rt.rank != 4:
        return None
    if name == "qconv2d":
        a = op.attrs
        xt = op.operands[0].type
        n, c, h, wd = xt.shape
        weight = op.operands[1].const_value.astype(np.int32)
        o, _, kh, kw = weight.shape
        if a["groups"] == 1 and xt.dtype != dt.u8:
            return None
        zx = int(xt.quant.zero_point[0])
        x_nhwc = op.operands[0] in nenv
        x = get_nhwc(op.operands[0]) if x_nhwc else get(op.operands[0])
        bias = op.operands[2].const_value.astype(np.int64) if len(op.operands) > 2 else np.zeros(o, np.int64)
        if a["groups"] == 1:
            from . import amx

            corr = -zx * weight.reshape(o, -1).sum(axis=1) + bias
            _, _, oh, ow = rt.shape
            if x_nhwc and (kh, kw) == (1, 1) and tuple(a["strides"]) == (1, 1) and not any(a["pads"]):
                # a 1x1 conv of NHWC pixels is a matmul of their rows, read in place
                kp = -(-c // 64) * 64
                xr, shape_x, mp = amx.matmul_input(L, x, (n, h, wd, c), kp, zx)
                lo, hi = rt.dtype.iinfo()
                zy = int(rt.quant.zero_point[0])
                if a["activation"] == "relu":
                    lo = max(lo, zy)
                func = amx.matmul_func(shape_x, (n, oh, ow, o), mp, kp, o, False, False, zy, lo, hi, _np(rt))
                gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_qconv2d_1x1_amx")
                o16 = -(-o // 16) * 16
                args = [xr, L.const(amx.pack_matmul_weights(weight.reshape(o, c).T.astype(np.int8), kp)),
                        L.const(np.pad(corr.astype(np.int32), (0, o16 - o))),
                        L.const(np.pad(_requant_consts(op, o), (0, o16 - o)))]
                return relax.call_tir(gv, relax.Tuple(args), relax.TensorType((n, oh, ow, o), _np(rt)))
            return amx.lower_qconv2d(L, op, x, weight, corr, x_nhwc=x_nhwc, y_nhwc=True)
        # the bias with the input's zero point folded in: the kernel's f32 accumulators start there
        bias_zx = bias - zx * weight.reshape(o, -1).sum(axis=1)
        if a["groups"] == c == o and x_nhwc and np.abs(bias_zx).max() + kh * kw * 255 * 128 < 2 ** 24:
            from .rows import depthwise_conv_nhwc  # (its f32 sums stay exact integers)

            lo, hi = rt.dtype.iinfo()
            zy = int(rt.quant.zero_point[0])
            if a["activation"] == "relu":
                lo = max(lo, zy)
            _, _, oh, ow = rt.shape
            func = depthwise_conv_nhwc((n, h, wd, c), (n, oh, ow, o), (kh, kw), a["strides"], a["pads"],
                                       a["dilations"], _np(xt), zx, _np(rt), zy, lo, hi)
            gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_qconv2d_depthwise_nhwc")
            c16 = -(-o // 16) * 16  # channels padded to whole vectors (weight 0)
            wt = np.zeros((kh, kw, c16), np.float32)
            wt[..., :o] = weight.reshape(o, kh, kw).transpose(1, 2, 0)
            args = [x, L.const(wt), L.const(np.pad(bias_zx, (0, c16 - o)).astype(np.float32)),
                    L.const(_requant_consts(op, o))]
            return relax.call_tir(gv, relax.Tuple(args), relax.TensorType((n, oh, ow, o), _np(rt)))
        return None
    if op.operands[0] not in nenv:
        return None
    nhwc_shape = (rt.shape[0], rt.shape[2], rt.shape[3], rt.shape[1])
    if name == "max_pool2d" and rt.dtype.is_integer and not op.attrs["ceil_mode"]:
        from .rows import max_pool_nhwc

        a = op.attrs
        xt = op.operands[0].type
        n, c, h, wd = xt.shape
        func = max_pool_nhwc((n, h, wd, c), nhwc_shape, a["kernel"], a["strides"], a["pads"], a["dilations"],
                             _np(xt), xt.dtype.iinfo()[0])
        gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_max_pool_nhwc")
        return relax.call_tir(gv, relax.Tuple([get_nhwc(op.operands[0])]), relax.TensorType(nhwc_shape, _np(rt)))
    if name == "global_avg_pool":  # over the pixels of NHWC values: no transpose of the whole map first
        return L.R.mean(get_nhwc(op.operands[0]), axis=[1, 2], keepdims=True)
    if name not in _NHWC_ELEMENTWISE:
        return None
    args = []
    for v in op.operands:
        if v.type.shape == rt.shape:
            args.append(get_nhwc(v))
        elif v.type.size == 1 and v.is_const:
            args.append(L.const(v.const_value.reshape(())))
        else:
            return None
        if v.type.quant is not None and v.type.quant.axis is not None:
            return None
    if rt.quant is not None and rt.quant.axis is not None:
        return None
    if name == "quantize":
        from ..ir.types import TensorType

        return _quantize_expr(L, args[0], TensorType(nhwc_shape, rt.dtype, rt.quant))
    return RULES[name](L, op, *args)


def check_lowerable(graph: Graph) -> None:
    """Refuse, before any TVM work, ops and dtypes the code generator does not implement."""
    problems = []
    for op in graph.ops:
        if op.opname not in RULES and op.opname != "const":
            problems.append(f"{op.describe()}: no lowering rule for op '{op.opname}'")
        for v in op.results + op.operands:
            if v.type.dtype not in SUPPORTED_DTYPES:
                problems.append(f"{op.describe()}: dtype {v.type.dtype.name} is not supported by codegen yet")
                break
            if v.type.quant is not None and v.type.quant.group is not None:
                problems.append(f"{op.describe()}: group-wise quantization is not supported by codegen yet")
                break
    if problems:
        raise LowbitError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _lower_blocked(L, op, cb: int, plan: dict, get, get_blocked):
    """Lower ``op`` to the channel-blocked layout (see ``layout.py``); returns the blocked Relax expr."""
    from . import layout

    ins = op.operands
    name = op.opname
    if name in ("conv2d", "conv_transpose2d"):
        x = ins[0]
        if layout._conv_kind(op) == "depthwise":
            xb, xcb = get_blocked(x, cb), cb
        elif id(x) in plan:
            xb, xcb = get_blocked(x, plan[id(x)]), plan[id(x)]
        else:
            xb, xcb = get(x), None
        y = layout.conv2d(L, op, xb, xcb, cb)
        if len(ins) > 2:
            y = L.R.add(L.emit(y), L.const(layout.block_const(ins[2].const_value.astype(np.float32), cb)))
        return y
    if name in layout.UNARY:
        return RULES[name](L, op, get_blocked(ins[0], cb))
    if name in layout.BINARY:
        args = []
        for v in ins:
            if id(v) in plan and tuple(v.type.shape) == tuple(op.result.type.shape):
                args.append(get_blocked(v, cb))
            elif all(d == 1 for d in v.type.shape):
                args.append(L.R.reshape(get(v), [1] * 5) if v.type.rank > 0 else get(v))
            elif v.is_const:
                args.append(L.const(layout.block_const(v.const_value, cb)))
            else:  # [1, C, 1, 1] or [C, 1, 1]: the same elements in blocked order
                args.append(L.R.reshape(get(v), [1, v.type.shape[-3] // cb, 1, 1, cb]))
        return getattr(L.R, layout.BINARY[name])(*args)
    if name == "max_pool2d":
        return layout.max_pool2d(L, op, get_blocked(ins[0], cb), cb)
    if name in ("global_avg_pool", "reduce_mean"):
        return L.R.mean(get_blocked(ins[0], cb), axis=[2, 3], keepdims=True)
    if name == "global_max_pool":
        return L.R.max(get_blocked(ins[0], cb), axis=[2, 3], keepdims=True)
    if name == "concat":
        return L.R.concat([get_blocked(v, cb) for v in ins], axis=1)
    raise AssertionError(f"no blocked lowering for {name}")


def to_relax(graph: Graph, blocked_layout: bool = False, amx: bool = False):
    """An IRModule whose ``main`` takes the graph inputs (in order) and returns a tuple of its outputs.

    ``blocked_layout`` keeps convolutional activations channel-blocked (NCHWc, ``layout.py``) between the ops
    that understand that layout; the CPU build asks for it. ``amx`` runs u8 integer convolutions on AMX tiles
    (CPUs with AMX-INT8; the process that runs the code must have asked for AMX, ``runtime.host.enable_amx``)."""
    from tvm import relax

    from . import layout

    check_lowerable(graph)
    bb = relax.BlockBuilder()
    used: set = set()
    params = [relax.Var(_ident(v.name, used), relax.TensorType(v.type.shape, _np(v.type))) for v in graph.inputs]
    env = {v: p for v, p in zip(graph.inputs, params)}  # plain layout
    benv: dict = {}  # blocked layout: value -> (expr, channels per block)
    L = Lowerer(bb, amx)
    plan = layout.plan(graph) if blocked_layout else {}

    nenv: dict = {}  # NHWC layout (integer regions on AMX): value -> expr

    def get(v):
        if v not in env and v in nenv:  # only the NHWC form exists: back to NCHW once, where an op needs it
            env[v] = L.emit(L.R.permute_dims(nenv[v], [0, 3, 1, 2]))
        if v not in env:  # only the blocked form exists: unblock once, where a plain-layout op first needs it
            xb, cb = benv[v]
            env[v] = L.emit(layout.from_blocked(L, xb, v.type.shape, cb))
        return env[v]

    def get_nhwc(v):
        if v not in nenv:
            nenv[v] = L.emit(L.R.permute_dims(get(v), [0, 2, 3, 1]))
        return nenv[v]

    def get_blocked(v, cb):
        if v not in benv or benv[v][1] != cb:
            benv[v] = (L.emit(layout.to_blocked(L, get(v), v.type.shape, cb)), cb)
        return benv[v][0]

    with bb.function("main", params):
        with bb.dataflow():
            for op in graph.ops:
                if op.opname == "const":
                    env[op.result] = L.const(op.attrs["value"], op.result.type.dtype.np_dtype)
                    continue
                try:
                    if len(op.results) == 1 and id(op.result) in plan:
                        cb = plan[id(op.result)]
                        benv[op.result] = (L.emit(_lower_blocked(L, op, cb, plan, get, get_blocked)), cb)
                        continue
                    if amx and len(op.results) == 1:
                        r = _lower_nhwc(L, op, nenv, get, get_nhwc)
                        if r is not None:
                            nenv[op.result] = L.emit(r)
                            continue
                    res = RULES[op.opname](L, op, *[get(v) for v in op.operands])
                except LowbitError:
                    raise
                except Exception as e:
                    raise LowbitError(f"{op.describe()}: lowering to TVM failed: {str(e).splitlines()[0]}") from None
                res = res if isinstance(res, list) else [res]
                for r, e in zip(op.results, res, strict=True):
                    env[r] = L.emit(e)
            outs = [get(v) for v in graph.outputs]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()
