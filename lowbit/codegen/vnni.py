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
AVX-VNNI (``VPDPBUSD_256``, Alder Lake and later, no AVX-512) runs the same kernel on 8-lane ymm registers:
16 of them, so at most 12 accumulators. bf16 (``VDPBF16PS``): the input is NHWC bf16 bits (u16, channels padded to 2), the epilogue adds the bias (and
applies relu), and the result is NHWC f32.

TVM 0.27 cannot emit ``vdpbf16ps``: its bf16 legalization turns the intrinsic's ``<32 x bfloat>`` operands
into f32 vectors. The kernel calls a three-line LLVM IR function instead (``BF16_IR``: bitcast i32 words to
bfloat pairs, call the intrinsic), which TVM links into the module (``pragma_import_llvm``) and LLVM inlines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class VecDot:
    """A dot-product instruction on ``lanes`` 32-bit lanes: ``pack`` input elements per 32-bit word, their types,
    the lanes', and how many accumulators fit in the register file beside the weights and the broadcast word."""

    instr: str
    x: str  # input elements
    w: str  # weight elements
    acc: str  # accumulator lanes
    pack: int  # elements per 32-bit word
    lanes: int = 16
    accumulators: int = 24  # of 32 zmm registers: the rest hold the weight vectors and the broadcast word

    def padded(self, o: int) -> int:
        """``o`` output channels padded to whole vectors."""
        return -(-o // self.lanes) * self.lanes


VPDPBUSD = VecDot("vpdpbusd", "uint8", "int8", "int32", 4)  # AVX-512 VNNI: exact i32 sums of u8 x i8
VPDPBUSD_256 = VecDot("vpdpbusd", "uint8", "int8", "int32", 4, 8, 12)  # AVX-VNNI: the same on 16 ymm registers
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


def register_tile(vectors: int, pixels: int, rows: int, accumulators: int = 24) -> tuple[int, int]:
    """(pixels, vectors) of the accumulator tile, for ``vectors`` output channel vectors: up to 4 channel vectors,
    as many pixels as fit beside them (at most ``rows`` and the output's pixel count)."""
    vecs = max(v for v in (4, 3, 2, 1) if vectors % v == 0)
    px = max(1, min(rows, pixels, accumulators // vecs))
    return px, vecs


def pack_weights(weight: np.ndarray, cp: int, dot: VecDot = VPDPBUSD) -> np.ndarray:
    """[O, C, KH, KW] -> [OP / lanes, KH, KW, cp / pack, lanes, pack] (OP: O padded to whole vectors; channels
    past C weigh 0): for each vector's output channels and tap, cp / pack vectors of (lanes output channels x
    ``pack`` consecutive input channels). i8 weights for VNNI (pack 4), bf16 bits (u16) for AVX512-BF16 (pack 2)."""
    o, c, kh, kw = weight.shape
    ln, pack, op = dot.lanes, dot.pack, dot.padded(o)
    w = np.zeros((op, kh, kw, cp), weight.dtype)
    w[:o, ..., :c] = weight.transpose(0, 2, 3, 1)
    w = w.reshape(op // ln, ln, kh, kw, cp // pack, pack)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 4, 1, 5))


def conv_func(n: int, hp: int, wp: int, cp: int, o: int, kh: int, kw: int, oh: int, ow: int, strides, dilations,
              zy: int = 0, lo: int = 0, hi: int = 255, out_dtype: str = "uint8", rows: int = 6, tasks: int = 16,
              dynamic: bool = False, per_row: bool = False, dot: VecDot = VPDPBUSD, relu: bool = False):
    """A PrimFunc (X [n, hp, wp, cp] u8, W packed i8, then the epilogue's constants) -> Y [n, oh, ow, o].

    OP is o padded to whole vectors (``dot.padded``). Static (requantize): constants corr [OP] i32 and mult [OP] f32;
    Y = saturate(round_half_even(f32(acc + corr) * mult) + zy) clamped to [lo, hi], acc the exact i32 sum of
    x * w over the taps of the padded input (whose padding holds the input's zero point: corr carries
    -zx * sum(w) and the bias). ``dynamic`` (rescale, f32 out): constants zp [rows or 1] i32 and scale
    [rows or 1] f32 of the input (per output pixel with ``per_row``), wsum, wscale and bias [OP] f32;
    Y = f32(acc - zp * wsum) * (scale * wscale) + bias, one rounding (a fused multiply-add).
    bf16 (``dot=VDPBF16PS``): X and W bf16 bits (u16), constant bias [OP] f32; Y f32 = acc + bias (max 0 with
    ``relu``), acc the f32 sum of the exact bf16 products."""
    from tvm.script import tirx as T

    from .intrinsics import lrint

    sh, sw = strides
    dh, dw = dilations
    ln = dot.lanes
    opad = dot.padded(o)
    m = n * oh * ow  # output pixels, taken in tiles of ``px`` across rows and images
    px, vecs = register_tile(opad // ln, m, rows, dot.accumulators)
    pk = dot.pack
    kc = cp // pk  # steps (one 32-bit word of ``pk`` channels) per tap
    nvb = opad // ln // vecs  # channel blocks of ``vecs`` vectors
    tiles = -(-m // px)  # (a last tile ends at the last pixel, recomputing some)
    groups = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups)  # tiles per task
    groups = -(-tiles // size)
    step = ln * pk  # weight elements per step: ``ln`` output channels x pk
    wstride = kh * kw * kc * step  # weight elements per vector's output channels
    bf16 = dot is VDPBF16PS
    f32 = "float32"
    prm = m if per_row else 1

    def pixel(task, i, p):  # the flat output pixel of tile i's p-th pixel
        return T.min((task // nvb * size + i) * px, m - px) + p

    def ch(task, v):  # first output channel of the task's v-th vector
        return (task % nvb * vecs + v) * ln

    def word(X, q, r, s, k):  # the pk input elements (one i32) of output pixel q at tap (r, s), step k
        img, yy, xx = q // (oh * ow), q // ow % oh, q % ow
        off = ((img * hp + yy * sh + r * dh) * wp + xx * sw + s * dw) * cp + k * pk
        words = T.broadcast(T.reinterpret("int32", X.vload([off], f"{dot.x}x{pk}")), ln)
        return words if bf16 else T.reinterpret(f"int8x{4 * ln}", words)

    def wvec(W, task, v, r, s, k):
        vec = W.vload([(task % nvb * vecs + v) * wstride + ((r * kw + s) * kc + k) * step], f"{dot.w}x{step}")
        return T.reinterpret(f"int32x{ln}", vec) if bf16 else vec

    def dot_step(a, x, w):
        if bf16:
            return T.call_extern("float32x16", BF16_FUNC, a, x, w)
        return T.call_llvm_pure_intrin(f"int32x{ln}", T.llvm_lookup_intrinsic_id(
            f"llvm.x86.avx512.vpdpbusd.{32 * ln}"), a, x, w)  # (AVX-VNNI's VEX form for 256 bits without AVX-512)

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
                    acc[T.ramp(q * ln, 1, ln)] = T.broadcast(T.float32(0) if bf16 else T.int32(0), ln)
                for r, s, k in T.grid(kh, kw, kc):
                    for p in T.unroll(px):
                        for v in T.unroll(vecs):
                            acc[T.ramp((p * vecs + v) * ln, 1, ln)] = dot_step(
                                acc[T.ramp((p * vecs + v) * ln, 1, ln)], word(X, pixel(task, i, p), r, s, k),
                                wvec(W, task, v, r, s, k))
                for p in T.unroll(px):
                    for v in T.unroll(vecs):
                        if ch(task, v) + ln <= o:
                            for j in T.vectorized(ln):
                                Y[pixel(task, i, p) * o + ch(task, v) + j] = value(
                                    C, acc[(p * vecs + v) * ln + j], pixel(task, i, p), ch(task, v) + j)
                        elif ch(task, v) < o:
                            for j in range(o % ln):
                                Y[pixel(task, i, p) * o + ch(task, v) + j] = value(
                                    C, acc[(p * vecs + v) * ln + j], pixel(task, i, p), ch(task, v) + j)

    if bf16:
        @T.prim_func
        def func(XP: T.Buffer((n, hp, wp, cp), "uint16"), WP: T.Buffer((opad // ln, kh, kw, kc, ln, 2), "uint16"),
                 BIAS: T.Buffer((opad,), f32), YP: T.Buffer((n, oh, ow, o), f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((n * hp * wp * cp,), "uint16", data=XP.data)
            W = T.decl_buffer((opad // ln * wstride,), "uint16", data=WP.data)
            Y = T.decl_buffer((m * o,), f32, data=YP.data)
            with T.attr(T.int32(0), "pragma_import_llvm", BF16_IR):  # the vdpbf16ps function (see above)
                for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
                    acc = T.decl_buffer((px * vecs * ln,), f32, scope="local")
                    body(X, W, Y, (BIAS,), acc, task)
        return func

    if dynamic:
        @T.prim_func
        def func(XP: T.Buffer((n, hp, wp, cp), "uint8"), WP: T.Buffer((opad // ln, kh, kw, kc, ln, 4), "int8"),
                 ZP: T.Buffer((prm,), "int32"), SC: T.Buffer((prm,), f32), WSUM: T.Buffer((opad,), "int32"),
                 WS: T.Buffer((opad,), f32), BIAS: T.Buffer((opad,), f32), YP: T.Buffer((n, oh, ow, o), f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((n * hp * wp * cp,), "uint8", data=XP.data)
            W = T.decl_buffer((opad // ln * wstride,), "int8", data=WP.data)
            Y = T.decl_buffer((m * o,), f32, data=YP.data)
            for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
                acc = T.decl_buffer((px * vecs * ln,), "int32", scope="local")
                body(X, W, Y, (ZP, SC, WSUM, WS, BIAS), acc, task)
        return func

    @T.prim_func
    def func(XP: T.Buffer((n, hp, wp, cp), "uint8"), WP: T.Buffer((opad // ln, kh, kw, kc, ln, 4), "int8"),
             CORR: T.Buffer((opad,), "int32"), MULT: T.Buffer((opad,), f32), YP: T.Buffer((n, oh, ow, o), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((n * hp * wp * cp,), "uint8", data=XP.data)
        W = T.decl_buffer((opad // ln * wstride,), "int8", data=WP.data)
        Y = T.decl_buffer((m * o,), out_dtype, data=YP.data)
        for task in T.parallel(groups * nvb):  # (tile group, channel block) pairs
            acc = T.decl_buffer((px * vecs * ln,), "int32", scope="local")
            body(X, W, Y, (CORR, MULT), acc, task)
    return func


__all__ = ["VecDot", "VPDPBUSD", "VPDPBUSD_256", "VDPBF16PS", "conv_func", "pack_weights", "register_tile"]
