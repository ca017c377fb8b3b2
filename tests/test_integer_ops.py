"""Integer qconv2d / qmatmul: the reference against onnxruntime's QLinearConv / QLinearMatMul, the compiled
kernels against the reference bit for bit, and the lower-qdq pass on onnxruntime QDQ models."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.ir.types import QuantParams
from lowbit.passes import PassContext
from test_codegen_ops import build_and_run, cpu_target


def _has_amx():
    from lowbit.codegen import Target

    return Target.parse("cpu").has("amx_int8")


# every integer kernel is checked both on AMX tiles (where this CPU has them) and off them
KERNELS = ["base", "vnni", "amx"]  # every integer kernel family; a family this CPU cannot run skips

CONVS = [  # (cin, cout, hw, k, stride, pad, groups, relu, x dtype, per-channel)
    (3, 16, 9, 3, 1, 1, 1, False, "u8", True),
    (16, 24, 8, 1, 1, 0, 1, True, "u8", True),
    (8, 8, 7, 3, 2, 1, 8, True, "u8", True),
    (12, 16, 6, 3, 1, 0, 2, False, "i8", False),
    (64, 32, 19, 3, 2, 1, 1, True, "u8", True),     # AMX: two channel tiles, rows of 10 in 16-pixel tiles
    (80, 48, 5, 1, 1, 0, 1, False, "u8", True),     # AMX: channels padded to 128, an odd third channel tile
    (16, 32, 11, 3, 1, 2, 1, True, "u8", False),    # AMX: a kernel row folded into one 64-byte chunk
    (3, 8, 37, 3, 2, 1, 1, True, "u8", True),       # AMX: an RGB stem, a pixel one 32-bit word (2 vectors + 5)
    (1, 16, 20, 5, 1, 2, 1, False, "u8", False),    # AMX: one channel, three zero-point bytes per word
    (32, 32, 20, 3, 1, 1, 32, False, "u8", True),   # depthwise: 18 inner columns (a vector and 2), 2 borders
    (16, 16, 9, 5, 2, 2, 16, True, "i8", False),    # depthwise, 5x5 stride 2, i8
]


def _qconv_graph(cin, cout, hw, k, stride, pad, groups, relu, xdt, per_channel, seed=0):
    rng = np.random.default_rng(seed)
    xd = dt.u8 if xdt == "u8" else dt.i8
    sx, zx = 0.05, (117 if xdt == "u8" else -3)
    sw = rng.uniform(0.002, 0.01, cout).astype(np.float32) if per_channel else np.float32([0.004])
    w = rng.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8)
    b = rng.integers(-2000, 2000, cout).astype(np.int32)
    g = Graph("q")
    x = g.add_input("x", TensorType((1, cin, hw, hw), xd, QuantParams((sx,), (zx,))))
    wv = g.const(w, type=TensorType(w.shape, dt.i8, QuantParams(tuple(map(float, sw)), (0,) * len(sw),
                                                                  0 if per_channel else None)))
    oh = (hw + 2 * pad - k) // stride + 1
    rt = TensorType((1, cout, oh, oh), xd, QuantParams((0.07,), (11,)))
    y = g.create("qconv2d", [x, wv, g.const(b)], {"strides": (stride, stride), "pads": (pad,) * 4, "groups": groups,
                                                  "activation": "relu" if relu else "none"}, [rt]).result
    g.set_outputs([y], ["y"])
    lo, hi = xd.iinfo()
    return g, {"x": rng.integers(lo, hi + 1, (1, cin, hw, hw)).astype(xd.np_dtype)}, (w, b, sw, sx, zx)


def _qlinearconv_model(g, params):
    """The same conv as an onnxruntime QLinearConv node."""
    op = next(o for o in g.ops if o.opname == "qconv2d")
    w, b, sw, sx, zx = params
    xt, rt = op.operands[0].type, op.result.type
    a = op.attrs
    elem = TensorProto.UINT8 if xt.dtype == dt.u8 else TensorProto.INT8
    inits = [numpy_helper.from_array(np.float32(sx), "sx"), numpy_helper.from_array(np.array(zx, xt.dtype.np_dtype), "zx"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.asarray(sw, np.float32).reshape(-1) if len(sw) > 1 else np.float32(sw[0]), "sw"),
             numpy_helper.from_array(np.zeros(len(sw), np.int8) if len(sw) > 1 else np.int8(0), "zw"),
             numpy_helper.from_array(np.float32(rt.quant.scale[0]), "sy"),
             numpy_helper.from_array(np.array(rt.quant.zero_point[0], rt.dtype.np_dtype), "zy"),
             numpy_helper.from_array(b, "b")]
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"], ["c"],
                            strides=list(a["strides"]), pads=list(a["pads"]), group=a["groups"])
    nodes = [node]
    out = "c"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, list(xt.shape))],
                              [helper.make_tensor_value_info(out, elem, list(rt.shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("family", KERNELS)
@pytest.mark.parametrize("case", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_qconv2d_reference_matches_onnxruntime_and_kernel_is_bit_exact(case, family):
    g, x, params = _qconv_graph(*case)
    want = lowbit.interpret(g, x)["y"]
    assert want.dtype == g.outputs[0].type.dtype.np_dtype
    if not case[7]:  # QLinearConv has no fused relu
        ref = ort.InferenceSession(_qlinearconv_model(g, params), providers=["CPUExecutionProvider"]).run(None, x)[0]
        np.testing.assert_array_equal(want, ref)
    got = build_and_run(g, x, family)["y"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("family", KERNELS)
@pytest.mark.parametrize("lead,k,n,relu,per_channel", [((1,), 32, 10, False, True), ((2, 5), 64, 48, True, True),
                                                       ((7,), 16, 8, False, False), ((2, 40), 200, 32, True, True),
                                                       ((3, 20), 128, 40, False, True),
                                                       ((66,), 16, 40, True, True),  # AMX: blocks copy rows
                                                       ((3,), 30, 20, True, True)])  # VNNI: rows padded to K=32
def test_qmatmul_kernel_is_bit_exact(lead, k, n, relu, per_channel, family):
    rng = np.random.default_rng(3)
    sw = tuple(map(float, rng.uniform(0.002, 0.01, n))) if per_channel else (0.004,)
    g = Graph("q")
    x = g.add_input("x", TensorType(lead + (k,), dt.u8, QuantParams((0.03,), (128,))))
    w = g.const(rng.integers(-127, 128, (k, n)).astype(np.int8),
                type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * len(sw), 1 if per_channel else None)))
    rt = TensorType(lead + (n,), dt.u8, QuantParams((0.05,), (100,)))
    y = g.create("qmatmul", [x, w, g.const(rng.integers(-500, 500, n).astype(np.int32))],
                 {"activation": "relu" if relu else "none"}, [rt]).result
    g.set_outputs([y], ["y"])
    xs = {"x": rng.integers(0, 256, lead + (k,)).astype(np.uint8)}
    np.testing.assert_array_equal(build_and_run(g, xs, family)["y"], lowbit.interpret(g, xs)["y"])


@pytest.mark.parametrize("case", [4, 7], ids=["strided", "rgb37"])
def test_avx_vnni_conv_is_bit_exact(case):
    """The 256-bit family (AVX-VNNI, no AVX-512: Alder Lake and later): a subset of the conv cases above, in
    the NHWC kernel on ymm registers (8-lane vectors, a partial last vector), bit-exact."""
    from lowbit.codegen import build_module

    g, x, _ = _qconv_graph(*CONVS[case])
    kernels = []
    build_module(g, cpu_target("avx-vnni"), kernels=kernels)
    assert kernels[0]["kernel"] == "avx-vnni-nhwc", kernels[0]
    np.testing.assert_array_equal(build_and_run(g, x, "avx-vnni")["y"], lowbit.interpret(g, x)["y"])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("lead,k,n", [((2, 5), 64, 44), ((3,), 30, 20)])
def test_avx_vnni_matmul_is_bit_exact(lead, k, n, dynamic):
    rng = np.random.default_rng(11)
    sw = tuple(map(float, rng.uniform(0.002, 0.01, n)))
    g = Graph("q")
    w = g.const(rng.integers(-127, 128, (k, n)).astype(np.int8),
                type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * n, 1)))
    if dynamic:
        x = g.add_input("x", TensorType(lead + (k,), dt.f32))
        y = g.create("qmatmul_dynamic", [x, w, g.const(rng.normal(0, 1, n).astype(np.float32))],
                     {"per_row": True}).result
        xs = {"x": rng.normal(0.3, 2, lead + (k,)).astype(np.float32)}
    else:
        x = g.add_input("x", TensorType(lead + (k,), dt.u8, QuantParams((0.03,), (128,))))
        rt = TensorType(lead + (n,), dt.u8, QuantParams((0.05,), (100,)))
        y = g.create("qmatmul", [x, w, g.const(rng.integers(-500, 500, n).astype(np.int32))],
                     {"activation": "relu"}, [rt]).result
        xs = {"x": rng.integers(0, 256, lead + (k,)).astype(np.uint8)}
    g.set_outputs([y], ["y"])
    np.testing.assert_array_equal(build_and_run(g, xs, "avx-vnni")["y"], lowbit.interpret(g, xs)["y"])


def test_lower_qdq_turns_the_qdq_cnn_into_integer_ops(zoo_dir):
    g = lowbit.run_passes(lowbit.load(zoo_dir / "qdq_cnn.onnx"), "O2")
    names = [op.opname for op in g.ops]
    assert names.count("qconv2d") == 3 and names.count("qmatmul") == 1 and "conv2d" not in names
    # consecutive integer convs feed each other directly: no dequantize -> quantize round trip between them
    q = [op for op in g.ops if op.opname == "qconv2d"]
    assert any(op.operands[0].producer is not None and op.operands[0].producer.opname == "qconv2d" for op in q)
    sess = ort.InferenceSession(str(zoo_dir / "qdq_cnn.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for _ in range(5):
        x = {"input": rng.normal(0, 1.5, (1, 3, 32, 32)).astype(np.float32)}
        want = sess.run(None, x)[0]
        step = 0.008021261  # the output's quantization step
        assert np.max(np.abs(lowbit.interpret(g, x)["logits"] - want)) <= step * 1.001
        assert np.max(np.abs(build_and_run(g, x)["logits"] - lowbit.interpret(g, x)["logits"])) == 0


def test_u8_conv_uses_vnni_where_the_cpu_has_it():
    """On a VNNI CPU the u8 x i8 conv's inner step is one vpdpbusd (lowbit's own intrinsic: TVM's fails to build
    under LLVM 20); elsewhere the same kernel is an ordinary integer contraction (the tests above)."""
    from lowbit.runtime.host import cpu_flags

    if "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU has no AVX-512 VNNI")
    from lowbit.codegen import build_module

    g, x, _ = _qconv_graph(32, 32, 10, 3, 1, 1, 1, True, "u8", True, seed=9)
    ex = build_module(g, cpu_target("vnni"))
    asm = "".join(m.inspect_source("asm") for m in [ex.mod] + list(ex.mod.imports) if m.kind == "llvm")
    assert "vpdpbusd" in asm
    np.testing.assert_array_equal(build_and_run(g, x)["y"], lowbit.interpret(g, x)["y"])


@pytest.mark.skipif(not _has_amx(), reason="this CPU has no AMX-INT8")
def test_u8_conv_and_matmul_use_amx_tiles_where_the_cpu_has_them():
    """With AMX the integer conv and matmul kernels are tile code: tdpbusd on tiles loaded with tileloadd."""
    from lowbit.codegen import build_module

    g, x, _ = _qconv_graph(64, 32, 10, 3, 1, 1, 1, True, "u8", True, seed=9)
    ex = build_module(g, cpu_target("amx"))
    asm = "".join(m.inspect_source("asm") for m in [ex.mod] + list(ex.mod.imports) if m.kind == "llvm")
    assert "tdpbusd" in asm and "tileloadd" in asm and "ldtilecfg" in asm
    np.testing.assert_array_equal(build_and_run(g, x, "amx")["y"], lowbit.interpret(g, x)["y"])


@pytest.mark.parametrize("hi,folded", [(6.0, True), (3.0, False)])
def test_relu6_folds_only_when_saturation_enforces_it(hi, folded):
    """quantize(clip(conv, 0, 6)) with an output range [0, 6] is qconv2d + relu (saturation does the 6); with a
    range wider than the clip the clip must stay, and the graph stays in float simulation."""
    rng = np.random.default_rng(8)
    g = Graph("q")
    x = g.add_input("x", TensorType((1, 4, 5, 5), dt.f32))
    xq = g.create("quantize", [x], {}, [TensorType((1, 4, 5, 5), dt.u8, QuantParams((0.02,), (128,)))]).result
    w = g.const(rng.integers(-127, 128, (16, 4, 3, 3)).astype(np.int8),
                type=TensorType((16, 4, 3, 3), dt.i8, QuantParams((0.01,), (0,))))
    y = g.create("conv2d", [g.create("dequantize", [xq]).result, g.create("dequantize", [w]).result],
                 {"pads": (1, 1, 1, 1)}).result
    y = g.create("clip", [y], {"min": 0.0, "max": hi}).result
    out = g.create("quantize", [y], {}, [TensorType((1, 16, 5, 5), dt.u8, QuantParams((6.0 / 255,), (0,)))]).result
    g.set_outputs([g.create("dequantize", [out]).result], ["y"])
    q = lowbit.run_passes(g, "lower-qdq,dce")
    ops = [op.opname for op in q.ops]
    assert ("qconv2d" in ops) == folded and ("clip" in ops) == (not folded)
    xs = {"x": rng.normal(0, 1.5, (1, 4, 5, 5)).astype(np.float32)}
    diff = np.abs(lowbit.interpret(q, xs)["y"] - lowbit.interpret(g, xs)["y"])
    assert np.max(diff) <= 6.0 / 255 * 1.001


@pytest.mark.parametrize("per_row", [False, True], ids=["tensor", "row"])
@pytest.mark.parametrize("family", KERNELS)
@pytest.mark.parametrize("lead,k,n,bias", [((128,), 64, 48, True), ((5,), 16, 8, False), ((2, 33), 100, 64, True),
                                           ((4,), 30, 20, True)])
def test_qmatmul_dynamic_kernel_is_bit_exact(lead, k, n, bias, family, per_row):
    rng = np.random.default_rng(10)
    g = Graph("d")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    sw = tuple(map(float, rng.uniform(0.002, 0.01, n)))
    w = g.const(rng.integers(-127, 128, (k, n)).astype(np.int8),
                type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * n, 1)))
    ops = [x, w] + ([g.const(rng.normal(0, 1, n).astype(np.float32))] if bias else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    rows_apart = rng.normal(0.3, 2, lead + (k,)) * rng.uniform(0.01, 30, lead + (1,))  # rows of unlike ranges
    rows_apart[..., :1, :] = 0                                                          # a zero row
    for xs in ({"x": rng.normal(0.3, 2, lead + (k,)).astype(np.float32)}, {"x": rows_apart.astype(np.float32)},
               {"x": np.zeros(lead + (k,), np.float32)},                        # zero range: scale 1, zp 0
               {"x": np.abs(rng.normal(0, 1, lead + (k,))).astype(np.float32)}):  # all positive: zp 0
        np.testing.assert_array_equal(build_and_run(g, xs, family)["y"], lowbit.interpret(g, xs)["y"])


def test_dynamic_quantization_of_the_encoder_tracks_fp32_and_onnxruntime(zoo_dir, tmp_path):
    import model_zoo as zoo
    from onnxruntime.quantization import QuantType, quantize_dynamic

    g = lowbit.load(zoo_dir / "encoder.onnx", shapes=zoo.SHAPES["encoder"])
    q = lowbit.run_passes(g, "int8-dynamic")
    assert sum(op.opname == "qmatmul_dynamic" for op in q.ops) == 13
    quantize_dynamic(str(zoo_dir / "encoder.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    ortq = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    x = dict(np.load(zoo_dir / "encoder.npz"))
    want = lowbit.interpret(g, x)["last_hidden_state"].ravel()
    for got in (build_and_run(q, x)["last_hidden_state"].ravel(), ortq.run(None, x)[0].ravel()):
        assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.999


@pytest.mark.skipif(not _has_amx(), reason="this CPU has no AMX-INT8")
def test_nhwc_integer_region_matches_the_reference():
    """With AMX the integer region runs NHWC: AMX and depthwise convs write NHWC, integer max pooling and the
    per-tensor residual add stay NHWC, and the result is transposed back once. The integer ops are exact; the
    float residual add may round its sum once (a fused multiply-add) where the reference rounds twice."""
    rng = np.random.default_rng(12)
    g = Graph("nhwc")

    def q(s, z):
        return QuantParams((s,), (z,))

    def conv(x, cin, cout, k, stride, pad, groups, relu, out_q, seed, dilation=1):
        r = np.random.default_rng(seed)
        w = g.const(r.integers(-127, 128, (cout, cin // groups, k, k)).astype(np.int8),
                    type=TensorType((cout, cin // groups, k, k), dt.i8,
                                    QuantParams(tuple(map(float, r.uniform(0.002, 0.01, cout))), (0,) * cout, 0)))
        n, _, h, wd = x.type.shape
        oh = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        return g.create("qconv2d", [x, w, g.const(r.integers(-3000, 3000, cout).astype(np.int32))],
                        {"strides": (stride, stride), "pads": (pad,) * 4, "groups": groups,
                         "dilations": (dilation, dilation), "activation": "relu" if relu else "none"},
                        [TensorType((n, cout, oh, oh), dt.u8, out_q)]).result

    x = g.add_input("x", TensorType((1, 24, 13, 13), dt.u8, q(0.05, 120)))
    a = conv(x, 24, 64, 1, 1, 0, 1, True, q(0.06, 0), 1)        # AMX, NCHW in -> NHWC out
    b = conv(a, 64, 64, 3, 1, 1, 64, True, q(0.05, 0), 2)       # depthwise on NHWC
    y1 = conv(b, 64, 32, 1, 1, 0, 1, False, q(0.08, 128), 3)    # 1x1 on NHWC rows, read in place (169 rows)
    y2 = conv(a, 64, 32, 3, 1, 1, 1, False, q(0.07, 125), 4)    # AMX, NHWC in and out
    f = conv(y2, 32, 24, 1, 1, 0, 1, True, q(0.09, 0), 6)       # 1x1 on rows padded to 64 channels, 24 out
    f = conv(f, 24, 40, 3, 2, 1, 1, False, q(0.05, 7), 7)       # AMX on NHWC, 40 channels out (a partial tile)
    f = conv(f, 40, 40, 3, 1, 1, 40, True, q(0.04, 0), 8)       # depthwise NHWC: 2 vectors and 8 channels
    e = conv(y2, 32, 32, 5, 2, 2, 32, False, q(0.05, 3), 9)     # depthwise 5x5 stride 2, input zero point 125
    e2 = conv(y2, 32, 32, 3, 1, 2, 32, True, q(0.05, 0), 10, 2)  # depthwise, dilation 2
    s = g.create("add", [g.create("dequantize", [y1]).result, g.create("dequantize", [y2]).result]).result
    s = g.create("quantize", [g.create("relu", [s]).result], {}, [TensorType((1, 32, 13, 13), dt.u8, q(0.1, 0))]).result
    p = g.create("max_pool2d", [s], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)},
                 [TensorType((1, 32, 7, 7), dt.u8, q(0.1, 0))]).result
    d = conv(p, 32, 32, 3, 2, 1, 32, False, q(0.04, 100), 5)    # depthwise, stride 2
    g.set_outputs([d, s], ["y", "sum"])
    xs = {"x": rng.integers(0, 256, (1, 24, 13, 13)).astype(np.uint8)}
    want, got = lowbit.interpret(g, xs), build_and_run(g, xs, "amx")
    diff = np.abs(got["sum"].astype(np.int32) - want["sum"].astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99, (diff.max(), np.mean(diff == 0))
    diff = np.abs(got["y"].astype(np.int32) - want["y"].astype(np.int32))  # downstream of those steps
    assert np.mean(diff == 0) > 0.99, (diff.max(), np.mean(diff == 0))
    # the integer ops alone (no float add between them) are exact
    g.set_outputs([y1, y2, b, f, e, e2], ["y1", "y2", "b", "f", "e", "e2"])
    want, got = lowbit.interpret(g, xs), build_and_run(g, xs, "amx")
    for k in ("y1", "y2", "b", "f", "e", "e2"):
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("name,size", [("resnet18", 40), ("mobilenet_v2", 56)])
def test_quantized_zoo_cnn_compiles_to_the_interpreters_output(name, size):
    """A whole int8 CNN (stem on a narrow input, 3x3 and 1x1 convs, depthwise at strides 1 and 2, residual adds,
    pooling, the classifier), at a size that leaves partial tiles and 7- and 2-pixel rows: the compiled
    model's output equals the interpreter's on the same quantized graph."""
    import model_zoo as zoo

    model, inputs = zoo.ZOO[name](size=size)
    rng = np.random.default_rng(2)
    samples = [{"input": rng.normal(0, 1, inputs["input"].shape).astype(np.float32)} for _ in range(5)]
    q = lowbit.run_passes(lowbit.load(model), "int8", ctx=PassContext(calibration=samples[:4]))
    assert sum(op.opname == "qconv2d" for op in q.ops) > 15
    want, got = lowbit.interpret(q, samples[4])["logits"], build_and_run(q, samples[4])["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
