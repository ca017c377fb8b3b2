"""SSA graph: ``Value``s defined once (graph input or op result), ``Op``s, and the ``Graph`` holding them.

>>> from lowbit.ir import Graph, TensorType, dtypes
>>> g = Graph("g")
>>> x = g.add_input("x", TensorType((2, 3), dtypes.f32))
>>> y = g.create("relu", [x]).result
>>> g.set_outputs([y], ["y"])
>>> print(g)  # doctest: +NORMALIZE_WHITESPACE
graph @g(%x: tensor<2x3xf32>) {
  %0 = relu(%x) : tensor<2x3xf32>
  return %0 as "y"
}
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .types import TensorType

# The op registry (building and verifying ops against their schemas) and the printer sit above this module and
# install themselves here when imported (``lowbit.ir`` imports both), so the graph core imports neither.
_SCHEMA: dict = {}


def install(**hooks) -> None:
    """Called by ``registry`` (``build_op``, ``verify_op``) and ``printer`` (``print_graph``) at import."""
    _SCHEMA.update(hooks)


class Value:
    """An SSA value: a graph input (``producer is None``) or result ``index`` of ``producer``."""

    __slots__ = ("type", "name", "producer", "index", "uses")

    def __init__(self, type: TensorType, name: str | None = None, producer: "Op | None" = None, index: int = 0):
        self.type = type
        self.name = name
        self.producer = producer
        self.index = index
        self.uses: list[tuple[Op, int]] = []

    @property
    def is_const(self) -> bool:
        return self.producer is not None and self.producer.opname == "const"

    @property
    def const_value(self) -> np.ndarray:
        if not self.is_const:
            raise ValueError("value is not a constant")
        return self.producer.attrs["value"]

    @property
    def users(self) -> list["Op"]:
        seen, out = set(), []
        for op, _ in self.uses:
            if id(op) not in seen:
                seen.add(id(op))
                out.append(op)
        return out

    def __repr__(self) -> str:
        return f"<Value {self.name or '?'}: {self.type}>"


class Op:
    """An operation: an op name from the registry, operand values, attributes and result values."""

    __slots__ = ("opname", "operands", "attrs", "results", "loc", "graph")

    def __init__(self, opname: str, operands: Sequence[Value], attrs: dict, result_types: Sequence[TensorType],
                 loc: str | None = None):
        self.opname = opname
        self.operands: list[Value] = []
        self.attrs = dict(attrs)
        self.results = [Value(t, None, self, i) for i, t in enumerate(result_types)]
        self.loc = loc
        self.graph: Graph | None = None
        for v in operands:
            self._append_operand(v)

    def _append_operand(self, v: Value) -> None:
        v.uses.append((self, len(self.operands)))
        self.operands.append(v)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.opname} has {len(self.results)} results")
        return self.results[0]

    def set_operand(self, i: int, v: Value) -> None:
        old = self.operands[i]
        old.uses.remove((self, i))
        self.operands[i] = v
        v.uses.append((self, i))

    def drop_operands(self) -> None:
        for i, v in enumerate(self.operands):
            v.uses.remove((self, i))
        self.operands = []

    def describe(self) -> str:
        """How errors name this op: its op name and, where known, the source node name."""
        return f"{self.opname} '{self.loc}'" if self.loc else self.opname

    def __repr__(self) -> str:
        return f"<Op {self.describe()}>"


class Graph:
    """A function: named inputs, ops in topological order, named outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []

    # -- building ----------------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        if any(v.name == name for v in self.inputs):
            raise ValueError(f"duplicate graph input '{name}'")
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def create(self, opname: str, operands: Sequence[Value], attrs: dict | None = None,
               result_types: Sequence[TensorType] | None = None, loc: str | None = None,
               before: Op | None = None) -> Op:
        """Create an op (attributes completed with defaults, types inferred unless given) and insert it
        at the end, or just before ``before``."""
        op = _SCHEMA["build_op"](opname, list(operands), dict(attrs or {}), result_types, loc)
        self.insert(op, before)
        return op

    def const(self, array, loc: str | None = None, before: Op | None = None, type: TensorType | None = None) -> Value:
        """Insert a constant op holding ``array`` and return its value."""
        from .dtypes import DType

        array = np.asarray(array)
        if type is None:
            type = TensorType(array.shape, DType.from_numpy(array.dtype))
        return self.create("const", [], {"value": array}, [type], loc=loc, before=before).result

    def insert(self, op: Op, before: Op | None = None) -> Op:
        op.graph = self
        if before is None:
            self.ops.append(op)
        else:
            self.ops.insert(self.ops.index(before), op)
        return op

    def set_outputs(self, values: Sequence[Value], names: Sequence[str]) -> None:
        if len(values) != len(names):
            raise ValueError("one name per output")
        self.outputs = list(values)
        self.output_names = list(names)

    # -- rewriting -----------------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (op operands and graph outputs) at ``new``."""
        if old is new:
            return
        for op, i in list(old.uses):
            op.set_operand(i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase(self, op: Op) -> None:
        """Remove ``op``; its results must be unused."""
        for r in op.results:
            if r.uses or any(r is o for o in self.outputs):
                raise ValueError(f"cannot erase {op.describe()}: its result is still used")
        op.drop_operands()
        self.ops.remove(op)
        op.graph = None

    def replace_op(self, op: Op, new_values: Sequence[Value]) -> None:
        """Replace all results of ``op`` by ``new_values`` and erase it."""
        for old, new in zip(op.results, new_values, strict=True):
            self.replace_all_uses(old, new)
        self.erase(op)

    def is_output(self, v: Value) -> bool:
        return any(v is o for o in self.outputs)

    def remove_dead_ops(self) -> int:
        """Erase ops none of whose results are used; return how many were erased."""
        live = {id(v) for v in self.outputs}
        keep = []
        removed = 0
        for op in reversed(self.ops):
            if any(id(r) in live for r in op.results):
                keep.append(op)
                live.update(id(v) for v in op.operands)
            else:
                removed += 1
                op.drop_operands()
                op.graph = None
        self.ops = keep[::-1]
        return removed

    # -- queries ---------------------------------------------------------------------------------------
    def input(self, name: str) -> Value:
        for v in self.inputs:
            if v.name == name:
                return v
        raise KeyError(name)

    def verify(self) -> None:
        """Check SSA order, use lists, and every op against its schema; raise ValueError naming the op."""
        verify_op = _SCHEMA["verify_op"]
        defined = {id(v) for v in self.inputs}
        for op in self.ops:
            if op.graph is not self:
                raise ValueError(f"{op.describe()} is listed in the graph but not attached to it")
            for i, v in enumerate(op.operands):
                if id(v) not in defined:
                    raise ValueError(f"{op.describe()}: operand {i} is used before it is defined")
                if (op, i) not in v.uses:
                    raise ValueError(f"{op.describe()}: operand {i} is missing from its value's use list")
            verify_op(op)
            defined.update(id(r) for r in op.results)
        for name, v in zip(self.output_names, self.outputs):
            if id(v) not in defined:
                raise ValueError(f"graph output '{name}' is not defined")

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.opname] = counts.get(op.opname, 0) + 1
        return counts

    def clone(self) -> "Graph":
        """A deep copy (constant arrays are shared: they are never mutated in place)."""
        g = Graph(self.name)
        vmap = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        for op in self.ops:
            new = Op(op.opname, [vmap[id(v)] for v in op.operands], op.attrs, [r.type for r in op.results], op.loc)
            g.insert(new)
            for r, nr in zip(op.results, new.results):
                vmap[id(r)] = nr
        g.set_outputs([vmap[id(v)] for v in self.outputs], self.output_names)
        return g

    def __str__(self) -> str:
        return _SCHEMA["print_graph"](self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and str(self) == str(other)

    __hash__ = None
