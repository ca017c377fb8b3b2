"""ONNX converters for constants and shapes: Constant, Shape, Size, ConstantOfShape, Range, Reshape,
Flatten, Squeeze/Unsqueeze, Transpose, Concat, Split, Slice, Gather(Elements), Expand, Tile, Pad, and
Upsample/Resize.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, ints, norm_axis, onnx_dtype, reshape_to


# -- constants and shapes ---------------------------------------------------------------------------------------
@converter("Constant")
def _constant(c: Ctx):
    from onnx import numpy_helper

    if len(c.node.attribute) != 1:
        raise NodeError("Constant needs exactly one value attribute")
    a = c.node.attribute[0]
    if a.name == "value":
        onnx_dtype(a.t.data_type, "the constant")
        arr = numpy_helper.to_array(a.t)
    elif a.name == "value_float":
        arr = np.asarray(a.f, np.float32)
    elif a.name == "value_floats":
        arr = np.asarray(list(a.floats), np.float32)
    elif a.name == "value_int":
        arr = np.asarray(a.i, np.int64)
    elif a.name == "value_ints":
        arr = np.asarray(list(a.ints), np.int64)
    else:
        raise NodeError(f"attribute '{a.name}' is not supported")
    return c.const_value(arr)


@converter("Shape")
def _shape(c: Ctx):
    a = c.attrs(start=0, end=None)
    shape = np.asarray(c.need(0, "data").type.shape, np.int64)
    end = a["end"] if a["end"] is not None else len(shape)
    return c.const_value(shape[a["start"]:end])


@converter("Size")
def _size(c: Ctx):
    c.attrs()
    return c.const_value(np.asarray(c.need(0, "data").type.size, np.int64))


@converter("ConstantOfShape")
def _constant_of_shape(c: Ctx):
    from onnx import numpy_helper

    a = c.attrs(value=None)
    shape = ints(c.const(0, "shape"))
    fill = np.zeros(1, np.float32) if a["value"] is None else numpy_helper.to_array(a["value"]).reshape(-1)
    return c.const_value(np.full(shape, fill[0], dtype=fill.dtype))


@converter("Range")
def _range(c: Ctx):
    c.attrs()
    start, limit, delta = (c.const(i, n) for i, n in enumerate(("start", "limit", "delta")))
    n = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    return c.const_value((start + np.arange(n) * delta).astype(np.asarray(start).dtype))


@converter("Reshape")
def _reshape(c: Ctx):
    a = c.attrs(allowzero=0)
    x = c.need(0, "data")
    target = list(ints(c.const(1, "shape")))
    for i, d in enumerate(target):
        if d == 0 and not a["allowzero"]:
            if i >= x.type.rank:
                raise NodeError(f"shape {target} copies dimension {i}, but the input has rank {x.type.rank}")
            target[i] = x.type.shape[i]
    if target.count(-1) > 1:
        raise NodeError(f"shape {target} has more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        if known == 0 or x.type.size % known:
            raise NodeError(f"cannot reshape {x.type.shape} to {target}")
        target[target.index(-1)] = x.type.size // known
    return reshape_to(c, x, target)


@converter("Flatten")
def _flatten(c: Ctx):
    a = c.attrs(axis=1)
    x = c.need(0, "input")
    ax = a["axis"] % x.type.rank if x.type.rank else 0
    if a["axis"] == x.type.rank:
        ax = x.type.rank
    s = x.type.shape
    return reshape_to(c, x, (int(np.prod(s[:ax], dtype=np.int64)), int(np.prod(s[ax:], dtype=np.int64))))


def _axes_input(c: Ctx, attr_opset: int, name="axes"):
    """Axes from an attribute (opset < attr_opset) or from input 1 (later opsets)."""
    if c.opset < attr_opset:
        return c.attrs(**{name: None})[name]
    c.attrs()
    v = c.const(1, name)
    return None if v is None else list(ints(v))


@converter("Squeeze")
def _squeeze(c: Ctx):
    x = c.need(0, "data")
    axes = _axes_input(c, 13)
    shape = x.type.shape
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {norm_axis(a, x.type.rank) for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise NodeError(f"cannot squeeze axes {sorted(axes)} of shape {shape}")
    return reshape_to(c, x, [d for i, d in enumerate(shape) if i not in axes])


@converter("Unsqueeze")
def _unsqueeze(c: Ctx):
    x = c.need(0, "data")
    axes = _axes_input(c, 13)
    if axes is None:
        raise NodeError("axes are required")
    rank = x.type.rank + len(axes)
    axes = sorted(norm_axis(a, rank) for a in axes)
    shape = list(x.type.shape)
    for a in axes:
        shape.insert(a, 1)
    return reshape_to(c, x, shape)


@converter("Transpose")
def _transpose(c: Ctx):
    x = c.need(0, "data")
    a = c.attrs(perm=None)
    perm = a["perm"] if a["perm"] is not None else list(range(x.type.rank))[::-1]
    return c.op("transpose", [x], {"perm": tuple(perm)})


@converter("Concat")
def _concat(c: Ctx):
    a = c.attrs(axis=None)
    if a["axis"] is None:
        raise NodeError("attribute 'axis' is required")
    xs = [c.need(i, "inputs") for i in range(len(c.node.input))]
    ax = norm_axis(a["axis"], xs[0].type.rank)
    kept = [x for x in xs if x.type.shape[ax] != 0] or xs[:1]
    if len(kept) == 1:
        return c.op("identity", kept)
    return c.op("concat", kept, {"axis": ax})


@converter("Split")
def _split(c: Ctx):
    x = c.need(0, "input")
    if c.opset < 13:
        a = c.attrs(axis=0, split=None)
        sizes = a["split"]
    else:
        a = c.attrs(axis=0, num_outputs=None)
        s = c.const(1, "split")
        sizes = None if s is None else list(ints(s))
    ax = norm_axis(a["axis"], x.type.rank)
    dim, n = x.type.shape[ax], len(c.node.output)
    if sizes is None:
        chunk = -(-dim // n)
        if c.opset < 18 and dim % n:
            raise NodeError(f"cannot split dimension {dim} into {n} equal parts")
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return c.op_multi("split", [x], {"axis": ax, "sizes": tuple(sizes)})


@converter("Slice")
def _slice(c: Ctx):
    x = c.need(0, "data")
    if c.opset < 10:
        a = c.attrs(starts=None, ends=None, axes=None)
        starts, ends, axes, steps = a["starts"], a["ends"], a["axes"], None
    else:
        c.attrs()
        starts, ends = ints(c.const(1, "starts")), ints(c.const(2, "ends"))
        axes, steps = c.const(3, "axes"), c.const(4, "steps")
        axes = None if axes is None else ints(axes)
        steps = None if steps is None else ints(steps)
    axes = list(range(len(starts))) if axes is None else [norm_axis(a, x.type.rank) for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)

    def clamp(v, dim):  # keep ONNX meaning, drop INT64_MAX-style sentinels
        return int(min(max(v, -dim - 1), dim))

    starts = [clamp(s, x.type.shape[ax]) for s, ax in zip(starts, axes)]
    ends = [clamp(e, x.type.shape[ax]) for e, ax in zip(ends, axes)]
    return c.op("slice", [x], {"starts": tuple(starts), "ends": tuple(ends), "axes": tuple(axes),
                               "steps": tuple(steps)})


@converter("Gather")
def _gather(c: Ctx):
    a = c.attrs(axis=0)
    data = c.need(0, "data")
    return c.op("gather", [data, c.need(1, "indices")], {"axis": norm_axis(a["axis"], data.type.rank)})


@converter("GatherElements")
def _gather_elements(c: Ctx):
    a = c.attrs(axis=0)
    data = c.need(0, "data")
    return c.op("gather_elements", [data, c.need(1, "indices")], {"axis": norm_axis(a["axis"], data.type.rank)})


@converter("Expand")
def _expand(c: Ctx):
    c.attrs()
    return c.op("expand", [c.need(0, "input")], {"shape": ints(c.const(1, "shape"))})


@converter("Tile")
def _tile(c: Ctx):
    c.attrs()
    return c.op("tile", [c.need(0, "input")], {"repeats": ints(c.const(1, "repeats"))})


@converter("Pad")
def _pad(c: Ctx):
    x = c.need(0, "data")
    r = x.type.rank
    if c.opset < 11:
        a = c.attrs(mode="constant", pads=None, value=0.0)
        pads, value = list(a["pads"]), a["value"]
    else:
        a = c.attrs(mode="constant")
        pads = list(ints(c.const(1, "pads")))
        v = c.const(2, "constant_value")
        value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
        axes = c.const(3, "axes")
        if axes is not None:
            axes = [norm_axis(ax, r) for ax in ints(axes)]
            full = [0] * (2 * r)
            for i, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[i], pads[i + len(axes)]
            pads = full
    if a["mode"] not in ("constant", "reflect", "edge"):
        raise NodeError(f"pad mode '{a['mode']}' is not supported")
    return c.op("pad", [x], {"pads": tuple(pads), "mode": a["mode"], "value": value})


# -- resize -------------------------------------------------------------------------------------------------------
def _resize_common(c: Ctx, x: Value, scales, sizes, mode, ctm, nearest_mode):
    shape = x.type.shape
    if sizes is not None:
        sizes = list(sizes)
        scales = [float(np.float32(o) / np.float32(i)) if i else 1.0 for o, i in zip(sizes, shape)]
    else:
        scales = [float(np.float32(s)) for s in scales]
        sizes = [int(math.floor(i * s)) for i, s in zip(shape, scales)]
    if len(sizes) != x.type.rank:
        raise NodeError(f"needs one scale or size per dimension of {shape}")
    return c.op("resize", [x], {"sizes": tuple(sizes), "scales": tuple(scales), "mode": mode,
                                "coordinate_transformation_mode": ctm, "nearest_mode": nearest_mode})


def _legacy_resize(c: Ctx, x: Value, scales, mode):
    """Upsample (opset 9) and Resize-10: asymmetric coordinates; nearest floors when upsampling."""
    if mode not in ("nearest", "linear", "bilinear"):
        raise NodeError(f"mode '{mode}' is not supported")
    scales = [float(s) for s in np.asarray(scales).reshape(-1)]
    if mode == "nearest" and any(s < 1 for s in scales) and any(s > 1 for s in scales):
        raise NodeError("nearest resize that up- and down-samples at once is not supported")
    nearest = "ceil" if any(s < 1 for s in scales) else "floor"
    return _resize_common(c, x, scales, None, "linear" if mode == "bilinear" else mode, "asymmetric", nearest)


@converter("Upsample")
def _upsample(c: Ctx):
    a = c.attrs(mode="nearest", scales=None)
    scales = a["scales"] if a["scales"] is not None else c.const(1, "scales")
    return _legacy_resize(c, c.need(0, "X"), scales, a["mode"])


@converter("Resize")
def _resize(c: Ctx):
    x = c.need(0, "X")
    if c.opset < 11:
        a = c.attrs(mode="nearest")
        return _legacy_resize(c, x, c.const(1, "scales"), a["mode"])
    a = c.attrs(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, antialias=0, axes=None,
                keep_aspect_ratio_policy="stretch")
    if a["mode"] not in ("nearest", "linear"):
        raise NodeError(f"mode '{a['mode']}' is not supported (nearest and linear are)")
    if a["coordinate_transformation_mode"] == "tf_crop_and_resize":
        raise NodeError("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
    if a["mode"] == "linear" and (a["exclude_outside"] or a["antialias"]):
        raise NodeError("linear resize with exclude_outside or antialias is not supported")
    if a["keep_aspect_ratio_policy"] != "stretch":
        raise NodeError(f"keep_aspect_ratio_policy '{a['keep_aspect_ratio_policy']}' is not supported")
    scales = c.const(2, "scales")
    sizes = c.const(3, "sizes")
    if scales is not None and np.asarray(scales).size == 0:
        scales = None
    if sizes is not None and np.asarray(sizes).size == 0:
        sizes = None
    if (scales is None) == (sizes is None):
        raise NodeError("exactly one of scales and sizes must be given")
    vals = list(np.asarray(scales if sizes is None else sizes).reshape(-1))
    if a["axes"] is not None:
        full = [1.0] * x.type.rank if sizes is None else list(x.type.shape)
        for ax, v in zip(a["axes"], vals):
            full[norm_axis(ax, x.type.rank)] = v
        vals = full
    if sizes is None:
        return _resize_common(c, x, vals, None, a["mode"], a["coordinate_transformation_mode"], a["nearest_mode"])
    return _resize_common(c, x, None, [int(v) for v in vals], a["mode"], a["coordinate_transformation_mode"],
                          a["nearest_mode"])
