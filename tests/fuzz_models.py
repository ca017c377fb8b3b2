"""Seed models and seeded mutations for the importer fuzz test (tests/test_fuzz.py).

``SEEDS`` holds tiny models (the zoo's smallest builders at tiny sizes, plus a shape-op mix and an opset-7
model that goes through the version converter). ``mutate(seed_model, rng)`` returns one malformed variant and
a description of the mutation; ``check(model, inputs, shapes)`` runs it through lowbit (import +
reference interpreter) and onnxruntime and says what happened, raising AssertionError for a foreign
exception, a multi-line error, or an answer that differs from onnxruntime's.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import model_zoo as zoo

F = TensorProto.FLOAT


def _tiny_mix():
    """Shape ops with axes and permutations: Transpose, Softmax, Concat, ReduceSum, Gather, Slice, Split,
    Unsqueeze, Reshape, MatMul (opset 13)."""
    b = zoo.Builder("tiny_mix", opset=13, seed=21)
    x = b.input("x", [2, 3, 4])
    t = b.node("Transpose", [x], perm=[0, 2, 1])
    s = b.node("Softmax", [t], axis=-1)
    c = b.node("Concat", [s, t], axis=2)
    g = b.node("Gather", [c, b.init(np.array([0, 2], np.int64), "idx")], axis=1)
    sl = b.node("Slice", [g, b.init(np.array([0], np.int64), "st"), b.init(np.array([4], np.int64), "en"),
                          b.init(np.array([2], np.int64), "ax")])
    r = b.node("ReduceSum", [sl, b.init(np.array([1], np.int64), "axes")], keepdims=1)
    a, _ = b.node("Split", [sl, b.init(np.array([1, 1], np.int64), "sp")], n_out=2, axis=1)
    u = b.node("Unsqueeze", [b.node("Add", [a, r]), b.init(np.array([0], np.int64), "uax")])
    m = b.node("MatMul", [b.node("Reshape", [u, b.init(np.array([2, 4], np.int64), "shape")]),
                          b.init(b.rng.normal(0, 1, (4, 3)).astype(np.float32), "w")])
    b.output(m, "y")
    return b.model(), {"x": np.random.default_rng(22).normal(0, 1, (2, 3, 4)).astype(np.float32)}


def _old_opset():
    """Opset 7 (upgraded to 9 at import): Gemm, BatchNormalization, Reshape with a shape input, Sum, Clip."""
    b = zoo.Builder("old_opset", opset=7, seed=23, ir_version=3)
    x = b.input("x", [2, 4])
    h = b.node("Gemm", [x, b.init(b.rng.normal(0, 1, (4, 6)).astype(np.float32), "gw"),
                        b.init(np.zeros(6, np.float32) + 0.1, "gb")])
    h = b.node("Reshape", [h, b.init(np.array([2, 6, 1, 1], np.int64), "shape")])
    h = b.bn(h, 6)
    h = b.node("Clip", [b.node("Sum", [h, h])], min=-1.0, max=1.5)
    b.output(b.node("Flatten", [h], axis=1), "y")
    return b.model(list_inits_as_inputs=True), {"x": np.random.default_rng(24).normal(0, 1, (2, 4))
                                                .astype(np.float32)}


def _encoder():
    model, _ = zoo.encoder(seq=4, hidden=16, heads=2, ffn=32, layers=1, vocab=50)
    rng = np.random.default_rng(25)
    return model, {"input_ids": rng.integers(0, 50, (1, 4)).astype(np.int64),
                   "attention_mask": np.ones((1, 4), np.int64)}


# name -> (builder, shapes to bind)
SEEDS = {
    "tiny_mix": (_tiny_mix, None),
    "old_opset": (_old_opset, None),
    "legacy_cnn": (lambda: zoo.legacy_cnn(8), None),
    "small_cnn": (lambda: zoo.small_cnn(8), None),
    "encoder": (_encoder, {"input_ids": (1, 4), "attention_mask": (1, 4)}),
}

_HUGE = [2**31, 2**33, 2**40, 2**62, 10**12]
_ODD_INTS = [-(2**40), -1000, -7, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 7, 64, 1000, 2**31, 2**40]
# Odd but not extreme values: with 1e30 or 1e-30, float32 (onnxruntime) and float64 (lowbit's reference for
# some ops) arithmetic legitimately overflow in different places.
_ODD_FLOATS = [float("nan"), -1.0, 0.0, 0.5, 2.0, 1e-8]


# -- mutations: each edits a ModelProto in place and returns a description, or None where it does not apply -
def _m_initializer_size(m, rng):
    inits = list(m.graph.initializer)
    t = inits[rng.integers(len(inits))]
    kind = rng.integers(5)
    if kind == 0:
        t.raw_data = b""
    elif kind == 1 and t.raw_data:
        t.raw_data = t.raw_data[: rng.integers(len(t.raw_data))]
    elif kind == 2:
        t.raw_data = t.raw_data + bytes(rng.integers(1, 9))
    elif kind == 3:
        arr = numpy_helper.to_array(t).reshape(-1).astype(np.float32)
        t.ClearField("raw_data")
        t.data_type = F
        t.float_data.extend(arr[: max(arr.size + int(rng.integers(-2, 3)), 0)].tolist())
    else:
        dims = list(t.dims) or [1]
        i = rng.integers(len(dims))
        dims[i] = max(dims[i] + int(rng.choice([-1, 1, 3])), 0)
        del t.dims[:]
        t.dims.extend(dims)
    return f"initializer '{t.name}' size ({kind})"


def _m_initializer_dtype(m, rng):
    inits = list(m.graph.initializer)
    t = inits[rng.integers(len(inits))]
    t.data_type = int(rng.choice(list(range(0, 24)) + [99, -3]))
    return f"initializer '{t.name}' data_type {t.data_type}"


def _m_dangling(m, rng):
    nodes = [n for n in m.graph.node if n.input]
    n = nodes[rng.integers(len(nodes))]
    i = rng.integers(len(n.input))
    n.input[i] = n.input[i] + "_missing"
    return f"node '{n.name}' input {i} dangling"


def _m_swap_inputs(m, rng):
    nodes = [n for n in m.graph.node if len(n.input) >= 2]
    if not nodes:
        return None
    n = nodes[rng.integers(len(nodes))]
    i, j = rng.choice(len(n.input), 2, replace=False)
    n.input[i], n.input[j] = n.input[j], n.input[i]
    return f"node '{n.name}' inputs {i}<->{j} swapped"


def _m_cross_wire(m, rng):
    """An input of one node replaced by the output of an earlier node (a wrong but defined value)."""
    nodes = list(m.graph.node)
    k = rng.integers(1, len(nodes))
    n = nodes[k]
    if not n.input:
        return None
    src = nodes[rng.integers(k)]
    n.input[rng.integers(len(n.input))] = src.output[0]
    return f"node '{n.name}' reads '{src.output[0]}'"


def _m_attribute(m, rng):
    cands = [(n, a) for n in m.graph.node for a in n.attribute
             if a.type in (AttributeProto.INT, AttributeProto.INTS, AttributeProto.FLOAT)]
    if not cands:
        return None
    n, a = cands[rng.integers(len(cands))]
    if a.type == AttributeProto.INT:
        a.i = int(rng.choice(_ODD_INTS))
    elif a.type == AttributeProto.FLOAT:
        a.f = float(rng.choice(_ODD_FLOATS))
    elif a.ints:
        a.ints[rng.integers(len(a.ints))] = int(rng.choice(_ODD_INTS))
        if rng.integers(4) == 0:
            a.ints.append(int(rng.choice(_ODD_INTS)))
    else:
        a.ints.append(int(rng.choice(_ODD_INTS)))
    return f"node '{n.name}' attribute '{a.name}'"


def _m_attribute_type(m, rng):
    cands = [(n, a) for n in m.graph.node for a in n.attribute]
    if not cands:
        return None
    n, a = cands[rng.integers(len(cands))]
    a.type = int(rng.choice([0, 1, 2, 3, 6, 7, 8]))
    return f"node '{n.name}' attribute '{a.name}' type {a.type}"


def _m_add_attribute(m, rng):
    n = m.graph.node[rng.integers(len(m.graph.node))]
    name = str(rng.choice(["axis", "perm", "keepdims", "bogus", "to", "group", "axes"]))
    n.attribute.append(helper.make_attribute(name, int(rng.choice(_ODD_INTS)) if rng.integers(2) else
                                             [int(x) for x in rng.choice(_ODD_INTS, 2)]))
    return f"node '{n.name}' gets attribute '{name}'"


def _m_const_values(m, rng):
    """An integer initializer (axes, shapes, indices, pads) gets out-of-range values."""
    inits = [t for t in m.graph.initializer if t.data_type == TensorProto.INT64]
    if not inits:
        return None
    t = inits[rng.integers(len(inits))]
    arr = numpy_helper.to_array(t).copy()
    if arr.size:
        arr.reshape(-1)[rng.integers(arr.size)] = int(rng.choice(_ODD_INTS + _HUGE))
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return f"initializer '{t.name}' values {arr.reshape(-1).tolist()}"


def _m_huge_dims(m, rng):
    if rng.integers(2) == 0 and m.graph.initializer:
        t = m.graph.initializer[rng.integers(len(m.graph.initializer))]
        dims = list(t.dims) or [1]
        dims[rng.integers(len(dims))] = int(rng.choice(_HUGE))
        del t.dims[:]
        t.dims.extend(dims)
        return f"initializer '{t.name}' dims {dims}"
    vi = m.graph.input[rng.integers(len(m.graph.input))]
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return None
    dims[rng.integers(len(dims))].dim_value = int(rng.choice(_HUGE + [-1, -5]))
    return f"input '{vi.name}' dims"


def _m_duplicate_output(m, rng):
    nodes = list(m.graph.node)
    a, b = rng.choice(len(nodes), 2, replace=False)
    nodes[b].output[0] = nodes[a].output[0]
    return f"node '{nodes[b].name}' output duplicates '{nodes[a].output[0]}'"


def _m_input_type(m, rng):
    vi = m.graph.input[rng.integers(len(m.graph.input))]
    kind = rng.integers(3)
    if kind == 0:
        vi.type.tensor_type.ClearField("shape")
    elif kind == 1:
        vi.type.tensor_type.elem_type = int(rng.choice([0, 7, 8, 10, 11, 14, 99]))
    else:
        vi.type.tensor_type.shape.dim[0].dim_param = "n"
    return f"input '{vi.name}' type ({kind})"


def _m_structure(m, rng):
    g = m.graph
    kind = rng.integers(5)
    if kind == 0:  # reversed node order (a valid graph, not sorted)
        nodes = list(g.node)[::-1]
        del g.node[:]
        g.node.extend(nodes)
    elif kind == 1:  # a node removed
        del g.node[rng.integers(len(g.node))]
    elif kind == 2:  # an initializer removed
        if not g.initializer:
            return None
        del g.initializer[rng.integers(len(g.initializer))]
    elif kind == 3:  # a duplicated graph output or initializer
        if rng.integers(2) and g.initializer:
            g.initializer.append(g.initializer[rng.integers(len(g.initializer))])
        else:
            g.output.append(g.output[0])
    else:  # a cycle: the first node reads the last node's output
        g.node[0].input.append(g.node[-1].output[0])
    return f"structure ({kind})"


def _m_opset(m, rng):
    m.opset_import[0].version = int(rng.choice([0, 1, 5, 8, 10, 12, 17, 22, 23, 1000]))
    return f"opset {m.opset_import[0].version}"


MUTATIONS = [_m_initializer_size, _m_initializer_dtype, _m_dangling, _m_swap_inputs, _m_cross_wire, _m_attribute,
             _m_attribute, _m_attribute_type, _m_add_attribute, _m_const_values, _m_const_values, _m_huge_dims,
             _m_duplicate_output, _m_input_type, _m_structure, _m_opset]


def mutate(model: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One seeded mutation of ``model``: a byte-level one (flips, truncation) or a structural one."""
    kind = rng.integers(10)
    if kind == 0:
        data = bytearray(model)
        for _ in range(int(rng.integers(1, 6))):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return bytes(data), "byte flips"
    if kind == 1:
        return model[: rng.integers(len(model))], "truncated"
    for _ in range(8):
        m = onnx.ModelProto.FromString(model)
        what = MUTATIONS[rng.integers(len(MUTATIONS))](m, rng)
        if what is not None:
            return m.SerializeToString(), what
    return model, "unchanged"


# -- running a case ----------------------------------------------------------------------------------------------
def run_onnxruntime(model: bytes, inputs: dict):
    """onnxruntime's outputs by name, or None where it refuses the model or fails running it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, inputs)))
    except Exception:  # onnxruntime refuses the model: any answer of lowbit's is acceptable
        return None


def check(model: bytes, inputs: dict, shapes, what: str) -> str:
    """'ok' (same answer as onnxruntime, or onnxruntime refused), 'refused' (a clean LowbitError); an
    AssertionError or the foreign exception itself otherwise."""
    import lowbit
    from lowbit.errors import LowbitWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowbitWarning)
            g = lowbit.load(model, shapes=shapes)
        with np.errstate(all="ignore"):
            got = lowbit.interpret(g, inputs)
    except lowbit.LowbitError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"{what}: not a one-line error: {msg!r}"
        return "refused"
    want = run_onnxruntime(model, inputs)
    if want is None:
        return "ok"
    assert set(want) == set(got), f"{what}: outputs {sorted(got)} != onnxruntime's {sorted(want)}"
    for k, w in want.items():
        a, w = np.asarray(got[k], np.float64), np.asarray(w, np.float64)
        assert a.shape == w.shape, f"{what}: output '{k}' has shape {a.shape}, onnxruntime's {w.shape}"
        assert np.array_equal(np.isnan(a), np.isnan(w)), f"{what}: output '{k}' NaN positions differ"
        assert np.array_equal(np.where(np.isinf(a), np.sign(a), 0), np.where(np.isinf(w), np.sign(w), 0)), \
            f"{what}: output '{k}' Inf positions differ"
        fin = np.isfinite(w)
        if fin.any():
            scale = max(float(np.max(np.abs(w[fin]))), 1e-30)
            err = float(np.max(np.abs(a[fin] - w[fin])))
            assert err <= 1e-3 * scale or err <= 1e-6, f"{what}: output '{k}' differs by {err} (scale {scale})"
    return "ok"
