"""Reference semantics: one numpy implementation per registered op.

This is the ground truth that frontends, passes and kernels are tested against, and it is itself tested
against onnxruntime. Integer and quantized ops are bit-exact; float ops compute in the operand dtype
(float32 accumulation for f32, as onnxruntime does).

>>> import numpy as np, lowbit
>>> g = lowbit.parse('graph @g(%x: tensor<3xf32>) { %0 = relu(%x) : tensor<3xf32>  return %0 as "y" }')
>>> lowbit.interpret(g, {"x": np.array([-1, 0, 2], np.float32)})["y"]
array([0., 0., 2.], dtype=float32)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import LowbitError
from . import dtypes as dt
from .graph import Graph, Op
from .registry import conv_out, slice_dim
from ..quant.scheme import (codebook_levels, dequantize_array, dynamic_rescale, dynamic_u8_params,
                            dynamic_u8_row_params, group_shape, grouped_dynamic_rescale, quantize_array,
                            requantize_accumulator)
from .types import QuantParams, TensorType

_IMPLS: dict[str, Callable] = {}


def impl(*names):
    def deco(fn):
        for n in names:
            _IMPLS[n] = fn
        return fn
    return deco


def implemented_ops() -> list[str]:
    return sorted(_IMPLS)


def interpret(graph: Graph, inputs: dict, *, keep_all: bool = False) -> dict:
    """Run ``graph`` on numpy ``inputs`` (keyed by input name); return outputs keyed by output name.

    With ``keep_all`` the result also holds every intermediate value, keyed ``"%<op index>.<result>"``.
    """
    env: dict[int, np.ndarray] = {}
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    extra = sorted(set(inputs) - {v.name for v in graph.inputs})
    if missing or extra:
        sig = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
        what = (f"missing input(s) {', '.join(missing)}" if missing else f"unknown input(s) {', '.join(extra)}")
        raise LowbitError(f"{what}; the graph takes ({sig})")
    for v in graph.inputs:
        a = np.asarray(inputs[v.name])
        if a.shape != v.type.shape or a.dtype != v.type.dtype.np_dtype:
            raise LowbitError(f"input '{v.name}' is {a.dtype}{list(a.shape)}, expected {v.type}")
        env[id(v)] = a
    last_use = {}
    for i, op in enumerate(graph.ops):
        for v in op.operands:
            last_use[id(v)] = i
    outputs = {id(v) for v in graph.outputs}
    trace = {}
    for i, op in enumerate(graph.ops):
        for j, (r, a) in enumerate(zip(op.results, evaluate_op(op, [env[id(v)] for v in op.operands]))):
            env[id(r)] = a
            if keep_all:
                trace[f"%{i}.{j}"] = a
        if not keep_all:
            for v in op.operands:
                if last_use.get(id(v)) == i and id(v) not in outputs and v.producer is not None:
                    env.pop(id(v), None)
    out = {n: env[id(v)] for n, v in zip(graph.output_names, graph.outputs)}
    out.update(trace)
    return out


def evaluate_op(op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
    """Run one op's reference implementation on numpy operands; results are cast to the result types."""
    try:
        fn = _IMPLS[op.opname]
    except KeyError:
        raise LowbitError(f"{op.describe()}: no reference implementation") from None
    res = fn(op, *args)
    if not isinstance(res, (list, tuple)):
        res = [res]
    out = []
    for r, a in zip(op.results, res, strict=True):
        a = np.asarray(a)
        if a.shape != r.type.shape:
            raise AssertionError(f"{op.describe()}: reference produced shape {a.shape}, type says {r.type}")
        out.append(a.astype(r.type.dtype.np_dtype, copy=False))
    return out


# -- constants, elementwise ---------------------------------------------------------------------------------
impl("const")(lambda op: op.attrs["value"])
impl("identity", "dropout")(lambda op, x: x.copy())
impl("add")(lambda op, a, b: a + b)
impl("sub")(lambda op, a, b: a - b)
impl("mul")(lambda op, a, b: a * b)
impl("max")(lambda op, a, b: np.maximum(a, b))
impl("min")(lambda op, a, b: np.minimum(a, b))
impl("equal")(lambda op, a, b: a == b)
impl("less")(lambda op, a, b: a < b)
impl("greater")(lambda op, a, b: a > b)
impl("less_equal")(lambda op, a, b: a <= b)
impl("greater_equal")(lambda op, a, b: a >= b)
impl("and")(lambda op, a, b: a & b)
impl("or")(lambda op, a, b: a | b)
impl("xor")(lambda op, a, b: a ^ b)
impl("not")(lambda op, a: ~a)
impl("neg")(lambda op, a: -a)
impl("abs")(lambda op, a: np.abs(a))
impl("sign")(lambda op, a: np.sign(a))
impl("relu")(lambda op, a: np.maximum(a, 0).astype(a.dtype))
impl("sigmoid")(lambda op, a: (1 / (1 + np.exp(-a.astype(np.float64)))).astype(a.dtype))
impl("tanh")(lambda op, a: np.tanh(a))
impl("exp")(lambda op, a: np.exp(a))
impl("log")(lambda op, a: np.log(a))
impl("sqrt")(lambda op, a: np.sqrt(a))
impl("reciprocal")(lambda op, a: (1 / a).astype(a.dtype))
impl("floor")(lambda op, a: np.floor(a))
impl("ceil")(lambda op, a: np.ceil(a))
impl("round")(lambda op, a: np.rint(a))  # ONNX Round: half to even, as np.rint
impl("sin")(lambda op, a: np.sin(a))
impl("cos")(lambda op, a: np.cos(a))
impl("softplus")(lambda op, a: np.logaddexp(0, a.astype(np.float64)).astype(a.dtype))
impl("where")(lambda op, c, a, b: np.where(c, a, b))
impl("prelu")(lambda op, x, s: np.where(x < 0, x * s, x))
impl("leaky_relu")(lambda op, x: np.where(x < 0, x * np.asarray(op.attrs["alpha"], x.dtype), x))
impl("elu")(lambda op, x: np.where(x < 0, op.attrs["alpha"] * np.expm1(x.astype(np.float64)), x).astype(x.dtype))
impl("hard_sigmoid")(lambda op, x: np.clip(x * np.float32(op.attrs["alpha"]) + np.float32(op.attrs["beta"]), 0, 1)
                     .astype(x.dtype))
impl("hard_swish")(lambda op, x: (x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)).astype(x.dtype))

_erf = np.frompyfunc(math.erf, 1, 1)


@impl("erf")
def _erf_impl(op, x):
    return _erf(x.astype(np.float64)).astype(np.float64).astype(x.dtype)


@impl("gelu")
def _gelu(op, x):
    x64 = x.astype(np.float64)
    if op.attrs["approximate"] == "tanh":
        y = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        y = 0.5 * x64 * (1 + _erf(x64 / math.sqrt(2)).astype(np.float64))
    return y.astype(x.dtype)


@impl("div")
def _div(op, a, b):
    if np.issubdtype(a.dtype, np.integer):
        if np.any(b == 0):
            raise LowbitError(f"{op.describe()}: integer division by zero")
        q = a // b
        return q + ((a % b != 0) & ((a < 0) != (b < 0)))  # truncate toward zero, as C does
    return a / b


@impl("pow")
def _pow(op, a, b):
    return np.power(a, b)


@impl("clip")
def _clip(op, x):
    lo, hi = op.attrs["min"], op.attrs["max"]
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        lo = info.min if lo == float("-inf") else int(lo)
        hi = info.max if hi == float("inf") else int(hi)
    return np.minimum(np.maximum(x, np.asarray(lo).astype(x.dtype)), np.asarray(hi).astype(x.dtype))


_F8_MAX = {"f8e4m3": 448.0, "f8e5m2": 57344.0}


@impl("cast")
def _cast(op, x):
    to = op.attrs["to"]
    if to.name in _F8_MAX:  # saturate finite values, as ONNX Cast(saturate=1) does
        m = _F8_MAX[to.name]
        x = np.where(np.isfinite(x), np.clip(x.astype(np.float32), -m, m), x)
    if to == dt.boolean:
        return x != 0
    return x.astype(to.np_dtype)


# -- quantization -------------------------------------------------------------------------------------------
impl("quantize")(lambda op, x: quantize_array(x, op.result.type))
impl("dequantize")(lambda op, q: dequantize_array(q, op.operands[0].type))
impl("requantize")(lambda op, q: quantize_array(dequantize_array(q, op.operands[0].type), op.result.type))


# -- shape ops ----------------------------------------------------------------------------------------------
impl("reshape")(lambda op, x: x.reshape(op.attrs["shape"]))
impl("transpose")(lambda op, x: np.transpose(x, op.attrs["perm"]))
impl("concat")(lambda op, *xs: np.concatenate(xs, axis=op.attrs["axis"]))
impl("expand")(lambda op, x: np.broadcast_to(x, op.result.type.shape).copy())
impl("tile")(lambda op, x: np.tile(x, op.attrs["repeats"]))


@impl("split")
def _split(op, x):
    idx = np.cumsum(op.attrs["sizes"])[:-1]
    return np.split(x, idx, axis=op.attrs["axis"])


@impl("slice")
def _slice(op, x):
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(*(op.attrs[k] for k in ("starts", "ends", "axes", "steps"))):
        s, e, _ = slice_dim(x.shape[ax], s, e, st)
        index[ax] = slice(s, None if e < 0 else e, st)
    return x[tuple(index)]


@impl("gather")
def _gather(op, data, idx):
    axis = op.attrs["axis"] % data.ndim
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise LowbitError(f"{op.describe()}: index out of range [{-n}, {n}) on axis {axis}")
    return np.take(data, idx.astype(np.int64), axis=axis)


@impl("gather_elements")
def _gather_elements(op, data, idx):
    axis = op.attrs["axis"] % data.ndim
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise LowbitError(f"{op.describe()}: index out of range [{-n}, {n}) on axis {axis}")
    idx = idx.astype(np.int64)
    grid = list(np.ogrid[tuple(slice(0, d) for d in idx.shape)])  # indices may be smaller than data off-axis
    grid[axis] = np.where(idx < 0, idx + n, idx)
    return data[tuple(grid)]


@impl("pad")
def _pad(op, x):
    r = x.ndim
    pads = op.attrs["pads"]
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    x = x[crop]
    widths = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    mode = op.attrs["mode"]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(op.attrs["value"]).astype(x.dtype))
    return np.pad(x, widths, mode=mode)


def _resize_coords(out_len, in_len, scale, mode):
    """Input coordinate of every output index, in float32 arithmetic in onnxruntime's order of operations
    (a float64 computation rounds differently at exact halves, e.g. 4 / 1.6f)."""
    f = np.float32
    x = np.arange(out_len, dtype=f)
    scale = f(scale)
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return x * f(in_len - 1) / f(out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "pytorch_half_pixel":
        return (x + f(0.5)) / scale - f(0.5) if out_len > 1 else np.zeros_like(x)
    if mode == "half_pixel_symmetric":
        adjustment = f(out_len) / (scale * f(in_len))
        offset = f(in_len) / f(2) * (f(1) - adjustment)
        return offset + (x + f(0.5)) / scale - f(0.5)
    return (x + f(0.5)) / scale - f(0.5)  # half_pixel


@impl("resize")
def _resize(op, x):
    a = op.attrs
    y = x
    for ax, (out_len, scale) in enumerate(zip(a["sizes"], a["scales"])):
        in_len = x.shape[ax]
        if out_len == in_len and scale == 1.0:
            continue
        c = _resize_coords(out_len, in_len, scale, a["coordinate_transformation_mode"])
        if a["mode"] == "nearest":
            nm = a["nearest_mode"]
            if nm == "floor":
                i = np.floor(c)
            elif nm == "ceil":
                i = np.ceil(c)
            elif nm == "round_prefer_ceil":
                i = np.floor(c + np.float32(0.5))
            else:
                i = np.ceil(c - np.float32(0.5))
            y = np.take(y, np.clip(i, 0, in_len - 1).astype(np.int64), axis=ax)
        else:
            c = np.clip(c, 0, in_len - 1)
            lo = np.floor(c).astype(np.int64)
            hi = np.minimum(lo + 1, in_len - 1)
            w = (c - lo).reshape([-1 if d == ax else 1 for d in range(x.ndim)])
            y = (np.take(y, lo, axis=ax) * (1 - w) + np.take(y, hi, axis=ax) * w).astype(x.dtype)
    return y


# -- reductions and normalisation ---------------------------------------------------------------------------
def _axes(op, x):
    return tuple(a % x.ndim for a in op.attrs["axes"]) if op.attrs["axes"] else None


impl("reduce_mean")(lambda op, x: np.mean(x, axis=_axes(op, x), keepdims=op.attrs["keepdims"], dtype=x.dtype))
impl("reduce_sum")(lambda op, x: np.sum(x, axis=_axes(op, x), keepdims=op.attrs["keepdims"], dtype=x.dtype))
impl("reduce_prod")(lambda op, x: np.prod(x, axis=_axes(op, x), keepdims=op.attrs["keepdims"], dtype=x.dtype))
impl("reduce_max")(lambda op, x: np.max(x, axis=_axes(op, x), keepdims=op.attrs["keepdims"]))
impl("reduce_min")(lambda op, x: np.min(x, axis=_axes(op, x), keepdims=op.attrs["keepdims"]))


@impl("arg_max")
def _argmax(op, x):
    ax = op.attrs["axis"] % x.ndim
    if op.attrs["select_last_index"]:
        r = x.shape[ax] - 1 - np.argmax(np.flip(x, ax), axis=ax)
    else:
        r = np.argmax(x, axis=ax)
    return np.expand_dims(r, ax) if op.attrs["keepdims"] else r


@impl("softmax")
def _softmax(op, x):
    e = np.exp(x - np.max(x, axis=op.attrs["axis"], keepdims=True))
    return e / np.sum(e, axis=op.attrs["axis"], keepdims=True)


@impl("log_softmax")
def _log_softmax(op, x):
    s = x - np.max(x, axis=op.attrs["axis"], keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=op.attrs["axis"], keepdims=True))


@impl("layer_norm")
def _layer_norm(op, x, scale, bias=None):
    axes = tuple(range(op.attrs["axis"] % x.ndim, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    y = d / np.sqrt(var + np.float32(op.attrs["epsilon"])) * scale
    return y if bias is None else y + bias


@impl("batch_norm")
def _batch_norm(op, x, scale, bias, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (scale / np.sqrt(var + np.float32(op.attrs["epsilon"]))).reshape(shape)
    return (x - mean.reshape(shape)) * inv + bias.reshape(shape)


@impl("lrn")
def _lrn(op, x):
    a = op.attrs
    size = a["size"]
    sq = (x.astype(np.float64)) ** 2
    c = x.shape[1]
    lo_pad, hi_pad = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, [(0, 0), (lo_pad, hi_pad)] + [(0, 0)] * (x.ndim - 2))
    acc = sum(padded[:, i:i + c] for i in range(size))
    return (x / (a["bias"] + a["alpha"] / size * acc) ** a["beta"]).astype(x.dtype)


# -- linear algebra and convolution -------------------------------------------------------------------------
impl("matmul")(lambda op, a, b: np.matmul(a, b))


@impl("gemm")
def _gemm(op, a, b, c=None):
    at = op.attrs
    A = a.T if at["trans_a"] else a
    B = b.T if at["trans_b"] else b
    y = A @ B
    if at["alpha"] != 1.0:
        y = y * np.asarray(at["alpha"], y.dtype)
    if c is not None:
        y = y + (c if at["beta"] == 1.0 else c * np.asarray(at["beta"], c.dtype))
    return y


def pool_windows(x, kh, kw, sh, sw, dh, dw, oh, ow):
    """(N, C, kh, kw, oh, ow) strided view of every window of an already padded NCHW array."""
    n, c, h, w = x.shape
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, kh, kw, oh, ow), (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)


@impl("conv2d")
def _conv2d(op, x, w, b=None):
    a = op.attrs
    (pt, pl, pb, pr), (sh, sw), (dh, dw), g = a["pads"], a["strides"], a["dilations"], a["groups"]
    _, _, oh, ow = op.result.type.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
    n, cin = x.shape[:2]
    cout, cpg, kh, kw = w.shape
    cols = pool_windows(xp, kh, kw, sh, sw, dh, dw, oh, ow).reshape(n, g, cpg * kh * kw, oh * ow)
    wm = w.reshape(g, cout // g, cpg * kh * kw)
    y = np.matmul(wm[None], cols).reshape(n, cout, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def _centered(q: np.ndarray, t) -> np.ndarray:
    """q - zero_point as float64: products and sums of u8/i8 values stay exact integers in float64."""
    return q.astype(np.float64) - float(t.quant.zero_point[0])


@impl("qconv2d")
def _qconv2d(op, x, w, b=None):
    xt, wt = op.operands[0].type, op.operands[1].type
    acc = _conv2d(op, _centered(x, xt), w.astype(np.float64))  # padding with 0 = the real value 0
    if b is not None:
        acc = acc + b.astype(np.float64).reshape(1, -1, 1, 1)
    return requantize_accumulator(np.rint(acc).astype(np.int64), xt, wt, op.result.type, 1, op.attrs["activation"])


@impl("qmatmul")
def _qmatmul(op, x, w, b=None):
    xt, wt = op.operands[0].type, op.operands[1].type
    acc = np.matmul(_centered(x, xt), w.astype(np.float64))
    if b is not None:
        acc = acc + b.astype(np.float64)
    return requantize_accumulator(np.rint(acc).astype(np.int64), xt, wt, op.result.type, -1, op.attrs["activation"])


@impl("qmatmul_dynamic")
def _qmatmul_dynamic(op, x, w, b=None):
    sx, zx = dynamic_u8_row_params(x) if op.attrs["per_row"] else dynamic_u8_params(x)
    xq = np.clip(np.rint(x.astype(np.float32) / sx) + zx, 0, 255)
    q = op.operands[1].type.quant
    if q.group is not None:  # per group of K: exact sums, each rescaled and added in order
        grid = group_shape(q, w.shape)
        zw = q.zero_point_array().reshape(grid)
        sw = q.scale_array().reshape(grid)
        # a codebook's codes stand for its (integer) values, zero points 0
        wv = w.astype(np.float64) if q.codebook is None else codebook_levels(w, q)
        accs = np.stack([np.rint(np.matmul(xq[..., g * q.group:(g + 1) * q.group].astype(np.float64) - zx,
                                           wv[g * q.group:(g + 1) * q.group] - zw[g]))
                         for g in range(grid[0])])
        return grouped_dynamic_rescale(accs, sx, sw, b)
    acc = np.rint(np.matmul(xq.astype(np.float64) - zx, w.astype(np.float64)))
    return dynamic_rescale(acc, sx, q.scale_array(), b)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """f32 values rounded to bf16 (to nearest, ties to even), as f32."""
    import ml_dtypes

    return x.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _activate(op, y):
    return np.maximum(y, 0) if op.attrs["activation"] == "relu" else y


@impl("conv2d_bf16")
def _conv2d_bf16(op, x, w, b=None):  # bf16 x bf16 products are exact in f32; the sum is f32
    return _activate(op, _conv2d(op, bf16_round(x), w.astype(np.float32), b)).astype(np.float32)


@impl("matmul_bf16")
def _matmul_bf16(op, x, w, b=None):
    y = np.matmul(bf16_round(x), w.astype(np.float32))
    return _activate(op, y if b is None else y + b).astype(np.float32)


@impl("conv_transpose2d")
def _conv_transpose2d(op, x, w, b=None):
    a = op.attrs
    (pt, pl, pb, pr), (sh, sw), (dh, dw), g = a["pads"], a["strides"], a["dilations"], a["groups"]
    oph, opw = a["output_padding"]
    n, cin, h, wd = x.shape
    _, coutg, kh, kw = w.shape
    full_h = sh * (h - 1) + (kh - 1) * dh + 1 + oph
    full_w = sw * (wd - 1) + (kw - 1) * dw + 1 + opw
    y = np.zeros((n, g, coutg, full_h, full_w), dtype=x.dtype)
    xg = x.reshape(n, g, cin // g, h * wd)
    wg = w.reshape(g, cin // g, coutg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            contrib = np.matmul(wg[:, :, :, i, j].transpose(0, 2, 1)[None], xg).reshape(n, g, coutg, h, wd)
            y[:, :, :, i * dh:i * dh + sh * (h - 1) + 1:sh, j * dw:j * dw + sw * (wd - 1) + 1:sw] += contrib
    y = y.reshape(n, g * coutg, full_h, full_w)[:, :, pt:full_h - pb, pl:full_w - pr]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def pool_pad(op, x):
    a = op.attrs
    (pt, pl, pb, pr) = a["pads"]
    _, _, oh, ow = op.result.type.shape
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    dh, dw = a.get("dilations", (1, 1))
    # ceil_mode may need windows past the explicit end padding: extend with the fill value.
    eh = max(0, (oh - 1) * sh + (kh - 1) * dh + 1 - (x.shape[2] + pt + pb))
    ew = max(0, (ow - 1) * sw + (kw - 1) * dw + 1 - (x.shape[3] + pl + pr))
    return (pt, pl, pb, pr), (eh, ew), (kh, kw, sh, sw, dh, dw, oh, ow)


@impl("max_pool2d")
def _max_pool(op, x):
    (pt, pl, pb, pr), (eh, ew), geo = pool_pad(op, x)
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = np.pad(x, [(0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)], constant_values=lowest)
    return pool_windows(xp, *geo).max(axis=(2, 3))


@impl("avg_pool2d")
def _avg_pool(op, x):
    (pt, pl, pb, pr), (eh, ew), geo = pool_pad(op, x)
    xp = np.pad(x, [(0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)])
    total = pool_windows(xp, *geo).sum(axis=(2, 3), dtype=x.dtype)
    ones = np.ones((1, 1) + x.shape[2:], x.dtype)
    pad_val = 1 if op.attrs["count_include_pad"] else 0
    mask = np.pad(ones, [(0, 0), (0, 0), (pt, pb), (pl, pr)], constant_values=pad_val)
    mask = np.pad(mask, [(0, 0), (0, 0), (0, eh), (0, ew)])
    count = pool_windows(mask, *geo).sum(axis=(2, 3), dtype=x.dtype)
    return total / count


impl("global_avg_pool")(lambda op, x: np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype))
impl("global_max_pool")(lambda op, x: np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True))
