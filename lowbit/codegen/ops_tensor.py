"""Lowering rules of the tensor ops added for ONNX coverage (issue 14): topk (TVM's sort, stable: equal values
in order of index), gather_nd and max_pool2d_indices (TE), scatter_nd and scatter_elements (sequential TIR: the
updates are applied in order, as the reference applies them)."""
from __future__ import annotations

import numpy as np

from .lowering import np_dtype, rule


@rule("topk")
def _topk(L, op, x):
    a = op.attrs
    t = L.emit(L.R.topk(x, k=a["k"], axis=a["axis"], ret_type="both", largest=a["largest"], dtype="int64"))
    return [L.emit(L.relax.TupleGetItem(t, i)) for i in range(2)]


def _norm(L, j, n):
    j = j.astype("int64")
    return L.tir.Select(j < 0, j + n, j)


@rule("gather_nd")
def _gather_nd(L, op, data, idx):
    b = op.attrs["batch_dims"]
    dshape, ishape, shape = op.operands[0].type.shape, op.operands[1].type.shape, op.result.type.shape
    m, q = ishape[-1], len(ishape) - 1

    def fn(D, I):
        def body(*o):
            tup = tuple(_norm(L, I[o[:q] + (j,)], dshape[b + j]) for j in range(m))
            return D[o[:b] + tup + o[q:]]
        return L.te.compute(shape, body)
    return L.te_(fn, data, idx, name="lowbit_gather_nd")


def _combine(L, reduction, old, new):
    tir = L.tir
    return {"none": lambda: new, "add": lambda: old + new, "mul": lambda: old * new,
            "max": lambda: tir.max(old, new), "min": lambda: tir.min(old, new)}[reduction]()


def _scatter(L, op, data, idx, upd, updates_of, name):
    """A copy of data, then every update in order: ``updates_of(I, U, O, T)`` writes the sequential loop."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    shape, d = op.result.type.shape, np_dtype(op.result.type)
    size = int(np.prod(shape, dtype=np.int64))

    def gen(dp, ip, up, outp):
        D, I, U, O = (T.buffer_proxy(p) for p in (dp, ip, up, outp))
        with IRBuilder() as ib:
            with T.seq_scope():
                with T.parallel(0, size) as f:
                    O[f] = D[f]
                updates_of(I, U, O, T)
        return ib.get()

    def fn(Dt, It, Ut):
        out = L.tir.decl_buffer(shape, d, "out_buf")
        return L.te.extern([shape], [Dt, It, Ut], lambda ins, outs: gen(ins[0], ins[1], ins[2], outs[0]), dtype=d,
                           out_buffers=[out], name=name)
    return L.te_(fn, data, idx, upd, name=name)


def _strides(shape):
    return [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]


@rule("scatter_nd")
def _scatter_nd(L, op, data, idx, upd):
    dshape, ishape = op.operands[0].type.shape, op.operands[1].type.shape
    m = ishape[-1]
    n_idx = int(np.prod(ishape[:-1], dtype=np.int64))
    inner = int(np.prod(dshape[m:], dtype=np.int64))
    st = _strides(dshape)
    red = op.attrs["reduction"]

    def updates_of(I, U, O, T):
        with T.serial(0, n_idx) as i:
            with T.serial(0, inner) as j:
                pos = j
                for k in range(m):
                    pos = pos + _norm(L, I[i * m + k], dshape[k]) * st[k]
                O[pos] = _combine(L, red, O[pos], U[i * inner + j])
    return _scatter(L, op, data, idx, upd, updates_of, "lowbit_scatter_nd")


@rule("scatter_elements")
def _scatter_elements(L, op, data, idx, upd):
    dshape, ishape = op.operands[0].type.shape, op.operands[1].type.shape
    ax = op.attrs["axis"]
    total = int(np.prod(ishape, dtype=np.int64))
    dst, ist = _strides(dshape), _strides(ishape)
    red = op.attrs["reduction"]

    def updates_of(I, U, O, T):
        with T.serial(0, total) as f:  # in C order of the updates
            pos = 0
            for k in range(len(ishape)):
                o = (f // ist[k]) % ishape[k]
                pos = pos + (_norm(L, I[f], dshape[k]) if k == ax else o) * dst[k]
            O[pos] = _combine(L, red, O[pos], U[f])
    return _scatter(L, op, data, idx, upd, updates_of, "lowbit_scatter_elements")


@rule("max_pool2d_indices")
def _max_pool2d_indices(L, op, x):
    """The first maximum of each window: an order-independent reducer over (window position, value) pairs
    (a larger value wins; equal values: the lower position), so no reduction order changes the result."""
    a = op.attrs
    tir, te = L.tir, L.te
    n, c, h, w = op.operands[0].type.shape
    shape = op.result.type.shape
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["strides"], a["dilations"]
    pt, pl = a["pads"][0], a["pads"][1]
    d = np_dtype(op.operands[0].type)
    lowest = tir.const(float("-inf"), d) if op.operands[0].type.dtype.is_float else tir.min_value(d)

    def combine(x, y):
        take = tir.any(y[1] > x[1], tir.all(y[1] == x[1], y[0] < x[0]))
        return tir.Select(take, y[0], x[0]), tir.Select(take, y[1], x[1])

    argmax = te.comm_reducer(combine, lambda t0, t1: (tir.const(kh * kw, t0), lowest), name="first_argmax")

    def fn(X):
        ri, rj = te.reduce_axis((0, kh), "ri"), te.reduce_axis((0, kw), "rj")

        def body(b, ch, i, j):
            hh, ww = i * sh + ri * dh - pt, j * sw + rj * dw - pl
            inside = tir.all(hh >= 0, hh < h, ww >= 0, ww < w)
            v = tir.if_then_else(inside, X[b, ch, tir.max(tir.min(hh, h - 1), 0), tir.max(tir.min(ww, w - 1), 0)],
                                 lowest)
            return argmax(((ri * kw + rj).astype("int64"), v), axis=[ri, rj])
        k, _ = te.compute(shape, body, name="window_argmax")
        sto = a["storage_order"]

        def index(b, ch, i, j):
            kk = k[b, ch, i, j]
            hh = i.astype("int64") * sh + (kk // kw) * dh - pt
            ww = j.astype("int64") * sw + (kk % kw) * dw - pl
            plane = hh * w + ww if sto == 0 else ww * h + hh
            return (b.astype("int64") * c + ch.astype("int64")) * (h * w) + plane
        return te.compute(shape, index, name="max_pool_indices")
    return L.te_(fn, x, name="lowbit_max_pool2d_indices")
