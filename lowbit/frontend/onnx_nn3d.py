"""3-D convolution, transposed convolution and pooling (NCDHW) as exact compositions of lowbit's 2-D ops.

The depth axis is taken apart with strided slices; height and width stay with the 2-D op:

- ``conv3d``: the input padded in depth (zeros), as [N, Dp, C, H, W]; for each depth tap j the slice of the
  output depths' rows (start j * dilation, step stride), the kd slices side by side as channels (group-major:
  group, tap, channel) of one ``conv2d`` over the N * Do batch whose weight is W[o, c, j, :, :] laid out the same
  way. Every product and sum is one of the 3-D convolution's.
- ``conv_transpose3d``: one ``conv_transpose2d`` over the N * D batch whose output channels are (channel, depth
  tap); tap j of input depth d lands on output depth d * stride + j * dilation - pad_begin, so each tap's rows are
  spread by the stride (zeros between), shifted into place and the taps summed; the bias is added once at the end.
- ``max_pool3d``: the input padded in depth with the lowest value, the maximum over the depth taps' slices, then
  ``max_pool2d`` over height and width (a maximum of maxima is the maximum of the window).
- ``avg_pool3d``: window sums axis by axis (the zero-padded input's strided slices added per tap), divided by the
  window's count: the product of the per-axis counts of positions inside the input (``count_include_pad=0``) or
  inside input and explicit pads (``count_include_pad=1``; ceil_mode's extra windows past the end pads never
  count), as onnxruntime divides.

Attributes arrive in ONNX order (``pads`` = [d_begin, h_begin, w_begin, d_end, h_end, w_end]); ``onnx_nn``'s
converters read and check them and call these.
"""
from __future__ import annotations

import numpy as np

from ..ir.graph import Value
from ..ir.registry import conv_out
from .onnx_ctx import Ctx, NodeError, reshape_to

_DHW_LAST = (0, 2, 1, 3, 4)  # [N, C, D, H, W] <-> [N, D, C, H, W]


def _pad_axis(c: Ctx, x: Value, axis: int, begin: int, end: int, value: float = 0.0) -> Value:
    if begin == 0 and end == 0:
        return x
    r = x.type.rank
    pads = [0] * 2 * r
    pads[axis], pads[axis + r] = begin, end
    return c.op("pad", [x], {"pads": tuple(pads), "mode": "constant", "value": float(value)})


def _strided(c: Ctx, x: Value, axis: int, start: int, step: int, count: int) -> Value:
    """``count`` elements of ``axis`` from ``start`` every ``step``."""
    if start == 0 and step == 1 and count == x.type.shape[axis]:
        return x
    return c.op("slice", [x], {"starts": (start,), "ends": (start + (count - 1) * step + 1,), "axes": (axis,),
                               "steps": (step,)})


def _pads_hw(pads) -> tuple:
    """The height/width part of 3-D pads as the 2-D ops' (top, left, bottom, right)."""
    return (pads[1], pads[2], pads[4], pads[5])


def _out_len(size, k, s, pb, pe, d, ceil_mode=False) -> int:
    o = conv_out(size, k, s, pb, pe, d, ceil_mode)
    if o <= 0:
        raise NodeError(f"the window ({k} taps, dilation {d}) is larger than the padded input ({size} + {pb} + {pe})")
    return o


def _sum(c: Ctx, vals: list) -> Value:
    acc = vals[0]
    for v in vals[1:]:
        acc = c.op("add", [acc, v])
    return acc


def conv3d(c: Ctx, x: Value, w: Value, b: Value | None, strides, pads, dilations, groups: int) -> Value:
    n, cin, d, h, wd = x.type.shape
    if w.type.rank != 5:
        raise NodeError(f"weight shape {w.type.shape} does not match a 3-D convolution")
    o, cg, kd, kh, kw = w.type.shape
    if groups < 1 or cin != cg * groups or o % groups:
        raise NodeError(f"channels do not match: input {x.type.shape}, weight {w.type.shape}, group {groups}")
    sd, dd = strides[0], dilations[0]
    do = _out_len(d, kd, sd, pads[0], pads[3], dd)
    xt = c.op("transpose", [_pad_axis(c, x, 2, pads[0], pads[3])], {"perm": _DHW_LAST})  # [N, Dp, C, H, W]
    taps = [_strided(c, xt, 1, j * dd, sd, do) for j in range(kd)]  # each [N, Do, C, H, W]
    if kd == 1:
        xs = reshape_to(c, taps[0], (n * do, cin, h, wd))
    elif groups == 1:
        xs = c.op("concat", [reshape_to(c, t, (n * do, cin, h, wd)) for t in taps], {"axis": 1})
    else:  # channels (group, tap, channel of the group): conv2d's groups read each group's taps together
        xs = c.op("concat", [reshape_to(c, t, (n * do, groups, 1, cg, h, wd)) for t in taps], {"axis": 2})
        xs = reshape_to(c, xs, (n * do, groups * kd * cg, h, wd))
    wt = reshape_to(c, c.op("transpose", [w], {"perm": _DHW_LAST}), (o, kd * cg, kh, kw))  # [O, (tap, c), kh, kw]
    y = c.op("conv2d", [xs, wt] + ([b] if b is not None else []), {
        "strides": tuple(strides[1:]), "pads": _pads_hw(pads), "dilations": tuple(dilations[1:]), "groups": groups})
    _, _, ho, wo = y.type.shape
    return c.op("transpose", [reshape_to(c, y, (n, do, o, ho, wo))], {"perm": _DHW_LAST})


def conv_transpose3d(c: Ctx, x: Value, w: Value, b: Value | None, strides, pads, dilations, groups: int,
                     output_padding) -> Value:
    n, cin, d, h, wd = x.type.shape
    if w.type.rank != 5:
        raise NodeError(f"weight shape {w.type.shape} does not match a 3-D transposed convolution")
    ci, cog, kd, kh, kw = w.type.shape
    if groups < 1 or ci != cin or cin % groups:
        raise NodeError(f"channels do not match: input {x.type.shape}, weight {w.type.shape}, group {groups}")
    co = cog * groups
    if b is not None and b.type.shape != (co,):
        raise NodeError(f"bias shape {b.type.shape} should be ({co},)")
    sd, dd, pb, pe = strides[0], dilations[0], pads[0], pads[3]
    do = sd * (d - 1) + output_padding[0] + (kd - 1) * dd + 1 - pb - pe
    if do <= 0:
        raise NodeError(f"pads {list(pads)} leave no output depth")
    xs = reshape_to(c, c.op("transpose", [x], {"perm": _DHW_LAST}), (n * d, cin, h, wd))
    # output channels (group, channel, tap): W[ci, oc, j] at oc * kd + j of its group, as the reshape lays it out
    t = c.op("conv_transpose2d", [xs, reshape_to(c, w, (cin, cog * kd, kh, kw))], {
        "strides": tuple(strides[1:]), "pads": _pads_hw(pads), "dilations": tuple(dilations[1:]), "groups": groups,
        "output_padding": tuple(output_padding[1:])})
    _, _, ho, wo = t.type.shape
    m = co * ho * wo
    t = reshape_to(c, t, (n, d, co, kd, ho * wo))
    parts = []
    for j in range(kd):
        tj = c.op("slice", [t], {"starts": (j,), "ends": (j + 1,), "axes": (3,), "steps": (1,)})
        u = _pad_axis(c, reshape_to(c, tj, (n, d, 1, m)), 2, 0, sd - 1)  # zeros between input depths
        u = reshape_to(c, u, (n, d * sd, m))  # input depth i at row i * stride
        off = j * dd - pb  # where row 0 lands in the output
        start, begin = max(0, -off), max(0, off)
        length = min(d * sd - start, do - begin)
        if length <= 0:
            continue  # this tap lands wholly in the cropped pads
        u = _strided(c, u, 1, start, 1, length)
        parts.append(_pad_axis(c, u, 1, begin, do - begin - length))
    if parts:
        y = _sum(c, parts)
    else:
        y = c.const_value(np.zeros((n, do, m), x.type.dtype.np_dtype))
    y = c.op("transpose", [reshape_to(c, y, (n, do, co, ho, wo))], {"perm": _DHW_LAST})
    return y if b is None else c.op("add", [y, reshape_to(c, b, (1, co, 1, 1, 1))])


def max_pool3d(c: Ctx, x: Value, kernel, strides, pads, dilations, ceil_mode: bool) -> Value:
    n, ch, d, h, wd = x.type.shape
    kd, sd, dd = kernel[0], strides[0], dilations[0]
    do = _out_len(d, kd, sd, pads[0], pads[3], dd, ceil_mode)
    extra = max(0, (do - 1) * sd + (kd - 1) * dd + 1 - (d + pads[0] + pads[3]))  # ceil_mode's last windows
    dtype = x.type.dtype
    lowest = -np.inf if dtype.is_float else float(dtype.iinfo()[0])
    xp = _pad_axis(c, x, 2, pads[0], pads[3] + extra, lowest)
    taps = [_strided(c, xp, 2, j * dd, sd, do) for j in range(kd)]
    m = taps[0]
    for t in taps[1:]:
        m = c.op("max", [m, t])
    y = c.op("max_pool2d", [reshape_to(c, m, (n, ch * do, h, wd))], {
        "kernel": tuple(kernel[1:]), "strides": tuple(strides[1:]), "pads": _pads_hw(pads),
        "dilations": tuple(dilations[1:]), "ceil_mode": bool(ceil_mode)})
    _, _, ho, wo = y.type.shape
    return reshape_to(c, y, (n, ch, do, ho, wo))


def _counts(size, k, s, pb, pe, dl, out, include_pad) -> np.ndarray:
    """Per output position of one axis, how many of its window's taps onnxruntime divides by."""
    lo, hi = (-pb, size + pe) if include_pad else (0, size)
    pos = np.arange(out)[:, None] * s - pb + np.arange(k)[None, :] * dl
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def avg_pool3d(c: Ctx, x: Value, kernel, strides, pads, dilations, ceil_mode: bool, count_include_pad: bool) -> Value:
    if not x.type.dtype.is_float:
        raise NodeError(f"AveragePool of {x.type.dtype.name} is not supported (float types are)")
    sizes = x.type.shape[2:]
    outs, counts = [], []
    y = x
    for i, (size, k, s, dl) in enumerate(zip(sizes, kernel, strides, dilations)):
        pb, pe = pads[i], pads[i + 3]
        out = _out_len(size, k, s, pb, pe, dl, ceil_mode)
        extra = max(0, (out - 1) * s + (k - 1) * dl + 1 - (size + pb + pe))
        yp = _pad_axis(c, y, 2 + i, pb, pe + extra)
        y = _sum(c, [_strided(c, yp, 2 + i, j * dl, s, out) for j in range(k)])
        outs.append(out)
        counts.append(_counts(size, k, s, pb, pe, dl, out, count_include_pad))
    count = np.einsum("i,j,k->ijk", *counts).reshape((1, 1) + tuple(outs))
    return c.op("div", [y, c.const_value(count.astype(x.type.dtype.np_dtype))])
