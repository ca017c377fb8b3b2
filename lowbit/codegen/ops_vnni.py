"""Integer convolutions and matmuls on AVX-512 VNNI (NHWC): how qconv2d, qmatmul and qmatmul_dynamic call ``vnni.py``'s TIR kernel (the input padded
with its zero point into NHWC — in place for a 1x1 conv of NHWC pixels — weights packed, the requantization
constants from the quantization scheme). ``kernels.py`` decides when it applies (``avx512_vnni``)."""
from __future__ import annotations

import numpy as np

from . import amx, vnni
from .lowering import np_dtype
from .ops_int import (conv_folded_bias, dynamic_params, dynamic_weights, matmul_folded_bias, multipliers,
                      requant_params)


def qconv2d(L, op):
    """qconv2d (u8 input, groups 1) -> NHWC result, on VNNI registers."""
    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o, _, kh, kw = weight.shape
    _, _, oh, ow = rt.shape
    pt, pl, pb, pr = a["pads"]
    zx = int(xt.quant.zero_point[0])
    cp = (c + 3) // 4 * 4
    hp, wp = h + pt + pb, wd + pl + pr
    x_nhwc = L.is_nhwc(op.operands[0])
    te, tir = L.te, L.tir
    if x_nhwc and cp == c and not any(a["pads"]):  # the NHWC pixels themselves
        xp = L.get_nhwc(op.operands[0])
    elif not x_nhwc and c <= 4:  # a narrow (RGB) NCHW input: one word per pixel
        f = amx.pixel_words_func(n, c, h, wd, hp, wp, pt, pl, zx)
        xp = L.call_tir(f, "lowbit_vnni_pixel_words", [L.get(op.operands[0])], (n, hp, wp, 4), "uint8")
    else:
        x = L.get_nhwc(op.operands[0]) if x_nhwc else L.get(op.operands[0])

        def pad(X):
            def at(i, y, z, k):
                yy, zz, kk = tir.max(tir.min(y - pt, h - 1), 0), tir.max(tir.min(z - pl, wd - 1), 0), tir.min(k, c - 1)
                return tir.if_then_else(tir.all(k < c, y >= pt, y < h + pt, z >= pl, z < wd + pl),
                                        X[i, yy, zz, kk] if x_nhwc else X[i, kk, yy, zz], tir.const(zx, "uint8"))
            return te.compute((n, hp, wp, cp), at, name="pad_nhwc")
        xp = L.te_(pad, x, name="lowbit_vnni_input")
    zy, lo, hi = requant_params(op)
    func = vnni.conv_func(n, hp, wp, cp, o, kh, kw, oh, ow, a["strides"], a["dilations"], zy, lo, hi, np_dtype(rt),
                          rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op))
    o16 = (o + 15) // 16 * 16
    args = [xp, L.const(vnni.pack_weights(weight.astype(np.int8), cp)),
            L.const(np.pad(conv_folded_bias(op).astype(np.int32), (0, o16 - o))),
            L.const(np.pad(multipliers(op, o), (0, o16 - o)))]
    return L.call_tir(func, "lowbit_qconv2d_vnni", args, (n, oh, ow, o), np_dtype(rt))


def _rows(L, op, x, k: int, kp: int, zero: int):
    """The matmul input's rows as the [1, 1, M, kp] map ``vnni.conv_func`` reads: the input itself (a reshape)
    when K is a multiple of 4, else a copy with ``zero`` in the padding columns (which weigh 0)."""
    m = int(np.prod(op.operands[0].type.shape[:-1]))
    if kp == k:
        return L.emit(L.R.reshape(x, (1, 1, m, k)))
    shape = op.operands[0].type.shape
    te, tir = L.te, L.tir

    def fn(X):
        return te.compute((1, 1, m, kp), lambda a, b, i, j: tir.if_then_else(
            j < k, X[tuple(amx.unravel(i, shape[:-1])) + (tir.min(j, k - 1),)], tir.const(zero, X.dtype)),
            name="pad_rows")
    return L.te_(fn, x, name="lowbit_vnni_rows")


def qmatmul(L, op):
    """qmatmul (u8 input) on VNNI registers: the rows as a 1 x M image of K-channel pixels, a 1x1 conv."""
    xt, rt = op.operands[0].type, op.result.type
    weight = op.operands[1].const_value.astype(np.int8)
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    kp = (k + 3) // 4 * 4
    xr = _rows(L, op, L.get(op.operands[0]), k, kp, int(xt.quant.zero_point[0]))
    zy, lo, hi = requant_params(op)
    func = vnni.conv_func(1, 1, m, kp, nn, 1, 1, 1, m, (1, 1), (1, 1), zy, lo, hi, np_dtype(rt),
                          rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op))
    n16 = (nn + 15) // 16 * 16
    args = [xr, L.const(vnni.pack_weights(weight.T.reshape(nn, k, 1, 1), kp)),
            L.const(np.pad(matmul_folded_bias(op).astype(np.int32), (0, n16 - nn))),
            L.const(np.pad(multipliers(op, nn), (0, n16 - nn)))]
    y = L.emit(L.call_tir(func, "lowbit_qmatmul_vnni", args, (1, 1, m, nn), np_dtype(rt)))
    return L.R.reshape(y, rt.shape)


def qmatmul_dynamic(L, op, rows_pass: bool):
    """qmatmul_dynamic on VNNI registers: the input quantized to u8 rows (per row: range, parameters and rows in
    one pass), then ``vnni.conv_func``'s rescale epilogue (one rounding, as the reference)."""
    from tvm import relax

    xt, rt = op.operands[0].type, op.result.type
    weight, sw, wsum = dynamic_weights(op)
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    kp = (k + 3) // 4 * 4
    per_row = op.attrs["per_row"]
    x = L.get(op.operands[0])
    te, tir = L.te, L.tir
    if rows_pass:
        f = amx.dynamic_rows_func(xt.shape, m, k, m, kp)
        t = L.emit(relax.call_tir(L.add_func(f, "lowbit_dynamic_quantize_rows"), relax.Tuple([x]),
                                  [relax.TensorType((m, kp), "uint8"), relax.TensorType((m,), "float32"),
                                   relax.TensorType((m,), "int32")]))
        xq, sc, zp = (L.emit(relax.TupleGetItem(t, i)) for i in range(3))
    else:
        sc, zp = dynamic_params(L, op)

        def quant(X, SC, ZP):
            def at(i, j):
                idx = tuple(amx.unravel(i, xt.shape[:-1])) + (tir.min(j, k - 1),)
                q = tir.max(tir.min(tir.nearbyint(X[idx] / SC[0]).astype("int32") + ZP[0], 255), 0).astype("uint8")
                return tir.if_then_else(j < k, q, tir.const(0, "uint8"))
            return te.compute((m, kp), at, name="dyn_quantize")
        xq = L.emit(L.te_(quant, x, sc, zp, name="lowbit_dynamic_quantize"))
    n16 = (nn + 15) // 16 * 16
    bias = op.operands[2].const_value.astype(np.float32) if len(op.operands) > 2 else np.zeros(nn, np.float32)
    func = vnni.conv_func(1, 1, m, kp, nn, 1, 1, 1, m, (1, 1), (1, 1), rows=L.knob("vnni_pixels", op),
                          tasks=L.knob("vnni_tasks", op), dynamic=True, per_row=per_row)
    args = [L.emit(L.R.reshape(xq, (1, 1, m, kp))),
            L.const(vnni.pack_weights(weight.astype(np.int8).T.reshape(nn, k, 1, 1), kp)), zp, sc,
            L.const(np.pad(wsum, (0, n16 - nn))), L.const(np.pad(np.ascontiguousarray(sw), (0, n16 - nn))),
            L.const(np.pad(bias, (0, n16 - nn)))]
    y = L.emit(L.call_tir(func, "lowbit_qmatmul_dynamic_vnni", args, (1, 1, m, nn), "float32"))
    return L.R.reshape(y, rt.shape)
