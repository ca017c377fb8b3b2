"""Element types of lowbit tensors and their numpy / ml_dtypes storage.

>>> from lowbit.ir.dtypes import DType
>>> DType.parse("i4").bits, DType.parse("i4").signed
(4, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DType:
    """An element type: its IR name, bit width, kind and numpy storage type. The storage type is a numpy
    type's name or an ``ml_dtypes`` type's name; ml_dtypes is imported the first time one of its types is
    asked for (its import takes most of a second, which every ``lowbit opt`` would pay)."""

    name: str
    bits: int
    kind: str  # "float", "int", "uint" or "bool"
    storage: str = field(repr=False)

    @property
    def np_dtype(self) -> np.dtype:
        got = _NP.get(self.storage)
        if got is None:
            if self.storage.startswith("ml_dtypes."):
                import ml_dtypes

                got = np.dtype(getattr(ml_dtypes, self.storage.split(".", 1)[1]))
            else:
                got = np.dtype(self.storage)
            _NP[self.storage] = got
        return got

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def signed(self) -> bool:
        return self.kind in ("int", "float")

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"

    @staticmethod
    def parse(name: str) -> "DType":
        try:
            return _BY_NAME[name]
        except KeyError:
            raise ValueError(f"unknown dtype '{name}' (known: {', '.join(_BY_NAME)})") from None

    @staticmethod
    def from_numpy(dtype) -> "DType":
        dtype = np.dtype(dtype)
        builtin = dtype.type.__module__ == "numpy"  # ml_dtypes' types come from ml_dtypes (already imported)
        for d in _BY_NAME.values():
            if d.storage.startswith("ml_dtypes.") == (not builtin) and d.np_dtype == dtype:
                return d
        raise ValueError(f"numpy dtype {dtype} has no lowbit equivalent")

    def iinfo(self) -> tuple[int, int]:
        """(min, max) of an integer type."""
        if not self.is_integer:
            raise ValueError(f"{self.name} is not an integer type")
        if self.kind == "int":
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


_NP: dict[str, np.dtype] = {}


def _d(name, bits, kind, storage):
    return DType(name, bits, kind, storage)


f32 = _d("f32", 32, "float", "float32")
f16 = _d("f16", 16, "float", "float16")
bf16 = _d("bf16", 16, "float", "ml_dtypes.bfloat16")
f8e4m3 = _d("f8e4m3", 8, "float", "ml_dtypes.float8_e4m3fn")
f8e5m2 = _d("f8e5m2", 8, "float", "ml_dtypes.float8_e5m2")
f64 = _d("f64", 64, "float", "float64")
i64 = _d("i64", 64, "int", "int64")
i32 = _d("i32", 32, "int", "int32")
i16 = _d("i16", 16, "int", "int16")
i8 = _d("i8", 8, "int", "int8")
u8 = _d("u8", 8, "uint", "uint8")
i4 = _d("i4", 4, "int", "ml_dtypes.int4")
u4 = _d("u4", 4, "uint", "ml_dtypes.uint4")
boolean = _d("bool", 1, "bool", "bool")

_BY_NAME = {d.name: d for d in (f32, f16, bf16, f8e4m3, f8e5m2, f64, i64, i32, i16, i8, u8, i4, u4, boolean)}
ALL = tuple(_BY_NAME.values())
