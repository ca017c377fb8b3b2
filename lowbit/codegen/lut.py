"""Group-wise 1- and 2-bit weights times dynamically quantized u8 rows by table lookup (T-MAC, Wei et al. 2024):
hand-written TIR on AVX-512 BW (``vpshufb``) and VNNI (``vpdpbusd``).

A code c (its storage minimum taken off: 0..3, or 0..1 for 1-bit codes) splits into bit planes, c = b0 + 2 b1.
Four consecutive k of one plane of one output column form a 4-bit index b, and the 4 inputs x0..x3 of those k
give the row's 16-entry table of subset sums ``T[b] = sum_i b_i x_i`` (built at run time, ``tables_func``).
Entries reach 4 * 255 = 1020, so the table is kept exactly as two byte tables of the inputs' nibbles: x = xl +
16 xh, ``TL[b] = sum_i b_i xl_i`` and ``TH[b] = sum_i b_i xh_i`` (each at most 60), T = TL + 16 TH. Then

    sum_k x_k c_k = sum_p 2^p sum_q (TL_q[b_pq] + 16 TH_q[b_pq])       (q: the quads of 4 k, p: the planes)

One ``vpshufb`` looks up 64 indices in a 16-byte table repeated in each 128-bit lane: the quad's TL (and one
more its TH), broadcast from the tables. Byte lookups of 4 quads (16 k) are summed with ``vpaddb`` (at most 4 x 60
= 240: no carry), then ``vpdpbusd`` folds the byte sums into i32 accumulators with the weights 2^p (TL) and
16 * 2^p (TH): a 32-bit lane's 4 bytes are the planes of 2 columns (2-bit) or 4 columns (1-bit), so each
accumulator takes the multipliers of one column slot of the lane and zeros elsewhere. Per 16 k and 64 index
bytes (128 2-bit or 256 1-bit weights per row): 2 x 4 lookups, 2 x 3 byte adds, 2 ``vpdpbusd`` per
accumulator (2 accumulators of 16 columns, 4 for 1-bit); the index bytes come 2 quads per byte (low, high
nibble: one load, ``and 15`` and ``shift 4``) and serve every row of the tile. The zero points come in at
the group's end, as in ``w4.py``:

    sum_k (x - zx)(c - zc) = sum_k x c - zc * X_g - zx * C_g,   X_g = sum_k (x - zx),  C_g = sum_k c

X_g (per row and group, over the group's real k) is computed beside the tables; C_g is a constant. The three
terms are integers below 2^24, so ``t = f32(acc) - zx * C_g - zc * X_g`` (two fused multiply-adds) is exact and
``y = fma(t, sx * sw, y)`` adds it with the reference's one rounding, in its group order
(``quant.scheme.grouped_dynamic_rescale``).

The weight streams as one record per (column vector, group), a vector's records one after the other: the
group's index bytes (``group / 8`` 64-byte vectors, each covering 8 k: 2 quads), then its columns' f32 scales
and u16 ``C_g | zc << 14`` (C_g < 2^14, zc < 4): 2 bits per weight (1 bit for 1-bit codes) plus 48 bits per
group and column. A vector covers 32 columns (2-bit) or 64 (1-bit); its byte ``4 d + s * P + p`` (P planes)
holds plane p of column ``16 s + d``, so accumulator s of the vector is columns 16 s .. 16 s + 15. A register
tile is ``rows`` rows x ``vecs`` vectors, the index prepared once for all its rows; a task reads its ``vecs``
sequential streams, each prefetched ``PREFETCH`` bytes ahead. (One interleaved stream per task measured 30 %
slower cache-cold on one thread: the hardware streams and the software prefetches of one stream keep fewer
lines in flight than of 4.)
"""
from __future__ import annotations

import numpy as np

STEP = 8  # k per 64-byte index vector: 2 quads, one per nibble
CHUNK = 16  # k whose byte lookups are summed before widening: 4 quads x 60 <= 255
PREFETCH = 2048  # bytes ahead (whole records) a task prefetches each of its streams
MAX_GROUP = 4096  # C_g <= 3 * 4096 < 2^14 and every group sum < 2^24
MAX_ROWS = 8  # tables and lookups cost per row (``w4.py`` decodes once for all rows): past 8, its kernel
# (measured: this one still 1.3-2x faster at 8 and 16 rows, L3-warm, one thread; larger inputs are prefill)


def planes_of(span: int) -> int | None:
    """Bit planes of codes spanning ``span`` values: 1 (2 values), 2 (3 or 4), None (more: not this kernel)."""
    return 1 if span <= 2 else 2 if span <= 4 else None


def columns(planes: int) -> int:
    """Output columns of one 64-byte index vector."""
    return 64 // planes


def tail_bytes(planes: int) -> int:
    """Bytes after a vector's index bytes in a record: f32 scales and u16 (code sum | zero point << 14)."""
    return 6 * columns(planes)


def register_tile(nv: int, m: int) -> tuple[int, int]:
    """(rows, vectors) of the tile: rows x vectors <= 4 (each holds 2 byte sums and 4 / planes accumulators,
    each row 2 tables), vectors dividing the column vectors ``nv``, as many rows as the input has up to 4."""
    px = min(m, 4)
    vecs = max(v for v in (4, 2, 1) if nv % v == 0 and v * px <= 4)
    return min(m, 4 // vecs), vecs


def stream(w: np.ndarray, zw: np.ndarray, qmin: int, planes: int, group: int, scales: np.ndarray) -> np.ndarray:
    """The weight stream [nv, ng, rec] u8 of a [K, N] weight of integer codes (codes - qmin below 2^planes)
    with zero points ``zw`` and f32 ``scales`` [ng, N]: per column vector and group, the index bytes (bit planes,
    4 k per nibble), then the scales and u16 code sums | zero points << 14. K is padded to ng * group and N to
    whole vectors with code 0 (padded rows meet inputs of 0; padded columns are not stored).

    >>> s = stream(np.ones((16, 40), np.int64), np.zeros((1, 40)), 0, 2, 16, np.ones((1, 40), np.float32))
    >>> s.shape, int(s[0, 0, 0]), int(s[0, 0, 1])  # 2 vectors of 32 columns; column 0: planes 0 (all 1), 1 (0)
    ((2, 1, 320), 255, 0)
    """
    k, n = w.shape
    colv, nsl = columns(planes), 4 // planes
    ng = -(-k // group)
    nv = -(-n // colv)
    npad = nv * colv
    w = np.asarray(w)
    zp = np.zeros((ng, npad), np.int64)
    zp[:, :n] = np.asarray(zw, np.int64) - qmin
    if w.min() < qmin or w.max() - qmin >= 1 << planes or zp.min() < 0 or zp.max() >= 1 << planes:
        raise ValueError(f"codes and zero points must lie in qmin..qmin+{(1 << planes) - 1}")
    if group % CHUNK or group > MAX_GROUP:
        raise ValueError(f"group {group} must be a multiple of {CHUNK} up to {MAX_GROUP}")
    c = np.zeros((ng * group, npad), np.uint8)  # (u8 throughout: a 4096 x 11008 weight packs in ~1 s)
    c[:k, :n] = (w.astype(np.int16) - qmin).astype(np.uint8)
    q = c.reshape(-1, 4, npad)
    byte = np.empty((q.shape[0], npad, planes), np.uint8)  # [quads, Np, P]: 4 k of one plane as a nibble
    for p in range(planes):
        byte[..., p] = ((q[:, 0] >> p) & 1) | (((q[:, 1] >> p) & 1) << 1) | (((q[:, 2] >> p) & 1) << 2) | (
            ((q[:, 3] >> p) & 1) << 3)
    # column 16 s + d of a vector, plane p -> byte 4 d + s P + p
    byte = byte.reshape(ng, group // STEP, 2, nv, nsl, 16, planes).transpose(0, 1, 2, 3, 5, 4, 6)
    idx = byte[:, :, 0] | (byte[:, :, 1] << 4)  # [ng, steps, nv, 16, nsl, P]: 2 quads per byte
    idx = np.ascontiguousarray(idx.reshape(ng, group // STEP, nv, 64).transpose(2, 0, 1, 3)).reshape(nv, ng, -1)
    csum = c.reshape(ng, group, npad).sum(axis=1, dtype=np.int64)
    sw = np.ones((ng, npad), np.float32)
    sw[:, :n] = scales
    zc = (csum | (zp << 14)).astype(np.uint16)

    def per_vector(a):  # [ng, Np] -> [nv, ng, colv elements] as bytes
        return np.ascontiguousarray(a.reshape(ng, nv, colv).transpose(1, 0, 2)).view(np.uint8)
    tail = np.concatenate([per_vector(sw), per_vector(zc)], axis=-1)
    return np.ascontiguousarray(np.concatenate([idx, tail], axis=-1))


def tables_func(m: int, k: int, kp: int, group: int, per_row: bool):
    """A PrimFunc (XQ [m, kp] u8 (zeros past K), ZP [m or 1] i32) -> (TB [m, kp / 4, 32] u8: per row and quad
    the 16 subset sums of the inputs' low nibbles, then of their high nibbles; XS [m, ng] i32: per row and
    group the sum of (x - zx) over the group's real k)."""
    from tvm.script import tirx as T

    nq, ng = kp // 4, kp // group
    prm = m if per_row else 1

    def half(X, r, q, i, j):  # nibble (j // 16) of input 4 q + i, where bit i of entry j % 16 is set, else 0
        x = X[r * kp + q * 4 + i]
        return T.Select(((j % 16) >> i) % 2 == 1, T.Select(j < 16, x & T.uint8(15), x >> T.uint8(4)), T.uint8(0))

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), ZP: T.Buffer((prm,), "int32"), TP: T.Buffer((m, nq, 32), "uint8"),
             XS: T.Buffer((m, ng), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kp,), "uint8", data=XQ.data)
        TB = T.decl_buffer((m * nq * 32,), "uint8", data=TP.data)
        for r in range(m):
            for q in range(nq):
                for j in T.vectorized(32):
                    TB[(r * nq + q) * 32 + j] = (half(X, r, q, 0, j) + half(X, r, q, 1, j)) + (
                        half(X, r, q, 2, j) + half(X, r, q, 3, j))
            for g in range(ng):
                XS[r, g] = T.min(group, k - g * group) * -ZP[r if per_row else 0]
                for kk in range(group):
                    XS[r, g] = XS[r, g] + T.Cast("int32", X[r * kp + g * group + kk])
    return func


def matmul_func(m: int, k: int, kp: int, n: int, group: int, planes: int, per_row: bool, out_shape,
                tasks: int = 16):
    """A PrimFunc (TB, XS (``tables_func``), SC [m or 1] f32, ZP [m or 1] i32, the weight stream (``stream``),
    BIAS [Np] f32) -> Y ``out_shape`` f32 ([.., n])."""
    from tvm.script import tirx as T

    ng, nq = kp // group, kp // 4
    colv, nsl = columns(planes), 4 // planes
    nv = -(-n // colv)
    px, vecs = register_tile(nv, m)
    nblk = nv // vecs
    steps = group // STEP
    tail = tail_bytes(planes)
    rec = group * 8 + tail  # bytes per (column vector, group)
    ahead = -(-PREFETCH // rec)
    tiles = -(-m // px)
    groups_ = max(1, min(tiles, -(-tasks // nblk)))
    size = -(-tiles // groups_)
    groups_ = -(-tiles // size)
    prm = m if per_row else 1
    f32 = "float32"
    nacc = px * vecs * nsl  # 16-lane i32 accumulators of the tile

    def mult(s, scale):  # vpdpbusd weights of column slot s: 2^p * scale on its plane bytes, 0 elsewhere
        word = sum((scale << p) << (8 * (s * planes + p)) for p in range(planes))
        return T.reinterpret("int8x64", T.broadcast(T.int32(word), 16))

    def row(task, i, p):  # a tile's p-th row (a last tile ends at the last row, recomputing some)
        return T.min((task // nblk * size + i) * px, m - px) + p

    def vec(task, v):  # the task's v-th column vector
        return task % nblk * vecs + v

    def base(task, g, v):  # the byte offset of the (vector, group) record
        return (vec(task, v) * ng + g) * rec

    def acc_at(p, v, s):
        return ((p * vecs + v) * nsl + s) * 16

    def tail_at(task, g, v):  # the byte offset of vector v's scales in the record; the u16 words follow
        return base(task, g, v) + group * 8

    def exact(ZC, ZP, XS, iacc, task, i, p, v, s, g, j):  # f32(acc) - zx * C_g - zc * X_g, exactly
        zc = T.Cast("int32", ZC[(tail_at(task, g, v) + colv * 4) // 2 + s * 16 + j])
        zx = T.Cast(f32, ZP[row(task, i, p) if per_row else 0])
        xs = T.Cast(f32, -XS[row(task, i, p) * ng + g])
        acc = T.Cast(f32, iacc[acc_at(p, v, s) + j])
        return fma(T.Cast(f32, zc >> 14), xs, fma(zx, T.Cast(f32, -(zc & 0x3FFF)), acc))

    def v64(buf, q):  # the q-th 64-byte vector of a byte buffer
        return buf[T.ramp(q * 64, 1, 64)]

    def index(W, task, g, h, t, v):  # vector v's index bytes of step t in chunk h (2 quads: low, high nibbles)
        return W.vload([base(task, g, v) + (h * 2 + t) * 64], "uint8x64")

    def table(TB, task, i, p, g, h, t, e, part):  # row p's TL (part 0) or TH (1) of quad e of the step
        off = (row(task, i, p) * nq + g * (group // 4) + (h * 2 + t) * 2 + e) * 32 + part * 16
        return T.reinterpret("int8x64", T.Shuffle([TB.vload([off], "uint8x16")] * 4, list(range(64))))

    def lookup(table, idx):
        return T.reinterpret("uint8x64", T.call_llvm_pure_intrin(
            "int8x64", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"), table, T.reinterpret("int8x64", idx)))

    def vpdpbusd(a, x, w):
        return T.call_llvm_pure_intrin("int32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), a,
                                       T.reinterpret("int8x64", x), w)

    def fma(a, b, c):
        return T.call_llvm_pure_intrin(f32, "llvm.fma", a, b, c)

    def prefetch(W, task, g, line, v):  # a line of vector v's record ``ahead`` groups on (past the last group:
        # in the next column block, which the task (or the next one of its thread) reads next)
        blk = T.min(task % nblk + (g + ahead) // ng, nblk - 1)
        return T.call_llvm_intrin("void", T.llvm_lookup_intrinsic_id("llvm.prefetch.p0"), T.address_of(
            W[((blk * vecs + v) * ng + (g + ahead) % ng) * rec + line * 64]), T.int32(0), T.int32(3), T.int32(1))

    # scope "global": TVM keeps these small buffers on the stack (then in registers); "local" ones inside a
    # parallel loop become workspace allocations that LLVM cannot promote
    @T.prim_func
    def func(TP: T.Buffer((m, nq, 32), "uint8"), XP: T.Buffer((m, ng), "int32"), SC: T.Buffer((prm,), f32),
             ZP: T.Buffer((prm,), "int32"), WP: T.Buffer((nv, ng, rec), "uint8"), BIAS: T.Buffer((nv * colv,), f32),
             YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        TB = T.decl_buffer((m * nq * 32,), "uint8", data=TP.data)
        W = T.decl_buffer((nv * ng * rec,), "uint8", data=WP.data)
        SW = T.decl_buffer((nv * ng * rec // 4,), f32, data=WP.data)  # the records' tails, by element type
        ZC = T.decl_buffer((nv * ng * rec // 2,), "uint16", data=WP.data)
        XS = T.decl_buffer((m * ng,), "int32", data=XP.data)
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        for task in T.parallel(groups_ * nblk):  # (row tile group, column block) pairs
            yacc = T.decl_buffer((nacc * 16,), f32, scope="global")
            iacc = T.decl_buffer((nacc * 16,), "int32", scope="global")
            lo = T.decl_buffer((px * vecs * 64,), "uint8", scope="global")  # byte sums of the TL lookups
            hi = T.decl_buffer((px * vecs * 64,), "uint8", scope="global")  # ... of the TH lookups
            ix = T.decl_buffer((vecs * 128,), "uint8", scope="global")  # each vector's indices of 2 quads
            for i in range(size):
                if task // nblk * size + i < tiles:
                    for q in range(nacc):
                        for j in T.vectorized(16):
                            yacc[q * 16 + j] = BIAS[(vec(task, q // nsl % vecs) * nsl + q % nsl) * 16 + j]
                    for g in range(ng):
                        for q in T.unroll(nacc):
                            iacc[T.ramp(q * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                        for h in range(group // CHUNK):  # 16 k: byte sums, then into the i32 accumulators
                            for q in T.unroll(px * vecs):
                                lo[T.ramp(q * 64, 1, 64)] = T.broadcast(T.uint8(0), 64)
                                hi[T.ramp(q * 64, 1, 64)] = T.broadcast(T.uint8(0), 64)
                            for t in T.unroll(CHUNK // STEP):
                                for v in T.unroll(vecs):
                                    T.evaluate(prefetch(W, task, g, h * 2 + t, v))  # a line per step
                                    # (the load twice, not a vector let: TVM would make that a workspace buffer)
                                    ix[T.ramp(v * 128, 1, 64)] = index(W, task, g, h, t, v) & T.broadcast(
                                        T.uint8(15), 64)
                                    ix[T.ramp(v * 128 + 64, 1, 64)] = index(W, task, g, h, t, v) >> T.broadcast(
                                        T.uint8(4), 64)
                                for e in T.unroll(2):
                                    for p in T.unroll(px):
                                        for v in T.unroll(vecs):
                                            lo[T.ramp((p * vecs + v) * 64, 1, 64)] = v64(lo, p * vecs + v) + lookup(
                                                table(TB, task, i, p, g, h, t, e, 0), v64(ix, v * 2 + e))
                                            hi[T.ramp((p * vecs + v) * 64, 1, 64)] = v64(hi, p * vecs + v) + lookup(
                                                table(TB, task, i, p, g, h, t, e, 1), v64(ix, v * 2 + e))
                            for p in T.unroll(px):
                                for v in T.unroll(vecs):
                                    for s in T.unroll(nsl):
                                        iacc[T.ramp(acc_at(p, v, s), 1, 16)] = vpdpbusd(vpdpbusd(
                                            iacc[T.ramp(acc_at(p, v, s), 1, 16)], v64(lo, p * vecs + v), mult(s, 1)),
                                            v64(hi, p * vecs + v), mult(s, 16))
                        for v in T.unroll(vecs):  # the tail lines of the records ``ahead`` groups on
                            for t in T.unroll(tail // 64):
                                T.evaluate(prefetch(W, task, g, steps + t, v))
                        for p, v, s in T.grid(px, vecs, nsl):
                            for j in T.vectorized(16):
                                yacc[acc_at(p, v, s) + j] = fma(
                                    exact(ZC, ZP, XS, iacc, task, i, p, v, s, g, j),
                                    SC[row(task, i, p) if per_row else 0] * SW[tail_at(task, g, v) // 4 + s * 16 + j],
                                    yacc[acc_at(p, v, s) + j])
                    for p, v, s in T.grid(px, vecs, nsl):
                        if vec(task, v) * colv + s * 16 + 16 <= n:
                            for j in T.vectorized(16):
                                Y[row(task, i, p) * n + vec(task, v) * colv + s * 16 + j] = yacc[acc_at(p, v, s) + j]
                        elif vec(task, v) * colv + s * 16 < n:
                            for j in range(n % 16):
                                Y[row(task, i, p) * n + vec(task, v) * colv + s * 16 + j] = yacc[acc_at(p, v, s) + j]
    return func


__all__ = ["stream", "tables_func", "matmul_func", "planes_of", "columns", "register_tile", "STEP", "CHUNK",
           "MAX_GROUP", "MAX_ROWS"]
