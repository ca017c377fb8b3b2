"""canonicalize: remove no-ops and collapse chains, so later passes see one form.

Rules: identity and dropout removal; reshape to the same shape; reshape of reshape; transpose pairs (and
identity transposes); cast to the same dtype; expand to the same shape; adding zero / multiplying by one
when that changes neither shape nor dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph
from .base import Pass, PassContext, register_pass
from .rewriter import Any, Const, Pat, Rule, apply_rules


def _same_type(root, x) -> str | None:
    r = root.result.type
    if (r.shape, r.dtype) != (x.type.shape, x.type.dtype):
        return f"result {r} differs from operand {x.type}"
    if r.quant != x.type.quant:
        return "quantization parameters differ"
    return None


def _forward(g: Graph, root, m):
    """Replace the root by its operand ``x``."""
    return [m["x"]]


def _reshape_chain(g: Graph, root, m):
    return [g.create("reshape", [m["x"]], {"shape": root.attrs["shape"]}, loc=root.loc, before=root).result]


def _transpose_pair(g: Graph, root, m):
    inner, outer = m["inner"].attrs["perm"], root.attrs["perm"]
    perm = tuple(inner[p] for p in outer)
    if perm == tuple(range(len(perm))):
        return [m["x"]]
    return [g.create("transpose", [m["x"]], {"perm": perm}, loc=root.loc, before=root).result]


def _const_is(value):
    def check(root, m):
        c = m["c"].const_value
        if not np.all(c == value):
            return f"constant is not all {value}"
        return _same_type(root, m["x"])
    return check


RULES = [
    Rule("remove-identity", Pat("identity", Any("x")), _forward),
    Rule("remove-dropout", Pat("dropout", Any("x")), _forward),
    Rule("reshape-noop", Pat("reshape", Any("x")), _forward,
         check=lambda root, m: _same_type(root, m["x"])),
    Rule("reshape-chain", Pat("reshape", Pat("reshape", Any("x"), bind="inner")), _reshape_chain),
    Rule("transpose-noop", Pat("transpose", Any("x")), _forward,
         check=lambda root, m: None if root.attrs["perm"] == tuple(range(len(root.attrs["perm"])))
         else "perm is not the identity"),
    Rule("transpose-pair", Pat("transpose", Pat("transpose", Any("x"), bind="inner")), _transpose_pair),
    Rule("cast-noop", Pat("cast", Any("x")), _forward, check=lambda root, m: _same_type(root, m["x"])),
    Rule("expand-noop", Pat("expand", Any("x")), _forward, check=lambda root, m: _same_type(root, m["x"])),
    Rule("add-zero", Pat("add", Any("x"), Const("c")), _forward, check=_const_is(0)),
    Rule("sub-zero", Pat("sub", Any("x"), Const("c")), _forward, check=_const_is(0)),
    Rule("mul-one", Pat("mul", Any("x"), Const("c")), _forward, check=_const_is(1)),
    Rule("div-one", Pat("div", Any("x"), Const("c")), _forward, check=_const_is(1)),
]


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    name = "canonicalize"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        apply_rules(graph, RULES, ctx)
