"""Declarative local rewrites: a pattern, a ``check`` that returns a reason to decline, and a rewrite.

>>> from lowbit.passes.rewriter import Pat, Any
>>> pattern = Pat("reshape", Pat("reshape", Any("x"), bind="inner"), bind="outer")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir.graph import Graph, Op, Value


class Any:
    """Matches any value; binds it under ``name``."""

    def __init__(self, name: str | None = None):
        self.name = name

    def match(self, v: Value, m: dict) -> bool:
        if self.name:
            m[self.name] = v
        return True


class Const(Any):
    """Matches a constant value; binds the value under ``name``."""

    def match(self, v: Value, m: dict) -> bool:
        return v.is_const and super().match(v, m)


class Pat:
    """Matches a value produced by an op named ``opname`` (or one of several) whose operands match
    ``operands`` (extra operands beyond the listed ones are allowed when ``variadic``); binds the op."""

    def __init__(self, opname: str | tuple[str, ...], *operands, bind: str | None = None, variadic: bool = False):
        self.opnames = (opname,) if isinstance(opname, str) else tuple(opname)
        self.operands = operands
        self.bind = bind
        self.variadic = variadic

    def match_op(self, op: Op, m: dict) -> bool:
        if op.opname not in self.opnames:
            return False
        n = len(self.operands)
        if len(op.operands) < n or (not self.variadic and len(op.operands) != n):
            return False
        if self.bind:
            m[self.bind] = op
        return all(p.match(v, m) for p, v in zip(self.operands, op.operands))

    def match(self, v: Value, m: dict) -> bool:
        return v.producer is not None and self.match_op(v.producer, m)


@dataclass(frozen=True)
class Rule:
    """``rewrite(graph, root, bindings)`` returns the values that replace the root op's results; it inserts
    new ops with ``before=root``. ``check(root, bindings)`` returns None to proceed or a reason to decline."""

    name: str
    pattern: Pat
    rewrite: Callable[[Graph, Op, dict], list[Value]]
    check: Callable[[Op, dict], str | None] | None = None


def _erase_dead(graph: Graph, op: Op) -> None:
    """Erase ``op`` if none of its results is used, then its producers that became dead."""
    work = [op]
    while work:
        o = work.pop()
        if o.graph is not graph or any(r.uses or graph.is_output(r) for r in o.results):
            continue
        producers = [v.producer for v in o.operands if v.producer is not None]
        graph.erase(o)
        work.extend(producers)


def apply_rules(graph: Graph, rules: list[Rule], ctx=None, max_sweeps: int = 64) -> dict[str, int]:
    """Apply ``rules`` greedily, sweeping the graph until nothing changes; return hits per rule name.

    Declines (a matched rule whose check gave a reason) are printed when ``ctx.debug_rewrites`` is set.
    """
    by_root: dict[str, list[Rule]] = {}
    for r in rules:
        for name in r.pattern.opnames:
            by_root.setdefault(name, []).append(r)
    hits = {r.name: 0 for r in rules}
    for _ in range(max_sweeps):
        changed = False
        for op in list(graph.ops):
            if op.graph is not graph:
                continue
            for rule in by_root.get(op.opname, ()):
                m: dict = {}
                if not rule.pattern.match_op(op, m):
                    continue
                reason = rule.check(op, m) if rule.check else None
                if reason:
                    if ctx is not None and ctx.debug_rewrites:
                        ctx.log(f"rule '{rule.name}' declined at {op.describe()}: {reason}")
                    continue
                new = rule.rewrite(graph, op, m)
                for old, nv in zip(op.results, new, strict=True):
                    graph.replace_all_uses(old, nv)
                _erase_dead(graph, op)
                hits[rule.name] += 1
                changed = True
                break
        if not changed:
            break
    if ctx is not None:
        for k, v in hits.items():
            ctx.rule_hits[k] = ctx.rule_hits.get(k, 0) + v
    return hits
