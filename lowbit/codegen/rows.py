"""Integer kernels that walk an NCHW tensor one output row at a time (hand-written TIR): max pooling and
depthwise convolution on quantized values. Rows run in parallel; inside a row the columns whose window lies
inside the input run as strided vectors (16 wide, and one of the rest) and only the border columns test their
taps, so no padded copy of the input is made and no lane computes an address apart. On NHWC values (the AMX
integer regions) they work over 16-channel vectors: max pooling a pixel at a time, the depthwise convolution
from a ring of input rows converted to f32 once each."""
from __future__ import annotations


def _columns(w: int, ow: int, kw: int, sw: int, dw: int, pl: int):
    """(first, one past last) output column whose whole window (kw taps, dilation dw) is inside a w-wide row."""
    lo = min(ow, (pl + sw - 1) // sw)
    hi = max(lo, min(ow, (w - 1 - (kw - 1) * dw + pl) // sw + 1))
    return lo, hi


def max_pool(shape, out_shape, kernel, strides, pads, dtype: str, lowest: int):
    """Integer max pooling (dilation 1, pads smaller than the kernel, so every window holds a real pixel):
    out-of-range rows are skipped and border columns read clamped indices — the clamped pixel is in the window,
    so the max is unchanged."""
    from tvm.script import tirx as T

    n, c, h, w = shape
    _, _, oh, ow = out_shape
    (kh, kw), (sh, sw), (pt, pl) = kernel, strides, pads[:2]
    x_lo, x_hi = _columns(w, ow, kw, sw, 1, pl)
    inner = x_hi - x_lo

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((n, c, h, w), dtype), Y: T.Buffer((n, c, oh, ow), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        with T.sblock("root"):  # TVM checks the body of a one-input function for a reshape pattern
            for row in T.parallel(n * c * oh):
                acc = T.decl_buffer((ow,), dtype, scope="local")
                for z in range(ow):
                    acc[z] = T.Cast(dtype, lowest)
                for r in range(kh):
                    if row % oh * sh - pt + r >= 0 and row % oh * sh - pt + r < h:
                        for q in range(kw):
                            for zv in range(inner // 16):
                                for z in T.vectorized(16):
                                    acc[x_lo + zv * 16 + z] = T.max(acc[x_lo + zv * 16 + z], X[
                                        row // (c * oh), row // oh % c, row % oh * sh - pt + r,
                                        (x_lo + zv * 16 + z) * sw - pl + q])
                            if inner % 16 > 0:  # (a vector loop cannot be empty)
                                for z in T.vectorized(inner % 16):
                                    acc[x_hi - inner % 16 + z] = T.max(acc[x_hi - inner % 16 + z], X[
                                        row // (c * oh), row // oh % c, row % oh * sh - pt + r,
                                        (x_hi - inner % 16 + z) * sw - pl + q])
                            for z in range(x_lo):
                                acc[z] = T.max(acc[z], X[row // (c * oh), row // oh % c, row % oh * sh - pt + r,
                                                         T.max(T.min(z * sw - pl + q, w - 1), 0)])
                            for z in range(ow - x_hi):
                                acc[x_hi + z] = T.max(acc[x_hi + z], X[
                                    row // (c * oh), row // oh % c, row % oh * sh - pt + r,
                                    T.max(T.min((x_hi + z) * sw - pl + q, w - 1), 0)])
                for z in T.vectorized(ow):
                    Y[row // (c * oh), row // oh % c, row % oh, z] = acc[z]
    return func


def depthwise_conv(shape, out_shape, kernel, strides, pads, dilations, in_dtype: str, zx: int, out_dtype: str,
                   zy: int, lo: int, hi: int):
    """Depthwise (one filter per channel) integer conv: acc = sum over the taps inside the input of
    (x - zx) * w, plus the i32 bias — the padding is the zero point, whose taps add 0 — then requantized as
    every integer op: saturate(round_half_even(f32(acc) * m) + zy) clamped to [lo, hi].
    Args X [n, c, h, w], W [c, kh, kw] i32, bias [c] i32, m [c] f32 -> Y [n, c, oh, ow]."""
    from tvm.script import tirx as T

    n, c, h, w = shape
    _, _, oh, ow = out_shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilations, pads[:2]
    x_lo, x_hi = _columns(w, ow, kw, sw, dw, pl)
    inner = x_hi - x_lo
    i32, f32 = "int32", "float32"

    @T.prim_func
    def func(X: T.Buffer((n, c, h, w), in_dtype), W: T.Buffer((c, kh, kw), i32), B: T.Buffer((c,), i32),
             M: T.Buffer((c,), f32), Y: T.Buffer((n, c, oh, ow), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        for row in T.parallel(n * c * oh):
            acc = T.decl_buffer((ow,), i32, scope="local")
            for z in T.vectorized(ow):
                acc[z] = B[row // oh % c]
            for r in range(kh):
                if row % oh * sh - pt + r * dh >= 0 and row % oh * sh - pt + r * dh < h:
                    for q in range(kw):
                        for zv in range(inner // 16):
                            for z in T.vectorized(16):
                                acc[x_lo + zv * 16 + z] = acc[x_lo + zv * 16 + z] + (T.Cast(i32, X[
                                    row // (c * oh), row // oh % c, row % oh * sh - pt + r * dh,
                                    (x_lo + zv * 16 + z) * sw - pl + q * dw]) - zx) * W[row // oh % c, r, q]
                        if inner % 16 > 0:  # (a vector loop cannot be empty)
                            for z in T.vectorized(inner % 16):
                                acc[x_hi - inner % 16 + z] = acc[x_hi - inner % 16 + z] + (T.Cast(i32, X[
                                    row // (c * oh), row // oh % c, row % oh * sh - pt + r * dh,
                                    (x_hi - inner % 16 + z) * sw - pl + q * dw]) - zx) * W[row // oh % c, r, q]
                        for z in range(x_lo):
                            if z * sw - pl + q * dw >= 0 and z * sw - pl + q * dw < w:
                                acc[z] = acc[z] + (T.Cast(i32, X[row // (c * oh), row // oh % c,
                                                                 row % oh * sh - pt + r * dh,
                                                                 T.max(z * sw - pl + q * dw, 0)]) - zx) * W[
                                    row // oh % c, r, q]
                        for z in range(ow - x_hi):
                            if (x_hi + z) * sw - pl + q * dw < w:
                                acc[x_hi + z] = acc[x_hi + z] + (T.Cast(i32, X[
                                    row // (c * oh), row // oh % c, row % oh * sh - pt + r * dh,
                                    T.min((x_hi + z) * sw - pl + q * dw, w - 1)]) - zx) * W[row // oh % c, r, q]
            for zv in range(ow // 16):
                for z in T.vectorized(16):
                    Y[row // (c * oh), row // oh % c, row % oh, zv * 16 + z] = T.Cast(out_dtype, T.max(T.min(
                        T.Cast(i32, T.nearbyint(T.Cast(f32, acc[zv * 16 + z]) * M[row // oh % c])) + zy, hi), lo))
            if ow % 16 > 0:  # (a vector loop cannot be empty)
                for z in T.vectorized(ow % 16):
                    Y[row // (c * oh), row // oh % c, row % oh, ow // 16 * 16 + z] = T.Cast(out_dtype, T.max(T.min(
                        T.Cast(i32, T.nearbyint(T.Cast(f32, acc[ow // 16 * 16 + z]) * M[row // oh % c])) + zy, hi), lo))
    return func


def depthwise_conv_planes(shape, out_shape, kernel, strides, pads, dilations, in_dtype: str, zx: int,
                          out_dtype: str, zy: int, lo: int, hi: int):
    """The depthwise conv of ``depthwise_conv`` (equal strides), a channel plane at a time: the plane is copied
    as (x - zx) into a local buffer padded with 0 and Wp wide, so output m = y * Wp + x reads input
    s * m + r * dh * Wp + q * dw for every tap — one strided vector run over the whole plane per tap, however
    narrow its rows (the Wp - ow columns past each row are computed and dropped)."""
    from tvm.script import tirx as T

    n, c, h, w = shape
    _, _, oh, ow = out_shape
    (kh, kw), (s, _), (dh, dw), (pt, pl, pb, pr) = kernel, strides, dilations, pads
    wp = w + pl + pr
    mo = oh * wp  # output positions computed per plane
    size = max((h + pt + pb) * wp, s * (mo - 1) + (kh - 1) * dh * wp + (kw - 1) * dw + 1)
    mv = mo // 16 * 16
    i32, f32 = "int32", "float32"

    @T.prim_func
    def func(X: T.Buffer((n, c, h, w), in_dtype), W: T.Buffer((c, kh, kw), i32), B: T.Buffer((c,), i32),
             M: T.Buffer((c,), f32), Y: T.Buffer((n, c, oh, ow), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        for plane in T.parallel(n * c):
            P = T.decl_buffer((size,), i32, scope="local")
            acc = T.decl_buffer((mo,), i32, scope="local")
            for i in T.vectorized(size):
                P[i] = 0
            for y in range(h):
                for x in T.vectorized(w):
                    P[(y + pt) * wp + pl + x] = T.Cast(i32, X[plane // c, plane % c, y, x]) - zx
            for i in T.vectorized(mo):
                acc[i] = B[plane % c]
            for r, q in T.grid(kh, kw):
                for iv in range(mv // 16):
                    for i in T.vectorized(16):
                        acc[iv * 16 + i] = acc[iv * 16 + i] + P[s * (iv * 16 + i) + r * dh * wp + q * dw] * W[
                            plane % c, r, q]
                if mo % 16 > 0:  # (a vector loop cannot be empty)
                    for i in T.vectorized(mo % 16):
                        acc[mv + i] = acc[mv + i] + P[s * (mv + i) + r * dh * wp + q * dw] * W[plane % c, r, q]
            for y in range(oh):
                for x in T.vectorized(ow):
                    Y[plane // c, plane % c, y, x] = T.Cast(out_dtype, T.max(T.min(T.Cast(i32, T.nearbyint(
                        T.Cast(f32, acc[y * wp + x]) * M[plane % c])) + zy, hi), lo))
    return func


def depthwise_conv_nhwc(shape, out_shape, kernel, strides, pads, dilations, in_dtype: str, zx: int,
                        out_dtype: str, zy: int, lo: int, hi: int, tasks: int = 16):
    """``depthwise_conv`` on NHWC values. A parallel task takes a group of output rows and one 16-channel
    vector; the input rows its windows read are converted to f32 once, into a ring of kh rows padded left and
    right with the zero point (rows outside the input hold the zero point too), so every tap is a fused
    multiply-add with no bounds check. The accumulators start at the bias, which also carries -zx * sum(w): the
    taps add x * w, padding included. The f32 sums are exact: every partial sum is an integer below 2^24 (the
    caller checks |bias| + kh * kw * 255 * 128 < 2^24), so rounding ``acc * m`` once (``lrint``: to nearest
    even) gives the integer result. Args X [n, h, w, c], W [kh, kw, c16] f32 and bias [c16] f32 (c16: c padded
    to 16; integer values), m [c] f32 -> Y [n, oh, ow, c]."""
    from tvm.script import tirx as T

    from .intrinsics import lrint

    n, h, w, c = shape
    _, oh, ow, _ = out_shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilations, pads[:2]
    f32 = "float32"
    fzx = T.float32(zx)
    nv = (c + 15) // 16  # channel vectors (one per task); a last partial one reads channel c - 1 past c
    ring = (kh - 1) * dh + 1  # input rows one output row's windows span
    wp = (ow - 1) * sw + (kw - 1) * dw + 1  # padded row width the windows span
    wc = max(0, min(w, wp - pl))  # input columns they read
    rows = n * oh
    size = -(-rows // max(1, min(rows, -(-tasks // nv))))  # output rows per task
    groups = -(-rows // size)
    px = 8 if ow >= 56 else 4  # output pixels computed together (each tap's weights loaded once)
    full = ow // px * px

    def y(task, i):  # the i-th output row of a task (image * oh + row)
        return task // nv * size + i

    def ch(task):  # its first channel
        return task % nv * 16

    def first(task, i):  # the first input row of output row i's windows
        return y(task, i) % oh * sh - pt

    def at(task, i, r, col):  # ring offset of the window row r's column col (padded) for output row i
        return (T.floormod(first(task, i) + r, ring) * wp + col) * 16

    def requant(a, m):  # a already holds the bias
        return T.Cast(out_dtype, T.max(T.min(lrint(a * m) + zy, hi), lo))

    def source(X, task, i, t, ix, j):  # input element of ring row t (a last partial vector repeats channel c - 1)
        k = ch(task) + j if c % 16 == 0 else T.min(ch(task) + j, c - 1)
        return T.Cast(f32, X[y(task, i) // oh, first(task, i) + t, ix, k])

    @T.macro
    def pixels(F, W, B, M, Y, acc, task, i, x0, npx):  # npx output pixels from column x0: taps, then requantize
        for p in T.unroll(npx):
            for j in T.vectorized(16):
                acc[p * 16 + j] = B[ch(task) + j]
        for r in T.unroll(kh):
            for q in T.unroll(kw):
                for p in T.unroll(npx):
                    for j in T.vectorized(16):
                        acc[p * 16 + j] = acc[p * 16 + j] + F[at(task, i, r * dh, (x0 + p) * sw + q * dw) + j] * W[
                            r, q, ch(task) + j]
        for p in T.unroll(npx):
            if ch(task) + 16 <= c:
                for j in T.vectorized(16):
                    Y[y(task, i) // oh, y(task, i) % oh, x0 + p, ch(task) + j] = requant(acc[p * 16 + j],
                                                                                       M[ch(task) + j])
            else:
                for j in range(c % 16):
                    Y[y(task, i) // oh, y(task, i) % oh, x0 + p, ch(task) + j] = requant(acc[p * 16 + j],
                                                                                       M[ch(task) + j])

    @T.prim_func
    def func(X: T.Buffer((n, h, w, c), in_dtype), W: T.Buffer((kh, kw, nv * 16), f32), B: T.Buffer((nv * 16,), f32),
             M: T.Buffer((c,), f32), Y: T.Buffer((n, oh, ow, c), out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        for task in T.parallel(groups * nv):  # (row group, channel vector) pairs
            F = T.decl_buffer((ring * wp * 16,), f32, scope="local")
            acc = T.decl_buffer((px * 16,), f32, scope="local")
            for s, col in T.grid(ring, wp):
                if col < pl or col >= pl + wc:
                    for j in T.vectorized(16):
                        F[(s * wp + col) * 16 + j] = fzx
            for i in range(size):
                if y(task, i) < rows:
                    # the ring rows this output row adds (all of them for a task's or an image's first row)
                    for t in range(ring):
                        if i == 0 or y(task, i) % oh == 0 or t >= ring - sh:
                            if first(task, i) + t >= 0 and first(task, i) + t < h:
                                for ix in range(wc):
                                    for j in T.vectorized(16):
                                        F[at(task, i, t, pl + ix) + j] = source(X, task, i, t, ix, j)
                            else:
                                for ix in range(wc):
                                    for j in T.vectorized(16):
                                        F[at(task, i, t, pl + ix) + j] = fzx
                    for xb in range(ow // px):
                        pixels(F, W, B, M, Y, acc, task, i, xb * px, px)
                    for x in range(ow - full):
                        pixels(F, W, B, M, Y, acc, task, i, full + x, 1)
    return func


def max_pool_nhwc(shape, out_shape, kernel, strides, pads, dilations, dtype: str, lowest: int):
    """Integer max pooling on NHWC values: a pixel at a time over channel vectors; taps outside the input are
    skipped (the padding is the lowest value)."""
    from tvm.script import tirx as T

    n, h, w, c = shape
    _, oh, ow, _ = out_shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilations, pads[:2]

    @T.prim_func(s_tir=True)
    def func(X: T.Buffer((n, h, w, c), dtype), Y: T.Buffer((n, oh, ow, c), dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})  # opaque: not fused
        with T.sblock("root"):  # TVM checks the body of a one-input function for a reshape pattern
            for row in T.parallel(n * oh):
                acc = T.decl_buffer((c,), dtype, scope="local")
                for x in range(ow):
                    for k in range(c):
                        acc[k] = T.Cast(dtype, lowest)
                    for r, q in T.grid(kh, kw):
                        if row % oh * sh - pt + r * dh >= 0 and row % oh * sh - pt + r * dh < h and \
                                x * sw - pl + q * dw >= 0 and x * sw - pl + q * dw < w:
                            for kv in range(c // 16):
                                for k in T.vectorized(16):
                                    acc[kv * 16 + k] = T.max(acc[kv * 16 + k], X[
                                        row // oh, row % oh * sh - pt + r * dh, x * sw - pl + q * dw, kv * 16 + k])
                            for k in range(c % 16):
                                acc[c // 16 * 16 + k] = T.max(acc[c // 16 * 16 + k], X[
                                    row // oh, row % oh * sh - pt + r * dh, x * sw - pl + q * dw, c // 16 * 16 + k])
                    for k in range(c):
                        Y[row // oh, row % oh, x, k] = acc[k]
    return func
