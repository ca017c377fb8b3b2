"""fold-constants: evaluate ops whose operands are all constant with the reference interpreter.

Ops with the registry's ``no_fold`` trait (the quantization ops) are left alone: folding a dequantize of an
int8 weight would discard the quantization the graph asks for.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.interp import evaluate_op
from ..ir.registry import has_trait
from .base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """``max_elements``: results larger than this stay computed at run time (keeps artifacts small)."""

    name = "fold-constants"
    max_elements: int = 1 << 24

    def run(self, graph: Graph, ctx: PassContext) -> None:
        folded = 0
        for op in list(graph.ops):
            if has_trait(op.opname, "no_fold") or not op.operands or not all(v.is_const for v in op.operands):
                continue
            if any(r.type.size > self.max_elements for r in op.results):
                continue
            values = evaluate_op(op, [v.const_value for v in op.operands])
            new = [graph.const(a, loc=op.loc, before=op, type=r.type.with_shape(r.type.shape))
                   for a, r in zip(values, op.results)]
            producers = [v.producer for v in op.operands]
            graph.replace_op(op, new)
            for p in producers:
                if p.graph is graph and not any(r.uses or graph.is_output(r) for r in p.results):
                    graph.erase(p)
            folded += 1
        ctx.rule_hits["fold-constants"] = ctx.rule_hits.get("fold-constants", 0) + folded
