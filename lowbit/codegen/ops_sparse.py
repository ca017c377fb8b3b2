"""qmatmul_dynamic by a sparse i8 per-column weight on AVX-512 VNNI + VBMI2: the input quantized to u8 rows at
run time (``ops_amx.quantized_rows``, K padded to 4, as the dense VNNI kernel), then ``sparse.py``'s kernel over
the weight's nonzeros (masks, packed bytes, block starts). Bit-exact against the dense kernel and the reference
(the same exact i32 sums and the same rescale expression). ``kernels.py`` decides when it applies:
``gain_reason`` says why not (the weight carries no sparsity encoding, too many rows, too few zero bytes, or it
the model's constants fit the last-level cache, where the kernel is decode-bound: ``sparse``'s notes).

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
    bar = sparse.MAX_BYTES_FRACTION
    stored, dense = sparse.stored_bytes(weight, kp)
    if stored <= bar * dense:
        return None
    zeros = 1 - np.count_nonzero(weight) / (dense or 1)
    return (f"the sparse format would store {stored / dense:.3g} of the dense bytes ({zeros:.0%} zero bytes), "
            f"the bar is {bar}").replace("%", " %")


def model_weight_bytes(op) -> int:
    """Bytes of the constants of ``op``'s graph (each at its type's bits), or of its weight without a graph:
    what a call of the model reads of them, all of it cache-resident between calls when it fits the LLC."""
    g = getattr(op, "graph", None)
    consts = [o.result for o in g.ops if o.opname == "const"] if g is not None else [op.operands[1]]
    return sum(v.type.size * v.type.dtype.bits // 8 for v in consts)


def cache_reason(target, model_bytes: int) -> str | None:
    """Why a model of ``model_bytes`` of constants keeps the dense kernel at any sparsity: they fit ``target``'s
    last-level cache, stay there between calls, and there the sparse kernel is decode-bound (measured slower as
    often as faster: ``sparse``'s notes). None: they do not fit, each layer's weight streams from memory.

    >>> from lowbit.codegen.target import X86Target
    >>> t = X86Target("llvm", "znver4", frozenset(), 2, (), {"l2": 1 << 20, "l3": 32 << 20})
    >>> cache_reason(t, 8 << 20).split(":")[0], cache_reason(t, 40 << 20)
    ("the model's constants (8 MiB) fit the last-level cache (32 MiB)", None)
    """
    llc = (getattr(target, "caches", None) or {}).get("l3", sparse.DEFAULT_LLC)
    if model_bytes < llc:
        return (f"the model's constants ({model_bytes / 2 ** 20:.3g} MiB) fit the last-level cache "
                f"({llc / 2 ** 20:.3g} MiB): cache-resident the sparse kernel is decode-bound, measured 0.68-1.3x "
                f"of dense (AMD EPYC Zen 4)")
    return None


SPARSE_KINDS = ("sparse", "nm", "block")


def _encoding_reason(enc) -> str:
    """Why a weight's encoding does not make it sparse (no encoding, or ``pow2``)."""
    return "the weight's type has no sparsity encoding" if enc is None else f"the weight's encoding is {enc}"


def gain_reason(L, op) -> str | None:
    """Why the sparse kernel would not beat the dense one on ``op`` (None: it would). The weight's type must say
    it is sparse (an encoding), the matmul must be memory-bound (at most ``sparse.MAX_ROWS`` rows), the model's
    constants too large for the target's last-level cache (``cache_reason``: warm, the kernel is decode-bound)
    and the packed nonzeros, masks and starts at most ``MAX_BYTES_FRACTION`` of the dense bytes."""
    wv = op.operands[1]
    enc = wv.type.encoding
    if enc is None or enc.kind not in SPARSE_KINDS:
        return _encoding_reason(enc)
    if not wv.is_const or wv.type.dtype.name != "i8":
        return f"the weight is {'not a constant' if not wv.is_const else wv.type.dtype.name}, needs i8"
    m = int(np.prod(op.operands[0].type.shape[:-1]))
    if m > sparse.MAX_ROWS:
        return f"{m} rows, the sparse kernel pays only memory-bound (at most {sparse.MAX_ROWS} rows)"
    why = cache_reason(L.target, model_weight_bytes(op))
    if why:
        return why
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


def w4_gain_reason(L, op) -> str | None:
    """Why the sparse nibble kernel (``sparse_w4.py``) would not beat the dense one (``vnni-w4``) on ``op``, a
    qmatmul_dynamic by a group-wise weight (None: it would): an encoding, symmetric signed codes (zero points 0,
    no codebook: a zero weight is the code 0), groups a multiple of 8 up to ``sparse_w4.MAX_GROUP``, at most
    ``sparse_w4.MAX_ROWS`` rows, a model too large for the last-level cache (``cache_reason``) and the format at
    most ``sparse_w4.MAX_BYTES_FRACTION`` of the dense nibble kernel's bytes."""
    from ..quant.scheme import storage_range
    from . import sparse_w4

    wv = op.operands[1]
    wt, enc = wv.type, wv.type.encoding
    if enc is None or enc.kind not in SPARSE_KINDS:
        return _encoding_reason(enc)
    q = wt.quant
    lo, hi = storage_range(wt.dtype, q)
    if not wv.is_const or q.codebook is not None or lo < -8 or hi > 7 or any(z != 0 for z in q.zero_point):
        return "the codes are not symmetric signed 4-bit constants (zero points 0, no codebook)"
    if q.group % sparse_w4.STEP or q.group > sparse_w4.MAX_GROUP:
        return f"group {q.group} is not a multiple of {sparse_w4.STEP} up to {sparse_w4.MAX_GROUP}"
    m = int(np.prod(op.operands[0].type.shape[:-1]))
    if m > sparse_w4.MAX_ROWS:
        return f"{m} rows, the sparse nibble kernel pays only memory-bound (at most {sparse_w4.MAX_ROWS} rows)"
    why = cache_reason(L.target, model_weight_bytes(op))
    if why:
        return why
    codes = np.asarray(wv.const_value).astype(np.int64)
    kp = -(-codes.shape[0] // q.group) * q.group
    stored, dense = sparse_w4.stored_bytes(codes, kp, q.group)
    bar = sparse_w4.MAX_BYTES_FRACTION
    if stored <= bar * dense:
        return None
    zeros = 1 - np.count_nonzero(codes) / codes.size
    return (f"the sparse nibble format would store {stored / dense:.3g} of the dense int4 bytes ({zeros:.0%} "
            f"zeros), the bar is {bar}").replace("%", " %")


def qmatmul_dynamic_w4(L, op, rows_pass: bool):
    """qmatmul_dynamic by a sparse group-wise i4 weight on ``sparse_w4.matmul_func``: the u8 rows (K padded to
    whole groups), the nibble stream, masks, starts, the groups' scales and code sums, the bias."""
    from . import sparse_w4
    from .lowering import padded_bias

    xt, rt = op.operands[0].type, op.result.type
    wt = op.operands[1].type
    group = wt.quant.group
    codes = np.asarray(op.operands[1].const_value).astype(np.int64)
    k, n = codes.shape
    ng = -(-k // group)
    kp = ng * group
    m = int(np.prod(xt.shape[:-1]))
    n16 = -(-n // 16) * 16
    xq, sc, zp = ops_amx.quantized_rows(L, op, m, kp, rows_pass)
    scales = wt.quant.scale_array().reshape(ng, n).astype(np.float32)
    p = sparse_w4.pack(codes, kp, group, scales)
    func = sparse_w4.matmul_func(m, kp, n, group, p.stream.size, op.attrs["per_row"], rt.shape,
                                 rows=L.knob("vnni_pixels", op), tasks=L.knob("vnni_tasks", op))
    args = [xq, sc, zp, L.const(p.stream), L.const(p.masks), L.const(p.starts), L.const(p.scales),
            L.const(p.csum), L.const(padded_bias(op, n, n16)), L.const(sparse_w4.SIGN_TABLE)]
    return L.call_tir(func, "lowbit_qmatmul_w4_sparse", args, rt.shape, "float32")


__all__ = ["qmatmul_dynamic", "gain_reason", "bytes_reason", "cache_reason", "model_weight_bytes",
           "w4_gain_reason", "qmatmul_dynamic_w4"]
