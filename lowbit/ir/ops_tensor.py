"""Schemas and numpy references of the tensor ops added for ONNX coverage (issue 14): topk, gather_nd,
scatter_nd, scatter_elements and max_pool2d_indices.

The other ONNX tensor ops of issue 14 (Einsum, OneHot, DepthToSpace, SpaceToDepth, EyeLike, ReverseSequence,
1-D convolution and pooling) are exact compositions of existing ops, built by the importer.

>>> from lowbit.ir.registry import schema
>>> schema("topk").attrs["largest"].default, schema("scatter_nd").attrs["reduction"].choices
(True, ('none', 'add', 'mul', 'max', 'min'))
"""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from . import dtypes as dt
from .interp import impl, pool_pad, pool_windows
from .registry import Attr, OpSchema, register, schema
from .types import TensorType

_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def _need_int(t: TensorType, what: str = "indices"):
    if not t.dtype.is_integer or t.quant is not None:
        raise ValueError(f"{what} must be plain integers, got {t}")


# -- topk ---------------------------------------------------------------------------------------------------------
def _infer_topk(t, a):
    (x,) = t
    if x.rank == 0:
        raise ValueError("topk needs rank >= 1")
    ax = _axis(a["axis"], x.rank)
    if not 1 <= a["k"] <= x.shape[ax]:
        raise ValueError(f"k = {a['k']} is not in [1, {x.shape[ax]}] (dimension {ax} of {x.shape})")
    shape = x.shape[:ax] + (a["k"],) + x.shape[ax + 1:]
    return [TensorType(shape, x.dtype), TensorType(shape, dt.i64)]


register(OpSchema("topk", (1, 1), {"axis": Attr("int", -1), "k": Attr("int"), "largest": Attr("bool", True)},
                  _infer_topk, doc="the k largest (or smallest) elements along axis, sorted, and their i64 indices; "
                                   "equal values in order of index (lower first), as ONNX TopK"))


@impl("topk")
def _topk(op, x):
    ax = op.attrs["axis"] % x.ndim
    n, k = x.shape[ax], op.attrs["k"]
    if op.attrs["largest"]:  # descending, equal values lower index first: a stable sort of the reversed axis
        order = n - 1 - np.flip(np.argsort(np.flip(x, ax), axis=ax, kind="stable"), ax)
    else:
        order = np.argsort(x, axis=ax, kind="stable")
    idx = np.take(order, np.arange(k), axis=ax)
    return [np.take_along_axis(x, idx, ax), idx.astype(np.int64)]


# -- gather_nd ----------------------------------------------------------------------------------------------------
def _infer_gather_nd(t, a):
    data, idx = t
    _need_int(idx)
    b = a["batch_dims"]
    if idx.rank < 1 or not 0 <= b < min(idx.rank, data.rank):
        raise ValueError(f"batch_dims {b} needs indices and data of rank > {b}, got {idx.shape} and {data.shape}")
    if idx.shape[:b] != data.shape[:b]:
        raise ValueError(f"batch dimensions differ: indices {idx.shape}, data {data.shape}")
    m = idx.shape[-1]
    if not 1 <= m <= data.rank - b:
        raise ValueError(f"indices' last dimension {m} must be in [1, {data.rank - b}]")
    return [TensorType(idx.shape[:-1] + data.shape[b + m:], data.dtype)]


register(OpSchema("gather_nd", (2, 2), {"batch_dims": Attr("int", 0)}, _infer_gather_nd,
                  doc="ONNX GatherND: slices of data at the index tuples of indices' last axis, per batch "
                      "index of the first batch_dims axes; negative indices count from the end"))


def _normalized(op, idx, dims):
    """Index tuples (last axis) with negative entries counted from the end of ``dims``; out of range raises."""
    dims = np.asarray(dims, np.int64)
    idx = idx.astype(np.int64)
    if idx.size and (np.any(idx < -dims) or np.any(idx >= dims)):
        raise LowbitError(f"{op.describe()}: index out of range for dimensions {tuple(int(d) for d in dims)}")
    return np.where(idx < 0, idx + dims, idx)


@impl("gather_nd")
def _gather_nd(op, data, idx):
    b, m = op.attrs["batch_dims"], idx.shape[-1]
    nb = int(np.prod(data.shape[:b], dtype=np.int64))
    d = data.reshape((nb,) + data.shape[b:])
    i = _normalized(op, idx, data.shape[b:b + m]).reshape(nb, -1, m)
    out = d[(np.arange(nb)[:, None],) + tuple(i[..., j] for j in range(m))]
    return out.reshape(idx.shape[:-1] + data.shape[b + m:])


# -- scatter ------------------------------------------------------------------------------------------------------
def _infer_scatter_nd(t, a):
    data, idx, upd = t
    _need_int(idx)
    m = idx.shape[-1] if idx.rank else 0
    if idx.rank < 1 or not 1 <= m <= data.rank:
        raise ValueError(f"indices' last dimension must be in [1, {data.rank}], got indices {idx.shape}")
    want = idx.shape[:-1] + data.shape[m:]
    if upd.shape != want or upd.dtype != data.dtype:
        raise ValueError(f"updates must be {data.dtype.name}{list(want)}, got {upd}")
    return [data]


def _infer_scatter_elements(t, a):
    data, idx, upd = t
    _need_int(idx)
    ax = _axis(a["axis"], data.rank)
    if idx.rank != data.rank or upd.shape != idx.shape or upd.dtype != data.dtype:
        raise ValueError(f"indices and updates need data's rank and one shape, got {idx}, {upd} for {data}")
    if any(i > d for k, (i, d) in enumerate(zip(idx.shape, data.shape)) if k != ax):
        raise ValueError(f"indices {idx.shape} larger than data {data.shape} off axis {ax}")
    return [data]


_SCATTER_DOC = ("; reduction none writes the update (duplicate indices: undefined in ONNX, the last update here), "
                "add/mul/max/min combine in order of the updates; negative indices count from the end")
register(OpSchema("scatter_nd", (3, 3), {"reduction": Attr("str", "none", _REDUCTIONS)}, _infer_scatter_nd,
                  doc="ONNX ScatterND: a copy of data with the slices at indices' index tuples updated" + _SCATTER_DOC))
register(OpSchema("scatter_elements", (3, 3), {"axis": Attr("int", 0), "reduction": Attr("str", "none", _REDUCTIONS)},
                  _infer_scatter_elements,
                  doc="ONNX ScatterElements: out[.., index[.., j, ..], ..] = update[.., j, ..] on axis" + _SCATTER_DOC))


def _apply(out, where, upd, reduction):
    if reduction == "none":
        out[where] = upd
    else:
        {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction].at(out, where, upd)
    return out


@impl("scatter_nd")
def _scatter_nd(op, data, idx, upd):
    m = idx.shape[-1]
    i = _normalized(op, idx, data.shape[:m]).reshape(-1, m)
    u = upd.reshape((i.shape[0],) + data.shape[m:])
    return _apply(data.copy(), tuple(i[:, j] for j in range(m)), u, op.attrs["reduction"])


@impl("scatter_elements")
def _scatter_elements(op, data, idx, upd):
    ax = op.attrs["axis"] % data.ndim
    grid = list(np.ogrid[tuple(slice(0, d) for d in idx.shape)])
    grid[ax] = _normalized(op, idx[..., None], data.shape[ax:ax + 1])[..., 0]
    where = tuple(np.broadcast_to(g, idx.shape) for g in grid)
    return _apply(data.copy(), where, upd, op.attrs["reduction"])


# -- max_pool2d_indices -------------------------------------------------------------------------------------------
def _infer_pool_indices(t, a):
    (x,) = t
    if x.dtype == dt.boolean or x.quant is not None:
        raise ValueError(f"needs a plain numeric tensor, got {x}")
    (y,) = schema("max_pool2d").infer(t, {k: v for k, v in a.items() if k != "storage_order"})
    return [TensorType(y.shape, dt.i64)]


register(OpSchema("max_pool2d_indices", (1, 1), {
    "kernel": Attr("ints"), "strides": Attr("ints", (1, 1)), "pads": Attr("ints", (0, 0, 0, 0)),
    "dilations": Attr("ints", (1, 1)), "ceil_mode": Attr("bool", False), "storage_order": Attr("int", 0, (0, 1))},
    _infer_pool_indices, doc="MaxPool's Indices: the flat index into x (NCHW; storage_order 1: column-major "
                             "within each HxW plane) of each window's maximum, the first in window order on ties"))


@impl("max_pool2d_indices")
def _max_pool_indices(op, x):
    (pt, pl, pb, pr), (eh, ew), geo = pool_pad(op, x)
    n, c, h, w = x.shape
    kh, kw, sh, sw, dh, dw, oh, ow = geo
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = np.pad(x, [(0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)], constant_values=lowest)
    win = pool_windows(xp, *geo).transpose(0, 1, 4, 5, 2, 3).reshape(n, c, oh, ow, kh * kw)
    k = np.argmax(win, axis=-1)  # the first maximum in window (row-major) order
    hh = np.arange(oh)[:, None] * sh + (k // kw) * dh - pt
    ww = np.arange(ow)[None, :] * sw + (k % kw) * dw - pl
    plane = hh * w + ww if op.attrs["storage_order"] == 0 else ww * h + hh
    return (np.arange(n * c).reshape(n, c, 1, 1) * (h * w) + plane).astype(np.int64)
