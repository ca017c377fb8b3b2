"""bf16 ops: conv2d_bf16 and matmul_bf16 (f32 input rounded to bf16, bf16 weight, f32 sums and result).

On AMX-BF16 targets they run on tiles (``amx.py`` with ``amx.BF16``): the input rounded to bf16 bits (u16) and
laid out as the tiles read it in the same pass — padded NHWC for a convolution (whose result is NHWC f32, so
a residual add or relu after it stays NHWC), rows padded to 32 for a matmul — weights packed at compile time,
bias and relu in the epilogue. On AVX512-BF16 targets without AMX (Zen 4) the same layouts feed ``vnni.py``'s
register-tiled kernel with ``vdpbf16ps`` (channels padded to 2, a matmul as a 1x1 convolution over its rows).
Elsewhere the generic kernels compute the same products in f32 (a bf16 x bf16
product is exact in f32): the input rounded to bf16 values, the weight as f32, the float convolution or
matmul. ``kernels.py`` decides which applies.
"""
from __future__ import annotations

import numpy as np

from . import amx, ops_amx, vnni
from .lowering import padded_bias, rule


def bf16_bits(tir, v):
    """The bf16 bits (u16) of f32 ``v``, rounded to nearest, ties to even (as ml_dtypes); a NaN stays a (quiet)
    NaN, a finite value past bf16's range becomes an infinity."""
    u = tir.reinterpret("uint32", v)
    rounded = (u + tir.const(0x7FFF, "uint32") + ((u >> tir.const(16, "uint32")) & tir.const(1, "uint32"))) \
        >> tir.const(16, "uint32")
    nan = (u & tir.const(0x7FFFFFFF, "uint32")) > tir.const(0x7F800000, "uint32")
    quiet = (u >> tir.const(16, "uint32")) | tir.const(0x40, "uint32")
    return tir.Cast("uint16", tir.if_then_else(nan, quiet, rounded))


def bf16_round(tir, v):
    """f32 ``v`` rounded to a bf16 value, as f32."""
    return tir.reinterpret("float32", tir.Cast("uint32", bf16_bits(tir, v)) << tir.const(16, "uint32"))


def weight_bits(op) -> np.ndarray:
    """The op's bf16 weight as its uint16 bits."""
    return np.ascontiguousarray(op.operands[1].const_value).view(np.uint16)


def _relu(op) -> bool:
    return op.attrs["activation"] == "relu"


# -- AMX-BF16 -------------------------------------------------------------------------------------------------------
def _padded_bits(L, op, p):
    """The conv's f32 input rounded to bf16 bits and laid out padded NHWC [n, hp, wp, cpix] (``ops_amx.nhwc_te``);
    padding and channels past the input's are 0 (they weigh 0 too)."""
    tir = L.tir
    return ops_amx.nhwc_te(L, op, p.hp, p.wp, p.cpix, lambda v: bf16_bits(tir, v), tir.const(0, "uint16"),
                           "bf16_nhwc", "lowbit_bf16_input")


def conv2d_amx(L, op):
    """conv2d_bf16 (groups 1) on AMX-BF16 tiles; the result is NHWC f32."""
    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    o, _, kh, kw = op.operands[1].type.shape
    _, _, oh, ow = rt.shape
    p = amx.Plan(c, h, wd, oh, ow, kh, kw, a["pads"], a["strides"], a["dilations"], amx.BF16)
    func = amx.conv_func(n, p, o, kh, oh, ow, a["strides"], a["dilations"], nhwc=True,
                         tasks=L.knob("amx_tasks", op), relu=_relu(op))
    o16 = (o + 15) // 16 * 16
    args = [_padded_bits(L, op, p), L.const(p.pack_weights(weight_bits(op))), L.const(padded_bias(op, o, o16))]
    return L.call_tir(func, "lowbit_conv2d_bf16_amx", args, (n, oh, ow, o), "float32")


def matmul_amx(L, op):
    """matmul_bf16 on AMX-BF16 tiles: the input's rows rounded to bf16 bits, padded to kp (a multiple of 32)
    columns and, between 17 and 31 rows, to 32 rows (zeros weigh 0)."""
    xt, rt = op.operands[0].type, op.result.type
    k, nn = op.operands[1].type.shape
    shape = xt.shape
    m = int(np.prod(shape[:-1]))
    mp = m if m <= 16 or m >= 32 else 32
    kp = -(-k // amx.BF16.k) * amx.BF16.k
    te, tir = L.te, L.tir

    def fn(X):
        def at(i, j):
            v = X[tuple(amx.unravel(tir.min(i, m - 1), shape[:-1])) + (tir.min(j, k - 1),)]
            return tir.if_then_else(tir.all(i < m, j < k), bf16_bits(tir, v), tir.const(0, "uint16"))
        return te.compute((mp, kp), at, name="bf16_rows")
    rows = L.te_(fn, L.get(op.operands[0]), name="lowbit_bf16_rows")
    func = amx.matmul_func((mp, kp), rt.shape, mp, kp, nn, False, True, tasks=L.knob("amx_tasks", op),
                           dot=amx.BF16, relu=_relu(op))
    args = [rows, L.const(amx.pack_matmul_weights(weight_bits(op), kp, amx.BF16)), L.const(padded_bias(op, nn, nn))]
    return L.call_tir(func, "lowbit_matmul_bf16_amx", args, rt.shape, "float32")


# -- AVX512-BF16 ------------------------------------------------------------------------------------------------------
def conv2d_avx512(L, op):
    """conv2d_bf16 (groups 1) on AVX512-BF16 registers (``vnni.conv_func`` with ``VDPBF16PS``): the input rounded
    to bf16 bits in padded NHWC (channels padded to 2, weighing 0); the result is NHWC f32."""
    a = op.attrs
    n, c, h, wd = op.operands[0].type.shape
    o, _, kh, kw = op.operands[1].type.shape
    _, _, oh, ow = op.result.type.shape
    pt, pl, pb, pr = a["pads"]
    cp, hp, wp = c + c % 2, h + pt + pb, wd + pl + pr
    x = ops_amx.nhwc_te(L, op, hp, wp, cp, lambda v: bf16_bits(L.tir, v), L.tir.const(0, "uint16"), "bf16_nhwc",
                        "lowbit_bf16_input")
    func = vnni.conv_func(n, hp, wp, cp, o, kh, kw, oh, ow, a["strides"], a["dilations"],
                          rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op), dot=vnni.VDPBF16PS,
                          relu=_relu(op))
    args = [x, L.const(vnni.pack_weights(weight_bits(op), cp, vnni.VDPBF16PS)),
            L.const(padded_bias(op, o, vnni.VDPBF16PS.padded(o)))]
    return L.call_tir(func, "lowbit_conv2d_bf16_avx512", args, (n, oh, ow, o), "float32")


def matmul_avx512(L, op):
    """matmul_bf16 on AVX512-BF16 registers: the rows rounded to bf16 bits as a 1 x M image of kp-channel
    pixels (K padded to 2 with zeros, which weigh 0), a 1x1 convolution."""
    xt, rt = op.operands[0].type, op.result.type
    k, nn = op.operands[1].type.shape
    shape = xt.shape
    m = int(np.prod(shape[:-1]))
    kp = k + k % 2
    te, tir = L.te, L.tir

    def fn(X):
        def at(a, b, i, j):
            v = X[tuple(amx.unravel(i, shape[:-1])) + (tir.min(j, k - 1),)]
            return tir.if_then_else(j < k, bf16_bits(tir, v), tir.const(0, "uint16"))
        return te.compute((1, 1, m, kp), at, name="bf16_rows")
    rows = L.te_(fn, L.get(op.operands[0]), name="lowbit_bf16_rows")
    func = vnni.conv_func(1, 1, m, kp, nn, 1, 1, 1, m, (1, 1), (1, 1), rows=L.knob("vnni_pixels", op),
                          tasks=L.knob("vnni_tasks", op), dot=vnni.VDPBF16PS, relu=_relu(op))
    w = weight_bits(op).T.reshape(nn, k, 1, 1)
    args = [rows, L.const(vnni.pack_weights(w, kp, vnni.VDPBF16PS)),
            L.const(padded_bias(op, nn, vnni.VDPBF16PS.padded(nn)))]
    y = L.emit(L.call_tir(func, "lowbit_matmul_bf16_avx512", args, (1, 1, m, nn), "float32"))
    return L.R.reshape(y, rt.shape)


# -- generic: the same products in f32 --------------------------------------------------------------------------------
def _rounded(L, x):
    return L.te_(lambda X: L.te.compute(X.shape, lambda *i: bf16_round(L.tir, X[i]), name="bf16_round"), x,
                 name="lowbit_bf16_round")


def _activate(L, op, y):
    return L.R.nn.relu(L.emit(y)) if _relu(op) else y


@rule("conv2d_bf16")
def _conv2d_bf16(L, op, x, w, b=None):
    a = op.attrs
    wf = L.const(op.operands[1].const_value.astype(np.float32))
    y = L.R.nn.conv2d(_rounded(L, x), wf, strides=a["strides"], padding=a["pads"], dilation=a["dilations"],
                      groups=a["groups"])
    if b is not None:
        y = L.R.add(L.emit(y), L.R.reshape(b, [1, -1, 1, 1]))
    return _activate(L, op, y)


@rule("matmul_bf16")
def _matmul_bf16(L, op, x, w, b=None):
    y = L.R.matmul(_rounded(L, x), L.const(op.operands[1].const_value.astype(np.float32)))
    if b is not None:
        y = L.R.add(L.emit(y), b)
    return _activate(L, op, y)


__all__ = ["bf16_bits", "bf16_round", "conv2d_amx", "conv2d_avx512", "matmul_amx", "matmul_avx512", "weight_bits"]
