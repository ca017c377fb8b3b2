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

import math
import os
import re
import warnings

from ..errors import LowbitError, LowbitWarning
from ..ir.graph import Graph
from ..ir.types import TensorType
# Importing the op-family modules registers their converters; the order is the original file's, so
# CONVERTERS lists the ops in the same order as before the split.
from . import onnx_elementwise, onnx_shape, onnx_nn, onnx_quant, onnx_math, onnx_tensor  # noqa: F401,I001
from . import onnx_control  # noqa: F401,I001  (If, Loop: sub-graphs imported inline)
from .onnx_qoperator import expand_qoperators, fuse_dynamic_matmuls, has_qoperators, hoist_dequantize
from .onnx_ctx import CONVERTERS, Ctx, NodeError, check_size, check_tensor, decode_tensor, one_line, onnx_dtype

MIN_OPSET, MAX_OPSET = 9, 23
# Opsets 1-8 are upgraded to this one with ONNX's version converter (its adapters are exact rewrites; an op
# it cannot convert exactly makes it fail, and the import is refused).
UPGRADE_TARGET = MIN_OPSET
# What a converter may raise on a malformed node besides NodeError: reported as that node's error.
_CONVERT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError, AttributeError,
                   UnicodeError)


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
        raise LowbitError(f"{name}: not a valid ONNX model (the protobuf does not parse: {one_line(e)}); "
                          "is the file truncated or of another format?") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output) or model.ir_version <= 0:
        raise LowbitError(f"{name}: not an ONNX model (no graph or IR version found); is it of another format?")
    if any(t.data_location == 1 for t in model.graph.initializer):
        if isinstance(source, (bytes, bytearray)):
            raise LowbitError(f"{name}: the model keeps weights in external files; load it from its path")
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(name)))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise LowbitError(f"{name}: cannot read external weight data: {one_line(e)}") from None
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
        if any(d < 0 for d in bound):
            raise LowbitError(f"{name_for_errors}: shape {bound} given for input '{vi.name}' has a negative dimension")
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
            if d.dim_value < 0:
                raise LowbitError(f"{name_for_errors}: input '{vi.name}' has a negative dimension {i} = {d.dim_value}")
            shape.append(d.dim_value)
        else:
            sym.append(f"{d.dim_param or '?'} (dim {i})")
    if sym:
        unbound.append(f"'{vi.name}' dims {', '.join(sym)}")
        return None
    return TensorType(tuple(shape), dtype)


def _upgrade(model, name: str, opset: int):
    """Opset 1-8: the model upgraded to ``UPGRADE_TARGET`` by ONNX's version converter, or a LowbitError."""
    from onnx import version_converter

    from onnx import ModelProto, helper

    # The converter wants every initializer among the graph inputs (as IR version 3 asked); list the missing
    # ones for it and take them out again afterwards.
    listed = {vi.name for vi in model.graph.input}
    extra = [t for t in model.graph.initializer if t.name not in listed]
    if extra:
        model = ModelProto.FromString(model.SerializeToString())
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in extra)
    model = _fix_legacy_broadcast(model, name, opset)
    try:
        new = version_converter.convert_version(model, UPGRADE_TARGET)
    except Exception as e:  # the converter is C++: RuntimeError, onnx's ConvertError, ValueError, ...
        msg = re.sub(r"^\S+:\d+: \w+: Assertion `[^`]*` failed: ", "", one_line(e))
        op = next((n for n in model.graph.node if f" {n.op_type} " in f" {msg} " or f"{n.op_type}" in msg.split()),
                  None)
        where = f" (at {op.op_type} node '{op.name or '(unnamed)'}')" if op is not None else ""
        hint = "; the model's declared shapes or types disagree" if "InferenceError]" in msg else ""
        raise LowbitError(f"{name}: cannot upgrade opset {opset} to {UPGRADE_TARGET}{where}: the ONNX version "
                          f"converter failed: {msg}{hint}") from None
    if extra:
        added = {t.name for t in extra}
        keep = [vi for vi in new.graph.input if vi.name not in added]
        del new.graph.input[:]
        new.graph.input.extend(keep)
    got = next((o.version for o in new.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != UPGRADE_TARGET:
        raise LowbitError(f"{name}: cannot upgrade opset {opset} to {UPGRADE_TARGET}: the ONNX version converter "
                          f"gave opset {got}")
    return new


_LEGACY_BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow")


def _fix_legacy_broadcast(model, name: str, opset: int):
    """Opset < 7 broadcast=1 with an ``axis``: B aligned at A's dimension ``axis``. ONNX's converter (1.23)
    unsqueezes B by rank(A) - rank(B) trailing dimensions where rank(A) - axis - rank(B) are needed, so B is
    unsqueezed here first (then ``axis`` = rank(A) - rank(B) and the converter leaves it)."""
    from onnx import ModelProto, helper, shape_inference

    if opset >= 7:
        return model
    nodes = [n for n in model.graph.node if n.op_type in _LEGACY_BROADCAST and
             any(a.name == "broadcast" and a.i for a in n.attribute) and any(a.name == "axis" for a in n.attribute)]
    if not nodes:
        return model
    model = ModelProto.FromString(model.SerializeToString())
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as e:  # onnx.shape_inference.InferenceError and the C++ errors
        raise LowbitError(f"{name}: cannot upgrade opset {opset}: shape inference failed: {one_line(e)}") from None
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*inferred.graph.value_info, *inferred.graph.input]
             if vi.type.tensor_type.HasField("shape")}
    ranks.update({t.name: len(t.dims) for t in model.graph.initializer})
    out = []
    for n in model.graph.node:
        if n.op_type in _LEGACY_BROADCAST and any(a.name == "broadcast" and a.i for a in n.attribute):
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            if axis is not None:
                ra, rb = ranks.get(n.input[0]), ranks.get(n.input[1])
                if ra is None or rb is None:
                    raise LowbitError(f"{name}: {n.op_type} node '{n.name or '(unnamed)'}': legacy broadcast with "
                                      "axis needs the ranks of both inputs, which shape inference did not find")
                if axis < 0:
                    axis += ra
                trailing = ra - axis - rb
                if trailing < 0 or axis < 0:
                    raise LowbitError(f"{name}: {n.op_type} node '{n.name or '(unnamed)'}': axis {axis} does not fit "
                                      f"B of rank {rb} into A of rank {ra}")
                if trailing:
                    b = f"{n.input[1]}__aligned_{len(out)}"
                    out.append(helper.make_node("Unsqueeze", [n.input[1]], [b], axes=list(range(rb, rb + trailing))))
                    n.input[1] = b
        out.append(n)
    del model.graph.node[:]
    model.graph.node.extend(out)
    return model


def _check_attributes(node, opset: int, where: str) -> None:
    """Attribute types against the op's ONNX schema, tensors inside attributes, and text that must be UTF-8."""
    from onnx import AttributeProto, defs

    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except Exception:  # onnx.defs.SchemaError: an op unknown at this opset; the converter decides
        schema = None
    seen = set()
    for a in node.attribute:
        if a.name in seen:
            raise LowbitError(f"{where}: attribute '{a.name}' is given twice")
        seen.add(a.name)
        if a.type == AttributeProto.UNDEFINED:
            raise LowbitError(f"{where}: attribute '{a.name}' has no type")
        if schema is not None and a.name in schema.attributes:
            want = int(schema.attributes[a.name].type)
            if int(a.type) != want:
                raise LowbitError(f"{where}: attribute '{a.name}' is {AttributeProto.AttributeType.Name(a.type)}, "
                                  f"the ONNX schema of {node.op_type}-{opset} says "
                                  f"{AttributeProto.AttributeType.Name(want)}")
        try:
            if a.type == AttributeProto.TENSOR:
                check_tensor(a.t, f"the tensor of attribute '{a.name}'")
            elif a.type == AttributeProto.TENSORS:
                for k, t in enumerate(a.tensors):
                    check_tensor(t, f"tensor {k} of attribute '{a.name}'")
        except NodeError as e:
            raise LowbitError(f"{where}: {e}") from None
        for text in ([a.s] if a.type == AttributeProto.STRING else a.strings if a.type == AttributeProto.STRINGS
                     else []):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise LowbitError(f"{where}: attribute '{a.name}' is not UTF-8 text") from None


def _sorted_nodes(mg, name: str, defined: set) -> list:
    """The nodes in a topological order (the file's, where it is one), after checking every name: each value
    has one producer, and every input a node reads is produced by a node, an initializer or a graph input."""
    producer = {}
    for node in mg.node:
        for o in node.output:
            if not o:
                continue
            if o in defined:
                raise LowbitError(f"{name}: {node.op_type} node '{node.name or '(unnamed)'}': output '{o}' is "
                                  "also a graph input or initializer")
            if o in producer:
                p = producer[o]
                raise LowbitError(f"{name}: {node.op_type} node '{node.name or '(unnamed)'}': output '{o}' is "
                                  f"also produced by {p.op_type} node '{p.name or '(unnamed)'}'")
            producer[o] = node
    nodes = list(mg.node)  # (one Python object per node: the reads below are keyed by position)
    reads = [[i for i in list(node.input) + sorted(_outer_refs(node)) if i] for node in nodes]
    for node, node_reads in zip(nodes, reads):
        for i in node_reads:
            if i and i not in defined and i not in producer:
                raise LowbitError(f"{name}: {node.op_type} node '{node.name or '(unnamed)'}': input '{i}' is not "
                                  "produced by any node, initializer or graph input")
    ready, order, pending = set(defined), [], list(zip(nodes, reads))
    while pending:
        rest = []
        for node, node_reads in pending:
            if all(i in ready for i in node_reads):
                order.append(node)
                ready.update(o for o in node.output if o)
            else:
                rest.append((node, node_reads))
        if len(rest) == len(pending):
            n = rest[0][0]
            raise LowbitError(f"{name}: {n.op_type} node '{n.name or '(unnamed)'}' is on a cycle: the graph's "
                              "nodes cannot be ordered")
        pending = rest
    return order


def _operand_shapes(ctx: Ctx, node) -> list:
    return [None if ctx.inp(i) is None else tuple(ctx.inp(i).type.shape) for i in range(len(node.input))]


def _int_attrs(node) -> dict:
    from onnx import AttributeProto

    return {a.name: (a.i if a.type == AttributeProto.INT else list(a.ints)) for a in node.attribute
            if a.type in (AttributeProto.INT, AttributeProto.INTS)}


def _check_conv_like(ctx: Ctx, node) -> None:
    """The ONNX shape rules of Conv, ConvTranspose and the pools that the converters rely on: one kernel
    size, stride and dilation per spatial dimension (all positive), two non-negative pads per dimension,
    and for Conv the weight and bias shapes that agree with the input's channels and the group."""
    shapes, a = _operand_shapes(ctx, node), _int_attrs(node)
    x = shapes[0] if shapes else None
    if x is None:
        return
    if len(x) < 3:
        raise NodeError(f"input X has shape {list(x)}: it needs a batch, a channel and spatial dimensions")
    nd = len(x) - 2
    w = shapes[1] if node.op_type in ("Conv", "ConvTranspose") and len(shapes) > 1 else None
    if node.op_type in ("Conv", "ConvTranspose") and w is not None and len(w) != len(x):
        raise NodeError(f"weight W has shape {list(w)}, expected rank {len(x)} like input X {list(x)}")
    kernel = a.get("kernel_shape", list(w[2:]) if w is not None else None)
    if kernel is None and node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        raise NodeError("attribute 'kernel_shape' is required")
    for key, lo, n in (("kernel_shape", 1, nd), ("strides", 1, nd), ("dilations", 1, nd), ("pads", 0, 2 * nd),
                       ("output_padding", 0, nd)):
        v = a.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != n:
            raise NodeError(f"attribute '{key}' is {v}: expected {n} values for {nd} spatial dimension(s)")
        if any(d < lo for d in v):
            raise NodeError(f"attribute '{key}' is {v}: the values must be >= {lo}")
    if w is not None and kernel is not None and list(kernel) != list(w[2:]):
        raise NodeError(f"attribute 'kernel_shape' {list(kernel)} disagrees with weight W of shape {list(w)}")
    group = a.get("group", 1)
    if node.op_type in ("Conv", "ConvTranspose") and (not isinstance(group, int) or group < 1):
        raise NodeError(f"attribute 'group' is {group}: it must be >= 1")
    if node.op_type == "Conv" and w is not None:
        if x[1] % group or w[1] * group != x[1] or w[0] % group:
            raise NodeError(f"weight W of shape {list(w)} and group {group} do not fit input X of shape {list(x)} "
                            f"({x[1]} channels)")
        if len(shapes) > 2 and shapes[2] is not None and shapes[2] != (w[0],):
            raise NodeError(f"bias B has shape {list(shapes[2])}, expected [{w[0]}] (one per output channel)")


def _check_batch_norm(ctx: Ctx, node) -> None:
    shapes = _operand_shapes(ctx, node)
    if not shapes or shapes[0] is None:
        return
    x = shapes[0]
    if len(x) < 2:
        raise NodeError(f"input X has shape {list(x)}: it needs a channel dimension")
    for i, what in enumerate(("scale", "B", "input_mean", "input_var")[:len(shapes) - 1], 1):
        if shapes[i] is not None and shapes[i] != (x[1],):
            raise NodeError(f"input {i} ({what}) has shape {list(shapes[i])}, expected [{x[1]}] (one per channel "
                            f"of X {list(x)})")


def _check_gemm(ctx: Ctx, node) -> None:
    shapes, a = _operand_shapes(ctx, node), _int_attrs(node)
    if len(shapes) < 2 or shapes[0] is None or shapes[1] is None:
        return
    sa, sb = shapes[0], shapes[1]
    if len(sa) != 2 or len(sb) != 2:
        raise NodeError(f"A {list(sa)} and B {list(sb)} must be 2-D")
    m, k = sa[::-1] if a.get("transA") else sa
    k2, n = sb[::-1] if a.get("transB") else sb
    if k != k2:
        raise NodeError(f"A {list(sa)} and B {list(sb)} (transA={a.get('transA', 0)}, transB={a.get('transB', 0)}) "
                        "disagree on the inner dimension")
    sc = shapes[2] if len(shapes) > 2 else None
    if sc is not None and (len(sc) > 2 or any(d not in (1, t) for d, t in zip(sc[::-1], (n, m)))):
        raise NodeError(f"C has shape {list(sc)}, which does not broadcast to the result's [{m}, {n}]")


def _check_lrn(ctx: Ctx, node) -> None:
    size = _int_attrs(node).get("size")
    if isinstance(size, int) and size < 1:
        raise NodeError(f"attribute 'size' is {size}: it must be >= 1")


# ONNX shape rules checked before the converter runs (where the converters and type inference are lenient).
_NODE_CHECKS = {"Conv": _check_conv_like, "ConvTranspose": _check_conv_like, "MaxPool": _check_conv_like,
                "AveragePool": _check_conv_like, "LpPool": _check_conv_like, "BatchNormalization": _check_batch_norm,
                "Gemm": _check_gemm, "LRN": _check_lrn}


def _check_output_size(ctx: Ctx, node) -> None:
    """Ops whose output size comes from operand values (not types): check it before the converter allocates."""
    import numpy as np

    def value(i):
        v = ctx.inp(i)
        return np.asarray(v.const_value) if v is not None and v.is_const else None

    if node.op_type == "ConstantOfShape":
        shape = value(0)
        if shape is not None:
            if shape.ndim != 1 or not np.issubdtype(shape.dtype, np.integer):
                raise NodeError(f"input 0 (shape) must be a 1-D integer tensor, got {shape.dtype}{list(shape.shape)}")
            check_size(shape.tolist(), "the output")
    elif node.op_type == "Range":
        vals = [value(i) for i in range(3)]
        if all(v is not None for v in vals):
            if any(v.size != 1 for v in vals):
                raise NodeError("start, limit and delta must be scalars")
            start, limit, delta = (float(v.reshape(-1)[0]) for v in vals)
            if delta == 0 or not all(math.isfinite(x) for x in (start, limit, delta)):
                raise NodeError(f"start {start}, limit {limit} and delta {delta} do not give a finite range")
            check_size([max(math.ceil((limit - start) / delta), 0)], "the output")



def import_onnx(source, shapes: dict | None = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a verified ``Graph``.

    A model of opset 1-8 is first upgraded to opset ``UPGRADE_TARGET`` (with a ``LowbitWarning``); the graph
    records it in ``graph.metadata`` (``onnx_opset``, and ``upgraded_from_opset`` where it was upgraded)."""
    model, name = _read_model(source)
    if has_qoperators(model):  # QLinear* nodes as the QDQ graphs they mean (onnx_qoperator)
        model = expand_qoperators(model)
    model = fuse_dynamic_matmuls(hoist_dequantize(model))  # quantize_dynamic's chains and quantized embeddings
    shapes = dict(shapes or {})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise LowbitError(f"{name}: the model does not import the default ONNX opset")
    if not 1 <= opset <= MAX_OPSET:
        raise LowbitError(f"{name}: opset {opset} is not supported (lowbit reads opsets 1-{MAX_OPSET}; "
                          f"1-{MIN_OPSET - 1} are upgraded to {UPGRADE_TARGET})")
    _check_supported(model.graph, name)
    _check_tensors_and_names(model.graph, name)  # before the version converter, whose errors name nothing
    original = opset
    if opset < MIN_OPSET:
        model = _upgrade(model, name, opset)
        opset = UPGRADE_TARGET
        _check_supported(model.graph, name)
        warnings.warn(f"{name}: the model's opset {original} was upgraded to opset {opset} by the ONNX version "
                      "converter", LowbitWarning, stacklevel=3)
    mg = model.graph
    if len(mg.sparse_initializer):
        raise LowbitError(f"{name}: sparse initializer '{mg.sparse_initializer[0].values.name}' is not supported")

    g = Graph(mg.name or "main")
    g.metadata = {"onnx_opset": opset}
    if original != opset:
        g.metadata["upgraded_from_opset"] = original
    ctx = Ctx(g, opset)
    ctx.subgraph = lambda sg, what, bindings: convert_subgraph(ctx, sg, what, bindings)  # If, Loop (onnx_control)
    init_names = _unique_names(mg.initializer, "initializer", "is given twice", name)
    _unique_names(mg.input, "graph input", "is listed twice", name)
    unbound: list[str] = []
    real_inputs = [vi for vi in mg.input if vi.name not in init_names]
    unknown = sorted(set(shapes) - {vi.name for vi in real_inputs})
    if unknown:
        raise LowbitError(f"{name}: shapes given for unknown input(s) {', '.join(unknown)}; the model's inputs are "
                          f"{', '.join(vi.name for vi in real_inputs)}")
    for vi in real_inputs:
        t = _input_type(vi, shapes, name, unbound)
        if t is not None:
            try:
                check_size(t.shape, f"input '{vi.name}'")
            except NodeError as e:
                raise LowbitError(f"{name}: {e}") from None
            ctx.env[vi.name] = g.add_input(vi.name, t)
    if unbound:
        first = real_inputs[0].name
        raise LowbitError(f"{name}: symbolic input dimensions must be bound: {'; '.join(unbound)} "
                          f"(CLI: --shape {first}=1x128; API: shapes={{'{first}': (1, 128)}})")
    for t in mg.initializer:
        try:
            arr = decode_tensor(t, f"initializer '{t.name}'")
        except NodeError as e:
            raise LowbitError(f"{name}: {e}") from None
        ctx.env[t.name] = g.const(arr, loc=t.name)
    nodes = _sorted_nodes(mg, name, set(ctx.env))
    used = {i for node in mg.node for i in list(node.input) + sorted(_outer_refs(node)) if i} | \
        {vi.name for vi in mg.output}
    _convert_nodes(ctx, nodes, name, used)
    outputs, out_names = [], set()
    for vi in mg.output:
        if vi.name in out_names:
            raise LowbitError(f"{name}: graph output '{vi.name}' is listed twice")
        out_names.add(vi.name)
        if vi.name not in ctx.env:
            raise LowbitError(f"{name}: graph output '{vi.name}' is not produced by any node")
        outputs.append(ctx.env[vi.name])
    if not outputs:
        raise LowbitError(f"{name}: the graph has no outputs")
    g.set_outputs(outputs, [vi.name for vi in mg.output])
    g.remove_dead_ops()
    for op in g.ops:  # a huge intermediate (a corrupted pad or shape) is refused before anything runs it
        for r in op.results:
            try:
                check_size(r.type.shape, f"the {op.opname} result")
            except NodeError as e:
                raise LowbitError(f"{name}: node '{op.loc or op.opname}': {e}") from None
    try:
        g.verify()
    except ValueError as e:
        raise LowbitError(f"{name}: imported graph does not verify: {one_line(e)}") from None
    return g


def _convert_nodes(ctx: Ctx, nodes, name: str, used: set) -> None:
    """Convert ``nodes`` (in order) into ``ctx.graph``, binding their outputs in ``ctx.env``; ``name`` prefixes
    errors, ``used`` holds the names something reads (an output lowbit does not compute may not be in it)."""
    for node in nodes:
        ctx.node = node
        where = f"{name}: {node.op_type} node '{node.name or '(unnamed)'}'"
        _check_attributes(node, ctx.opset, where)
        try:
            _check_output_size(ctx, node)
            if node.op_type in _NODE_CHECKS:
                _NODE_CHECKS[node.op_type](ctx, node)
            out = CONVERTERS[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"](ctx)
        except NodeError as e:
            raise LowbitError(f"{where}: {e}") from None
        except LowbitError as e:
            raise LowbitError(f"{where}: {one_line(e)}") from None
        except _CONVERT_ERRORS as e:
            raise LowbitError(f"{where}: cannot convert it ({type(e).__name__}: {one_line(e)})") from None
        outs = out if isinstance(out, (list, tuple)) else [out]
        for k, oname in enumerate(node.output):
            if not oname:
                continue
            if k < len(outs):
                ctx.env[oname] = outs[k]
            elif oname in used:
                raise LowbitError(f"{where}: output {k} ('{oname}') is used, but lowbit computes only the "
                                  f"first {len(outs)} output(s) of {node.op_type}")


def _outer_refs(node) -> set:
    """The names the sub-graphs of ``node`` (If's branches, Loop's body) read from the scopes around them."""
    from onnx import AttributeProto

    refs: set = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
        for sg in graphs:
            defined = {vi.name for vi in sg.input} | {t.name for t in sg.initializer}
            defined |= {o for n in sg.node for o in n.output if o}
            for n in sg.node:
                refs |= {i for i in list(n.input) + sorted(_outer_refs(n)) if i and i not in defined}
            refs |= {vi.name for vi in sg.output if vi.name not in defined}
    return refs


def convert_subgraph(ctx: Ctx, sg, what: str, bindings: dict) -> list:
    """Convert sub-graph ``sg`` (a branch of If, the body of Loop) inline into ``ctx.graph``: its nodes see the
    enclosing scope's values by name, its inputs are ``bindings`` (name -> Value); returns its outputs' Values.
    ``what`` prefixes errors ("then_branch"). Names it defines do not leak into the enclosing scope."""
    _check_supported(sg, what)  # an unsupported op inside the branch is refused by name
    if len(sg.sparse_initializer):
        raise LowbitError(f"{what}: sparse initializer '{sg.sparse_initializer[0].values.name}' is not supported")
    saved_env, saved_node = ctx.env, ctx.node
    ctx.env = dict(saved_env)
    ctx.env.update(bindings)
    try:
        for t in sg.initializer:
            try:
                arr = decode_tensor(t, f"initializer '{t.name}'")
            except NodeError as e:
                raise LowbitError(f"{what}: {e}") from None
            ctx.env[t.name] = ctx.graph.const(arr, loc=t.name)
        nodes = _sorted_nodes(sg, what, set(ctx.env))
        used = {i for n in sg.node for i in list(n.input) + sorted(_outer_refs(n)) if i} | \
            {vi.name for vi in sg.output}
        _convert_nodes(ctx, nodes, what, used)
        outs = []
        for vi in sg.output:
            if vi.name not in ctx.env:
                raise LowbitError(f"{what}: graph output '{vi.name}' is not produced by any node")
            outs.append(ctx.env[vi.name])
        return outs
    finally:
        ctx.env, ctx.node = saved_env, saved_node


def _unique_names(items, what: str, twice: str, name: str) -> set:
    """The names of ``items`` (initializers, graph inputs): each given and given once, or a LowbitError."""
    seen: set = set()
    for it in items:
        if not it.name:
            raise LowbitError(f"{name}: a{'n' if what[0] in 'aeiou' else ''} {what} has no name")
        if it.name in seen:
            raise LowbitError(f"{name}: {what} '{it.name}' {twice}")
        seen.add(it.name)
    return seen


def _check_tensors_and_names(mg, name: str) -> None:
    """Initializer data against dims and type, and names: no dangling input, no value produced twice."""
    for t in mg.initializer:
        try:
            check_tensor(t, f"initializer '{t.name}'")
        except NodeError as e:
            raise LowbitError(f"{name}: {e}") from None
    _sorted_nodes(mg, name, {vi.name for vi in mg.input} | {t.name for t in mg.initializer})


def _check_supported(mg, name: str) -> None:
    """Every op has a converter; the unsupported ones are listed together, each with its first node."""
    unsupported: dict[str, str] = {}
    for node in mg.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if key not in CONVERTERS and key not in unsupported:  # other domains: converters named domain.op
            unsupported[key] = node.name or "(unnamed)"
    if unsupported:
        listing = ", ".join(f"{k} (first at node '{v}')" for k, v in unsupported.items())
        raise LowbitError(f"{name}: unsupported op{'s' if len(unsupported) > 1 else ''}: {listing}")
