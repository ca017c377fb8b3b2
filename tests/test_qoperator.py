"""QOperator models (onnxruntime's QLinear* ops) import as the QDQ graphs they mean and run on lowbit's integer
kernels: each QLinear op within one output quantization step of onnxruntime, whole models close to it."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit

r = np.random.default_rng(0)


def _f(v):
    return np.asarray(v, np.float32)


def _model(nodes, inputs, outputs, inits, ms=False):
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=opsets, ir_version=8)


def _u8(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.UINT8, shape)


def _qconv():
    w = r.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8)
    inits = {"xs": _f(0.02), "xz": np.uint8(120), "w": w, "ws": _f(r.uniform(0.002, 0.01, 8)),
             "wz": np.zeros(8, np.int8), "ys": _f(0.05), "yz": np.uint8(100),
             "b": r.integers(-3000, 3000, 8).astype(np.int32)}
    n = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1, 1, 1, 1],
                         strides=[2, 2])
    return _model([n], [_u8("x", [1, 4, 9, 9])], [_u8("y", [1, 8, 5, 5])], inits), {"x": (1, 4, 9, 9)}


def _qmatmul():
    inits = {"as": _f(0.03), "az": np.uint8(128), "b": r.integers(-127, 128, (16, 24)).astype(np.int8),
             "bs": _f(r.uniform(0.002, 0.01, 24)), "bz": np.zeros(24, np.int8), "ys": _f(0.08), "yz": np.uint8(90)}
    n = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    return _model([n], [_u8("a", [3, 16])], [_u8("y", [3, 24])], inits), {"a": (3, 16)}


def _qgemm():
    inits = {"as": _f(0.03), "az": np.uint8(128), "b": r.integers(-127, 128, (10, 16)).astype(np.int8),
             "bs": _f(0.004), "bz": np.int8(0), "c": r.integers(-2000, 2000, 10).astype(np.int32),
             "ys": _f(0.1), "yz": np.uint8(128)}
    n = helper.make_node("QGemm", ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"], ["y"], domain="com.microsoft",
                         transB=1)
    return _model([n], [_u8("a", [2, 16])], [_u8("y", [2, 10])], inits, ms=True), {"a": (2, 16)}


def _binary(op):
    inits = {"as": _f(0.04), "az": np.uint8(110), "bs": _f(0.02), "bz": np.uint8(140), "cs": _f(0.05),
             "cz": np.uint8(128)}
    n = helper.make_node(op, ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["y"], domain="com.microsoft")
    return _model([n], [_u8("a", [2, 3, 4]), _u8("b", [2, 3, 4])], [_u8("y", [2, 3, 4])], inits, ms=True), \
        {"a": (2, 3, 4), "b": (2, 3, 4)}


def _unary(op, **attrs):
    inits = {"xs": _f(0.04), "xz": np.uint8(110), "ys": _f(0.01 if op == "QLinearSigmoid" else 0.03),
             "yz": np.uint8(0 if op == "QLinearSigmoid" else 128)}
    n = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", **attrs)
    shape = [1, 3, 4, 4]
    out = [1, 3, 1, 1] if op == "QLinearGlobalAveragePool" else shape
    return _model([n], [_u8("x", shape)], [_u8("y", out)], inits, ms=True), {"x": tuple(shape)}


def _concat():
    inits = {"ys": _f(0.05), "yz": np.uint8(128), "s0": _f(0.04), "z0": np.uint8(120), "s1": _f(0.06),
             "z1": np.uint8(130)}
    n = helper.make_node("QLinearConcat", ["ys", "yz", "a", "s0", "z0", "b", "s1", "z1"], ["y"],
                         domain="com.microsoft", axis=1)
    return _model([n], [_u8("a", [1, 2, 3]), _u8("b", [1, 4, 3])], [_u8("y", [1, 6, 3])], inits, ms=True), \
        {"a": (1, 2, 3), "b": (1, 4, 3)}


CASES = {"QLinearConv": _qconv, "QLinearMatMul": _qmatmul, "QGemm": _qgemm,
         "QLinearAdd": lambda: _binary("QLinearAdd"), "QLinearMul": lambda: _binary("QLinearMul"),
         "QLinearSigmoid": lambda: _unary("QLinearSigmoid"),
         "QLinearLeakyRelu": lambda: _unary("QLinearLeakyRelu", alpha=0.1),
         "QLinearGlobalAveragePool": lambda: _unary("QLinearGlobalAveragePool"), "QLinearConcat": _concat}


@pytest.mark.parametrize("name", CASES)
def test_qlinear_op_within_one_step_of_onnxruntime(name, tmp_path):
    """One QLinear node: lowbit's compiled result (integer kernels where the op has them) is onnxruntime's, give
    or take one step of the output's quantization."""
    import lowbit.runtime as rt

    model, shapes = CASES[name]()
    feed = {k: r.integers(0, 256, s).astype(np.uint8) for k, s in shapes.items()}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    art = lowbit.compile(model)
    art.save(tmp_path / "m.lbit")
    got = list(rt.load(tmp_path / "m.lbit").run(feed).values())[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.max(np.abs(got.astype(np.int32) - want.astype(np.int32))) <= 1
    if name in ("QLinearConv", "QLinearMatMul", "QGemm"):
        assert {k["op"] for k in art.manifest["kernels"]} & {"qconv2d", "qmatmul"}, art.manifest["kernels"]


def test_qoperator_resnet_runs_integer_kernels_like_onnxruntime(tmp_path):
    """ResNet-18 (56x56) quantized by onnxruntime's quantize_static in QOperator format: every convolution an
    integer kernel, the output within 2 output quantization steps of onnxruntime's."""
    import model_zoo as zoo
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import lowbit.runtime as rt

    model, inputs = zoo.resnet18(56)
    (tmp_path / "m.onnx").write_bytes(model)
    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"))
    calib = [{k: r.normal(0, 1, v.shape).astype(np.float32) for k, v in inputs.items()} for _ in range(2)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    q = onnx.load(str(tmp_path / "q.onnx"))
    art = lowbit.compile(q)
    art.save(tmp_path / "q.lbit")
    kinds = [k["op"] for k in art.manifest["kernels"]]
    assert kinds.count("qconv2d") == 20 and "conv2d" not in kinds
    feed = calib[0]
    want = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = list(rt.load(tmp_path / "q.lbit").run(feed).values())[0]
    dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear"][-1]
    step = float(next(numpy_helper.to_array(t) for t in q.graph.initializer if t.name == dq.input[1]))
    assert np.max(np.abs(got - want)) <= 2 * step + 1e-6


def test_dynamic_quantized_encoder_runs_integer_matmuls_like_onnxruntime(tmp_path):
    """The encoder quantized by onnxruntime's quantize_dynamic (DynamicQuantizeLinear -> MatMulInteger -> Cast
    -> Mul chains): every chain one integer qmatmul_dynamic; the output as onnxruntime computes it."""
    import model_zoo as zoo
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import lowbit.runtime as rt

    model, inputs = zoo.encoder(seq=16)
    (tmp_path / "m.onnx").write_bytes(model)
    quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "d.onnx"), weight_type=QuantType.QInt8)
    d = onnx.load(str(tmp_path / "d.onnx"))
    chains = sum(n.op_type == "MatMulInteger" for n in d.graph.node)
    shapes = {k: v.shape for k, v in inputs.items()}
    art = lowbit.compile(d, shapes=shapes)
    art.save(tmp_path / "d.lbit")
    assert [k["op"] for k in art.manifest["kernels"]].count("qmatmul_dynamic") == chains > 0
    feed = dict(inputs)
    want = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = list(rt.load(tmp_path / "d.lbit").run(feed).values())[0]
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_dynamic_quantize_matmul_node_and_refusals():
    """com.microsoft DynamicQuantizeMatMul imports as qmatmul_dynamic (per tensor); a weight zero point is
    refused by name."""
    from lowbit.errors import LowbitError

    w = r.integers(-127, 128, (8, 4)).astype(np.int8)
    scale = _f(r.uniform(0.01, 0.02, 4))

    def model(zp):
        inits = {"w": w, "s": scale} | ({"z": np.full(4, zp, np.int8)} if zp is not None else {})
        n = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s"] + (["z"] if zp is not None else []), ["y"],
                             domain="com.microsoft")
        return _model([n], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], inits, ms=True)
    x = r.normal(0, 1, (3, 8)).astype(np.float32)
    g = lowbit.load(model(0))
    assert "qmatmul_dynamic" in g.op_counts()
    want = ort.InferenceSession(model(0).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(lowbit.interpret(g, {"x": x})["y"], want)
    with pytest.raises(LowbitError, match="zero point other than 0"):
        lowbit.load(model(3))
