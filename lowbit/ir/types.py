"""Tensor types. Quantization parameters and encodings are part of the type, so no pass can lose them.

>>> from lowbit.ir.types import TensorType, QuantParams
>>> from lowbit.ir import dtypes
>>> str(TensorType((1, 64), dtypes.i8, quant=QuantParams((0.5,), (-3,))))
'tensor<1x64xi8, q<0.5:-3>>'
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dtypes import DType


def _fmt_scale(s: float) -> str:
    # Scales are float32 in every format lowbit reads; the shortest float32 text round-trips exactly.
    return str(np.float32(s))


def _fmt_level(v: float) -> str:
    """A codebook value: an integer without a fraction (``-96``), else the shortest float32 text."""
    return str(int(v)) if float(v).is_integer() else str(np.float32(v))


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization: real = (q - zero_point) * scale.

    ``axis`` is None for per-tensor; per-channel has one (scale, zp) per index of ``axis``;
    group-wise additionally splits the other reduction axis into groups of ``group`` elements,
    with scales stored flattened in C order. ``storage`` is the range of stored integers when narrower than
    the dtype's (symmetric i8 weights: ``(-127, 127)``, printed ``range=-127:127``, MLIR's
    ``!quant.uniform<i8<-127:127>:f32, ...>``); None means the dtype's whole range.

    ``codebook`` makes the stored integers indices into a table of values (``lowbit.quant.codebooks``: pow2,
    apot, nf4): real = codebook[q] * scale, the zero points all 0 (printed ``codebook=[v0, v1, ...]`` before
    the parameters); the values are f32, the codes unsigned (``TensorType`` checks that the table covers them).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    group: int | None = None
    storage: tuple[int, int] | None = None
    codebook: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(np.float32(s)) for s in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in self.zero_point))
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError("quantization needs one zero point per scale and at least one scale")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("per-tensor quantization has exactly one scale")
        if self.storage is not None:
            lo, hi = (int(v) for v in self.storage)
            if lo >= hi:
                raise ValueError(f"storage range {lo}:{hi} is empty")
            object.__setattr__(self, "storage", (lo, hi))
        if self.codebook is not None:
            cb = tuple(float(np.float32(v)) + 0.0 for v in self.codebook)  # (+ 0.0: no negative zero)
            if len(cb) < 2 or not all(np.isfinite(cb)):
                raise ValueError(f"a codebook needs at least two finite values, got {list(self.codebook)}")
            if any(self.zero_point):
                raise ValueError("a codebook's zero points must be 0 (real = codebook[q] * scale)")
            object.__setattr__(self, "codebook", cb)

    def integer_codebook(self) -> bool:
        """Whether every codebook value is an integer in [-127, 127] (what integer kernels multiply by)."""
        return self.codebook is not None and all(v.is_integer() and -127 <= v <= 127 for v in self.codebook)

    def scale_array(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float32)

    def zero_point_array(self) -> np.ndarray:
        return np.asarray(self.zero_point, dtype=np.int64)

    def broadcast_shape(self, rank: int) -> tuple[int, ...]:
        """Shape to reshape scale/zp arrays to so they broadcast against a tensor of ``rank``."""
        if self.axis is None:
            return ()
        if self.group is not None:
            raise ValueError("group-wise parameters do not broadcast along a single axis")
        shape = [1] * rank
        shape[self.axis] = len(self.scale)
        return tuple(shape)

    def __str__(self) -> str:
        pairs = ", ".join(f"{_fmt_scale(s)}:{z}" for s, z in zip(self.scale, self.zero_point))
        rng = f"range={self.storage[0]}:{self.storage[1]}, " if self.storage is not None else ""
        cb = "" if self.codebook is None else "codebook=[" + ", ".join(map(_fmt_level, self.codebook)) + "], "
        if self.axis is None:
            return f"q<{rng}{cb}{pairs}>"
        head = f"axis={self.axis}" + (f", group={self.group}" if self.group is not None else "")
        return f"q<{rng}{head}, {cb}[{pairs}]>"


@dataclass(frozen=True)
class Encoding:
    """How a tensor's values are laid out or restricted beyond its dtype.

    kinds:

    - ``sparse`` (unstructured sparsity, printed ``sparse<0.5>``): at least that fraction of the values are zero;
      params ``(basis points,)``, the fraction times 10000, so 0.5 is ``(5000,)``;
    - ``nm`` (N:M structured sparsity, ``nm<2:4>``, params (n, m)): at most n nonzeros in every m consecutive
      values along the reduction axis — axis 0 of a [K, N] matmul weight, the flattened C·kh·kw of an
      [O, C, kh, kw] convolution weight — the last run partial when m does not divide it;
    - ``block`` (block sparsity, ``block<4x1>``, params = the block's shape over (K, N) of the weight's matrix,
      as ``nm``'s axes): the zeros come in whole blocks;
    - ``pow2`` (every value is 0 or ±2^k; no params).

    ``check`` tells whether an array honours the encoding (the verifier asks it of constants).
    """

    kind: str
    params: tuple[int, ...] = ()

    KINDS = ("sparse", "nm", "block", "pow2")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown encoding '{self.kind}' (known: {', '.join(self.KINDS)})")
        object.__setattr__(self, "params", tuple(int(p) for p in self.params))
        p = self.params
        if self.kind == "sparse" and (len(p) != 1 or not 0 <= p[0] <= 10000):
            raise ValueError(f"sparse<ratio> needs a ratio in [0, 1], got {p}")
        if self.kind == "nm" and (len(p) != 2 or not 0 <= p[0] < p[1]):
            raise ValueError(f"nm<n:m> needs 0 <= n < m, got {p}")
        if self.kind == "block" and (len(p) != 2 or min(p) < 1):
            raise ValueError(f"block<RxC> needs two positive sides, got {p}")

    @staticmethod
    def sparse(ratio: float) -> "Encoding":
        """``sparse<ratio>``, the ratio rounded down to a basis point (so the type never claims more zeros)."""
        return Encoding("sparse", (int(np.floor(float(ratio) * 10000 + 1e-9)),))

    @property
    def ratio(self) -> float | None:
        """The fraction of zeros the type guarantees (``sparse``) or implies (``nm``: 1 - n/m); None otherwise."""
        if self.kind == "sparse":
            return self.params[0] / 10000
        if self.kind == "nm":
            return 1.0 - self.params[0] / self.params[1]
        return None

    def check(self, a: np.ndarray) -> str | None:
        """Why ``a`` does not honour the encoding (None: it does). For ``nm`` and ``block`` a rank-2 array is a
        [K, N] matmul weight and a rank-4 one an [O, C, kh, kw] convolution weight (its matrix [C·kh·kw, O])."""
        a = np.asarray(a)
        if self.kind == "pow2":
            v = np.abs(a[a != 0]).astype(np.float64)
            return None if np.all(np.exp2(np.round(np.log2(v))) == v) else "a nonzero value is not a power of two"
        if self.kind == "sparse":
            zeros = int(np.count_nonzero(a == 0))
            need = -(-self.params[0] * a.size // 10000)
            return None if zeros >= need else f"{zeros} of {a.size} values are zero, fewer than {self}'s {need}"
        if a.ndim not in (2, 4):
            return f"{self} applies to a rank-2 or rank-4 weight, not rank {a.ndim}"
        w = a if a.ndim == 2 else a.reshape(a.shape[0], -1).T
        k, n = w.shape
        if self.kind == "nm":
            nn, m = self.params
            pad = np.zeros((-(-k // m) * m - k, n), w.dtype)
            runs = np.count_nonzero(np.concatenate([w, pad]).reshape(-1, m, n), axis=1)
            return None if runs.max(initial=0) <= nn else f"a run of {m} has {int(runs.max())} nonzeros, more than {nn}"
        r, c = self.params
        pad = np.zeros((-(-k // r) * r, -(-n // c) * c), w.dtype)
        pad[:k, :n] = w
        blocks = np.count_nonzero(pad.reshape(pad.shape[0] // r, r, pad.shape[1] // c, c), axis=(1, 3))
        partial = (blocks > 0) & (blocks < r * c)
        if not partial.any():
            return None
        full = np.ones_like(pad, bool)  # blocks cut by the edge: only their in-range values count
        full[k:, :] = full[:, n:] = False
        inside = np.count_nonzero(full.reshape(blocks.shape[0], r, blocks.shape[1], c), axis=(1, 3))
        nz_ok = (blocks == 0) | (blocks == inside)
        return None if nz_ok.all() else f"a {r}x{c} block is partly zero"

    def __str__(self) -> str:
        if self.kind == "sparse":
            return f"sparse<{self.params[0] / 10000:g}>"
        if self.kind == "nm":
            return f"nm<{self.params[0]}:{self.params[1]}>"
        if self.kind == "block":
            return "block<" + "x".join(str(p) for p in self.params) + ">"
        return "pow2"


@dataclass(frozen=True)
class TensorType:
    """A static shape, an element type, and optional quantization parameters and encoding."""

    shape: tuple[int, ...]
    dtype: DType
    quant: QuantParams | None = None
    encoding: Encoding | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        q = self.quant
        if q is not None and q.codebook is not None:  # codes index the table: unsigned, all of them covered
            if self.dtype.kind != "uint":
                raise ValueError(f"codebook codes must be unsigned integers (u4, u8), got {self.dtype.name}")
            bottom, top = q.storage if q.storage is not None else self.dtype.iinfo()
            if bottom != 0 or top >= len(q.codebook):
                raise ValueError(f"{self.dtype.name} codes {bottom}..{top} need to index a codebook of at least "
                                 f"{top + 1} values from 0, got {len(q.codebook)} values")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype, self.quant, self.encoding)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype, None, None)

    def __str__(self) -> str:
        dims = "".join(f"{d}x" for d in self.shape)
        extras = "".join(f", {x}" for x in (self.quant, self.encoding) if x is not None)
        return f"tensor<{dims}{self.dtype.name}{extras}>"
