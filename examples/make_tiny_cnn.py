"""Writes examples/tiny_cnn.onnx and examples/tiny_cnn_inputs.npz: the bundled example of the README.

A small image classifier (Conv-BN-ReLU x3, global pooling, Gemm) with fixed random weights, opset 13.
Run: python examples/make_tiny_cnn.py
"""
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).parent


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(2026)
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    x, cin = "image", 3
    for i, (cout, stride) in enumerate(((16, 2), (32, 2), (64, 1))):
        w = init(f"conv{i}.weight", rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        bn = [init(f"bn{i}.{k}", v) for k, v in (("scale", rng.uniform(0.5, 1, cout)), ("bias", rng.normal(0, .1, cout)),
                                                  ("mean", rng.normal(0, .1, cout)), ("var", rng.uniform(.5, 1.5, cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}"] + bn, [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        x, cin = f"relu{i}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    w = init("fc.weight", rng.normal(0, np.sqrt(1 / cin), (10, cin)))
    b = init("fc.bias", rng.normal(0, 0.01, 10))
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], name="fc", transB=1))
    g = helper.make_graph(nodes, "tiny_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="lowbit-examples")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


if __name__ == "__main__":
    onnx.save(build(), HERE / "tiny_cnn.onnx")
    image = np.random.default_rng(7).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    np.savez(HERE / "tiny_cnn_inputs.npz", image=image)
    print("wrote", HERE / "tiny_cnn.onnx", "and", HERE / "tiny_cnn_inputs.npz")
