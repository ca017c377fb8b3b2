"""lowbit's typed graph IR: dtypes, tensor types, SSA graph, op registry, text form, reference interpreter."""
from . import dtypes
from .dtypes import DType
from .graph import Graph, Op, Value
from .interp import interpret
from .parser import parse
from .printer import print_graph
from .registry import all_ops, schema
from .types import Encoding, QuantParams, TensorType
from . import ops_math, ops_tensor  # noqa: F401,E402  (schemas and references of more ops)

__all__ = ["dtypes", "DType", "Graph", "Op", "Value", "interpret", "parse", "print_graph", "all_ops", "schema",
           "Encoding", "QuantParams", "TensorType"]
