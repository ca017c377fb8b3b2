"""Every registered op has a reference implementation, a lowering rule (or a named refusal) and an ONNX exporter
(or a named refusal); every implementation has a schema; the registry's traits say what the ops do."""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, run_ort, single_node_model
from lowbit.errors import LowbitError
from lowbit.ir import all_ops, parse
from lowbit.ir.interp import evaluate_op, implemented_ops
from lowbit.ir.registry import TRAITS, has_trait, ops_with
from test_interp_vs_onnxruntime import CASES, _inputs_order

_rng = np.random.default_rng(0)
# Graphs of ops no single ONNX node of that table imports to (passes create requantize and the bf16 ops); the
# integer conv/matmul
# kernels are exported and checked against onnxruntime end to end in tests/test_quantize.py.
IR_CASES = [
    ("requantize", 'graph @g(%x: tensor<2x3xi8, q<0.5:-3>>) {\n  %0 = requantize(%x) : tensor<2x3xu8, q<0.25:128>>\n'
                   '  return %0 as "y"\n}\n', {"x": np.array([[-128, -3, 0], [5, 63, 127]], np.int8)}),
    ("requantize-axis", 'graph @g(%x: tensor<2x3xu8, q<0.1:10>>) {\n'
                        '  %0 = requantize(%x) : tensor<2x3xi8, q<axis=1, [0.2:0, 0.05:-5, 1.0:1]>>\n'
                        '  return %0 as "y"\n}\n', {"x": np.array([[0, 9, 10], [11, 128, 255]], np.uint8)}),
    # the bf16 ops, which only the to-bf16 pass creates
    ("conv2d_bf16", 'graph @g(%x: tensor<1x2x3x3xf32>) {\n'
                    '  %0 = const dense<[1.0, -0.5, 0.25, 2.0, 0.375, -1.5, 0.125, 3.0]> : tensor<2x2x1x2xbf16>\n'
                    '  %1 = const dense<[0.1, -0.2]> : tensor<2xf32>\n'
                    '  %2 = conv2d_bf16(%x, %0, %1) {activation = "relu", pads = [0, 1, 0, 0]} : tensor<1x2x3x3xf32>\n'
                    '  return %2 as "y"\n}\n', {"x": _rng.normal(size=(1, 2, 3, 3)).astype(np.float32)}),
    ("matmul_bf16", 'graph @g(%x: tensor<2x3x4xf32>) {\n'
                    '  %0 = const dense<[1.0, -0.5, 0.25, 2.0, 0.375, -1.5, 0.125, 3.0]> : tensor<4x2xbf16>\n'
                    '  %1 = const dense<[0.1, -0.2]> : tensor<2xf32>\n'
                    '  %2 = matmul_bf16(%x, %0, %1) : tensor<2x3x2xf32>\n'
                    '  return %2 as "y"\n}\n', {"x": _rng.normal(size=(2, 3, 4)).astype(np.float32)}),
    # the onnxruntime table imports Max of three operands as two max ops
    ("max", 'graph @g(%a: tensor<3x4xf32>, %b: tensor<4xf32>) {\n  %0 = max(%a, %b) : tensor<3x4xf32>\n'
            '  return %0 as "y"\n}\n', {"a": _rng.normal(size=(3, 4)).astype(np.float32),
                                                          "b": _rng.normal(size=4).astype(np.float32)}),
]


def _graphs():
    """(id, graph, inputs) for every onnxruntime case imported into lowbit, and the IR cases."""
    for name, op_type, inputs, consts, attrs, opset, n_out in CASES:
        model = single_node_model(op_type, inputs, consts, attrs, opset, n_out, _inputs_order(inputs, consts, op_type))
        yield name, lowbit.load(model), inputs
    for name, text, inputs in IR_CASES:
        yield name, parse(text), inputs


GRAPHS = list(_graphs())


def test_every_op_has_a_reference():
    assert set(all_ops()) == set(implemented_ops())


def _check_table(table: dict, refused: dict, what: str):
    ops = set(all_ops())
    missing = sorted(ops - set(table) - set(refused))
    assert not missing, f"ops with neither {what} nor a named refusal: {missing}"
    both = sorted(set(table) & set(refused))
    assert not both, f"ops with both {what} and a refusal: {both}"
    stale = sorted((set(table) | set(refused)) - ops)
    assert not stale, f"{what} or refusals for unregistered ops: {stale}"
    bad = {op: why for op, why in refused.items() if not isinstance(why, str) or not why.strip()}
    assert not bad, f"refusals without a reason: {bad}"


def test_every_op_has_a_lowering_rule_or_a_named_refusal():
    from lowbit.codegen import lowering_table

    rules, refused = lowering_table()
    _check_table(rules, refused, "a lowering rule")


def test_every_op_has_an_exporter_or_a_named_refusal():
    from lowbit.export import EXPORTERS, REFUSED

    _check_table(EXPORTERS, REFUSED, "an exporter")


@pytest.mark.parametrize("case", GRAPHS, ids=[c[0] for c in GRAPHS])
def test_export_computes_what_the_interpreter_does(case):
    """Each case exported and run by onnxruntime (its optimizer off: the ONNX semantics, op by op) gives the
    interpreter's results; a graph with a refused op is refused with the op's name and the reason."""
    from lowbit.export import REFUSED, to_onnx_qdq

    name, graph, inputs = case
    refused = [op.opname for op in graph.ops if op.opname in REFUSED]
    if refused:
        with pytest.raises(LowbitError) as e:
            to_onnx_qdq(graph)
        assert f"'{refused[0]}'" in str(e.value) and REFUSED[refused[0]] in str(e.value)
        return
    got = run_ort(to_onnx_qdq(graph).SerializeToString(), inputs)
    want = lowbit.interpret(graph, inputs)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        if np.issubdtype(w.dtype, np.floating):
            assert max_rel_err(got[k], w) <= 1e-5, f"{k}: max rel err {max_rel_err(got[k], w)}"
        else:
            np.testing.assert_array_equal(got[k], w)


def test_frontend_imports_these_onnx_ops():
    from lowbit.frontend import CONVERTERS

    want = """Abs Add And ArgMax AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos DequantizeLinear Div Dropout Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements Gelu
    Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish Identity LRN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mul Neg Not Or PRelu Pad Pow QuantizeLinear
    Range Reciprocal ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize Round Shape Sigmoid Sign
    Sin Size Slice Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Tile Transpose Unsqueeze Upsample Where Xor"""
    assert not set(want.split()) - set(CONVERTERS)


def test_frontend_reaches_every_op_passes_do_not_create():
    """Every registered op but those the passes create (integer kernels, requantize, the bf16 ops) is what some
    ONNX node of the onnxruntime table imports to."""
    ir_cases = {c[0] for c in IR_CASES}
    reached = {op.opname for name, g, _ in GRAPHS if name not in ir_cases for op in g.ops}
    assert set(all_ops()) - reached == ops_with("integer_kernel") | {"requantize", "conv2d_bf16", "matmul_bf16"}


# -- traits -----------------------------------------------------------------------------------------------------
def test_traits_are_consistent():
    assert {"const", "quantize", "dequantize", "requantize"} <= ops_with("no_fold") <= set(all_ops())
    assert ops_with("integer_kernel") <= ops_with("compute")
    assert ops_with("integer_kernel") == {"qconv2d", "qmatmul", "qmatmul_dynamic"}
    assert not ops_with("compute") & ops_with("elementwise")
    assert has_trait("add", "elementwise") and not has_trait("softmax", "elementwise")
    for t in TRAITS:
        assert ops_with(t), f"trait '{t}' is on no op"
    with pytest.raises(ValueError, match="unknown trait"):
        has_trait("add", "elementwize")
    with pytest.raises(ValueError, match="unknown op"):
        has_trait("no_such_op", "elementwise")


def _permutation(shape, quant_axis, rng):
    """A random permutation of the flat positions of ``shape`` that keeps each position's index on
    ``quant_axis`` (where quantization parameters differ), if any."""
    n = int(np.prod(shape, dtype=np.int64))
    key = np.indices(shape)[quant_axis].ravel() if quant_axis is not None else np.zeros(n, np.int64)
    perm = np.arange(n)
    for k in np.unique(key):
        at = np.flatnonzero(key == k)
        perm[at] = rng.permutation(at)
    return perm


def _commutes(graph, inputs):
    """For a graph of one op (and constants) whose result has its operands' broadcast shape: whether the
    reference commutes with permuting the elements of the broadcast operands and the result alike; False when
    the result has another shape or there are several results; None for graphs of several ops."""
    ops = [op for op in graph.ops if op.opname != "const"]
    if len(ops) != 1:
        return None
    (op,) = ops
    env = {id(v): inputs[v.name] for v in graph.inputs}
    args = [env[id(v)] if id(v) in env else v.const_value for v in op.operands]
    try:
        shape = np.broadcast_shapes(*(a.shape for a in args))
    except ValueError:
        return False
    if len(op.results) != 1 or shape != op.result.type.shape:
        return False
    axes = {t.quant.axis for t in [v.type for v in op.operands] + [op.result.type] if t.quant is not None} - {None}
    perm = _permutation(shape, axes.pop() if axes else None, np.random.default_rng(0))

    def shuffle(a):
        return np.broadcast_to(a, shape).reshape(-1)[perm].reshape(shape)

    (want,) = evaluate_op(op, args)
    (got,) = evaluate_op(op, [shuffle(a) for a in args])
    return bool(np.array_equal(got, shuffle(want), equal_nan=want.dtype.kind == "f"))


SINGLE = [(name, g, inputs) for name, g, inputs in GRAPHS if _commutes(g, inputs) is not None]


@pytest.mark.parametrize("case", SINGLE, ids=[c[0] for c in SINGLE])
def test_elementwise_trait_matches_the_reference(case):
    """``elementwise`` holds exactly where the result has the operands' broadcast shape and permuting their
    elements permutes the result's alike (within the quantization axis's slices, where parameters differ)."""
    name, graph, inputs = case
    (op,) = [op for op in graph.ops if op.opname != "const"]
    assert _commutes(graph, inputs) == has_trait(op.opname, "elementwise"), op.opname


def test_every_elementwise_op_is_checked_against_the_reference():
    checked = {op.opname for _, g, _ in SINGLE for op in g.ops}
    assert not ops_with("elementwise") - checked
