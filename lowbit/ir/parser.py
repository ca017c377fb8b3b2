"""Parser for the text form written by ``printer.print_graph``.

>>> from lowbit.ir.parser import parse
>>> g = parse('graph @g(%x: tensor<2xf32>) {\\n  %0 = neg(%x) : tensor<2xf32>\\n  return %0 as "y"\\n}\\n')
>>> [op.opname for op in g.ops]
['neg']
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np

from ..errors import LowbitError
from .dtypes import DType
from .graph import Graph
from .registry import build_op
from .types import Encoding, QuantParams, TensorType

_WS = re.compile(r"(?:\s|//[^\n]*)*")
_IDENT = re.compile(r"[A-Za-z_][\w.]*")
_VALUE = re.compile(r'%([A-Za-z_][\w.]*|\d+|"(?:[^"\\]|\\.)*")')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NUMBER = re.compile(r"[-+]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_DIMS = re.compile(r"((?:\d+x)*)([a-z][a-z0-9]*)")


class _Parser:
    def __init__(self, text: str, source: str):
        self.text = text
        self.pos = 0
        self.source = source

    # -- low level ---------------------------------------------------------------------------------
    def error(self, msg: str) -> LowbitError:
        line = self.text.count("\n", 0, self.pos) + 1
        col = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        return LowbitError(f"{self.source}:{line}:{col}: {msg}")

    def skip(self):
        self.pos = _WS.match(self.text, self.pos).end()

    def peek(self, s: str) -> bool:
        self.skip()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str):
        if not self.accept(s):
            found = self.text[self.pos:self.pos + 20].split("\n")[0] or "end of input"
            raise self.error(f"expected '{s}', found '{found}'")

    def match(self, rx: re.Pattern, what: str) -> re.Match:
        self.skip()
        m = rx.match(self.text, self.pos)
        if not m:
            found = self.text[self.pos:self.pos + 20].split("\n")[0] or "end of input"
            raise self.error(f"expected {what}, found '{found}'")
        self.pos = m.end()
        return m

    def name(self) -> str:
        self.skip()
        if self.peek('"'):
            return json.loads(self.match(_STRING, "a string").group(0))
        return self.match(_IDENT, "a name").group(0)

    # -- types ---------------------------------------------------------------------------------------
    def type(self) -> TensorType:
        self.expect("tensor<")
        m = self.match(_DIMS, "dimensions and a dtype")
        shape = tuple(int(d) for d in m.group(1).split("x") if d)
        try:
            dtype = DType.parse(m.group(2))
        except ValueError as e:
            raise self.error(str(e)) from None
        quant = encoding = None
        while self.accept(","):
            if self.accept("q<"):
                quant = self.quant()
            elif self.accept("nm<"):
                n = int(self.match(_NUMBER, "an integer").group(0))
                self.expect(":")
                m_ = int(self.match(_NUMBER, "an integer").group(0))
                self.expect(">")
                encoding = Encoding("nm", (n, m_))
            elif self.accept("block<"):
                dims = self.match(re.compile(r"\d+(?:x\d+)*"), "block dimensions").group(0)
                self.expect(">")
                encoding = Encoding("block", tuple(int(d) for d in dims.split("x")))
            elif self.accept("sparse<"):
                r = self.match(re.compile(r"\d+(?:\.\d+)?(?:[eE]-?\d+)?"), "a ratio").group(0)
                self.expect(">")
                try:
                    encoding = Encoding.sparse(float(r))
                except ValueError as e:
                    raise self.error(str(e)) from None
            elif self.accept("pow2"):
                encoding = Encoding("pow2")
            else:
                raise self.error("expected q<...>, sparse<...>, nm<...>, block<...> or pow2")
        self.expect(">")
        try:
            return TensorType(shape, dtype, quant, encoding)
        except ValueError as e:
            raise self.error(str(e)) from None

    def quant(self) -> QuantParams:
        axis = group = storage = codebook = None
        if self.accept("range"):
            self.expect("=")
            lo = int(self.match(_NUMBER, "an integer").group(0))
            self.expect(":")
            storage = (lo, int(self.match(_NUMBER, "an integer").group(0)))
            self.expect(",")
        if self.accept("axis"):
            self.expect("=")
            axis = int(self.match(_NUMBER, "an integer").group(0))
            if self.accept(","):
                if self.accept("group"):
                    self.expect("=")
                    group = int(self.match(_NUMBER, "an integer").group(0))
                    self.expect(",")
                codebook = self.codebook()
            self.expect("[")
            pairs = self.scale_zps("]")
            self.expect(">")
        else:
            codebook = self.codebook()
            pairs = self.scale_zps(">")
        try:
            return QuantParams(tuple(float(np.float32(s)) for s, _ in pairs), tuple(z for _, z in pairs), axis, group,
                               storage, codebook)
        except ValueError as e:
            raise self.error(str(e)) from None

    def codebook(self):
        """``codebook=[v0, v1, ...],`` (the values as f32) or nothing."""
        if not self.accept("codebook"):
            return None
        self.expect("=")
        self.expect("[")
        values = []
        while True:
            values.append(float(np.float32(self.match(_NUMBER, "a codebook value").group(0))))
            if self.accept("]"):
                break
            self.expect(",")
        self.expect(",")
        return tuple(values)

    def scale_zps(self, end: str):
        pairs = []
        while True:
            s = self.match(_NUMBER, "a scale").group(0)
            self.expect(":")
            z = int(self.match(_NUMBER, "a zero point").group(0))
            pairs.append((s, z))
            if self.accept(end):
                return pairs
            self.expect(",")

    # -- attributes ----------------------------------------------------------------------------------
    def attr_value(self):
        self.skip()
        if self.accept("["):
            items = []
            if not self.accept("]"):
                while True:
                    items.append(self.attr_value())
                    if self.accept("]"):
                        break
                    self.expect(",")
            return tuple(items)
        if self.peek('"'):
            return json.loads(self.match(_STRING, "a string").group(0))
        if self.accept("true"):
            return True
        if self.accept("false"):
            return False
        m = _NUMBER.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            t = m.group(0)
            return float(t) if any(c in t for c in ".eEna") else int(t)
        word = self.match(_IDENT, "an attribute value").group(0)
        try:
            return DType.parse(word)
        except ValueError:
            raise self.error(f"unknown attribute value '{word}'") from None

    def dense(self, t: TensorType, resources_at: list):
        if self.accept("dense_resource<"):
            key = self.match(_IDENT, "a resource name").group(0)
            self.expect(">")
            resources_at.append(key)
            return key
        self.expect("dense<[")
        vals = []
        if not self.accept("]"):
            while True:
                if self.accept("true"):
                    vals.append(True)
                elif self.accept("false"):
                    vals.append(False)
                else:
                    tok = self.match(_NUMBER, "a number").group(0)
                    vals.append(float(tok) if t.dtype.is_float else int(tok))
                if self.accept("]"):
                    break
                self.expect(",")
        self.expect(">")
        if len(vals) != t.size:
            raise self.error(f"constant has {len(vals)} values, its type {t} needs {t.size}")
        return np.array(vals, dtype=np.float64 if t.dtype.is_float else None).astype(t.dtype.np_dtype).reshape(t.shape)

    # -- graph ---------------------------------------------------------------------------------------
    def graph(self) -> Graph:
        self.expect("graph")
        self.expect("@")
        g = Graph(self.name())
        env: dict[str, object] = {}
        self.expect("(")
        if not self.accept(")"):
            while True:
                tok = self.match(_VALUE, "an input like %x").group(1)
                self.expect(":")
                t = self.type()
                name = json.loads(tok) if tok.startswith('"') else tok
                env[tok] = g.add_input(name, t)
                if self.accept(")"):
                    break
                self.expect(",")
        self.expect("{")
        pending: list[tuple] = []  # (const op, resource key)
        while not self.peek("return"):
            self.op(g, env, pending)
        self.expect("return")
        outs, names = [], []
        if not self.peek("}"):
            while True:
                outs.append(self.use(env))
                self.expect("as")
                names.append(json.loads(self.match(_STRING, "an output name").group(0)))
                if not self.accept(","):
                    break
        self.expect("}")
        g.set_outputs(outs, names)
        blobs = {}
        if self.accept("resources"):
            self.expect("{")
            while not self.accept("}"):
                key = self.match(_IDENT, "a resource name").group(0)
                self.expect(":")
                self.expect('"')
                end = self.text.find('"', self.pos)  # base64 has no quotes or escapes: no regex over megabytes
                if end < 0:
                    raise self.error(f"unterminated data for resource '{key}'")
                blobs[key] = self.text[self.pos:end]
                self.pos = end + 1
        self.skip()
        if self.pos != len(self.text):
            raise self.error("unexpected text after the graph")
        for op, key in pending:
            if key not in blobs:
                raise self.error(f"resource '{key}' is not defined")
            t = op.result.type
            try:
                data = base64.b64decode(blobs[key], validate=True)
                arr = np.frombuffer(data, dtype=t.dtype.np_dtype.newbyteorder("<")).astype(t.dtype.np_dtype)
                op.attrs["value"] = arr.reshape(t.shape)
            except ValueError as e:
                raise self.error(f"resource '{key}' does not hold a {t}: {e}") from None
        try:
            g.verify()
        except ValueError as e:
            raise LowbitError(f"{self.source}: invalid graph: {e}") from None
        return g

    def use(self, env):
        tok = self.match(_VALUE, "a value like %0").group(1)
        if tok not in env:
            self.pos -= len(tok) + 1
            raise self.error(f"value %{tok} is not defined")
        return env[tok]

    def op(self, g: Graph, env, pending):
        results = []
        while True:
            results.append(self.match(_VALUE, "a result like %0").group(1))
            if not self.accept(","):
                break
        self.expect("=")
        start = self.pos
        opname = self.match(_IDENT, "an op name").group(0)
        if opname == "const":
            keys: list = []
            self.skip()
            where = self.pos
            t_pos_value = None
            # the value comes before the type; parse it after the type is known
            if self.peek("dense_resource<"):
                self.expect("dense_resource<")
                key = self.match(_IDENT, "a resource name").group(0)
                self.expect(">")
            else:
                self.expect("dense<")
                depth = 1
                while depth:
                    c = self.text[self.pos] if self.pos < len(self.text) else ""
                    if not c:
                        raise self.error("unterminated dense<...>")
                    depth += {"<": 1, ">": -1}.get(c, 0)
                    self.pos += 1
                t_pos_value = where
            self.expect(":")
            t = self.type()
            loc = self.loc()
            end = self.pos
            placeholder = np.broadcast_to(np.zeros((), t.dtype.np_dtype), t.shape)
            try:
                op = build_op("const", [], {"value": placeholder}, [t], loc)
            except ValueError as e:
                raise self.error(str(e)) from None
            if t_pos_value is not None:
                self.pos = t_pos_value
                op.attrs["value"] = self.dense(t, keys)
                self.pos = end
            else:
                pending.append((op, key))
        else:
            self.expect("(")
            operands = []
            if not self.accept(")"):
                while True:
                    operands.append(self.use(env))
                    if self.accept(")"):
                        break
                    self.expect(",")
            attrs = {}
            if self.accept("{"):
                if not self.accept("}"):
                    while True:
                        k = self.match(_IDENT, "an attribute name").group(0)
                        self.expect("=")
                        attrs[k] = self.attr_value()
                        if self.accept("}"):
                            break
                        self.expect(",")
            self.expect(":")
            types = [self.type()]
            while self.accept(","):
                types.append(self.type())
            loc = self.loc()
            if len(types) != len(results):
                raise self.error(f"{len(results)} results but {len(types)} types")
            try:
                op = build_op(opname, operands, attrs, types, loc)
            except ValueError as e:
                self.pos = start
                raise self.error(str(e)) from None
        g.insert(op)
        for tok, r in zip(results, op.results):
            if tok in env:
                raise self.error(f"value %{tok} is defined twice")
            env[tok] = r

    def loc(self):
        if self.accept("loc("):
            s = json.loads(self.match(_STRING, "a location string").group(0))
            self.expect(")")
            return s
        return None


def parse(text: str, source: str = "<text>") -> Graph:
    """Parse lowbit IR text into a verified ``Graph``; errors are ``LowbitError`` with line:column."""
    return _Parser(text, source).graph()
