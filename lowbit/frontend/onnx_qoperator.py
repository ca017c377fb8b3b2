"""QOperator models (onnxruntime's ``quantize_static(quant_format=QOperator)``) as the QDQ graphs they mean.

Each QLinear* node is, by its definition, ``QuantizeLinear(op(DequantizeLinear(inputs)))``; this module rewrites
the ModelProto into that form before conversion, and the ``lower-qdq`` pass then runs the convolutions and
matmuls as lowbit's integer kernels (exact i32 sums, one requantization), like any QDQ model:

    QLinearConv(x, xs, xz, w, ws, wz, ys, yz [, B])   -> Q(Conv(DQ(x), DQ(w, axis 0) [, DQ(B, xs * ws)]))
    QLinearMatMul(a, as, az, b, bs, bz, ys, yz)        -> Q(MatMul(DQ(a), DQ(b [, axis 1])))
    com.microsoft QGemm(a, .., b, .., C, ys, yz)       -> [Q](Gemm(DQ(a), DQ(b), DQ(C, as * bs)))
    com.microsoft QLinearAdd / QLinearMul              -> Q(Add / Mul(DQ(A), DQ(B)))
    com.microsoft QLinearGlobalAveragePool (NCHW)      -> Q(GlobalAveragePool(DQ(x)))
    com.microsoft QLinearConcat(ys, yz, x0, s0, z0, ..) -> Q(Concat(DQ(x0), ..))
    com.microsoft QLinearSigmoid / QLinearLeakyRelu    -> Q(Sigmoid / LeakyRelu(DQ(x)))

A bias's scale is ``xs * ws`` computed in f32, as onnxruntime's quantizer writes it; the scales must be
constants. Between QLinear nodes onnxruntime runs data-movement ops (MaxPool, Reshape, Flatten, Transpose, ...)
on the quantized integers themselves; those become ``Q(op(DQ(x)))`` with the input's parameters, which is exact
(the max of dequantized values dequantizes the max), and ``lower-qdq`` makes a max pool integer again. Anything
else of the com.microsoft domain stays as it is, and the import names it as unsupported.
"""
from __future__ import annotations

import numpy as np

from ..errors import LowbitError
from ..quant import scheme

MS = "com.microsoft"
# ops onnxruntime's QOperator graphs apply to quantized integers directly; the result keeps the input's parameters
PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Gather",
                "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}
# the (scale, zero point) inputs of each QLinear node's output
_OUT_PARAMS = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8), "QLinearAdd": (6, 7),
               "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4), "QLinearConcat": (0, 1),
               "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4)}
QOPS = {("", "QLinearConv"), ("", "QLinearMatMul"), (MS, "QGemm"), (MS, "QLinearAdd"), (MS, "QLinearMul"),
        (MS, "QLinearGlobalAveragePool"), (MS, "QLinearConcat"), (MS, "QLinearSigmoid"), (MS, "QLinearLeakyRelu")}


def has_qoperators(model) -> bool:
    return any((n.domain if n.domain != "ai.onnx" else "", n.op_type) in QOPS for n in model.graph.node)


class _Expander:
    def __init__(self, model):
        from onnx import numpy_helper

        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:  # Constant nodes are constants too
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.names = {o for n in model.graph.node for o in n.output} | set(self.consts) | \
            {i.name for i in model.graph.input}
        self.nodes, self.inits, self.k = [], [], 0
        self.qp: dict = {}  # quantized tensor -> (scale name, zero point name)

    def fresh(self, base: str) -> str:
        while True:
            self.k += 1
            name = f"{base}_lowbit{self.k}"
            if name not in self.names:
                self.names.add(name)
                return name

    def node(self, op_type, inputs, outputs=None, base="t", **attrs):
        from onnx import helper

        outputs = outputs or [self.fresh(base)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), **attrs))
        return outputs[0]

    def const(self, node, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise LowbitError(f"{node.op_type} node '{node.name or node.output[0]}': the {what} must be a constant: "
                              f"lowbit compiles static quantization parameters, and '{name}' is computed at run time")
        return self.consts[name]

    def init(self, array, base: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.consts[name] = np.asarray(array)
        return name

    def dq(self, x, s, z, base, axis=None):
        extra = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [x, s, z] if z else [x, s], base=f"{base}_dq", **extra)

    def bias(self, node, b, xs, ws, base):
        """DequantizeLinear of the i32 bias ``b`` with scale xs * ws (per output channel where ws is)."""
        sx = self.const(node, xs, "input scale").reshape(-1)[0]
        scale = scheme.scale_product(sx, self.const(node, ws, "weight scale"))
        axis = 0 if scale.ndim == 1 and scale.size > 1 else None
        s = self.init(scale.reshape(-1) if axis == 0 else scale.reshape(()), f"{base}_bias_scale")
        return self.dq(b, s, None, f"{base}_bias", axis)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _per_axis(e: _Expander, node, scale_name: str, axis: int):
    """``axis`` where the scale is a vector of more than one value (per channel), else None."""
    s = e.const(node, scale_name, "scale")
    return axis if s.ndim == 1 and s.size > 1 else None


def _expand(e: _Expander, n) -> None:
    op, ins, out, a = n.op_type, list(n.input), n.output[0], _attrs(n)
    base = n.name or out
    if op == "QLinearConv":
        x = e.dq(ins[0], ins[1], ins[2], f"{base}_x")
        w = e.dq(ins[3], ins[4], ins[5], f"{base}_w", _per_axis(e, n, ins[4], 0))
        args = [x, w] + ([e.bias(n, ins[8], ins[1], ins[4], base)] if len(ins) > 8 and ins[8] else [])
        y = e.node("Conv", args, base=f"{base}_conv", **a)
        e.node("QuantizeLinear", [y, ins[6], ins[7]], [out])
    elif op == "QLinearMatMul":
        x = e.dq(ins[0], ins[1], ins[2], f"{base}_a")
        w = e.dq(ins[3], ins[4], ins[5], f"{base}_b", _per_axis(e, n, ins[4], 1))
        e.node("QuantizeLinear", [e.node("MatMul", [x, w], base=f"{base}_matmul"), ins[6], ins[7]], [out])
    elif op == "QGemm":
        x = e.dq(ins[0], ins[1], ins[2], f"{base}_a")
        w = e.dq(ins[3], ins[4], ins[5], f"{base}_b", _per_axis(e, n, ins[4], 0 if a.get("transB", 0) else 1))
        args = [x, w] + ([e.bias(n, ins[6], ins[1], ins[4], base)] if len(ins) > 6 and ins[6] else [])
        gemm = {k: v for k, v in a.items() if k in ("alpha", "transA", "transB")}
        if len(ins) > 7 and ins[7]:
            y = e.node("Gemm", args, base=f"{base}_gemm", **gemm)
            e.node("QuantizeLinear", [y, ins[7]] + ([ins[8]] if len(ins) > 8 and ins[8] else []), [out])
        else:  # no output scale: a float result
            e.node("Gemm", args, [out], **gemm)
    elif op in ("QLinearAdd", "QLinearMul"):
        x = e.dq(ins[0], ins[1], ins[2], f"{base}_a")
        y = e.dq(ins[3], ins[4], ins[5], f"{base}_b")
        r = e.node(op[len("QLinear"):], [x, y], base=f"{base}_op")
        e.node("QuantizeLinear", [r, ins[6]] + ([ins[7]] if len(ins) > 7 and ins[7] else []), [out])
    elif op == "QLinearGlobalAveragePool":
        if a.get("channels_last", 0):
            raise LowbitError(f"{op} node '{base}': channels_last=1 is not supported")
        r = e.node("GlobalAveragePool", [e.dq(ins[0], ins[1], ins[2], f"{base}_x")], base=f"{base}_pool")
        e.node("QuantizeLinear", [r, ins[3], ins[4]], [out])
    elif op == "QLinearConcat":
        xs = [e.dq(ins[i], ins[i + 1], ins[i + 2], f"{base}_x{i}") for i in range(2, len(ins), 3)]
        r = e.node("Concat", xs, base=f"{base}_concat", axis=a["axis"])
        e.node("QuantizeLinear", [r, ins[0], ins[1]], [out])
    elif op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        f = op[len("QLinear"):]
        extra = {"alpha": a.get("alpha", 0.01)} if f == "LeakyRelu" else {}
        r = e.node(f, [e.dq(ins[0], ins[1], ins[2], f"{base}_x")], base=f"{base}_op", **extra)
        e.node("QuantizeLinear", [r, ins[3]] + ([ins[4]] if len(ins) > 4 and ins[4] else []), [out])


def expand_qoperators(model):
    """A copy of ``model`` with every QLinear* node of ``QOPS`` written as DequantizeLinear -> op ->
    QuantizeLinear; ``model`` itself when it has none."""
    import onnx

    if not has_qoperators(model):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    e = _Expander(m)
    for n in m.graph.node:
        default = n.domain in ("", "ai.onnx")
        if (n.domain if not default else "", n.op_type) in QOPS:
            try:
                _expand(e, n)
            except (IndexError, KeyError, ValueError, TypeError) as err:
                raise LowbitError(f"{n.op_type} node '{n.name or (n.output[0] if n.output else '?')}': malformed "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
            si, zi = _OUT_PARAMS[n.op_type]
            ins = list(n.input) + [""] * 9
            if ins[si]:
                e.qp[n.output[0]] = (ins[si], ins[zi])
        elif default and n.op_type in PASS_THROUGH and n.input and n.input[0] in e.qp:
            params = e.qp[n.input[0]]
            base = n.name or n.output[0]
            ins = [e.dq(x, *e.qp[x], f"{base}_in{i}") if x in e.qp else x for i, x in enumerate(n.input)]
            outs = [e.fresh(f"{base}_f{i}") for i in range(len(n.output))]
            from onnx import helper

            e.nodes.append(helper.make_node(n.op_type, ins, outs, name=n.name, **_attrs(n)))
            for o, f in zip(n.output, outs):
                e.node("QuantizeLinear", [f, *params], [o])
                e.qp[o] = params
        else:
            if default and n.op_type == "QuantizeLinear" and len(n.input) > 1:
                e.qp[n.output[0]] = (n.input[1], n.input[2] if len(n.input) > 2 else "")
            e.nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(e.nodes)
    m.graph.initializer.extend(e.inits)
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain != MS or MS in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def _uses(model) -> dict:
    out: dict = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    for o in model.graph.output:
        out.setdefault(o.name, []).append(None)
    return out


def hoist_dequantize(model):
    """``DequantizeLinear(Gather(table, indices))`` of a constant quantized table (how ``quantize_dynamic`` writes a
    quantized embedding) as ``Gather(DequantizeLinear(table), indices)``: exact, dequantization is elementwise
    (and per tensor here), and lowbit then folds the table to f32. ``model`` itself when there is none."""
    import onnx

    nodes = list(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    uses = _uses(model)
    swap = {}
    for dq in nodes:
        if dq.op_type != "DequantizeLinear" or not dq.input:
            continue
        g = producer.get(dq.input[0])
        if g is None or g.op_type != "Gather" or not g.input or g.input[0] not in inits or \
                len(uses.get(g.output[0], [])) != 1:
            continue
        if any(a.name == "axis" and a.i != 0 for a in dq.attribute) and len(dq.input) > 1:
            continue  # a per-axis table: leave it (the import names what it cannot take)
        swap[id(g)] = dq
    if not swap:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out, dropped = [], {id(dq) for dq in swap.values()}
    for n in nodes:
        if id(n) in dropped:
            continue
        if id(n) in swap:
            dq = swap[id(n)]
            table = dq.output[0] + "_lowbit_table"
            out.append(onnx.helper.make_node("DequantizeLinear", [n.input[0]] + list(dq.input[1:]), [table],
                                             name=dq.name))
            g = onnx.helper.make_node("Gather", [table] + list(n.input[1:]), list(dq.output), name=n.name)
            g.attribute.extend(n.attribute)
            out.append(g)
        else:
            out.append(n)
    del m.graph.node[:]
    m.graph.node.extend(out)
    return m


def fuse_dynamic_matmuls(model):
    """onnxruntime's ``quantize_dynamic`` chain ``DynamicQuantizeLinear(x) -> MatMulInteger(xq, W, xz [, wz]) ->
    Cast(float) -> Mul(., Mul(x_scale, w_scale))`` as the one com.microsoft ``DynamicQuantizeMatMul(x, W, w_scale
    [, wz])`` node it means (which onnxruntime's own optimizer makes of it); a DynamicQuantizeLinear left without
    users goes. Chains of another shape stay, and the import names their ops. ``model`` itself when none."""
    import onnx

    nodes = list(model.graph.node)
    if not any(n.op_type == "MatMulInteger" for n in nodes):
        return model
    producer = {o: n for n in nodes for o in n.output}
    uses = _uses(model)
    drop, replace = set(), {}
    for mm in nodes:
        if mm.op_type != "MatMulInteger" or mm.domain not in ("", "ai.onnx") or len(mm.input) < 3:
            continue
        dq = producer.get(mm.input[0])
        if dq is None or dq.op_type != "DynamicQuantizeLinear" or mm.input[2] != dq.output[2]:
            continue
        cast = uses.get(mm.output[0], [])
        if len(cast) != 1 or cast[0] is None or cast[0].op_type != "Cast":
            continue
        cast = cast[0]
        mul = uses.get(cast.output[0], [])
        if len(mul) != 1 or mul[0] is None or mul[0].op_type != "Mul":
            continue
        mul = mul[0]
        other = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        sm = producer.get(other)
        if sm is None or sm.op_type != "Mul" or dq.output[1] not in sm.input:
            continue
        w_scale = sm.input[1] if sm.input[0] == dq.output[1] else sm.input[0]
        ins = [dq.input[0], mm.input[1], w_scale] + ([mm.input[3]] if len(mm.input) > 3 and mm.input[3] else [])
        replace[id(mul)] = onnx.helper.make_node("DynamicQuantizeMatMul", ins, list(mul.output),
                                                 name=mul.name or mm.name, domain=MS)
        drop |= {id(mm), id(cast)}
        if all(u is mul for u in uses.get(sm.output[0], [])):
            drop.add(id(sm))
    if not replace:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kept = [replace.get(id(n), n) for n in nodes if id(n) not in drop]
    used = {i for n in kept for i in n.input} | {o.name for o in model.graph.output}
    kept = [n for n in kept if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    del m.graph.node[:]
    m.graph.node.extend(kept)
    if not any(o.domain == MS for o in m.opset_import):
        m.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    return m


__all__ = ["expand_qoperators", "fuse_dynamic_matmuls", "has_qoperators", "hoist_dequantize", "QOPS"]
