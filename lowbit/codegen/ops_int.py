"""Lowering of quantization ops and the portable integer kernels: quantize/dequantize, and qconv2d /
qmatmul / qmatmul_dynamic as TE (the generic kernels and the VNNI-shaped dot4 conv). Which kernel an op gets
is ``kernels.py``'s choice; AMX kernels are in ``amx.py``, row kernels in ``rows.py``."""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from ..quant import scheme
from .lowering import bcast, np_dtype, rule


# the block annotation that tells schedule rules which block of a kernel is which (``schedules.DotProduct4``)
ROLE = "lowbit.role"


# -- quantization -------------------------------------------------------------------------------------------------
def qconsts(L, q, rank):
    """Scale (f32) and zero point (i32) constants shaped to broadcast against a tensor of ``rank``."""
    shape = q.broadcast_shape(rank)
    return (L.const(q.scale_array().reshape(shape)), L.const(q.zero_point_array().astype(np.int32).reshape(shape)))


def quantize_expr(L, x, t):
    lo, hi = scheme.type_range(t)
    shape = t.shape
    out = np_dtype(t)

    def fn(X, S, Z):
        def body(*i):
            r = L.tir.nearbyint(X[i] / bcast(S, i, shape)).astype("int32") + bcast(Z, i, shape)
            return L.tir.max(L.tir.min(r, hi), lo).astype(out)
        return L.te.compute(shape, body)
    return L.te_(fn, x, *qconsts(L, t.quant, t.rank), name="lowbit_quantize")


def dequantize_expr(L, q, t):
    scale, zp = qconsts(L, t.quant, t.rank)
    return L.R.multiply(L.R.astype(L.R.subtract(L.R.astype(q, "int32"), zp), "float32"), scale)


def multipliers(op, channels: int) -> np.ndarray:
    """The op's per-output-channel f32 requantization multipliers (``scheme.requant_multiplier``)."""
    return scheme.requant_multiplier(op.operands[0].type, op.operands[1].type, op.result.type, channels)


def requant_params(op) -> tuple[int, int, int]:
    """(zy, lo, hi): the result's zero point and the clamp of its requantization (``scheme.output_clamp``)."""
    rt = op.result.type
    lo, hi = scheme.output_clamp(rt, op.attrs["activation"])
    return int(rt.quant.zero_point[0]), lo, hi


def conv_folded_bias(op) -> np.ndarray:
    """qconv2d's i32 bias with the input zero point folded in (``scheme.folded_bias``), per output channel."""
    weight = op.operands[1].const_value
    bias = op.operands[2].const_value if len(op.operands) > 2 else None
    return scheme.folded_bias(weight.reshape(weight.shape[0], -1), op.operands[0].type.quant.zero_point[0], bias)


def matmul_folded_bias(op) -> np.ndarray:
    """qmatmul's i32 bias with the input zero point folded in, per output column."""
    bias = op.operands[2].const_value if len(op.operands) > 2 else None
    return scheme.folded_bias(op.operands[1].const_value, op.operands[0].type.quant.zero_point[0], bias, (0,))


def requant_body(L, op, acc, m):
    """saturate(round_half_even(f32(acc) * m) + zy) [clamped at zy for relu], in the result dtype."""
    rt = op.result.type
    zy, lo, hi = requant_params(op)
    tir = L.tir
    v = tir.nearbyint(acc.astype("float32") * m).astype("int32") + tir.const(zy, "int32")
    return tir.max(tir.min(v, tir.const(hi, "int32")), tir.const(lo, "int32")).astype(np_dtype(rt))


def qconv2d(L, op, kernel: str = "generic"):
    """Integer conv: sum(i32(x) * i32(w)) over the input padded with its zero point, minus zx * sum(w) and plus
    the bias folded into one per-channel i32 constant, requantized per output channel. ``kernel``:
    ``depthwise-planes`` / ``depthwise-rows`` (``rows.py``), ``dot4`` (the VNNI shape) or ``generic``."""
    x = L.get(op.operands[0])
    b = op.operands[2] if len(op.operands) > 2 else None
    a = op.attrs
    xt = op.operands[0].type
    (pt, pl, pb, pr), (sh, sw), (dh, dw), g = a["pads"], a["strides"], a["dilations"], a["groups"]
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o, cpg, kh, kw = weight.shape
    _, _, oh, ow = op.result.type.shape
    zx = int(xt.quant.zero_point[0])
    corr = conv_folded_bias(op)
    te, tir = L.te, L.tir
    xd = np_dtype(xt)
    opg = o // g
    if kernel.startswith("depthwise-"):  # a row kernel over the NCHW input, no padded copy
        from .rows import depthwise_conv, depthwise_conv_planes

        rt = op.result.type
        zy, lo, hi = requant_params(op)
        bias = op.operands[2].const_value.astype(np.int32) if b is not None else np.zeros(o, np.int32)
        # small planes: one vector run per tap over the whole plane; wide rows: row vectors, no plane copy
        fn = depthwise_conv_planes if kernel == "depthwise-planes" else depthwise_conv
        func = fn(xt.shape, rt.shape, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw), xd, zx, np_dtype(rt), zy, lo, hi)
        args = [x, L.const(np.ascontiguousarray(weight.reshape(o, kh, kw).astype(np.int32))), L.const(bias),
                L.const(multipliers(op, o))]
        return L.call_tir(func, "lowbit_qconv2d_depthwise", args, rt.shape, np_dtype(rt))
    if kernel == "dot4":
        return qconv2d_dot4(L, op, x, weight, corr)

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
        return te.compute((n, o, oh, ow), lambda i, f, y, z: requant_body(
            L, op, acc[i, f, y, z] + Cr[f], M[f]), name="requantize")
    wp = weight.astype(np.int8)
    wp = np.ascontiguousarray(wp.transpose(1, 2, 3, 0)) if g == 1 else wp
    return L.te_(fn, x, L.const(wp), L.const(corr.astype(np.int32)), L.const(multipliers(op, o)),
                 name="lowbit_qconv2d")


def qconv2d_dot4(L, op, x, weight: np.ndarray, corr: np.ndarray):
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
            axis=[rc, ry, rx, rk]), name="qconv2d_dot4", attrs={ROLE: "dot4"})
        return te.compute((n, o, oh, ow), lambda i, f, y, z: requant_body(
            L, op, acc[i, f // 16, y, z, f % 16] + Cr[f], M[f]), name="requantize", attrs={ROLE: "epilogue"})
    return L.te_(fn, x, L.const(wp), L.const(corr.astype(np.int32)), L.const(multipliers(op, o)),
                 name="lowbit_qconv2d_dot4")


def dynamic_weights(op):
    """(i8 weight [K, N], f32 scales [N], i32 column sums [N]) of a qmatmul_dynamic."""
    weight = op.operands[1].const_value
    sw = np.broadcast_to(op.operands[1].type.quant.scale_array().astype(np.float32), (weight.shape[1],))
    return weight, sw, weight.astype(np.int32).sum(axis=0).astype(np.int32)


def dynamic_params(L, op):
    """The input's run-time u8 scales and zero points (Relax values), per tensor or per row."""
    relax = L.relax
    pv = L.emit(L.te_(dynamic_u8_params_te(L, op.operands[0].type, op.attrs["per_row"]), L.get(op.operands[0]),
                      name="lowbit_dynamic_params"))
    return L.emit(relax.TupleGetItem(pv, 0)), L.emit(relax.TupleGetItem(pv, 1))


def qmatmul_dynamic(L, op):
    """Dynamic quantization, as the reference: the input's range (with 0) over all its elements or over each row,
    u8 parameters, the quantized input, an exact integer matmul (zero point folded per column), f32 rescaling."""
    x = L.get(op.operands[0])
    b = L.get(op.operands[2]) if len(op.operands) > 2 else None

    xt = op.operands[0].type
    weight, sw, wsum = dynamic_weights(op)
    k, nn = weight.shape
    shape = op.result.type.shape
    per_row = op.attrs["per_row"]
    sc, zp = dynamic_params(L, op)
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


def dynamic_u8_params_te(L, xt, per_row: bool):
    """TE: the input's u8 scales and zero points ([1], or [rows] per row of the last axis), as onnxruntime's
    DynamicQuantizeLinear computes them (the range widened to include 0)."""
    te, tir = L.te, L.tir
    f32 = "float32"
    lead, k = xt.shape[:-1], xt.shape[-1]
    rows = int(np.prod(lead)) if per_row else 1

    def params(X):
        if per_row:
            from .amx import unravel

            rk, sk = te.reduce_axis((0, k), "rk"), te.reduce_axis((0, k), "sk")
            mn = te.compute((rows,), lambda i: te.min(X[tuple(unravel(i, lead)) + (rk,)], axis=[rk]), name="dyn_min")
            mx = te.compute((rows,), lambda i: te.max(X[tuple(unravel(i, lead)) + (sk,)], axis=[sk]), name="dyn_max")
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


def qmatmul(L, op):
    """Integer matmul by a constant [K, N], the same folding and requantization as qconv2d."""
    x = L.get(op.operands[0])
    weight = op.operands[1].const_value.astype(np.int32)
    k, nn = weight.shape
    corr = matmul_folded_bias(op)
    shape = op.result.type.shape
    te = L.te

    def fn(X, W, Cr, M):
        r = te.reduce_axis((0, k), "k")
        acc = te.compute(shape, lambda *i: te.sum(X[i[:-1] + (r,)].astype("int32") * W[r, i[-1]].astype("int32"),
                                                  axis=[r]), name="qmatmul_acc")
        return te.compute(shape, lambda *i: requant_body(L, op, acc[i] + Cr[i[-1]], M[i[-1]]), name="requantize")
    return L.te_(fn, x, L.const(weight.astype(np.int8)), L.const(corr.astype(np.int32)),
                 L.const(multipliers(op, nn)), name="lowbit_qmatmul")


@rule("quantize")
def _quantize(L, op, x):
    return quantize_expr(L, x, op.result.type)


@rule("dequantize")
def _dequantize(L, op, q):
    return dequantize_expr(L, q, op.operands[0].type)


@rule("requantize")
def _requantize(L, op, q):
    return quantize_expr(L, L.emit(dequantize_expr(L, q, op.operands[0].type)), op.result.type)
