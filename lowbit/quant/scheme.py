"""The quantization scheme: the one place its arithmetic is written.

The reference interpreter, the passes, the ONNX exporter and every kernel call these functions, so they
agree bit for bit by construction (``tests/test_architecture.py`` checks with ``ast`` that requantization
multipliers, output clamps and bias-to-i32 arithmetic appear nowhere else):

- affine quantize / dequantize: ``q = saturate(round_half_even(x / scale) + zp)``, ``x = (q - zp) * scale``,
  the division in f32 as onnxruntime does it; the saturation range is the type's storage range;
- weights: symmetric i8 per output channel over the narrow range [-127, 127] (``symmetric_weights``);
- biases: i32 in units of ``input scale x weight scale`` (``bias_to_i32``); kernels fold the input's zero
  point into them (``folded_bias``);
- requantization of an exact i32 accumulator: ``saturate(round_half_even(f32(acc) * m) + zy)`` with one f32
  multiplier per output channel, ``m = f32(sx * sw) / sy`` (``requant_multiplier``), clamped to
  ``output_clamp`` (the storage range, and ``zy`` from below after a fused ReLU);
- dynamic u8 parameters, per tensor or per row, as onnxruntime's DynamicQuantizeLinear computes them.

>>> from lowbit.ir import dtypes as dt
>>> storage_range(dt.i8), storage_range(dt.i8, narrow=True)
((-128, 127), (-127, 127))
"""
from __future__ import annotations

import numpy as np

I32_LIMIT = 2 ** 31
NARROW_I8 = (-127, 127)


# -- ranges ------------------------------------------------------------------------------------------------------
def storage_range(dtype, quant=None, narrow: bool = False) -> tuple[int, int]:
    """The integers a quantized tensor may hold: its ``QuantParams.storage`` if set, else the dtype's range
    (one less at the bottom for ``narrow`` signed types)."""
    if quant is not None and quant.storage is not None:
        return quant.storage
    lo, hi = dtype.iinfo()
    return (lo + 1, hi) if narrow and lo < 0 else (lo, hi)


def type_range(t) -> tuple[int, int]:
    """``storage_range`` of a quantized TensorType."""
    return storage_range(t.dtype, t.quant)


def output_clamp(t, activation: str = "none") -> tuple[int, int]:
    """The (lo, hi) an integer op's requantized result is clamped to: the result type's range, and with a fused
    ReLU nothing below the zero point (the real value 0)."""
    lo, hi = type_range(t)
    if activation == "relu":
        lo = max(lo, int(t.quant.zero_point[0]))
    return lo, hi


# -- affine quantize / dequantize ------------------------------------------------------------------------------------
def group_shape(q, shape) -> tuple[int, ...]:
    """The shape of a group-wise tensor's parameter grid (its scales in C order): ``shape`` with the grouped axis
    (the other one of a rank-2 tensor, not ``axis``) cut into ceil(dim / group) groups, the last one partial.
    A [K, N] weight with ``axis=1, group=32`` has one (scale, zp) per column and per 32 rows: a [ceil(K/32), N] grid."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or q.axis not in (0, 1):
        raise ValueError(f"group-wise quantization needs a rank-2 tensor and axis 0 or 1, got shape {list(shape)} "
                         f"and axis {q.axis}")
    grid = list(shape)
    grid[1 - q.axis] = -(-shape[1 - q.axis] // q.group)
    return tuple(grid)


def _qparams(q, shape):
    if q.group is None:
        bshape = q.broadcast_shape(len(shape))
        return q.scale_array().reshape(bshape), q.zero_point_array().reshape(bshape)
    grid, gax = group_shape(q, shape), 1 - q.axis
    if len(q.scale) != int(np.prod(grid)):
        raise ValueError(f"{len(q.scale)} group-wise parameters do not fill the {list(grid)} grid of shape {list(shape)}")

    def expand(a):  # one value per element: each group's value repeated over its rows, the last group cut short
        return np.repeat(a.reshape(grid), q.group, axis=gax).take(np.arange(shape[gax]), axis=gax)
    return expand(q.scale_array()), expand(q.zero_point_array())


def quantize_array(x: np.ndarray, t) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zero_point) with the division in f32, as onnxruntime does; with a
    codebook, the code of the nearest codebook value to x / scale (``codebook_codes``)."""
    scale, zp = _qparams(t.quant, x.shape)
    if t.quant.codebook is not None:
        return codebook_codes(x.astype(np.float32) / scale, t.quant.codebook).astype(t.dtype.np_dtype)
    lo, hi = type_range(t)
    q = np.rint(x.astype(np.float32) / scale).astype(np.float64) + zp
    return np.clip(q, lo, hi).astype(t.dtype.np_dtype)


def dequantize_array(q: np.ndarray, t) -> np.ndarray:
    """(q - zp) * scale in f32: per tensor, per axis, or group-wise (``group_shape``), the integer difference exact;
    with a codebook, codebook[q] * scale in f32 (one rounding)."""
    scale, zp = _qparams(t.quant, q.shape)
    if t.quant.codebook is not None:
        return (codebook_levels(q, t.quant).astype(np.float32) * scale).astype(np.float32)
    return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


# -- codebooks (``QuantParams.codebook``: real = codebook[code] * scale) -------------------------------------------
def codebook_levels(q: np.ndarray, quant) -> np.ndarray:
    """The codebook values the codes ``q`` stand for, f64 (exact: the values are f32)."""
    cb = np.asarray(quant.codebook, np.float64)
    codes = np.asarray(q).astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= len(cb)):
        raise ValueError(f"codes {int(codes.min())}..{int(codes.max())} do not all index the codebook of "
                         f"{len(cb)} values")
    return cb[codes]


def codebook_codes(v: np.ndarray, codebook) -> np.ndarray:
    """The code (i64) of the codebook value nearest to each ``v`` in the linear domain (values beyond the table
    saturate to its ends). A tie (``v`` halfway between two values) goes to the value of smaller magnitude (the
    lower one at 0); a value the table holds more than once gets its lowest code."""
    cb = np.asarray(codebook, np.float64)
    values, first = np.unique(cb, return_index=True)  # sorted distinct values, the lowest code of each
    mid = (values[:-1] + values[1:]) / 2  # exact in f64: the values are f32
    v = np.asarray(v, np.float64)
    at = np.where(v >= 0, np.searchsorted(mid, v, side="left"), np.searchsorted(mid, v, side="right"))
    return first[at].astype(np.int64)


def affine_params(lo: float, hi: float, signed: bool) -> tuple[float, int]:
    """(scale, zero point) for a calibrated range: u8 asymmetric over [lo, hi], or i8 symmetric over
    [-max|.|, max|.|] (the narrow range, zero point 0)."""
    if signed:
        return max(abs(lo), abs(hi)) / 127.0, 0
    scale = (hi - lo) / 255.0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def fake_quantize(v: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """``v`` quantized to ``levels`` even steps over [lo, hi] and back (what calibrators measure error on)."""
    scale = (hi - lo) / (levels - 1) or 1.0
    return np.clip(np.rint((v - lo) / scale), 0, levels - 1) * scale + lo


def symmetric_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(i8 weights, f32 scales): symmetric per output channel along ``axis``, scale = max|w| / 127, stored in
    the narrow range [-127, 127]."""
    w = w.astype(np.float64)
    amax = np.max(np.abs(w), axis=tuple(i for i in range(w.ndim) if i != axis))
    sw = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    lo, hi = NARROW_I8
    wq = np.ascontiguousarray(np.clip(np.rint(w / sw.reshape(shape)), lo, hi).astype(np.int8))
    return wq, sw


# -- biases --------------------------------------------------------------------------------------------------------
def bias_unit(x_scale: float, w_scales, n_out: int) -> np.ndarray:
    """The real value of one i32 bias step per output channel: f32 input scale x f32 weight scale (in f64)."""
    sx = np.float64(np.float32(x_scale))
    return sx * np.asarray(w_scales, np.float32).astype(np.float64) * np.ones(n_out)


def bias_fitting_scales(bias: np.ndarray, x_scale: float, w_scales) -> np.ndarray:
    """The f32 weight scales, each raised where needed so that the channel's bias is below 2^30 units of
    ``bias_unit`` (half the i32 range, the rest for the sums): a channel of (near-)zero weights beside a large
    bias (batch norm folded into a dead channel) otherwise has no i32 bias. onnxruntime's quantizer adjusts the
    weight scale the same way."""
    sw = np.asarray(w_scales, np.float32).reshape(-1)
    need = np.abs(np.asarray(bias, np.float64).reshape(-1)) / (np.float64(np.float32(x_scale)) * 2.0 ** 30)
    need = np.nextafter(need.astype(np.float32), np.float32(np.inf))  # (rounded up to f32)
    return np.where(sw.astype(np.float64) < need, need, sw).astype(np.float32)


def bias_to_i32(bias: np.ndarray, x_scale: float, w_scales, n_out: int) -> np.ndarray | None:
    """A float bias as i32 in units of ``bias_unit`` (round half to even), or None when it does not fit."""
    b = np.rint(np.asarray(bias, np.float64).reshape(-1) / bias_unit(x_scale, w_scales, n_out))
    if b.size != n_out or np.any(np.abs(b) >= I32_LIMIT):
        return None
    return b.astype(np.int32)


def folded_bias(weight: np.ndarray, x_zero_point: int, bias=None, reduce_axes=None) -> np.ndarray:
    """What an integer kernel adds to ``sum(x * w)`` (x stored, zero point not subtracted) per output channel:
    ``bias - zx * sum(w)``, as i64. ``weight`` is [out, ...] unless ``reduce_axes`` says which axes sum."""
    w = np.asarray(weight, np.int64)
    axes = tuple(range(1, w.ndim)) if reduce_axes is None else reduce_axes
    out = -int(x_zero_point) * w.sum(axis=axes)
    if bias is not None:
        out = out + np.asarray(bias, np.int64).reshape(out.shape)
    return out


# -- requantization ----------------------------------------------------------------------------------------------
def requant_multiplier(x_t, w_t, r_t, channels: int | None = None) -> np.ndarray:
    """Per-output-channel f32 multipliers m = f32(sx * sw) / sy (broadcast to ``channels`` when given)."""
    sx = np.float32(x_t.quant.scale[0])
    m = (sx * w_t.quant.scale_array().astype(np.float32)) / np.float32(r_t.quant.scale[0])
    m = m.astype(np.float32)
    return m if channels is None else np.ascontiguousarray(np.broadcast_to(m, (channels,)))


def requantize_accumulator(acc: np.ndarray, x_t, w_t, r_t, channel_axis: int, activation: str) -> np.ndarray:
    """saturate(round_half_even(f32(acc) * m) + zy) with m = ``requant_multiplier``, per output channel."""
    m = requant_multiplier(x_t, w_t, r_t)
    if m.size > 1:
        shape = [1] * acc.ndim
        shape[channel_axis] = m.size
        m = m.reshape(shape)
    zy = int(r_t.quant.zero_point[0])
    lo, hi = output_clamp(r_t, activation)
    v = np.rint(acc.astype(np.int32).astype(np.float32) * m).astype(np.int64) + zy
    return np.clip(v, lo, hi).astype(r_t.dtype.np_dtype)


def relu_folds_into_saturation(t, clip_max: float) -> bool:
    """Whether Clip(0, clip_max) after a quantized op is enforced by saturating to ``t``: the largest
    representable value, (qmax - zp) * scale, rounds to at most clip_max."""
    top = (type_range(t)[1] - t.quant.zero_point[0]) * np.float32(t.quant.scale[0])
    return bool(top <= clip_max + 0.5 * t.quant.scale[0])


# -- dynamic quantization ----------------------------------------------------------------------------------------
def dynamic_u8_params(x: np.ndarray) -> tuple[np.float32, int]:
    """onnxruntime's DynamicQuantizeLinear parameters: u8 over [min(x, 0), max(x, 0)]."""
    lo, hi = np.float32(min(float(x.min()), 0.0)), np.float32(max(float(x.max()), 0.0))
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return np.float32(1.0), 0
    return scale, int(np.clip(np.rint(-lo / scale), 0, 255))


def dynamic_u8_row_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dynamic_u8_params`` of every row of the last axis: scales and zero points shaped [..., 1]."""
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=-1, keepdims=True), 0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    zero = scale == 0
    scale = np.where(zero, np.float32(1), scale).astype(np.float32)
    zp = np.where(zero, 0, np.clip(np.rint(-lo / scale), 0, 255)).astype(np.int64)
    return scale, zp


def fma_f32(a, b, c) -> np.ndarray:
    """a * b + c for f32 arrays, rounded once to f32 (what ``vfmadd`` computes). The f64 product of two f32 is
    exact; the f64 sum s is corrected by its exact error e (two-sum) where s falls on a midpoint between two
    f32 values, the one case where rounding s again to f32 could differ from rounding the exact a * b + c."""
    p = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    s = p + c
    bp = s - c
    e = (p - bp) + (c - (s - bp))  # exact: s + e == p + c
    r = s.astype(np.float32)
    other = np.nextafter(r, np.where(s > r, np.float32(np.inf), np.float32(-np.inf))).astype(np.float32)
    tie = (s != r) & (np.abs(s - r.astype(np.float64)) == np.abs(other.astype(np.float64) - s)) & (e != 0)
    toward = np.where(e > 0, np.maximum(r, other), np.minimum(r, other))
    return np.where(tie, toward, r).astype(np.float32)


def dynamic_rescale(acc: np.ndarray, x_scale, w_scales, bias=None) -> np.ndarray:
    """f32(acc) * (sx * sw) [+ bias] for a dynamically quantized matmul (acc already zero-point corrected),
    with one rounding when there is a bias, as the fused multiply-add the CPU code uses (the f64 product of
    two f32 values is exact)."""
    m = x_scale * np.asarray(w_scales, np.float32)
    a = acc.astype(np.int32).astype(np.float32)
    if bias is None:
        return a * m
    return fma_f32(a, m, bias)


def grouped_dynamic_rescale(accs: np.ndarray, x_scale, w_scales: np.ndarray, bias=None) -> np.ndarray:
    """The f32 result of a dynamically quantized matmul by a group-wise weight: ``accs`` [G, ..., N] the exact
    integer sums of each group of K (zero points already taken off), ``w_scales`` [G, N]; starting from the bias
    (or 0), each group in order adds f32(acc_g) * f32(sx * sw_g) rounded once (a fused multiply-add, as the CPU
    code does; the f64 product of two f32 values is exact)."""
    y = np.zeros(accs.shape[1:], np.float32) if bias is None else np.broadcast_to(
        np.asarray(bias, np.float32), accs.shape[1:]).astype(np.float32)
    for g in range(accs.shape[0]):
        m = (np.asarray(x_scale, np.float32) * np.asarray(w_scales[g], np.float32)).astype(np.float32)
        a = accs[g].astype(np.int32).astype(np.float32)
        y = fma_f32(a, m, y)
    return y


def scale_product(x_scale, w_scales) -> np.ndarray:
    """f32(sx * sw) per output channel: the scale of an i32 bias, and the rescale of a dynamic matmul's
    accumulator."""
    return (np.float32(x_scale) * np.asarray(w_scales, np.float32)).astype(np.float32)


__all__ = ["storage_range", "type_range", "output_clamp", "group_shape", "quantize_array", "dequantize_array",
           "codebook_levels", "codebook_codes", "affine_params", "fake_quantize",
           "symmetric_weights", "bias_unit", "bias_to_i32", "folded_bias", "requant_multiplier",
           "requantize_accumulator", "relu_folds_into_saturation", "dynamic_u8_params", "dynamic_u8_row_params", "grouped_dynamic_rescale", "fma_f32",
           "dynamic_rescale", "scale_product"]
