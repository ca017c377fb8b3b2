"""Integer convolutions and matmuls on AVX-512 VNNI or AVX-VNNI (NHWC): how qconv2d, qmatmul and qmatmul_dynamic
call ``vnni.py``'s TIR kernel (the input padded with its zero point into NHWC — in place for a 1x1 conv of NHWC
pixels — weights packed, the requantization constants from the quantization scheme). ``dot`` is
``vnni.VPDPBUSD`` (zmm) or ``vnni.VPDPBUSD_256`` (ymm); ``kernels.py`` decides which applies (``avx512_vnni``,
``avx_vnni``)."""
from __future__ import annotations

import numpy as np

from . import amx, ops_amx, vnni
from .lowering import np_dtype
from .ops_int import conv_folded_bias, dynamic_weights, matmul_folded_bias, multipliers, requant_params


def qconv2d(L, op, dot=vnni.VPDPBUSD):
    """qconv2d (u8 input, groups 1) -> NHWC result, on VNNI registers."""
    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o, _, kh, kw = weight.shape
    _, _, oh, ow = rt.shape
    pt, pl, pb, pr = a["pads"]
    cp = (c + 3) // 4 * 4
    hp, wp = h + pt + pb, wd + pl + pr
    if L.is_nhwc(op.operands[0]) and cp == c and not any(a["pads"]):  # the NHWC pixels themselves
        xp = L.get_nhwc(op.operands[0])
    else:
        xp = ops_amx.padded_nhwc(L, op, hp, wp, cp, "lowbit_vnni")
    zy, lo, hi = requant_params(op)
    func = vnni.conv_func(n, hp, wp, cp, o, kh, kw, oh, ow, a["strides"], a["dilations"], zy, lo, hi, np_dtype(rt),
                          rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op), dot=dot)
    o16 = dot.padded(o)
    args = [xp, L.const(vnni.pack_weights(weight.astype(np.int8), cp, dot)),
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


def qmatmul(L, op, dot=vnni.VPDPBUSD):
    """qmatmul (u8 input) on VNNI registers: the rows as a 1 x M image of K-channel pixels, a 1x1 conv."""
    xt, rt = op.operands[0].type, op.result.type
    weight = op.operands[1].const_value.astype(np.int8)
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    kp = (k + 3) // 4 * 4
    xr = _rows(L, op, L.get(op.operands[0]), k, kp, int(xt.quant.zero_point[0]))
    zy, lo, hi = requant_params(op)
    func = vnni.conv_func(1, 1, m, kp, nn, 1, 1, 1, m, (1, 1), (1, 1), zy, lo, hi, np_dtype(rt),
                          rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op), dot=dot)
    n16 = dot.padded(nn)
    args = [xr, L.const(vnni.pack_weights(weight.T.reshape(nn, k, 1, 1), kp, dot)),
            L.const(np.pad(matmul_folded_bias(op).astype(np.int32), (0, n16 - nn))),
            L.const(np.pad(multipliers(op, nn), (0, n16 - nn)))]
    y = L.emit(L.call_tir(func, "lowbit_qmatmul_vnni", args, (1, 1, m, nn), np_dtype(rt)))
    return L.R.reshape(y, rt.shape)


def qmatmul_dynamic(L, op, rows_pass: bool, dot=vnni.VPDPBUSD):
    """qmatmul_dynamic on VNNI registers: the input quantized to u8 rows (``ops_amx.quantized_rows``, K padded
    to 4), then ``vnni.conv_func``'s rescale epilogue (one rounding, as the reference)."""
    xt, rt = op.operands[0].type, op.result.type
    weight, sw, wsum = dynamic_weights(op)
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    kp = (k + 3) // 4 * 4
    per_row = op.attrs["per_row"]
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, kp, rows_pass)
    n16 = dot.padded(nn)
    bias = op.operands[2].const_value.astype(np.float32) if len(op.operands) > 2 else np.zeros(nn, np.float32)
    func = vnni.conv_func(1, 1, m, kp, nn, 1, 1, 1, m, (1, 1), (1, 1), rows=L.knob("vnni_pixels", op),
                          tasks=L.knob("vnni_tasks", op), dynamic=True, per_row=per_row, dot=dot)
    args = [L.emit(L.R.reshape(xq, (1, 1, m, kp))),
            L.const(vnni.pack_weights(weight.astype(np.int8).T.reshape(nn, k, 1, 1), kp, dot)), zp, sc,
            L.const(np.pad(wsum, (0, n16 - nn))), L.const(np.pad(np.ascontiguousarray(sw), (0, n16 - nn))),
            L.const(np.pad(bias, (0, n16 - nn)))]
    y = L.emit(L.call_tir(func, "lowbit_qmatmul_dynamic_vnni", args, (1, 1, m, nn), "float32"))
    return L.R.reshape(y, rt.shape)
