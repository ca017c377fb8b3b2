"""Integer ops on AMX tiles: how qconv2d, qmatmul and qmatmul_dynamic call ``amx.py``'s TIR kernels (inputs
laid out as the tiles read them, weights packed, the requantization constants from the quantization scheme).
``kernels.py`` decides when these apply (targets with ``amx_int8``)."""
from __future__ import annotations

import numpy as np

from . import amx
from .lowering import np_dtype
from .ops_int import conv_folded_bias, dynamic_params, dynamic_weights, matmul_folded_bias, multipliers, requant_params


def matmul_input(L, x, shape, kp: int, zero: int):
    """The u8 input as rows for ``amx.matmul_func`` and their count ``mp``: the input itself (rows of any
    length) when it has up to 16 rows (one tile) or 32 and more, else a copy padded with ``zero`` to 32 rows
    of ``kp`` bytes. Returns (rows, their shape, mp)."""
    m, k = int(np.prod(shape[:-1])), shape[-1]
    if m <= 16 or m >= 32:
        return x, tuple(shape), m
    mp = 32
    te, tir = L.te, L.tir

    def fn(X):
        flat = te.compute((m, k), lambda i, j: X[tuple(amx.unravel(i, shape[:-1])) + (j,)], name="rows")
        return te.compute((mp, kp), lambda i, j: tir.if_then_else(tir.all(i < m, j < k), flat[tir.min(i, m - 1),
                          tir.min(j, k - 1)], tir.const(zero, "uint8")), name="pad_rows")
    return L.te_(fn, x, name="lowbit_amx_rows"), (mp, kp), mp


def padded_nhwc(L, op, hp: int, wp: int, cp: int, prefix: str):
    """qconv2d's u8 input (NCHW, or NHWC where it already is) padded with its zero point and laid out NHWC
    [n, hp, wp, cp]; channels past the input's hold the zero point too (they weigh 0). A narrow NCHW input
    (cp == 4, an RGB stem) becomes one 32-bit word per pixel. The kernels of ``prefix`` name the functions."""
    from tvm import relax

    x_nhwc = L.is_nhwc(op.operands[0])
    x = L.get_nhwc(op.operands[0]) if x_nhwc else L.get(op.operands[0])
    xt = op.operands[0].type
    n, c, h, wd = xt.shape
    pt, pl = op.attrs["pads"][:2]
    zx = int(xt.quant.zero_point[0])
    if not x_nhwc and cp == 4:
        f = amx.pixel_words_func(n, c, h, wd, hp, wp, pt, pl, zx)
        return relax.call_tir(L.add_func(f, f"{prefix}_pixel_words"), relax.Tuple([x]),
                              relax.TensorType((n, hp, wp, 4), "uint8"))
    return nhwc_te(L, op, hp, wp, cp, lambda v: v, L.tir.const(zx, "uint8"), "pad_nhwc", f"{prefix}_input")


def nhwc_te(L, op, hp: int, wp: int, cp: int, convert, pad, stage: str, name: str):
    """A conv's input (NCHW, or NHWC where it already is) laid out padded NHWC [n, hp, wp, cp] by one TE stage:
    ``convert(value)`` inside the input, ``pad`` in the padding and in channels past the input's."""
    x_nhwc = L.is_nhwc(op.operands[0])
    x = L.get_nhwc(op.operands[0]) if x_nhwc else L.get(op.operands[0])
    n, c, h, wd = op.operands[0].type.shape
    pt, pl = op.attrs["pads"][:2]
    te, tir = L.te, L.tir

    def fn(X):
        def at(i, y, z, k):
            yy, zz, kk = tir.max(tir.min(y - pt, h - 1), 0), tir.max(tir.min(z - pl, wd - 1), 0), tir.min(k, c - 1)
            return tir.if_then_else(tir.all(k < c, y >= pt, y < h + pt, z >= pl, z < wd + pl),
                                    convert(X[i, yy, zz, kk] if x_nhwc else X[i, kk, yy, zz]), pad)
        return te.compute((n, hp, wp, cp), at, name=stage)
    return L.te_(fn, x, name=name)


def qconv2d(L, op, y_nhwc: bool = False):
    """qconv2d (u8 input, groups 1) as an AMX kernel: the input padded into NHWC (``padded_nhwc``, channels
    padded to 64), then ``amx.conv_func``, whose result is NCHW or, with ``y_nhwc``, NHWC."""
    weight = op.operands[1].const_value.astype(np.int32)
    corr = conv_folded_bias(op)
    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    strides, dilations = a["strides"], a["dilations"]
    n, c, h, wd = xt.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = rt.shape
    p = amx.Plan(c, h, wd, oh, ow, kh, kw, a["pads"], strides, dilations)
    zy, lo, hi = requant_params(op)
    xp = padded_nhwc(L, op, p.hp, p.wp, p.cpix, "lowbit_amx")
    func = amx.conv_func(n, p, o, kh, oh, ow, strides, dilations, zy, lo, hi, np_dtype(rt), nhwc=y_nhwc,
                         tasks=L.knob("amx_tasks", op))
    o16 = (o + 15) // 16 * 16
    args = [xp, L.const(p.pack_weights(weight)), L.const(np.pad(corr.astype(np.int32), (0, o16 - o))),
            L.const(np.pad(multipliers(op, o), (0, o16 - o)))]
    return L.call_tir(func, "lowbit_qconv2d_amx", args, (n, oh, ow, o) if y_nhwc else (n, o, oh, ow), np_dtype(rt))


def qconv2d_1x1_rows(L, op):
    """A 1x1 stride-1 conv of NHWC pixels is a matmul of their rows, read in place; the result is NHWC."""
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o = weight.shape[0]
    corr = conv_folded_bias(op)
    _, _, oh, ow = rt.shape
    zx = int(xt.quant.zero_point[0])
    kp = -(-c // 64) * 64
    xr, shape_x, mp = matmul_input(L, L.get_nhwc(op.operands[0]), (n, h, wd, c), kp, zx)
    zy, lo, hi = requant_params(op)
    func = amx.matmul_func(shape_x, (n, oh, ow, o), mp, kp, o, False, False, zy, lo, hi, np_dtype(rt),
                           tasks=L.knob("amx_tasks", op))
    o16 = -(-o // 16) * 16
    args = [xr, L.const(amx.pack_matmul_weights(weight.reshape(o, c).T.astype(np.int8), kp)),
            L.const(np.pad(corr.astype(np.int32), (0, o16 - o))),
            L.const(np.pad(multipliers(op, o), (0, o16 - o)))]
    return L.call_tir(func, "lowbit_qconv2d_1x1_amx", args, (n, oh, ow, o), np_dtype(rt))


def qmatmul(L, op):
    """qmatmul (u8 input) on AMX tiles: the input's rows in place (or padded to 32), requantized per column."""
    xt, rt = op.operands[0].type, op.result.type
    weight = op.operands[1].const_value.astype(np.int32)
    k, nn = weight.shape
    zx = int(xt.quant.zero_point[0])
    corr = matmul_folded_bias(op)
    shape = rt.shape
    kp = -(-k // 64) * 64
    xr, shape_x, mp = matmul_input(L, L.get(op.operands[0]), xt.shape, kp, zx)
    zy, lo, hi = requant_params(op)
    func = amx.matmul_func(shape_x, shape, mp, kp, nn, False, False, zy, lo, hi, np_dtype(rt),
                           tasks=L.knob("amx_tasks", op))
    n16 = -(-nn // 16) * 16
    args = [xr, L.const(amx.pack_matmul_weights(weight.astype(np.int8), kp)),
            L.const(np.pad(corr.astype(np.int32), (0, n16 - nn))),
            L.const(np.pad(multipliers(op, nn), (0, n16 - nn)))]
    return L.call_tir(func, "lowbit_qmatmul_amx", args, shape, np_dtype(rt))


def quantized_rows(L, op, mp: int, kp: int, rows_pass: bool):
    """(rows [mp, kp] u8, scale, zero point) of a qmatmul_dynamic's input: quantized with its run-time u8
    parameters, rows past M and columns past K zero. ``rows_pass`` (per-row parameters): range, parameters and
    rows in one pass (``amx.dynamic_rows_func``); otherwise the parameters first (``ops_int.dynamic_params``)."""
    from tvm import relax

    x = L.get(op.operands[0])
    shape = op.operands[0].type.shape
    m, k = int(np.prod(shape[:-1])), shape[-1]
    per_row = op.attrs["per_row"]
    te, tir = L.te, L.tir
    if rows_pass:
        f = amx.dynamic_rows_func(shape, m, k, mp, kp)
        t = L.emit(relax.call_tir(L.add_func(f, "lowbit_dynamic_quantize_rows"), relax.Tuple([x]),
                                  [relax.TensorType((mp, kp), "uint8"), relax.TensorType((m,), "float32"),
                                   relax.TensorType((m,), "int32")]))
        return tuple(L.emit(relax.TupleGetItem(t, i)) for i in range(3))

    def quant(X, SC, ZP):
        def at(i, j):
            r = tir.min(i, m - 1) if per_row else 0
            idx = tuple(amx.unravel(tir.min(i, m - 1), shape[:-1])) + (tir.min(j, k - 1),)
            q = tir.max(tir.min(tir.nearbyint(X[idx] / SC[r]).astype("int32") + ZP[r], 255), 0).astype("uint8")
            return tir.if_then_else(tir.all(i < m, j < k), q, tir.const(0, "uint8"))
        return te.compute((mp, kp), at, name="dyn_quantize")
    sc, zp = dynamic_params(L, op)
    return L.emit(L.te_(quant, x, sc, zp, name="lowbit_dynamic_quantize")), sc, zp


def qmatmul_dynamic(L, op, rows_pass: bool):
    """qmatmul_dynamic on AMX tiles: the quantized input as [M, K] rows (padded to 32 x 64, ``quantized_rows``),
    then ``amx.matmul_func`` (rescale and bias fused into one multiply-add, as the reference rounds once)."""
    b = L.get(op.operands[2]) if len(op.operands) > 2 else None
    weight, sw, wsum = dynamic_weights(op)
    xt = op.operands[0].type
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    mp, kp = -(-m // 32) * 32, -(-k // 64) * 64
    xq, sc, zp = quantized_rows(L, op, mp, kp, rows_pass)
    bias = b if b is not None else L.const(np.zeros(nn, np.float32))
    func = amx.matmul_func((mp, kp), op.result.type.shape, mp, kp, nn, True, b is not None,
                           per_row=op.attrs["per_row"], tasks=L.knob("amx_tasks", op))
    args = [xq, L.const(amx.pack_matmul_weights(weight.astype(np.int8), kp)), zp, sc, L.const(wsum),
            L.const(np.ascontiguousarray(sw)), bias]
    return L.call_tir(func, "lowbit_qmatmul_dynamic_amx", args, op.result.type.shape, "float32")
