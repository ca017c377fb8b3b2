"""qmatmul_dynamic by a group-wise low-bit weight (W4A8, also 2-bit codes): the input quantized to u8 rows at
run time (``ops_amx.quantized_rows``), then either ``w4.py``'s VNNI kernel (codes of 4 bits or fewer, groups a
multiple of 8) or a plain loop kernel with the same arithmetic. Both compute the reference's exact group sums
and its in-order fused multiply-adds (``quant.scheme.grouped_dynamic_rescale``). ``kernels.py`` decides which
applies.
"""
from __future__ import annotations

import numpy as np

from ..quant.scheme import group_shape, storage_range
from . import ops_amx, w4
from .lowering import padded_bias


def grouped(op) -> bool:
    q = op.operands[1].type.quant
    return q is not None and q.group is not None


def _codes(op):
    """(codes [K, N] i64, zero points [ng, N], scales [ng, N] f32, storage minimum) of the weight."""
    wt = op.operands[1].type
    q = wt.quant
    grid = group_shape(q, wt.shape)
    w = np.asarray(op.operands[1].const_value).astype(np.int64)
    lo, _ = storage_range(wt.dtype, q)
    return w, q.zero_point_array().reshape(grid), q.scale_array().reshape(grid).astype(np.float32), lo


def _table(op):
    """The weight's integer codebook as 16 i8 values (codes index it), or None without a codebook."""
    cb = op.operands[1].type.quant.codebook
    return None if cb is None else np.asarray(list(cb) + [0] * (16 - len(cb)), np.int64)


def nibble_codes(op) -> str | None:
    """Why the VNNI nibble kernel cannot take the weight (None: it can)."""
    wt = op.operands[1].type
    lo, hi = storage_range(wt.dtype, wt.quant)
    if wt.quant.codebook is not None:
        if len(wt.quant.codebook) > 16 or lo < 0 or hi > 15:
            return f"a codebook of {len(wt.quant.codebook)} values, the nibble kernel's table takes 16"
        if wt.quant.group > w4.MAX_LUT_GROUP:
            return f"group {wt.quant.group} with a codebook: its sums could pass 2^24 (at most {w4.MAX_LUT_GROUP})"
    if hi - lo > 15:
        return f"{wt.dtype.name} codes span {hi - lo + 1} values, the nibble kernel takes 16"
    if wt.quant.group % w4.STEP or wt.quant.group > w4.MAX_GROUP:
        return f"group {wt.quant.group} is not a multiple of {w4.STEP} up to {w4.MAX_GROUP}"
    return None


def qmatmul_dynamic_vnni(L, op, rows_pass: bool):
    """On AVX-512 VNNI: ``w4.matmul_func`` over the u8 rows (K padded to whole groups with zeros)."""
    xt, rt = op.operands[0].type, op.result.type
    w, zw, sw, lo = _codes(op)
    k, n = w.shape
    group = op.operands[1].type.quant.group
    m = int(np.prod(xt.shape[:-1]))
    kp = -(-k // group) * group
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, kp, rows_pass)
    table = _table(op)
    stream = w4.nibbles(w, zw, lo, group, sw, table)
    n16 = stream.shape[0] * 16
    func = w4.matmul_func(m, k, kp, n, group, op.attrs["per_row"], rt.shape, rows=L.knob("vnni_pixels", op),
                          tasks=L.knob("vnni_tasks", op), lut=table is not None)
    lut = np.tile(table if table is not None else np.arange(16), 4).astype(np.int8)  # each 128-bit lane's table
    args = [xq, sc, zp, L.const(stream), L.const(padded_bias(op, n, n16)), L.const(lut)]
    return L.call_tir(func, "lowbit_qmatmul_w4_vnni", args, rt.shape, "float32")


def _loop_func(m: int, kp: int, k: int, n: int, ng: int, group: int, per_row: bool, out_shape):
    """The plain kernel: per output, the exact i32 sum of each group, then one fused multiply-add per group."""
    from tvm.script import tirx as T

    prm = m if per_row else 1
    f32 = "float32"

    @T.prim_func
    def func(XQ: T.Buffer((m, kp), "uint8"), SC: T.Buffer((prm,), f32), ZP: T.Buffer((prm,), "int32"),
             W: T.Buffer((k, n), "int32"), ZW: T.Buffer((ng, n), "int32"), SW: T.Buffer((ng, n), f32),
             BIAS: T.Buffer((n,), f32), YP: T.Buffer(out_shape, f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        Y = T.decl_buffer((m * n,), f32, data=YP.data)
        for i in T.parallel(m):
            for j in range(n):
                acc = T.decl_buffer((2,), f32, scope="local")
                s = T.decl_buffer((1,), "int32", scope="local")
                r = i if per_row else 0
                acc[0] = BIAS[j]
                for g in range(ng):
                    s[0] = 0
                    for kk in range(T.min(group, k - g * group)):
                        s[0] = s[0] + (T.Cast("int32", XQ[i, g * group + kk]) - ZP[r]) * (W[g * group + kk, j] - ZW[g, j])
                    acc[0] = T.call_llvm_pure_intrin(f32, "llvm.fma", T.Cast(f32, s[0]), SC[r] * SW[g, j], acc[0])
                Y[i * n + j] = acc[0]
    return func


def qmatmul_dynamic_loops(L, op):
    """Anywhere: the u8 rows, then ``_loop_func`` (slow, exact: for targets without VNNI and odd groups)."""
    xt, rt = op.operands[0].type, op.result.type
    w, zw, sw, _ = _codes(op)
    table = _table(op)
    if table is not None:  # codebook values are the integer weights (zero points 0)
        w = table[w]
    k, n = w.shape
    group = op.operands[1].type.quant.group
    m = int(np.prod(xt.shape[:-1]))
    ng = zw.shape[0]
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, k, False)
    func = _loop_func(m, k, k, n, ng, group, op.attrs["per_row"], rt.shape)
    bias = op.operands[2] if len(op.operands) > 2 else None
    args = [xq, sc, zp, L.const(w.astype(np.int32)), L.const(zw.astype(np.int32)), L.const(sw),
            L.get(bias) if bias is not None and not bias.is_const else L.const(padded_bias(op, n, n))]
    return L.call_tir(func, "lowbit_qmatmul_grouped", args, rt.shape, "float32")


__all__ = ["grouped", "nibble_codes", "qmatmul_dynamic_vnni", "qmatmul_dynamic_loops"]
