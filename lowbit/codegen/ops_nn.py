"""Lowering rules of reductions, normalisation, matmul/gemm, float convolutions and pooling."""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.interp import pool_pad, pool_windows
from .lowering import np_dtype, rule


# -- reductions and normalisation ---------------------------------------------------------------------------------
_RED = {"reduce_mean": "mean", "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "reduce_prod": "prod"}


@rule(*_RED)
def _reduce(L, op, x):
    axes = list(op.attrs["axes"]) or None
    if op.opname in ("reduce_max", "reduce_min") and op.operands[0].type.dtype.is_float:
        return _float_extremum(L, op, x)
    return getattr(L.R, _RED[op.opname])(x, axis=axes, keepdims=op.attrs["keepdims"])


def _float_extremum(L, op, x):
    """A float max / min reduction starting from -inf / +inf (TOPI's starts from the largest finite value, so a
    row of -infs came out -3.4e38)."""
    te, tir = L.te, L.tir
    shape = op.operands[0].type.shape
    axes = sorted(set(op.attrs["axes"])) or list(range(len(shape)))
    keep, big = op.attrs["keepdims"], op.opname == "reduce_max"
    d = np_dtype(op.operands[0].type)
    red = te.comm_reducer(lambda a, b: tir.max(a, b) if big else tir.min(a, b),
                          lambda t: tir.const(float("-inf") if big else float("inf"), t), name="extremum")

    def fn(X):
        rs = [te.reduce_axis((0, shape[a]), name=f"r{a}") for a in axes]
        out = [1 if a in axes else shape[a] for a in range(len(shape))] if keep else \
            [shape[a] for a in range(len(shape)) if a not in axes]

        def at(*i):
            it, idx = iter(i), []
            rit = iter(rs)
            for a in range(len(shape)):
                if a in axes:
                    idx.append(next(rit))
                    if keep:
                        next(it)
                else:
                    idx.append(next(it))
            return red(X[tuple(idx)], axis=rs)
        return te.compute(out, at, name="extremum")
    assert d == np_dtype(op.result.type)
    return L.te_(fn, x, name="lowbit_" + op.opname)


@rule("arg_max")
def _arg_max(L, op, x):
    ax, keep = op.attrs["axis"], op.attrs["keepdims"]
    if op.attrs["select_last_index"]:
        n = op.operands[0].type.shape[ax]
        idx = L.emit(L.R.astype(L.R.argmax(L.R.flip(x, axis=ax), axis=ax, keepdims=keep), "int64"))
        return L.R.subtract(L.scalar(n - 1, "int64"), idx)
    return L.R.astype(L.R.argmax(x, axis=ax, keepdims=keep), "int64")


@rule("softmax")
def _softmax(L, op, x):
    if op.result.type.dtype == dt.f32:
        # TOPI's fast_exp (max relative error 3e-7 on [-87, 88], measured): the arguments of softmax's exp are
        # never positive, so its clamping at +-88.4 cannot change a result; LLVM's exp is a scalar call per lane
        from tvm import topi

        return L.te_(topi.nn.fast_softmax, x, op.attrs["axis"] % op.result.type.rank, name="softmax")
    return L.R.nn.softmax(x, axis=op.attrs["axis"])


@rule("log_softmax")
def _log_softmax(L, op, x):
    return L.R.nn.log_softmax(x, axis=op.attrs["axis"])


@rule("layer_norm")
def _layer_norm(L, op, x, scale, bias=None):
    t = op.operands[0].type
    axes = list(range(op.attrs["axis"] % t.rank, t.rank))
    d = np_dtype(t)
    mean = L.emit(L.R.mean(x, axis=axes, keepdims=True))
    diff = L.emit(L.R.subtract(x, mean))
    var = L.emit(L.R.mean(L.R.multiply(diff, diff), axis=axes, keepdims=True))
    y = L.R.multiply(L.R.divide(diff, L.R.sqrt(L.R.add(var, L.scalar(op.attrs["epsilon"], d)))), scale)
    return y if bias is None else L.R.add(L.emit(y), bias)


@rule("batch_norm")
def _batch_norm(L, op, x, scale, bias, mean, var):
    t = op.operands[0].type
    shape = [1, -1] + [1] * (t.rank - 2)
    d = np_dtype(t)
    inv = L.emit(L.R.divide(scale, L.R.sqrt(L.R.add(var, L.scalar(op.attrs["epsilon"], d)))))
    y = L.R.multiply(L.R.subtract(x, L.R.reshape(mean, shape)), L.R.reshape(inv, shape))
    return L.R.add(L.emit(y), L.R.reshape(bias, shape))


@rule("lrn")
def _lrn(L, op, x):
    a = op.attrs
    shape = op.result.type.shape
    size, c = a["size"], shape[1]
    lo = (size - 1) // 2
    tir = L.tir

    def fn(X):
        k = L.te.reduce_axis((0, size), name="k")
        sq = L.te.compute(shape, lambda n, ch, *s: L.te.sum(
            tir.if_then_else(tir.all(ch - lo + k >= 0, ch - lo + k < c),
                             X[(n, tir.max(tir.min(ch - lo + k, c - 1), 0)) + s] *
                             X[(n, tir.max(tir.min(ch - lo + k, c - 1), 0)) + s], tir.const(0, X.dtype)), axis=k),
            name="sqsum")
        return L.te.compute(shape, lambda *i: X[i] / tir.power(
            tir.const(a["bias"], X.dtype) + tir.const(a["alpha"] / size, X.dtype) * sq[i], tir.const(a["beta"], X.dtype)))
    return L.te_(fn, x, name="lowbit_lrn")


# -- linear algebra, convolution, pooling --------------------------------------------------------------------------
@rule("matmul")
def _matmul(L, op, a, b):
    w = op.operands[1]
    if w.is_const and w.type.rank == 2 and op.result.type.dtype == dt.f32 and op.operands[0].type.rank >= 2:
        return _matmul_packed(L, op, a, w.const_value)
    return L.R.matmul(a, b)


def _panel(n: int, limit: int = 64) -> int | None:
    """Columns per packed weight panel: a multiple of 8 (an AVX2 vector) that divides ``n``, the largest <=
    ``limit`` (the ``panel_columns`` knob)."""
    return next((p for p in range(limit, 7, -8) if n % p == 0), None)


def _matmul_packed(L, op, a, weight: np.ndarray):
    """A @ W for a constant W[K, N], W packed at compile time into panels [N/p, K, p]: the inner kernel streams
    one panel contiguously instead of reading p columns of every K-long row (N = 1000: 40-column panels)."""
    k, n = weight.shape
    p = _panel(n, L.knob("panel_columns", op))
    if p is None:
        return L.R.matmul(a, L.const(weight))
    wp = L.const(np.ascontiguousarray(weight.astype(np.float32).reshape(k, n // p, p).transpose(1, 0, 2)))
    lead = tuple(op.operands[0].type.shape[:-1])

    def fn(A, W):
        r = L.te.reduce_axis((0, k), "k")
        return L.te.compute(lead + (n // p, p), lambda *i: L.te.sum(
            A[i[:-2] + (r,)] * W[i[-2], r, i[-1]], axis=[r]), name="matmul_packed")
    y = L.te_(fn, a, wp, name="lowbit_matmul")
    return L.R.reshape(L.emit(y), list(op.result.type.shape))


@rule("gemm")
def _gemm(L, op, a, b, c=None):
    at = op.attrs
    d = np_dtype(op.result.type)
    A = L.R.permute_dims(a, [1, 0]) if at["trans_a"] else a
    B = L.R.permute_dims(b, [1, 0]) if at["trans_b"] else b
    if not at["trans_a"] and op.operands[1].is_const and op.result.type.dtype == dt.f32:
        w = op.operands[1].const_value
        y = L.emit(_matmul_packed(L, op, a, np.ascontiguousarray(w.T) if at["trans_b"] else w))
    else:
        y = L.emit(L.R.matmul(A, B))
    if at["alpha"] != 1.0:
        y = L.emit(L.R.multiply(y, L.scalar(at["alpha"], d)))
    if c is not None:
        y = L.R.add(y, c if at["beta"] == 1.0 else L.R.multiply(c, L.scalar(at["beta"], d)))
    return y


def _add_bias(L, y, b):
    return L.R.add(L.emit(y), L.R.reshape(b, [1, -1, 1, 1])) if b is not None else y


@rule("conv2d")
def _conv2d(L, op, x, w, b=None):
    from . import layout

    a = op.attrs
    if _use_packed_conv(op):  # NCHW in and out, weights packed [C, KH, KW, O]: vectors over output channels
        return _add_bias(L, layout.conv2d(L, op, x, None, None), b)
    y = L.R.nn.conv2d(x, w, strides=a["strides"], padding=a["pads"], dilation=a["dilations"], groups=a["groups"])
    return _add_bias(L, y, b)


def _use_packed_conv(op) -> bool:
    """Which dense convs vectorize over output channels (weights packed at compile time) rather than over
    the output width. Measured on this 2-core AVX-512 host: strided convs read every other input column, so
    width vectors gather — packed was 1.4-2.5x faster on ResNet-18's strided shapes; 1x1 convs (MobileNet's
    pointwise layers, 7x7 to 56x56) were 1.0-2.6x faster packed; 3x3 stride-1 convs on 14x14 and 7x7 were
    slower packed (weight traffic), so they keep width vectors."""
    a, w = op.attrs, op.operands[1]
    if a["groups"] != 1 or not w.is_const or not w.type.dtype.is_float:
        return False
    return tuple(a["strides"]) != (1, 1) or tuple(w.type.shape[2:]) == (1, 1)


@rule("conv_transpose2d")
def _conv_transpose2d(L, op, x, w, b=None):
    from . import layout

    a = op.attrs
    if a["groups"] == 1 and op.operands[1].is_const and op.result.type.dtype == dt.f32 and \
            layout.transposed_as_conv(op) is not None:
        # a stride-1 conv over the zero-upsampled input with the flipped kernel: one fused, scheduled kernel
        return _add_bias(L, layout.conv2d(L, op, x, None, None), b)
    y = L.R.nn.conv2d_transpose(x, w, strides=a["strides"], padding=a["pads"], output_padding=a["output_padding"],
                                dilation=a["dilations"], groups=a["groups"])
    return _add_bias(L, y, b)


@rule("max_pool2d")
def _max_pool(L, op, x):
    a = op.attrs
    xt = op.operands[0].type
    kh, kw = a["kernel"]
    if xt.dtype.is_integer and tuple(a["dilations"]) == (1, 1) and not a["ceil_mode"] and \
            all(pd < k for pd, k in zip(a["pads"], (kh, kw, kh, kw))):
        from tvm import relax

        from .rows import max_pool

        func = max_pool(xt.shape, op.result.type.shape, (kh, kw), a["strides"], a["pads"], np_dtype(xt),
                        xt.dtype.iinfo()[0])
        gv = L.bb.add_func(func.without_attr("global_symbol"), "lowbit_max_pool_int")
        return relax.call_tir(gv, relax.Tuple([x]), relax.TensorType(op.result.type.shape, np_dtype(xt)))
    return L.R.nn.max_pool2d(x, a["kernel"], a["strides"], a["pads"], a["dilations"], ceil_mode=a["ceil_mode"])


@rule("avg_pool2d")
def _avg_pool(L, op, x):
    """Window sums divided by a per-position count computed here, exactly as the reference does."""

    a = op.attrs
    t = op.operands[0].type
    (pt, pl, pb, pr), (eh, ew), geo = pool_pad(op, np.zeros((1, 1) + t.shape[2:]))
    ones = np.ones((1, 1) + t.shape[2:], np.float32)
    mask = np.pad(ones, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=1 if a["count_include_pad"] else 0)
    mask = np.pad(mask, [(0, 0), (0, 0), (0, eh), (0, ew)])
    count = pool_windows(mask, *geo).sum(axis=(2, 3)).astype(np_dtype(t))
    xp = L.R.nn.pad(x, [0, 0, 0, 0, pt, pb + eh, pl, pr + ew])
    s = L.emit(L.R.nn.avg_pool2d(xp, a["kernel"], a["strides"], (0, 0, 0, 0), count_include_pad=True))
    k = a["kernel"][0] * a["kernel"][1]
    return L.R.divide(L.R.multiply(s, L.scalar(k, np_dtype(t))), L.const(count))


@rule("global_avg_pool")
def _gap(L, op, x):
    return L.R.mean(x, axis=list(range(2, op.operands[0].type.rank)), keepdims=True)


@rule("global_max_pool")
def _gmp(L, op, x):
    return L.R.max(x, axis=list(range(2, op.operands[0].type.rank)), keepdims=True)
