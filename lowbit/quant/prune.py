"""One-shot pruning of a [K, N] weight (the right operand of a matmul): which entries become zero, and how the rest
change. The weight pass is ``lowbit.passes.sparsify``; this module knows only arrays.

Patterns (``Pattern``), always along the reduction axis K of the [K, N] weight (an output column's inputs):

- ``unstructured`` with a ``ratio``: that fraction of the layer's entries is zero (rounded down to whole entries);
- ``N:M``: in every run of M consecutive inputs of a column at most N nonzeros (the last run partial, keeping
  ``ceil(N * len / M)`` at most); 2:4 is half;
- ``block:RxC`` with a ``ratio``: R inputs x C outputs blocks, that fraction of the whole blocks zero.

Methods, each choosing the mask by a score (lowest pruned) and keeping or reconstructing the rest:

- ``magnitude``: score |w|; unstructured and block compare over the whole layer; the survivors unchanged;
- ``wanda`` (Sun et al. 2023): score |w_kn| · ‖x_k‖₂ over the calibration rows, compared within each output
  column (the paper's per-output groups; N:M within its runs); the survivors unchanged;
- ``sparsegpt`` (Frantar & Alistarh 2023), the reference ``fasterprune`` (github.com/IST-DASLab/sparsegpt) in
  float64: H = 2 XᵀX / n with dead inputs zeroed and damped by ``damp * mean(diag H)``, U the upper Cholesky factor
  of H⁻¹; the inputs in blocks of ``block``: the unstructured (and block) mask of a block chosen at its start from
  w² / U[k, k]² over all of its entries at once — so the ratio holds block by block — the N:M mask from the same
  score as each run of M starts (the weights there already updated); each input's pruned entries set to zero and
  the error divided by U[k, k] fed into the later inputs (OBS: the surviving weights absorb it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import LowbitError
from ..ir.types import Encoding, TensorType
from .gptq import inverse_cholesky

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Pattern:
    """``kind`` ``unstructured`` (``ratio``), ``nm`` (``n``, ``m``) or ``block`` (``rows`` x ``cols``, ``ratio``)."""

    kind: str
    ratio: float = 0.0
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @staticmethod
    def parse(text: str, ratio: float) -> "Pattern":
        """``unstructured``, ``N:M`` (``2:4``) or ``block:RxC`` (``block:4x1``); ``ratio`` for the first and last."""
        text = str(text).strip()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if text == "unstructured":
            return Pattern("unstructured", float(ratio))
        m = re.fullmatch(r"(\d+):(\d+)", text)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise ValueError(f"an N:M pattern needs 0 < N < M, got {text}")
            return Pattern("nm", 1.0 - n / mm, n=n, m=mm)
        m = re.fullmatch(r"block:(\d+)x(\d+)", text)
        if m:
            r, c = int(m.group(1)), int(m.group(2))
            if r < 1 or c < 1:
                raise ValueError(f"a block needs positive sides, got {text}")
            return Pattern("block", float(ratio), rows=r, cols=c)
        raise ValueError(f"unknown sparsity pattern '{text}' (known: unstructured, N:M such as 2:4, block:RxC)")

    def encoding(self, w: np.ndarray) -> Encoding:
        """The type's encoding of a weight pruned this way: ``nm<n:m>``, ``block<RxC>``, else ``sparse<r>`` with
        r its actual fraction of zeros (which may exceed the ratio: weights that were zero already)."""
        if self.kind == "nm":
            return Encoding("nm", (self.n, self.m))
        if self.kind == "block":
            return Encoding("block", (self.rows, self.cols))
        return Encoding.sparse(float(np.count_nonzero(w == 0)) / max(w.size, 1))


def _lowest(score: np.ndarray, count: int) -> np.ndarray:
    """A boolean mask of the ``count`` lowest entries of ``score`` (ties by position)."""
    mask = np.zeros(score.size, bool)
    if count > 0:
        mask[np.argsort(score, axis=None, kind="stable")[:count]] = True
    return mask.reshape(score.shape)


def _nm_mask(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """[K, N] mask: in every run of ``m`` rows of a column the lowest ``m - n`` entries (partial last run: keep
    ``ceil(n * len / m)``)."""
    k, cols = score.shape
    mask = np.zeros((k, cols), bool)
    for r0 in range(0, k, m):
        run = score[r0:r0 + m]
        drop = run.shape[0] - -(-n * run.shape[0] // m)
        if drop > 0:
            idx = np.argsort(run, axis=0, kind="stable")[:drop]
            np.put_along_axis(mask[r0:r0 + m], idx, True, axis=0)
    return mask


def _block_mask(score: np.ndarray, rows: int, cols: int, ratio: float) -> np.ndarray:
    """[K, N] mask of whole ``rows`` x ``cols`` blocks (cut at the edges): ``ratio`` of the blocks, lowest summed
    score first."""
    k, n = score.shape
    kp, np_ = -(-k // rows) * rows, -(-n // cols) * cols
    pad = np.zeros((kp, np_))
    pad[:k, :n] = score
    sums = pad.reshape(kp // rows, rows, np_ // cols, cols).sum(axis=(1, 3))
    blocks = _lowest(sums, int(np.floor(ratio * sums.size + 1e-9)))
    return np.repeat(np.repeat(blocks, rows, axis=0), cols, axis=1)[:k, :n]


def mask_from_score(score: np.ndarray, pattern: Pattern, per_column: bool) -> np.ndarray:
    """The [K, N] pruning mask (True: zero) of ``score`` for ``pattern``; unstructured ``per_column`` (Wanda)
    prunes the same count in every column, else over the whole layer."""
    if pattern.kind == "nm":
        return _nm_mask(score, pattern.n, pattern.m)
    if pattern.kind == "block":
        return _block_mask(score, pattern.rows, pattern.cols, pattern.ratio)
    k, n = score.shape
    if per_column:
        drop = int(np.floor(pattern.ratio * k + 1e-9))
        mask = np.zeros((k, n), bool)
        if drop:
            np.put_along_axis(mask, np.argsort(score, axis=0, kind="stable")[:drop], True, axis=0)
        return mask
    return _lowest(score, int(np.floor(pattern.ratio * score.size + 1e-9)))


def magnitude(w: np.ndarray, pattern: Pattern) -> np.ndarray:
    """``w`` [K, N] with its lowest-|w| entries zero."""
    w = np.asarray(w, np.float32)
    return np.where(mask_from_score(np.abs(w).astype(np.float64), pattern, False), np.float32(0), w)


def wanda(w: np.ndarray, xtx: np.ndarray, n: int, pattern: Pattern) -> np.ndarray:
    """``w`` [K, N] pruned by |w| · ‖x_k‖ (``xtx`` = XᵀX of ``n`` calibration rows), per output column."""
    w = np.asarray(w, np.float32)
    norm = np.sqrt(np.maximum(np.diag(np.asarray(xtx, np.float64)), 0.0))
    score = np.abs(w).astype(np.float64) * norm[:, None]
    return np.where(mask_from_score(score, pattern, True), np.float32(0), w)


def sparsegpt(w: np.ndarray, h: np.ndarray, pattern: Pattern, damp: float = 0.01, block: int = 128,
              what: str = "") -> np.ndarray:
    """``w`` [K, N] pruned and reconstructed by SparseGPT given ``h`` = 2 XᵀX / n [K, K] (module docstring)."""
    wt = np.array(w, np.float64).T.copy()  # [N, K]: the reference's orientation, a row per output
    n_out, k = wt.shape
    if pattern.kind == "block" and block % pattern.rows:
        raise LowbitError(f"{what or 'sparsegpt'}: block rows {pattern.rows} must divide SparseGPT's block {block}")
    if pattern.kind == "nm" and block % pattern.m:
        raise LowbitError(f"{what or 'sparsegpt'}: M = {pattern.m} must divide SparseGPT's block {block}")
    h = np.array(h, np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wt[:, dead] = 0.0
    u = inverse_cholesky(h, damp, what or "SparseGPT")
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wt[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = np.diag(u1)
        mask1 = None
        if pattern.kind != "nm":
            score = (w1 ** 2 / d[None, :] ** 2).T  # [block, N]: the mask functions' orientation
            mask1 = mask_from_score(score, pattern, False).T
        else:
            mask1 = np.zeros_like(w1, bool)
        for i in range(i2 - i1):
            if pattern.kind == "nm" and i % pattern.m == 0:
                j = min(i + pattern.m, i2 - i1)
                score = (w1[:, i:j] ** 2 / d[None, i:j] ** 2).T
                mask1[:, i:j] = _nm_mask(score, pattern.n, pattern.m).T
            x = w1[:, i]
            q = np.where(mask1[:, i], 0.0, x)
            e = (x - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            w1[:, i] = q
            err1[:, i] = e
        wt[:, i1:i2] = w1
        wt[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = np.ascontiguousarray(wt.T).astype(np.float32)
    out[out == 0] = 0.0  # no negative zeros
    return out


def carried_encoding(source: TensorType, values: np.ndarray):
    """The encoding a quantized copy ``values`` of a weight typed ``source`` keeps: the source's where the values
    still honour it, else ``sparse<r>`` of their own zeros (None where the source had none or no zeros are
    left)."""
    enc = source.encoding
    if enc is None or enc.kind == "pow2":
        return None
    if enc.check(values) is None:
        return enc
    zeros = float(np.count_nonzero(np.asarray(values) == 0)) / max(np.size(values), 1)
    return enc.sparse(zeros) if zeros > 0 else None


__all__ = ["carried_encoding", "METHODS", "Pattern", "mask_from_score", "magnitude", "wanda", "sparsegpt"]
