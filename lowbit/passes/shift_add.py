"""shift-add: weight-only 4-bit codebook quantization (power-of-two, additive powers of two, NF4), the weights'
products shifts and adds; activations stay f32.

Like ``quantize-weights`` (same targets — convolutions per output channel, ``convs`` — gemm rewriting,
calibration, exclusions and per-layer report), but each
stored 4-bit code indexes a codebook (``lowbit.quant.codebooks``): every matmul by a constant f32 [K, N] weight
and every gemm by a constant B becomes ``matmul(x, dequantize(const codes))``, the codes' type
``tensor<KxNxu4, q<axis=1, group=G, codebook=[...], [scale:0, ...]>>``: real = codebook[code] * scale, one f32
scale per column and per ``group`` rows of K. ``quantize{dynamic=true}`` after it makes ``qmatmul_dynamic`` of
the integer codebooks (``pow2``, ``apot``), whose group sums are exact integers; ``nf4`` stays dequantized.

Options: ``scheme`` (``apot``, ``pow2``, ``nf4``), ``group``, ``search`` (the MSE search of each group's scale
around max|w| / max|codebook|; false: that scale), ``method`` (``rtn``: nearest codebook value; ``gptq``: GPTQ's
column loop with the codebook quantizer, from calibration data; ``auto``: gptq with calibration data, else rtn
with a ``LowbitWarning``), ``damp`` and ``block`` (GPTQ's), ``exclude_ops``, ``exclude_nodes``, and
``fallback``: per layer, when the codebook's relative error exceeds plain int4's (``quantize-weights``'
symmetric i4 -7..7 on the same groups, by the same method), the layer is int4 instead (an i4 ``q<range=-7:7,
...>`` constant, what quantize-weights writes). The error compared is the layer's relative output error
‖X·Ŵ − X·W‖ / ‖X·W‖ on its calibration inputs (each layer's inputs from the already quantized earlier layers,
as quantize-weights), or without data the relative weight error ‖Ŵ − W‖ / ‖W‖.

Each layer's record in ``weight_report(ctx)`` (the list quantize-weights writes): ``{name, op, method, scheme
(the codebook, or "int4" where it fell back), bits, group, rel_error (None without data), weight_error,
fallback (bool), errors ({codebook: e, "int4": e}, the errors the fallback compared; None with fallback=false)}``.
``ctx.rule_hits["shift-add"]`` counts the layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph
from ..quant import codebooks as cbk
from ..quant import gptq as qw
from ..quant import scheme
from . import quantize_weights as qwp
from .base import Pass, PassContext, register_pass

METHODS = ("rtn", "gptq", "auto")
INT4 = "int4"


def _weight_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    w = np.asarray(w, np.float64)
    ref = float(np.sum(w * w))
    err = float(np.sum((np.asarray(w_hat, np.float64) - w) ** 2))
    return float(np.sqrt(err / ref)) if ref > 0 else (0.0 if err <= 0 else float("inf"))


@register_pass
@dataclass(frozen=True)
class ShiftAdd(Pass):
    name = "shift-add"
    scheme: str = "apot"
    group: int = 128
    method: str = "rtn"
    search: bool = True
    fallback: bool = True
    damp: float = 0.01
    block: int = 128
    exclude_ops: tuple[str, ...] = ()  # tuple[str, ...]: the pipeline parser reads that as a list
    exclude_nodes: tuple[str, ...] = ()
    convs: str = "dense"

    def __post_init__(self):
        if self.scheme not in cbk.CODEBOOKS:
            raise ValueError(f"unknown scheme '{self.scheme}' (known: {', '.join(cbk.CODEBOOKS)})")
        if self.group < 1 or self.block < 1:
            raise ValueError(f"group and block must be >= 1, got {self.group} and {self.block}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if not self.damp >= 0:
            raise ValueError(f"damp must be >= 0, got {self.damp}")
        if self.convs not in qwp.CONVS:
            raise ValueError(f"convs must be one of {', '.join(qwp.CONVS)}, got '{self.convs}'")

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = qwp.collect_targets(graph, ctx, self.name, self.exclude_ops, self.exclude_nodes, self.convs)
        if not targets:
            return
        method = qwp.resolve_method(ctx, self.name, self.method, "rounded to the nearest codebook value")
        if ctx.calibration is None:
            done = {id(op): self._choose(op, qwp.target_weight(op)[0], None, 0, method)[:3] for op in targets}
        else:
            from ..quant.calibrate import load_samples

            done = self._calibrated(graph, load_samples(ctx.calibration, graph), targets, method, ctx)
        rows = qwp.weight_report(ctx)
        for op in targets:
            q, t, rec = done[id(op)]
            rows.append({"name": op.loc or op.describe(), "op": op.opname, "method": qwp.layer_method(op, method), **rec})
            qwp.rewrite(graph, op, q, t)  # quantize-weights' rewrite: the same graph for a codebook weight
        ctx.rule_hits[self.name] = ctx.rule_hits.get(self.name, 0) + len(targets)

    def _quantize(self, op, w: np.ndarray, xtx, n: int, method: str, kind: str):
        """(codes or integers, type) of ``w`` by the codebook (``kind`` the scheme) or by int4 (a convolution's
        per output channel: ``quantize_weights.layer_group``)."""
        group = qwp.layer_group(op, w, self.group)
        rtn = qwp.layer_method(op, method) == "rtn" or xtx is None
        if kind == INT4:
            if rtn:
                return qw.rtn(w, 4, group, True)
            return qw.gptq(w, 2.0 * xtx / max(n, 1), 4, group, True, self.damp, self.block, what=op.describe())
        values = cbk.codebook(kind)
        if rtn:
            return cbk.rtn(w, values, group, self.search)
        return cbk.gptq(w, 2.0 * xtx / max(n, 1), values, group, self.search, self.damp, self.block,
                        what=op.describe())

    def _choose(self, op, w: np.ndarray, xtx, n: int, method: str):
        """(q, type, report fields, dequantized weight): the codebook's, or int4's where ``fallback`` finds it
        more accurate (output error with calibration inputs ``xtx``, else weight error)."""
        kinds = [self.scheme] + ([INT4] if self.fallback else [])
        cands = {}
        for kind in kinds:
            q, t = self._quantize(op, w, xtx, n, method, kind)
            w_hat = scheme.dequantize_array(q, t)
            out = None if xtx is None else qw.relative_error(w, w_hat, xtx)
            cands[kind] = (q, t, w_hat, out, _weight_error(w, w_hat))
        measure = {k: (c[3] if xtx is not None else c[4]) for k, c in cands.items()}
        kind = INT4 if self.fallback and measure[INT4] < measure[self.scheme] else self.scheme
        q, t, w_hat, out, werr = cands[kind]
        rec = {"scheme": kind, "bits": 4, "group": qwp.layer_group(op, w, self.group),
               "rel_error": None if out is None else round(out, 6), "weight_error": round(werr, 6),
               "fallback": kind == INT4,
               "errors": {k: round(v, 6) for k, v in measure.items()} if self.fallback else None}
        return q, t, rec, w_hat

    def _calibrated(self, graph: Graph, samples: list, targets: list, method: str, ctx) -> dict:
        """{id(op): (q, type, report fields)} in quantize-weights' sequential order (``calibrated_layers``)."""
        def layer(op, w, xtx, n):
            q, t, rec, w_hat = self._choose(op, w, xtx, n, method)
            return (q, t, rec), w_hat, None
        return qwp.calibrated_layers(graph, samples, targets, layer, tick=lambda s: ctx.tick(f"{self.name}: {s}"))
