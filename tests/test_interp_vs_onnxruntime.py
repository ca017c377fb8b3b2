"""Every ONNX op lowbit imports, run through lowbit's reference interpreter and through onnxruntime.

Each case is one node; integer results must be identical, float results within 1e-5 relative.
"""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, run_ort, single_node_model

r = np.random.default_rng(0)


def f32(*shape, lo=-2.0, hi=2.0):
    return r.uniform(lo, hi, shape).astype(np.float32)


def i64(*v):
    return np.array(v, np.int64)


X = f32(2, 3, 4, 5)
IMG = f32(1, 4, 9, 9)
HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, 3.7], np.float32)

# (id, op_type, inputs, consts, attrs, opset, n_out)
CASES = [
    ("add-bcast", "Add", {"a": X, "b": f32(4, 1)}, {}, {}, 17, 1),
    ("sub", "Sub", {"a": X, "b": f32(5)}, {}, {}, 17, 1),
    ("mul", "Mul", {"a": X}, {"b": f32(1, 3, 1, 1)}, {}, 17, 1),
    ("div", "Div", {"a": X, "b": f32(2, 3, 4, 5, lo=0.5, hi=2)}, {}, {}, 17, 1),
    ("div-int-trunc", "Div", {"a": i64(-7, 7, -8, 9, 0), "b": i64(2, -2, 3, 4, -5)}, {}, {}, 17, 1),
    ("pow-int-exp", "Pow", {"a": f32(3, 4, lo=0.1)}, {"b": np.array(3, np.int64)}, {}, 17, 1),
    ("pow-neg-base", "Pow", {"a": np.array([-2, -1.5, 0.5, 3, -3], np.float32),
                             "b": np.array([3, 2, -1, 1.5, 0], np.float32)}, {}, {}, 17, 1),
    ("pow-float", "Pow", {"a": f32(3, 4, lo=0.1), "b": f32(3, 4)}, {}, {}, 17, 1),
    ("max3", "Max", {"a": f32(3, 4), "b": f32(4), "c": f32(3, 1)}, {}, {}, 17, 1),
    ("min2", "Min", {"a": f32(3, 4), "b": f32(3, 4)}, {}, {}, 17, 1),
    ("sum3", "Sum", {"a": f32(3, 4), "b": f32(3, 4), "c": f32(4)}, {}, {}, 13, 1),
    ("mean2", "Mean", {"a": f32(3, 4), "b": f32(3, 4)}, {}, {}, 13, 1),
    ("equal", "Equal", {"a": i64(1, 2, 3, 4), "b": i64(1, 0, 3, 5)}, {}, {}, 17, 1),
    ("less", "Less", {"a": f32(5), "b": f32(5)}, {}, {}, 17, 1),
    ("greater", "Greater", {"a": f32(5), "b": f32(5)}, {}, {}, 17, 1),
    ("less-equal", "LessOrEqual", {"a": i64(1, 2, 3), "b": i64(2, 2, 2)}, {}, {}, 17, 1),
    ("greater-equal", "GreaterOrEqual", {"a": i64(1, 2, 3), "b": i64(2, 2, 2)}, {}, {}, 17, 1),
    ("and", "And", {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool)}, {}, {}, 17, 1),
    ("or", "Or", {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool)}, {}, {}, 17, 1),
    ("xor", "Xor", {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool)}, {}, {}, 17, 1),
    ("not", "Not", {"a": np.array([1, 0], bool)}, {}, {}, 17, 1),
    # (TVM 0.27 miscompiles comparisons of bools: codegen compares them as int8)
    ("equal-bool", "Equal", {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool)}, {}, {}, 19, 1),
    ("where", "Where", {"c": np.array([[1, 0, 1]], bool), "a": f32(2, 3), "b": f32(1)}, {}, {}, 17, 1),
    ("prelu", "PRelu", {"x": IMG}, {"s": f32(4, 1, 1)}, {}, 17, 1),
] + [
    (op.lower(), op, {"x": f32(3, 7, lo=lo, hi=hi)}, {}, {}, 17, 1)
    for op, lo, hi in (("Relu", -2, 2), ("Sigmoid", -8, 8), ("Tanh", -3, 3), ("Exp", -5, 5), ("Log", 0.01, 9),
                       ("Sqrt", 0, 9), ("Reciprocal", 0.1, 3), ("Erf", -3, 3), ("Floor", -3, 3), ("Ceil", -3, 3),
                       ("Sin", -4, 4), ("Cos", -4, 4), ("Neg", -2, 2), ("Abs", -2, 2), ("Sign", -2, 2),
                       ("Softplus", -20, 20), ("HardSwish", -5, 5), ("Identity", -1, 1))
] + [
    ("round-half-even", "Round", {"x": HALVES}, {}, {}, 17, 1),
    ("hard-sigmoid", "HardSigmoid", {"x": f32(20, lo=-6, hi=6)}, {}, {"alpha": 0.3, "beta": 0.4}, 17, 1),
    ("leaky-relu", "LeakyRelu", {"x": f32(20)}, {}, {"alpha": 0.2}, 17, 1),
    ("elu", "Elu", {"x": f32(20)}, {}, {"alpha": 0.7}, 17, 1),
    ("gelu-erf", "Gelu", {"x": f32(40, lo=-5, hi=5)}, {}, {}, 20, 1),
    ("gelu-tanh", "Gelu", {"x": f32(40, lo=-5, hi=5)}, {}, {"approximate": "tanh"}, 20, 1),
    ("clip-attrs", "Clip", {"x": f32(20, lo=-9, hi=9)}, {}, {"min": -1.0, "max": 6.0}, 9, 1),
    ("clip-inputs", "Clip", {"x": f32(20, lo=-9, hi=9)}, {"lo": np.float32(0), "hi": np.float32(6)}, {}, 13, 1),
    ("clip-int", "Clip", {"x": i64(-5, 0, 5, 10)}, {"lo": np.int64(-1), "hi": np.int64(6)}, {}, 13, 1),
    ("cast-f2i", "Cast", {"x": np.array([-2.7, -0.5, 0.5, 2.7, 100.2], np.float32)}, {}, {"to": 6}, 17, 1),
    ("cast-i2f", "Cast", {"x": i64(-3, 0, 7)}, {}, {"to": 1}, 17, 1),
    ("cast-f2bool", "Cast", {"x": np.array([0, 0.1, -2], np.float32)}, {}, {"to": 9}, 17, 1),
    ("cast-bool2bool", "Cast", {"x": np.array([0, 1, 1], bool)}, {}, {"to": 9}, 17, 1),
    ("cast-f2h", "Cast", {"x": f32(10)}, {}, {"to": 10}, 17, 1),
    ("conv", "Conv", {"x": IMG}, {"w": f32(6, 4, 3, 3), "b": f32(6)}, {"pads": [1, 0, 2, 1], "strides": [2, 1]}, 17, 1),
    ("conv-dilated-grouped", "Conv", {"x": IMG}, {"w": f32(8, 2, 3, 3)}, {"dilations": [2, 2], "group": 2}, 17, 1),
    ("conv-depthwise", "Conv", {"x": IMG}, {"w": f32(4, 1, 3, 3)}, {"group": 4, "pads": [1, 1, 1, 1]}, 17, 1),
    ("conv-same-upper", "Conv", {"x": IMG}, {"w": f32(3, 4, 4, 4)}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 17, 1),
    ("conv-same-lower", "Conv", {"x": IMG}, {"w": f32(3, 4, 4, 4)}, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 17, 1),
    ("conv-valid", "Conv", {"x": IMG}, {"w": f32(3, 4, 2, 2)}, {"auto_pad": "VALID"}, 17, 1),
    ("convT", "ConvTranspose", {"x": IMG}, {"w": f32(4, 3, 3, 3), "b": f32(3)},
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 17, 1),
    ("convT-grouped-dilated", "ConvTranspose", {"x": IMG}, {"w": f32(4, 2, 2, 3)},
     {"group": 2, "dilations": [2, 1], "strides": [1, 3]}, 17, 1),
    ("maxpool-ceil", "MaxPool", {"x": IMG}, {}, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 17, 1),
    ("maxpool-pads-dil", "MaxPool", {"x": IMG}, {}, {"kernel_shape": [2, 3], "pads": [1, 1, 0, 1],
                                                      "dilations": [2, 1]}, 17, 1),
    ("avgpool-exclude", "AveragePool", {"x": IMG}, {}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                        "strides": [2, 2]}, 17, 1),
    ("avgpool-include", "AveragePool", {"x": IMG}, {}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                        "count_include_pad": 1}, 17, 1),
    ("avgpool-ceil", "AveragePool", {"x": IMG}, {}, {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 17, 1),
    ("avgpool-ceil-pad-include", "AveragePool", {"x": IMG}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                 "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                                                 "count_include_pad": 1}, 17, 1),
    ("gap", "GlobalAveragePool", {"x": IMG}, {}, {}, 17, 1),
    ("gmp", "GlobalMaxPool", {"x": IMG}, {}, {}, 17, 1),
    ("lrn-odd", "LRN", {"x": IMG}, {}, {"size": 3, "alpha": 0.01, "beta": 0.6, "bias": 2.0}, 17, 1),
    ("gemm", "Gemm", {"a": f32(4, 3), "b": f32(5, 4)}, {"c": f32(1, 5)},
     {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, 17, 1),
    ("gemm-scalar-c", "Gemm", {"a": f32(3, 4), "b": f32(4, 5)}, {"c": f32(1)}, {}, 17, 1),
    ("gemm-no-c", "Gemm", {"a": f32(3, 4), "b": f32(4, 5)}, {}, {}, 17, 1),
    ("matmul-batched", "MatMul", {"a": f32(2, 1, 3, 4), "b": f32(5, 4, 6)}, {}, {}, 17, 1),
    ("matmul-1d", "MatMul", {"a": f32(4), "b": f32(2, 4, 3)}, {}, {}, 17, 1),
    ("batchnorm", "BatchNormalization", {"x": IMG},
     {"s": f32(4), "b": f32(4), "m": f32(4), "v": f32(4, lo=0.1, hi=2)}, {"epsilon": 1e-3}, 15, 1),
    ("layernorm", "LayerNormalization", {"x": f32(2, 5, 8)}, {"s": f32(8), "b": f32(8)}, {"epsilon": 1e-5}, 17, 1),
    ("layernorm-axis1", "LayerNormalization", {"x": f32(2, 5, 8)}, {"s": f32(5, 8)}, {"axis": 1}, 17, 1),
    ("softmax-13", "Softmax", {"x": f32(2, 3, 4)}, {}, {"axis": 1}, 13, 1),
    ("softmax-11-coerced", "Softmax", {"x": f32(2, 3, 4)}, {}, {"axis": 1}, 11, 1),
    ("logsoftmax", "LogSoftmax", {"x": f32(2, 3, 4)}, {}, {"axis": -1}, 13, 1),
    ("reducemean-13", "ReduceMean", {"x": X}, {}, {"axes": [1, -1], "keepdims": 0}, 13, 1),
    ("reducemean-18", "ReduceMean", {"x": X}, {"axes": i64(2)}, {}, 18, 1),
    ("reducesum-13", "ReduceSum", {"x": X}, {"axes": i64(0, 3)}, {"keepdims": 1}, 13, 1),
    ("reducesum-all", "ReduceSum", {"x": X}, {}, {"keepdims": 0}, 13, 1),
    ("reducesum-noop", "ReduceSum", {"x": X}, {}, {"noop_with_empty_axes": 1}, 13, 1),
    ("reducemax", "ReduceMax", {"x": X}, {}, {"axes": [2]}, 13, 1),
    ("reducemin", "ReduceMin", {"x": X}, {}, {"axes": [0, 1]}, 13, 1),
    ("reduceprod", "ReduceProd", {"x": f32(3, 4, lo=0.5, hi=1.5)}, {}, {"axes": [1]}, 13, 1),
    ("argmax-last", "ArgMax", {"x": np.array([[1, 3, 3], [2, 2, 1]], np.float32)}, {},
     {"axis": 1, "select_last_index": 1}, 13, 1),
    ("argmax-first", "ArgMax", {"x": np.array([[1, 3, 3], [2, 2, 1]], np.float32)}, {}, {"axis": 1, "keepdims": 0}, 13, 1),
    ("reshape-0-neg1", "Reshape", {"x": X}, {"s": i64(0, -1, 5)}, {}, 17, 1),
    ("flatten-0", "Flatten", {"x": X}, {}, {"axis": 0}, 17, 1),
    ("flatten-2", "Flatten", {"x": X}, {}, {"axis": 2}, 17, 1),
    ("squeeze-11", "Squeeze", {"x": f32(1, 3, 1, 2)}, {}, {"axes": [0, -2]}, 11, 1),
    ("squeeze-13-all", "Squeeze", {"x": f32(1, 3, 1, 2)}, {}, {}, 13, 1),
    ("unsqueeze-11", "Unsqueeze", {"x": f32(3, 2)}, {}, {"axes": [0, 3]}, 11, 1),
    ("unsqueeze-13", "Unsqueeze", {"x": f32(3, 2)}, {"a": i64(-1, 1)}, {}, 13, 1),
    ("transpose-default", "Transpose", {"x": X}, {}, {}, 17, 1),
    ("transpose", "Transpose", {"x": X}, {}, {"perm": [0, 2, 3, 1]}, 17, 1),
    ("concat", "Concat", {"a": f32(2, 3), "b": f32(2, 1), "c": f32(2, 4)}, {}, {"axis": -1}, 17, 1),
    ("split-11", "Split", {"x": f32(7, 2)}, {}, {"axis": 0, "split": [3, 4]}, 11, 2),
    ("split-13", "Split", {"x": f32(2, 7)}, {"s": i64(2, 2, 3)}, {"axis": 1}, 13, 3),
    ("split-18-uneven", "Split", {"x": f32(7, 2)}, {}, {"num_outputs": 3}, 18, 3),
    ("slice-neg-step", "Slice", {"x": X}, {"s": i64(-1, 3), "e": i64(-(2 ** 63), 0), "a": i64(3, 2),
                                           "st": i64(-2, -1)}, {}, 17, 1),
    ("slice-big-end", "Slice", {"x": X}, {"s": i64(1), "e": i64(2 ** 63 - 1), "a": i64(-3)}, {}, 17, 1),
    ("slice-9", "Slice", {"x": X}, {}, {"starts": [0, 1], "ends": [1, 100], "axes": [0, 3]}, 9, 1),
    ("gather-neg", "Gather", {"x": f32(5, 3)}, {"i": i64(-1, 0, 2)}, {"axis": 0}, 17, 1),
    ("gather-dynamic", "Gather", {"x": f32(4, 6), "i": np.array([[5, 0], [-2, 3]], np.int64)}, {}, {"axis": 1}, 17, 1),
    ("gather-elements", "GatherElements", {"x": f32(3, 4), "i": np.array([[0, -1, 2, 1], [3, 3, 0, -4]], np.int64)},
     {}, {"axis": 1}, 17, 1),
    ("gather-elements-axis0", "GatherElements", {"x": f32(3, 4)}, {"i": np.array([[2, 0, 1, -1]], np.int64)},
     {"axis": 0}, 17, 1),
    ("expand", "Expand", {"x": f32(3, 1)}, {"s": i64(2, 1, 4)}, {}, 17, 1),
    ("tile", "Tile", {"x": f32(2, 3)}, {"r": i64(2, 3)}, {}, 17, 1),
    ("pad-constant", "Pad", {"x": f32(2, 3)}, {"p": i64(1, 0, 2, 3), "v": np.float32(1.5)}, {}, 17, 1),
    ("pad-reflect", "Pad", {"x": IMG}, {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}, {"mode": "reflect"}, 17, 1),
    ("pad-edge", "Pad", {"x": IMG}, {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}, {"mode": "edge"}, 17, 1),
    ("pad-negative", "Pad", {"x": IMG}, {"p": i64(0, 0, -2, 1, 0, 0, 1, -3)}, {}, 17, 1),
    ("pad-axes-18", "Pad", {"x": IMG}, {"p": i64(1, 2, 3, 4), "v": np.float32(0), "a": i64(2, 3)}, {}, 18, 1),
    ("pad-attrs-9", "Pad", {"x": f32(2, 3)}, {}, {"pads": [1, 1, 0, 2], "value": -1.0}, 9, 1),
    ("dropout-9", "Dropout", {"x": f32(3, 3)}, {}, {"ratio": 0.3}, 9, 1),
    ("dropout-13", "Dropout", {"x": f32(3, 3)}, {}, {}, 13, 1),
    ("upsample-9-nearest", "Upsample", {"x": f32(1, 2, 3, 4)}, {"s": np.array([1, 1, 2, 3], np.float32)},
     {"mode": "nearest"}, 9, 1),
    ("upsample-9-linear", "Upsample", {"x": f32(1, 2, 3, 4)}, {"s": np.array([1, 1, 2, 2], np.float32)},
     {"mode": "linear"}, 9, 1),
    ("resize-10-nearest", "Resize", {"x": f32(1, 2, 3, 4)}, {"s": np.array([1, 1, 2, 1.5], np.float32)},
     {"mode": "nearest"}, 10, 1),
]

EMPTY = np.zeros(0, np.float32)
for mode in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"):
    for nearest in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        CASES.append((f"resize-nearest-{mode}-{nearest}", "Resize", {"x": f32(1, 2, 5, 6)},
                      {"roi": EMPTY, "s": np.array([1, 1, 1.6, 0.5], np.float32)},
                      {"mode": "nearest", "coordinate_transformation_mode": mode, "nearest_mode": nearest}, 13, 1))
    CASES.append((f"resize-linear-{mode}", "Resize", {"x": f32(1, 2, 5, 6)},
                  {"roi": EMPTY, "s": np.array([1, 1, 2.5, 0.5], np.float32)},
                  {"mode": "linear", "coordinate_transformation_mode": mode}, 13, 1))
    CASES.append((f"resize-sizes-linear-{mode}", "Resize", {"x": f32(1, 2, 7, 6)},
                  {"roi": EMPTY, "sc": EMPTY, "sz": i64(1, 2, 5, 9)},
                  {"mode": "linear", "coordinate_transformation_mode": mode}, 13, 1))
CASES.append(("resize-half-pixel-symmetric", "Resize", {"x": f32(1, 2, 5, 6)},
              {"roi": EMPTY, "s": np.array([1, 1, 1.7, 0.6], np.float32)},
              {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, 19, 1))
CASES.append(("resize-axes-18", "Resize", {"x": f32(1, 2, 5, 6)},
              {"roi": EMPTY, "s": np.array([2, 3], np.float32)}, {"mode": "nearest", "axes": [2, 3]}, 18, 1))

QX = np.concatenate([HALVES, f32(30, lo=-3, hi=3), np.array([1000, -1000], np.float32)])
CASES += [
    ("quantize-u8", "QuantizeLinear", {"x": QX}, {"s": np.float32(0.5), "z": np.uint8(128)}, {}, 13, 1),
    ("quantize-i8", "QuantizeLinear", {"x": QX}, {"s": np.float32(0.02), "z": np.int8(-3)}, {}, 13, 1),
    ("quantize-default-zp", "QuantizeLinear", {"x": QX}, {"s": np.float32(0.1)}, {}, 13, 1),
    ("quantize-axis", "QuantizeLinear", {"x": f32(2, 3, 4)}, {"s": np.array([0.01, 0.02, 0.5], np.float32),
                                                             "z": np.array([0, 10, -10], np.int8)}, {"axis": 1}, 13, 1),
    ("dequantize-u8", "DequantizeLinear", {"x": np.arange(0, 256, 7, dtype=np.uint8)},
     {"s": np.float32(0.03), "z": np.uint8(100)}, {}, 13, 1),
    ("dequantize-axis", "DequantizeLinear", {},
     {"x": r.integers(-128, 128, (3, 4), dtype=np.int8), "s": np.array([0.1, 0.2, 0.3], np.float32),
      "z": np.array([1, 0, -1], np.int8)}, {"axis": 0}, 13, 1),
]


import cases_math  # noqa: E402  (the ops added for issue 14)
import cases_tensor  # noqa: E402

CASES += cases_math.CASES + cases_tensor.CASES


def _inputs_order(inputs, consts, op_type):
    order = list(inputs) + list(consts)
    if op_type == "Where":
        order = ["c", "a", "b"]
    if op_type == "RotaryEmbedding":  # position ids (a run-time input) come after the caches
        order = [k for k in ("x", "c", "s", "p") if k in order]
    return order


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case):
    name, op_type, inputs, consts, attrs, opset, n_out = case
    model = single_node_model(op_type, inputs, consts, attrs, opset, n_out, _inputs_order(inputs, consts, op_type))
    want = run_ort(model, inputs)
    got = lowbit.interpret(lowbit.load(model), inputs)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype, f"{k}: dtype {g.dtype} != {w.dtype}"
        if np.issubdtype(w.dtype, np.floating):
            assert max_rel_err(g, w) <= 1e-5, f"{k}: max rel err {max_rel_err(g, w)}"
        else:
            np.testing.assert_array_equal(g, w)


def test_shape_subgraph_folds_to_constants():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape becomes one reshape with a static target."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["bu"]),
             helper.make_node("Concat", ["bu", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"]),
             helper.make_node("ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Add", ["x", "ones"], ["z"])]
    inits = [numpy_helper.from_array(a, n) for n, a in (("zero", np.array(0, np.int64)), ("ax0", i64(0)),
                                                       ("minus1", i64(-1)))]
    g = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    graph = lowbit.load(m.SerializeToString())
    assert graph.op_counts() == {"reshape": 1, "const": 1, "add": 1}
    x = f32(2, 3, 4)
    got = lowbit.interpret(graph, {"x": x})
    want = run_ort(m.SerializeToString(), {"x": x})
    np.testing.assert_array_equal(got["y"], want["y"])
    np.testing.assert_array_equal(got["z"], want["z"])
