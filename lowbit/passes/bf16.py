"""to-bf16: convolutions and matmuls by constant weights computed in bf16, accumulated in f32.

Each ``conv2d`` (groups 1) and each ``matmul`` / ``gemm`` by a constant weight that ``quantize`` could take
becomes ``conv2d_bf16`` / ``matmul_bf16``: the weight rounded to bf16 once, here; the f32 input rounded to bf16
inside the op; every product exact in f32 and the sums f32; the result f32, so elementwise ops, normalisation
and residual sums stay f32. A ReLU that is the result's only user becomes the op's activation. Depthwise and
grouped convolutions stay f32 (they are bound by memory, not multiplies). No calibration is needed.

Options: ``exclude_ops`` (op names left in f32, e.g. ``[gemm]``) and ``exclude_nodes`` (op locations).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Graph
from .base import Pass, PassContext, register_pass
from .quantize import weight_axis


def _absorb_relu(g: Graph, y) -> None:
    """A ReLU that is ``y``'s only user (``y`` not a graph output) becomes the producer's activation."""
    uses = list(y.uses)
    if len(uses) != 1 or uses[0][0].opname != "relu" or any(o is y for o in g.outputs):
        return
    relu = uses[0][0]
    y.producer.attrs["activation"] = "relu"
    g.replace_all_uses(relu.result, y)
    g.erase(relu)


@register_pass
@dataclass(frozen=True)
class Bf16(Pass):
    name = "to-bf16"
    exclude_ops: tuple = ()
    exclude_nodes: tuple = ()

    def run(self, graph: Graph, ctx: PassContext) -> None:
        targets = [op for op in graph.ops if op.opname in ("conv2d", "matmul", "gemm")
                   and op.opname not in self.exclude_ops and (op.loc or "") not in self.exclude_nodes
                   and weight_axis(op) is not None and (op.opname != "conv2d" or op.attrs["groups"] == 1)]
        for op in targets:
            w = op.operands[1].const_value.astype(np.float32)
            if op.opname == "gemm" and op.attrs["trans_b"]:  # [N, K] -> [K, N]
                w = np.ascontiguousarray(w.T)
            operands = [op.operands[0], graph.const(w.astype(dt.bf16.np_dtype), loc=op.loc, before=op)]
            if len(op.operands) > 2:
                b = op.operands[2].const_value.astype(np.float32).reshape(-1)
                if op.opname == "gemm" and b.size == 1:  # gemm's C broadcasts: one value per column
                    b = np.full(w.shape[1], b[0], np.float32)
                elif op.opname == "gemm" and op.operands[2].type.shape not in ((w.shape[1],), (1, w.shape[1])):
                    continue  # a bias per row is not the op's bias
                operands.append(graph.const(b, loc=op.loc, before=op))
            if op.opname == "conv2d":
                attrs = {k: op.attrs[k] for k in ("strides", "pads", "dilations", "groups")}
                y = graph.create("conv2d_bf16", operands, attrs, loc=op.loc, before=op).result
            else:
                y = graph.create("matmul_bf16", operands, {}, loc=op.loc, before=op).result
            graph.replace_all_uses(op.results[0], y)
            graph.erase(op)
            _absorb_relu(graph, y)
