"""If with a constant condition (the chosen branch imported inline) and Loop with a constant trip count
(unrolled), against onnxruntime; a condition computed at run time and unsupported ops inside a branch are
refused by name."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
import lowbit.runtime
from helpers import run_ort
from lowbit.errors import LowbitError

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    g = helper.make_graph(nodes, "cf", inputs, outputs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _branch(name, nodes, out, shape=None, dtype=F):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, dtype, shape)])


def _check(model: bytes, inputs: dict):
    want = run_ort(model, inputs)
    got = lowbit.interpret(lowbit.load(model), inputs)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    return want


def _x(shape=(2, 3)):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _if_model(cond_nodes, cond_inits=(), then_nodes=None, else_nodes=None, inputs=None, name="if0"):
    then_b = _branch("then", then_nodes or [helper.make_node("Relu", ["x"], ["t"])], "t")
    else_b = _branch("else", else_nodes or [helper.make_node("Neg", ["x"], ["e"])], "e")
    nodes = cond_nodes + [helper.make_node("If", ["c"], ["y"], name=name, then_branch=then_b, else_branch=else_b)]
    return _model(nodes, inputs or [helper.make_tensor_value_info("x", F, [2, 3])],
                  [helper.make_tensor_value_info("y", F, None)], cond_inits)


@pytest.mark.parametrize("value", [True, False])
def test_if_on_constant(value):
    m = _if_model([], [("c", np.array(value))])
    _check(m, {"x": _x()})


def test_if_on_shape_comparison():
    # c = Shape(x)[1] == 3: folded to a constant at import; the branches' outputs differ in shape
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Equal", ["d", "three"], ["c"])]
    then_nodes = [helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0)]
    else_nodes = [helper.make_node("Relu", ["x"], ["e"])]
    m = _if_model(nodes, [("one", np.array(1, np.int64)), ("three", np.array(3, np.int64))], then_nodes, else_nodes)
    want = _check(m, {"x": _x()})
    assert want["y"].shape == ()
    m2 = _if_model(nodes, [("one", np.array(1, np.int64)), ("three", np.array(4, np.int64))], then_nodes, else_nodes)
    assert _check(m2, {"x": _x()})["y"].shape == (2, 3)


def test_nested_if_with_outer_scope_values():
    inner = helper.make_node("If", ["c2"], ["t"], name="inner",
                             then_branch=_branch("it", [helper.make_node("Add", ["x", "w"], ["it_o"])], "it_o"),
                             else_branch=_branch("ie", [helper.make_node("Sub", ["x", "w"], ["ie_o"])], "ie_o"))
    for c1, c2 in [(True, False), (True, True), (False, True)]:
        m = _if_model([], [("c", np.array(c1)), ("c2", np.array([c2])), ("w", _x((3,)))], then_nodes=[inner])
        _check(m, {"x": _x()})


def test_if_on_graph_input_is_refused():
    m = _if_model([], inputs=[helper.make_tensor_value_info("x", F, [2, 3]),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])])
    with pytest.raises(LowbitError, match=r"If node 'if0': If with a condition computed at run time: .*"
                                          r"must be a constant: lowbit compiles static graphs, and 'c' is computed"):
        lowbit.load(m)


def test_unsupported_op_in_chosen_branch_is_refused_by_name():
    bad = [helper.make_node("Det", ["sq"], ["d"], name="det"), helper.make_node("Add", ["x", "d"], ["t"], name="ok")]
    m = _if_model([], [("c", np.array(True)), ("sq", _x((2, 2)))], then_nodes=bad)
    with pytest.raises(LowbitError, match=r"If node 'if0': then_branch: unsupported op: Det \(first at node 'det'\)"):
        lowbit.load(m)
    # the branch not taken is not imported
    m = _if_model([], [("c", np.array(False)), ("sq", _x((2, 2)))], then_nodes=bad)
    _check(m, {"x": _x()})


def test_error_inside_branch_names_the_node():
    then_nodes = [helper.make_node("Reshape", ["x", "shp"], ["t"], name="rs")]
    m = _if_model([], [("c", np.array(True)), ("shp", np.array([7, 7], np.int64))], then_nodes=then_nodes)
    with pytest.raises(LowbitError, match=r"If node 'if0': then_branch: Reshape node 'rs': "):
        lowbit.load(m)


def test_if_compiled_artifact(tmp_path):
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceProd", ["s"], ["n"], keepdims=0),
             helper.make_node("Greater", ["n", "five"], ["c"])]
    m = _if_model(nodes, [("five", np.array(5, np.int64))],
                  then_nodes=[helper.make_node("Sigmoid", ["x"], ["t0"]), helper.make_node("Mul", ["t0", "x"], ["t"])])
    x = _x()
    want = run_ort(m, {"x": x})
    lowbit.compile(m).save(tmp_path / "if.lbit")
    got = lowbit.runtime.load(tmp_path / "if.lbit").run({"x": x})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)


# -- Loop ------------------------------------------------------------------------------------------------------
def _loop_model(trip, cond=True, scan=True, cond_from_iter=None):
    """y = x + sum of i*w over the iterations; scan output: each iteration's accumulator."""
    I64, B = TensorProto.INT64, TensorProto.BOOL
    body_nodes = [helper.make_node("Cast", ["i"], ["fi"], to=F),
                  helper.make_node("Mul", ["fi", "w"], ["iw"]),
                  helper.make_node("Add", ["acc_in", "iw"], ["acc_out"])]
    if cond_from_iter is None:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:  # keep going while i + 1 < cond_from_iter
        body_nodes += [helper.make_node("Add", ["i", "one"], ["i1"]),
                       helper.make_node("Less", ["i1", "lim"], ["cond_out"])]
    outs = [helper.make_tensor_value_info("cond_out", B, []), helper.make_tensor_value_info("acc_out", F, [2, 3])]
    if scan:
        body_nodes.append(helper.make_node("Identity", ["acc_out"], ["scan_out"]))
        outs.append(helper.make_tensor_value_info("scan_out", F, [2, 3]))
    body = helper.make_graph(body_nodes, "body", [helper.make_tensor_value_info("i", I64, []),
                                                  helper.make_tensor_value_info("cond_in", B, []),
                                                  helper.make_tensor_value_info("acc_in", F, [2, 3])], outs)
    inits = [("w", _x((3,))), ("one", np.array(1, np.int64)), ("lim", np.array(cond_from_iter or 0, np.int64))]
    if trip is not None:
        inits.append(("M", np.array(trip, np.int64)))
    if cond is not None:
        inits.append(("cond", np.array(cond)))
    node = helper.make_node("Loop", ["M" if trip is not None else "", "cond" if cond is not None else "", "x"],
                            ["y"] + (["ys"] if scan else []), name="loop0", body=body)
    graph_outs = [helper.make_tensor_value_info("y", F, None)] + ([helper.make_tensor_value_info("ys", F, None)]
                                                                  if scan else [])
    return _model([node], [helper.make_tensor_value_info("x", F, [2, 3])], graph_outs, inits)


@pytest.mark.parametrize("trip,cond,scan,lim", [(4, True, True, None), (3, True, False, None),
                                                (5, None, True, None), (10, True, True, 3), (None, True, True, 6),
                                                (0, True, False, None), (3, False, False, None)])
def test_loop_unrolled(trip, cond, scan, lim):
    _check(_loop_model(trip, cond, scan, lim), {"x": _x()})


def test_loop_compiled_artifact(tmp_path):
    m = _loop_model(4)
    x = _x()
    want = run_ort(m, {"x": x})
    lowbit.compile(m).save(tmp_path / "loop.lbit")
    got = lowbit.runtime.load(tmp_path / "loop.lbit").run({"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_loop_refusals():
    with pytest.raises(LowbitError, match=r"Loop node 'loop0': Loop with a trip count of 5000: lowbit unrolls "
                                          r"loops at import, up to 1024 iterations"):
        lowbit.load(_loop_model(5000))
    with pytest.raises(LowbitError, match=r"Loop still running after 1024 iterations"):
        lowbit.load(_loop_model(None, True, False, 100000))
    # a condition that depends on the data
    m = onnx.load_from_string(_loop_model(4, scan=False))
    body = m.graph.node[0].attribute[0].g
    body.node[3].CopyFrom(helper.make_node("ReduceMax", ["acc_out"], ["rm"], keepdims=0))
    body.node.append(helper.make_node("Greater", ["rm", "zero"], ["cond_out"]))
    m.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    with pytest.raises(LowbitError, match=r"Loop with a condition that changes at run time: .*must be a constant: "
                                          r"lowbit compiles static graphs, and 'cond_out' is computed at run time"):
        lowbit.load(m.SerializeToString())
    # a trip count computed at run time
    m = onnx.load_from_string(_loop_model(4, scan=False))
    m.graph.initializer.pop(next(i for i, t in enumerate(m.graph.initializer) if t.name == "M"))
    m.graph.input.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    with pytest.raises(LowbitError, match=r"must be a constant: lowbit compiles static shapes, and 'M' is computed"):
        lowbit.load(m.SerializeToString())
