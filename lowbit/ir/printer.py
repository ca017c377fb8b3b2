"""Deterministic text form of a graph. ``parse(print_graph(g))`` prints identically.

Constants of up to ``INLINE_LIMIT`` elements print inline (``dense<[1.0, 2.0]>``); larger ones print as
``dense_resource<blobN>`` with their little-endian bytes, base64-encoded, in a trailing ``resources`` block.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np

from .dtypes import DType
from .graph import Graph, Value, install

INLINE_LIMIT = 16
_BARE = re.compile(r"[A-Za-z_][\w.]*\Z")


def fmt_name(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def fmt_float(v: float) -> str:
    return repr(float(v))


def fmt_scalar(v, dtype: DType) -> str:
    if dtype.kind == "bool":
        return "true" if v else "false"
    if dtype.is_integer:
        return str(int(v))
    if dtype.np_dtype in (np.float32, np.float16):
        return str(dtype.np_dtype.type(v))  # numpy prints the shortest text that round-trips in that width
    return repr(float(v))


def fmt_attr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.name
    if isinstance(v, tuple):
        return "[" + ", ".join(fmt_attr(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def print_graph(g: Graph) -> str:
    names: dict[int, str] = {}
    for v in g.inputs:
        names[id(v)] = "%" + fmt_name(v.name)
    counter = 0
    resources: list[str] = []

    def ref(v: Value) -> str:
        try:
            return names[id(v)]
        except KeyError:
            raise ValueError(f"value {v!r} is used but not defined in graph @{g.name}") from None

    lines = [f"graph @{fmt_name(g.name)}(" + ", ".join(f"{names[id(v)]}: {v.type}" for v in g.inputs) + ") {"]
    for op in g.ops:
        res = []
        for r in op.results:
            names[id(r)] = f"%{counter}"
            res.append(names[id(r)])
            counter += 1
        if op.opname == "const":
            a = op.attrs["value"]
            dtype = op.result.type.dtype
            if a.size <= INLINE_LIMIT:
                body = "dense<[" + ", ".join(fmt_scalar(x, dtype) for x in a.reshape(-1).tolist()) + "]>"
            else:
                key = f"blob{len(resources)}"
                data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                resources.append(f"  {key}: \"{base64.b64encode(data).decode('ascii')}\"")
                body = f"dense_resource<{key}>"
            line = f"  {res[0]} = const {body} : {op.result.type}"
        else:
            attrs = ""
            if op.attrs:
                attrs = " {" + ", ".join(f"{k} = {fmt_attr(op.attrs[k])}" for k in sorted(op.attrs)) + "}"
            operands = ", ".join(ref(v) for v in op.operands)
            types = ", ".join(str(r.type) for r in op.results)
            line = f"  {', '.join(res)} = {op.opname}({operands}){attrs} : {types}"
        if op.loc:
            line += f" loc({json.dumps(op.loc)})"
        lines.append(line)
    rets = ", ".join(f"{ref(v)} as {json.dumps(n)}" for v, n in zip(g.outputs, g.output_names))
    lines.append(f"  return {rets}")
    lines.append("}")
    if resources:
        lines.append("resources {")
        lines.extend(resources)
        lines.append("}")
    return "\n".join(lines) + "\n"


install(print_graph=print_graph)
