"""Unstructured-sparse group-wise 4-bit weights times dynamically quantized u8 rows on AVX-512 VNNI + VBMI2.

The dense nibble kernel (``w4.py``) streams 0.5 byte per weight plus a group's scales; a weight with a fraction z
of zeros can stream its nonzero nibbles only. Symmetric codes (zero points 0, no codebook) make a zero weight the
code 0, so ``vpexpandb`` (zero-filling) rebuilds the vectors. Per 16-column block and 8 k (one dense 64-byte
load: 16 columns x 4 k in ``vpdpbusd`` order twice, k..k+3 and k+4..k+7) two 64-bit masks say which of the two
vectors' bytes are nonzero; the two vectors' nonzero codes share one byte stream, the first vector's in the low
nibbles and the second's in the high ones, as many bytes as the larger count (the other padded with 0). A kernel
step: one unaligned 64-byte load at the running offset, ``and 15`` / ``shift 4``, a 16-entry ``vpshufb`` table
sign-extends the nibbles (0..7, -8..-1), two ``vpexpandb`` under the two masks, one ``vpdpbusd`` per row each,
the offset advances by the larger popcount. Column blocks are taken g at a time (``sparse.block_group``), their
steps interleaved in one stream and one mask stream per task, as ``sparse.py`` does for i8.

Per weight this streams about (1 - z) / 2 (a bit more: the padding to the larger count) + 1/8 (masks) bytes plus
the group's 16 f32 scales and 16 i32 code sums per 16 columns, against 0.5 + 8 / group for dense.

The epilogue is the dense kernel's sum, exactly: with zero points 0, sum_k (x - zx) c = sum_k x c - zx C_g
(C_g the group's code sum), an integer below 2^24, so ``t = fma(zx, -C_g, f32(acc))`` is the dense kernel's ``t``
and ``y = fma(t, sx * sw, y)`` in the same group order gives the same bits (``w4.py``; the interpreter's
``quant.scheme.grouped_dynamic_rescale``).

>>> w = np.zeros((8, 16), np.int64); w[0, 0], w[5, 3] = 3, -2     # k 0 in the first vector, k 5 in the second
>>> p = pack(w, 8, 8, np.ones((1, 16), np.float32))
>>> [hex(int(m)) for m in p.masks[0]], p.stream[:1].tolist(), p.csum[0, :4].tolist()
(['0x1', '0x2000'], [227], [3, 0, 0, -2])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import sparse

STEP = 8  # k per pair of 64-byte vectors
TAIL = sparse.TAIL
MAX_GROUP = 4096  # 255 * 8 * 4096 < 2^24: a group's sums stay exact in f32
# benchmarks/sparse_gemv.py --int4 128, AMD EPYC Zen 4, 2 threads, cache-cold, dense vnni-w4 / this kernel at
# 40, 50, 60, 70, 90 % zeros and 2:4 (the format 0.897, 0.809, 0.719, 0.630, 0.44, 0.778 of the dense bytes):
# 1024x2816 M=1 1.29, 1.23, 1.23, 1.40, 1.90, 1.38x; M=2 1.07, 1.11, 1.31, 1.34, 1.68, 1.16x; M=4 0.84, 0.90,
# 0.89, 1.03, 1.10, 0.99x; 4096x11008 M=1 1.15, 1.30, 1.24, 1.46, 1.41, 1.22x; M=2 1.08, 1.20, 1.47, 1.47, 1.31,
# 1.22x. The dense nibble kernel reaches only 53-73 % of the read bandwidth, so the sparse one wins by more than
# the bytes say at M <= 2 and loses at M = 4 (four rows of decode per vector pair).
# Warm (--warm, no eviction) it loses everywhere measured: 384x1536, 1024x1024, 1024x2816 at 50 and 70 % zeros,
# M=1 0.87, 0.87, 0.66, 0.68, 0.58, 0.72x; M=2 0.76, 0.80, 0.77, 0.74, 0.67, 0.65x: ``ops_sparse.cache_reason``
# (the model's constants must exceed the last-level cache) applies as to i8.
MAX_ROWS = 2
MAX_BYTES_FRACTION = 0.9  # the stored bytes must be at most this much of the dense nibble kernel's (40 % zeros)
SIGN_TABLE = np.tile(np.r_[np.arange(8), np.arange(-8, 0)], 4).astype(np.int8)  # a nibble -> its i4 value


@dataclass(frozen=True)
class Packed:
    """A group-wise i4 weight in the sparse nibble format: ``stream`` u8, ``masks`` [nb / g, steps * g * 2] u64,
    ``starts`` [nb / g] i32, ``scales`` f32 and ``csum`` i32 [nb / g * ng * g, 16] (per (block group, group,
    block) 16 columns)."""

    stream: np.ndarray
    masks: np.ndarray
    starts: np.ndarray
    scales: np.ndarray
    csum: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.stream, self.masks, self.starts, self.scales, self.csum))


def pack(codes: np.ndarray, kp: int, group: int, scales: np.ndarray) -> Packed:
    """The format of a [K, N] weight of signed codes -8..7 (zero points 0), K padded to ``kp`` (whole groups) and
    N to whole 16-column blocks with 0; ``scales`` [ng, N] f32."""
    k, n = codes.shape
    if codes.min(initial=0) < -8 or codes.max(initial=0) > 7:
        raise ValueError("codes must lie in -8..7")
    ng, n16 = kp // group, -(-n // 16) * 16
    nb = n16 // 16
    g = sparse.block_group(nb)
    w = np.zeros((kp, n16), np.int64)
    w[:k, :n] = codes
    # [kp/8, 2 (vector), 4 (k in a lane), nb, 16 (columns)] -> [nb, kp/8, 2, 16, 4]: byte 4 * column + k
    vec = w.reshape(kp // STEP, 2, 4, nb, 16).transpose(3, 0, 1, 4, 2).reshape(nb, kp // STEP, 2, 64)
    s = kp // STEP
    vec = np.ascontiguousarray(vec.reshape(nb // g, g, s, 2, 64).transpose(0, 2, 1, 3, 4))  # [nb/g, s, g, 2, 64]
    nz = vec != 0
    masks = np.packbits(nz, axis=-1, bitorder="little").view("<u8")[..., 0]  # [nb/g, s, g, 2]
    cnt = nz.sum(axis=-1)
    pair = cnt.max(axis=-1)  # bytes per vector pair
    rank = np.cumsum(nz, axis=-1) - 1  # each nonzero's byte in the pair's stream
    nib = np.zeros(vec.shape[:-2] + (64,), np.int64)  # [nb/g, s, g, 64]
    for h in (0, 1):
        sel = nz[..., h, :]
        idx = np.nonzero(sel)
        nib[idx[:-1] + (rank[..., h, :][sel],)] |= (vec[..., h, :][sel] & 15) << (4 * h)
    keep = np.arange(64) < pair[..., None]
    per_task = pair.reshape(nb // g, -1).sum(axis=1)
    if per_task.sum() + TAIL >= 2 ** 31:
        raise ValueError("the sparse stream needs i32 offsets")
    starts = np.concatenate([[0], np.cumsum(per_task)[:-1]]).astype(np.int32)
    stream = np.concatenate([nib[keep].astype(np.uint8), np.zeros(TAIL, np.uint8)])
    sw = np.ones((ng, n16), np.float32)
    sw[:, :n] = scales
    csum = w.reshape(ng, group, n16).sum(axis=1)  # [ng, n16]

    def per_group(a):  # [ng, n16] -> [nb/g * ng * g, 16]: (block group, group, block) order
        return np.ascontiguousarray(a.reshape(ng, nb // g, g, 16).transpose(1, 0, 2, 3)).reshape(-1, 16)
    return Packed(stream, np.array(masks, np.uint64).reshape(nb // g, -1), starts, per_group(sw),
                  per_group(csum).astype(np.int32))


def stored_bytes(codes: np.ndarray, kp: int, group: int) -> tuple[int, int]:
    """(bytes the format stores, bytes the dense nibble kernel stores: ``w4.nibbles``) for a [K, N] code array."""
    from .w4 import RECORD_TAIL

    k, n = codes.shape
    ng, nb = kp // group, -(-n // 16)
    p = pack(codes, kp, group, np.ones((ng, n), np.float32))
    return p.nbytes, nb * ng * (group * 8 + RECORD_TAIL)


def register_tile(nb: int, m: int, rows: int) -> tuple[int, int]:
    """(rows, column blocks) of a task's tile: the block group, and rows so that the i32 and f32 accumulators
    (2 per row and block) fit beside the decoded vectors in 32 registers."""
    vecs = sparse.block_group(nb)
    return max(1, min(rows, m, 12 // vecs)), vecs


def matmul_func(m: int, kp: int, n: int, group: int, stream_len: int, per_row: bool, out_shape, rows: int = 2,
                tasks: int = 16):
    """A PrimFunc (XQ [m, kp] u8, SC [m or 1] f32, ZP [m or 1] i32, STREAM, MASKS, STARTS, SW, CS (``pack``),
    BIAS [N16] f32, SIGN [64] i8 (``SIGN_TABLE``)) -> Y ``out_shape`` f32 ([.., n])."""
    from tvm.script import tirx as T

    n16 = -(-n // 16) * 16
    nb, ng, steps = n16 // 16, kp // group, group // STEP
    px, vecs = register_tile(nb, m, rows)
    nvb = nb // vecs
    nsteps = kp // STEP
    tiles = -(-m // px)
    groups_ = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups_)
    groups_ = -(-tiles // size)
    prm = m if per_row else 1
    f32 = "float32"

    def row(task, i, p):
        return T.min((task // nvb * size + i) * px, m - px) + p

    def blk(task, v):
        return task % nvb * vecs + v

    def mask_at(task, s, v, h):  # the mask of vector h (0: k..k+3, 1: k+4..k+7) of the task's v-th block at step s
        return (((task % nvb) * nsteps + s) * vecs + v) * 2 + h

    def word(X, r, k):
        return T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", X.vload([r * kp + k], "uint8x4")), 16))

    def vpdpbusd(a, x, w):
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), a, x, w)

    def fma(a, b, c):
        return T.call_llvm_pure_intrin(f32, "llvm.fma", a, b, c)

    def signed(SG, nibbles):  # nibbles 0..15 -> i4 values (vpshufb on the 16-entry table)
        return T.call_llvm_pure_intrin("int8x64", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"),
                                       SG.vload([0], "int8x64"), nibbles)

    def expanded(v, mask):
        return T.call_extern("int8x64", sparse.EXPAND_FUNC, v, mask)

    def meta(task, g, v):  # the row of SW / CS of (the task's block group, group g, block v)
        return ((task % nvb) * ng + g) * vecs + v

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), SC: T.Buffer((prm,), f32), ZP: T.Buffer((prm,), "int32"),
             STREAM: T.Buffer((stream_len,), "uint8"), MASKS: T.Buffer((nvb, nsteps * vecs * 2), "uint64"),
             STARTS: T.Buffer((nvb,), "int32"), SWP: T.Buffer((nvb * ng * vecs, 16), f32),
             CSP: T.Buffer((nvb * ng * vecs, 16), "int32"), BIAS: T.Buffer((n16,), f32),
             SG: T.Buffer((64,), "int8"), YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kp,), "uint8", data=XQ.data)
        MK = T.decl_buffer((nvb * nsteps * vecs * 2,), "uint64", data=MASKS.data)
        SW = T.decl_buffer((nvb * ng * vecs * 16,), f32, data=SWP.data)
        CS = T.decl_buffer((nvb * ng * vecs * 16,), "int32", data=CSP.data)
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        with T.attr(T.int32(0), "pragma_import_llvm", sparse.EXPAND_IR):
            for task in T.parallel(groups_ * nvb):
                yacc = T.decl_buffer((px * vecs * 16,), f32, scope=sparse.SCRATCH)
                iacc = T.decl_buffer((px * vecs * 16,), "int32", scope=sparse.SCRATCH)
                wdec = T.decl_buffer((vecs * 128,), "int8", scope=sparse.SCRATCH)
                off = T.decl_buffer((1,), "int32", scope=sparse.SCRATCH)
                for i in range(size):
                    if task // nvb * size + i < tiles:
                        for p, v in T.grid(px, vecs):
                            for j in T.vectorized(16):
                                yacc[(p * vecs + v) * 16 + j] = BIAS[blk(task, v) * 16 + j]
                        off[0] = STARTS[task % nvb]
                        for g in range(ng):
                            for q in T.unroll(px * vecs):
                                iacc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                            for t in range(steps):
                                for v in T.unroll(vecs):
                                    wv = STREAM.vload([off[0]], "uint8x64")
                                    wdec[T.ramp(v * 128, 1, 64)] = expanded(signed(SG, T.reinterpret(
                                        "int8x64", wv & T.broadcast(T.uint8(15), 64))),
                                        MK[mask_at(task, g * steps + t, v, 0)])
                                    wdec[T.ramp(v * 128 + 64, 1, 64)] = expanded(signed(SG, T.reinterpret(
                                        "int8x64", wv >> T.broadcast(T.uint8(4), 64))),
                                        MK[mask_at(task, g * steps + t, v, 1)])
                                    off[0] = off[0] + T.max(
                                        T.Cast("int32", T.popcount(MK[mask_at(task, g * steps + t, v, 0)])),
                                        T.Cast("int32", T.popcount(MK[mask_at(task, g * steps + t, v, 1)])))
                                for p in T.unroll(px):
                                    for v in T.unroll(vecs):
                                        iacc[T.ramp((p * vecs + v) * 16, 1, 16)] = vpdpbusd(
                                            vpdpbusd(iacc[T.ramp((p * vecs + v) * 16, 1, 16)],
                                                     word(X, row(task, i, p), (g * steps + t) * STEP),
                                                     wdec[T.ramp(v * 128, 1, 64)]),
                                            word(X, row(task, i, p), (g * steps + t) * STEP + 4),
                                            wdec[T.ramp(v * 128 + 64, 1, 64)])
                            for p, v in T.grid(px, vecs):
                                for j in T.vectorized(16):
                                    yacc[(p * vecs + v) * 16 + j] = fma(
                                        fma(T.Cast(f32, ZP[row(task, i, p) if per_row else 0]),
                                            T.Cast(f32, -CS[meta(task, g, v) * 16 + j]),
                                            T.Cast(f32, iacc[(p * vecs + v) * 16 + j])),
                                        SC[row(task, i, p) if per_row else 0] * SW[meta(task, g, v) * 16 + j],
                                        yacc[(p * vecs + v) * 16 + j])
                        for p, v in T.grid(px, vecs):
                            if blk(task, v) * 16 + 16 <= n:
                                for j in T.vectorized(16):
                                    Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
                            elif blk(task, v) * 16 < n:
                                for j in range(n % 16):
                                    Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
    return func


__all__ = ["Packed", "pack", "stored_bytes", "register_tile", "matmul_func", "STEP", "MAX_GROUP", "MAX_ROWS",
           "MAX_BYTES_FRACTION", "SIGN_TABLE"]
