"""dce: remove ops whose results reach no graph output."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        ctx.rule_hits["dce"] = ctx.rule_hits.get("dce", 0) + graph.remove_dead_ops()
