"""Calibration: data in, activation ranges out.

``load_samples`` reads calibration data (an .npz whose keys are input names and whose leading axis indexes
samples, a directory of such files, or an iterable of ``{name: array}`` dicts) and refuses what cannot
calibrate anything: no samples, unknown or missing inputs, wrong shapes or dtypes, NaN or Inf.

``collect`` runs the reference interpreter over the samples and keeps, per observed value, its exact
min/max and a bounded uniform subsample of its elements; the calibrators turn that into a range:

- ``minmax``: the observed extremes;
- ``percentile``: the ``percentile``-th and (100 - ``percentile``)-th percentiles (outliers clipped);
- ``entropy``: the clipping threshold whose 8-bit quantized histogram is closest in KL divergence to the
  observed one (TensorRT's method: 2048 bins of |x|, thresholds from 128 bins up);
- ``mse``: the clipping threshold that minimizes the mean squared error of quantize-dequantize.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LowbitError
from . import scheme

CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
KEEP = 1 << 18  # elements kept per observed value across all samples


def _check_array(name: str, a: np.ndarray, want, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != tuple(want.shape):
        raise LowbitError(f"{where}: input '{name}' has shape {list(a.shape)}, the model takes {list(want.shape)}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise LowbitError(f"{where}: input '{name}' holds NaN or Inf; calibration data must be finite")
    return a.astype(want.dtype.np_dtype, copy=False)


def load_samples(source, graph) -> list[dict]:
    """Calibration samples as a list of ``{input name: array of the model's input shape}``."""
    inputs = {v.name: v.type for v in graph.inputs}
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(p.glob("*.npz"))
            if not files:
                raise LowbitError(f"{p}: no .npz files in the calibration directory")
        elif p.is_file():
            files = [p]
        else:
            raise LowbitError(f"{p}: no such calibration file or directory")
        batches = []
        for f in files:
            try:
                with np.load(f) as z:
                    batches.append((str(f), {k: z[k] for k in z.files}))
            except Exception as e:
                raise LowbitError(f"{f}: cannot read calibration data as .npz ({e})") from None
    else:
        try:
            batches = [(f"calibration sample {i}", dict(s)) for i, s in enumerate(source)]
        except TypeError:
            raise LowbitError("calibration data must be an .npz path, a directory of them, or an iterable of "
                              "{input name: array} dicts") from None
    samples = []
    for where, d in batches:
        unknown = sorted(set(d) - set(inputs))
        missing = sorted(set(inputs) - set(d))
        if unknown or missing:
            what = f"unknown input '{unknown[0]}'" if unknown else f"missing input '{missing[0]}'"
            raise LowbitError(f"{where}: {what}; the model takes {', '.join(inputs)}")
        first = next(iter(inputs))
        t = inputs[first]
        a = np.asarray(d[first])
        if a.shape == tuple(t.shape):  # one sample
            samples.append({k: _check_array(k, d[k], inputs[k], where) for k in inputs})
            continue
        n = a.shape[0] if a.ndim == len(t.shape) + 1 else None
        if n is None:
            raise LowbitError(f"{where}: input '{first}' has shape {list(a.shape)}; expected {list(t.shape)} or "
                              f"[samples, {', '.join(map(str, t.shape))}]")
        for k in inputs:
            arr = np.asarray(d[k])
            if arr.ndim == 0 or arr.shape[0] != n:
                raise LowbitError(f"{where}: inputs disagree on the number of samples ({first}: {n}, {k}: "
                                  f"{arr.shape[0] if arr.ndim else 0})")
        for i in range(n):
            samples.append({k: _check_array(k, np.asarray(d[k])[i], inputs[k], where) for k in inputs})
    if not samples:
        raise LowbitError("the calibration data holds no samples")
    return samples


class Observed:
    """Exact extremes and a uniform subsample of one value's elements over all calibration samples."""

    def __init__(self):
        self.lo, self.hi, self.parts = np.inf, -np.inf, []

    def add(self, a: np.ndarray, keep: int, rng) -> None:
        a = np.asarray(a, np.float32).reshape(-1)
        if a.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))
        self.parts.append(a if a.size <= keep else rng.choice(a, keep, replace=False))

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1, np.float32)


def collect(graph, samples: list[dict], values: list) -> dict[int, Observed]:
    """Run the interpreter on every sample; observe ``values`` (ids of graph values)."""
    from ..ir.interp import evaluate_op

    want = set(values)
    obs = {i: Observed() for i in want}
    keep = max(1024, KEEP // len(samples))
    rng = np.random.default_rng(0)
    for s in samples:
        env = {}
        for v in graph.inputs:
            env[id(v)] = s[v.name]
            if id(v) in want:
                obs[id(v)].add(env[id(v)], keep, rng)
        for op in graph.ops:
            for r, a in zip(op.results, evaluate_op(op, [env[id(v)] for v in op.operands])):
                env[id(r)] = a
                if id(r) in want:
                    obs[id(r)].add(a, keep, rng)
    return obs


def _fake_quant_mse(v: np.ndarray, lo: float, hi: float, levels: int) -> float:
    return float(np.mean((scheme.fake_quantize(v, lo, hi, levels) - v) ** 2))


def _entropy_threshold(v: np.ndarray, levels: int, bins: int = 2048) -> float:
    """TensorRT's KL-divergence threshold on |v|. Exact zeros are left out: every range holds 0 exactly, and
    the spike a ReLU leaves at 0 would otherwise pull the threshold down to a few bins."""
    a = np.abs(v)
    a = a[a > 0]
    if a.size == 0:
        return 0.0
    amax = float(a.max())
    if amax == 0:
        return 0.0
    hist, edges = np.histogram(a, bins=bins, range=(0, amax))
    hist = hist.astype(np.float64)
    best, best_t = np.inf, amax
    for i in range(levels, bins + 1, 16):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # the reference: clipped values land in the last bin
        nz = p > 0
        # the candidate: the unclipped bins merged into ``levels`` quantized bins, spread back over the
        # non-empty source bins (TensorRT's method)
        src = hist[:i]
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for c in chunks:
            m = src[c] > 0
            if m.any():
                q[c[m]] = src[c].sum() / m.sum()
        ps, qs = p / p.sum(), q / q.sum()
        kl = float(np.sum(ps[nz] * np.log(ps[nz] / np.maximum(qs[nz], 1e-12))))
        if kl < best:
            best, best_t = kl, float(edges[i])
    return best_t


def calibrate_range(o: Observed, method: str, percentile: float = 99.999, signed: bool = False) -> tuple[float, float]:
    """(lo, hi) for one observed value; always contains 0 (so zero is exactly representable)."""
    lo, hi = min(o.lo, 0.0), max(o.hi, 0.0)
    if method == "minmax":
        pass
    elif method == "percentile":
        v = o.values()
        lo = min(float(np.percentile(v, 100 - percentile)), 0.0)
        hi = max(float(np.percentile(v, percentile)), 0.0)
    elif method in ("entropy", "mse"):
        v = o.values()
        levels = 256 if (lo >= 0 and not signed) else 128
        if method == "entropy":
            t = _entropy_threshold(v, levels)
        else:
            amax = max(-lo, hi)
            cands = np.linspace(0.2, 1.0, 81) * amax
            errs = [_fake_quant_mse(v, max(lo, -t), min(hi, t), 256) for t in cands]
            t = float(cands[int(np.argmin(errs))])
        lo, hi = max(lo, -t), min(hi, t)
    else:
        raise LowbitError(f"unknown calibrator '{method}' (known: {', '.join(CALIBRATORS)})")
    if hi - lo <= 0:
        hi = lo + 1e-8
    return lo, hi


def qparams(lo: float, hi: float, signed: bool) -> tuple[float, int]:
    """(scale, zero point): u8 asymmetric over [lo, hi], or i8 symmetric over [-max|.|, max|.|]."""
    return scheme.affine_params(lo, hi, signed)
