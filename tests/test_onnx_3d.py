"""3-D Conv / ConvTranspose / MaxPool / AveragePool (compositions of the 2-D ops, ``frontend/onnx_nn3d``), dilated
AveragePool, ConvTranspose's output_shape / auto_pad, and ConvInteger (an i32 conv2d): one node each through the
interpreter against onnxruntime (integers identical, floats within 1e-5 relative), one conv3d and one ConvInteger
compiled, and the refusals by name."""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, run_ort, single_node_model
from lowbit.errors import LowbitError

r = np.random.default_rng(14)


def f32(*shape):
    return r.standard_normal(shape).astype(np.float32)


def u8(*shape):
    return r.integers(0, 256, shape).astype(np.uint8)


def i8(*shape):
    return r.integers(-128, 128, shape).astype(np.int8)


X5 = f32(1, 2, 5, 5, 4)
X4 = f32(1, 4, 4, 5, 4)

# (id, op_type, inputs, consts, attrs, opset, input order or None)
CASES = [
    ("conv3d-bias", "Conv", {"x": X5}, {"w": f32(3, 2, 2, 3, 2), "b": f32(3)}, {}, 17, None),
    ("conv3d-stride-dilation-pads", "Conv", {"x": X5}, {"w": f32(2, 2, 2, 2, 2)},
     {"strides": [2, 1, 2], "dilations": [2, 1, 1], "pads": [1, 0, 1, 1, 1, 0]}, 17, None),
    ("conv3d-groups", "Conv", {"x": X4}, {"w": f32(4, 2, 3, 2, 2), "b": f32(4)},
     {"group": 2, "pads": [1, 1, 0, 1, 0, 1], "strides": [1, 2, 1]}, 17, None),
    ("conv3d-depthwise", "Conv", {"x": X4}, {"w": f32(4, 1, 2, 2, 2)}, {"group": 4}, 17, None),
    ("conv3d-same-upper", "Conv", {"x": X5}, {"w": f32(2, 2, 2, 3, 3)},
     {"auto_pad": "SAME_UPPER", "strides": [2, 2, 1]}, 17, None),
    ("conv3d-same-lower", "Conv", {"x": X5}, {"w": f32(2, 2, 2, 2, 3)}, {"auto_pad": "SAME_LOWER"}, 17, None),
    ("conv3d-valid", "Conv", {"x": X5}, {"w": f32(2, 2, 3, 3, 3)}, {"auto_pad": "VALID"}, 17, None),
    ("conv3d-runtime-weight", "Conv", {"x": X5, "w": f32(2, 2, 2, 2, 2)}, {}, {"pads": [1] * 6}, 17, None),
    ("convtranspose3d", "ConvTranspose", {"x": f32(1, 4, 3, 3, 2)}, {"w": f32(4, 3, 3, 2, 2), "b": f32(6)},
     {"strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 0], "group": 2, "output_padding": [1, 0, 1],
      "dilations": [1, 2, 1]}, 17, None),
    ("convtranspose3d-output-shape", "ConvTranspose", {"x": f32(1, 2, 2, 3, 2)}, {"w": f32(2, 1, 2, 2, 2)},
     {"strides": [2, 2, 1], "output_shape": [4, 5, 3]}, 17, None),
    ("convtranspose2d-same-upper", "ConvTranspose", {"x": f32(1, 1, 3, 3)}, {"w": f32(1, 2, 3, 3)},
     {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 17, None),
    ("convtranspose2d-output-shape-past-full", "ConvTranspose", {"x": f32(1, 1, 3, 3)},
     {"w": f32(1, 2, 3, 3), "b": f32(2)}, {"strides": [3, 2], "output_shape": [10, 8]}, 17, None),
    ("maxpool3d-pads", "MaxPool", {"x": X5}, {},
     {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 1, 0, 0, 1, 1]}, 17, None),
    ("maxpool3d-ceil-dilation", "MaxPool", {"x": X5}, {},
     {"kernel_shape": [2, 2, 2], "strides": [2, 2, 3], "dilations": [2, 1, 1], "ceil_mode": 1}, 17, None),
    ("maxpool3d-same-upper", "MaxPool", {"x": X5}, {},
     {"kernel_shape": [3, 2, 2], "strides": [2, 2, 2], "auto_pad": "SAME_UPPER"}, 17, None),
    ("maxpool3d-u8", "MaxPool", {"x": u8(1, 2, 4, 5, 4)}, {}, {"kernel_shape": [2, 2, 2], "pads": [1, 0, 1, 1, 1, 0]},
     17, None),
    ("maxpool3d-i8", "MaxPool", {"x": i8(1, 2, 4, 5, 4)}, {},
     {"kernel_shape": [3, 2, 2], "strides": [2, 2, 1], "pads": [1] * 6}, 17, None),
] + [
    (f"avgpool3d-cip{cip}-ceil{ceil}", "AveragePool", {"x": X5}, {},
     {"kernel_shape": [3, 2, 2], "strides": [2, 2, 3], "pads": [1, 1, 0, 1, 0, 1], "count_include_pad": cip,
      "ceil_mode": ceil}, 17, None)
    for cip in (0, 1) for ceil in (0, 1)
] + [
    ("avgpool3d-same-lower", "AveragePool", {"x": X5}, {}, {"kernel_shape": [2, 2, 3], "auto_pad": "SAME_LOWER"},
     17, None),
    ("avgpool3d-dilations", "AveragePool", {"x": X5}, {},
     {"kernel_shape": [2, 2, 2], "dilations": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1], "count_include_pad": 1,
      "ceil_mode": 1, "strides": [2, 1, 1]}, 19, None),
    ("avgpool2d-dilations", "AveragePool", {"x": f32(1, 2, 7, 6)}, {},
     {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 0, 1, 1], "strides": [2, 1]}, 19, None),
    ("avgpool1d-dilations", "AveragePool", {"x": f32(1, 2, 9)}, {},
     {"kernel_shape": [3], "dilations": [3], "pads": [2, 1], "count_include_pad": 1}, 19, None),
    ("globalavgpool3d", "GlobalAveragePool", {"x": X5}, {}, {}, 17, None),
    # ConvInteger: onnxruntime takes scalar zero points only (per-channel w_zero_point is checked below)
    ("convinteger-u8", "ConvInteger", {"x": u8(1, 2, 5, 5)}, {"w": u8(3, 2, 3, 3)}, {}, 10, None),
    ("convinteger-u8-zero-points-pads", "ConvInteger", {"x": u8(1, 2, 5, 5), "xz": np.array(131, np.uint8)},
     {"w": u8(3, 2, 2, 3), "wz": np.array(7, np.uint8)}, {"pads": [1, 0, 1, 1], "strides": [2, 1]}, 10,
     ["x", "w", "xz", "wz"]),
    ("convinteger-i8", "ConvInteger", {"x": i8(1, 2, 5, 5), "xz": np.array(-3, np.int8)},
     {"w": i8(4, 1, 2, 2), "wz": np.array(5, np.int8)}, {"group": 2, "dilations": [2, 1]}, 10, ["x", "w", "xz", "wz"]),
    ("convinteger-u8-x-i8-w", "ConvInteger", {"x": u8(1, 2, 4, 6)}, {"w": i8(2, 2, 2, 2)}, {"auto_pad": "SAME_UPPER"},
     10, None),
    ("convinteger-w-zero-point-only", "ConvInteger", {"x": i8(1, 1, 4, 4)},
     {"w": u8(2, 1, 2, 2), "wz": np.array(200, np.uint8)}, {}, 10, ["x", "w", "", "wz"]),
    ("convinteger-1d", "ConvInteger", {"x": u8(1, 2, 7), "xz": np.array(9, np.uint8)}, {"w": u8(2, 2, 3)},
     {"pads": [1, 2]}, 10, ["x", "w", "xz"]),
    ("convinteger-3d", "ConvInteger", {"x": u8(1, 2, 4, 4, 3), "xz": np.array(100, np.uint8)}, {"w": i8(2, 2, 2, 2, 2)},
     {"pads": [1, 0, 1, 0, 1, 1]}, 10, ["x", "w", "xz"]),
]


def _model(case):
    _, op_type, inputs, consts, attrs, opset, order = case
    return single_node_model(op_type, inputs, consts, attrs, opset, input_order=order)


def _check(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, f"{got.dtype} {got.shape} != {want.dtype} {want.shape}"
    if np.issubdtype(want.dtype, np.floating):
        assert max_rel_err(got, want) <= 1e-5, max_rel_err(got, want)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_interpreter_matches_onnxruntime(case):
    model, inputs = _model(case), case[2]
    _check(lowbit.interpret(lowbit.load(model), inputs)["out0"], run_ort(model, inputs)["out0"])


def test_convinteger_per_channel_weight_zero_point():
    """ONNX allows one w_zero_point per output channel (onnxruntime does not): the float Conv of the centered
    integers, exact in f32 at these sizes, is the reference."""
    x, w, xz, wz = u8(1, 2, 5, 5), u8(3, 2, 2, 2), np.array(17, np.uint8), u8(3)
    model = single_node_model("ConvInteger", {"x": x, "xz": xz}, {"w": w, "wz": wz}, {"pads": [1, 1, 0, 0]}, 10,
                              input_order=["x", "w", "xz", "wz"])
    xf = (x.astype(np.float32) - np.float32(xz))
    wf = w.astype(np.float32) - wz.astype(np.float32).reshape(3, 1, 1, 1)
    ref = single_node_model("Conv", {"x": xf}, {"w": wf}, {"pads": [1, 1, 0, 0]}, 17)
    want = run_ort(ref, {"x": xf})["out0"]
    got = lowbit.interpret(lowbit.load(model), {"x": x, "xz": xz})["out0"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.astype(np.int32))


@pytest.mark.parametrize("name", ["conv3d-groups", "convinteger-u8-zero-points-pads"])
def test_compiled_matches_onnxruntime(name, tmp_path):
    import lowbit.runtime as rt

    case = next(c for c in CASES if c[0] == name)
    model, inputs = _model(case), case[2]
    lowbit.compile(model).save(tmp_path / "m.lbit")
    _check(rt.load(tmp_path / "m.lbit").run(inputs)["out0"], run_ort(model, inputs)["out0"])


@pytest.mark.parametrize("op_type, inputs, consts, attrs, opset, order, n_out, needle", [
    ("MaxPool", {"x": X5}, {}, {"kernel_shape": [2, 2, 2]}, 17, None, 2, "Indices output of a 3-D MaxPool"),
    ("ConvInteger", {"x": u8(1, 2, 4, 4), "xz": u8(2)}, {"w": u8(2, 2, 2, 2)}, {}, 10, ["x", "w", "xz"], 1,
     "x_zero_point of shape [2]"),
    ("ConvInteger", {"x": u8(1, 2, 4, 4)}, {"w": u8(2, 2, 2, 2), "wz": u8(3)}, {}, 10, ["x", "w", "", "wz"], 1,
     "w_zero_point of shape [3]"),
    ("ConvTranspose", {"x": f32(1, 1, 3, 3)}, {"w": f32(1, 1, 1, 1)}, {"strides": [3, 3], "auto_pad": "SAME_UPPER"}, 17,
     None, 1, "more than the full transposed convolution"),
    ("ConvTranspose", {"x": f32(1, 1, 3, 3)}, {"w": f32(1, 1, 2, 2)}, {"strides": [2, 2], "output_shape": [8, 8]}, 17,
     None, 1, "more than stride - 1"),
    ("ConvInteger", {"x": u8(1, 2, 4, 4, 4)}, {"w": u8(2, 2, 2, 2, 2)}, {"kernel_shape": [2, 2, 3]}, 10, None, 1,
     "kernel_shape [2, 2, 3] differs"),
    ("ConvInteger", {"x": f32(1, 2, 4, 4)}, {"w": u8(2, 2, 2, 2)}, {}, 10, None, 1, "input x of f32"),
])
def test_refused_by_name(op_type, inputs, consts, attrs, opset, order, n_out, needle):
    model = single_node_model(op_type, inputs, consts, attrs, opset, n_out=n_out, input_order=order)
    with pytest.raises(LowbitError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        lowbit.load(model)


def test_integer_conv_export_is_refused_by_name():
    from lowbit.export import to_onnx_qdq

    m = single_node_model("ConvInteger", {"x": np.ones((1, 1, 4, 4), np.uint8)}, {"w": np.ones((1, 1, 3, 3), np.uint8)},
                          {}, 10)
    with pytest.raises(LowbitError, match="integer conv2d .* has no exact ONNX export"):
        to_onnx_qdq(lowbit.load(m))
