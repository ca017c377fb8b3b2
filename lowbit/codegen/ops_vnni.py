"""Integer convolutions on AVX-512 VNNI in NHWC: how qconv2d calls ``vnni.py``'s TIR kernel (the input padded
with its zero point into NHWC — in place for a 1x1 conv of NHWC pixels — weights packed, the requantization
constants from the quantization scheme). ``kernels.py`` decides when it applies (``avx512_vnni``)."""
from __future__ import annotations

import numpy as np

from . import amx, vnni
from .lowering import np_dtype
from .ops_int import conv_folded_bias, multipliers, requant_params


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
