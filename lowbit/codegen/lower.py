"""IR → Relax, op by op: the driver.

Each op is lowered by the first kernel of its table (``kernels.py``) that applies — every op without several
implementations by its one rule (``RULES``, filled by ``ops_elementwise``, ``ops_shape``, ``ops_nn`` and
``ops_int``). Values live in one of three layouts: plain (NCHW), channel-blocked NCHWc between float
convolutions (``layout.py``, where the CPU build plans it) and NHWC in integer regions (AMX); each is made from
another once, where an op first needs it. ``tests/test_codegen_ops.py`` checks every registered op against the
reference interpreter.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from ..errors import LowbitError, LowbitWarning
from ..quant import scheme
from ..ir.graph import Graph
from . import layout, ops_bf16, ops_elementwise, ops_int, ops_math, ops_nn, ops_shape, ops_tensor  # noqa: F401  (rules)
from . import w4f
from .config import CodegenConfig
from .kernels import TABLE, choose
from .lowering import REFUSED, RULES, SUPPORTED_DTYPES, Lowerer, np_dtype
from .target import Target, X86Target


def lowering_table() -> tuple[dict, dict]:
    """(rules, refused): the op names the code generator lowers, each with its rule or kernel table, and the
    ones it refuses by name with the reason."""
    rules = dict(RULES)
    rules.update({k: v for k, v in TABLE.items() if k not in rules})
    rules["const"] = "a Relax constant, made by the driver"
    return rules, dict(REFUSED)


def _ident(name: str, used: set) -> str:
    base = re.sub(r"\W", "_", name) or "input"
    if base[0].isdigit():
        base = "_" + base
    n, i = base, 1
    while n in used:
        n, i = f"{base}_{i}", i + 1
    used.add(n)
    return n


def grouped_weight(v) -> bool:
    """A group-wise constant read only by kernels that take the codes from the constant itself, so it is never
    materialized: qmatmul_dynamic, as its weight, and dequantize ops whose results only f32 matmuls read as their
    weight (``w4f.dequantized_weight``: those dequantize ops are not lowered either)."""
    return v.is_const and bool(v.users) and all(
        (u.opname == "qmatmul_dynamic" and u.operands[1] is v and v not in u.operands[2:])
        or (u.opname == "dequantize" and w4f.dequantized_weight(u.result)) for u in v.users)


def folded_codes(v):
    """The constant c of ``v = dequantize(c)`` when c holds low-bit codes that are not group-wise (i4 / u4, or
    a codebook's indices: a convolution's ``quantize-weights`` / ``shift-add`` weight with f32 activations) and
    only dequantize ops read it: lowering makes ``v`` an f32 constant (the reference's values), c is not
    materialized. Else None."""
    p = v.producer
    if p is None or p.opname != "dequantize" or not p.operands[0].is_const:
        return None
    c = p.operands[0]
    q = c.type.quant
    if q is None or q.group is not None or (c.type.dtype in SUPPORTED_DTYPES and q.codebook is None):
        return None
    return c if all(u.opname == "dequantize" for u in c.users) else None


def fold_codes(graph: Graph) -> tuple[Graph, dict]:
    """(graph, {f32 constant: the codes' encoding}): every ``folded_codes`` dequantize replaced by the f32
    constant of its values (the reference's), in a copy of the graph when there is any, with a ``LowbitWarning``
    (their f32 kernels store f32)."""
    if not any(op.opname == "dequantize" and folded_codes(op.result) is not None for op in graph.ops):
        return graph, {}
    graph = graph.clone()
    folded, where = {}, []
    for op in [op for op in graph.ops if op.opname == "dequantize" and folded_codes(op.result) is not None]:
        c = op.operands[0]
        v = graph.const(scheme.dequantize_array(np.asarray(c.const_value), c.type), loc=op.loc, before=op)
        folded[v] = encoding(c.type)
        where.append(op.loc or op.describe())
        graph.replace_all_uses(op.result, v)
        graph.erase(op)
        if not c.users:
            graph.erase(c.producer)
    warnings.warn(f"{len(where)} low-bit weight(s) read by f32 ops ({', '.join(where[:3])}"
                  f"{', ...' if len(where) > 3 else ''}) are stored as f32: lowbit's f32 kernels take low-bit codes "
                  "only group-wise, as a matmul's weight; convolutions take them on int8 kernels (activations "
                  "quantized: --preset w4a8 with --calib DATA)", LowbitWarning, stacklevel=3)
    return graph, folded


def _grouped_use(v) -> str:
    """How a group-wise value that ``grouped_weight`` refuses is used, for the refusal."""
    if not v.is_const:
        return f"this one is not a constant but the result of {v.producer.opname if v.producer else 'an input'}"
    for u in v.users:
        if u.opname == "dequantize":
            why = w4f.dequantized_reason(u.result)
            if why:
                return why
        elif u.opname != "qmatmul_dynamic" or u.operands[1] is not v or v in u.operands[2:]:
            return f"this one is read by {u.opname}"
    return "this one is not read"


def encoding(t) -> str:
    """A weight type's encoding as the manifest names it: ``f32``, ``i8 per-channel``, ``i4 group 128``,
    ``u4 group 32, zero points``, ``i8 per-channel, sparse<0.5>``."""
    q = t.quant
    sparsity = "" if t.encoding is None else f", {t.encoding}"
    if q is None:
        return t.dtype.name + sparsity
    parts = [t.dtype.name + (f" group {q.group}" if q.group is not None else " per-channel" if q.axis is not None
                             else " per-tensor")]
    if any(q.zero_point):
        parts.append("zero points")
    if q.codebook is not None:
        parts.append(f"codebook of {len(q.codebook)}")
    return ", ".join(parts) + sparsity


def weight_record(L, op, before: int, tables_before: int = 0) -> dict | None:
    """The manifest's record of an op's constant weight (operand 1): its encoding and the bytes its kernel stores
    (the constants lowering it made; a constant used as it is: its own bytes), beside its f32 bytes."""
    if len(op.operands) < 2:
        return None
    w = op.operands[1]
    if op.opname == "matmul" and w4f.dequantized_weight(w):
        w = w4f.weight_of(op)
    if not w.is_const or w.type.rank < 2:
        return None
    made = getattr(L, "const_bytes", 0) - before
    stored = made if made else int(np.asarray(w.const_value).nbytes)
    enc = encoding(w.type)
    if w in getattr(L, "folded", {}):
        enc = f"{enc} (from {L.folded[w]})"
    if len(getattr(L, "tables", None) or ()) > tables_before:
        enc += ", stored as 4-bit table codes"
    return {"encoding": enc, "stored_bytes": int(stored), "f32_bytes": 4 * int(np.prod(w.type.shape))}


def check_lowerable(graph: Graph) -> None:
    """Refuse, before any TVM work, ops and dtypes the code generator does not implement."""
    problems = []
    for op in graph.ops:
        if op.opname in REFUSED:
            problems.append(f"{op.describe()}: op '{op.opname}' is not supported by codegen: {REFUSED[op.opname]}")
        elif op.opname not in RULES and op.opname not in TABLE and op.opname != "const":
            problems.append(f"{op.describe()}: no lowering rule for op '{op.opname}'")
        for v in op.results + op.operands:
            if v.type.quant is not None and v.type.quant.group is not None:  # (before the dtype: often u4)
                if grouped_weight(v) or (op.opname == "dequantize" and grouped_weight(op.operands[0])):
                    continue
                problems.append(f"{op.describe()}: group-wise low-bit weights have kernels only as the constant "
                                "weight of qmatmul_dynamic (--preset w4a8) and, dequantized, as the [K, N] weight "
                                "(grouped along K) of f32 matmuls (MatMulNBits at accuracy_level 0-3, --preset w4): "
                                f"{_grouped_use(v)}")
                break
            if v.type.dtype not in SUPPORTED_DTYPES:
                problems.append(f"{op.describe()}: dtype {v.type.dtype.name} is not supported by codegen yet")
                break
    if problems:
        raise LowbitError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _annotate(bb, gvs, kernel: str) -> None:
    """Mark every block of the TE PrimFuncs ``gvs`` with ``lowbit.kernel`` (the op's name), so schedule rules can
    read that kernel's own knobs after Relax has fused functions."""
    from tvm import s_tir

    mod = bb.get()
    for gv in gvs:
        func = mod[gv]
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue  # a hand-written kernel: its knobs were read when it was written
        sch = s_tir.Schedule(func)
        for blk in _blocks(sch):
            sch.annotate(blk, "lowbit.kernel", kernel)
        bb.update_func(gv, sch.mod["main"])


def _blocks(sch):
    """Every block of a schedule's function but the root, outermost first."""
    out, todo = [], list(sch.get_child_blocks(sch.get_sblock("root")))
    while todo:
        b = todo.pop(0)
        out.append(b)
        todo.extend(sch.get_child_blocks(b))
    return out


def to_relax(graph: Graph, target=None, config: CodegenConfig | None = None, *, input_layouts: dict | None = None,
             native_outputs: bool = False, layouts: dict | None = None, table_weights: list | None = None):
    """(IRModule, kernels): a module whose ``main`` takes the graph inputs (in order) and returns a tuple of
    its outputs, and one record per op of the kernel chosen (``name``, ``op``, ``kernel``, ``passed_over``).

    For the autotuner, which times one kernel as it runs inside its model: ``input_layouts`` ({input index:
    ``"nhwc"`` or an int channel block}) takes those inputs in that layout, ``native_outputs`` returns every
    output in the layout its producer made it in, and ``layouts``, a dict, receives per op name the layouts its
    operands were made in (``"plain"``, ``"nhwc"``, ``"b16"``...; constants ``"const"``).

    ``table_weights``, a list, makes every i8 constant of at least ``TABLE_MIN_ELEMENTS`` with at most 16
    distinct values (4-bit weights on the int8 kernels) a parameter of ``main`` after the inputs instead of a
    constant of the library, appending ``(Var, array, values)`` to the list: the artifact stores it as 4-bit
    indices into its values (``lowering.table_codes``) and the runtime passes it.

    On x86 targets float convolutional activations stay channel-blocked (NCHWc, ``layout.py``) between the
    ops that understand that layout; on AMX targets u8 convolutions run on AMX tiles (the process that runs
    the code must have asked for AMX, ``runtime.host.enable_amx``) and the integer region stays NHWC."""
    from tvm import relax

    graph, folded = fold_codes(graph)
    check_lowerable(graph)
    target = Target.parse(target)
    config = config or CodegenConfig()
    bb = relax.BlockBuilder()
    used: set = set()
    input_layouts = input_layouts or {}
    env: dict = {}  # plain layout
    benv: dict = {}  # blocked layout: value -> (expr, channels per block)
    nenv: dict = {}  # NHWC layout (integer regions): value -> expr
    native: dict = {}  # value -> the layout its producer made it in
    params = []
    for i, v in enumerate(graph.inputs):
        lay, shape = input_layouts.get(i, "plain"), list(v.type.shape)
        if lay == "nhwc":
            shape = [shape[0], *shape[2:], shape[1]]
        elif lay != "plain":
            shape = [shape[0], shape[1] // lay, *shape[2:], lay]
        p = relax.Var(_ident(v.name, used), relax.TensorType(shape, np_dtype(v.type)))
        params.append(p)
        if lay == "nhwc":
            nenv[v] = p
        elif lay == "plain":
            env[v] = p
        else:
            benv[v] = (p, lay)
        native[v] = lay if isinstance(lay, str) else f"b{lay}"
    L = Lowerer(bb, target, config)
    L.folded, L.tables = folded, table_weights
    blocked = isinstance(target, X86Target)
    given = {id(v): lay for v, lay in zip(graph.inputs, [input_layouts.get(i) for i in range(len(graph.inputs))])
             if isinstance(lay, int)}
    plan = layout.plan(graph, config.channel_blocks, given) if blocked else {}
    per_kernel = {k for k, _ in config.kernels}

    def get(v):
        if v not in env and v in nenv:  # only the NHWC form exists: back to NCHW once, where an op needs it
            env[v] = L.emit(L.R.permute_dims(nenv[v], [0, 3, 1, 2]))
        if v not in env:  # only the blocked form exists: unblock once, where a plain-layout op first needs it
            xb, cb = benv[v]
            env[v] = L.emit(layout.from_blocked(L, xb, v.type.shape, cb))
        return env[v]

    def get_nhwc(v):
        if v not in nenv:
            nenv[v] = L.emit(L.R.permute_dims(get(v), [0, 2, 3, 1]))
        return nenv[v]

    def get_blocked(v, cb):
        if v not in benv or benv[v][1] != cb:
            benv[v] = (L.emit(layout.to_blocked(L, get(v), v.type.shape, cb)), cb)
        return benv[v][0]

    L.get, L.get_nhwc, L.is_nhwc = get, get_nhwc, lambda v: v in nenv
    kernels = []
    with bb.function("main"):
        with bb.dataflow():
            for i, op in enumerate(graph.ops):
                if op.opname == "const":
                    if not grouped_weight(op.result):
                        # (the graph's own constants stay in the library; kernels' packed copies may be tables)
                        env[op.result] = L.const(op.attrs["value"], op.result.type.dtype.np_dtype, table=False)
                    continue
                if op.opname == "dequantize" and w4f.dequantized_weight(op.result):
                    continue  # its matmuls' kernel (w4f.py) reads the codes from the constant
                L.funcs = []
                name = op.loc or f"{op.opname}_{i}"
                if layouts is not None:
                    layouts[name] = [native.get(v, "const") for v in op.operands]
                try:
                    if len(op.results) == 1 and id(op.result) in plan:
                        cb = plan[id(op.result)]
                        before, ntab = getattr(L, "const_bytes", 0), len(L.tables or ())
                        benv[op.result] = (L.emit(layout.lower_blocked(L, op, cb, plan, get_blocked)), cb)
                        native[op.result] = f"b{cb}"
                        kernels.append({"name": name, "op": op.opname, "kernel": f"nchw{cb}c"})
                        weight = weight_record(L, op, before, ntab)
                        if weight:
                            kernels[-1]["weight"] = weight
                    else:
                        k, passed = choose(L, op)
                        before, ntab = getattr(L, "const_bytes", 0), len(L.tables or ())
                        res = k.lower(L, op)
                        record = {"name": name, "op": op.opname, "kernel": k.name}
                        if passed:
                            record["passed_over"] = passed
                        weight = weight_record(L, op, before, ntab)
                        if weight:
                            record["weight"] = weight
                        kernels.append(record)
                        if k.layout == "nhwc":
                            nenv[op.result] = L.emit(res)
                            native[op.result] = "nhwc"
                        else:
                            res = res if isinstance(res, list) else [res]
                            for r, e in zip(op.results, res, strict=True):
                                env[r] = L.emit(e)
                                native[r] = "plain"
                except LowbitError:
                    raise
                except Exception as e:
                    raise LowbitError(f"{op.describe()}: lowering to TVM failed: {str(e).splitlines()[0]}") from None
                if op.loc in per_kernel and L.funcs:
                    _annotate(bb, L.funcs, op.loc)
            if native_outputs:
                outs = [nenv[v] if native.get(v) == "nhwc" else benv[v][0] if str(native.get(v)).startswith("b")
                        else get(v) for v in graph.outputs]
            else:
                outs = [get(v) for v in graph.outputs]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out, params=params + [v for v, *_ in (L.tables or ())])
    return bb.get(), kernels


__all__ = ["to_relax", "check_lowerable", "lowering_table"]
