"""ONNX converters of the tensor ops added for ONNX coverage (issue 14): TopK, GatherND, ScatterND,
ScatterElements (and Scatter), and the exact compositions of existing ops OneHot, DepthToSpace, SpaceToDepth,
EyeLike, ReverseSequence and Einsum (diagonals as strided slices, sums as reduce_sum, products as one batched
matmul per operand pair).
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, ints, norm_axis, onnx_dtype, reshape_to


def _prod(xs) -> int:
    return int(np.prod(xs, dtype=np.int64))


# -- TopK, GatherND, scatters --------------------------------------------------------------------------------------
@converter("TopK")
def _topk(c: Ctx):
    x = c.need(0, "X")
    if c.opset < 10:
        a = c.attrs(axis=-1, k=None)
        k = a["k"]
    else:  # sorted=0 leaves the order to the implementation: the sorted order is one
        a = c.attrs(axis=-1, largest=1, sorted=1)
        k = ints(c.const(1, "K"))
        if len(k) != 1:
            raise NodeError(f"K must hold one value, got {list(k)}")
        k = k[0]
    return c.op_multi("topk", [x], {"axis": norm_axis(a["axis"], x.type.rank), "k": int(k),
                                    "largest": bool(a.get("largest", 1))})


@converter("GatherND")
def _gather_nd(c: Ctx):
    a = c.attrs(batch_dims=0)
    return c.op("gather_nd", [c.need(0, "data"), c.need(1, "indices")], {"batch_dims": a["batch_dims"]})


def _reduction(c: Ctx, a) -> str:
    red = a.get("reduction", "none")
    allowed = ("none", "add", "mul") if c.opset < 18 else ("none", "add", "mul", "max", "min")
    if red not in allowed:
        raise NodeError(f"reduction '{red}' is not supported (opset {c.opset} defines {', '.join(allowed)})")
    return red


@converter("ScatterND")
def _scatter_nd(c: Ctx):
    a = c.attrs(reduction="none") if c.opset >= 16 else c.attrs()
    ops = [c.need(0, "data"), c.need(1, "indices"), c.need(2, "updates")]
    return c.op("scatter_nd", ops, {"reduction": _reduction(c, a)})


@converter("ScatterElements", "Scatter")
def _scatter_elements(c: Ctx):
    a = c.attrs(axis=0, reduction="none") if c.opset >= 16 and c.node.op_type == "ScatterElements" else c.attrs(axis=0)
    data = c.need(0, "data")
    ops = [data, c.need(1, "indices"), c.need(2, "updates")]
    return c.op("scatter_elements", ops, {"axis": norm_axis(a["axis"], data.type.rank), "reduction": _reduction(c, a)})


# -- OneHot, EyeLike, ReverseSequence -------------------------------------------------------------------------------
def _scalar(c: Ctx, v: Value, i: int) -> Value:
    """Element i of a 1-D value, as a scalar."""
    s = c.op("slice", [v], {"starts": (i,), "ends": (i + 1,), "axes": (0,), "steps": (1,)})
    return reshape_to(c, s, ())


def _as_i64(c: Ctx, v: Value) -> Value:
    return v if v.type.dtype == dt.i64 else c.op("cast", [v], {"to": dt.i64})  # floats truncate, as onnxruntime


@converter("OneHot")
def _one_hot(c: Ctx):
    a = c.attrs(axis=-1)
    idx, values = c.need(0, "indices"), c.need(2, "values")
    depth = np.asarray(c.const(1, "depth")).reshape(-1)
    if depth.size != 1:
        raise NodeError(f"depth must hold one value, got {depth.size}")
    depth = int(depth[0])
    if values.type.shape != (2,):
        raise NodeError(f"values must be [off_value, on_value], got shape {values.type.shape}")
    r = idx.type.rank
    ax = norm_axis(a["axis"], r + 1)
    i = _as_i64(c, idx)
    zero, n = c.const_value(np.int64(0)), c.const_value(np.int64(depth))
    i = c.op("where", [c.op("less", [i, zero]), c.op("add", [i, n]), i])  # in [-depth, depth): from the end
    i = reshape_to(c, i, idx.type.shape[:ax] + (1,) + idx.type.shape[ax:])
    classes = c.const_value(np.arange(depth, dtype=np.int64).reshape((1,) * ax + (depth,) + (1,) * (r - ax)))
    hot = c.op("equal", [i, classes])  # out-of-range indices match no class: all off
    return c.op("where", [hot, _scalar(c, values, 1), _scalar(c, values, 0)])


@converter("EyeLike")
def _eye_like(c: Ctx):
    a = c.attrs(dtype=None, k=0)
    x = c.need(0, "input")
    if x.type.rank != 2:
        raise NodeError(f"input must be 2-D, got shape {x.type.shape}")
    d = x.type.dtype if a["dtype"] is None else onnx_dtype(a["dtype"], "attribute 'dtype'")
    return c.const_value(np.eye(*x.type.shape, k=a["k"]).astype(d.np_dtype))


@converter("ReverseSequence")
def _reverse_sequence(c: Ctx):
    a = c.attrs(batch_axis=1, time_axis=0)
    x, lens = c.need(0, "input"), c.need(1, "sequence_lens")
    r = x.type.rank
    if r < 2:
        raise NodeError(f"input must have rank >= 2, got shape {x.type.shape}")
    b, t = norm_axis(a["batch_axis"], r), norm_axis(a["time_axis"], r)
    if b == t or {b, t} - {0, 1}:
        raise NodeError(f"batch_axis {a['batch_axis']} and time_axis {a['time_axis']} must be 0 and 1")
    if lens.type.shape != (x.type.shape[b],):
        raise NodeError(f"sequence_lens must have shape ({x.type.shape[b]},), got {lens.type.shape}")
    steps = np.arange(x.type.shape[t], dtype=np.int64).reshape([-1 if k == t else 1 for k in range(r)])
    steps = c.const_value(steps)
    n = reshape_to(c, _as_i64(c, lens), [x.type.shape[b] if k == b else 1 for k in range(r)])
    last = c.op("sub", [n, c.const_value(np.int64(1))])
    src = c.op("where", [c.op("less", [steps, n]), c.op("sub", [last, steps]), steps])  # reversed within lens
    src = c.op("expand", [src], {"shape": x.type.shape})
    return c.op("gather_elements", [x, src], {"axis": t})


# -- DepthToSpace, SpaceToDepth -------------------------------------------------------------------------------------
def _need_nchw(x: Value):
    if x.type.rank != 4:
        raise NodeError(f"input must be 4-D (NCHW), got shape {x.type.shape}")


@converter("DepthToSpace")
def _depth_to_space(c: Ctx):
    a = c.attrs(blocksize=None, mode="DCR")
    x = c.need(0, "input")
    _need_nchw(x)
    bs = a["blocksize"]
    n, ch, h, w = x.type.shape
    if not bs or ch % (bs * bs):
        raise NodeError(f"blocksize {bs} does not divide the {ch} channels into blocksize^2 groups")
    if a["mode"] == "DCR":
        y = reshape_to(c, x, (n, bs, bs, ch // bs // bs, h, w))
        perm = (0, 3, 4, 1, 5, 2)
    elif a["mode"] == "CRD":
        y = reshape_to(c, x, (n, ch // bs // bs, bs, bs, h, w))
        perm = (0, 1, 4, 2, 5, 3)
    else:
        raise NodeError(f"mode '{a['mode']}' is not supported (DCR and CRD are)")
    y = c.op("transpose", [y], {"perm": perm})
    return reshape_to(c, y, (n, ch // bs // bs, h * bs, w * bs))


@converter("SpaceToDepth")
def _space_to_depth(c: Ctx):
    a = c.attrs(blocksize=None)
    x = c.need(0, "input")
    _need_nchw(x)
    bs = a["blocksize"]
    n, ch, h, w = x.type.shape
    if not bs or h % bs or w % bs:
        raise NodeError(f"blocksize {bs} does not divide the spatial shape {(h, w)}")
    y = reshape_to(c, x, (n, ch, h // bs, bs, w // bs, bs))
    y = c.op("transpose", [y], {"perm": (0, 3, 5, 1, 2, 4)})
    return reshape_to(c, y, (n, ch * bs * bs, h // bs, w // bs))


# -- Einsum ---------------------------------------------------------------------------------------------------------
def _einsum_terms(eq: str, ranks: list[int]):
    """(input label lists, output label list); each ellipsis becomes labels of its own, right-aligned."""
    lhs, arrow, rhs = eq.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise NodeError(f"equation '{eq}' has {len(terms)} operand terms for {len(ranks)} inputs")
    n_ell = max([r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t] or [0])
    ell = [chr(0x100 + i) for i in range(n_ell)]
    out = []
    for t, r in zip(terms, ranks):
        if not t.replace("...", "").isalpha() or t.count("...") > 1:
            raise NodeError(f"term '{t}' of equation '{eq}' is not letters with at most one ellipsis")
        head, dots, tail = t.partition("...")
        labels = list(head) + (ell[n_ell - (r - len(head) - len(tail)):] if dots else []) + list(tail)
        if len(labels) != r:
            raise NodeError(f"term '{t}' of equation '{eq}' does not match an input of rank {r}")
        out.append(labels)
    if arrow:
        if not rhs.replace("...", "").isalpha() and rhs.replace("...", ""):
            raise NodeError(f"output term '{rhs}' of equation '{eq}' is not letters")
        head, dots, tail = rhs.partition("...")
        res = list(head) + (ell if dots else []) + list(tail)
    else:  # implicit output: the ellipsis, then the letters used once, in alphabetical order
        counts = {}
        for labels in out:
            for s in labels:
                counts[s] = counts.get(s, 0) + 1
        res = ell + sorted(s for s, k in counts.items() if k == 1 and s not in ell)
    if len(set(res)) != len(res) or set(res) - {s for t in out for s in t}:
        raise NodeError(f"output term of equation '{eq}' repeats a label or names one no input has")
    return out, res


def _diagonal(c: Ctx, x: Value, labels: list):
    """Take the diagonal of every label repeated in one term: the two axes side by side, merged, every
    (n + 1)-th element."""
    while len(set(labels)) < len(labels):
        s = next(s for s in labels if labels.count(s) > 1)
        p, q = [k for k, t in enumerate(labels) if t == s][:2]
        perm = [k for k in range(len(labels)) if k != q]
        perm.insert(p + 1, q)
        x = c.op("transpose", [x], {"perm": tuple(perm)}) if perm != list(range(len(labels))) else x
        shape = [x.type.shape[k] for k in range(len(labels))]
        n = shape[p]
        if shape[p + 1] != n:
            raise NodeError(f"label '{s}' has sizes {n} and {shape[p + 1]} in one term")
        x = reshape_to(c, x, shape[:p] + [n * n] + shape[p + 2:])
        x = c.op("slice", [x], {"starts": (0,), "ends": (n * n,), "axes": (p,), "steps": (n + 1,)})
        labels = [labels[k] for k in perm if k != q]
    return x, labels


def _sum_out(c: Ctx, x: Value, labels: list, keep: set):
    axes = tuple(k for k, s in enumerate(labels) if s not in keep)
    if not axes:
        return x, labels
    return c.op("reduce_sum", [x], {"axes": axes, "keepdims": False}), [s for s in labels if s in keep]


def _permute(c: Ctx, x: Value, labels: list, order: list) -> Value:
    perm = tuple(labels.index(s) for s in order)
    return x if perm == tuple(range(len(perm))) else c.op("transpose", [x], {"perm": perm})


def _contract(c: Ctx, a: Value, la: list, b: Value, lb: list, keep: set):
    """a x b over their shared labels not in ``keep`` as one batched matmul [batch, left, k] @ [batch, k, right]."""
    batch = [s for s in la if s in lb and s in keep]
    inner = [s for s in la if s in lb and s not in keep]
    left, right = [s for s in la if s not in lb], [s for s in lb if s not in la]
    size = dict(zip(la, a.type.shape)) | dict(zip(lb, b.type.shape))
    dims = [[size[s] for s in g] for g in (batch, left, inner, right)]
    a = reshape_to(c, _permute(c, a, la, batch + left + inner), [_prod(dims[0]), _prod(dims[1]), _prod(dims[2])])
    b = reshape_to(c, _permute(c, b, lb, batch + inner + right), [_prod(dims[0]), _prod(dims[2]), _prod(dims[3])])
    y = c.op("matmul", [a, b])
    return reshape_to(c, y, dims[0] + dims[1] + dims[3]), batch + left + right


@converter("Einsum")
def _einsum(c: Ctx):
    a = c.attrs(equation=None)
    if not a["equation"]:
        raise NodeError("attribute 'equation' is required")
    xs = [c.need(i, "Inputs") for i in range(len(c.node.input))]
    terms, res = _einsum_terms(a["equation"], [x.type.rank for x in xs])
    size = {}
    for x, labels in zip(xs, terms):
        for s, d in zip(labels, x.type.shape):
            if size.get(s, 1) not in (1, d) and d != 1:
                raise NodeError(f"label '{s}' has sizes {size[s]} and {d} in equation '{a['equation']}'")
            size[s] = max(size.get(s, 1), d)
    ops = []
    for i, (x, labels) in enumerate(zip(xs, terms)):
        x, labels = _diagonal(c, x, labels)
        if any(d != size[s] for s, d in zip(labels, x.type.shape)):  # broadcast size-1 (ellipsis) dimensions
            x = c.op("expand", [x], {"shape": tuple(size[s] for s in labels)})
        later = set(res).union(*[set(t) for k, t in enumerate(terms) if k != i])
        ops.append(_sum_out(c, x, labels, later))
    y, ly = ops[0]
    for i, (x, lx) in enumerate(ops[1:], 1):
        keep = set(res).union(*[set(t) for t in terms[i + 1:]])
        y, ly = _sum_out(c, y, ly, keep | set(lx))
        y, ly = _contract(c, y, ly, x, lx, keep)
    y, ly = _sum_out(c, y, ly, set(res))
    y = _permute(c, y, ly, res)
    return y if y is not xs[0] else c.op("identity", [y])
