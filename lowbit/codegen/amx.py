"""AMX kernels: u8 x i8 -> i32 (AMX-INT8, ``tdpbusd``) and bf16 x bf16 -> f32 (AMX-BF16, ``tdpbf16ps``)
convolutions and matmuls on Intel AMX tiles, written directly in TIR. A ``Dot`` names the instruction and its
element types; the byte layout of the tiles is the same for both (a bf16 pair fills the 32-bit word of 4 u8).

TVM ships no AMX intrinsic (TVM.md); these kernels call LLVM's tile intrinsics themselves. Tile registers:
tmm0-3 hold a 2 x 2 block of 16 x 16 i32 accumulators (32 output pixels x 32 output channels), tmm4-5 two
16-pixel x 64-channel u8 input tiles, tmm6-7 two 64-channel x 16-output-channel i8 weight tiles (VNNI order:
16 rows of [16 channels x 4 k]). The convolution is implicit: an input tile is 16 output pixels of one output
row, read straight from the zero-point-padded NHWC input with a row stride of ``stride_w * C`` bytes, so no
im2col buffer is built. A process must ask Linux for the AMX state first (``runtime.host.enable_amx``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TILE_M, TILE_N, TILE_K = 16, 16, 64  # pixels, output channels, input channel bytes per tile


@dataclass(frozen=True)
class Dot:
    """A tile dot-product instruction and its element types. A 64-byte tile row holds ``k`` input elements;
    the weight tile holds, per row, 16 output channels x ``pack`` consecutive k (one 32-bit word each)."""

    instr: str
    x: str  # input elements
    w: str  # weight elements
    acc: str  # accumulator elements
    size: int  # bytes per input / weight element

    @property
    def k(self) -> int:
        return TILE_K // self.size

    @property
    def pack(self) -> int:
        return 4 // self.size


U8I8 = Dot("tdpbusd", "uint8", "int8", "int32", 1)  # AMX-INT8: exact i32 sums of u8 x i8
BF16 = Dot("tdpbf16ps", "uint16", "uint16", "float32", 2)  # AMX-BF16: bf16 bits, f32 sums


def _tile(op: str, *args):
    """A call of LLVM's AMX intrinsic ``llvm.x86.<op>`` as a TIR statement (tile numbers: literal uint8)."""
    from tvm.script import tirx as T

    return T.evaluate(T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id("llvm.x86." + op), *args))


def _prefetch(buf, i, size: int):
    """Prefetch the cache line of ``buf[i]`` into L1 for reading (``i`` clamped to the buffer's ``size``): a tile
    load whose rows miss L1 waits on each row in turn."""
    from tvm.script import tirx as T

    return T.evaluate(T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id("llvm.prefetch.p0"),
                                         T.address_of(buf[T.min(i, size - 1)]), T.int32(0), T.int32(3), T.int32(1)))


def _row_groups(mblocks: int, nblocks: int, tasks: int = 16) -> tuple[int, int]:
    """Split the row blocks into groups so that (channel block, row group) pairs make about ``tasks`` parallel
    tasks: channel blocks alone are too few for narrow layers (a 32-channel stem is one). A task keeps its
    weight slice hot across its row blocks."""
    groups = max(1, min(mblocks, -(-tasks // nblocks)))
    size = -(-mblocks // groups)
    return -(-mblocks // size), size


class Plan:
    """How a convolution's input is laid out for the kernel: ``cpix`` bytes per padded NHWC pixel, ``kc`` 64-byte
    chunks per tap, ``taps_w`` taps walked along the width. A narrow input (``fold``: 4-padded channels x kernel
    width <= 64, e.g. an RGB stem) lets one 64-byte chunk span a whole kernel row (taps x channels, zero weights
    past its end), so a 3-channel 7x7 conv runs 7 chunks per tile, not 49 mostly-padding ones."""

    def __init__(self, c, h, w, oh, ow, kh, kw, pads, strides, dilations, dot: Dot = U8I8):
        pt, pl, pb, pr = pads
        self.dot = dot
        tk, pk = dot.k, dot.pack
        cq = (c + pk - 1) // pk * pk
        self.fold = kw > 1 and cq * kw <= tk and dilations[1] == 1
        self.owt = (ow + TILE_M - 1) // TILE_M
        self.hp = h + pt + pb
        last = (self.owt * TILE_M - 1) * strides[1]  # the last tile row's first input pixel
        if self.fold:
            self.cpix, self.kc, self.taps_w, self.cw = cq, 1, 1, c
            self.wp = max(w + pl + pr, last + tk // cq)
        else:
            self.cpix = (c + tk - 1) // tk * tk
            self.kc, self.taps_w, self.cw = self.cpix // tk, kw, c
            self.wp = max(w + pl + pr, last + (kw - 1) * dilations[1] + 1)

    def pack_weights(self, weight: np.ndarray) -> np.ndarray:
        """[O, C, KH, KW] -> [O16 / 16, KH, taps_w, kc * 16, 16, pack] of the Dot's weight elements (O16: O
        padded to 16): for each 16-output-channel slice and tap chunk, 16 rows of (16 output channels x pack
        consecutive k), the VNNI order of a tile's second operand; output channels past O and k past the real
        channels (or, folded, past the kernel row) weigh 0. bf16 weights come as their uint16 bits."""
        o, c, kh, kw = weight.shape
        k, pk = self.kc * self.dot.k, self.dot.pack
        o16 = (o + 15) // 16 * 16
        w = np.zeros((o16, kh, self.taps_w, k), self.dot.w)  # output channels past o weigh 0
        if self.fold:  # k = tap * cq + channel
            for s in range(kw):
                w[:o, :, 0, s * self.cpix:s * self.cpix + c] = weight[:, :, :, s].transpose(0, 2, 1)
        else:
            w[:o, ..., :c] = weight.transpose(0, 2, 3, 1)
        w = w.reshape(o16 // 16, 16, kh, self.taps_w, k // pk, pk)
        return np.ascontiguousarray(w.transpose(0, 2, 3, 4, 1, 5))


def conv_func(n: int, p: Plan, o: int, kh: int, oh: int, ow: int, strides, dilations, zy: int = 0, lo: int = 0,
              hi: int = 255, out_dtype: str = "uint8", nhwc: bool = False, tasks: int = 16, relu: bool = False):
    """A PrimFunc (X [n, Hp, Wp, cpix], W packed, the epilogue's constants) -> Y [n, o, oh, ow], or with ``nhwc``
    Y [n, oh, ow, o], each pixel's channels stored straight from a tile row. The plan's Dot picks the kind:

    u8 x i8 (``U8I8``): X u8, constants corr [o] i32 and mult [o] f32;
    Y = saturate(round_half_even(f32(acc + corr) * mult) + zy) clamped to [lo, hi], acc the exact i32 sum.
    bf16 (``BF16``): X and W bf16 bits (u16), constant bias [o] f32; Y f32 = acc + bias (max 0 with ``relu``),
    acc the f32 sum of the exact bf16 products."""
    from tvm.script import tirx as T

    from .intrinsics import lrint

    dot = p.dot
    out_dtype = "float32" if dot == BF16 else out_dtype
    tk = dot.k  # input elements per 64-byte tile row
    chunk = 16 * tk  # weight elements per 16 x 64-byte tile
    sh, sw = strides
    dh, dw = dilations
    hp, wp, cp, kc, kw, owt = p.hp, p.wp, p.cpix, p.kc, p.taps_w, p.owt
    op_ = (o + 15) // 16 * 16  # output channels padded to whole tiles (the padding weighs 0, is not stored)
    nb2 = op_ // 32  # blocks of two 16-channel tiles; a last odd tile of 16 channels gets a block of its own
    nblocks = (op_ + 31) // 32
    tiles = n * oh * owt
    mblocks = (tiles + 1) // 2
    mgroups, gsize = _row_groups(mblocks, nblocks, tasks)
    ohw = oh * owt

    def cb(task):  # a parallel task's block of 32 output channels
        return task % nblocks

    def rb(task, i):  # its i-th block of 32 output pixels (a pair of 16-pixel tiles)
        return task // nblocks * gsize + i

    def tl(task, i, half):  # the block's first or second 16-pixel tile (an odd last tile: computed twice)
        return T.min(rb(task, i) * 2 + half, tiles - 1)

    def img(t):  # a tile's image, output row and first output column
        return t // ohw

    def yrow(t):
        return t % ohw // owt

    def x0(t):
        return t % owt * TILE_M

    def tap(b, r, s, q):  # input offset of a tile's tap (r, s), 64-byte chunk q
        return b + (r * dh * wp + s * dw) * cp + q * tk

    def wtap(t, r, s, q):  # weight offset of 16-channel slice t's tap (r, s), chunk q
        return t * wstride_o + ((r * kw + s) * kc + q) * chunk

    def requant(C, v, ch):
        corr, mult = C
        return T.Cast(out_dtype, T.max(T.min(lrint(T.Cast("float32", v + corr[ch]) * mult[ch]) + zy, hi), lo))

    def biased(C, v, ch):
        (bias,) = C
        return T.max(v + bias[ch], T.float32(0)) if relu else v + bias[ch]

    value = requant if dot == U8I8 else biased
    lds = sw * cp * dot.size  # bytes between consecutive output pixels' input rows
    wstride_o = kh * kw * kc * chunk  # elements per 16-output-channel weight slice
    out_shape = (n, oh, ow, o) if nhwc else (n, o, oh, ow)

    def base(t):  # input element offset (times cp) of a 16-pixel tile's first pixel, tap (0, 0)
        return ((t // ohw * hp + t % ohw // owt * sh) * wp + t % owt * TILE_M * sw) * cp

    tile = _tile

    def prefetch(buf, i):
        return _prefetch(buf, i, op_ // 16 * wstride_o)

    @T.macro
    def run(X, W, C, Y):
        for task in T.parallel(nblocks * mgroups):  # (channel block, row group) pairs
            cfg = T.decl_buffer((64,), "uint8", scope="local")
            acc = T.decl_buffer((32 * 32,), dot.acc, scope="local")
            row = T.decl_buffer((TILE_M,), out_dtype, scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for i in range(8):
                cfg[16 + i * 2] = T.uint8(64)
                cfg[48 + i] = T.uint8(16)
            tile("ldtilecfg", T.address_of(cfg[0]))
            for mi in range(gsize):
                if rb(task, mi) < mblocks:
                    tile("tilezero", T.uint8(0))
                    tile("tilezero", T.uint8(1))
                    tile("tilezero", T.uint8(2))
                    tile("tilezero", T.uint8(3))
                    for r, s, q in T.grid(kh, kw, kc):
                        for line in T.unroll(16):  # the next chunk's weight tiles into L1
                            prefetch(W, wtap(cb(task) * 2, r, s, q) + chunk + line * tk)
                            prefetch(W, wtap(cb(task) * 2 + 1, r, s, q) + chunk + line * tk)
                        # the second tile of an odd last pair repeats the first (same values, stored twice)
                        tile("tileloadd64", T.uint8(4), T.address_of(X[tap(base(tl(task, mi, 0)), r, s, q)]),
                             T.int64(lds))
                        tile("tileloadd64", T.uint8(5), T.address_of(X[tap(base(tl(task, mi, 1)), r, s, q)]),
                             T.int64(lds))
                        tile("tileloadd64", T.uint8(6), T.address_of(W[wtap(cb(task) * 2, r, s, q)]), T.int64(64))
                        tile(dot.instr, T.uint8(0), T.uint8(4), T.uint8(6))
                        tile(dot.instr, T.uint8(2), T.uint8(5), T.uint8(6))
                        if cb(task) < nb2:  # a second 16-channel tile
                            tile("tileloadd64", T.uint8(7), T.address_of(W[wtap(cb(task) * 2 + 1, r, s, q)]),
                                 T.int64(64))
                            tile(dot.instr, T.uint8(1), T.uint8(4), T.uint8(7))
                            tile(dot.instr, T.uint8(3), T.uint8(5), T.uint8(7))
                    # acc[m][c]: m in 0..31 (the pair's first tile's pixels, then the second's), c in 0..31
                    tile("tilestored64", T.uint8(0), T.address_of(acc[0]), T.int64(128))
                    tile("tilestored64", T.uint8(1), T.address_of(acc[16]), T.int64(128))
                    tile("tilestored64", T.uint8(2), T.address_of(acc[512]), T.int64(128))
                    tile("tilestored64", T.uint8(3), T.address_of(acc[528]), T.int64(128))
                    if nhwc:
                        for half, j, ct in T.grid(2, TILE_M, 2):
                            if (ct == 0 or cb(task) < nb2) and x0(tl(task, mi, half)) + j < ow:
                                # one tile row: 16 channels of one pixel (a last partial tile channel by channel)
                                if cb(task) * 32 + ct * 16 + 16 <= o:
                                    for c in T.vectorized(16):
                                        Y[img(tl(task, mi, half)), yrow(tl(task, mi, half)), x0(tl(task, mi, half))
                                          + j, cb(task) * 32 + ct * 16 + c] = value(
                                            C, acc[(half * 16 + j) * 32 + ct * 16 + c], cb(task) * 32 + ct * 16 + c)
                                else:
                                    for c in range(o % 16):
                                        Y[img(tl(task, mi, half)), yrow(tl(task, mi, half)), x0(tl(task, mi, half))
                                          + j, cb(task) * 32 + ct * 16 + c] = value(
                                            C, acc[(half * 16 + j) * 32 + ct * 16 + c], cb(task) * 32 + ct * 16 + c)
                    else:
                        for half, c in T.grid(2, 32):
                            if (c < 16 or cb(task) < nb2) and cb(task) * 32 + c < o:
                                for j in T.vectorized(TILE_M):  # 16 pixels of one channel: a stride-32 gather
                                    row[j] = value(C, acc[(half * 16 + j) * 32 + c], cb(task) * 32 + c)
                                if x0(tl(task, mi, half)) + TILE_M <= ow:
                                    for j in T.vectorized(TILE_M):
                                        Y[img(tl(task, mi, half)), cb(task) * 32 + c, yrow(tl(task, mi, half)),
                                          x0(tl(task, mi, half)) + j] = row[j]
                                else:
                                    for j in range(ow % TILE_M):
                                        Y[img(tl(task, mi, half)), cb(task) * 32 + c, yrow(tl(task, mi, half)),
                                          x0(tl(task, mi, half)) + j] = row[j]
            tile("tilerelease")

    if dot == BF16:
        @T.prim_func
        def func(XP: T.Buffer((n, hp, wp, cp), dot.x), WP: T.Buffer((op_ // 16, kh, kw, kc * 16, 16, 2), dot.w),
                 BIAS: T.Buffer((op_,), "float32"), Y: T.Buffer(out_shape, "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((n * hp * wp * cp,), dot.x, data=XP.data)
            W = T.decl_buffer((op_ // 16 * wstride_o,), dot.w, data=WP.data)
            run(X, W, (BIAS,), Y)
        return func

    @T.prim_func
    def func(XP: T.Buffer((n, hp, wp, cp), "uint8"), WP: T.Buffer((op_ // 16, kh, kw, kc * 16, 16, 4), "int8"),
             CORR: T.Buffer((op_,), "int32"), MULT: T.Buffer((op_,), "float32"),
             Y: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((n * hp * wp * cp,), "uint8", data=XP.data)
        W = T.decl_buffer((op_ // 16 * wstride_o,), "int8", data=WP.data)
        run(X, W, (CORR, MULT), Y)
    return func


def pixel_words_func(n: int, c: int, h: int, w: int, hp: int, wp: int, pt: int, pl: int, zx: int):
    """A PrimFunc X [n, c, h, w] u8 (c <= 4, NCHW) -> Y [n, hp, wp, 4] u8: the input padded with its zero point
    and laid out NHWC, a pixel's (up to) 4 channels one 32-bit word (channels past c hold the zero point).
    Inside the input, 16 pixels at a time from contiguous channel rows; the padding is filled apart."""
    from tvm.script import tirx as T

    u32 = "uint32"
    pad = zx * 0x01010101  # a word of four zero points
    wv = w // 16 * 16

    def word(X, img, iy, ix):
        v = T.uint32(pad >> (8 * c) << (8 * c)) if c < 4 else T.uint32(0)
        for k in range(c):
            v = v | (T.Cast(u32, X[img, k, iy, ix]) << T.uint32(8 * k))
        return v

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((n, c, h, w), "uint8"), YP: T.Buffer((n, hp, wp, 4), "uint8")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        with T.sblock("root"):  # TVM checks the body of a one-input function for a reshape pattern
            Y = T.decl_buffer((n * hp * wp,), u32, data=YP.data)
            for row in T.parallel(n * hp):
                if row % hp >= pt and row % hp < pt + h:
                    for z in range(pl):
                        Y[row * wp + z] = T.uint32(pad)
                    for zb in range(wv // 16):
                        for j in T.vectorized(16):
                            Y[row * wp + pl + zb * 16 + j] = word(X, row // hp, row % hp - pt, zb * 16 + j)
                    for z in range(w - wv):
                        Y[row * wp + pl + wv + z] = word(X, row // hp, row % hp - pt, wv + z)
                    for z in range(wp - pl - w):
                        Y[row * wp + pl + w + z] = T.uint32(pad)
                else:
                    for z in range(wp):
                        Y[row * wp + z] = T.uint32(pad)
    return func


def matmul_func(shape_x, shape_y, mp: int, kp: int, nn: int, dynamic: bool, has_bias: bool, zy: int = 0,
                lo: int = 0, hi: int = 255, out_dtype: str = "uint8", per_row: bool = False, tasks: int = 16,
                dot: Dot = U8I8, relu: bool = False):
    """A PrimFunc for u8 [M, K] x i8 [K, N] on AMX tiles. X (``shape_x``) holds ``mp`` rows of k bytes (its last
    axis): the input itself, or a copy padded to 32 rows (and K to ``kp``, a multiple of 64). A tile row reads 64
    bytes, past a row's end into the next row, where the weights are 0; a block whose reads would pass X's end
    copies its rows (padded) first. The last 32-row block starts at M - 32 (``mp`` - 32), recomputing rows an
    earlier block stored, with the same values. W is packed [N16/16, kp/4, 16, 4] (N16: N padded to 16).

    Static (``qmatmul``): args X, W, corr [N16] i32, mult [N16] f32 -> Y = requantized as ``conv_func``.
    Dynamic (``qmatmul_dynamic``): args X, W, zp i32, scale f32 ([1], or [M] ``per_row``), wsum [N] i32,
    wscale [N] f32, bias [N] f32 -> Y f32 = f32(acc - zp * wsum) * (scale * wscale) [+ bias], the multiply-add
    fused (one rounding).

    bf16 (``dot=BF16``, kp a multiple of 32): X and W bf16 bits (u16, W [N16/16, kp/2, 16, 2]), args X, W,
    bias [N] f32 -> Y f32 = acc + bias (max 0 with ``relu``), acc the f32 sum of the exact bf16 products."""
    from tvm.script import tirx as T

    from .intrinsics import lrint

    m = int(np.prod(shape_y[:-1]))
    k = shape_x[-1]  # elements between rows of X
    xbytes = int(np.prod(shape_x))  # elements of X
    rows, pr = (m, 1) if per_row else (1, 0)
    n16 = (nn + 15) // 16 * 16  # columns padded to whole tiles (weights 0, not stored)
    nb2, nblocks, mblocks = n16 // 32, (n16 + 31) // 32, (m + 31) // 32
    nb = mblocks * nblocks  # 32 x 32 blocks, taken row block by row block (a row's outputs written together)
    tasks = min(nb, tasks)  # parallel tasks, each a run of consecutive blocks
    per = -(-nb // tasks)
    small = mp <= 16  # a few rows (a classifier's one): one tile of mp rows, not two of 16
    mt = mp if small else 16  # rows per tile
    brows = mt if small else 32  # rows per block
    last = max(mp - 32, 0)  # the last block's first row
    safe = (xbytes - kp) // k - (brows - 1)  # the last first row of a block that reads inside X only
    tail = safe < last  # (the blocks past it copy their rows)
    tk = dot.k  # elements per 64-byte tile row
    chunk = 16 * tk  # weight elements per tile
    kc = kp // tk
    f32 = "float32"

    def cb(b):  # block b's 32 output columns
        return b % nblocks

    def row0(b):  # its first row (a last block ends at the last row, recomputing some)
        return T.min(b // nblocks * 32, last)

    def col(b, ct, c):  # column c of its ct-th 16-column tile
        return cb(b) * 32 + ct * 16 + c

    def requant(consts, v, r, ch):  # static: the output element from accumulator v (row r, column ch)
        corr, mult = consts
        return T.Cast(out_dtype, T.max(T.min(lrint(T.Cast(f32, v + corr[ch]) * mult[ch]) + zy, hi), lo))

    def biased(consts, v, r, ch):  # bf16: the f32 sum + bias
        (bias,) = consts
        return T.max(v + bias[ch], T.float32(0)) if relu else v + bias[ch]

    def rescale(consts, v, r, ch):  # dynamic: f32(acc - zp * wsum) * (scale * wscale) [+ bias]
        zp, sc, wsum, ws, bias = consts
        y = T.Cast(f32, v - zp[r * pr] * wsum[ch]) * (sc[r * pr] * ws[ch])
        return y + bias[ch] if has_bias else y

    tile = _tile

    def prefetch(buf, i):
        return _prefetch(buf, i, n16 * kp)

    @T.macro
    def chunks(src, base, stride, W, b):  # acc (tmm0-3) += rows base.. (two tiles) x the block's 32 columns
        for q in range(kc):
            if kc >= 4:  # long rows: the next chunk's weight tiles into L1
                for line in T.unroll(16):
                    prefetch(W, cb(b) * 32 * kp + (q + 1) * chunk + line * tk)
                    prefetch(W, (cb(b) * 32 + 16) * kp + (q + 1) * chunk + line * tk)
            tile("tileloadd64", T.uint8(4), T.address_of(src[base + q * tk]), T.int64(stride * dot.size))
            if not small:
                tile("tileloadd64", T.uint8(5), T.address_of(src[base + 16 * stride + q * tk]),
                     T.int64(stride * dot.size))
            tile("tileloadd64", T.uint8(6), T.address_of(W[cb(b) * 32 * kp + q * chunk]), T.int64(64))
            tile(dot.instr, T.uint8(0), T.uint8(4), T.uint8(6))
            if not small:
                tile(dot.instr, T.uint8(2), T.uint8(5), T.uint8(6))
            if cb(b) < nb2:  # a second 16-column tile
                tile("tileloadd64", T.uint8(7), T.address_of(W[(cb(b) * 32 + 16) * kp + q * chunk]), T.int64(64))
                tile(dot.instr, T.uint8(1), T.uint8(4), T.uint8(7))
                if not small:
                    tile(dot.instr, T.uint8(3), T.uint8(5), T.uint8(7))

    @T.macro
    def block(X, W, rows_copy, acc, b):  # one 32 x 32 block into acc[row][column]
        tile("tilezero", T.uint8(0))
        tile("tilezero", T.uint8(1))
        tile("tilezero", T.uint8(2))
        tile("tilezero", T.uint8(3))
        if tail:
            if row0(b) > safe:  # its reads would pass X's end: its rows padded to kp bytes
                for i, j in T.grid(brows, kp):
                    rows_copy[i * kp + j] = T.if_then_else(j < k, X[(row0(b) + i) * k + T.min(j, k - 1)],
                                                           T.Cast(dot.x, 0))
                chunks(rows_copy, 0, kp, W, b)
            else:
                chunks(X, row0(b) * k, k, W, b)
        else:
            chunks(X, row0(b) * k, k, W, b)
        tile("tilestored64", T.uint8(0), T.address_of(acc[0]), T.int64(128))
        tile("tilestored64", T.uint8(1), T.address_of(acc[16]), T.int64(128))
        if not small:
            tile("tilestored64", T.uint8(2), T.address_of(acc[512]), T.int64(128))
            tile("tilestored64", T.uint8(3), T.address_of(acc[528]), T.int64(128))

    @T.macro
    def configure(cfg):  # palette 1, every tile 64 bytes wide; mt rows (accumulators, inputs), 16 (weights)
        for i in range(64):
            cfg[i] = T.uint8(0)
        cfg[0] = T.uint8(1)
        for i in range(8):
            cfg[16 + i * 2] = T.uint8(64)
            cfg[48 + i] = T.uint8(16 if i >= 6 else mt)
        tile("ldtilecfg", T.address_of(cfg[0]))

    @T.macro
    def run(X, W, Y, consts, value):  # the kernel: blocks in parallel runs, each stored through value()
        for task in T.parallel(tasks):
            cfg = T.decl_buffer((64,), "uint8", scope="local")
            acc = T.decl_buffer((32 * 32,), dot.acc, scope="local")
            rows_copy = T.decl_buffer((brows * kp if tail else 1,), dot.x, scope="local")
            configure(cfg)
            for b in range(task * per, task * per + per):
                if b < nb:
                    block(X, W, rows_copy, acc, b)
                    for i, ct in T.grid(32, 2):
                        if row0(b) + i < m and (ct == 0 or cb(b) < nb2):
                            if col(b, ct, 16) <= nn:
                                for c in T.vectorized(16):
                                    Y[row0(b) + i, col(b, ct, c)] = value(consts, acc[i * 32 + ct * 16 + c],
                                                                          row0(b) + i, col(b, ct, c))
                            else:  # the last, partial tile of columns
                                for c in range(nn % 16):
                                    Y[row0(b) + i, col(b, ct, c)] = value(consts, acc[i * 32 + ct * 16 + c],
                                                                          row0(b) + i, col(b, ct, c))
            tile("tilerelease")

    if dot == BF16:
        @T.prim_func
        def func(XP: T.Buffer(shape_x, dot.x), WP: T.Buffer((n16 // 16, kp // 2, 16, 2), dot.w),
                 B: T.Buffer((nn,), f32), YP: T.Buffer(shape_y, f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((xbytes,), dot.x, data=XP.data)
            W = T.decl_buffer((n16 * kp,), dot.w, data=WP.data)
            Y = T.decl_buffer((m, nn), f32, data=YP.data)
            run(X, W, Y, (B,), biased)
        return func

    if dynamic:
        @T.prim_func
        def func(XP: T.Buffer(shape_x, "uint8"), WP: T.Buffer((n16 // 16, kp // 4, 16, 4), "int8"),
                 ZP: T.Buffer((rows,), "int32"), SC: T.Buffer((rows,), f32), WS: T.Buffer((nn,), "int32"),
                 S: T.Buffer((nn,), f32), B: T.Buffer((nn,), f32), YP: T.Buffer(shape_y, f32)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
            X = T.decl_buffer((xbytes,), "uint8", data=XP.data)
            W = T.decl_buffer((n16 * kp,), "int8", data=WP.data)
            Y = T.decl_buffer((m, nn), f32, data=YP.data)
            run(X, W, Y, (ZP, SC, WS, S, B), rescale)
        return func

    @T.prim_func
    def func(XP: T.Buffer(shape_x, "uint8"), WP: T.Buffer((n16 // 16, kp // 4, 16, 4), "int8"),
             CORR: T.Buffer((n16,), "int32"), MULT: T.Buffer((n16,), f32), YP: T.Buffer(shape_y, out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((xbytes,), "uint8", data=XP.data)
        W = T.decl_buffer((n16 * kp,), "int8", data=WP.data)
        Y = T.decl_buffer((m, nn), out_dtype, data=YP.data)
        run(X, W, Y, (CORR, MULT), requant)
    return func


def pack_matmul_weights(w: np.ndarray, kp: int, dot: Dot = U8I8) -> np.ndarray:
    """[K, N] -> [N16/16, kp/pack, 16, pack] of the Dot's weight elements (int8, or bf16 bits as uint16), N16 = N
    padded to 16 (k past K and columns past N weigh 0)."""
    k, nn = w.shape
    n16 = (nn + 15) // 16 * 16
    pk = dot.pack
    wp = np.zeros((kp, n16), dot.w)
    wp[:k, :nn] = w
    return np.ascontiguousarray(wp.reshape(kp // pk, pk, n16 // 16, 16).transpose(2, 0, 3, 1))


def unravel(i, dims):
    out = []
    for d in reversed(dims):
        out.append(i % d)
        i = i // d
    return list(reversed(out))


def dynamic_rows_func(shape_x, m: int, k: int, mp: int, kp: int):
    """A PrimFunc X f32 (rows of the last axis) -> (Xq [mp, kp] u8, scale [m] f32, zero point [m] i32): per row,
    onnxruntime's DynamicQuantizeLinear parameters over [min(row, 0), max(row, 0)] and the row quantized with
    them; one parallel pass, the range a vectorized reduction. Padding rows and columns are 0."""
    from tvm.script import tirx as T

    f32 = "float32"
    kv = k // 16 * 16

    @T.prim_func(s_tir=True)
    def func(XP: T.Buffer(shape_x, f32), Q: T.Buffer((mp, kp), "uint8"), SC: T.Buffer((m,), f32),
             ZP: T.Buffer((m,), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        with T.sblock("root"):  # TVM checks the body of a one-input function for a reshape pattern
            X = T.decl_buffer((m, k), f32, data=XP.data)
            for r in T.parallel(mp):
                lo = T.decl_buffer((16,), f32, scope="local")
                hi = T.decl_buffer((16,), f32, scope="local")
                par = T.decl_buffer((2,), f32, scope="local")
                if r < m:
                    for j in T.vectorized(16):
                        lo[j] = T.float32(0)  # the range always holds 0
                        hi[j] = T.float32(0)
                    for c in range(kv // 16):
                        for j in T.vectorized(16):
                            lo[j] = T.min(lo[j], X[r, c * 16 + j])
                            hi[j] = T.max(hi[j], X[r, c * 16 + j])
                    for j in range(k - kv):
                        lo[0] = T.min(lo[0], X[r, kv + j])
                        hi[0] = T.max(hi[0], X[r, kv + j])
                    for j in range(15):
                        lo[0] = T.min(lo[0], lo[j + 1])
                        hi[0] = T.max(hi[0], hi[j + 1])
                    # par[0]: the scale, par[1]: the zero point (as f32)
                    par[0] = T.if_then_else((hi[0] - lo[0]) / T.float32(255) == T.float32(0), T.float32(1),
                                            (hi[0] - lo[0]) / T.float32(255))
                    par[1] = T.if_then_else(hi[0] - lo[0] == T.float32(0), T.float32(0), T.Cast(f32, T.max(T.min(
                        T.Cast("int32", T.nearbyint(-lo[0] / par[0])), 255), 0)))
                    SC[r] = par[0]
                    ZP[r] = T.Cast("int32", par[1])
                    for c in range(kv // 16):
                        for j in T.vectorized(16):
                            Q[r, c * 16 + j] = T.Cast("uint8", T.max(T.min(T.Cast("int32", T.nearbyint(
                                X[r, c * 16 + j] / par[0])) + T.Cast("int32", par[1]), 255), 0))
                    for j in range(kp - kv):
                        Q[r, kv + j] = T.if_then_else(kv + j < k, T.Cast("uint8", T.max(T.min(T.Cast(
                            "int32", T.nearbyint(X[r, T.min(kv + j, k - 1)] / par[0])) + T.Cast("int32", par[1]),
                            255), 0)), T.uint8(0))
                else:
                    for j in range(kp):
                        Q[r, j] = T.uint8(0)
    return func
