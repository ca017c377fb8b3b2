"""ONNX control flow, resolved at import: If with a constant condition (the chosen branch is imported inline)
and Loop with a constant trip count and condition (unrolled). lowbit compiles static graphs, so a condition
computed at run time is refused by name; constant folding at import makes conditions computed from shapes or
initializers constant by the time the node is converted.
"""
from __future__ import annotations

import numpy as np

from .onnx_ctx import Ctx, NodeError, converter, reshape_to

# The most iterations a Loop is unrolled to.
MAX_UNROLL = 1024


def _convert_subgraph(c: Ctx, sg, what: str, bindings: dict) -> list:
    if c.subgraph is None:
        raise NodeError("sub-graphs can only be converted by the ONNX importer")
    return c.subgraph(sg, what, bindings)


def _scalar_bool(v, what: str) -> bool:
    arr = np.asarray(v)
    if arr.size != 1:
        raise NodeError(f"{what} has shape {list(arr.shape)}: it must hold one value")
    return bool(arr.reshape(-1)[0])


def _fresh(c: Ctx, outs: list, outer: set) -> list:
    """Outputs as Values of their own: a value from the enclosing scope (or one bound to two outputs) goes
    through an identity, so that every ONNX name gets a Value that lowbit can make a graph output."""
    seen, res = set(), []
    for v in outs:
        if id(v) in outer or id(v) in seen:
            v = c.op("identity", [v])
        seen.add(id(v))
        res.append(v)
    return res


@converter("If")
def _if(c: Ctx):
    a = c.attrs(then_branch=None, else_branch=None)
    for k in ("then_branch", "else_branch"):
        if a[k] is None:
            raise NodeError(f"attribute '{k}' is required")
    cond = c.need(0, "cond")
    if not cond.is_const:
        raise NodeError(f"If with a condition computed at run time: input 0 (cond) must be a constant: lowbit "
                        f"compiles static graphs, and '{c.node.input[0]}' is computed at run time")
    which = "then_branch" if _scalar_bool(cond.const_value, "input 0 (cond)") else "else_branch"
    branch = a[which]
    outer = {id(v) for v in c.env.values()}
    outs = _convert_subgraph(c, branch, which, {})
    n = len(c.node.output)
    if len(outs) != n:
        raise NodeError(f"the {which} has {len(outs)} output(s), the node {n}")
    return _fresh(c, outs, outer)


@converter("Loop")
def _loop(c: Ctx):
    a = c.attrs(body=None)
    body = a["body"]
    if body is None:
        raise NodeError("attribute 'body' is required")
    node = c.node
    carried = [c.need(i, "loop-carried value") for i in range(2, len(node.input))]
    k = len(carried)
    if len(body.input) != k + 2:
        raise NodeError(f"the body has {len(body.input)} input(s), expected {k + 2} (iteration number, condition "
                        f"and {k} loop-carried value(s))")
    n_scan = len(body.output) - 1 - k
    if n_scan < 0:
        raise NodeError(f"the body has {len(body.output)} output(s), expected at least {k + 1} (condition and "
                        f"{k} loop-carried value(s))")
    trip = c.const(0, "M (trip count)")
    has_cond = c.inp(1) is not None
    if trip is None and not has_cond:
        raise NodeError("Loop with neither a trip count nor a condition runs forever")
    if trip is not None:
        trip = int(np.asarray(trip).reshape(-1)[0]) if np.asarray(trip).size == 1 else None
        if trip is None:
            raise NodeError("input 0 (M) must hold one value")
        if trip > MAX_UNROLL:
            raise NodeError(f"Loop with a trip count of {trip}: lowbit unrolls loops at import, up to "
                            f"{MAX_UNROLL} iterations")
    keep = _scalar_bool(c.const(1, "cond"), "input 1 (cond)") if has_cond else True
    outer = {id(v) for v in c.env.values()}
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while keep and (trip is None or i < trip):
        if i >= MAX_UNROLL:
            raise NodeError(f"Loop still running after {MAX_UNROLL} iterations: lowbit unrolls loops at import, "
                            f"up to {MAX_UNROLL} iterations")
        bind = {}
        if body.input[0].name:
            bind[body.input[0].name] = c.const_value(np.asarray(i, np.int64))
        if body.input[1].name:
            bind[body.input[1].name] = c.const_value(np.asarray(keep, np.bool_))
        for vi, v in zip(body.input[2:], carried):
            bind[vi.name] = v
        outs = _convert_subgraph(c, body, f"body (iteration {i})", bind)
        if has_cond:  # without a cond input, the body's condition output is ignored (ONNX's "for loop")
            if not outs[0].is_const:
                raise NodeError(f"Loop with a condition that changes at run time: the body's output 0 (cond) must "
                                f"be a constant: lowbit compiles static graphs, and '{body.output[0].name}' is "
                                "computed at run time")
            keep = _scalar_bool(outs[0].const_value, "the body's output 0 (cond)")
        carried = outs[1:1 + k]
        for j, v in enumerate(outs[1 + k:]):
            scans[j].append(v)
        i += 1
    results = list(carried)
    for j, vals in enumerate(scans):
        if not vals:
            raise NodeError(f"scan output {j} ('{body.output[1 + k + j].name}') of a loop that runs no iteration "
                            "has no shape lowbit can know")
        rows = [reshape_to(c, v, (1, *v.type.shape)) for v in vals]
        results.append(rows[0] if len(rows) == 1 else c.op("concat", rows, {"axis": 0}))
    return _fresh(c, results, outer)
