"""What every lowering rule shares: the rule table (``RULES``: one rule per IR op), the ``Lowerer`` a rule
receives (the Relax block builder, the target, the codegen knobs, the values' layouts) and small helpers.

A rule is ``fn(L, op, *operands) -> Relax expr`` registered with ``@rule("opname")``: Relax's own ops where
their semantics are exactly the IR's, TE (``L.te_``) where they are not. Ops with several implementations
(integer kernels on AMX, VNNI, ...) are chosen in ``kernels.py``; the driver is ``lower.py``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import dtypes as dt

RULES: dict[str, Callable] = {}
# ops whose rule builds a float result from Relax ops that take any shape (no TE with the op's own shape), so an
# elementwise one computes the same on a value in another layout (the channel-blocked form, ``layout.py``)
LAYOUT_AGNOSTIC: set[str] = set()
# ops the code generator refuses, by name, with the reason (``lowering_table``)
REFUSED: dict[str, str] = {}
SUPPORTED_DTYPES = {dt.f32, dt.f16, dt.bf16, dt.f64, dt.i64, dt.i32, dt.i16, dt.i8, dt.u8, dt.boolean}


TABLE_MIN_ELEMENTS = 1024  # smaller i8 constants stay in the library


def table_codes(a: np.ndarray, values: np.ndarray) -> bytes:
    """An i8 array of at most 16 distinct ``values`` (sorted) as 4-bit indices, two per byte, low nibble first
    (``lowbit.runtime.table_weight`` reverses it)."""
    idx = np.searchsorted(values, a.ravel()).astype(np.uint8)
    if idx.size % 2:
        idx = np.append(idx, np.uint8(0))
    return (idx[0::2] | (idx[1::2] << 4)).astype(np.uint8).tobytes()


def rule(*names, layout_agnostic: bool = False):
    """Register ``fn(L, op, *operands)`` as the lowering of IR ops ``names``; ``layout_agnostic`` says it never
    uses the op's shape (see ``LAYOUT_AGNOSTIC``)."""
    def deco(fn):
        for n in names:
            RULES[n] = fn
            if layout_agnostic:
                LAYOUT_AGNOSTIC.add(n)
        return fn
    return deco


class Lowerer:
    """A rule's view of the lowering: ``bb`` (Relax BlockBuilder), ``target`` (a ``Target``), ``config``
    (``CodegenConfig``), shorthands for Relax/TE/TIR, and the operand getters of the driver (``get`` plain
    NCHW, ``get_nhwc``, ``is_nhwc``)."""

    def __init__(self, bb, target, config):
        from tvm import relax, te
        import tvm.tirx as tir

        self.bb, self.relax, self.R, self.te, self.tir = bb, relax, relax.op, te, tir
        self.target, self.config = target, config
        self.funcs: list = []  # GlobalVars of the PrimFuncs emitted for the op being lowered
        self.get = self.get_nhwc = self.is_nhwc = None  # set by the driver

    def knob(self, name: str, op):
        """Codegen knob ``name`` for ``op`` (its per-kernel setting, else the model's)."""
        return self.config.knob(name, op.loc)

    def const(self, array, dtype=None, table: bool = True):
        """A Relax constant of ``array`` — or, where the driver collects table weights (``to_relax``'s
        ``table_weights``) and ``table`` allows, a parameter of main for an i8 array of at most 16 values."""
        a = np.asarray(array)
        if dtype is not None:
            a = a.astype(dtype)
        tables = getattr(self, "tables", None)
        if table and tables is not None and a.dtype == np.int8 and a.size >= TABLE_MIN_ELEMENTS:
            values = np.unique(a)
            if len(values) <= 16:  # stored as 4-bit indices into these values (``table_codes``), a param of main
                var = self.relax.Var(f"lowbit_table_{len(tables)}", self.relax.TensorType(list(a.shape), "int8"))
                tables.append((var, a, values))
                self.const_bytes = getattr(self, "const_bytes", 0) + (a.size + 1) // 2 + values.size
                return var
        self.const_bytes = getattr(self, "const_bytes", 0) + a.nbytes  # what the op's kernel stores (manifest)
        return self.relax.const(a, str(a.dtype))

    def scalar(self, value, dtype: str):
        return self.relax.const(np.asarray(value, dtype=dtype), dtype)

    def emit(self, expr):
        # an alias binding (``lv1 = lv``) would hide the producer from FuseOps: return Vars as they are
        return expr if isinstance(expr, self.relax.Var) else self.bb.emit(expr)

    def te_(self, fn, *args, name="lowbit_te"):
        var = self.bb.emit_te(fn, *args, primfunc_name_hint=name)
        call = self.bb.lookup_binding(var)
        if call is not None:
            self.funcs.append(call.args[0])
        return var

    def add_func(self, func, name: str):
        """Add a hand-written PrimFunc; returns its GlobalVar."""
        gv = self.bb.add_func(func.without_attr("global_symbol"), name)
        self.funcs.append(gv)
        return gv

    def call_tir(self, func, name: str, args, out_shape, out_dtype: str):
        """Call a hand-written PrimFunc on ``args`` with one result of ``out_shape`` / ``out_dtype``."""
        relax = self.relax
        gv = self.add_func(func, name)
        return relax.call_tir(gv, relax.Tuple(list(args)), relax.TensorType(tuple(out_shape), out_dtype))


def np_dtype(t) -> str:
    """The numpy/TVM dtype name of a TensorType's elements."""
    return t.dtype.np_dtype.name if t.dtype != dt.boolean else "bool"


def padded_bias(op, n: int, size: int) -> np.ndarray:
    """The op's constant bias (operand 2; zeros without one) as f32 [size], its n values first, zeros after (a
    kernel's padded output channels)."""
    b = np.zeros(size, np.float32)
    if len(op.operands) > 2:
        b[:n] = op.operands[2].const_value.astype(np.float32).reshape(-1)
    return b


def bcast(T, idx, out_shape):
    """Index tensor T (numpy-broadcast to out_shape) at output index idx."""
    off = len(out_shape) - len(T.shape)
    return T[tuple(0 if int(T.shape[k]) == 1 else idx[k + off] for k in range(len(T.shape)))]
