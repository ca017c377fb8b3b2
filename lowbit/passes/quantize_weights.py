"""quantize-weights: weight-only low-bit quantization (int4 group-wise, as GPTQ / AWQ checkpoints and
onnxruntime's MatMulNBits store it); activations stay f32.

Every ``matmul`` by a constant f32 [K, N] weight and every ``gemm`` by a constant f32 B becomes
``matmul(x, dequantize(const w_q))``, the form MatMulNBits imports to: ``w_q`` [K, N] with one f32 scale (and
zero point) per output column and per ``group`` rows of K (``q<axis=1, group=G, [...]>``, the last group partial
when G does not divide K). A gemm keeps its meaning exactly: ``trans_b`` is applied to the weight before it is
quantized, ``trans_a`` becomes a ``transpose`` of A, ``alpha`` a ``mul`` by it, and C (times ``beta``, folded into
a constant C) an ``add`` — the f32 operations the gemm's reference performs, in its order.

Options: ``bits`` (2..8), ``group`` (rows of K per scale), ``symmetric`` (signed, zero point 0, the narrow range
[-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|w| / (2^(b-1) - 1): i4 ``range=-7:7`` for 4 bits; else unsigned with
a zero point per group: u4 for 4 bits; ``lowbit.quant.gptq`` has the grid), ``method``:

- ``rtn``: round to nearest; needs no data;
- ``gptq``: GPTQ from calibration data (``PassContext(calibration=...)``, ``--calib``); ``damp`` (the fraction of
  the Hessian's mean diagonal added to it) and ``block`` (rows of K per lazy batch update) are its knobs;
- ``auto``: ``gptq`` with calibration data, else ``rtn`` with a ``LowbitWarning`` (what the ``w4`` preset uses).

``awq=true`` (with calibration data) adds AWQ's activation-aware scaling (Lin et al. 2023) before ``method``:
per input channel k a scale s_k = rms(x_k)^alpha (normalised to a geometric mean of 1), the weight's rows
multiplied by s before they are quantized and the input divided by it — an f32 ``mul`` before the matmul, so
``y = (x / s) @ Q(s * W)`` — alpha chosen from 0, 0.05, ..., 1 by the layer's output error on its calibration
inputs with round-to-nearest (alpha 0 is no scaling, so the search never does worse than without); GPTQ then
runs on the scaled weight with the scaled Hessian. Without calibration data AWQ is skipped, with a warning. ``exclude_ops`` (``[gemm]``) and ``exclude_nodes`` (op
locations, i.e. ONNX node names) stay f32.

Convolutions (``convs``: ``dense``, the default, takes conv2d with groups = 1; ``all`` also grouped and depthwise
ones, rounded to nearest — GPTQ needs one Hessian for all output channels; ``none``): the [O, C, kh, kw] weight is
a [K = C * kh * kw, O] matrix of the im2col rows (``conv_rows``), quantized with one symmetric scale per output
channel — the whole filter one group, whatever ``group`` and ``symmetric`` say, as the integer convolution
kernels take it — and the conv keeps its op: ``conv2d(x, dequantize(const codes))``, the codes ``[O, C, kh, kw]``
per channel along axis 0. AWQ does not scale convolutions. The static ``quantize`` pass then runs them on the int8
kernels with these codes as their i8 values, which the artifact stores as 4-bit codes; left with f32 activations,
they are stored f32 (codegen warns).

``clip`` (with calibration data; true by default): each group's range is shrunk per output column by the factor
of 1, 0.975, ..., 0.5 that gives the least output error on the calibration inputs (AWQ's clip search,
``lowbit.quant.gptq.group_params``), for round-to-nearest and for GPTQ (as each group starts); ``clip=false`` is
the plain min/max grid. AWQ's scale search itself compares plain grids, as the reference does.

``max_error`` (with calibration data; 0, the default, is no limit): a layer whose relative output error passes it
keeps its f32 weight (``fallback`` in its record), for a later ``quantize`` pass to make int8 or to stay f32.

With calibration data the layers are quantized in graph order, each from the inputs the already quantized earlier
layers give it (the reference GPTQ's sequential order): the interpreter runs every sample through the graph once,
the weights dequantized as the rewritten graph computes them. Each layer's record — ``{name, op, method, bits,
group, rel_error}``, ``rel_error`` = ‖X·Ŵ − X·W‖ / ‖X·W‖ over its calibration inputs X (None without data) —
is appended to ``ctx.weight_report`` (``weight_report(ctx)``); ``ctx.rule_hits["quantize-weights"]`` counts
the layers. A matmul or gemm left f32 says why under ``debug_rewrites``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import LowbitError, LowbitWarning
from ..ir import dtypes as dt
from ..ir.graph import Graph
from ..ir.types import QuantParams, TensorType
from ..quant import gptq as qw
from ..quant import scheme
from .base import Pass, PassContext, register_pass

TARGETS = ("matmul", "gemm", "conv2d")
METHODS = ("rtn", "gptq", "auto")
CONVS = ("dense", "all", "none")


def report_rows(ctx: PassContext, attr: str) -> list:
    """The per-layer records a weight pass keeps on ``ctx`` under ``attr`` (created empty on first use)."""
    rows = getattr(ctx, attr, None)
    if rows is None:
        rows = []
        setattr(ctx, attr, rows)
    return rows


def weight_report(ctx: PassContext) -> list:
    """The per-layer records quantize-weights (and shift-add) appended to ``ctx``."""
    return report_rows(ctx, "weight_report")


def target_weight(op, convs: str = "all") -> tuple[np.ndarray | None, str | None]:
    """(the [K, N] f32 weight, None) of a matmul / gemm / conv2d a weight pass takes, or (None, why not). A
    convolution's is its [O, C/g, kh, kw] weight as a matrix: K = C/g * kh * kw rows (the im2col order,
    ``conv_rows``), one column per output channel; ``convs`` says which convolutions are taken (``CONVS``)."""
    w, x = op.operands[1], op.operands[0]
    if not w.is_const:
        return None, "the weight is not a constant"
    if w.type.dtype != dt.f32 or w.type.quant is not None or x.type.dtype != dt.f32:
        return None, f"the operands are {x.type.dtype.name} and {w.type.dtype.name}, not f32"
    if op.opname == "conv2d":
        if convs == "none":
            return None, "convs=none"
        if op.attrs["groups"] != 1 and convs != "all":
            return None, f"a grouped convolution (groups={op.attrs['groups']}); convs=all takes it"
        if len(op.operands) > 2 and not op.operands[2].is_const:
            return None, "the bias is not a constant"
        a = np.asarray(w.const_value, np.float32)
        return np.ascontiguousarray(a.reshape(a.shape[0], -1).T), None
    if w.type.rank != 2:
        return None, f"the weight is rank {w.type.rank}, not a [K, N] matrix"
    if 0 in w.type.shape:
        return None, "the weight is empty"
    a = np.asarray(w.const_value, np.float32)
    if op.opname == "gemm" and op.attrs["trans_b"]:  # B is [N, K]
        a = a.T
    return np.ascontiguousarray(a), None


def conv_rows(op, x: np.ndarray) -> np.ndarray:
    """The im2col rows [N * OH * OW, C * kh * kw] of a (groups = 1) conv2d's input ``x``: what its weight matrix
    (``target_weight``) multiplies."""
    from ..ir.interp import pool_windows

    (pt, pl, pb, pr), (sh, sw), (dh, dw) = op.attrs["pads"], op.attrs["strides"], op.attrs["dilations"]
    _, _, oh, ow = op.result.type.shape
    _, _, kh, kw = op.operands[1].type.shape
    xp = np.pad(np.asarray(x, np.float32), [(0, 0), (0, 0), (pt, pb), (pl, pr)])
    cols = pool_windows(xp, kh, kw, sh, sw, dh, dw, oh, ow)  # [N, C, kh, kw, OH, OW]
    n, c = cols.shape[:2]
    return np.ascontiguousarray(cols.reshape(n, c * kh * kw, oh * ow).transpose(0, 2, 1)).reshape(-1, c * kh * kw)


def layer_group(op, w: np.ndarray, group: int) -> int:
    """Rows of K per scale: ``group`` for matmuls; a convolution's whole filter (one scale per output channel,
    what the integer convolution kernels take)."""
    return w.shape[0] if op.opname == "conv2d" else group


def collect_targets(graph: Graph, ctx: PassContext, name: str, exclude_ops, exclude_nodes, convs: str) -> list:
    """The matmuls, gemms and convolutions a weight pass ``name`` rewrites (``target_weight``); why the others
    stay f32 goes to the log under ``debug_rewrites``."""
    targets = []
    for op in graph.ops:
        if op.opname not in TARGETS:
            continue
        why = ("excluded" if op.opname in exclude_ops or (op.loc or "") in exclude_nodes
               else target_weight(op, convs)[1])
        if why is None:
            targets.append(op)
        elif ctx.debug_rewrites:
            ctx.log(f"{name}: {op.describe()} stays f32: {why}")
    return targets


def resolve_method(ctx: PassContext, name: str, method: str, rtn_words: str) -> str:
    """``method`` with ``auto`` resolved: ``gptq`` with calibration data, else ``rtn`` with a warning (the weights
    ``rtn_words``); ``gptq`` without data is refused."""
    if ctx.calibration is None and method == "gptq":
        raise LowbitError(f"{name}{{method=gptq}} needs calibration data (lowbit compile --calib DATA, or "
                          "PassContext(calibration=...)); method=rtn needs none")
    if method != "auto":
        return method
    if ctx.calibration is None:
        warnings.warn(f"{name}: no calibration data, so the weights are {rtn_words} (method=rtn) instead of GPTQ; "
                      "give --calib DATA for GPTQ", LowbitWarning, stacklevel=3)
        return "rtn"
    return "gptq"


def _input_rows(op, x: np.ndarray) -> np.ndarray | None:
    """The rows of K a layer multiplies its weight by, [rows, K] (None for a grouped convolution: each group of
    output channels has its own inputs, so no one Hessian)."""
    if op.opname == "conv2d":
        return conv_rows(op, x) if op.attrs["groups"] == 1 else None
    if op.opname == "gemm" and op.attrs["trans_a"]:
        x = x.T
    return x.reshape(-1, x.shape[-1])


@register_pass
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    name = "quantize-weights"
    bits: int = 4
    group: int = 128
    symmetric: bool = True
    method: str = "rtn"
    damp: float = 0.01
    block: int = 128
    exclude_ops: tuple[str, ...] = ()  # tuple[str, ...], not tuple: the pipeline parser reads that as a list
    exclude_nodes: tuple[str, ...] = ()
    awq: bool = False
    convs: str = "dense"
    max_error: float = 0.0
    clip: bool = True

    def __post_init__(self):
        if self.bits not in qw.BITS:
            raise ValueError(f"bits must be 2..8, got {self.bits}")
        if self.group < 1 or self.block < 1:
            raise ValueError(f"group and block must be >= 1, got {self.group} and {self.block}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if not self.damp >= 0:
            raise ValueError(f"damp must be >= 0, got {self.damp}")
        if self.convs not in CONVS:
            raise ValueError(f"convs must be one of {', '.join(CONVS)}, got '{self.convs}'")
        if not self.max_error >= 0:
            raise ValueError(f"max_error must be >= 0 (0: no limit), got {self.max_error}")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = collect_targets(graph, ctx, self.name, self.exclude_ops, self.exclude_nodes, self.convs)
        if not targets:
            return
        if ctx.calibration is None and self.awq:
            warnings.warn("quantize-weights{awq=true}: no calibration data, so no AWQ scaling; give --calib DATA",
                          LowbitWarning, stacklevel=2)
        method = resolve_method(ctx, self.name, self.method, "rounded to nearest")
        if ctx.calibration is None:
            done = {id(op): (*self._quantize(op, target_weight(op)[0], None, 0, "rtn"), None, None, None)
                    for op in targets}
        else:
            from ..quant.calibrate import load_samples

            done = self._calibrated(graph, load_samples(ctx.calibration, graph), targets, method, ctx)
        rows = weight_report(ctx)
        kept = 0
        for op in targets:
            q, t, err, alpha, scale = done[id(op)]
            w = target_weight(op)[0]
            rec = {"name": op.loc or op.describe(), "op": op.opname, "method": layer_method(op, method), "bits": self.bits,
                   "group": layer_group(op, w, self.group), "rel_error": None if err is None else round(err, 6)}
            if self.awq:
                rec["awq_alpha"] = alpha
            if self.max_error:
                rec["fallback"] = q is None
            rows.append(rec)
            if q is None:  # its error passed max_error: left for a later pass (int8) or f32
                kept += 1
                continue
            rewrite(graph, op, q, t, scale)
        ctx.rule_hits[self.name] = ctx.rule_hits.get(self.name, 0) + len(targets) - kept

    def _quantize(self, op, w: np.ndarray, xtx, n: int, method: str):
        """(integers, type) of ``w`` [K, N]; a convolution's per output channel and symmetric (``layer_group``)."""
        group = layer_group(op, w, self.group)
        symmetric = self.symmetric or op.opname == "conv2d"
        sparse = symmetric and op.opname != "conv2d" and op.operands[1].type.encoding is not None
        if layer_method(op, method) == "rtn" or xtx is None:
            q, t = qw.rtn(w, self.bits, group, symmetric, xtx if self.clip else None)  # 0 rounds to code 0
        else:
            q, t = qw.gptq(w, 2.0 * xtx / max(n, 1), self.bits, group, symmetric, self.damp, self.block,
                           what=op.describe(), clip=self.clip, zeros=(w == 0) if sparse else None)
        if sparse:  # a pruned weight (sparsify) keeps its encoding on the symmetric codes
            from ..quant.prune import carried_encoding

            enc = carried_encoding(op.operands[1].type, q)
            if enc is not None:
                t = TensorType(t.shape, t.dtype, t.quant, enc)
        return q, t

    def _awq_scales(self, op, w: np.ndarray, xtx: np.ndarray, n: int):
        """(alpha, per-input-channel scales or None for alpha 0) minimizing the layer's output error with
        round-to-nearest, over alpha in 0, 0.05, ..., 1 (AWQ's grid search; rms(x) from the diagonal of XᵀX).
        The candidates are compared by their error energy ``dᵀ XᵀX d`` in f32 (``qw.error_energy``)."""
        rms = np.sqrt(np.maximum(np.diag(xtx) / max(n, 1), 0.0))
        if not np.all(rms > 0):
            return None, None
        x32 = xtx.astype(np.float32)
        best = (qw.error_energy(w, scheme.dequantize_array(*self._quantize(op, w, None, n, "rtn")), x32), 0.0, None)
        for alpha in np.linspace(0.05, 1.0, 20):
            s = rms ** alpha
            s = s / np.sqrt(s.max() * s.min())
            q, t = self._quantize(op, (w * s[:, None]).astype(np.float32), None, n, "rtn")
            err = qw.error_energy(w, scheme.dequantize_array(q, t) / s[:, None], x32)
            if err < best[0]:
                best = (err, float(round(alpha, 2)), s)
        return best[1], best[2]

    def _calibrated(self, graph: Graph, samples: list, targets: list, method: str, ctx: PassContext) -> dict:
        """{id(op): (integers, type, relative error, AWQ alpha, AWQ input factors)} (``calibrated_layers``); the
        integers None where the error passes ``max_error`` (the layer then computes with its f32 weight)."""
        def layer(op, w, xtx, n):
            scalable = self.awq and xtx is not None and (
                op.opname == "matmul" or (op.opname == "gemm" and not op.attrs["trans_a"]))
            alpha, s = self._awq_scales(op, w, xtx, n) if scalable else (None, None)
            if s is None:
                q, t = self._quantize(op, w, xtx, n, method)
                w_hat = scheme.dequantize_array(q, t)
                err = None if xtx is None else qw.relative_error(w, w_hat, xtx)
                inv = None
            else:
                inv = (1.0 / s).astype(np.float32)  # quantize s * W against the scaled inputs x / s
                q, t = self._quantize(op, (w * s[:, None]).astype(np.float32), xtx * np.outer(inv, inv), n, method)
                qv = scheme.dequantize_array(q, t)
                w_hat = qv.astype(np.float64) * inv[:, None].astype(np.float64)
                err = qw.relative_error(w, w_hat, xtx)
                w_hat = qv
            if self.max_error and err is not None and err > self.max_error:
                return (None, None, err, alpha, None), w, None
            return (q, t, err, alpha, inv), w_hat, inv
        return calibrated_layers(graph, samples, targets, layer, tick=lambda s: ctx.tick(f"{self.name}: {s}"))


def layer_method(op, method: str) -> str:
    """The method a layer gets: GPTQ needs one Hessian of the layer's inputs, which a grouped convolution lacks."""
    return "rtn" if op.opname == "conv2d" and op.attrs["groups"] != 1 else method


def calibrated_layers(graph: Graph, samples: list, targets: list, layer, tick=None, means: bool = False) -> dict:
    """{id(op): what ``layer`` returned first} for every target: the samples run through the graph op by op, and
    each target, when reached, is handed ``(op, w, XᵀX, n)`` of its inputs there (``target_weight``, ``_input_rows``)
    and returns ``(result, weight, x_factor)``: the weight [K, N] the rewritten graph multiplies by and a factor per
    input channel applied to x first (or None). XᵀX is None (n 0) for a grouped convolution. The layer is then computed that way, so each later layer sees the
    inputs the quantized layers before it give (the reference GPTQ's sequential order). ``means``: ``layer`` is
    handed a fifth argument, the mean [K] of the input rows (None where XᵀX is)."""
    from ..ir.interp import evaluate_op

    pending = {id(op) for op in targets}
    last = {}
    for i, op in enumerate(graph.ops):
        for v in op.operands:
            last[id(v)] = i
    envs = [{id(v): s[v.name] for v in graph.inputs} for s in samples]
    done = {}
    for i, op in enumerate(graph.ops):
        if not pending:
            break
        weight = factor = None
        if id(op) in pending:
            pending.discard(id(op))
            rows = [_input_rows(op, env[id(op.operands[0])]) for env in envs]
            xtx, n = qw.hessian(rows) if all(r is not None for r in rows) else (None, 0)
            extra = ()
            if means:
                extra = (None if xtx is None else
                         sum(np.asarray(r, np.float64).sum(axis=0) for r in rows) / max(n, 1),)
            done[id(op)], weight, factor = layer(op, target_weight(op)[0], xtx, n, *extra)
            if tick is not None:
                tick(f"layer {len(done)}/{len(targets)}")
            if op.opname == "gemm" and op.attrs["trans_b"]:
                weight = weight.T
            elif op.opname == "conv2d":
                weight = np.ascontiguousarray(weight.T).reshape(op.operands[1].type.shape)
        for env in envs:
            args = [env[id(v)] for v in op.operands]
            if weight is not None:
                args[1] = weight
            if factor is not None:
                args[0] = args[0].astype(np.float32) * factor
            for r, a in zip(op.results, evaluate_op(op, args)):
                env[id(r)] = a
            for v in op.operands:
                if last[id(v)] == i:
                    env.pop(id(v), None)
    return done


def conv_weight(q: np.ndarray, t, shape) -> tuple[np.ndarray, object]:
    """The [O, C/g, kh, kw] codes and their per-output-channel type (axis 0) of a convolution's weight matrix ``q``
    [K, O] quantized as one group of K rows (``layer_group``)."""
    qp = t.quant
    per_channel = QuantParams(qp.scale, qp.zero_point, 0, storage=qp.storage, codebook=qp.codebook)
    return np.ascontiguousarray(np.asarray(q).T).reshape(shape), TensorType(tuple(shape), t.dtype, per_channel)


def rewrite(g: Graph, op, q: np.ndarray, t, in_scale=None) -> None:
    """``op`` -> ``matmul(x [* in_scale], dequantize(const q))`` [* alpha] [+ beta * C] (``in_scale``: AWQ's 1/s
    per input channel); a convolution keeps its op, its weight ``dequantize(const codes)`` (``conv_weight``)."""
    loc = op.loc
    if op.opname == "conv2d":
        old = op.operands[1].producer
        codes, ct = conv_weight(q, t, op.operands[1].type.shape)
        op.set_operand(1, g.create("dequantize", [g.const(codes, loc=loc, before=op, type=ct)], loc=loc,
                                   before=op).result)
        if not old.result.uses and not g.is_output(old.result):
            g.erase(old)
        return
    x = op.operands[0]
    w = g.create("dequantize", [g.const(q, loc=loc, before=op, type=t)], loc=loc, before=op).result
    if op.opname == "gemm" and op.attrs["trans_a"]:
        x = g.create("transpose", [x], {"perm": (1, 0)}, loc=loc, before=op).result
    if in_scale is not None:
        x = g.create("mul", [x, g.const(np.asarray(in_scale, np.float32), loc=loc, before=op)], loc=loc,
                     before=op).result
    y = g.create("matmul", [x, w], loc=loc, before=op).result
    if op.opname == "gemm":
        a = op.attrs
        if a["alpha"] != 1.0:
            y = g.create("mul", [y, g.const(np.asarray(a["alpha"], np.float32), loc=loc, before=op)], loc=loc,
                         before=op).result
        if len(op.operands) > 2:
            c = op.operands[2]
            if a["beta"] != 1.0:
                if c.is_const:
                    v = np.asarray(c.const_value)
                    c = g.const(v * np.asarray(a["beta"], v.dtype), loc=loc, before=op)
                else:
                    beta = g.const(np.asarray(a["beta"], np.float32), loc=loc, before=op)
                    c = g.create("mul", [c, beta], loc=loc, before=op).result
            y = g.create("add", [y, c], loc=loc, before=op).result
    producers = [v.producer for v in op.operands[1:]]
    g.replace_all_uses(op.results[0], y)
    g.erase(op)
    for p in producers:  # the f32 weight (and a folded C) when nothing else reads them
        if p.graph is g and p.opname == "const" and not p.result.uses and not g.is_output(p.result):
            g.erase(p)
