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

    kinds: ``nm`` (N:M structured sparsity, params (n, m)), ``block`` (block sparsity, params = block
    shape), ``pow2`` (every value is 0 or ±2^k; no params).
    """

    kind: str
    params: tuple[int, ...] = ()

    KINDS = ("nm", "block", "pow2")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown encoding '{self.kind}' (known: {', '.join(self.KINDS)})")

    def __str__(self) -> str:
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
