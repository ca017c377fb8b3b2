"""Lowering rules of shape ops: reshape, transpose, concat, split, slice, gather, expand, tile, pad, resize
(ONNX index arithmetic in TE, float32 coordinates as onnxruntime computes them)."""
from __future__ import annotations

import numpy as np

from ..ir.registry import slice_dim
from .lowering import np_dtype, rule


# -- shape ops ----------------------------------------------------------------------------------------------------
@rule("reshape")
def _reshape(L, op, x):
    return L.R.reshape(x, op.attrs["shape"])


@rule("transpose")
def _transpose(L, op, x):
    return L.R.permute_dims(x, list(op.attrs["perm"]))


@rule("concat")
def _concat(L, op, *xs):
    return L.R.concat(list(xs), axis=op.attrs["axis"])


@rule("split")
def _split(L, op, x):
    sizes, axis = [int(v) for v in op.attrs["sizes"]], op.attrs["axis"]
    if 0 in sizes:  # (TVM's split needs increasing indices): slices, and empty constants for the empty parts
        out, start = [], 0
        for r, n in zip(op.results, sizes):
            out.append(L.const(np.zeros(r.type.shape, np_dtype(r.type))) if n == 0 else
                       L.emit(L.R.strided_slice(x, axes=[axis], begin=[start], end=[start + n])))
            start += n
        return out
    idx = [int(v) for v in np.cumsum(sizes)[:-1]]
    t = L.emit(L.R.split(x, idx, axis=axis))
    return [L.emit(L.relax.TupleGetItem(t, i)) for i in range(len(op.results))]


@rule("slice")
def _slice(L, op, x):
    in_shape = op.operands[0].type.shape
    shape = op.result.type.shape
    start = [0] * len(in_shape)
    step = [1] * len(in_shape)
    for s, e, ax, st in zip(*(op.attrs[k] for k in ("starts", "ends", "axes", "steps"))):
        start[ax], _, _ = slice_dim(in_shape[ax], s, e, st)
        step[ax] = st
    return L.te_(lambda X: L.te.compute(shape, lambda *i: X[tuple(start[k] + i[k] * step[k] for k in range(len(i)))]),
                 x, name="lowbit_slice")


@rule("gather")
def _gather(L, op, data, idx):
    axis = op.attrs["axis"]
    dshape, ishape, shape = op.operands[0].type.shape, op.operands[1].type.shape, op.result.type.shape
    n = dshape[axis]
    ni = len(ishape)

    def fn(D, I):
        def body(*o):
            j = I[o[axis:axis + ni]].astype("int64")
            j = L.tir.Select(j < 0, j + n, j)
            return D[o[:axis] + (j,) + o[axis + ni:]]
        return L.te.compute(shape, body)
    return L.te_(fn, data, idx, name="lowbit_gather")


@rule("gather_elements")
def _gather_elements(L, op, data, idx):
    axis = op.attrs["axis"]
    n = op.operands[0].type.shape[axis]
    shape = op.result.type.shape

    def fn(D, I):
        def body(*o):
            j = I[o].astype("int64")
            j = L.tir.Select(j < 0, j + n, j)
            return D[o[:axis] + (j,) + o[axis + 1:]]
        return L.te.compute(shape, body)
    return L.te_(fn, data, idx, name="lowbit_gather_elements")


@rule("expand")
def _expand(L, op, x):
    return L.R.broadcast_to(x, op.result.type.shape)


@rule("tile")
def _tile(L, op, x):
    return L.R.tile(x, list(op.attrs["repeats"]))


@rule("pad")
def _pad(L, op, x):
    ishape, shape = op.operands[0].type.shape, op.result.type.shape
    r = len(ishape)
    begin = op.attrs["pads"][:r]
    mode = op.attrs["mode"]
    value = op.attrs["value"]
    d = np_dtype(op.result.type)

    def fn(X):
        def body(*o):
            src = [o[k] - begin[k] for k in range(r)]
            if mode == "constant":
                inside = L.tir.all(*[L.tir.all(s >= 0, s < ishape[k]) for k, s in enumerate(src)])
                safe = [L.tir.max(L.tir.min(s, ishape[k] - 1), 0) for k, s in enumerate(src)]
                return L.tir.if_then_else(inside, X[tuple(safe)], L.tir.const(value, d))
            idx = []
            for k, s in enumerate(src):
                n = ishape[k]
                if mode == "edge" or n == 1:
                    idx.append(L.tir.max(L.tir.min(s, n - 1), 0))
                else:  # reflect (one reflection, as ONNX requires pads < dim)
                    s = L.tir.Select(s < 0, -s, s)
                    idx.append(L.tir.Select(s >= n, 2 * (n - 1) - s, s))
            return X[tuple(idx)]
        return L.te.compute(shape, body)
    return L.te_(fn, x, name="lowbit_pad")


@rule("resize")
def _resize(L, op, x):
    a = op.attrs
    ishape, shape = op.operands[0].type.shape, op.result.type.shape
    f = "float32"
    tir = L.tir

    def coord(o, in_len, out_len, scale):
        xo = o.astype(f)
        s = tir.const(scale, f)
        m = a["coordinate_transformation_mode"]
        half = tir.const(0.5, f)
        if m == "asymmetric":
            return xo / s
        if m == "align_corners":
            return xo * tir.const(in_len - 1, f) / tir.const(out_len - 1, f) if out_len > 1 else tir.const(0, f)
        if m == "pytorch_half_pixel":
            return (xo + half) / s - half if out_len > 1 else tir.const(0, f)
        if m == "half_pixel_symmetric":
            adj = np.float32(out_len) / (np.float32(scale) * np.float32(in_len))
            off = np.float32(in_len) / np.float32(2) * (np.float32(1) - adj)
            return tir.const(float(off), f) + (xo + half) / s - half
        return (xo + half) / s - half

    axes = [k for k in range(len(shape)) if not (shape[k] == ishape[k] and a["scales"][k] == 1.0)]
    if a["mode"] == "nearest":
        def fn(X):
            def body(*o):
                idx = list(o)
                for k in axes:
                    c = coord(o[k], ishape[k], shape[k], a["scales"][k])
                    nm = a["nearest_mode"]
                    half = tir.const(0.5, f)
                    r = (tir.floor(c) if nm == "floor" else tir.ceil(c) if nm == "ceil" else
                         tir.floor(c + half) if nm == "round_prefer_ceil" else tir.ceil(c - half))
                    idx[k] = tir.max(tir.min(r.astype("int64"), ishape[k] - 1), 0)
                return X[tuple(idx)]
            return L.te.compute(shape, body)
        return L.te_(fn, x, name="lowbit_resize_nearest")

    def fn(X):  # linear: separable, weights in float32 from clamped coordinates
        def body(*o):
            terms = [(tir.const(1.0, f), list(o))]
            for k in axes:
                c = coord(o[k], ishape[k], shape[k], a["scales"][k])
                c = tir.max(tir.min(c, tir.const(ishape[k] - 1, f)), tir.const(0, f))
                lo = tir.floor(c).astype("int64")
                hi = tir.min(lo + 1, ishape[k] - 1)
                w = c - tir.floor(c)
                new = []
                for wt, idx in terms:
                    new.append((wt * (tir.const(1.0, f) - w), idx[:k] + [lo] + idx[k + 1:]))
                    new.append((wt * w, idx[:k] + [hi] + idx[k + 1:]))
                terms = new
            acc = None
            for wt, idx in terms:
                v = X[tuple(idx)].astype(f) * wt
                acc = v if acc is None else acc + v
            return acc.astype(X.dtype)
        return L.te.compute(shape, body)
    return L.te_(fn, x, name="lowbit_resize_linear")
