"""IR unit tests: dtypes, types, graph building and verification, text errors."""
import numpy as np
import pytest

import lowbit
from lowbit.ir import DType, Graph, QuantParams, TensorType, dtypes as dt, parse
from lowbit.ir.types import Encoding


def test_dtypes():
    assert [d.name for d in (dt.f32, dt.f16, dt.bf16, dt.f8e4m3, dt.f8e5m2, dt.i64, dt.i32, dt.i16, dt.i8, dt.u8,
                             dt.i4, dt.u4, dt.boolean)] == ["f32", "f16", "bf16", "f8e4m3", "f8e5m2", "i64", "i32",
                                                            "i16", "i8", "u8", "i4", "u4", "bool"]
    assert (dt.i4.bits, dt.i4.signed, dt.i4.iinfo()) == (4, True, (-8, 7))
    assert (dt.u4.iinfo(), dt.u8.signed, dt.bf16.is_float) == ((0, 15), False, True)
    assert DType.from_numpy(np.float16) is dt.f16
    with pytest.raises(ValueError, match="unknown dtype 'f7'"):
        DType.parse("f7")


def test_types_print_quantization_and_encoding():
    q = QuantParams((0.5, 0.25), (0, 3), axis=1)
    t = TensorType((2, 2), dt.i8, q, Encoding("nm", (2, 4)))
    assert str(t) == "tensor<2x2xi8, q<axis=1, [0.5:0, 0.25:3]>, nm<2:4>>"
    assert str(TensorType((), dt.f32)) == "tensor<f32>"
    with pytest.raises(ValueError, match="one scale"):
        QuantParams((0.5, 0.25), (0, 0))


def test_build_verify_and_interpret():
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 3), dt.f32))
    w = g.const(np.ones((3, 4), np.float32))
    y = g.create("matmul", [x, w]).result
    assert y.type == TensorType((2, 4), dt.f32)
    g.set_outputs([y], ["y"])
    g.verify()
    out = lowbit.interpret(g, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out["y"], np.full((2, 4), 3, np.float32))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        g.create("matmul", [w, w])
    with pytest.raises(ValueError, match="unknown attribute 'bogus'"):
        g.create("relu", [x], {"bogus": 1})
    with pytest.raises(ValueError, match="cannot erase matmul"):
        g.erase(y.producer)


@pytest.mark.parametrize("text,needle", [
    ('graph @g(%x: tensor<2xf32>) {\n  %0 = relu(%y) : tensor<2xf32>\n  return %0 as "y"\n}', "<text>:2:13: value %y is not defined"),
    ('graph @g(%x: tensor<2xf32>) {\n  %0 = relu(%x) : tensor<3xf32>\n  return %0 as "y"\n}', "differ from inferred"),
    ('graph @g(%x: tensor<2xf33>) {\n  return %x as "y"\n}', "unknown dtype 'f33'"),
    ('graph @g(%x: tensor<2xf32>) {\n  %0 = const dense<[1.0]> : tensor<2xf32>\n  return %0 as "y"\n}', "has 1 values"),
    ('graph @g(%x: tensor<2xf32>) {\n  %0 = relu(%x) {alpha = 1} : tensor<2xf32>\n  return %0 as "y"\n}', "unknown attribute 'alpha'"),
    ('graph @g(%x: tensor<2xf32>) {\n  return %x as "y"\n} trailing', "unexpected text after the graph"),
    ('graph @g(%x: tensor<2xf32>) {\n  %0 = const dense_resource<b> : tensor<2xf32>\n  return %0 as "y"\n}', "resource 'b' is not defined"),
])
def test_parse_errors_name_the_place(text, needle):
    with pytest.raises(lowbit.LowbitError, match=needle.replace("%", "%").replace("[", r"\[")):
        parse(text)


def test_clone_is_independent():
    g = parse('graph @g(%x: tensor<2xf32>) {\n  %0 = relu(%x) : tensor<2xf32>\n  return %0 as "y"\n}\n')
    c = g.clone()
    assert c == g
    c.ops[0].attrs  # noqa: B018
    c.create("neg", [c.outputs[0]])
    assert len(g.ops) == 1


def test_quantize_is_bit_exact_and_saturates():
    g = parse('graph @g(%x: tensor<6xf32>) {\n  %0 = quantize(%x) : tensor<6xi8, q<0.5:-1>>\n'
              '  %1 = requantize(%0) : tensor<6xu8, q<1.0:128>>\n  %2 = dequantize(%1) : tensor<6xf32>\n'
              '  return %0 as "q", %1 as "r", %2 as "d"\n}\n')
    out = lowbit.interpret(g, {"x": np.array([0.25, 0.75, -0.25, 1000, -1000, 1.25], np.float32)})
    np.testing.assert_array_equal(out["q"], np.array([-1, 1, -1, 127, -128, 1], np.int8))  # half to even
    np.testing.assert_array_equal(out["r"], np.array([128, 129, 128, 192, 64, 129], np.uint8))
    np.testing.assert_array_equal(out["d"], np.array([0, 1, 0, 64, -64, 1], np.float32))
