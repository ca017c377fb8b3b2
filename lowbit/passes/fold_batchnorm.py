"""fold-batchnorm: fold an inference BatchNormalization into the Conv, Gemm or MatMul that feeds it.

With f = scale / sqrt(var + eps):  W' = W * f (per output channel),  b' = (b - mean) * f + bias.
Folding is computed in float64 and stored in the weight's dtype. Declines (with a reason, printed by
``--debug-rewrites``) when the producer has other users, its weight or the BN parameters are not
constant, or BN's channel axis (1) is not the producer's output-channel axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Graph
from .base import Pass, PassContext, register_pass
from .rewriter import Any, Const, Pat, Rule, apply_rules

_BN_PARAMS = (Const("gamma"), Const("beta"), Const("mean"), Const("var"))


def _factors(root, m):
    eps = root.attrs["epsilon"]
    g, b, mu, var = (m[k].const_value.astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    f = g / np.sqrt(var + np.float64(np.float32(eps)))
    return f, b - mu * f


def _common_check(root, m, producer_key) -> str | None:
    prod = m[producer_key]
    y = prod.results[0]
    if len(y.uses) != 1 or root.graph.is_output(y):
        return f"{prod.describe()} result has other users"
    if y.type.dtype != dt.f32:
        return f"only f32 is folded, got {y.type.dtype.name}"
    c = y.type.shape[1] if y.type.rank > 1 else None
    for k in ("gamma", "beta", "mean", "var"):
        if m[k].type.shape != (c,):
            return f"batch_norm parameter '{k}' has shape {m[k].type.shape}, expected ({c},)"
    return None


def _check_constant_params(key: str, what: str):
    """A check for producers (conv2d, gemm) whose weight and optional bias must be constants to fold into."""
    def check(root, m):
        reason = _common_check(root, m, key)
        if reason:
            return reason
        ops = m[key].operands
        if not ops[1].is_const or (len(ops) == 3 and not ops[2].is_const):
            return f"{what} is not a constant"
        return None
    return check


def _rewrite_conv(g: Graph, root, m):
    conv = m["conv"]
    f, shift = _factors(root, m)
    w = conv.operands[1].const_value
    cout = w.shape[0]
    b = conv.operands[2].const_value.astype(np.float64) if len(conv.operands) == 3 else np.zeros(cout)
    w2 = g.const((w.astype(np.float64) * f.reshape(-1, 1, 1, 1)).astype(w.dtype), loc=conv.loc, before=root)
    b2 = g.const((b * f + shift).astype(w.dtype), loc=root.loc, before=root)
    return [g.create("conv2d", [conv.operands[0], w2, b2], conv.attrs, loc=conv.loc, before=root).result]


def _rewrite_gemm(g: Graph, root, m):
    gemm = m["gemm"]
    a = gemm.attrs
    f, shift = _factors(root, m)
    B = gemm.operands[1].const_value
    B2 = B.astype(np.float64) * (f.reshape(-1, 1) if a["trans_b"] else f.reshape(1, -1))
    n = f.shape[0]
    C = gemm.operands[2].const_value.astype(np.float64) * a["beta"] if len(gemm.operands) == 3 else np.zeros(n)
    C2 = C * f + shift
    if C2.ndim == 2 and C2.shape[0] == 1:
        C2 = C2.reshape(-1)
    ops = [gemm.operands[0], g.const(B2.astype(B.dtype), loc=gemm.loc, before=root),
           g.const(C2.astype(B.dtype), loc=root.loc, before=root)]
    attrs = dict(a, beta=1.0)
    return [g.create("gemm", ops, attrs, loc=gemm.loc, before=root).result]


def _check_matmul(root, m):
    reason = _common_check(root, m, "matmul")
    if reason:
        return reason
    mm = m["matmul"]
    w = mm.operands[1]
    if not w.is_const or w.type.rank != 2:
        return "matmul weight is not a 2-D constant"
    if mm.results[0].type.rank != 2:
        return (f"batch_norm normalises axis 1, which is not the output-channel axis of a rank-"
                f"{mm.results[0].type.rank} matmul")
    return None


def _rewrite_matmul(g: Graph, root, m):
    mm = m["matmul"]
    f, shift = _factors(root, m)
    W = mm.operands[1].const_value
    W2 = g.const((W.astype(np.float64) * f.reshape(1, -1)).astype(W.dtype), loc=mm.loc, before=root)
    y = g.create("matmul", [mm.operands[0], W2], loc=mm.loc, before=root).result
    bias = g.const(shift.astype(W.dtype), loc=root.loc, before=root)
    return [g.create("add", [y, bias], loc=root.loc, before=root).result]


RULES = [
    Rule("fold-bn-into-conv", Pat("batch_norm", Pat("conv2d", Any(), Any(), bind="conv", variadic=True),
                                  *_BN_PARAMS), _rewrite_conv,
         _check_constant_params("conv", "conv weight or bias")),
    Rule("fold-bn-into-gemm", Pat("batch_norm", Pat("gemm", Any(), Any(), bind="gemm", variadic=True),
                                  *_BN_PARAMS), _rewrite_gemm,
         _check_constant_params("gemm", "gemm B or C")),
    Rule("fold-bn-into-matmul", Pat("batch_norm", Pat("matmul", Any(), Any(), bind="matmul"), *_BN_PARAMS),
         _rewrite_matmul, _check_matmul),
]


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    name = "fold-batchnorm"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        apply_rules(graph, RULES, ctx)
