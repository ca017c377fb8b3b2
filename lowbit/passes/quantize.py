"""quantize: static INT8 post-training quantization, written as QDQ in the IR (``lower-qdq`` then makes the
quantized convolutions and matmuls integer ops).

Options: ``calibrator`` (minmax | percentile | entropy | mse), ``percentile`` (for the percentile
calibrator), ``activations`` (u8: asymmetric, the fast form on x86; i8: symmetric), ``exclude_ops`` (op
names left in float, e.g. ``[gemm]``) and ``exclude_nodes`` (op locations, i.e. ONNX node names).
``dynamic=true`` instead quantizes matmuls and gemms by constants to ``qmatmul_dynamic`` (the input's u8 scale
computed at run time; no calibration data needed): ``per_row=true`` (the default) gives each row (token) its own
scale, ``per_row=false`` one per tensor, as onnxruntime's quantize_dynamic does — transformers have a few
tokens with outlying activations, which a per-tensor scale spends most of its 256 levels on. A matmul by a
group-wise low-bit weight (``quantize-weights``, onnxruntime's MatMulNBits), ``matmul(x, dequantize(w))``,
becomes ``qmatmul_dynamic(x, w)`` with the weight's codes, groups, scales and zero points as they are (W4A8).

Weights: int8 symmetric per output channel (scale = max|w| / 127); a convolution whose weight already holds
low-bit codes per output channel (``quantize-weights`` / ``shift-add``: ``conv2d(x, dequantize(codes))``, i4 or
an integer codebook) keeps them, as i8 values with their scales (``coded_weight``). In ``dynamic=true`` mode, where any
convolution holds such codes, every convolution is quantized statically (there is no dynamic convolution kernel;
the others — depthwise, or kept f32 by the weight pass — join the int8 region) when calibration data is given,
else they stay f32 with a ``LowbitWarning``. Biases: i32 in units of input scale x weight scale; a channel whose
bias would not fit (a dead channel of tiny weights beside a large folded bias) gets a larger weight scale, as
onnxruntime's quantizer does (``_fit_bias``). Activations: one scale and zero point per tensor from the
calibrator, at every input of a quantized op and at its output (after a following ReLU, which the integer op then applies). Calibration data
comes from the pass context (``PassContext(calibration=...)``, ``lowbit compile --calib``): an .npz with one
leading sample axis, a directory of .npz files, or an iterable of ``{input name: array}``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import LowbitError, LowbitWarning
from ..ir import dtypes as dt
from ..ir.graph import Graph
from ..ir.types import QuantParams, TensorType
from ..quant import scheme
from .base import Pass, PassContext, register_pass

TARGETS = ("conv2d", "gemm", "matmul")


def weight_axis(op) -> int | None:
    """The output-channel axis of a quantizable op's constant weight, or None when the op is not quantizable."""
    w = op.operands[1]
    if not w.is_const or w.type.dtype != dt.f32 or op.operands[0].type.dtype != dt.f32:
        return None
    if op.opname == "conv2d":
        return 0 if len(op.operands) < 3 or op.operands[2].is_const else None
    if op.opname == "gemm":
        a = op.attrs
        if a["trans_a"] or a["alpha"] != 1.0 or a["beta"] != 1.0 or (len(op.operands) > 2 and not op.operands[2].is_const):
            return None
        return 0 if a["trans_b"] else 1
    if op.opname == "matmul" and w.type.rank == 2 and op.operands[0].type.rank >= 2:
        return 1
    return None


def _dequantized_const(v):
    """The constant c of ``v = dequantize(c)``, else None."""
    d = v.producer
    return d.operands[0] if d is not None and d.opname == "dequantize" and d.operands[0].is_const else None


def grouped_weight(op):
    """The group-wise constant w of ``matmul(x, dequantize(w))`` (w [K, N] grouped along K, x f32), else None."""
    if op.opname != "matmul" or op.operands[0].type.dtype != dt.f32 or op.operands[0].type.rank < 1:
        return None
    w = _dequantized_const(op.operands[1])
    if w is None:
        return None
    q = w.type.quant
    if q is None or q.group is None or q.axis != 1 or w.type.rank != 2:
        return None
    return w if q.codebook is None or q.integer_codebook() else None  # (nf4's values are not integers)


def coded_weight(op):
    """The constant c of ``conv2d(x, dequantize(c))`` when c holds low-bit integer codes per output channel
    (``quantize-weights`` / ``shift-add`` on a convolution: i4 -7..7, or an integer codebook's indices; zero
    points 0), x f32 and any bias constant — what the integer convolution kernels take as i8 values; else None."""
    if op.opname != "conv2d" or op.operands[0].type.dtype != dt.f32:
        return None
    w = _dequantized_const(op.operands[1])
    if w is None or (len(op.operands) > 2 and not op.operands[2].is_const):
        return None
    q = w.type.quant
    if q is None or q.axis != 0 or q.group is not None or any(q.zero_point) or w.type.dtype.kind not in ("int", "uint"):
        return None
    if q.codebook is not None:
        return w if q.integer_codebook() else None
    return w if w.type.dtype.kind == "int" else None


def coded_i8(w):
    """(i8 values, their type, f32 scales) of a ``coded_weight``: the codes' integers (a codebook's values)."""
    q = w.type.quant
    codes = np.asarray(w.const_value)
    values = scheme.codebook_levels(codes, q) if q.codebook is not None else codes.astype(np.int64)
    sw = q.scale_array()
    return values.astype(np.int8), TensorType(w.type.shape, dt.i8, QuantParams(
        q.scale, (0,) * len(q.scale), 0, storage=scheme.NARROW_I8)), sw


def _per_channel_i8(w: np.ndarray, axis: int):
    """(i8 weight, its type, f32 scales): symmetric per output channel along ``axis`` (``scheme.symmetric_weights``),
    typed with the narrow storage range [-127, 127]."""
    wq, sw = scheme.symmetric_weights(w, axis)
    return wq, TensorType(wq.shape, dt.i8, QuantParams(tuple(map(float, sw)), (0,) * len(sw), axis,
                                                       storage=scheme.NARROW_I8)), sw


def _with_encoding(wt: TensorType, source: TensorType, wq: np.ndarray) -> TensorType:
    """``wt`` with the sparsity encoding of the weight it quantizes (``quant.prune.carried_encoding``): symmetric
    weights keep their zeros."""
    from ..quant.prune import carried_encoding

    enc = carried_encoding(source, wq)
    return wt if enc is None else TensorType(wt.shape, wt.dtype, wt.quant, enc)


def _fit_bias(op, wq: np.ndarray, wt: TensorType, sw: np.ndarray, x_scale: float, coded):
    """(weights, type, scales) with the scales of channels whose bias would not fit i32 raised
    (``scheme.bias_fitting_scales``) and those channels requantized from their real weights (the f32 weight, or
    the codes' values, rounded to the nearest value of their set): such channels' weights are tiny against their
    bias, so they become mostly 0."""
    fit = scheme.bias_fitting_scales(op.operands[2].const_value, x_scale, sw)
    changed = fit != sw
    if not changed.any():
        return wq, wt, sw
    axis = wt.quant.axis
    shape = [1] * wq.ndim
    shape[axis] = -1
    real = (wq.astype(np.float64) * sw.astype(np.float64).reshape(shape) if coded is not None
            else np.asarray(op.operands[1].const_value, np.float64))
    ratio = real / fit.astype(np.float64).reshape(shape)
    if coded is None:
        lo, hi = scheme.NARROW_I8
        new = np.clip(np.rint(ratio), lo, hi)
    else:  # the nearest of the codes' own values (a codebook's, or the integer range's)
        q = coded.type.quant
        lo, hi = scheme.storage_range(coded.type.dtype, q)
        values = np.unique(q.codebook if q.codebook is not None else np.arange(lo, hi + 1)).astype(np.float64)
        new = values[scheme.codebook_codes(ratio, values)]
    wq2 = np.where(changed.reshape(shape), new, wq).astype(np.int8)
    return wq2, TensorType(wt.shape, wt.dtype, QuantParams(tuple(map(float, fit)), (0,) * len(fit), axis,
                                                           storage=wt.quant.storage)), fit


def output_point(g: Graph, op):
    """Where the op's output is quantized: after a ReLU or a Clip(0, hi) (ReLU6) that is its only user, else its
    result; the integer op then applies the activation."""
    y = op.results[0]
    users = y.users
    if len(users) == 1 and not g.is_output(y) and (users[0].opname == "relu" or (
            users[0].opname == "clip" and users[0].attrs["min"] == 0.0)):
        return users[0].results[0]
    return y


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    name = "quantize"
    calibrator: str = "minmax"
    percentile: float = 99.999
    activations: str = "u8"
    exclude_ops: tuple = ()
    exclude_nodes: tuple = ()
    dynamic: bool = False
    per_row: bool = True

    def __post_init__(self):
        from ..quant.calibrate import CALIBRATORS

        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"unknown calibrator '{self.calibrator}' (known: {', '.join(CALIBRATORS)})")
        if self.activations not in ("u8", "i8"):
            raise ValueError(f"activations must be u8 or i8, got '{self.activations}'")
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        from ..quant.calibrate import calibrate_range, collect, load_samples, qparams

        def taken(op):
            return op.opname not in self.exclude_ops and (op.loc or "") not in self.exclude_nodes

        targets = [op for op in graph.ops if op.opname in TARGETS and taken(op)
                   and (weight_axis(op) is not None or coded_weight(op) is not None)]
        if self.dynamic:
            for op in targets:
                if op.opname != "conv2d":
                    self._quantize_dynamic(graph, op, self.per_row)
            for op in [op for op in graph.ops if grouped_weight(op) is not None and op.opname not in self.exclude_ops
                       and (op.loc or "") not in self.exclude_nodes]:
                y = graph.create("qmatmul_dynamic", [op.operands[0], grouped_weight(op)], {"per_row": self.per_row},
                                 loc=op.loc, before=op).result
                graph.replace_all_uses(op.results[0], y)
                graph.erase(op)
            coded = [op for op in targets if coded_weight(op) is not None]
            if not coded:
                return
            # the low-bit convolutions run on int8 kernels; the other convolutions (depthwise ones, layers a
            # weight pass kept f32) join them in int8 rather than leave the region for f32 between them
            targets = [op for op in targets if op.opname == "conv2d"]
            if ctx.calibration is None:
                warnings.warn(f"quantize{{dynamic=true}}: {len(coded)} convolution(s) with low-bit weights stay f32 "
                              "(weights dequantized): their activations are quantized statically, which needs "
                              "calibration data (--calib DATA)", LowbitWarning, stacklevel=2)
                return
        if not targets:
            return
        if ctx.calibration is None:
            raise LowbitError("the quantize pass needs calibration data (lowbit compile --calib DATA, or "
                              "PassContext(calibration=...))")
        samples = load_samples(ctx.calibration, graph)
        signed = self.activations == "i8"
        points, outputs = {}, set()
        for op in targets:
            points[id(op.operands[0])] = op.operands[0]
            y = output_point(graph, op)
            points[id(y)] = y
            outputs.add(id(y))
        obs = collect(graph, samples, list(points))
        qtype = {}
        for k, v in points.items():
            scale, zp = qparams(*calibrate_range(obs[k], self.calibrator, self.percentile, signed), signed)
            qtype[k] = TensorType(v.type.shape, dt.i8 if signed else dt.u8, QuantParams((float(np.float32(scale)),), (zp,)))
        for k, v in points.items():  # a max pool of a quantized value keeps its scale (lower-qdq then pools
            p = v.producer            # the integers: max commutes with a positive scale)
            if p is not None and p.opname == "max_pool2d" and id(p.operands[0]) in qtype:
                qtype[k] = TensorType(v.type.shape, qtype[id(p.operands[0])].dtype, qtype[id(p.operands[0])].quant)
        # weights and biases first (their scales need the input's), then one quantize/dequantize per point
        for op in targets:
            self._quantize_weights(graph, op, qtype[id(op.operands[0])])
        for k, v in points.items():
            first = next((op for op in graph.ops if any(o is v for o in op.operands)), None)
            q = graph.create("quantize", [v], {}, [qtype[k]], loc=v.producer.loc if v.producer else v.name,
                             before=first).result
            dq = graph.create("dequantize", [q], loc=q.producer.loc, before=first).result
            for user, idx in list(v.uses):
                if user is not q.producer:
                    user.set_operand(idx, dq)
            if k in outputs:  # a quantized op's result leaves the model as its integer op computes it
                graph.outputs = [dq if o is v else o for o in graph.outputs]

    @staticmethod
    def _quantize_dynamic(g: Graph, op, per_row: bool) -> None:
        """matmul / gemm by a constant -> qmatmul_dynamic (the input's scale is computed at run time)."""
        w = op.operands[1].const_value
        if weight_axis(op) == 0:  # gemm with transposed B: [N, K] -> [K, N]
            w = np.ascontiguousarray(w.T)
        wq, wt, _ = _per_channel_i8(w, 1)
        wt = _with_encoding(wt, op.operands[1].type, wq)
        ops = [op.operands[0], g.const(wq, loc=op.loc, before=op, type=wt)]
        if len(op.operands) > 2:
            ops.append(g.const(op.operands[2].const_value.astype(np.float32).reshape(-1), loc=op.loc, before=op))
        y = g.create("qmatmul_dynamic", ops, {"per_row": per_row}, loc=op.loc, before=op).result
        g.replace_all_uses(op.results[0], y)
        g.erase(op)

    @staticmethod
    def _quantize_weights(g: Graph, op, xq: TensorType) -> None:
        coded = coded_weight(op)
        if coded is not None:  # low-bit codes as they are
            wq, wt, sw = coded_i8(coded)
        else:
            wq, wt, sw = _per_channel_i8(op.operands[1].const_value, weight_axis(op))
        if len(op.operands) > 2:
            wq, wt, sw = _fit_bias(op, wq, wt, sw, xq.quant.scale[0], coded)
        wt = _with_encoding(wt, (coded if coded is not None else op.operands[1]).type, wq)
        wv = g.create("dequantize", [g.const(wq, loc=op.loc, before=op, type=wt)], loc=op.loc, before=op).result
        op.set_operand(1, wv)
        if len(op.operands) > 2:
            b = op.operands[2].const_value
            unit = scheme.bias_unit(xq.quant.scale[0], sw, len(sw))
            bq = scheme.bias_to_i32(b, xq.quant.scale[0], sw, len(sw))
            if bq is None:
                raise LowbitError(f"{op.describe()}: the bias does not fit i32 at input scale x weight scale")
            bt = TensorType(bq.shape, dt.i32, QuantParams(tuple(map(float, unit)), (0,) * len(unit), 0))
            bv = g.create("dequantize", [g.const(bq.astype(np.int32), loc=op.loc, before=op, type=bt)], loc=op.loc,
                          before=op).result
            op.set_operand(2, bv)
