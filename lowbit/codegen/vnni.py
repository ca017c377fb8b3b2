"""Convolutions on AVX-512 dot-product registers, in NHWC: hand-written TIR around ``vpdpbusd`` (AVX-512 VNNI,
u8 x i8 -> i32) or ``vdpbf16ps`` (AVX512-BF16, bf16 x bf16 -> f32). A ``VecDot`` names the instruction and its
element types; the layouts are the same for both (a 32-bit word holds 4 u8 or a bf16 pair).

``vpdpbusd`` adds, to each of 16 i32 lanes, the dot product of 4 u8 with 4 i8 (``vdpbf16ps``: to each f32 lane,
2 bf16 products). The kernel keeps a register
tile of ``rows`` output pixels (consecutive across rows and images) x ``vecs`` 16-channel vectors of i32 accumulators; each step loads the ``vecs``
weight vectors of one tap's 4 input channels (64 bytes: 16 output channels x 4) once and, for every pixel of
the tile, broadcasts that pixel's 4 input bytes (one 32-bit word) and issues ``vecs`` vpdpbusd. The input is
the zero-point-padded NHWC map (channels padded to a multiple of 4: those weigh 0), so the sum over taps and
channels is an implicit convolution with no bounds checks; a 1x1 stride-1 conv of NHWC pixels whose channel
count is a multiple of 4 reads the pixels in place. The epilogue requantizes each accumulator vector
(``lrint(f32(acc + corr) * m) + zy``, clamped) straight into the output pixel's channels: the result is NHWC.
bf16 (``VDPBF16PS``): the input is NHWC bf16 bits (u16, channels padded to 2), the epilogue adds the bias (and
applies relu), and the result is NHWC f32.

TVM 0.27 cannot emit ``vdpbf16ps``: its bf16 legalization turns the intrinsic's ``<32 x bfloat>`` operands
into f32 vectors. The kernel calls a three-line LLVM IR function instead (``BF16_IR``: bitcast i32 words to
bfloat pairs, call the intrinsic), which TVM links into the module (``pragma_import_llvm``) and LLVM inlines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ACCUMULATORS = 24  # of 32 zmm registers: the rest hold the weight vectors and the broadcast word


@dataclass(frozen=True)
class VecDot:
    """A 16-lane dot-product instruction: ``pack`` input elements per 32-bit word, their types, the lanes'."""

    instr: str
    x: str  # input elements
    w: str  # weight elements
    acc: str  # accumulator lanes
    pack: int  # elements per 32-bit word


VPDPBUSD = VecDot("vpdpbusd", "uint8", "int8", "int32", 4)  # AVX-512 VNNI: exact i32 sums of u8 x i8
VDPBF16PS = VecDot("vdpbf16ps", "uint16", "uint16", "float32", 2)  # AVX512-BF16: bf16 bits, f32 sums

BF16_FUNC = "lowbit_vdpbf16ps"
BF16_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define linkonce_odr <16 x float> @{BF16_FUNC}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}}
attributes #0 = {{ alwaysinline nounwind memory(none) }}
"""


def register_tile(o16: int, pixels: int, rows: int) -> tuple[int, int]:
    """(pixels, vectors) of the accumulator tile: up to 4 channel vectors, as many pixels as fit beside them
    (at most ``rows`` and the output's pixel count)."""
    vecs = max(v for v in (4, 3, 2, 1) if (o16 // 16) % v == 0)
    px = max(1, min(rows, pixels, MAX_ACCUMULATORS // vecs))
    return px, vecs


def pack_weights(weight: np.ndarray, cp: int, pack: int = 4) -> np.ndarray:
    """[O, C, KH, KW] -> [O16 / 16, KH, KW, cp / pack, 16, pack] (O16: O padded to 16; channels past C weigh 0):
    for each 16-channel slice and tap, cp / pack vectors of (16 output channels x ``pack`` consecutive input
    channels). i8 weights for VNNI (pack 4), bf16 bits (u16) for AVX512-BF16 (pack 2)."""
    o, c, kh, kw = weight.shape
    o16 = (o + 15) // 16 * 16
    w = np.zeros((o16, kh, kw, cp), weight.dtype)
    w[:o, ..., :c] = weight.transpose(0, 2, 3, 1)
    w = w.reshape(o16 // 16, 16, kh, kw, cp // pack, pack)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 4, 1, 5))


def conv_func(n: int, hp: int, wp: int, cp: int, o: int, kh: int, kw: int, oh: int, ow: int, strides, dilations,
              zy: int = 0, lo: int = 0, hi: int = 255, out_dtype: str = "uint8", rows: int = 6, tasks: int = 16,
              dynamic: bool = False, per_row: bool = False, dot: VecDot = VPDPBUSD, relu: bool = False):
    """A PrimFunc (X [n, hp, wp, cp] u8, W packed i8, then the epilogue's constants) -> Y [n, oh, ow, o].

    Static (requantize): constants corr [o16] i32 and mult [o16] f32;
    Y = saturate(round_half_even(f32(acc + corr) * mult) + zy) clamped to [lo, hi], acc the exact i32 sum of
    x * w over the taps of the padded input (whose padding holds the input's zero point: corr carries
    -zx * sum(w) and the bias). ``dynamic`` (rescale, f32 out): constants zp [rows or 1] i32 and scale
    [rows or 1] f32 of the input (per output pixel with ``per_row``), wsum, wscale and bias [o16] f32;
    Y = f32(acc - zp * wsum) * (scale * wscale) + bias, one rounding (a fused multiply-add).
    bf16 (``dot=VDPBF16PS``): X and W bf16 bits (u16), constant bias [o16] f32; Y f32 = acc + bias (max 0 with
    ``relu``), acc the f32 sum of the exact bf16 products."""
    from tvm.script import tirx as T

    from .intrinsics import lrint

    sh, sw = strides
    dh, dw = dilations
    o16 = (o + 15) // 16 * 16
    m = n * oh * ow  # output pixels, taken in tiles of ``px`` across rows and images
    px, vecs = register_tile(o16, m, rows)
    pk = dot.pack
    kc = cp // pk  # steps (one 32-bit word of ``pk`` channels) per tap
    nvb = o16 // 16 // vecs  # channel blocks of ``vecs`` vectors
    tiles = -(-m // px)  # (a last tile ends at the last pixel, recomputing some)
    groups = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups)  # tiles per task
    groups = -(-tiles // size)
    step = 16 * pk  # weight elements per step: 16 output channels x pk
    wstride = kh * kw * kc * step  # weight elements per 16-output-channel slice
    bf16 = dot is VDPBF16PS
    f32 = "float32"
    prm = m if per_row else 1

    def pixel(task, i, p):  # the flat output pixel of tile i's p-th pixel
        return T.min((task // nvb * size + i) * px, m - px) + p

    def ch(task, v):  # first output channel of the task's v-th vector
        return (task % nvb * vecs + v) * 16

    def word(X, q, r, s, k):  # the pk input elements (one i32) of output pixel q at tap (r, s), step k
        img, yy, xx = q // (oh * ow), q // ow % oh, q % ow
        off = ((img * hp + yy * sh + r * dh) * wp + xx * sw + s * dw) * cp + k * pk
        words = T.broadcast(T.reinterpret("int32", X.vload([off], f"{dot.x}x{pk}")), 16)
        return words if bf16 else T.reinterpret("int8x64", words)

    def wvec(W, task, v, r, s, k):
        vec = W.vload([(task % nvb * vecs + v) * wstride + ((r * kw + s) * kc + k) * step], f"{dot.w}x{step}")
        return T.reinterpret("int32x16", vec) if bf16 else vec

    def dot_step(a, x, w):
        if bf16:
            return T.call_extern("float32x16", BF16_FUNC, a, x, w)
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                                       a, x, w)

    def requant(C, a, q, c):
        corr, mult = C
        return T.Cast(out_dtype, T.max(T.min(lrint(T.Cast(f32, a + corr[c]) * mult[c]) + zy, hi), lo))

    def rescale(C, a, q, c):
        zp, sc, wsum, ws, bias = C
        r = q if per_row else 0
        return T.Cast(f32, a - zp[r] * wsum[c]) * (sc[r] * ws[c]) + bias[c]

    def biased(C, a, q, c):
        v = a + C[0][c]
        return T.max(v, T.float32(0)) if relu else v

    value = biased if bf16 else rescale if dynamic else requant

    @T.macro
    def body(X, W, Y, C, acc, task):
        for i in range(size):
            if task // nvb * size + i < tiles:
                for q in T.unroll(px * vecs):
                    acc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.Cast(dot.acc, 0), 16)
                for r, s, k in T.grid(kh, kw, kc):
                    for p in T.unroll(px):
                        for v in T.unroll(vecs):
                            acc[T.ramp((p * vecs + v) * 16, 1, 16)] = dot_step(
                                acc[T.ramp((p * vecs + v) * 16, 1, 16)], word(X, pixel(task, i, p), r, s, k),
                                wvec(W, task, v, r, s, k))
                for p in T.unroll(px):
                    for v in T.unroll(vecs):
                        if ch(task, v) + 16 <= o:
                            for j in T.vectorized(16):
                                Y[pixel(task, i, p) * o + ch(task, v) + j] = value(
                                    C, acc[(p * vecs + v) * 16 + j], pixel(task, i, p), ch(task, v) + j)
                        elif ch(task, v) < o:
                            for j in range(o % 16):
                                Y[pixel(task, i, p) * o + ch(task, v) + j] = value(
                                    C, acc[(p * vecs + v) * 16 + j], pixel(task, i, p), ch(task, v) + j)

    if bf16:
        @T.prim_func
        def func(XP: T.Buffer((n, hp, wp, cp), "uint16"), WP: T.Buffer((o16 // 16, kh, kw, kc, 16, 2), "uint16"),
                 BIAS: T.Buffer((o16,), f32), YP: T.Buffer((n, oh, ow, o), f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((n * hp * wp * cp,), "uint16", data=XP.data)
            W = T.decl_buffer((o16 // 16 * wstride,), "uint16", data=WP.data)
            Y = T.decl_buffer((m * o,), f32, data=YP.data)
            with T.attr(T.int32(0), "pragma_import_llvm", BF16_IR):  # the vdpbf16ps function (see above)
                for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
                    acc = T.decl_buffer((px * vecs * 16,), f32, scope="local")
                    body(X, W, Y, (BIAS,), acc, task)
        return func

    if dynamic:
        @T.prim_func
        def func(XP: T.Buffer((n, hp, wp, cp), "uint8"), WP: T.Buffer((o16 // 16, kh, kw, kc, 16, 4), "int8"),
                 ZP: T.Buffer((prm,), "int32"), SC: T.Buffer((prm,), f32), WSUM: T.Buffer((o16,), "int32"),
                 WS: T.Buffer((o16,), f32), BIAS: T.Buffer((o16,), f32), YP: T.Buffer((n, oh, ow, o), f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((n * hp * wp * cp,), "uint8", data=XP.data)
            W = T.decl_buffer((o16 // 16 * wstride,), "int8", data=WP.data)
            Y = T.decl_buffer((m * o,), f32, data=YP.data)
            for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
                acc = T.decl_buffer((px * vecs * 16,), "int32", scope="local")
                body(X, W, Y, (ZP, SC, WSUM, WS, BIAS), acc, task)
        return func

    @T.prim_func
    def func(XP: T.Buffer((n, hp, wp, cp), "uint8"), WP: T.Buffer((o16 // 16, kh, kw, kc, 16, 4), "int8"),
             CORR: T.Buffer((o16,), "int32"), MULT: T.Buffer((o16,), f32), YP: T.Buffer((n, oh, ow, o), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((n * hp * wp * cp,), "uint8", data=XP.data)
        W = T.decl_buffer((o16 // 16 * wstride,), "int8", data=WP.data)
        Y = T.decl_buffer((m * o,), out_dtype, data=YP.data)
        for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
            acc = T.decl_buffer((px * vecs * 16,), "int32", scope="local")
            body(X, W, Y, (CORR, MULT), acc, task)
    return func


__all__ = ["VecDot", "VPDPBUSD", "VDPBF16PS", "conv_func", "pack_weights", "register_tile"]
