"""Channel-blocked (NCHWc) lowering for convolutional networks on the CPU.

Between convolutions, a 4-d activation ``x[N, C, H, W]`` lives as ``xb[N, C/c, H, W, c]`` (``c`` = 32, 16 or
8 channels: two or one AVX-512 vectors, one AVX2 vector): a convolution then vectorizes over output channels and reads one input
value per multiply-add as a broadcast, a depthwise convolution vectorizes over channels with unit-stride loads,
and both write whole vectors. Weights are packed into the matching layout at compile time.

``plan`` decides, in one forward walk over the graph, which values are kept blocked: every eligible
convolution's result, and the result of any layout-agnostic op (elementwise activations, residual adds,
per-channel scales, max pooling, global average pooling, channel concatenation) whose operands are blocked.
The plain NCHW form is produced on demand, once, where an op that is not layout-aware reads a blocked value
(the model's outputs, a flatten before a classifier, a resize...). The IR itself never changes: this is a
lowering decision, and every lowered op still computes exactly what its reference computes.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.registry import has_trait, schema
from .lowering import LAYOUT_AGNOSTIC, RULES



def _blockable(opname: str, arity: int) -> bool:
    """Whether ``opname`` runs on the blocked form as it is: an elementwise op (the registry's trait) of
    ``arity`` operands whose lowering rule is layout-agnostic (``lowering.LAYOUT_AGNOSTIC``)."""
    return opname in LAYOUT_AGNOSTIC and has_trait(opname, "elementwise") and schema(opname).operands == (arity, arity)


DEFAULT_BLOCKS = (32, 16, 8)


def block_of(channels: int, blocks=DEFAULT_BLOCKS) -> int | None:
    """Channels per block for a tensor with ``channels`` channels: two AVX-512 vectors of f32 where possible
    (a conv's register tile then holds 2 vectors x up to 8 output columns, 7 on 7x7 maps: measured 12% faster
    on ResNet-18 and 8% on MobileNetV2 than one vector), else one, else an AVX2 vector."""
    for c in blocks:
        if channels % c == 0:
            return c
    return None


def _f32_4d(v) -> bool:
    return v.type.rank == 4 and v.type.dtype == dt.f32 and v.type.quant is None


def conv_kind(op, blocks=DEFAULT_BLOCKS) -> str | None:
    """"dense" or "depthwise" for a conv2d that the blocked lowering implements, else None."""
    if op.opname not in ("conv2d", "conv_transpose2d") or not _f32_4d(op.result) or not _f32_4d(op.operands[0]):
        return None
    w = op.operands[1]
    if not w.is_const or (len(op.operands) > 2 and not op.operands[2].is_const):
        return None
    if op.opname == "conv_transpose2d":
        return "transposed" if op.attrs["groups"] == 1 and block_of(w.type.shape[1], blocks) and transposed_as_conv(op) \
            else None
    o, ci_per_group = w.type.shape[:2]
    c = op.operands[0].type.shape[1]
    if block_of(o, blocks) is None:
        return None
    if op.attrs["groups"] == 1:
        return "dense"
    if op.attrs["groups"] == c == o and ci_per_group == 1:
        return "depthwise"
    return None


def _per_channel(v, channels: int) -> bool:
    """A value that broadcasts against [N, C, H, W] only along channels: shape [1, C, 1, 1] or [C, 1, 1]."""
    s = tuple(v.type.shape)
    return s in ((1, channels, 1, 1), (channels, 1, 1))


def _scalar_like(v) -> bool:
    return all(d == 1 for d in v.type.shape)


def plan(graph, blocks=DEFAULT_BLOCKS, given: dict | None = None) -> dict[int, int]:
    """id(value) -> channels per block, for every value the lowering keeps in the blocked layout (``given``:
    graph inputs that arrive blocked, id -> channels per block)."""
    blocked: dict[int, int] = dict(given or {})
    for op in graph.ops:
        if len(op.results) != 1 or not _f32_4d(op.result):
            continue
        r = op.result
        cb = block_of(r.type.shape[1], blocks)
        if cb is None:
            continue
        ins = op.operands
        if conv_kind(op, blocks):
            blocked[id(r)] = cb
        elif _blockable(op.opname, 1) and id(ins[0]) in blocked:
            blocked[id(r)] = cb
        elif _blockable(op.opname, 2):
            a, b = ins
            ok = []
            for x, y in ((a, b), (b, a)):
                if id(x) in blocked and tuple(x.type.shape) == tuple(r.type.shape):
                    ok.append(id(y) in blocked and tuple(y.type.shape) == tuple(r.type.shape)
                              or _per_channel(y, r.type.shape[1]) or _scalar_like(y))
            if any(ok):
                blocked[id(r)] = cb
        elif op.opname == "max_pool2d" and id(ins[0]) in blocked and not op.attrs["ceil_mode"]:
            blocked[id(r)] = cb
        elif op.opname in ("global_avg_pool", "global_max_pool") and id(ins[0]) in blocked:
            blocked[id(r)] = cb
        elif op.opname == "reduce_mean" and id(ins[0]) in blocked and op.attrs.get("keepdims", 1) and \
                sorted(a % 4 for a in op.attrs.get("axes") or ()) == [2, 3]:
            blocked[id(r)] = cb
        elif op.opname == "concat" and op.attrs["axis"] % 4 == 1 and all(id(x) in blocked for x in ins) and \
                all(x.type.shape[1] % cb == 0 for x in ins):  # an operand blocked otherwise is re-blocked
            blocked[id(r)] = cb
    return blocked


# -- layout transforms ------------------------------------------------------------------------------------------------
def to_blocked(L, x, shape, cb: int):
    n, c, h, w = shape

    def fn(X):
        return L.te.compute((n, c // cb, h, w, cb), lambda i, co, y, z, ci: X[i, co * cb + ci, y, z], name="blocked")
    return L.te_(fn, x, name="lowbit_to_nchwc")


def from_blocked(L, xb, shape, cb: int):
    n, c, h, w = shape

    def fn(X):
        return L.te.compute((n, c, h, w), lambda i, k, y, z: X[i, k // cb, y, z, k % cb], name="unblocked")
    return L.te_(fn, xb, name="lowbit_from_nchwc")


def block_const(arr: np.ndarray, cb: int) -> np.ndarray:
    """A per-channel constant ([1, C, 1, 1] or [C, 1, 1]) as [1, C/cb, 1, 1, cb]."""
    c = arr.size
    return np.ascontiguousarray(arr.reshape(1, c // cb, 1, 1, cb))


# -- blocked ops -------------------------------------------------------------------------------------------------------
def transposed_as_conv(op):
    """A conv_transpose2d as (OIHW weight, pads, input upsampling) of the stride-1 conv2d over the zero-upsampled
    input that computes it, or None where that conv would need negative padding (a crop)."""
    a = op.attrs
    w = op.operands[1].const_value
    _, _, kh, kw = w.shape
    (pt, pl, pb, pr), (dh, dw), (oph, opw) = a["pads"], a["dilations"], a["output_padding"]
    pads = (dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + oph, dw * (kw - 1) - pr + opw)
    if min(pads) < 0:
        return None
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), pads, tuple(a["strides"])


def conv_spec(op):
    """(OIHW weight, pads, strides, dilations, input upsampling) of a conv2d or (as a conv) conv_transpose2d."""
    a = op.attrs
    if op.opname == "conv_transpose2d":
        w, pads, up = transposed_as_conv(op)
        return w, pads, (1, 1), tuple(a["dilations"]), up
    return op.operands[1].const_value, tuple(a["pads"]), tuple(a["strides"]), \
        tuple(a["dilations"]), (1, 1)


def conv2d(L, op, x, x_cb: int | None, out_cb: int | None):
    """conv2d (dense or depthwise) or conv_transpose2d (dense) reading ``x`` blocked with ``x_cb`` channels per
    block or plain NCHW (``x_cb`` None), writing blocked with ``out_cb`` channels per block or NCHW (None)."""
    weight, (pt, pl, pb, pr), (sh, sw), (dh, dw), (uh, uw) = conv_spec(op)
    n, c, h, wd = op.operands[0].type.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = op.result.type.shape
    te, tir = L.te, L.tir
    dtype = op.result.type.dtype.np_dtype
    weight = weight.astype(dtype)
    zero = tir.const(0, dtype.name)
    kind = "depthwise" if op.opname == "conv2d" and conv_kind(op) == "depthwise" else "dense"
    hu, wu = (h - 1) * uh + 1, (wd - 1) * uw + 1  # after zero upsampling (transposed convs)

    def pad(X):
        if not any((pt, pl, pb, pr)) and (uh, uw) == (1, 1):
            return X

        def at(y, z):
            yy, zz = y - pt, z - pl
            cond = tir.all(yy >= 0, yy < hu, zz >= 0, zz < wu)
            if (uh, uw) != (1, 1):
                cond = tir.all(cond, tir.floormod(yy, uh) == 0, tir.floormod(zz, uw) == 0)
            return cond, tir.floordiv(yy, uh) if uh > 1 else yy, tir.floordiv(zz, uw) if uw > 1 else zz

        shape = (hu + pt + pb, wu + pl + pr)
        if x_cb is None:
            def body(i, j, y, z):
                cond, yy, zz = at(y, z)
                return tir.if_then_else(cond, X[i, j, yy, zz], zero)
            return te.compute((n, c) + shape, body, name="pad_temp")

        def body_b(i, j, y, z, k):
            cond, yy, zz = at(y, z)
            return tir.if_then_else(cond, X[i, j, yy, zz, k], zero)
        return te.compute((n, c // x_cb) + shape + (x_cb,), body_b, name="pad_temp")

    if kind == "depthwise":
        # [C/cb, KH, KW, cb]: one vector of taps per channel block
        wp = np.ascontiguousarray(weight.reshape(o // out_cb, out_cb, kh, kw).transpose(0, 2, 3, 1))

        def fn(X, W):
            P = pad(X)
            ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
            return te.compute((n, o // out_cb, oh, ow, out_cb), lambda i, f, y, z, k: te.sum(
                P[i, f, y * sh + ry * dh, z * sw + rx * dw, k] * W[f, ry, rx, k], axis=[ry, rx]),
                name="depthwise_conv2d_nchwc")
        return L.te_(fn, x, L.const(wp), name="lowbit_dwconv_nchwc")

    icb = x_cb or c
    ocb = out_cb or o
    # [O/ocb, C/icb, KH, KW, icb, ocb]: the inner kernel reads one contiguous vector of output channels
    wp = np.ascontiguousarray(weight.reshape(o // ocb, ocb, c // icb, icb, kh, kw).transpose(0, 2, 4, 5, 3, 1))

    def fn(X, W):
        P = pad(X)
        rco, ry, rx = te.reduce_axis((0, c // icb), "rco"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        rci = te.reduce_axis((0, icb), "rci")

        def load(i, y, z):
            if x_cb is None:
                return P[i, rci, y, z]
            return P[i, rco, y, z, rci]
        axes = [rco, ry, rx, rci] if x_cb is not None else [ry, rx, rci]
        wo = (lambda f, k: W[f, rco, ry, rx, rci, k]) if x_cb is not None else (lambda f, k: W[f, 0, ry, rx, rci, k])
        if out_cb is None:
            return te.compute((n, o, oh, ow), lambda i, f, y, z: te.sum(
                load(i, y * sh + ry * dh, z * sw + rx * dw) * wo(0, f), axis=axes), name="conv2d_nchw")
        return te.compute((n, o // out_cb, oh, ow, out_cb), lambda i, f, y, z, k: te.sum(
            load(i, y * sh + ry * dh, z * sw + rx * dw) * wo(f, k), axis=axes), name="conv2d_nchwc")
    return L.te_(fn, x, L.const(wp), name="lowbit_conv2d_nchwc" if out_cb else "lowbit_conv2d")


def max_pool2d(L, op, xb, cb: int):
    a = op.attrs
    (pt, pl, pb, pr), (sh, sw), (dh, dw), (kh, kw) = a["pads"], a["strides"], a["dilations"], a["kernel"]
    n, c, h, wd = op.operands[0].type.shape
    _, _, oh, ow = op.result.type.shape
    te, tir = L.te, L.tir
    lowest = tir.min_value("float32")

    def fn(X):
        # padding read in place (the condition is the same for a whole channel vector): no padded copy
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

        def window(i, j, y, z, k):
            yy, zz = y * sh + ry * dh - pt, z * sw + rx * dw - pl
            if not any((pt, pl, pb, pr)):
                return X[i, j, yy, zz, k]
            inside = tir.all(yy >= 0, yy < h, zz >= 0, zz < wd)
            return tir.if_then_else(inside, X[i, j, tir.max(tir.min(yy, h - 1), 0), tir.max(tir.min(zz, wd - 1), 0), k],
                                    lowest)
        return te.compute((n, c // cb, oh, ow, cb), lambda i, j, y, z, k: te.max(window(i, j, y, z, k), axis=[ry, rx]),
                          name="max_pool_nchwc")
    return L.te_(fn, xb, name="lowbit_max_pool_nchwc")


# -- lowering an op to the blocked layout ----------------------------------------------------------------------------
def lower_blocked(L, op, cb: int, plan: dict, get_blocked):
    """Lower ``op`` to the channel-blocked layout (see ``layout.py``); returns the blocked Relax expr."""
    get = L.get
    ins = op.operands
    name = op.opname
    if name in ("conv2d", "conv_transpose2d"):
        x = ins[0]
        if conv_kind(op) == "depthwise":
            xb, xcb = get_blocked(x, cb), cb
        elif id(x) in plan:
            xb, xcb = get_blocked(x, plan[id(x)]), plan[id(x)]
        else:
            xb, xcb = get(x), None
        y = conv2d(L, op, xb, xcb, cb)
        if len(ins) > 2:
            y = L.R.add(L.emit(y), L.const(block_const(ins[2].const_value.astype(np.float32), cb)))
        return y
    if _blockable(name, 1):
        return RULES[name](L, op, get_blocked(ins[0], cb))
    if _blockable(name, 2):
        args = []
        for v in ins:
            if id(v) in plan and tuple(v.type.shape) == tuple(op.result.type.shape):
                args.append(get_blocked(v, cb))
            elif all(d == 1 for d in v.type.shape):
                args.append(L.R.reshape(get(v), [1] * 5) if v.type.rank > 0 else get(v))
            elif v.is_const:
                args.append(L.const(block_const(v.const_value, cb)))
            else:  # [1, C, 1, 1] or [C, 1, 1]: the same elements in blocked order
                args.append(L.R.reshape(get(v), [1, v.type.shape[-3] // cb, 1, 1, cb]))
        return RULES[name](L, op, *args)
    if name == "max_pool2d":
        return max_pool2d(L, op, get_blocked(ins[0], cb), cb)
    if name in ("global_avg_pool", "reduce_mean"):
        return L.R.mean(get_blocked(ins[0], cb), axis=[2, 3], keepdims=True)
    if name == "global_max_pool":
        return L.R.max(get_blocked(ins[0], cb), axis=[2, 3], keepdims=True)
    if name == "concat":
        return L.R.concat([get_blocked(v, cb) for v in ins], axis=1)
    raise AssertionError(f"no blocked lowering for {name}")
