"""qmatmul_dynamic by a sparse i8 per-column weight on AVX-512 VNNI + VBMI2: the input quantized to u8 rows at
run time (``ops_amx.quantized_rows``, K padded to 4, as the dense VNNI kernel), then ``sparse.py``'s kernel over
the weight's nonzeros (masks, packed bytes, block starts). Bit-exact against the dense kernel and the reference
(the same exact i32 sums and the same rescale expression). ``kernels.py`` decides when it applies:
``gain_reason`` says why not (the weight carries no sparsity encoding, too many rows, too few zero bytes).

>>> from lowbit.codegen.ops_sparse import bytes_reason
>>> w = np.zeros((64, 32), np.int8); w[::2] = 1       # half the bytes zero
>>> bytes_reason(w, 64) is None
True
>>> w[1::4] = 1                                        # a quarter zero
>>> bytes_reason(w, 64)
'the sparse format would store 0.908 of the dense bytes (25 % zero bytes), the bar is 0.8'
"""
from __future__ import annotations

import numpy as np

from . import ops_amx, sparse
from .ops_int import dynamic_weights


def bytes_reason(weight: np.ndarray, kp: int) -> str | None:
    """Why the sparse format would not stream few enough bytes for a [K, N] i8 weight (None: it would)."""
    stored, dense = sparse.stored_bytes(weight, kp)
    if stored <= sparse.MAX_BYTES_FRACTION * dense:
        return None
    zeros = 1 - np.count_nonzero(weight) / (dense or 1)
    return (f"the sparse format would store {stored / dense:.3g} of the dense bytes ({zeros:.0%} zero bytes), "
            f"the bar is {sparse.MAX_BYTES_FRACTION}").replace("%", " %")


def gain_reason(L, op) -> str | None:
    """Why the sparse kernel would not beat the dense one on ``op`` (None: the bytes model says it would): the
    weight's type must say it is sparse (an encoding), the matmul must be memory-bound (at most
    ``sparse.MAX_ROWS`` rows) and the packed nonzeros, masks and starts at most ``MAX_BYTES_FRACTION`` of the
    dense bytes."""
    wv = op.operands[1]
    enc = wv.type.encoding
    if enc is None or enc.kind not in ("sparse", "nm", "block"):
        return "the weight's type has no sparsity encoding" if enc is None else f"the weight's encoding is {enc}"
    if not wv.is_const or wv.type.dtype.name != "i8":
        return f"the weight is {'not a constant' if not wv.is_const else wv.type.dtype.name}, needs i8"
    m = int(np.prod(op.operands[0].type.shape[:-1]))
    if m > sparse.MAX_ROWS:
        return f"{m} rows, the sparse kernel pays only memory-bound (at most {sparse.MAX_ROWS} rows)"
    weight = np.asarray(wv.const_value)
    return bytes_reason(weight, (weight.shape[0] + 3) // 4 * 4)


def qmatmul_dynamic(L, op, rows_pass: bool):
    """qmatmul_dynamic on ``sparse.matmul_func``: the u8 rows, the weight in the sparse format, the dense VNNI
    kernel's epilogue constants (column sums, scales, bias padded to whole 16-column blocks)."""
    xt, rt = op.operands[0].type, op.result.type
    weight, sw, wsum = dynamic_weights(op)
    k, nn = weight.shape
    m = int(np.prod(xt.shape[:-1]))
    kp = (k + 3) // 4 * 4
    n16 = -(-nn // 16) * 16
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, kp, rows_pass)
    packed = sparse.pack(np.asarray(weight).astype(np.int8), kp)
    bias = op.operands[2].const_value.astype(np.float32) if len(op.operands) > 2 else np.zeros(nn, np.float32)
    func = sparse.matmul_func(m, kp, nn, packed.stream.size, op.attrs["per_row"], rt.shape,
                              rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op))
    args = [xq, zp, sc, L.const(packed.stream), L.const(packed.masks), L.const(packed.starts),
            L.const(np.pad(wsum, (0, n16 - nn))), L.const(np.pad(np.ascontiguousarray(sw), (0, n16 - nn))),
            L.const(np.pad(bias, (0, n16 - nn)))]
    return L.call_tir(func, "lowbit_qmatmul_dynamic_sparse", args, rt.shape, "float32")


__all__ = ["qmatmul_dynamic", "gain_reason", "bytes_reason"]
