"""Bad input gets one clean line naming the cause, exit 1; never a traceback."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.errors import LowbitWarning
from conftest import run_cli
from helpers import single_node_model


def _assert_one_line_error(p, *needles):
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert p.stdout == ""


def test_empty_file(tmp_path):
    f = tmp_path / "empty.onnx"
    f.write_bytes(b"")
    _assert_one_line_error(run_cli("opt", f), "empty.onnx", "empty")


def test_truncated_onnx(tmp_path, zoo_dir):
    data = (zoo_dir / "mobilenet_v2.onnx").read_bytes()
    f = tmp_path / "trunc.onnx"
    f.write_bytes(data[: len(data) // 3])
    _assert_one_line_error(run_cli("opt", f), "trunc.onnx", "truncated")


def test_non_onnx_file(tmp_path):
    f = tmp_path / "photo.onnx"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _assert_one_line_error(run_cli("opt", f), "photo.onnx", "not a valid ONNX model")


def test_text_file_that_is_neither(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello, this is not a model\n")
    _assert_one_line_error(run_cli("opt", f), "notes.txt")


def test_missing_path(tmp_path):
    _assert_one_line_error(run_cli("opt", tmp_path / "nope.onnx"), "nope.onnx", "no such file")


def test_unknown_ops_listed_together(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("FancyOp", ["a"], ["b"], name="first_fancy"),
             helper.make_node("FancyOp", ["b"], ["c"], name="second_fancy"),
             helper.make_node("Zorblax", ["c", "c"], ["d"], name="zorb"),
             helper.make_node("Gelu", ["d"], ["e"], name="ms_gelu", domain="com.microsoft")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    f = tmp_path / "unknown.onnx"
    f.write_bytes(m.SerializeToString())
    p = run_cli("opt", f)
    _assert_one_line_error(p, "unsupported ops", "FancyOp (first at node 'first_fancy')",
                           "Zorblax (first at node 'zorb')", "com.microsoft.Gelu (first at node 'ms_gelu')")
    assert "second_fancy" not in p.stderr


def test_unknown_op_in_ir_text(tmp_path):
    f = tmp_path / "bad.lbir"
    f.write_text('graph @g(%x: tensor<2xf32>) {\n  %0 = frobnicate(%x) : tensor<2xf32>\n  return %0 as "y"\n}\n')
    _assert_one_line_error(run_cli("opt", f), "bad.lbir:2:", "unknown op 'frobnicate'")


def test_usage_error_exits_2():
    p = run_cli("opt")
    assert p.returncode == 2
    p = run_cli("opt", "x.onnx", "--shape", "nonsense")
    assert p.returncode == 2 and "NAME=DIMS" in p.stderr


def test_symbolic_dims_need_binding(zoo_dir):
    with pytest.raises(lowbit.LowbitError, match=r"'input_ids' dims batch_size \(dim 0\), sequence_length \(dim 1\)"):
        lowbit.load(zoo_dir / "encoder.onnx")
    p = run_cli("opt", zoo_dir / "encoder.onnx")
    _assert_one_line_error(p, "symbolic input dimensions", "--shape input_ids=1x128")
    p = run_cli("opt", zoo_dir / "encoder.onnx", "--shape", "input_ids=1x16", "--shape", "attention_mask=1x16")
    assert p.returncode == 0 and "%input_ids: tensor<1x16xi64>" in p.stdout


def test_bad_shape_bindings(zoo_dir):
    with pytest.raises(lowbit.LowbitError, match="unknown input"):
        lowbit.load(zoo_dir / "resnet18.onnx", shapes={"image": (1, 3, 224, 224)})
    with pytest.raises(lowbit.LowbitError, match="conflicts with its static dimension 2"):
        lowbit.load(zoo_dir / "resnet18.onnx", shapes={"input": (1, 3, 100, 224)})
    with pytest.raises(lowbit.LowbitError, match="has rank 2, the model says rank 4"):
        lowbit.load(zoo_dir / "resnet18.onnx", shapes={"input": (1, 3)})


@pytest.mark.parametrize("op_type,inputs,consts,attrs,opset,needle", [
    ("Resize", {"x": np.zeros((1, 1, 2, 2), np.float32)}, {"roi": np.zeros(0, np.float32),
                                                           "s": np.array([1, 1, 2, 2], np.float32)},
     {"mode": "cubic"}, 13, "mode 'cubic' is not supported"),
    ("Conv", {"x": np.zeros((1, 1, 2, 2, 2, 5), np.float32)}, {"w": np.zeros((1, 1, 1, 1, 1, 3), np.float32)}, {},
     13, "spatial inputs"),
    ("LRN", {"x": np.zeros((1, 4, 2, 2), np.float32)}, {}, {"size": 2}, 13, "size 2 is not supported"),
    ("Pad", {"x": np.zeros((2, 2), np.float32)}, {"p": np.array([1, 1, 1, 1], np.int64)}, {"mode": "wrap"}, 19,
     "pad mode 'wrap'"),
    ("Reshape", {"x": np.zeros((2, 2), np.float32), "s": np.array([4], np.int64)}, {}, {}, 13,
     "must be a constant"),
    ("Cast", {"x": np.zeros(2, np.float32)}, {}, {"to": TensorProto.FLOAT8E4M3FN}, 19, "Cast to f8e4m3"),
    ("Softmax", {"x": np.zeros((2, 2), np.float32)}, {}, {"axis": 1, "bogus": 3}, 13, "attribute 'bogus'"),
])
def test_unsupported_attribute_values_refused(op_type, inputs, consts, attrs, opset, needle):
    model = single_node_model(op_type, inputs, consts, attrs, opset)
    with pytest.raises(lowbit.LowbitError, match=f"{op_type} node 'node0'.*{needle}"):
        lowbit.load(model)


def test_unsupported_dtype_and_opset():
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.STRING, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.STRING, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(lowbit.LowbitError, match="input 'x' has ONNX element type STRING"):
        lowbit.load(m.SerializeToString())
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 24)])
    with pytest.raises(lowbit.LowbitError, match="opset 24 is not supported"):
        lowbit.load(m.SerializeToString())


def test_run_time_input_checks(zoo_dir):
    g = lowbit.load(zoo_dir / "legacy_cnn.onnx")
    with pytest.raises(lowbit.LowbitError, match=r"missing input\(s\) data; the graph takes \(data: tensor<1x3x32x32xf32>\)"):
        lowbit.interpret(g, {})
    with pytest.raises(lowbit.LowbitError, match=r"input 'data' is float64\[1, 3, 32, 32\], expected tensor<1x3x32x32xf32>"):
        lowbit.interpret(g, {"data": np.zeros((1, 3, 32, 32))})


# -- old opsets: upgraded by ONNX's version converter ------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset=17, ir_version=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version or (3 if opset < 9 else 8)
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_old_opsets_are_upgraded_and_compute_their_old_semantics():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (1, 2, 3, 3)).astype(np.float32)
    # opset 1: Reshape's shape is an attribute; opset 6: BatchNormalization with is_test, broadcast Add
    m1 = _model([helper.make_node("Reshape", ["x"], ["r"], shape=[1, 18], name="rs"),
                 helper.make_node("Relu", ["r"], ["y"], name="relu")], [_vi("x", [1, 2, 3, 3])], [_vi("y", None)],
                opset=1)
    bn = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 2).astype(np.float32), n) for n in ("s", "b", "m", "v")]
    m6 = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], is_test=1, name="bn"),
                 helper.make_node("Add", ["n", "c"], ["y"], broadcast=1, axis=1, name="add")],
                [_vi("x", [1, 2, 3, 3])], [_vi("y", None)],
                bn + [numpy_helper.from_array(np.array([1.0, -1.0], np.float32), "c")], opset=6)
    s, b, mean, var = (numpy_helper.to_array(t).reshape(1, 2, 1, 1) for t in bn)
    want6 = (x - mean) / np.sqrt(var + 1e-5) * s + b + np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1)
    # (onnxruntime no longer runs opset 1 and 6 kernels: the references are numpy)
    for m, old, want in ((m1, 1, np.maximum(x.reshape(1, 18), 0)), (m6, 6, want6)):
        with pytest.warns(LowbitWarning, match=f"opset {old} was upgraded to opset 9"):
            g = lowbit.load(m.SerializeToString())
        assert g.metadata == {"onnx_opset": 9, "upgraded_from_opset": old}
        np.testing.assert_allclose(lowbit.interpret(g, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    assert lowbit.load(single_node_model("Relu", {"x": x}, opset=13)).metadata == {"onnx_opset": 13}


def test_old_opset_the_converter_cannot_upgrade_is_refused(tmp_path):
    m = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, name="to_int")],
               [_vi("x", [2])], [_vi("y", [2], TensorProto.INT32)], opset=5)
    with pytest.raises(lowbit.LowbitError, match=r"cannot upgrade opset 5 to 9 \(at Cast node 'to_int'\): .*"
                                                 r"No Adapter From Version \$5 for Cast"):
        lowbit.load(m.SerializeToString())
    f = tmp_path / "old.onnx"
    f.write_bytes(m.SerializeToString())
    _assert_one_line_error(run_cli("opt", f), "old.onnx", "cannot upgrade opset 5", "Cast")


# -- malformed models: one LowbitError naming the tensor or node ---------------------------------------------------
def _relu_add(w: onnx.TensorProto, opset=13):
    return _model([helper.make_node("Add", ["x", w.name], ["y"], name="add")], [_vi("x", [2, 3])], [_vi("y", None)],
                  [w], opset=opset)


def _weight():
    return numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")


def _with(t, **changes):
    for k, v in changes.items():
        if isinstance(v, list):
            t.ClearField(k)
            getattr(t, k).extend(v)
        else:
            setattr(t, k, v)
    return t


@pytest.mark.parametrize("mutate,needle", [
    (lambda t: _with(t, raw_data=b""), r"initializer 'w' has 0 bytes of raw data, but 6 f32 element\(s\) of dims "
                                       r"\[2, 3\] need 24"),
    (lambda t: _with(t, data_type=TensorProto.INT64), "initializer 'w' has 24 bytes of raw data, but 6 i64"),
    (lambda t: _with(t, data_type=TensorProto.STRING), "initializer 'w' has ONNX element type STRING"),
    (lambda t: _with(t, data_type=77), "initializer 'w' has ONNX element type 77"),
    (lambda t: onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3], float_data=[1.0] * 5), r"initializer 'w' has 5 value\(s\) in float_data, but its dims \[2, 3\] need 6"),
    (lambda t: _with(t, dims=[2, -3]), "initializer 'w' has a negative dimension"),
    (lambda t: _with(t, dims=[2**20, 2**20, 2**20]), "initializer 'w' has shape .* more than lowbit's limit"),
    (lambda t: _with(t, data_location=onnx.TensorProto.EXTERNAL), "the model keeps weights in external files"),
])
def test_malformed_initializers(mutate, needle):
    m = _relu_add(mutate(_weight()))
    with pytest.raises(lowbit.LowbitError, match=needle) as e:
        lowbit.load(m.SerializeToString())
    assert "\n" not in str(e.value)


def test_malformed_initializer_on_the_command_line(tmp_path):
    f = tmp_path / "bad.onnx"
    f.write_bytes(_relu_add(_with(_weight(), raw_data=b"\0" * 7)).SerializeToString())
    _assert_one_line_error(run_cli("opt", f), "bad.onnx", "initializer 'w' has 7 bytes of raw data")


def _graph_case(kind):
    x, y = _vi("x", [2, 3]), _vi("y", None)
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    if kind == "dangling":
        return _model([helper.make_node("Relu", ["nope"], ["y"], name="relu")], [x], [y])
    if kind == "duplicate_output":
        return _model([relu, helper.make_node("Neg", ["x"], ["r"], name="neg"),
                       helper.make_node("Relu", ["r"], ["y"], name="r2")], [x], [y])
    if kind == "duplicate_graph_output":
        return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y, y])
    if kind == "cycle":
        return _model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                       helper.make_node("Relu", ["a"], ["b"], name="n2"),
                       helper.make_node("Relu", ["b"], ["y"], name="n3")], [x], [y])
    if kind == "axis":
        return _model([helper.make_node("Softmax", ["x"], ["y"], axis=5, name="sm")], [x], [y])
    if kind == "perm":
        return _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 7], name="tr")], [x], [y])
    if kind == "attr_type":
        return _model([helper.make_node("Softmax", ["x"], ["y"], axis=1.5, name="sm")], [x], [y])
    if kind == "huge_input":
        return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [2**40, 2**20])], [y])
    if kind == "huge_const_of_shape":
        shape = numpy_helper.from_array(np.array([2**40, 8], np.int64), "s")
        return _model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="fill")], [x], [y], [shape])
    if kind == "huge_pads":
        w = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "w")
        return _model([helper.make_node("Conv", ["x4", "w"], ["y"], pads=[0, 0, 2**40, 0], name="conv")],
                      [_vi("x4", [1, 1, 2, 2])], [y], [w])
    if kind == "shapeless_input":
        return _model([relu, helper.make_node("Relu", ["r"], ["y"], name="r2")], [_vi("x", None)], [y])


@pytest.mark.parametrize("kind,needle", [
    ("dangling", "Relu node 'relu': input 'nope' is not produced by any node, initializer or graph input"),
    ("duplicate_output", "Neg node 'neg': output 'r' is also produced by Relu node 'relu'"),
    ("duplicate_graph_output", "graph output 'y' is listed twice"),
    ("cycle", "node 'n1' is on a cycle"),
    ("axis", "Softmax node 'sm': axis 5 is out of range for rank 2"),
    ("perm", "Transpose node 'tr'"),
    ("attr_type", "Softmax node 'sm': attribute 'axis' is FLOAT, the ONNX schema of Softmax-17 says INT"),
    ("huge_input", "input 'x' has shape .* more than lowbit's limit"),
    ("huge_const_of_shape", "ConstantOfShape node 'fill': the output has shape .* more than lowbit's limit"),
    ("huge_pads", "node 'conv': the conv2d result has shape .* more than lowbit's limit"),
    ("shapeless_input", r"'x' \(unknown rank\)"),
])
def test_malformed_graphs(kind, needle):
    with pytest.raises(lowbit.LowbitError, match=needle) as e:
        lowbit.load(_graph_case(kind).SerializeToString())
    assert "\n" not in str(e.value)


def test_unsorted_nodes_are_ordered():
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="second"), helper.make_node("Neg", ["x"], ["a"], name="first")]
    g = lowbit.load(_model(nodes, [_vi("x", [3])], [_vi("y", None)]).SerializeToString())
    np.testing.assert_array_equal(lowbit.interpret(g, {"x": np.array([1, -2, 3], np.float32)})["y"], [0, 2, 0])


def test_garbage_bytes_and_truncation():
    data = single_node_model("Relu", {"x": np.zeros(3, np.float32)})
    for bad in (data[:len(data) // 2], b"\x08" + bytes(range(255, 0, -1)), data[:5] + b"\xff" * 40):
        with pytest.raises(lowbit.LowbitError) as e:
            lowbit.load(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("<bytes>: ")
