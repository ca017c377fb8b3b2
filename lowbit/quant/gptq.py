"""Group-wise low-bit weights: the grid, round to nearest, and GPTQ (Frantar et al. 2022).

A weight is ``[K, N]`` (the right operand of a matmul). It gets one (scale, zero point) per output column ``n``
and per group of ``group`` rows of K, the last group partial when ``group`` does not divide K: the IR's
``QuantParams(axis=1, group=group)``, a ``[ceil(K / group), N]`` grid in C order (``scheme.group_shape``).

The grid (``storage``):

- symmetric: signed integers, zero point 0, the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (as lowbit's int8
  weights: the range is symmetric, so -max|w| and +max|w| are both exact) and ``scale = max|w| / (2^(b-1) - 1)``:
  4 bits are ``i4`` with ``range=-7:7``, 8 bits ``i8`` with ``range=-127:127``, other widths ``i8`` with their
  range (2 bits: ``range=-1:1``, ternary);
- asymmetric: unsigned integers ``[0, 2^b - 1]``, the reference GPTQ quantizer's rule: ``lo = min(min w, 0)``,
  ``hi = max(max w, 0)``, ``scale = (hi - lo) / (2^b - 1)``, ``zero point = round(-lo / scale)``: 4 bits are
  ``u4``, 8 bits ``u8``, other widths ``u8`` with ``range=0:2^b-1`` (as MatMulNBits' 2-bit weights import).

Scales are rounded to f32 once (what the IR stores); a group of zeros gets scale 1, zero point 0. Where calibration
data is at hand the range may be clipped first (``group_params`` with ``h``: the shrink factor of ``CLIP`` with
the least output error per group and column, AWQ's ``auto_clip``).

``rtn`` rounds every weight to the nearest level (``scheme.quantize_array``). ``gptq`` is the reference
implementation's ``fasterquant`` (github.com/IST-DASLab/gptq, ``gptq.py``, with ``groupsize``; no act-order,
no static groups) in float64, on the grid above: ``H`` (``2 XᵀX / n`` of the layer's input rows) with dead
inputs (``diag(H) == 0``: their rows of W zeroed, their diagonal set to 1), damped by ``damp * mean(diag(H))``;
``U``, the upper Cholesky factor of ``H⁻¹``; then the rows of K in order, in blocks of ``block``: each row
quantized, its error divided by ``U[k, k]`` fed back into the rest of its block at once and into the later
blocks after the block (the lazy batch update). A group's parameters are computed when its first row comes up,
as the reference does: from the weights with every earlier block's update applied (rows of the current block
have not yet had its own updates there; with ``group == block`` the two are the same).
"""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from ..ir import dtypes as dt
from ..ir.types import QuantParams, TensorType
from . import scheme

BITS = range(2, 9)
CLIP = tuple(float(x) for x in np.round(1.0 - 0.025 * np.arange(21), 3))  # 1, 0.975, ..., 0.5: AWQ's clip grid


def storage(bits: int, symmetric: bool) -> tuple:
    """(dtype, storage range or None, integer range) of the weights for ``bits`` and the symmetry."""
    if bits not in BITS:
        raise ValueError(f"bits must be 2..8, got {bits}")
    if symmetric:
        top = (1 << (bits - 1)) - 1
        return (dt.i4 if bits == 4 else dt.i8), (-top, top), (-top, top)
    top = (1 << bits) - 1
    dtype = dt.u4 if bits == 4 else dt.u8
    return dtype, (None if bits in (4, 8) else (0, top)), (0, top)


def group_params(w: np.ndarray, bits: int, symmetric: bool,
                 h: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(f32 scales [N], i64 zero points [N]) of one group: ``w`` is its rows, [rows, N]. With ``h`` (the group's
    [rows, rows] block of XᵀX) the range of each column is shrunk by the factor of ``CLIP`` that gives the least
    output error ``dᵀ h d`` (``d`` the column's rounding error): AWQ's clip search, on the calibration inputs'
    XᵀX instead of sampled rows; factor 1 is the plain range, so it never does worse on ``h``."""
    w = np.asarray(w, np.float64)
    if h is None:
        return _range_params(w, bits, symmetric, 1.0)
    best_err, best = None, None
    h32 = np.asarray(h, np.float32)
    lo, hi = storage(bits, symmetric)[2]
    for p in CLIP:
        s, zp = _range_params(w, bits, symmetric, p)
        err = _column_energy(_rounded(w, s.astype(np.float64), zp, lo, hi)[1] - w, h32)
        if best is None:
            best_err, best = err, (s, zp)
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = (np.where(better, s, best[0]), np.where(better, zp, best[1]))
    return best[0].astype(np.float32), best[1].astype(np.int64)


def _range_params(w: np.ndarray, bits: int, symmetric: bool, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid of ``storage`` over the range of ``w``'s columns times ``shrink``."""
    if symmetric:
        top = (1 << (bits - 1)) - 1
        amax = np.max(np.abs(w), axis=0) * shrink
        s = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
        return s, np.zeros(w.shape[1], np.int64)
    top = (1 << bits) - 1
    lo = np.minimum(w.min(axis=0), 0.0) * shrink
    hi = np.maximum(w.max(axis=0), 0.0) * shrink
    s = np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float32)
    zp = np.clip(np.rint(-lo / s.astype(np.float64)), 0, top).astype(np.int64)
    return s, zp


def _rounded(w: np.ndarray, s64: np.ndarray, zp: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes i64, their dequantized values f64) of ``w`` on the grid (f64 scales ``s64``, zero points ``zp``,
    integer range ``lo..hi``), per column: GPTQ's quantizer."""
    q = np.clip(np.rint(w / s64) + zp, lo, hi).astype(np.int64)
    return q, (q - zp) * s64


def _column_energy(d: np.ndarray, x32: np.ndarray) -> np.ndarray:
    """``dᵀ XᵀX d`` per column of ``d`` [K, N] (f64 sums of an f32 product; ``x32`` = XᵀX in f32)."""
    d = np.asarray(d, np.float32)
    return np.sum(d * (x32 @ d), axis=0, dtype=np.float64)


def weight_type(shape, scales: np.ndarray, zero_points: np.ndarray, bits: int, symmetric: bool,
                group: int) -> TensorType:
    """The type of a [K, N] weight with a [ceil(K / group), N] grid of parameters."""
    dtype, rng, _ = storage(bits, symmetric)
    q = QuantParams(tuple(np.asarray(scales, np.float32).ravel().tolist()),
                    tuple(np.asarray(zero_points, np.int64).ravel().tolist()), axis=1, group=group, storage=rng)
    return TensorType(tuple(shape), dtype, q)


def rtn(w: np.ndarray, bits: int, group: int, symmetric: bool,
        xtx: np.ndarray | None = None) -> tuple[np.ndarray, TensorType]:
    """(stored integers [K, N], their type): every weight rounded to the nearest level of its group; with ``xtx``
    (XᵀX [K, K] of the calibration inputs) each group's range clipped where that lowers its output error
    (``group_params``)."""
    w = np.asarray(w, np.float32)
    k = w.shape[0]
    params = [group_params(w[g:g + group], bits, symmetric, None if xtx is None else xtx[g:g + group, g:g + group])
              for g in range(0, k, group)]
    t = weight_type(w.shape, np.stack([p[0] for p in params]), np.stack([p[1] for p in params]), bits, symmetric,
                    group)
    return scheme.quantize_array(w, t), t


def hessian(x_rows: list) -> tuple[np.ndarray, int]:
    """(XᵀX in float64, n rows) of a layer's input rows (a list of [rows, K] arrays)."""
    xtx, n = None, 0
    for x in x_rows:
        x = np.asarray(x, np.float64)
        xtx = x.T @ x if xtx is None else xtx + x.T @ x
        n += x.shape[0]
    return xtx, n


def inverse_cholesky(h: np.ndarray, damp: float, what: str = "") -> np.ndarray:
    """``U`` upper triangular with ``U.T @ U = (H + damp * mean(diag(H)) * I)⁻¹`` (H already has no dead inputs)."""
    k = h.shape[0]
    h = h + damp * float(np.mean(np.diag(h))) * np.eye(k)
    try:
        lower = np.linalg.cholesky(h)
        linv = np.linalg.solve(lower, np.eye(k))
        return np.linalg.cholesky(linv.T @ linv).T
    except np.linalg.LinAlgError:
        raise LowbitError(f"{what or 'GPTQ'}: the damped Hessian of the calibration inputs is not positive "
                          f"definite; raise quantize-weights' damp (now {damp})") from None


def columns(w: np.ndarray, h: np.ndarray, group: int, damp: float, block: int, what: str, start_group, code):
    """GPTQ's column loop (the reference ``fasterquant`` with groups): codes [N, K] i64 of the [K, N] weight ``w``
    given ``h`` = 2 XᵀX / n. ``start_group(gi, cols)`` is called as group ``gi`` starts, with its columns of W as
    the reference has them there ([group, N] f64: this block's own updates not yet applied), and returns the
    group's state; ``code(x, state)`` gives a column's codes and their dequantized values (f64)."""
    wt = np.array(w, np.float64).T.copy()  # [N, K]: the reference's orientation, a row per output column
    n_out, k = wt.shape
    h = np.array(h, np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wt[:, dead] = 0.0
    u = inverse_cholesky(h, damp, what)
    codes = np.zeros((n_out, k), np.int64)
    state = None
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wt[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                state = start_group(col // group, wt[:, col:col + group].T)
            x = w1[:, i]
            codes[:, col], x_hat = code(x, state)
            e = (x - x_hat) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        wt[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes


def gptq(w: np.ndarray, h: np.ndarray, bits: int, group: int, symmetric: bool, damp: float = 0.01,
         block: int = 128, what: str = "", clip: bool = False, zeros: np.ndarray | None = None) -> tuple[np.ndarray, TensorType]:
    """(stored integers [K, N], their type): GPTQ of the [K, N] weight ``w`` given ``h`` = 2 XᵀX / n [K, K];
    ``clip``: each group's range clipped by ``group_params``' search on its block of ``h`` as the group starts;
    ``zeros`` (symmetric only; a [K, N] mask, a pruned weight's zeros): those entries stay exactly 0 (code 0), their
    error fed forward like any other, so a sparsity pattern survives the quantization."""
    if zeros is not None and not symmetric:
        raise ValueError("GPTQ keeps pruned zeros only on the symmetric grid (zero point 0)")
    k, n_out = np.shape(w)
    lo, hi = storage(bits, symmetric)[2]
    n_groups = -(-k // group)
    scales = np.ones((n_groups, n_out), np.float32)
    zps = np.zeros((n_groups, n_out), np.int64)

    def start_group(gi, cols):
        g0 = gi * group
        hg = h[g0:g0 + group, g0:g0 + group] if clip else None
        scales[gi], zps[gi] = group_params(cols, bits, symmetric, hg)
        return scales[gi].astype(np.float64), zps[gi]

    col = iter(range(k))

    def code(x, state):
        c, x_hat = _rounded(x, *state, lo, hi)
        i = next(col)  # columns() codes the rows of K in order
        if zeros is not None and zeros[i].any():
            c, x_hat = np.where(zeros[i], 0, c), np.where(zeros[i], 0.0, x_hat)
        return c, x_hat
    q = columns(w, h, group, damp, block, what, start_group, code)
    t = weight_type((k, n_out), scales, zps, bits, symmetric, group)
    return np.ascontiguousarray(q.T).astype(t.dtype.np_dtype), t


def relative_error(w: np.ndarray, w_hat: np.ndarray, xtx: np.ndarray) -> float:
    """‖X·Ŵ − X·W‖ / ‖X·W‖ (Frobenius, over the calibration rows of X) from XᵀX: the layer's relative output
    error without its bias."""
    w = np.asarray(w, np.float64)
    d = np.asarray(w_hat, np.float64) - w
    ref = float(np.sum(w * (xtx @ w)))
    err = float(np.sum(d * (xtx @ d)))
    return float(np.sqrt(max(err, 0.0) / ref)) if ref > 0 else (0.0 if err <= 0 else float("inf"))


def error_energy(w: np.ndarray, w_hat: np.ndarray, x32: np.ndarray) -> float:
    """``‖X·(Ŵ − W)‖²`` from ``x32`` = XᵀX in f32: what a search compares its candidates by (one f32 matmul, a
    quarter of ``relative_error``'s cost)."""
    return float(_column_energy(np.asarray(w_hat, np.float32) - np.asarray(w, np.float32), x32).sum())


__all__ = ["BITS", "CLIP", "storage", "group_params", "weight_type", "rtn", "hessian", "inverse_cholesky", "columns",
           "gptq", "relative_error", "error_energy"]
