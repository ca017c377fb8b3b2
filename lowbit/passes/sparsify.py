"""sparsify: one-shot pruning of the weights of matmuls, gemms and convolutions, without retraining.

Every constant f32 weight a weight pass takes (``quantize_weights.collect_targets``: matmul / gemm by a constant,
conv2d with groups 1 — ``convs=all`` also grouped and depthwise ones, ``none`` no convolutions) gets some of its
entries set to zero, the rest kept (magnitude, Wanda) or reconstructed (SparseGPT); its type records the pattern:
``tensor<KxNxf32, sparse<0.5>>`` (unstructured, the actual fraction of zeros), ``nm<2:4>`` or ``block<4x1>``, which
the verifier checks against the constant and later passes carry to the quantized weight (``quantize``'s i8
weights; their zeros stay zero) so kernels that read compressed weights can take it. Run it before quantization:

    sparsify{pattern=unstructured,ratio=0.5,method=sparsegpt},quantize{dynamic=true}

Options:

- ``pattern``: ``unstructured``, ``N:M`` (``2:4``, along the reduction axis) or ``block:RxC`` (R inputs x C outputs);
  ``ratio``: the fraction of zeros for unstructured and block (N:M implies 1 - N/M);
- ``method``: ``magnitude`` (no data), ``wanda`` and ``sparsegpt`` (calibration data, ``--calib``), or ``auto``
  (sparsegpt with data, else magnitude with a warning); ``damp`` and ``block`` are SparseGPT's
  (``lowbit.quant.prune`` has the algorithms);
- ``bias_correction`` (with data; default true): a layer with a constant bias (a convolution's, a gemm's C, or a
  constant added right after a matmul) gets ``mean(x) · (W − Ŵ)`` added to it, so its mean output over the
  calibration inputs is what it was before pruning — what re-estimating batch-norm statistics would do once the
  batch norms are folded;
- ``min_weights`` (default 4096): layers with fewer weights stay dense — a first convolution over 3 channels or
  a 10-way classifier holds a fraction of a percent of a model's weights, and pruning it saves no time but costs
  the most accuracy (a 3x3 filter over one channel has 9 weights); 0 prunes every layer;
- ``exclude_ops``, ``exclude_nodes`` (ONNX node names), ``convs`` as ``quantize-weights``.

With calibration data the layers are pruned in graph order, each from the inputs the already pruned earlier
layers give it (``quantize_weights.calibrated_layers``). Each layer's record ``{name, op, method, pattern,
weights (their count), sparsity (their fraction of zeros), rel_error (‖X·Ŵ − X·W‖ / ‖X·W‖ on its calibration inputs, None without data),
bias_corrected}`` goes to ``ctx.sparsity_report`` (the artifact's ``sparsity_report``; ``lowbit inspect`` prints
it with the kernel each layer got); ``ctx.rule_hits["sparsify"]`` counts the layers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import LowbitError, LowbitWarning
from ..ir.graph import Graph
from ..ir.types import TensorType
from ..quant import gptq as qw
from ..quant import prune
from . import quantize_weights as qwp
from .base import Pass, PassContext, register_pass

METHODS = prune.METHODS + ("auto",)


def sparsity_report(ctx: PassContext) -> list:
    """The per-layer records sparsify appended to ``ctx``."""
    return qwp.report_rows(ctx, "sparsity_report")


@register_pass
@dataclass(frozen=True)
class Sparsify(Pass):
    name = "sparsify"
    pattern: str = "unstructured"
    ratio: float = 0.5
    method: str = "auto"
    damp: float = 0.01
    block: int = 128
    bias_correction: bool = True
    exclude_ops: tuple[str, ...] = ()  # tuple[str, ...]: the pipeline parser reads that as a list
    exclude_nodes: tuple[str, ...] = ()
    convs: str = "dense"
    min_weights: int = 4096

    def __post_init__(self):
        prune.Pattern.parse(self.pattern, self.ratio)  # raises ValueError on a bad pattern or ratio
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}' (known: {', '.join(METHODS)})")
        if self.block < 1 or not self.damp >= 0:
            raise ValueError(f"block must be >= 1 and damp >= 0, got {self.block} and {self.damp}")
        if self.convs not in qwp.CONVS:
            raise ValueError(f"convs must be one of {', '.join(qwp.CONVS)}, got '{self.convs}'")

    def _method(self, ctx: PassContext) -> str:
        if ctx.calibration is None and self.method in ("wanda", "sparsegpt"):
            raise LowbitError(f"sparsify{{method={self.method}}} needs calibration data (lowbit compile --calib DATA, "
                              "or PassContext(calibration=...)); method=magnitude needs none")
        if self.method != "auto":
            return self.method
        if ctx.calibration is None:
            warnings.warn("sparsify: no calibration data, so the weights are pruned by magnitude instead of "
                          "SparseGPT; give --calib DATA", LowbitWarning, stacklevel=3)
            return "magnitude"
        return "sparsegpt"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        pattern = prune.Pattern.parse(self.pattern, self.ratio)
        targets = qwp.collect_targets(graph, ctx, self.name, self.exclude_ops, self.exclude_nodes, self.convs)
        small = [op for op in targets if op.operands[1].type.size < self.min_weights]
        for op in small:
            if ctx.debug_rewrites:
                ctx.log(f"{self.name}: {op.describe()} stays dense: {op.operands[1].type.size} weights, fewer than "
                        f"min_weights={self.min_weights}")
        targets = [op for op in targets if op not in small]
        if not targets:
            return
        method = self._method(ctx)
        if ctx.calibration is None:
            done = {id(op): (prune.magnitude(qwp.target_weight(op)[0], pattern), None, None) for op in targets}
        else:
            from ..quant.calibrate import load_samples

            done = self._calibrated(graph, load_samples(ctx.calibration, graph), targets, method, pattern, ctx)
        rows = sparsity_report(ctx)
        for op in targets:
            w_hat, err, delta = done[id(op)]
            corrected = delta is not None and _correct_bias(graph, op, delta)
            _rewrite(graph, op, w_hat, pattern)
            rows.append({"name": op.loc or op.describe(), "op": op.opname,
                         "method": "magnitude" if _grouped(op) else method, "pattern": self.pattern_text(pattern),
                         "weights": int(w_hat.size), "sparsity": round(float(np.count_nonzero(w_hat == 0)) / w_hat.size, 4),
                         "rel_error": None if err is None else round(err, 6), "bias_corrected": bool(corrected)})
        ctx.rule_hits[self.name] = ctx.rule_hits.get(self.name, 0) + len(targets)

    @staticmethod
    def pattern_text(p: prune.Pattern) -> str:
        if p.kind == "nm":
            return f"{p.n}:{p.m}"
        if p.kind == "block":
            return f"block:{p.rows}x{p.cols} {p.ratio:g}"
        return f"unstructured {p.ratio:g}"

    def _prune(self, op, w: np.ndarray, xtx, n: int, method: str, pattern) -> np.ndarray:
        if method == "magnitude" or xtx is None:  # a grouped convolution has no single Hessian
            return prune.magnitude(w, pattern)
        if method == "wanda":
            return prune.wanda(w, xtx, n, pattern)
        return prune.sparsegpt(w, 2.0 * xtx / max(n, 1), pattern, self.damp, self.block, what=op.describe())

    def _calibrated(self, graph: Graph, samples: list, targets: list, method: str, pattern, ctx) -> dict:
        """{id(op): (pruned weight [K, N], relative error, bias change or None)}, in graph order."""
        def layer(op, w, xtx, n, mean):
            w_hat = self._prune(op, w, xtx, n, method, pattern)
            err = None if xtx is None else qw.relative_error(w, w_hat, xtx)
            delta = None
            if self.bias_correction and mean is not None:
                delta = (mean.astype(np.float64) @ (np.asarray(w, np.float64) - w_hat)).astype(np.float32)
            return (w_hat, err, delta), w_hat, None
        return qwp.calibrated_layers(graph, samples, targets, layer, tick=lambda s: ctx.tick(f"{self.name}: {s}"),
                                     means=True)


def _grouped(op) -> bool:
    return op.opname == "conv2d" and op.attrs["groups"] != 1


def _rewrite(g: Graph, op, w_hat: np.ndarray, pattern) -> None:
    """The op's weight operand replaced by the pruned constant (in the op's own layout), typed with its encoding."""
    old = op.operands[1]
    if op.opname == "conv2d":
        value = np.ascontiguousarray(w_hat.T).reshape(old.type.shape)
    elif op.opname == "gemm" and op.attrs["trans_b"]:
        value = np.ascontiguousarray(w_hat.T)
    else:
        value = np.ascontiguousarray(w_hat)
    enc = pattern.encoding(value)
    if enc.kind != "sparse" and (value is not w_hat and op.opname == "gemm" or enc.check(value) is not None):
        # nm and block read a rank-2 constant as [K, N]; a gemm's [N, K] B says only its fraction of zeros
        enc = enc.sparse(float(np.count_nonzero(value == 0)) / value.size)
    t = TensorType(old.type.shape, old.type.dtype, None, enc)
    op.set_operand(1, g.const(value.astype(np.float32), loc=op.loc, before=op, type=t))
    p = old.producer
    if p is not None and p.opname == "const" and not old.uses and not g.is_output(old):
        g.erase(p)


def _correct_bias(g: Graph, op, delta: np.ndarray) -> bool:
    """Add ``delta`` [N] to the op's constant bias (conv2d's operand 2, gemm's C / beta, or the constant of an
    ``add`` that alone reads a matmul); False where there is none."""
    n = delta.shape[0]
    if op.opname == "conv2d" or (op.opname == "gemm" and len(op.operands) > 2):
        if len(op.operands) < 3 or not op.operands[2].is_const:
            return False
        b = op.operands[2]
        scale = op.attrs.get("beta", 1.0) if op.opname == "gemm" else 1.0
        v = np.asarray(b.const_value, np.float32)
        if scale == 0 or v.size not in (1, n) or (op.opname == "gemm" and v.ndim == 2 and v.shape[0] != 1):
            return False
        new = (np.broadcast_to(v.reshape(-1), (n,)) + delta / np.float32(scale)).astype(np.float32)
        new = new.reshape((n,) if v.ndim <= 1 else (1, n))
        op.set_operand(2, g.const(new, loc=op.loc, before=op))
        return True
    if op.opname != "matmul" or len(op.result.uses) != 1:
        return False
    user, i = op.result.uses[0]
    if user.opname != "add" or not user.operands[1 - i].is_const:
        return False
    c = user.operands[1 - i]
    v = np.asarray(c.const_value, np.float32)
    if v.shape[-1:] != (n,) or v.size != n or user.result.type.shape != op.result.type.shape:
        return False
    user.set_operand(1 - i, g.const((v.reshape(-1) + delta).reshape(v.shape).astype(np.float32), loc=user.loc,
                                    before=user))
    return True
