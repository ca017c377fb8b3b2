"""ONNX → lowbit IR.

Shapes are static: symbolic dimensions must be bound by the caller (``shapes={"input_ids": (1, 128)}``).
Ops whose operands are all constant are evaluated at import with the reference interpreter, so shape
sub-graphs (Shape→Gather→Concat→Reshape) become constants. Every op, attribute value or dtype that lowbit
does not implement exactly is refused with an error naming the node; unsupported op types are collected
over the whole model and reported together.

The converters live in one module per op family (``onnx_elementwise``, ``onnx_shape``, ``onnx_nn``,
``onnx_quant``), sharing ``onnx_ctx``; importing them here registers every converter in ``CONVERTERS``.
"""
from __future__ import annotations

import os

from ..errors import LowbitError
from ..ir.graph import Graph
from ..ir.types import TensorType
# Importing the op-family modules registers their converters; the order is the original file's, so
# CONVERTERS lists the ops in the same order as before the split.
from . import onnx_elementwise, onnx_shape, onnx_nn, onnx_quant, onnx_math, onnx_tensor  # noqa: F401,I001
from .onnx_ctx import CONVERTERS, Ctx, NodeError, onnx_dtype

MIN_OPSET, MAX_OPSET = 9, 22


# -- the driver ---------------------------------------------------------------------------------------------------
def _read_model(source) -> tuple[object, str]:
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "<bytes>"
    elif hasattr(source, "graph") and hasattr(source, "opset_import"):
        return source, "<ModelProto>"
    else:
        name = os.fspath(source)
        if not os.path.exists(name):
            raise LowbitError(f"{name}: no such file")
        if os.path.isdir(name):
            raise LowbitError(f"{name}: is a directory, expected an ONNX file")
        with open(name, "rb") as f:
            data = f.read()
    if not data:
        raise LowbitError(f"{name}: the file is empty, expected an ONNX model")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise LowbitError(f"{name}: not a valid ONNX model (the protobuf does not parse: {e}); "
                          "is the file truncated or of another format?") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output) or model.ir_version <= 0:
        raise LowbitError(f"{name}: not an ONNX model (no graph or IR version found); is it of another format?")
    if any(t.data_location == 1 for t in model.graph.initializer):
        if isinstance(source, (bytes, bytearray)):
            raise LowbitError(f"{name}: the model keeps weights in external files; load it from its path")
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(name)))
        except (OSError, ValueError) as e:
            raise LowbitError(f"{name}: cannot read external weight data: {e}") from None
    return model, name


def _input_type(vi, shapes: dict, name_for_errors: str, unbound: list) -> TensorType | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise LowbitError(f"{name_for_errors}: input '{vi.name}' is not a tensor")
    try:
        dtype = onnx_dtype(t.elem_type, f"input '{vi.name}'")
    except NodeError as e:
        raise LowbitError(f"{name_for_errors}: {e}") from None
    dims = list(t.shape.dim) if t.HasField("shape") else None
    if vi.name in shapes:
        bound = tuple(int(d) for d in shapes[vi.name])
        if dims is not None:
            if len(dims) != len(bound):
                raise LowbitError(f"{name_for_errors}: shape {bound} given for input '{vi.name}' has rank "
                                  f"{len(bound)}, the model says rank {len(dims)}")
            for i, (d, b) in enumerate(zip(dims, bound)):
                if d.HasField("dim_value") and d.dim_value != b:
                    raise LowbitError(f"{name_for_errors}: shape {bound} given for input '{vi.name}' conflicts "
                                      f"with its static dimension {i} = {d.dim_value}")
        return TensorType(bound, dtype)
    if dims is None:
        unbound.append(f"'{vi.name}' (unknown rank)")
        return None
    shape, sym = [], []
    for i, d in enumerate(dims):
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        else:
            sym.append(f"{d.dim_param or '?'} (dim {i})")
    if sym:
        unbound.append(f"'{vi.name}' dims {', '.join(sym)}")
        return None
    return TensorType(tuple(shape), dtype)


def import_onnx(source, shapes: dict | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a verified ``Graph``."""
    from onnx import numpy_helper

    model, name = _read_model(source)
    shapes = dict(shapes or {})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise LowbitError(f"{name}: the model does not import the default ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LowbitError(f"{name}: opset {opset} is not supported (lowbit reads opsets {MIN_OPSET}-{MAX_OPSET})")
    mg = model.graph

    unsupported: dict[str, str] = {}
    for node in mg.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if (node.domain not in ("", "ai.onnx") or node.op_type not in CONVERTERS) and key not in unsupported:
            unsupported[key] = node.name or "(unnamed)"
    if unsupported:
        listing = ", ".join(f"{k} (first at node '{v}')" for k, v in unsupported.items())
        raise LowbitError(f"{name}: unsupported op{'s' if len(unsupported) > 1 else ''}: {listing}")

    g = Graph(mg.name or "main")
    ctx = Ctx(g, opset)
    init_names = {t.name for t in mg.initializer}
    unbound: list[str] = []
    real_inputs = [vi for vi in mg.input if vi.name not in init_names]
    unknown = sorted(set(shapes) - {vi.name for vi in real_inputs})
    if unknown:
        raise LowbitError(f"{name}: shapes given for unknown input(s) {', '.join(unknown)}; the model's inputs are "
                          f"{', '.join(vi.name for vi in real_inputs)}")
    for vi in real_inputs:
        t = _input_type(vi, shapes, name, unbound)
        if t is not None:
            ctx.env[vi.name] = g.add_input(vi.name, t)
    if unbound:
        first = real_inputs[0].name
        raise LowbitError(f"{name}: symbolic input dimensions must be bound: {'; '.join(unbound)} "
                          f"(CLI: --shape {first}=1x128; API: shapes={{'{first}': (1, 128)}})")
    for t in mg.initializer:
        try:
            onnx_dtype(t.data_type, f"initializer '{t.name}'")
            arr = numpy_helper.to_array(t)
        except NodeError as e:
            raise LowbitError(f"{name}: {e}") from None
        ctx.env[t.name] = g.const(arr, loc=t.name)
    for node in mg.node:
        ctx.node = node
        where = f"{name}: {node.op_type} node '{node.name or '(unnamed)'}'"
        for i in node.input:
            if i and i not in ctx.env:
                raise LowbitError(f"{where}: input '{i}' is not defined before use")
        try:
            out = CONVERTERS[node.op_type](ctx)
        except NodeError as e:
            raise LowbitError(f"{where}: {e}") from None
        outs = out if isinstance(out, (list, tuple)) else [out]
        for oname, v in zip(node.output, outs):
            if oname:
                ctx.env[oname] = v
    outputs = []
    for vi in mg.output:
        if vi.name not in ctx.env:
            raise LowbitError(f"{name}: graph output '{vi.name}' is not produced by any node")
        outputs.append(ctx.env[vi.name])
    g.set_outputs(outputs, [vi.name for vi in mg.output])
    g.remove_dead_ops()
    try:
        g.verify()
    except ValueError as e:
        raise LowbitError(f"{name}: imported graph does not verify: {e}") from None
    return g
