"""Bad input gets one clean line naming the cause, exit 1; never a traceback."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lowbit
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
             helper.make_node("Einsum", ["c", "c"], ["d"], name="ein", equation="ij,ij->ij"),
             helper.make_node("Gelu", ["d"], ["e"], name="ms_gelu", domain="com.microsoft")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    f = tmp_path / "unknown.onnx"
    f.write_bytes(m.SerializeToString())
    p = run_cli("opt", f)
    _assert_one_line_error(p, "unsupported ops", "FancyOp (first at node 'first_fancy')",
                           "Einsum (first at node 'ein')", "com.microsoft.Gelu (first at node 'ms_gelu')")
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
    ("Conv", {"x": np.zeros((1, 1, 5), np.float32)}, {"w": np.zeros((1, 1, 3), np.float32)}, {}, 13,
     "only 2-D spatial inputs"),
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
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    with pytest.raises(lowbit.LowbitError, match="opset 6 is not supported"):
        lowbit.load(m.SerializeToString())


def test_run_time_input_checks(zoo_dir):
    g = lowbit.load(zoo_dir / "legacy_cnn.onnx")
    with pytest.raises(lowbit.LowbitError, match=r"missing input\(s\) data; the graph takes \(data: tensor<1x3x32x32xf32>\)"):
        lowbit.interpret(g, {})
    with pytest.raises(lowbit.LowbitError, match=r"input 'data' is float64\[1, 3, 32, 32\], expected tensor<1x3x32x32xf32>"):
        lowbit.interpret(g, {"data": np.zeros((1, 3, 32, 32))})
