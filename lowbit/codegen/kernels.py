"""Kernels chosen from an ordered table, with reasons.

For each op with several implementations, ``TABLE[opname]`` lists the candidates fastest first. Each has a
``check(L, op)`` that returns why it does not apply (None when it does) and a ``lower(L, op)`` that emits it;
the first that applies is taken. ``choose`` returns the choice and, for every candidate passed over before it,
the reason — the manifest records both, and ``lowbit inspect`` lists them ("amx-conv: target has no
amx_int8"). Families are picked from the target's features, never CPU names, so turning a feature off
(``"mattr": ["-amx-int8"]``) makes any machine build the next family.

A kernel's ``layout`` is the layout of its result: ``nhwc`` kernels form the region that stays NHWC between
AMX and VNNI convolutions (a pixel's channels are a tile row), integer or bf16; other consumers get NCHW back
once.

>>> [k.name for k in TABLE["qconv2d"]][:3]
['amx-1x1-rows', 'amx-conv', 'vnni-nhwc']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir import dtypes as dt
from . import ops_amx, ops_bf16, ops_int, ops_lut, ops_sparse, ops_vnni, ops_w4, vnni, w4f
from .lowering import RULES, np_dtype


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op: ``name``, ``check(L, op) -> reason | None``, ``lower(L, op) -> expr``,
    and the ``layout`` ("nchw" or "nhwc") of the value it produces."""

    name: str
    check: Callable
    lower: Callable
    layout: str = "nchw"


def _all(*checks):
    def check(L, op):
        for c in checks:
            why = c(L, op)
            if why:
                return why
        return None
    return check


def _feature(flag: str):
    return lambda L, op: None if L.target.has(flag) else f"target has no {flag}"


def _u8_input(L, op):
    return None if op.operands[0].type.dtype == dt.u8 else f"input is {op.operands[0].type.dtype.name}, needs u8"


def _dense(L, op):
    return None if op.attrs["groups"] == 1 else f"groups={op.attrs['groups']}, needs 1"


def _depthwise(L, op):
    c, o, g = op.operands[0].type.shape[1], op.result.type.shape[1], op.attrs["groups"]
    return None if g == c == o and g > 1 else f"groups={g} of {c} channels is not depthwise"


def _input_nhwc(L, op):
    return None if L.is_nhwc(op.operands[0]) else "its input is not in an NHWC integer region"


def _pointwise(L, op):
    a, kh, kw = op.attrs, *op.operands[1].type.shape[2:]
    if (kh, kw) != (1, 1) or tuple(a["strides"]) != (1, 1) or any(a["pads"]):
        return f"kernel {kh}x{kw} stride {a['strides'][0]}, needs 1x1 stride 1 without padding"
    return None


def _f32_exact(L, op):
    """The NHWC depthwise kernel sums in f32: exact while every partial sum stays below 2^24."""
    kh, kw = op.operands[1].type.shape[2:]
    bias = ops_int.conv_folded_bias(op)
    bound = np.abs(bias).max() + kh * kw * 255 * 128
    return None if bound < 2 ** 24 else f"partial sums may reach {bound}, not exact in f32"


def _small_planes(L, op):
    a = op.attrs
    (pt, pl, pb, pr), (sh, sw) = a["pads"], a["strides"]
    h, w = op.operands[0].type.shape[2:]
    limit = L.knob("depthwise_plane_elements", op)
    if sh != sw:
        return "unequal strides"
    if (h + pt + pb) * (w + pl + pr) > limit:
        return f"padded plane {(h + pt + pb) * (w + pl + pr)} elements > depthwise_plane_elements={limit}"
    return None


def _channels16(L, op):
    o = op.result.type.shape[1]
    return None if o % 16 == 0 else f"{o} output channels, needs a multiple of 16"


def _columns16(L, op):
    n = op.operands[1].type.shape[1]
    return None if n % 16 == 0 else f"{n} output columns, needs a multiple of 16"


def _per_row(L, op):
    return None if op.attrs["per_row"] else "per-tensor parameters"


def _rank4(L, op):
    return None if op.result.type.rank == 4 else "not a rank-4 (image) tensor"


def _pool_int(L, op):
    a = op.attrs
    if not op.result.type.dtype.is_integer:
        return "float values"
    if a["ceil_mode"]:
        return "ceil_mode"
    return None


def _pool_rows(L, op):
    a = op.attrs
    kh, kw = a["kernel"]
    if tuple(a["dilations"]) != (1, 1):
        return "dilated"
    if not all(p < k for p, k in zip(a["pads"], (kh, kw, kh, kw))):
        return "padding as wide as the window"
    return None


ELEMENTWISE_NHWC = ("quantize", "dequantize", "add", "sub", "mul", "max", "min", "relu", "clip")


def _elementwise_nhwc_ok(L, op):
    rt = op.result.type
    for v in op.operands:
        if not (v.type.shape == rt.shape or (v.type.size == 1 and v.is_const)):
            return f"operand {v.name or '?'} of shape {list(v.type.shape)} does not broadcast per pixel"
        if v.type.quant is not None and v.type.quant.axis is not None:
            return "per-channel quantization"
    if rt.quant is not None and rt.quant.axis is not None:
        return "per-channel quantization"
    return None


def _elementwise_nhwc(L, op):
    from ..ir.types import TensorType

    rt = op.result.type
    nhwc_shape = (rt.shape[0], rt.shape[2], rt.shape[3], rt.shape[1])
    args = [L.get_nhwc(v) if v.type.shape == rt.shape else L.const(v.const_value.reshape(()))
            for v in op.operands]
    if op.opname == "quantize":
        return ops_int.quantize_expr(L, args[0], TensorType(nhwc_shape, rt.dtype, rt.quant))
    return RULES[op.opname](L, op, *args)


def _depthwise_nhwc(L, op):
    from .rows import depthwise_conv_nhwc

    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    weight = op.operands[1].const_value.astype(np.int32)
    o, _, kh, kw = weight.shape
    _, _, oh, ow = rt.shape
    zy, lo, hi = ops_int.requant_params(op)
    # the bias with the input's zero point folded in: the kernel's f32 accumulators start there
    bias_zx = ops_int.conv_folded_bias(op)
    func = depthwise_conv_nhwc((n, h, wd, c), (n, oh, ow, o), (kh, kw), a["strides"], a["pads"], a["dilations"],
                               np_dtype(xt), int(xt.quant.zero_point[0]), np_dtype(rt), zy, lo, hi)
    c16 = -(-o // 16) * 16  # channels padded to whole vectors (weight 0)
    wt = np.zeros((kh, kw, c16), np.float32)
    wt[..., :o] = weight.reshape(o, kh, kw).transpose(1, 2, 0)
    args = [L.get_nhwc(op.operands[0]), L.const(wt), L.const(np.pad(bias_zx, (0, c16 - o)).astype(np.float32)),
            L.const(ops_int.multipliers(op, o))]
    return L.call_tir(func, "lowbit_qconv2d_depthwise_nhwc", args, (n, oh, ow, o), np_dtype(rt))


def _max_pool_nhwc(L, op):
    from .rows import max_pool_nhwc

    a = op.attrs
    xt, rt = op.operands[0].type, op.result.type
    n, c, h, wd = xt.shape
    shape = (rt.shape[0], rt.shape[2], rt.shape[3], rt.shape[1])
    func = max_pool_nhwc((n, h, wd, c), shape, a["kernel"], a["strides"], a["pads"], a["dilations"], np_dtype(xt),
                         xt.dtype.iinfo()[0])
    return L.call_tir(func, "lowbit_max_pool_nhwc", [L.get_nhwc(op.operands[0])], shape, np_dtype(rt))


def _max_pool_rows(L, op):
    from .rows import max_pool

    a = op.attrs
    xt = op.operands[0].type
    func = max_pool(xt.shape, op.result.type.shape, a["kernel"], a["strides"], a["pads"], np_dtype(xt),
                    xt.dtype.iinfo()[0])
    return L.call_tir(func, "lowbit_max_pool_int", [L.get(op.operands[0])], op.result.type.shape, np_dtype(xt))


def _default(L, op):
    return RULES[op.opname](L, op, *[L.get(v) for v in op.operands])


GENERIC = Kernel("generic", lambda L, op: None, _default)
AMX = _feature("amx_int8")
AMX_BF16 = _feature("amx_bf16")
AVX512_BF16 = _feature("avx512_bf16")
VNNI = _feature("avx512_vnni")
AVX_VNNI = _feature("avx_vnni")
VBMI2 = _feature("avx512_vbmi2")  # vpexpandb: the sparse kernel's decode
YMM = vnni.VPDPBUSD_256


def _const_bias(L, op):
    return None if len(op.operands) < 3 or op.operands[2].is_const else "the bias is not a constant"


def _grouped(L, op):
    return None if ops_w4.grouped(op) else "the weight is not group-wise"


def _not_grouped(L, op):
    return "the weight is group-wise" if ops_w4.grouped(op) else None


def _nibbles(L, op):
    return ops_w4.nibble_codes(op)


def _bit_planes(L, op):  # the lookup kernel's zmm vpshufb and vpaddb are AVX-512 BW
    return ops_lut.lut_codes(op) if L.target.has("avx512bw") else "target has no avx512bw"


AVX512 = _feature("avx512f")

TABLE: dict[str, list[Kernel]] = {
    "qconv2d": [
        Kernel("amx-1x1-rows", _all(AMX, _u8_input, _dense, _input_nhwc, _pointwise), ops_amx.qconv2d_1x1_rows, "nhwc"),
        Kernel("amx-conv", _all(AMX, _u8_input, _dense),
               lambda L, op: ops_amx.qconv2d(L, op, y_nhwc=True), "nhwc"),
        Kernel("vnni-nhwc", _all(VNNI, _u8_input, _dense), ops_vnni.qconv2d, "nhwc"),
        Kernel("avx-vnni-nhwc", _all(AVX_VNNI, _u8_input, _dense), lambda L, op: ops_vnni.qconv2d(L, op, YMM), "nhwc"),
        Kernel("depthwise-nhwc", _all(_depthwise, _input_nhwc, _f32_exact), _depthwise_nhwc, "nhwc"),
        Kernel("depthwise-planes", _all(_depthwise, _small_planes),
               lambda L, op: ops_int.qconv2d(L, op, "depthwise-planes")),
        Kernel("depthwise-rows", _depthwise, lambda L, op: ops_int.qconv2d(L, op, "depthwise-rows")),
        Kernel("vnni-dot4", _all(VNNI, _u8_input, _dense, _channels16),
               lambda L, op: ops_int.qconv2d(L, op, "dot4")),
        Kernel("dot4", _all(_u8_input, _dense, _channels16), lambda L, op: ops_int.qconv2d(L, op, "dot4")),
        Kernel("generic", lambda L, op: None, lambda L, op: ops_int.qconv2d(L, op, "generic")),
    ],
    "qmatmul": [
        Kernel("amx", _all(AMX, _u8_input), ops_amx.qmatmul),
        Kernel("vnni", _all(VNNI, _u8_input), ops_vnni.qmatmul),
        Kernel("avx-vnni", _all(AVX_VNNI, _u8_input), lambda L, op: ops_vnni.qmatmul(L, op, YMM)),
        Kernel("generic", lambda L, op: None, ops_int.qmatmul),
    ],
    "qmatmul_dynamic": [
        Kernel("vnni-sparse", _all(_not_grouped, VNNI, VBMI2, _const_bias, ops_sparse.gain_reason),
               lambda L, op: ops_sparse.qmatmul_dynamic(L, op, op.attrs["per_row"])),
        Kernel("lut-w2", _all(_grouped, VNNI, _const_bias, _bit_planes), ops_lut.qmatmul_dynamic_lut),
        Kernel("vnni-w4-sparse", _all(_grouped, VNNI, VBMI2, _const_bias, ops_sparse.w4_gain_reason),
               lambda L, op: ops_sparse.qmatmul_dynamic_w4(L, op, op.attrs["per_row"])),
        Kernel("vnni-w4", _all(_grouped, VNNI, _const_bias, _nibbles),
               lambda L, op: ops_w4.qmatmul_dynamic_vnni(L, op, op.attrs["per_row"])),
        Kernel("grouped-loops", _grouped, ops_w4.qmatmul_dynamic_loops),
        Kernel("amx-rows", _all(_not_grouped, AMX, _columns16, _per_row),
               lambda L, op: ops_amx.qmatmul_dynamic(L, op, True)),
        Kernel("amx", _all(_not_grouped, AMX, _columns16), lambda L, op: ops_amx.qmatmul_dynamic(L, op, False)),
        Kernel("vnni-rows", _all(_not_grouped, VNNI, _const_bias, _per_row),
               lambda L, op: ops_vnni.qmatmul_dynamic(L, op, True)),
        Kernel("vnni", _all(_not_grouped, VNNI, _const_bias), lambda L, op: ops_vnni.qmatmul_dynamic(L, op, False)),
        Kernel("avx-vnni-rows", _all(_not_grouped, AVX_VNNI, _const_bias, _per_row),
               lambda L, op: ops_vnni.qmatmul_dynamic(L, op, True, YMM)),
        Kernel("avx-vnni", _all(_not_grouped, AVX_VNNI, _const_bias),
               lambda L, op: ops_vnni.qmatmul_dynamic(L, op, False, YMM)),
        Kernel("generic", lambda L, op: None, ops_int.qmatmul_dynamic),
    ],
    "matmul": [  # matmul(x, dequantize(w)) by a group-wise constant (w4f.py); every other matmul: its rule
        Kernel("avx512-w4f", _all(w4f.matmul_reason, AVX512, w4f.nibble_reason), w4f.matmul_avx512),
        Kernel("w4f-te", w4f.matmul_reason, w4f.matmul_te),
        GENERIC,
    ],
    "conv2d_bf16": [
        Kernel("amx-bf16", _all(AMX_BF16, _dense), ops_bf16.conv2d_amx, "nhwc"),
        Kernel("avx512-bf16", _all(AVX512_BF16, _dense), ops_bf16.conv2d_avx512, "nhwc"),
        GENERIC,
    ],
    "matmul_bf16": [
        Kernel("amx-bf16", AMX_BF16, ops_bf16.matmul_amx),
        Kernel("avx512-bf16", AVX512_BF16, ops_bf16.matmul_avx512),
        GENERIC,
    ],
    "max_pool2d": [
        Kernel("int-nhwc", _all(_input_nhwc, _pool_int), _max_pool_nhwc, "nhwc"),
        Kernel("int-rows", _all(_pool_int, _pool_rows), _max_pool_rows),
        GENERIC,
    ],
    "global_avg_pool": [
        Kernel("nhwc", _input_nhwc, lambda L, op: L.R.mean(L.get_nhwc(op.operands[0]), axis=[1, 2], keepdims=True),
               "nhwc"),
        GENERIC,
    ],
}
for _name in ELEMENTWISE_NHWC:
    TABLE[_name] = [Kernel("nhwc", _all(_rank4, _input_nhwc, _elementwise_nhwc_ok), _elementwise_nhwc, "nhwc"),
                    GENERIC]


def choose(L, op) -> tuple[Kernel, dict[str, str]]:
    """The first kernel of ``op``'s table that applies, and why each one before it did not."""
    passed = {}
    for k in TABLE.get(op.opname, [GENERIC]):
        why = k.check(L, op)
        if why is None:
            return k, passed
        passed[k.name] = why
    raise AssertionError(f"{op.opname}: no kernel applies, not even the generic one")


__all__ = ["Kernel", "TABLE", "choose", "GENERIC"]
