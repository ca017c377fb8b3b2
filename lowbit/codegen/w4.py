"""Group-wise 4-bit weights times dynamically quantized u8 rows on AVX-512 VNNI (W4A8): hand-written TIR.

The weight streams from memory as packed nibbles, 64 bytes per load: 16 output columns x 8 consecutive k, the
low nibbles holding k..k+3 and the high ones k+4..k+7 of each column (VNNI order: a column's 4 k are one 32-bit
lane). A load becomes two i8 vectors in registers — ``and 15`` / ``shift 4`` and the column's zero point
subtracted (``vpsubb``), w - zw in [-15, 15] — each fed to one ``vpdpbusd`` per row with that row's 4 u8 inputs
broadcast. Per group and column the kernel also reads a u8 zero point (spread to the 4 bytes of a lane with one
multiply), an i16 column sum and an f32 scale: 7 bytes beside the 16 of nibbles at group 32. The i32 sums of a group of K are exact; at the group's end each is rescaled and added to the f32
result with one fused multiply-add, ``y = fma(f32(acc - zx * wsum), sx * sw, y)``, the group order and rounding
of the reference (``quant.scheme.grouped_dynamic_rescale``). A register tile is ``rows`` rows x ``vecs``
16-column vectors; tasks are (row tile, column block) pairs. With one row (a GEMV, the decode step of an LLM)
the kernel reads 4.25 bits per weight (scales, zero points and column sums add 0.25 at group 128) and is bound
by memory bandwidth.
"""
from __future__ import annotations

import numpy as np

STEP = 8  # k per 64-byte load


def nibbles(w: np.ndarray, zw: np.ndarray, qmin: int, group: int):
    """(packed [nb, ng, group/8, 64] u8, zero points [nb, ng, 16] u8, column sums [ng, N16] i16) of a [K, N]
    weight of integer codes with zero points ``zw`` [ng, N] (codes - qmin in 0..15). K is padded to ng * group
    and N to N16 with codes equal to their zero point, which weigh 0."""
    k, n = w.shape
    ng, n16 = -(-k // group), -(-n // 16) * 16
    nib = np.zeros((ng * group, n16), np.int64)
    zp = np.zeros((ng, n16), np.int64)
    zp[:, :n] = zw - qmin
    nib[:] = np.repeat(zp, group, axis=0)
    nib[:k, :n] = w.astype(np.int64) - qmin
    if nib.min() < 0 or nib.max() > 15 or zp.min() < 0 or zp.max() > 15:
        raise ValueError("codes and zero points must lie in qmin..qmin+15")
    wsum = (nib - np.repeat(zp, group, axis=0)).reshape(ng, group, n16).sum(axis=1)
    if np.abs(wsum).max(initial=0) > 32767:
        raise ValueError(f"group {group} is too large for i16 column sums")
    # [ng, group/8, 2 (lo/hi), 4 (k in a lane), nb, 16 (columns)] -> [nb, ng, group/8, 16, 4] bytes
    t = nib.reshape(ng, group // STEP, 2, 4, n16 // 16, 16)
    packed = (t[:, :, 0] | (t[:, :, 1] << 4)).transpose(3, 0, 1, 4, 2).astype(np.uint8)
    zv = zp.reshape(ng, n16 // 16, 16).transpose(1, 0, 2).astype(np.uint8)
    return (np.ascontiguousarray(packed.reshape(n16 // 16, ng, group // STEP, 64)), np.ascontiguousarray(zv),
            wsum.astype(np.int16))


def register_tile(nb: int, m: int, rows: int) -> tuple[int, int]:
    """(rows, vectors): up to 4 column vectors; the i32 and f32 accumulators of the tile, the 2 x vecs decoded
    weights, the zero points and the broadcast word fit in 32 zmm registers."""
    vecs = max(v for v in (4, 2, 1) if nb % v == 0)
    return max(1, min(rows, m, (30 - 3 * vecs) // (2 * vecs))), vecs


def matmul_func(m: int, kp: int, n: int, group: int, per_row: bool, out_shape, rows: int = 2, tasks: int = 16):
    """A PrimFunc (XQ [m, kp] u8, SC [m or 1] f32, ZP [m or 1] i32, packed W, zero points, WSUM [ng, N16] i16,
    SW [ng, N16] f32, BIAS [N16] f32) -> Y ``out_shape`` f32 ([.., n]), as ``nibbles`` packs the weight."""
    from tvm.script import tirx as T

    ng, n16 = kp // group, -(-n // 16) * 16
    nb = n16 // 16
    steps = group // STEP
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

    def word(X, r, k):  # 4 u8 inputs of row r from k, broadcast to the 16 lanes
        return T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", X.vload([r * kp + k], "uint8x4")), 16))

    def vpdpbusd(a, x, w):
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), a, x, w)

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), SC: T.Buffer((prm,), f32), ZP: T.Buffer((prm,), "int32"),
             WP: T.Buffer((nb, ng, steps, 64), "uint8"), ZV: T.Buffer((nb, ng, 16), "uint8"),
             WSUM: T.Buffer((ng, n16), "int16"), SW: T.Buffer((ng, n16), f32), BIAS: T.Buffer((n16,), f32),
             YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kp,), "uint8", data=XQ.data)
        W = T.decl_buffer((nb * ng * steps * 64,), "uint8", data=WP.data)
        Z = T.decl_buffer((nb * ng * 16,), "uint8", data=ZV.data)
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        for task in T.parallel(groups_ * nvb):  # (row tile group, column block) pairs
            yacc = T.decl_buffer((px * vecs * 16,), f32, scope="local")
            iacc = T.decl_buffer((px * vecs * 16,), "int32", scope="local")
            wdec = T.decl_buffer((vecs * 128,), "int8", scope="local")
            zloc = T.decl_buffer((vecs * 64,), "int8", scope="local")
            for i in range(size):
                if task // nvb * size + i < tiles:
                    for p, v in T.grid(px, vecs):
                        for j in T.vectorized(16):
                            yacc[(p * vecs + v) * 16 + j] = BIAS[blk(task, v) * 16 + j]
                    for g in range(ng):
                        for q in T.unroll(px * vecs):
                            iacc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                        for v in T.unroll(vecs):  # the zero points in the 4 bytes of each lane
                            zloc[T.ramp(v * 64, 1, 64)] = T.reinterpret("int8x64", T.Cast("int32x16", Z.vload(
                                [(blk(task, v) * ng + g) * 16], "uint8x16")) * T.broadcast(T.int32(0x01010101), 16))
                        for t in range(steps):
                            for v in T.unroll(vecs):
                                wv = W.vload([((blk(task, v) * ng + g) * steps + t) * 64], "uint8x64")
                                wdec[T.ramp(v * 128, 1, 64)] = T.reinterpret(
                                    "int8x64", wv & T.broadcast(T.uint8(15), 64)) - zloc[T.ramp(v * 64, 1, 64)]
                                wdec[T.ramp(v * 128 + 64, 1, 64)] = T.reinterpret(
                                    "int8x64", wv >> T.broadcast(T.uint8(4), 64)) - zloc[T.ramp(v * 64, 1, 64)]
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
                                yacc[(p * vecs + v) * 16 + j] = T.call_llvm_pure_intrin(
                                    f32, "llvm.fma",
                                    T.Cast(f32, iacc[(p * vecs + v) * 16 + j]
                                           - ZP[row(task, i, p) if per_row else 0]
                                           * T.Cast("int32", WSUM[g, blk(task, v) * 16 + j])),
                                    SC[row(task, i, p) if per_row else 0] * SW[g, blk(task, v) * 16 + j],
                                    yacc[(p * vecs + v) * 16 + j])
                    for p, v in T.grid(px, vecs):
                        if blk(task, v) * 16 + 16 <= n:
                            for j in T.vectorized(16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
                        elif blk(task, v) * 16 < n:
                            for j in range(n % 16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
    return func


__all__ = ["matmul_func", "nibbles", "register_tile", "STEP"]
