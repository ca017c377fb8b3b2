"""Group-wise low-bit weights times f32 activations (W4, MatMulNBits at accuracy_level 0-3, ``--preset w4``):
``matmul(x, dequantize(w))`` with ``w`` a group-wise constant [K, N] (``axis=1``: groups along K) lowered as one
kernel whose weights are decoded in registers; the dequantize is never materialized (``lower.py``).

On AVX-512 the weight streams as ``w4.nibbles`` packs it for the W4A8 kernel (the same bytes: per 16-column
block and group the packed nibbles, then the group's f32 scales and u8 zero points). 64 bytes hold 8 consecutive k
of 16 columns, one 32-bit lane per column, byte b of a lane the codes of k + b (low nibble) and k + 4 + b (high).
A load of those 64 bytes from byte b on has byte b of each lane in the lane's low bits; ``vpermps`` with the table
0.0 .. 15.0 turns a lane's bits 0..3 into its code as f32 (exact), after ``>> 4`` for a high nibble: 4 shifts and
8 lookups per 8 nibbles. (Measured on a 4096 x 11008 GEMV, one core: shifting one register 7 times instead is
1.1x slower, and ``and`` + ``cvtdq2ps`` instead of the lookup 1.4x; this one takes 1.6x the W4A8 kernel's
time, which reads the same bytes.) Each code vector is multiplied into the group's accumulators with each row's x
broadcast (one fused multiply-add per weight vector and row). Zero points and scales come in at the group's end:

    y += s_g * (sum_k x_k c_k - zc_g * X_g),   X_g = sum_k x_k  (per row and group, computed once: ``row_sums_te``)

with ``c`` the codes and ``zc`` the zero point less the storage minimum (``c - zc`` is the weight's integer).
The reference dequantizes W exactly in f32 and runs an f32 matmul; this factorization rounds differently
(measured: 1.1e-6 of the output's largest magnitude on a 4096 x 11008 GEMV, <= 6e-7 on ``tests/test_w4f.py``'s
shapes). A register tile is ``rows`` rows
x up to 4 column vectors (``w4.register_tile``); tasks are (row tile, column block) pairs as in ``w4.py``.

Elsewhere (no avx512f, codes wider than 4 bits, groups not a multiple of 8) ``matmul_te``: a TE reduction with
the dequantization in its expression, ``f32(c - zc) * s`` exactly as the reference rounds it, the codes packed
two per byte where they fit in a nibble, in panels of the register tile's columns, scheduled here (column vectors
and rows unrolled around the reduction; the 4096 x 11008 GEMV: 5.3 ms on one core with AVX2, 3.6x the AVX-512
kernel).
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..quant.scheme import group_shape, storage_range
from . import w4


# -- the pattern ------------------------------------------------------------------------------------------------------
def _grouped_const_reason(w) -> str | None:
    """Why ``w`` is not a group-wise constant [K, N] grouped along K with codes of at most 8 bits (None: it is)."""
    q = w.type.quant
    if not w.is_const or q is None or q.group is None:
        return "the weight is not a dequantized group-wise constant"
    if w.type.rank != 2 or q.axis != 1:
        return f"the group-wise weight of shape {list(w.type.shape)} is not grouped along K (axis=1)"
    if not w.type.dtype.is_integer:
        return f"the group-wise weight is {w.type.dtype.name}"
    if getattr(q, "codebook", None) is not None:
        return "the group-wise weight's codes index a codebook"
    lo, hi = storage_range(w.type.dtype, q)
    if hi - lo > 255:
        return f"{w.type.dtype.name} codes span {hi - lo + 1} values, more than 256"
    return None


def _matmul_reason(u, v) -> str | None:
    """Why op ``u`` is not an f32 matmul reading ``v`` only as its weight (operand 1)."""
    if u.opname != "matmul":
        return f"it is read by {u.opname}"
    x = u.operands[0]
    if x is v or u.operands[1] is not v:
        return "it is a matmul's input, not its weight"
    if x.type.dtype != dt.f32 or x.type.rank < 1 or u.result.type.dtype != dt.f32 or x.type.quant is not None:
        return f"the matmul's input is {x.type.dtype.name} of rank {x.type.rank}, not f32"
    return None


def dequantized_reason(v) -> str | None:
    """Why value ``v`` is not a dequantized group-wise weight that this kernel takes (None: it is): the result of
    a dequantize of a group-wise constant [K, N] grouped along K, read only by f32 matmuls as their weight and not
    a graph output. Such a dequantize is never lowered: the matmul's kernel reads the codes from the constant."""
    op = v.producer
    if op is None or op.opname != "dequantize":
        return "the weight is not a dequantized group-wise constant"
    why = _grouped_const_reason(op.operands[0])
    if why:
        return why
    if v.type.dtype != dt.f32:
        return f"the weight is dequantized to {v.type.dtype.name}, not f32"
    if op.graph is not None and any(o is v for o in op.graph.outputs):
        return "the dequantized weight is a graph output"
    if not v.users:
        return "the dequantized weight is not read"
    for u in v.users:
        why = _matmul_reason(u, v)
        if why:
            return f"the dequantized weight is not only a matmul's weight: {why}"
    return None


def dequantized_weight(v) -> bool:
    return dequantized_reason(v) is None


def matmul_reason(L, op) -> str | None:
    """Why matmul ``op`` is not ``matmul(x, dequantize(w))`` of this kernel's pattern (None: it is)."""
    return dequantized_reason(op.operands[1])


def weight_of(op):
    """The group-wise constant behind a matmul's dequantized weight."""
    return op.operands[1].producer.operands[0]


def nibble_reason(L, op) -> str | None:
    """Why the AVX-512 nibble kernel cannot take the weight (None: it can)."""
    wt = weight_of(op).type
    q = wt.quant
    lo, hi = storage_range(wt.dtype, q)
    if hi - lo > 15:
        return f"{wt.dtype.name} codes span {hi - lo + 1} values, the nibble kernel takes 16"
    if q.group % w4.STEP:
        return f"group {q.group} is not a multiple of {w4.STEP}"
    zp = q.zero_point_array() - lo
    if zp.min() < 0 or zp.max() > 15:
        return f"zero points outside the codes' range {lo}..{lo + 15}"
    return None


def _codes(op):
    """(codes - storage minimum [K, N] i64, zero points - storage minimum [ng, N] i64, scales [ng, N] f32)."""
    w = weight_of(op)
    q = w.type.quant
    grid = group_shape(q, w.type.shape)
    lo, _ = storage_range(w.type.dtype, q)
    codes = np.asarray(w.const_value).astype(np.int64) - lo
    return codes, q.zero_point_array().reshape(grid) - lo, q.scale_array().reshape(grid).astype(np.float32)


# -- AVX-512 -----------------------------------------------------------------------------------------------------------
def row_sums_te(L, x, x_shape, m: int, k: int, group: int):
    """X_g [m, ng] f32: each row's sum of x over each group's real columns, in order (TE, a Relax value)."""
    from .amx import unravel

    te, tir = L.te, L.tir
    ng = -(-k // group)

    def fn(X):
        r = te.reduce_axis((0, group), "r")

        def at(i, g):
            kk = g * group + r
            idx = tuple(unravel(i, x_shape[:-1])) + (tir.min(kk, k - 1),)
            return te.sum(tir.if_then_else(kk < k, X[idx], tir.const(0, "float32")), axis=[r])
        return te.compute((m, ng), at, name="row_group_sums")
    return L.te_(fn, x, name="lowbit_w4f_row_sums")


def padded_rows_te(L, x, x_shape, m: int, k: int, kp: int):
    """x as rows [m, kp], the columns past K zero (they meet the padded codes, 0, of the last 8 k)."""
    from .amx import unravel

    tir = L.tir

    def fn(X):
        def at(i, j):
            return tir.if_then_else(j < k, X[tuple(unravel(i, x_shape[:-1])) + (tir.min(j, k - 1),)],
                                    tir.const(0, "float32"))
        return L.te.compute((m, kp), at, name="padded_rows")
    return L.te_(fn, x, name="lowbit_w4f_pad_rows")


def matmul_func(m: int, k: int, n: int, group: int, x_shape, out_shape, rows: int = 2, tasks: int = 16):
    """A PrimFunc (X ``x_shape`` f32 (rows of K rounded up to a multiple of 8), XS [m, ng] f32 (``row_sums_te``),
    the weight stream (``w4.nibbles``)) -> Y ``out_shape`` f32 ([.., n]). The last group stops at the 8 k that
    hold K's last: the stream's padding past them is not read."""
    from tvm.script import tirx as T

    ng, n16 = -(-k // group), -(-n // 16) * 16
    kx = -(-k // w4.STEP) * w4.STEP  # X's row length
    nb = n16 // 16
    steps = group // w4.STEP
    rec = group * 8 + w4.RECORD_TAIL  # bytes per (column block, group)
    px, vecs = w4.register_tile(nb, m, rows)
    nvb = nb // vecs
    tiles = -(-m // px)
    groups_ = max(1, min(tiles, -(-tasks // nvb)))
    size = -(-tiles // groups_)
    groups_ = -(-tiles // size)
    f32 = "float32"

    def row(task, i, p):  # a tile's p-th row (a last tile ends at the last row, recomputing some)
        return T.min((task // nvb * size + i) * px, m - px) + p

    def blk(task, v):  # the 16-column block of the task's v-th vector
        return task % nvb * vecs + v

    def fma(a, b, c):
        return T.call_llvm_pure_intrin(f32, "llvm.fma", a, b, c)

    def vpermps(idx):  # lane j: float(idx[j] & 15), a table lookup (the nibble's code as f32, exact)
        return T.call_llvm_pure_intrin("float32x16", T.llvm_lookup_intrinsic_id("llvm.x86.avx512.permvar.sf.512"),
                                       T.Cast("float32x16", T.ramp(0, 1, 16)), idx)

    def decode(W, at, e):  # the codes of nibble e of the 16 lanes at byte ``at``, as f32
        # the load from byte e // 2 on has that byte of each lane in the lane's bits 0..7: no shift for a low
        # nibble, one for a high one (4 shifts per 8 nibbles, not 7)
        view = T.reinterpret("int32x16", W.vload([at + e // 2], "uint8x64"))
        return vpermps(view >> T.broadcast(T.int32(4 * (e % 2)), 16))

    @T.prim_func
    def func(XP: T.Buffer(x_shape, f32), XS: T.Buffer((m, ng), f32), WP: T.Buffer((nb, ng, rec), "uint8"),
             YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        X = T.decl_buffer((m * kx,), f32, data=XP.data)
        W = T.decl_buffer((nb * ng * rec,), "uint8", data=WP.data)
        SW = T.decl_buffer((nb * ng * rec // 4,), f32, data=WP.data)  # the records' tails, by element type
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        for task in T.parallel(groups_ * nvb):  # (row tile group, column block) pairs
            yacc = T.decl_buffer((px * vecs * 16,), f32, scope="local")
            facc = T.decl_buffer((px * vecs * 16,), f32, scope="local")
            wdec = T.decl_buffer((vecs * 16,), f32, scope="local")
            for i in range(size):
                if task // nvb * size + i < tiles:
                    for q in T.unroll(px * vecs):
                        for j in T.vectorized(16):
                            yacc[q * 16 + j] = T.float32(0)
                    for g in range(ng):
                        for q in T.unroll(px * vecs):
                            for j in T.vectorized(16):
                                facc[q * 16 + j] = T.float32(0)
                        for t in range(T.min(steps, (kx - g * group) // 8)):
                            for e in T.unroll(8):
                                for v in T.unroll(vecs):
                                    wdec[T.ramp(v * 16, 1, 16)] = decode(W, (blk(task, v) * ng + g) * rec + t * 64, e)
                                for p in T.unroll(px):
                                    for v in T.unroll(vecs):
                                        for j in T.vectorized(16):
                                            facc[(p * vecs + v) * 16 + j] = fma(
                                                X[row(task, i, p) * kx + g * group + t * 8 + e // 2 + e % 2 * 4],
                                                wdec[v * 16 + j], facc[(p * vecs + v) * 16 + j])
                        for p, v in T.grid(px, vecs):
                            for j in T.vectorized(16):
                                yacc[(p * vecs + v) * 16 + j] = fma(
                                    SW[((blk(task, v) * ng + g) * rec + group * 8) // 4 + j],
                                    fma(-T.Cast(f32, W[(blk(task, v) * ng + g) * rec + group * 8 + 96 + j]),
                                        XS[row(task, i, p), g], facc[(p * vecs + v) * 16 + j]),
                                    yacc[(p * vecs + v) * 16 + j])
                    for p, v in T.grid(px, vecs):
                        if blk(task, v) * 16 + 16 <= n:
                            for j in T.vectorized(16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
                        elif blk(task, v) * 16 < n:
                            for j in range(n % 16):
                                Y[row(task, i, p) * n + blk(task, v) * 16 + j] = yacc[(p * vecs + v) * 16 + j]
    return func


def matmul_avx512(L, op):
    """On AVX-512: x (as rows padded to a multiple of 8 where K is not), its group sums, ``matmul_func``."""
    xt, rt = op.operands[0].type, op.result.type
    codes, zc, sw = _codes(op)
    k, n = codes.shape
    group = weight_of(op).type.quant.group
    m = int(np.prod(xt.shape[:-1], dtype=np.int64))
    kx = -(-k // w4.STEP) * w4.STEP
    x = L.get(op.operands[0])
    xs = row_sums_te(L, x, xt.shape, m, k, group)
    rows, x_shape = x, tuple(xt.shape)
    if kx != k:
        rows, x_shape = L.emit(padded_rows_te(L, x, xt.shape, m, k, kx)), (m, kx)
    stream = w4.nibbles(codes, zc, 0, group, sw)
    func = matmul_func(m, k, n, group, x_shape, rt.shape, rows=L.knob("vnni_pixels", op),
                       tasks=L.knob("vnni_tasks", op))
    return L.call_tir(func, "lowbit_matmul_w4f_avx512", [rows, xs, L.const(stream)], rt.shape, "float32")


# -- anywhere: TE ------------------------------------------------------------------------------------------------------
def _tile(L, m: int, n: int) -> tuple[int, int, int]:
    """(rows, column vectors, lanes) of ``matmul_te``'s register tile: f32 lanes the target's vector width halved
    until they divide N, up to 4 vectors and up to 4 rows (dividing N and M)."""
    lanes = max(1, getattr(L.target, "vector_bytes", 16) // 4)
    while n % lanes:
        lanes //= 2
    return max(d for d in (4, 3, 2, 1) if m % d == 0), max(d for d in (4, 2, 1) if (n // lanes) % d == 0), lanes


def matmul_te(L, op):
    """``y[i, n] = sum_k x[i, k] * (f32(c[k, n] - zc[g, n]) * s[g, n])`` over x's rows: the dequantized weight as
    the reference rounds it, inside the reduction (never stored); codes packed two per byte when they fit in 4
    bits. On x86 the constants are stored in panels of the register tile's columns ([N / P, rows, P]: a task reads
    its columns contiguously) and scheduled here: (row tile, column vectors) tasks in parallel, the reduction
    inside, the tile's accumulators in registers. Other targets' schedule rules take the plain TE."""
    from tvm import te

    from .target import X86Target

    tir = L.tir
    xt, rt = op.operands[0].type, op.result.type
    codes, zc, sw = _codes(op)
    k, n = codes.shape
    group = weight_of(op).type.quant.group
    m = int(np.prod(xt.shape[:-1], dtype=np.int64))
    x86 = isinstance(L.target, X86Target)
    rows, vecs, lanes = _tile(L, m, n)
    p = vecs * lanes if x86 else n  # columns per panel
    nibbles = int(codes.max(initial=0)) <= 15
    if nibbles:
        padded = np.zeros((2 * -(-k // 2), n), np.int64)
        padded[:k] = codes
        codes = padded[0::2] | (padded[1::2] << 4)

    def panels(a, dtype):  # [R, N] -> [N / p, R, p]
        return np.ascontiguousarray(a.astype(dtype).reshape(a.shape[0], n // p, p).transpose(1, 0, 2))
    consts = [panels(codes, np.uint8), panels(zc, np.int32), panels(sw, np.float32)]

    def fn(X, C, Z, S):
        r = te.reduce_axis((0, k), "k")

        def at(i, j):
            jo, ji = j // p, j % p
            if nibbles:
                c = (C[jo, r // 2, ji] >> (tir.Cast("uint8", r % 2) * tir.const(4, "uint8"))) & tir.const(15, "uint8")
            else:
                c = C[jo, r, ji]
            w = tir.Cast("float32", tir.Cast("int32", c) - Z[jo, r // group, ji]) * S[jo, r // group, ji]
            return te.sum(X[i, r] * w, axis=[r])
        return te.compute((m, n), at, name="matmul_w4f")

    x = L.get(op.operands[0])
    if xt.rank != 2:
        x = L.emit(L.R.reshape(x, [m, k]))
    args = [x] + [L.const(c) for c in consts]
    if not x86:
        y = L.te_(fn, *args, name="lowbit_matmul_w4f")  # other targets' own schedule rules take it
    else:
        ins = [te.placeholder((m, k), "float32", "X")] + [te.placeholder(c.shape, str(c.dtype), nm)
                                                         for c, nm in zip(consts, "CZS")]
        y = L.call_tir(_schedule_te(te.create_prim_func([*ins, fn(*ins)]), rows, vecs, lanes, k),
                       "lowbit_matmul_w4f", args, (m, n), "float32")
    return y if xt.rank == 2 else L.R.reshape(L.emit(y), list(rt.shape))


def _schedule_te(func, rows: int, vecs: int, lanes: int, k: int):
    """``matmul_te``'s CPU schedule: tasks of (``rows`` rows, ``vecs`` column vectors of ``lanes``: one panel),
    the reduction inside each (two k at a time: both nibbles of a byte), the tile unrolled, its accumulators
    local; marked scheduled and opaque."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("matmul_w4f")
    il, nl, rl = sch.get_loops(blk)
    io, it = sch.split(il, [None, rows])
    no, nv, ni = sch.split(nl, [None, vecs, lanes])
    ro, ri = sch.split(rl, [None, 2]) if k % 2 == 0 else (rl, None)
    sch.reorder(io, no, ro, *([ri] if ri is not None else []), it, nv, ni)
    outer = sch.fuse(io, no)
    store = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(store, outer, preserve_unit_loops=True)
    sch.parallel(outer)
    for lp in (ri, it, nv):
        if lp is not None:
            sch.unroll(lp)
    if lanes > 1:
        sch.vectorize(ni)
    init = sch.decompose_reduction(blk, ro)
    for b in (init, store):  # (the store's loops: the tile's rows, its columns)
        *tiles, inner = sch.get_loops(b)[1:]
        if b is store:
            inner_o, inner = sch.split(inner, [None, lanes])
            tiles.append(inner_o)
        for lp in tiles:
            sch.unroll(lp)
        if lanes > 1:
            sch.vectorize(inner)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8)  # opaque: not fused


__all__ = ["dequantized_reason", "dequantized_weight", "matmul_reason", "nibble_reason", "matmul_avx512",
           "matmul_te", "matmul_func", "row_sums_te", "weight_of"]
