"""Group-wise 4-bit weights times dynamically quantized u8 rows on AVX-512 VNNI (W4A8): hand-written TIR.

The weight streams from memory as packed nibbles, 64 bytes per load: 16 output columns x 8 consecutive k, the
low nibbles holding k..k+3 and the high ones k+4..k+7 of each column (VNNI order: a column's 4 k are one 32-bit
lane). A load becomes two i8 vectors of codes 0..15 in registers (``and 15``, ``shift 4``), each fed to one
``vpdpbusd`` per row with that row's 4 u8 inputs broadcast: 5 instructions per 64 bytes and row. The zero
points come in at the group's end, from sums:

    sum_k (x - zx)(c - zc) = sum_k x c - zc * X_g - zx * C_g,   X_g = sum_k (x - zx),  C_g = sum_k c

(k over the group's real rows; each task sums its rows' X_g at the group's start — a vectorized pass over
G bytes, no separate stage to launch — and C_g is a constant).
Each 16-column block streams as one record per group: the nibbles, then the group's 16 f32 scales, i16 code
sums and u8 zero points (``RECORD_TAIL`` bytes), so a task reads one sequential stream per column vector.
The three terms are integers below 2^24, so in f32 ``t = f32(acc) - zx * C_g - zc * X_g`` (two fused
multiply-adds) is the exact group sum, and ``y = fma(t, sx * sw, y)`` adds it with the reference's one rounding,
in the reference's group order (``quant.scheme.grouped_dynamic_rescale``). Per group and column the kernel reads
a u8 zero point, an i16 code sum and an f32 scale beside the nibbles. A register tile is ``rows`` rows x
``vecs`` 16-column vectors; tasks are (row tile, column block) pairs. With one row (a GEMV, the decode step of an
LLM) the kernel streams 4.5 bits per weight at group 128. An integer codebook (``shift-add``: power-of-two and
APoT values up to 127, zero points 0) decodes each nibble through a 16-entry ``vpshufb`` table instead, C_g
being then the sum of the group's table values.
"""
from __future__ import annotations

import numpy as np

STEP = 8  # k per 64-byte load
PREFETCH = 2  # groups ahead a task prefetches its stream (a short GEMV's streams end before the prefetchers ramp up)
RECORD_TAIL = 128  # bytes after a group's nibbles: 16 f32 scales, 16 i16 code sums, 16 u8 zero points, padding
MAX_GROUP = 4096  # 255 * 15 * 4096 < 2^24: a group's sums stay exact in f32
MAX_LUT_GROUP = 512  # with a codebook (values up to 127): 255 * 127 * 512 < 2^24
# a task's accumulators and decoded codes: scope "global" keeps these small buffers on the stack (then in
# registers); "local" ones inside the parallel loop become heap allocations LLVM does not keep in registers
# (A/B in one process, Xeon, 2 threads, cache-cold: 1024x2816 g32 131.8 -> 124.0 us, 4096x11008 g128 1029 -> 978)
SCRATCH = "global"


def nibbles(w: np.ndarray, zw: np.ndarray, qmin: int, group: int, scales: np.ndarray, table=None) -> np.ndarray:
    """The weight stream [nb, ng, group * 8 + RECORD_TAIL] u8 of a [K, N] weight of integer codes with zero points
    ``zw`` and f32 ``scales`` [ng, N] (codes - qmin in 0..15): per 16-column block and group, the packed nibbles,
    then the scales, code sums (i16) and zero points (u8). K is padded to ng * group and N to N16 with code 0
    (the padded rows meet inputs of 0; padded columns are not stored). With a codebook ``table`` (16 integers)
    the codes are its indices and the code sums are of its values."""
    k, n = w.shape
    ng, n16 = -(-k // group), -(-n // 16) * 16
    nib = np.zeros((ng * group, n16), np.int64)
    nib[:k, :n] = w.astype(np.int64) - qmin
    zp = np.zeros((ng, n16), np.int64)
    zp[:, :n] = zw - qmin
    if nib.min() < 0 or nib.max() > 15 or zp.min() < 0 or zp.max() > 15:
        raise ValueError("codes and zero points must lie in qmin..qmin+15")
    vals = nib if table is None else np.asarray(table, np.int64)[nib] * (np.arange(ng * group)[:, None] < k)
    csum = vals.reshape(ng, group, n16).sum(axis=1)
    sw = np.ones((ng, n16), np.float32)
    sw[:, :n] = scales
    nb = n16 // 16
    # [ng, group/8, 2 (lo/hi), 4 (k in a lane), nb, 16 (columns)] -> [nb, ng, group/8, 16, 4] bytes
    t = nib.reshape(ng, group // STEP, 2, 4, nb, 16)
    packed = (t[:, :, 0] | (t[:, :, 1] << 4)).transpose(3, 0, 1, 4, 2).astype(np.uint8).reshape(nb, ng, group * 8)

    def per_block(a):  # [ng, N16] -> [nb, ng, 16 elements] as bytes
        return np.ascontiguousarray(a.reshape(ng, nb, 16).transpose(1, 0, 2)).view(np.uint8).reshape(nb, ng, -1)
    tail = [per_block(sw), per_block(csum.astype(np.int16)), per_block(zp.astype(np.uint8))]
    pad = np.zeros((nb, ng, RECORD_TAIL - sum(a.shape[-1] for a in tail)), np.uint8)
    return np.ascontiguousarray(np.concatenate([packed] + tail + [pad], axis=-1))


def register_tile(nb: int, m: int, rows: int) -> tuple[int, int]:
    """(rows, vectors): up to 4 column vectors; the i32 and f32 accumulators of the tile, the 2 x vecs decoded
    weights and the broadcast words fit in 32 zmm registers."""
    vecs = max(v for v in (4, 2, 1) if nb % v == 0)
    return max(1, min(rows, m, (30 - 2 * vecs) // (2 * vecs))), vecs


def matmul_func(m: int, k: int, kp: int, n: int, group: int, per_row: bool, out_shape, rows: int = 2,
                tasks: int = 16, lut: bool = False):
    """A PrimFunc (XQ [m, kp] u8 (zeros past K), SC [m or 1] f32, ZP [m or 1] i32, the weight stream
    (``nibbles``), BIAS [N16] f32[, with ``lut`` the codebook LUT [64] i8: 16 values in each 128-bit lane])
    -> Y ``out_shape`` f32 ([.., n])."""
    from tvm.script import tirx as T

    ng, n16 = kp // group, -(-n // 16) * 16
    nb = n16 // 16
    steps = group // STEP
    rec = group * 8 + RECORD_TAIL  # bytes per (column block, group)
    px, vecs = register_tile(nb, m, rows)
    nvb = nb // vecs
    tiles = -(-m // px)
    groups_ = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups_)
    groups_ = -(-tiles // size)
    prm = m if per_row else 1
    f32 = "float32"

    def row(task, i, p):  # a tile's p-th row (a last tile ends at the last row, recomputing some)
        return T.min((task // nvb * size + i) * px, m - px) + p

    def blk(task, v):  # the 16-column block of the task's v-th vector
        return task % nvb * vecs + v

    def tail(task, v, g):  # the byte offset of a record's tail: scales, code sums, zero points
        return (blk(task, v) * ng + g) * rec + group * 8

    def exact(W, CS, ZP, xs, iacc, task, i, p, v, g, j):  # f32(acc) - zx * C_g - zc * X_g, exactly
        zc = T.Cast(f32, T.Cast("int32", W[tail(task, v, g) + 96 + j]))
        cs = T.Cast(f32, -T.Cast("int32", CS[(tail(task, v, g) + 64) // 2 + j]))
        zx = T.Cast(f32, ZP[row(task, i, p) if per_row else 0])
        return fma(zc, T.Cast(f32, -xs[p]), fma(zx, cs, T.Cast(f32, iacc[(p * vecs + v) * 16 + j])))

    def word(X, r, k):  # 4 u8 inputs of row r from k, broadcast to the 16 lanes
        return T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", X.vload([r * kp + k], "uint8x4")), 16))

    def vpdpbusd(a, x, w):
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), a, x, w)

    def fma(a, b, c):
        return T.call_llvm_pure_intrin(f32, "llvm.fma", a, b, c)

    def decode(codes, table):  # the codes themselves, or their codebook values (vpshufb: a table per 128 bits)
        if not lut:
            return codes
        return T.call_llvm_pure_intrin("int8x64", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"),
                                       table.vload([0], "int8x64"), codes)

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), SC: T.Buffer((prm,), f32), ZP: T.Buffer((prm,), "int32"),
             WP: T.Buffer((nb, ng, rec), "uint8"), BIAS: T.Buffer((n16,), f32), LUT: T.Buffer((64,), "int8"),
             YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kp,), "uint8", data=XQ.data)
        W = T.decl_buffer((nb * ng * rec,), "uint8", data=WP.data)
        SW = T.decl_buffer((nb * ng * rec // 4,), f32, data=WP.data)  # the records' tails, by element type
        CS = T.decl_buffer((nb * ng * rec // 2,), "int16", data=WP.data)
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        for task in T.parallel(groups_ * nvb):  # (row tile group, column block) pairs
            yacc = T.decl_buffer((px * vecs * 16,), f32, scope=SCRATCH)
            iacc = T.decl_buffer((px * vecs * 16,), "int32", scope=SCRATCH)
            wdec = T.decl_buffer((vecs * 128,), "int8", scope=SCRATCH)
            xs = T.decl_buffer((px,), "int32", scope=SCRATCH)
            for i in range(size):
                if task // nvb * size + i < tiles:
                    for p, v in T.grid(px, vecs):
                        for j in T.vectorized(16):
                            yacc[(p * vecs + v) * 16 + j] = BIAS[blk(task, v) * 16 + j]
                    for g in range(ng):
                        for q in T.unroll(px * vecs):
                            iacc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                        for p in range(px):  # X_g: the group's sum of (x - zx) over its real columns
                            xs[p] = (T.min(group, k - g * group)) * -ZP[row(task, i, p) if per_row else 0]
                            for kk in range(group):
                                xs[p] = xs[p] + T.Cast("int32", X[row(task, i, p) * kp + g * group + kk])
                        for t in range(steps):
                            for v in T.unroll(vecs):  # the record PREFETCH groups ahead, a line per step
                                T.evaluate(T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id("llvm.prefetch.p0"),
                                                              T.address_of(W[T.min((blk(task, v) * ng + g + PREFETCH)
                                                                                   * rec + t * 64, nb * ng * rec - 1)]),
                                                              T.int32(0), T.int32(3), T.int32(1)))
                                wv = W.vload([(blk(task, v) * ng + g) * rec + t * 64], "uint8x64")
                                wdec[T.ramp(v * 128, 1, 64)] = decode(T.reinterpret(
                                    "int8x64", wv & T.broadcast(T.uint8(15), 64)), LUT)
                                wdec[T.ramp(v * 128 + 64, 1, 64)] = decode(T.reinterpret(
                                    "int8x64", wv >> T.broadcast(T.uint8(4), 64)), LUT)
                            for p in T.unroll(px):
                                for v in T.unroll(vecs):
                                    iacc[T.ramp((p * vecs + v) * 16, 1, 16)] = vpdpbusd(
                                        vpdpbusd(iacc[T.ramp((p * vecs + v) * 16, 1, 16)],
                                                 word(X, row(task, i, p), g * group + t * STEP),
                                                 wdec[T.ramp(v * 128, 1, 64)]),
                                        word(X, row(task, i, p), g * group + t * STEP + 4),
                                        wdec[T.ramp(v * 128 + 64, 1, 64)])
                        for p, v in T.grid(px, vecs):
                            for j in T.vectorized(16):
                                yacc[(p * vecs + v) * 16 + j] = fma(
                                    exact(W, CS, ZP, xs, iacc, task, i, p, v, g, j),
                                    SC[row(task, i, p) if per_row else 0] * SW[tail(task, v, g) // 4 + j],
                                    yacc[(p * vecs + v) * 16 + j])
                    for p, v in T.grid(px, vecs):
                        if blk(task, v) * 16 + 16 <= n:
                            for j in T.vectorized(16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
                        elif blk(task, v) * 16 < n:
                            for j in range(n % 16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
    return func


__all__ = ["matmul_func", "nibbles", "register_tile", "STEP", "MAX_GROUP", "RECORD_TAIL"]
