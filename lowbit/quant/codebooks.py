"""Codebook weights: 4-bit codes indexing a table of 16 values, one f32 scale per group and column, no zero points
(``QuantParams(codebook=...)``: real = codebook[code] * scale_g).

The tables (sorted, code c's value is ``TABLE[c]``; the two integer tables are mirror images,
``TABLE[15 - c] == -TABLE[c]``, so code >= 8 is the sign bit and both 7 and 8 are zero; the encoder writes 7):

- ``pow2`` — sign and a 3-bit exponent with a zero: 0, ±1, ±2, ±4, ..., ±64 (15 distinct values; code 8 is
  a second zero). Every product by a weight is a shift: ``(x << e)``, negated for the sign;
- ``apot`` — additive powers of two (APoT, Li et al. 2020, ICLR: each level a sum of at most two powers of two,
  so a product is two shifts and an add): 0, ±6 (4+2), ±12 (8+4), ±20 (16+4), ±32, ±48 (32+16), ±64, ±96
  (64+32) (15 distinct values; code 8 a second zero). Roughly log-uniform over [-127, 127] (successive ratios
  2, 1.67, 1.6, 1.5, 1.33, 1.5): denser than pow2 at the top, where pow2 leaves 32 -> 64 empty. Chosen among
  the two-term sets ending at 96 (the largest two-term value <= 127) for the least weight MSE, with the scale
  search below, on Gaussian, Laplace and Student-t groups of 128. Relative weight MSE against symmetric int4
  (-7..7) given the same search: Gaussian 0.0110 vs 0.0115, Laplace 0.0126 vs 0.0218, Student-t(3) 0.0166 vs
  0.0451 (pow2: 0.032, 0.029, 0.025: worse than int4 on Gaussian weights, where shift-add's fallback takes int4);
- ``nf4`` — NormalFloat4 (QLoRA, Dettmers et al. 2023; bitsandbytes' table): the 16 quantiles of N(0, 1)
  scaled to [-1, 1], 0 exact (code 7). Not integers: the interpreter dequantizes them; ``qmatmul_dynamic``
  (integer sums) refuses them.

Scales (``group_scales``): per group of ``group`` rows and per column, ``base = max|w| / max|codebook|`` (the
largest weight on the table's end); with ``search`` the scale is the one of ``base * f``, f in
``SEARCH_FACTORS`` (1 first, then 32 steps from 0.5 to 1.2), with the least squared error of the dequantized
group (f32 codes of f32 ``w / scale``, as ``scheme.quantize_array`` computes them); ties keep the earlier
factor, so the search is never worse than ``base``. A group of zeros gets scale 1.
Codes are the nearest codebook value in the linear domain (``scheme.codebook_codes``: not the nearest exponent).
``gptq`` is ``lowbit.quant.gptq``'s column loop (the same Hessian, dead inputs, damping, inverse Cholesky
factor, lazy blocks, group parameters from the updated weights) with this quantizer in place of the grid.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.types import QuantParams, TensorType
from . import gptq as qw
from . import scheme

POW2 = (-64, -32, -16, -8, -4, -2, -1, 0, 0, 1, 2, 4, 8, 16, 32, 64)
APOT = (-96, -64, -48, -32, -20, -12, -6, 0, 0, 6, 12, 20, 32, 48, 64, 96)
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
CODEBOOKS = {"pow2": POW2, "apot": APOT, "nf4": NF4}
SEARCH_FACTORS = (1.0,) + tuple(float(f) for f in np.linspace(0.5, 1.2, 32))


def codebook(name: str) -> tuple[float, ...]:
    """The values of a named codebook, as f32 floats."""
    if name not in CODEBOOKS:
        raise ValueError(f"unknown codebook '{name}' (known: {', '.join(CODEBOOKS)})")
    return tuple(float(np.float32(v)) for v in CODEBOOKS[name])


def encode(v: np.ndarray, values) -> np.ndarray:
    """The code of the nearest codebook value to each ``v`` (``scheme.codebook_codes``)."""
    return scheme.codebook_codes(v, values)


def _starts(k: int, group: int) -> np.ndarray:
    return np.arange(0, k, group)


def _expand(a: np.ndarray, k: int, group: int) -> np.ndarray:
    """[ng, N] -> [K, N]: each group's row repeated over its rows, the last group cut short."""
    return np.repeat(a, group, axis=0)[:k]


def _group_errors(w: np.ndarray, steps: np.ndarray, values: np.ndarray, group: int) -> np.ndarray:
    """Squared error per group and column [ng, N] of ``w`` [K, N] coded with f32 steps [ng, N]."""
    k = w.shape[0]
    s = _expand(steps, k, group)
    codes = scheme.codebook_codes(w / s, values)
    w_hat = (values.astype(np.float32)[codes] * s).astype(np.float64)
    return np.add.reduceat((w_hat - w.astype(np.float64)) ** 2, _starts(k, group), axis=0)


def group_scales(w: np.ndarray, values, group: int, search: bool = True) -> np.ndarray:
    """f32 scales [ceil(K / group), N] of the [K, N] weight ``w`` for the codebook ``values`` (module doc); ``w``
    f32 (the division in f32, as ``scheme.quantize_array``) or f64 (GPTQ's updated weights)."""
    w = np.asarray(w)
    w = w if w.dtype == np.float64 else w.astype(np.float32)
    k = w.shape[0]
    values = np.asarray(values, np.float64)
    amax = np.maximum.reduceat(np.abs(w), _starts(k, group), axis=0).astype(np.float64)
    base = amax / float(np.max(np.abs(values)))
    zero = amax == 0
    best = best_err = None
    for f in (SEARCH_FACTORS if search else SEARCH_FACTORS[:1]):
        cand = np.where(zero, 1.0, base * f).astype(np.float32)
        err = _group_errors(w, cand, values, group)
        if best is None:
            best, best_err = cand, err
        else:
            better = err < best_err
            best, best_err = np.where(better, cand, best), np.where(better, err, best_err)
    return best.astype(np.float32)


def weight_type(shape, scales: np.ndarray, values, group: int) -> TensorType:
    """The type of [K, N] codes: u4 for tables of up to 16 values, else u8 (a storage range when the table is
    shorter than the dtype's)."""
    n = len(values)
    if not 2 <= n <= 256:
        raise ValueError(f"a codebook has 2..256 values, got {n}")
    dtype = dt.u4 if n <= 16 else dt.u8
    storage = None if n == 1 << dtype.bits else (0, n - 1)
    s = np.asarray(scales, np.float32).ravel()
    q = QuantParams(tuple(s.tolist()), (0,) * s.size, axis=1, group=group, storage=storage, codebook=tuple(values))
    return TensorType(tuple(shape), dtype, q)


def rtn(w: np.ndarray, values, group: int, search: bool = True) -> tuple[np.ndarray, TensorType]:
    """(codes [K, N], their type): per group the scale of ``group_scales``, every weight its nearest value."""
    w = np.asarray(w, np.float32)
    t = weight_type(w.shape, group_scales(w, values, group, search), values, group)
    return scheme.quantize_array(w, t), t


def gptq(w: np.ndarray, h: np.ndarray, values, group: int, search: bool = True, damp: float = 0.01,
         block: int = 128, what: str = "") -> tuple[np.ndarray, TensorType]:
    """(codes [K, N], their type): GPTQ of ``w`` [K, N] given ``h`` = 2 XᵀX / n (``lowbit.quant.gptq.columns``),
    each column coded to its nearest codebook value, a group's scale from the weights as the loop has them."""
    cb = np.asarray(values, np.float64)
    k, n_out = np.shape(w)
    scales = np.ones((-(-k // group), n_out), np.float32)

    def start_group(gi, cols):
        scales[gi] = group_scales(cols, cb, group, search)[0]
        return scales[gi].astype(np.float64)

    def code(x, s64):
        c = scheme.codebook_codes(x / s64, cb)
        return c, cb[c] * s64
    codes = qw.columns(w, h, group, damp, block, what, start_group, code)
    t = weight_type((k, n_out), scales, values, group)
    return np.ascontiguousarray(codes.T).astype(t.dtype.np_dtype), t


__all__ = ["POW2", "APOT", "NF4", "CODEBOOKS", "SEARCH_FACTORS", "codebook", "encode", "group_scales",
           "weight_type", "rtn", "gptq"]
