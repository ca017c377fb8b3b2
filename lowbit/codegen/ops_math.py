"""Lowering rules of the math ops added for ONNX coverage (issue 14)."""
from __future__ import annotations

from .lowering import bcast, np_dtype, rule

_TRIG = ("sinh", "cosh", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh")


@rule(*(n for n in _TRIG if n not in ("sinh", "cosh")), layout_agnostic=True)
def _trig(L, op, x):
    return getattr(L.R, op.opname)(x)


@rule("sinh", "cosh")
def _hyperbolic(L, op, x):
    """The C library's sinhf / coshf (sinh / cosh for f64; f16 and bf16 through f32): TVM has no lowering of
    its own for them, and (e^x -+ e^-x) / 2 loses the relative precision of sinh near 0."""
    shape = op.result.type.shape
    d = np_dtype(op.result.type)
    wide = "float64" if d == "float64" else "float32"
    fname = op.opname + ("" if wide == "float64" else "f")
    tir = L.tir

    def fn(X):
        return L.te.compute(shape, lambda *i: tir.call_pure_extern(wide, fname, X[i].astype(wide)).astype(d))
    return L.te_(fn, x, name=f"lowbit_{op.opname}")


@rule("is_nan", layout_agnostic=True)
def _is_nan(L, op, x):
    return L.R.isnan(x)


@rule("mod")
def _mod(L, op, a, b):
    """C fmod for floats (f16 through f32, where the exact remainder is representable); for integers the
    divisor -1 (whose remainder is always 0, where INT_MIN % -1 would trap) and 0 (an error the reference
    reports) become 1, then the truncating or flooring remainder."""
    shape = op.result.type.shape
    d = np_dtype(op.result.type)
    tir = L.tir
    is_float = op.result.type.dtype.is_float
    floor = not op.attrs["fmod"]

    def fn(A, B):
        def body(*i):
            x, y = bcast(A, i, shape), bcast(B, i, shape)
            if is_float:
                wide = "float32" if d in ("float16", "bfloat16") else d
                return tir.truncmod(x.astype(wide), y.astype(wide)).astype(d)  # LLVM frem: C fmod
            one = tir.const(1, d)
            bad = y == tir.const(0, d)
            if op.result.type.dtype.signed:
                bad = tir.any(bad, y == tir.const(-1, d))
            y = tir.Select(bad, one, y)
            return tir.floormod(x, y) if floor else tir.truncmod(x, y)
        return L.te.compute(shape, body)
    return L.te_(fn, a, b, name="lowbit_mod")


@rule("bit_shift")
def _bit_shift(L, op, a, b):
    shape = op.result.type.shape
    d = np_dtype(op.result.type)
    bits = op.result.type.dtype.bits
    tir = L.tir
    left = op.attrs["direction"] == "left"

    def fn(X, Y):
        def body(*i):
            x, y = bcast(X, i, shape), bcast(Y, i, shape)
            ok = y < tir.const(bits, d)
            s = tir.Select(ok, y, tir.const(0, d))  # LLVM's shifts by >= the width are poison
            r = tir.shift_left(x, s) if left else tir.shift_right(x, s)
            return tir.Select(ok, r, tir.const(0, d))
        return L.te.compute(shape, body)
    return L.te_(fn, a, b, name="lowbit_bit_shift")


@rule("cumsum")
def _cumsum(L, op, x):
    a = op.attrs
    ax = a["axis"] % op.result.type.rank
    d = np_dtype(op.result.type)
    if a["reverse"]:
        x = L.emit(L.R.flip(x, axis=ax))
    y = L.R.cumsum(x, axis=ax, dtype=d, exclusive=a["exclusive"])
    return L.R.flip(L.emit(y), axis=ax) if a["reverse"] else y
