"""ONNX converters for quantization: QuantizeLinear and DequantizeLinear (per-tensor and per-axis), ConvInteger,
onnxruntime's DynamicQuantizeMatMul and MatMulNBits (group-wise low-bit weights)."""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.types import QuantParams, TensorType
from ..quant.scheme import NARROW_I8
from .onnx_ctx import Ctx, NodeError, converter, norm_axis, onnx_dtype, reshape_to
from .onnx_nn import convolution


# -- quantization -------------------------------------------------------------------------------------------------
def _qparams(c: Ctx, x_shape, scale_idx, zp_idx, axis_attr, default_zp_dtype):
    scale = np.asarray(c.const(scale_idx, "scale"))
    zp_v = c.inp(zp_idx)
    zp = np.zeros(scale.shape, default_zp_dtype.np_dtype) if zp_v is None else np.asarray(c.const(zp_idx, "zero_point"))
    if scale.dtype != np.float32:
        raise NodeError(f"scale of dtype {scale.dtype} is not supported (float32 is)")
    qdtype = default_zp_dtype if zp_v is None else zp_v.type.dtype
    if qdtype not in (dt.u8, dt.i8, dt.i16, dt.i32, dt.u4, dt.i4):
        raise NodeError(f"quantized type {qdtype.name} is not supported")
    if scale.size == 1 and scale.ndim <= 1:  # a 1-element vector is per-tensor, as onnxruntime reads it
        return QuantParams((float(scale.reshape(-1)[0]),), (int(zp.reshape(-1)[0]),)), qdtype
    if scale.ndim != 1:
        raise NodeError("block-wise quantization parameters are not supported")
    axis = norm_axis(axis_attr, len(x_shape))
    if x_shape[axis] != scale.size:
        raise NodeError(f"{scale.size} scales do not match axis {axis} of shape {x_shape}")
    return QuantParams(tuple(scale.tolist()), tuple(zp.reshape(-1).tolist()), axis), qdtype


@converter("QuantizeLinear")
def _quantize(c: Ctx):
    a = c.attrs(axis=1, saturate=1, block_size=0, output_dtype=0)
    if a["block_size"]:
        raise NodeError("block-wise quantization (block_size) is not supported")
    x = c.need(0, "x")
    if x.type.dtype != dt.f32:
        raise NodeError(f"quantizing {x.type.dtype.name} is not supported (f32 is)")
    default = onnx_dtype(a["output_dtype"], "output_dtype") if a["output_dtype"] else dt.u8
    q, qdtype = _qparams(c, x.type.shape, 1, 2, a["axis"], default)
    return c.op("quantize", [x], result_types=[TensorType(x.type.shape, qdtype, q)])


@converter("DequantizeLinear")
def _dequantize(c: Ctx):
    a = c.attrs(axis=1, block_size=0, output_dtype=0)
    if a["block_size"]:
        raise NodeError("block-wise quantization (block_size) is not supported")
    if a["output_dtype"] not in (0, 1):
        raise NodeError("output_dtype other than float32 is not supported")
    x = c.need(0, "x")
    q, qdtype = _qparams(c, x.type.shape, 1, 2, a["axis"], x.type.dtype)
    if qdtype != x.type.dtype:
        raise NodeError(f"zero point dtype {qdtype.name} differs from input dtype {x.type.dtype.name}")
    qtype = TensorType(x.type.shape, x.type.dtype, q)
    if x.is_const:  # a quantized weight: its parameters move into the constant's type
        x = c.const_value(x.const_value, type=qtype)
    elif x.producer is None and x.type.quant is None:  # an integer graph input: it is this quantized tensor
        x.type = qtype
    elif x.type.quant != q:
        raise NodeError(f"input '{c.node.input[0]}' is not quantized with this node's scale and zero point "
                        "(only DequantizeLinear of a constant or of a matching QuantizeLinear is supported)")
    return c.op("dequantize", [x])


def _centered_i32(c: Ctx, v, zp_i: int, what: str, channels: int | None):
    """``v`` as i32 minus its zero point (input ``zp_i``: one value, or with ``channels`` one per output channel)."""
    y = c.op("cast", [v], {"to": dt.i32})
    zp = c.inp(zp_i)
    if zp is None:
        return y
    if zp.type.dtype != v.type.dtype:
        raise NodeError(f"{what} of {zp.type.dtype.name} differs from its input's {v.type.dtype.name}")
    if zp.type.size == 1 and zp.type.rank <= 1:
        shape = ()
    elif channels is not None and zp.type.shape == (channels,):
        shape = (channels,) + (1,) * (v.type.rank - 1)
    else:
        per = f" or [{channels}] (one per output channel)" if channels is not None else ""
        raise NodeError(f"{what} of shape {list(zp.type.shape)} is not supported (a scalar{per} is)")
    if zp.is_const and not np.any(np.asarray(zp.const_value)):
        return y
    z = c.op("reshape", [c.op("cast", [zp], {"to": dt.i32})], {"shape": shape})
    return c.op("sub", [y, z])


@converter("ConvInteger")
def _conv_integer(c: Ctx):
    """``Conv(i32(x) - x_zero_point, i32(w) - w_zero_point)`` summed exactly in i32 (wrapping as onnxruntime's i32
    accumulator does); padding contributes 0, as onnxruntime's padding with the zero point does. x and w u8 or
    i8, x_zero_point a scalar, w_zero_point a scalar or one per output channel; 1-D, 2-D and 3-D."""
    a = c.attrs(kernel_shape=None, strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET")
    x, w = c.need(0, "x"), c.need(1, "w")
    for v, what in ((x, "x"), (w, "w")):
        if v.type.dtype not in (dt.u8, dt.i8):
            raise NodeError(f"input {what} of {v.type.dtype.name} is not supported (uint8 and int8 are)")
    if w.type.rank < 3:
        raise NodeError(f"weight shape {list(w.type.shape)} is not [M, C/group, k...]")
    xc = _centered_i32(c, x, 2, "x_zero_point", None)
    wc = _centered_i32(c, w, 3, "w_zero_point", w.type.shape[0])
    return convolution(c, xc, wc, None, a)


@converter("com.microsoft.DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(c: Ctx):
    """x quantized at run time to u8 (onnxruntime's DynamicQuantizeLinear, one scale per tensor) times a constant
    i8 weight with zero point 0: ``qmatmul_dynamic`` without per-row scales; a bias input stays a float add."""
    c.attrs()
    x = c.need(0, "A")
    w = np.asarray(c.const(1, "B"))
    scale = np.asarray(c.const(2, "b_scale")).astype(np.float32)
    zp = c.const(3, "b_zero_point")
    if x.type.dtype != dt.f32:
        raise NodeError(f"input A of {x.type.dtype.name} is not supported (f32 is)")
    if w.dtype != np.int8 or w.ndim != 2:
        raise NodeError(f"weight B must be a 2-D int8 constant, got {w.dtype} {list(w.shape)} (lowbit's integer "
                        "matmul needs i8 weights with zero point 0)")
    if zp is not None and np.any(np.asarray(zp) != 0):
        raise NodeError("a weight zero point other than 0 is not supported (lowbit's integer matmul needs i8 "
                        "weights with zero point 0)")
    n = w.shape[1]
    if scale.size == 1:
        q = QuantParams((float(scale.reshape(-1)[0]),), (0,))
    elif scale.shape in ((n,), (1, n)):
        q = QuantParams(tuple(float(v) for v in scale.reshape(-1)), (0,) * n, 1)
    else:
        raise NodeError(f"b_scale of shape {list(scale.shape)} is not per tensor or per column of B {list(w.shape)}")
    wv = c.const_value(w, type=TensorType(w.shape, dt.i8, q))
    y = c.op("qmatmul_dynamic", [x, wv], {"per_row": False})
    b = c.inp(4)
    return y if b is None else c.op("add", [y, b])


# -- onnxruntime's group-wise low-bit weights ------------------------------------------------------------------------
def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit unsigned values of each row of bytes, the lowest bits of a byte first."""
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    v = (packed[..., :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return v.reshape(*packed.shape[:-1], -1)[..., :count]


@converter("com.microsoft.MatMulNBits")
def _matmul_nbits(c: Ctx):
    """onnxruntime's weight-only low-bit matmul (written by ``MatMulNBitsQuantizer`` and onnxruntime-genai):
    ``Y = A @ W [+ bias]`` with ``W[k, n] = (q[n, k] - zp[n, k // block_size]) * scale[n, k // block_size]``.

    Imported as ``matmul(A, dequantize(const W))`` [``+ bias``]: the constant is the weight as stored, [K, N], typed
    with group-wise parameters ``q<axis=1, group=block_size, [...]>`` (one scale and zero point per column and per
    block of rows, the [ceil(K / block_size), N] grid in C order; ``scheme.group_shape``) — u4 for bits=4, u8 for
    bits=8, u8 with ``range=0:3`` for bits=2 (there is no u2). The packed inputs map as:

    - B uint8 [N, n_blocks, block_size * bits / 8]: values packed lowest bits first; rows padded to whole blocks
      (the padding past K is dropped); n_blocks = ceil(K / block_size);
    - scales f32 [N * n_blocks] (or [N, n_blocks]);
    - zero_points absent: 2^(bits-1) everywhere; uint8 [N * ceil(n_blocks * bits / 8)]: packed like B, each row of
      N padded to whole bytes; f32 [N * n_blocks] (onnxruntime takes them for bits 2 and 4 and computes
      ``q * s - s * zp``): imported when every one is an integer in [0, 2^bits - 1], where that equals
      ``(q - zp) * s`` up to f32 rounding; fractional ones (HQQ) are refused;
    - bias f32 [N]: a float ``add``.

    ``accuracy_level`` maps fixed, whatever the machine: 0-3 are f32 activations (onnxruntime's CPU kernel; level
    2/3 name f16/bf16 compute, which it does not do for f32 inputs): the reference dequantizes W exactly in f32 and
    runs an f32 matmul. 4 is int8 activations per block (``_int8_blocks``), as onnxruntime's x86-64 MLAS int8 path
    computes them: each row of A and block of K quantized to ``qa = round_half_even(a * f32(127 / max|a|))`` with
    scale ``sa = f32(max|a| / 127)`` (a block of zeros: all 0), integer dot products with ``q - zp`` per block, each
    times ``f32(sa * sw)`` and summed over the blocks in order in f32. onnxruntime takes that path only where MLAS
    has an int8 kernel for the bits, block size and CPU (on an AVX-512 VNNI Xeon every 4- and 8-bit block size and
    2-bit blocks of 32-128), f32 elsewhere; lowbit computes level 4 the same way everywhere. Also refused: g_idx
    (act-order), bits other than 2, 4 and 8 (onnxruntime's CPU kernel has no others), block sizes that are not a power
    of two >= 16, non-f32 A/scales."""
    a = c.attrs(K=None, N=None, bits=4, block_size=None, accuracy_level=0)
    for k in ("K", "N", "block_size"):
        if a[k] is None:
            raise NodeError(f"attribute '{k}' is required")
    kk, n, bits, bs, level = (int(a[k]) for k in ("K", "N", "bits", "block_size", "accuracy_level"))
    if bits not in (2, 4, 8):
        raise NodeError(f"bits={bits} is not supported (2, 4 and 8 are, as in onnxruntime's CPU kernel)")
    if bs < 16 or bs & (bs - 1):
        raise NodeError(f"block_size {bs} is not a power of two >= 16")
    if not 0 <= level <= 4:
        raise NodeError(f"accuracy_level {level} is not 0-4")
    if c.inp(4) is not None:
        raise NodeError("g_idx (act-order: a permuted block index per row of K) is not supported")
    x = c.need(0, "A")
    if x.type.dtype != dt.f32:
        raise NodeError(f"input A of {x.type.dtype.name} is not supported (f32 is)")
    if x.type.rank < 1 or x.type.shape[-1] != kk:
        raise NodeError(f"input A of shape {list(x.type.shape)} does not end in K={kk}")
    nb = -(-kk // bs)
    blob = bs * bits // 8
    b = np.asarray(c.const(1, "B"))
    if b.dtype != np.uint8 or b.size != n * nb * blob:
        raise NodeError(f"B must be uint8 [N={n}, {nb}, {blob}], got {b.dtype} {list(b.shape)}")
    q = _unpack_bits(b.reshape(n, nb * blob), bits, kk)  # [N, K]
    scale = np.asarray(c.const(2, "scales"))
    if scale.dtype != np.float32 or scale.size != n * nb:
        raise NodeError(f"scales must be float32 [N * n_blocks = {n * nb}], got {scale.dtype} {list(scale.shape)}")
    zp_v = c.inp(3)
    if zp_v is None:
        zp = np.full((n, nb), 1 << (bits - 1), np.int64)
    else:
        z = np.asarray(c.const(3, "zero_points"))
        if z.dtype == np.uint8:
            row = -(-nb * bits // 8)
            if z.size != n * row:
                raise NodeError(f"packed zero_points must be uint8 [N * ceil(n_blocks * bits / 8) = {n * row}], "
                                f"got {list(z.shape)}")
            zp = _unpack_bits(z.reshape(n, row), bits, nb).astype(np.int64)
        elif z.dtype == np.float32:
            if bits == 8:
                raise NodeError("float zero points with bits=8 are not supported (onnxruntime's CPU kernel refuses them)")
            if z.size != n * nb:
                raise NodeError(f"float zero_points must be [N * n_blocks = {n * nb}], got {list(z.shape)}")
            if np.any(z != np.rint(z)) or np.any(z < 0) or np.any(z > (1 << bits) - 1):
                raise NodeError("fractional or out-of-range float zero points (HQQ) are not supported: lowbit's "
                                f"zero points are integers in [0, {(1 << bits) - 1}]")
            zp = z.reshape(n, nb).astype(np.int64)
        else:
            raise NodeError(f"zero_points of dtype {z.dtype} are not supported (packed uint8 or float32 are)")
    qdtype, storage = {2: (dt.u8, (0, 3)), 4: (dt.u4, None), 8: (dt.u8, None)}[bits]
    qp = QuantParams(tuple(scale.reshape(n, nb).T.reshape(-1).tolist()), tuple(zp.T.reshape(-1).tolist()), axis=1,
                     group=bs, storage=storage)
    wq = np.ascontiguousarray(q.T).astype(qdtype.np_dtype)  # [K, N]
    if level == 4:
        ones = QuantParams((1.0,) * len(qp.scale), qp.zero_point, axis=1, group=bs, storage=storage)
        y = _int8_blocks(c, x, c.const_value(wq, type=TensorType(wq.shape, qdtype, ones)), scale.reshape(n, nb).T, zp)
    else:
        y = c.op("matmul", [x, c.op("dequantize", [c.const_value(wq, type=TensorType(wq.shape, qdtype, qp))])])
    bias = c.inp(5)
    if bias is None:
        return y
    if bias.type.dtype != dt.f32 or bias.type.shape != (n,):
        raise NodeError(f"bias must be float32 [N={n}], got {bias.type}")
    return c.op("add", [y, bias])


def _int8_blocks(c: Ctx, x, wv, sw: np.ndarray, zp: np.ndarray):
    """MatMulNBits' accuracy_level 4 (int8 activations per block) of A ``x`` [..., K] and ``wv``, the stored weight
    [K, N] as a constant with group-wise parameters whose scales are all 1 (so that dequantize gives the exact
    integers ``q - zp``); ``sw`` the weight scales [n_blocks, N], ``zp`` the zero points [N, n_blocks]. Per row and
    block ``qa = round(a * (127 / max|a|))`` (127 / 1 where max|a| = 0: qa = 0) and ``sa = max|a| / 127``; the block
    dot products of qa (|qa| <= 127) with ``q - zp`` are integers below 2^24 in magnitude, exact in an f32 matmul in
    any order; each times ``sa * sw``, summed over the blocks (axis 0, in order). K is padded with zeros to whole
    blocks. The weight stays group-wise quantized, so the code generator refuses it by name as at levels 0-3."""
    wq = wv.const_value
    k, n = wq.shape
    bs = wv.type.quant.group
    nb = -(-k // bs)
    hi = NARROW_I8[1]
    span = int(np.max(np.abs(wq.astype(np.int64) - np.repeat(zp.T, bs, axis=0)[:k])))
    if hi * span * bs >= 2 ** 24:
        raise NodeError(f"accuracy_level=4 with block_size {bs} and weights up to {span} from their zero point is not "
                        "supported: a block's int8 dot product could pass 2^24, where f32 stops being exact")
    lead = tuple(x.type.shape[:-1])
    m = int(np.prod(lead, dtype=np.int64))
    pad = nb * bs - k
    a = reshape_to(c, x, (m, k))
    if pad:
        a = c.op("pad", [a], {"pads": (0, 0, 0, pad)})
    blocks = reshape_to(c, a, (m, nb, bs))
    amax = c.op("reduce_max", [c.op("abs", [blocks])], {"axes": (2,), "keepdims": True})  # [M, n_blocks, 1]

    def f32(v):
        return c.const_value(np.asarray(v, np.float32))
    safe = c.op("where", [c.op("equal", [amax, f32(0)]), f32(1), amax])
    qa = c.op("round", [c.op("mul", [blocks, c.op("div", [f32(hi), safe])])])
    w = c.op("dequantize", [wv])
    if pad:
        w = c.op("pad", [w], {"pads": (0, 0, pad, 0)})
    dots = c.op("matmul", [c.op("transpose", [qa], {"perm": (1, 0, 2)}), reshape_to(c, w, (nb, bs, n))])
    sa = c.op("transpose", [c.op("div", [amax, f32(hi)])], {"perm": (1, 0, 2)})  # [n_blocks, M, 1]
    s = c.op("mul", [sa, c.const_value(np.ascontiguousarray(sw, np.float32).reshape(nb, 1, n))])
    y = c.op("reduce_sum", [c.op("mul", [dots, s])], {"axes": (0,), "keepdims": False})  # [M, N]
    return reshape_to(c, y, lead + (n,))
