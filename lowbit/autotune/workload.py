"""Tuning tasks: a model's kernels, deduplicated by lowbit's canonical workload.

A workload is what decides a kernel's code: the op, its attributes, every operand's shape, dtype, quantization
form (per-tensor or per-channel, not the scale values) and layout (plain NCHW, NHWC in an integer region, or
channel-blocked NCHWc, as the model's own lowering makes it), and the kernel the table chose. Two ops of a
model (or of two models) with one workload key share their tuning records.

A task holds a one-op graph of its first op (the constants are the model's own: kernel choices may depend on
them) whose inputs arrive in the layouts the model's lowering makes them in and whose output stays in the
layout the kernel makes; timing its ``main`` times the kernel as it runs in the model, without conversions the
model does not do.

>>> tasks = extract(graph, Target.parse("cpu"))     # doctest: +SKIP
>>> tasks[0].key                                     # doctest: +SKIP
'conv2d{activation=relu,dilations=(1,1),...}(f32[1,3,224,224]:plain,f32[64,3,7,7]:const,...)->f32[1,64,112,112]@nchw16c'
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir.graph import Graph, Op
from ..ir.registry import ops_with

KERNEL = "k"  # the name of the tuned op inside a task's one-op graph


@dataclass
class Task:
    """One workload of a model: its canonical ``key``, the ``names`` of the model's ops with it, the kernel
    chosen by default, the one-op ``graph`` and its ``input_layouts``, FLOPs and bytes moved."""

    key: str
    op: str
    kernel: str  # the epilogue ops' part of the key follows "+"
    names: list[str]
    graph: Graph
    input_layouts: dict
    flops: float
    bytes: float
    shapes: dict = field(default_factory=dict)

    def info(self, model: str | None = None) -> dict:
        d = {"op": self.op, "kernel": self.kernel, "flops": self.flops, "bytes": self.bytes, **self.shapes}
        if model:
            d["models"] = [model]
        return d


def _fmt(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}{v.dtype}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return repr(float(v))
    return str(v)


def _type_key(t, layout: str) -> str:
    q = ""
    if t.quant is not None:
        q = f"q(axis={t.quant.axis},group={t.quant.group})"
    return f"{t.dtype.name}{list(t.shape)}{q}:{layout}"


def workload_key(op: Op, layouts: list[str], kernel: str) -> str:
    """The canonical workload text of ``op`` lowered with ``kernel``, its operands in ``layouts``."""
    attrs = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(op.attrs.items()))
    ins = ",".join(_type_key(v.type, lay) for v, lay in zip(op.operands, layouts))
    outs = ",".join(_type_key(r.type, "") for r in op.results)
    return f"{op.opname}{{{attrs}}}({ins})->{outs}@{kernel}"


def flops(op: Op) -> float:
    """Multiply-adds x 2 of a compute op (convolutions and matmuls)."""
    r = op.result.type.shape
    if op.opname in ("conv2d", "qconv2d", "conv2d_bf16", "conv_transpose2d"):
        w = op.operands[1].type.shape
        if op.opname == "conv_transpose2d":  # every input pixel times the whole kernel
            x = op.operands[0].type.shape
            return 2.0 * np.prod(x) * np.prod(w[1:])
        return 2.0 * np.prod(r) * np.prod(w[1:])
    k = op.operands[0].type.shape[-1]
    return 2.0 * np.prod(r) * k


def _bytes(op: Op) -> float:
    return float(sum(v.type.size * v.type.dtype.np_dtype.itemsize for v in [*op.operands, *op.results]))


def epilogue(graph: Graph, op: Op) -> list[Op]:
    """The elementwise ops after ``op`` that TVM fuses into its kernel (bias, activation, residual add): each
    the only user of the one before, which is no graph output."""
    ew = ops_with("elementwise")
    chain, v = [], op.result
    while not graph.is_output(v) and len(v.users) == 1 and v.users[0].opname in ew and len(v.users[0].results) == 1:
        nxt = v.users[0]
        if sum(1 for x in nxt.operands if x is v) != 1:
            break
        chain.append(nxt)
        v = nxt.result
    return chain


def one_op_graph(ops: list[Op], layouts: dict[str, list[str]] | None = None) -> tuple[Graph, list[str]]:
    """A graph of ``ops`` (a kernel and its epilogue), the first named ``KERNEL``: constant operands copied,
    every other value from outside a graph input; and per input its layout (from ``layouts``: op name ->
    operand layouts, default plain)."""
    g = Graph(f"tune_{ops[0].opname}")
    vmap, lays = {}, []
    for n, op in enumerate(ops):
        name = op.loc or ""
        for j, v in enumerate(op.operands):
            if id(v) in vmap:
                continue
            if v.is_const:
                vmap[id(v)] = g.const(v.const_value, type=v.type)
            else:
                vmap[id(v)] = g.add_input(f"in{len(lays)}", v.type)
                lays.append((layouts or {}).get(name, ["plain"] * len(op.operands))[j])
        new = Op(op.opname, [vmap[id(v)] for v in op.operands], op.attrs, [r.type for r in op.results],
                 KERNEL if n == 0 else f"{KERNEL}_e{n}")
        g.insert(new)
        for r, nr in zip(op.results, new.results):
            vmap[id(r)] = nr
    last = g.ops[-1]
    g.set_outputs(list(last.results), [f"out{i}" for i in range(len(last.results))])
    return g, lays


def extract(graph: Graph, target, config=None, ops: frozenset | None = None) -> list[Task]:
    """The tuning tasks of ``graph`` (already through its pipeline) for ``target``: one per workload of its
    compute ops (``ops``: those op names; default every op with the ``compute`` trait), in graph order."""
    from ..codegen import CodegenConfig, Target
    from ..codegen.lower import to_relax
    from ..codegen.stack import short_stack

    target = Target.parse(target)
    config = CodegenConfig.parse(config)
    layouts: dict = {}
    _, chosen = short_stack(to_relax)(graph, target, config, layouts=layouts)
    kernel_of = {k["name"]: k["kernel"] for k in chosen}
    ops = ops or ops_with("compute")
    names = [op.loc or f"{op.opname}_{i}" for i, op in enumerate(graph.ops)]
    counts: dict = {}
    for op, n in zip(graph.ops, names):
        if op.opname != "const":  # folded constants keep their op's name; knobs never apply to them
            counts[n] = counts.get(n, 0) + 1
    tasks: dict[str, Task] = {}
    for op, name in zip(graph.ops, names):
        if op.opname not in ops or len(op.results) != 1:
            continue
        if op.loc is None or counts[name] > 1:
            continue  # per-kernel knobs are keyed by a unique op name: an op without one cannot take its own
        lay = layouts[name]
        kernel = kernel_of[name]
        chain = [op] + epilogue(graph, op)
        key = workload_key(op, lay, kernel) + "".join(
            "+" + workload_key(e, layouts.get(e.loc or "", []), kernel_of.get(e.loc or "", "?")) for e in chain[1:])
        if key in tasks:
            tasks[key].names.append(name)
            continue
        sub, lays = one_op_graph(chain, layouts)
        input_layouts = {}
        for i, la in enumerate(lays):
            if la == "nhwc":
                input_layouts[i] = "nhwc"
            elif la.startswith("b"):
                input_layouts[i] = int(la[1:])
        shapes = {"inputs": [list(v.type.shape) for v in op.operands], "dtypes": [v.type.dtype.name for v in op.operands]}
        tasks[key] = Task(key, op.opname, kernel, [name], sub, input_layouts, flops(op), _bytes(op), shapes)
    return list(tasks.values())


__all__ = ["Task", "extract", "workload_key", "one_op_graph", "flops", "KERNEL"]
