"""Unstructured-sparse i8 weights times dynamically quantized u8 rows on AVX-512 VNNI + VBMI2: hand-written TIR.

At a batch of one (an LLM's decode step) a matmul by a constant weight is bound by the bytes it streams from
memory, so a weight with many zeros should stream only its nonzeros. The format keeps the dense VNNI kernel's
64-byte vectors (``vnni.pack_weights``: 16 output columns x 4 consecutive k, ``vpdpbusd`` order, byte
``4 * column + k``). The nb = N16 / 16 column blocks are taken g at a time (``block_group``: 4, 2 or 1, whichever
divides nb), one group per task, and a group's vectors are interleaved step by step (k step 0 of its blocks
0..g-1, then step 1, ...). Stored:

- ``masks`` [nb / g, K4 / 4 * g] u64, in that order: a 64-bit mask of each vector's nonzero bytes;
- ``stream`` u8: each vector's nonzero bytes, back to back in that order, group after group (64 zero bytes at
  the end so a 64-byte load at any offset stays inside);
- ``starts`` [nb / g] i32: each group's first byte in the stream.

One stream of data and one of masks per task (not one per block): with a stream per block (8 per core) the same
kernel reached 0.59 of dense's bandwidth instead of 0.71 at 70 % zeros (4096x11008, AMD EPYC Zen 4, 2 threads,
cache-cold, one process; the running-offset chain per vector is one add).

The kernel decodes a vector with one unaligned 64-byte load at the group's running offset and ``vpexpandb``
(VBMI2) under the mask — the nonzeros back in their lanes, zeros elsewhere — feeds it to one ``vpdpbusd`` per row
(the row's 4 u8 inputs broadcast) and advances the offset by popcount(mask). A weight with a fraction z of zeros
streams (1 - z) + 1/8 bytes per weight instead of 1 (z = 0.5: 0.625; z = 0.7: 0.425): ``ops_sparse.bytes_reason``
asks for at most ``MAX_BYTES_FRACTION`` of the dense bytes. (LLVM folds the load into vpexpandb's memory form;
the register form through inline asm measured the same.)

A task is (row tile, block group); the expanded vectors are kept in a scratch buffer when several rows read
them. The epilogue is the dense dynamic kernel's (``vnni.conv_func`` with ``dynamic``):
``f32(acc - zp * wsum) * (sc * ws) + bias``, the same expression, so results are bit-exact against it and the
interpreter: the i32 sums are exact and equal.

>>> w = np.zeros((8, 16), np.int8); w[0, 0], w[5, 3] = 2, -1
>>> p = pack(w, 8)
>>> [hex(int(m)) for m in p.masks[0]], p.stream[:2].view(np.int8).tolist(), p.starts.tolist()
(['0x1', '0x2000'], [2, -1], [0])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP = 4  # k per 64-byte vector
TAIL = 64  # zero bytes after the stream: an unaligned 64-byte load at its last offset stays inside
MAX_BYTES_FRACTION = 0.8  # the stored bytes (nonzeros, masks, starts) must be at most this much of dense's
# more rows than this and the kernel is bound by its decode and vpdpbusd, not memory: 4096x11008, AMD EPYC Zen 4,
# 2 threads, cache-cold, dense / sparse at 50 % and 70 % zeros: M=2 1.41x, 2.03x; M=4 1.40x, 1.60x; M=8 0.94x, 0.98x
MAX_ROWS = 4
# A model whose constant weights fit the last-level cache keeps them there between calls: each layer is read at
# cache speed and the sparse kernel is bound by its decode (the running offset, vpexpandb), not bytes, and it
# loses as often as it wins. benchmarks/sparse_gemv.py --warm (no eviction), AMD EPYC Zen 4 (1 MB L2 per core,
# 32 MB L3), 2 threads, dense / sparse at 35 %, 50 %, 70 % zeros, 2:4 (two runs of the same build varied by 2x):
# - L2-resident (<= 1 MB of weights per call): 384x384 M=1 1.18, 1.25, 1.34, 1.21x; 384x1536 M=1 1.10-1.26x;
#   1536x384 M=1 0.94, 0.91, 0.92, 0.88x; 1024x1024 M=1 0.84, 0.83, 0.86, 0.97x; M=2 0.81-1.16x; M=4 0.74-1.09x
#   (576x1536 M=4 0.84, 0.83, 0.90, 0.86x);
# - L3-resident (one weight of 2.9 or 4.2 MB): 1024x2816 M=1 1.30, 1.22, 1.59, 1.29x and, another run, 0.97x at
#   40 %, 1.12x at 50 %; 2048x2048 M=1 0.97, 1.15, 1.39, 1.27x and, another run, 0.81x at 40 %, 0.82x at 50 %,
#   M=2 0.68x at 40 and 50 %; M=4 0.85, 0.81, 0.81, 0.78x.
# Cache-cold (a model larger than the LLC: each layer's weight evicted by the others') the bytes bar holds to its
# edge: 1024x2816 at 30, 35, 40 % zeros M=1 1.27, 1.31, 1.40x; M=2 1.36, 1.47, 1.60x; M=4 1.08, 1.10, 1.22x.
# So the kernel is chosen only where the model's constants (all of its graph's) exceed the LLC, then by the bytes.
DEFAULT_LLC = 32 << 20  # a target whose caches are not known (not this host)
# a task's accumulators, offsets and expanded vectors: "global" scope keeps these small buffers on the stack (then
# in registers), as w4.SCRATCH explains
SCRATCH = "global"
EXPAND_FUNC = "lowbit_vpexpandb"
# vpexpandb (VBMI2) on a 64-byte vector and a 64-bit mask: TVM 0.27 has no <64 x i1> type to give the intrinsic,
# so a two-line LLVM IR function bitcasts the mask; TVM links it in (pragma_import_llvm) and LLVM inlines it
EXPAND_IR = f"""
declare <64 x i8> @llvm.x86.avx512.mask.expand.v64i8(<64 x i8>, <64 x i8>, <64 x i1>)
define linkonce_odr <64 x i8> @{EXPAND_FUNC}(<64 x i8> %v, i64 %m) #0 {{
  %k = bitcast i64 %m to <64 x i1>
  %r = call <64 x i8> @llvm.x86.avx512.mask.expand.v64i8(<64 x i8> %v, <64 x i8> zeroinitializer, <64 x i1> %k)
  ret <64 x i8> %r
}}
attributes #0 = {{ alwaysinline nounwind memory(none) }}
"""


@dataclass(frozen=True)
class Packed:
    """A weight in the sparse format (module docstring): ``stream`` u8, ``masks`` [nb / g, kc * g] u64,
    ``starts`` [nb / g] i32; ``kc`` = K4 / 4 vectors per column block, g = ``block_group(nb)``."""

    stream: np.ndarray
    masks: np.ndarray
    starts: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.stream.nbytes + self.masks.nbytes + self.starts.nbytes


def vectors(weight: np.ndarray, kp: int) -> np.ndarray:
    """[K, N] i8 -> [nb, kp / 4, 64] i8: the dense VNNI vectors (``vnni.pack_weights``' order), zero past K and N."""
    k, n = weight.shape
    n16 = -(-n // 16) * 16
    w = np.zeros((kp, n16), np.int8)
    w[:k, :n] = weight
    return np.ascontiguousarray(w.reshape(kp // STEP, STEP, n16 // 16, 16).transpose(2, 0, 3, 1)).reshape(
        n16 // 16, kp // STEP, 64)


def block_group(nb: int) -> int:
    """Column blocks a task takes (their vectors interleaved in one stream): 4, 2 or 1, whichever divides nb."""
    return max(v for v in (4, 2, 1) if nb % v == 0)


def pack(weight: np.ndarray, kp: int) -> Packed:
    """The sparse format of a [K, N] i8 weight, K padded to ``kp`` (a multiple of 4)."""
    vec = vectors(weight, kp)
    nb, kc = vec.shape[:2]
    g = block_group(nb)  # [nb, kc, 64] -> [nb / g, kc * g, 64]: a group's blocks interleaved step by step
    vec = np.ascontiguousarray(vec.reshape(nb // g, g, kc, 64).transpose(0, 2, 1, 3)).reshape(nb // g, kc * g, 64)
    nz = vec != 0
    masks = np.packbits(nz, axis=-1, bitorder="little").view("<u8")[..., 0]  # bit j: byte j of the vector
    per_group = nz.reshape(nz.shape[0], -1).sum(axis=1)
    if per_group.sum() + TAIL >= 2 ** 31:
        raise ValueError("the sparse stream needs i32 offsets")
    starts = np.concatenate([[0], np.cumsum(per_group)[:-1]]).astype(np.int32)
    stream = np.concatenate([vec[nz].view(np.uint8), np.zeros(TAIL, np.uint8)])
    return Packed(stream, np.array(masks, np.uint64).reshape(nb // g, kc * g), starts)


def stored_bytes(weight: np.ndarray, kp: int) -> tuple[int, int]:
    """(bytes the sparse format stores, bytes the dense VNNI layout stores) for a [K, N] i8 weight."""
    k, n = weight.shape
    nb, kc = -(-n // 16), kp // STEP
    return int(np.count_nonzero(weight)) + 8 * nb * kc + 4 * (nb // block_group(nb)) + TAIL, 64 * nb * kc


def register_tile(nb: int, m: int, rows: int) -> tuple[int, int]:
    """(rows, column blocks) of a task's accumulator tile: the block group (``block_group``), as many rows as
    fit beside it in 24 accumulators (at most ``rows`` and m)."""
    vecs = block_group(nb)
    return max(1, min(rows, m, 24 // vecs)), vecs


def matmul_func(m: int, kp: int, n: int, stream_len: int, per_row: bool, out_shape, rows: int = 6,
                tasks: int = 16):
    """A PrimFunc (XQ [m, kp] u8 (zeros past K), ZP [m or 1] i32, SC [m or 1] f32, STREAM [stream_len] u8,
    MASKS [nb / g, kp / 4 * g] u64, STARTS [nb / g] i32 (``pack``), WSUM [N16] i32, WS [N16] f32, BIAS [N16] f32) -> Y ``out_shape``
    f32 ([.., n]): Y = f32(acc - zp * wsum) * (sc * ws) + bias, acc the exact i32 sum of x * w."""
    from tvm.script import tirx as T

    n16 = -(-n // 16) * 16
    nb, kc = n16 // 16, kp // STEP
    px, vecs = register_tile(nb, m, rows)
    nvb = nb // vecs
    tiles = -(-m // px)
    groups = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups)
    groups = -(-tiles // size)
    prm = m if per_row else 1
    f32 = "float32"
    keep = px > 1  # several rows read each expanded vector: keep it in scratch

    def row(task, i, p):  # a tile's p-th row (a last tile ends at the last row, recomputing some)
        return T.min((task // nvb * size + i) * px, m - px) + p

    def blk(task, v):
        return task % nvb * vecs + v

    def mask_at(task, v, s):  # the mask of the task's v-th block at step s
        return ((task % nvb) * kc + s) * vecs + v

    def word(X, r, s):  # the 4 u8 inputs of row r at step s, broadcast to the 16 lanes
        return T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", X.vload([r * kp + s * STEP], "uint8x4")),
                                                    16))

    def vpdpbusd(a, x, w):
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), a, x, w)

    def expanded(S, off, mask):
        return T.call_extern("int8x64", EXPAND_FUNC, S.vload([off], "int8x64"), mask)

    def rescale(ZP, SC, WSUM, WS, BIAS, a, q, c):  # the dense dynamic kernel's epilogue (vnni.conv_func)
        r = q if per_row else 0
        return T.Cast(f32, a - ZP[r] * WSUM[c]) * (SC[r] * WS[c]) + BIAS[c]

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), ZP: T.Buffer((prm,), "int32"), SC: T.Buffer((prm,), f32),
             STREAM: T.Buffer((stream_len,), "uint8"), MASKS: T.Buffer((nvb, kc * vecs), "uint64"),
             STARTS: T.Buffer((nvb,), "int32"), WSUM: T.Buffer((n16,), "int32"), WS: T.Buffer((n16,), f32),
             BIAS: T.Buffer((n16,), f32), YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kp,), "uint8", data=XQ.data)
        S = T.decl_buffer((stream_len,), "int8", data=STREAM.data)
        MK = T.decl_buffer((nb * kc,), "uint64", data=MASKS.data)
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        with T.attr(T.int32(0), "pragma_import_llvm", EXPAND_IR):  # the vpexpandb function (see above)
            for task in T.parallel(groups * nvb):  # (row tile group, column block group) pairs
                acc = T.decl_buffer((px * vecs * 16,), "int32", scope=SCRATCH)
                off = T.decl_buffer((1,), "int32", scope=SCRATCH)
                wexp = T.decl_buffer((vecs * 64,), "int8", scope=SCRATCH)
                for i in range(size):
                    if task // nvb * size + i < tiles:
                        for q in T.unroll(px * vecs):
                            acc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                        off[0] = STARTS[task % nvb]
                        for s in range(kc):
                            for v in T.unroll(vecs):
                                if keep:
                                    wexp[T.ramp(v * 64, 1, 64)] = expanded(S, off[0], MK[mask_at(task, v, s)])
                                    for p in T.unroll(px):
                                        acc[T.ramp((p * vecs + v) * 16, 1, 16)] = vpdpbusd(
                                            acc[T.ramp((p * vecs + v) * 16, 1, 16)], word(X, row(task, i, p), s),
                                            wexp[T.ramp(v * 64, 1, 64)])
                                else:
                                    acc[T.ramp(v * 16, 1, 16)] = vpdpbusd(
                                        acc[T.ramp(v * 16, 1, 16)], word(X, row(task, i, 0), s),
                                        expanded(S, off[0], MK[mask_at(task, v, s)]))
                                off[0] = off[0] + T.Cast("int32", T.popcount(MK[mask_at(task, v, s)]))
                        for p in T.unroll(px):
                            for v in T.unroll(vecs):
                                if blk(task, v) * 16 + 16 <= n:
                                    for j in T.vectorized(16):
                                        Y[row(task, i, p) * n + blk(task, v) * 16 + j] = rescale(
                                            ZP, SC, WSUM, WS, BIAS, acc[(p * vecs + v) * 16 + j], row(task, i, p),
                                            blk(task, v) * 16 + j)
                                elif blk(task, v) * 16 < n:
                                    for j in range(n % 16):
                                        Y[row(task, i, p) * n + blk(task, v) * 16 + j] = rescale(
                                            ZP, SC, WSUM, WS, BIAS, acc[(p * vecs + v) * 16 + j], row(task, i, p),
                                            blk(task, v) * 16 + j)
    return func


__all__ = ["Packed", "pack", "vectors", "stored_bytes", "register_tile", "matmul_func", "MAX_BYTES_FRACTION",
           "MAX_ROWS", "DEFAULT_LLC", "STEP"]
