"""qmatmul_dynamic by a group-wise weight of 1- or 2-bit codes on a few rows, by table lookup (``lut.py``): the
input quantized to u8 rows at run time (``ops_amx.quantized_rows``), the rows' subset-sum tables and group sums
(``lut.tables_func``), then the lookup kernel over the bit-plane stream packed here. Bit-exact with the reference
(``quant.scheme.grouped_dynamic_rescale``), as the nibble kernel (``ops_w4``); ``kernels.py`` decides which applies
(``lut_codes`` says why not).
"""
from __future__ import annotations

import numpy as np

from ..quant.scheme import group_shape, storage_range
from . import lut, ops_amx
from .lowering import padded_bias


def _weight(op):
    """(codes [K, N], zero points [ng, N], scales [ng, N] f32, storage range (lo, hi)) of the group-wise weight."""
    q, shape = op.operands[1].type.quant, op.operands[1].type.shape
    grid = group_shape(q, shape)
    return (np.asarray(op.operands[1].const_value), q.zero_point_array().reshape(grid),
            q.scale_array().reshape(grid).astype(np.float32), storage_range(op.operands[1].type.dtype, q))


def lut_codes(op) -> str | None:
    """Why the lookup kernel cannot take the op (None: it can): codes spanning at most 4 values (2 bit planes),
    no codebook, groups a multiple of 16 up to ``lut.MAX_GROUP``, at most ``lut.MAX_ROWS`` rows."""
    wt = op.operands[1].type
    q = wt.quant
    if q.codebook is not None:
        return "a codebook weight (its values are not bit planes of the codes)"
    lo, hi = storage_range(wt.dtype, q)
    planes = lut.planes_of(hi - lo + 1)
    if planes is None:
        return f"{wt.dtype.name} codes span {hi - lo + 1} values, the lookup kernel takes at most 4 (2 bits)"
    w, zw = np.asarray(op.operands[1].const_value), q.zero_point_array()
    for what, a in (("codes", w), ("zero points", zw)):
        if a.size and (a.min() < lo or a.max() >= lo + (1 << planes)):
            return f"{what} outside {lo}..{lo + (1 << planes) - 1}: not {planes}-bit planes"
    if q.group % lut.CHUNK or q.group > lut.MAX_GROUP:
        return f"group {q.group} is not a multiple of {lut.CHUNK} up to {lut.MAX_GROUP}"
    m = int(np.prod(op.operands[0].type.shape[:-1]))
    if m > lut.MAX_ROWS:
        return f"{m} rows: the tables and lookups cost per row, more than {lut.MAX_ROWS} go to the nibble kernel"
    return None


def qmatmul_dynamic_lut(L, op):
    """On AVX-512 BW + VNNI: the u8 rows (K padded to whole groups with zeros), their tables, ``lut.matmul_func``."""
    from tvm import relax

    xt, rt = op.operands[0].type, op.result.type
    w, zw, sw, (lo, hi) = _weight(op)
    planes = lut.planes_of(hi - lo + 1)
    k, n = w.shape
    group = op.operands[1].type.quant.group
    per_row = op.attrs["per_row"]
    m = int(np.prod(xt.shape[:-1]))
    kp = -(-k // group) * group
    ng = kp // group
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, kp, per_row)
    tables = L.emit(relax.call_tir(L.add_func(lut.tables_func(m, k, kp, group, per_row), "lowbit_lut_tables"),
                                   relax.Tuple([xq, zp]), [relax.TensorType((m, kp // 4, 32), "uint8"),
                                                           relax.TensorType((m, ng), "int32")]))
    tb, xs = (L.emit(relax.TupleGetItem(tables, i)) for i in range(2))
    nv = -(-n // lut.columns(planes))
    func = lut.matmul_func(m, k, kp, n, group, planes, per_row, rt.shape, tasks=L.knob("vnni_tasks", op))
    args = [tb, xs, sc, zp, L.const(lut.stream(w, zw, lo, planes, group, sw)),
            L.const(padded_bias(op, n, nv * lut.columns(planes)))]
    return L.call_tir(func, f"lowbit_qmatmul_w{planes}_lut", args, rt.shape, "float32")


__all__ = ["lut_codes", "qmatmul_dynamic_lut"]
