"""Low-bit convolution weights: quantize-weights / shift-add on conv2d (per output channel), the codes kept by the
static quantize pass as i8 values for the int8 kernels, stored in the artifact as 4-bit table codes and decoded
by the runtime — bit-exact against the interpreter; with f32 activations the codes are stored f32, with a
warning."""
import warnings

import numpy as np
import pytest

import lowbit
import lowbit.runtime as rt
from lowbit.compiler import prepare
from lowbit.errors import LowbitError, LowbitWarning
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.ir.interp import evaluate_op
from lowbit.passes import PassContext, run_pipeline
from lowbit.passes.quantize_weights import conv_rows, target_weight, weight_report
from test_codegen_ops import cpu_target


def _cnn(seed=0):
    """x [1, 8, 10, 10] -> conv 3x3 (16, pad 1) -> relu -> conv 3x3 stride 2 (32) + bias: weights of 1152 and
    4608 values (both large enough to be stored as table codes)."""
    r = np.random.default_rng(seed)
    g = Graph("cnn")
    x = g.add_input("x", TensorType((1, 8, 10, 10), dt.f32))
    w1 = g.const(r.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32))
    y = g.create("conv2d", [x, w1], {"pads": (1, 1, 1, 1)}, loc="c1").result
    y = g.create("relu", [y], loc="r1").result
    w2 = g.const(r.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32))
    b2 = g.const(r.normal(0, 0.1, 32).astype(np.float32))
    y = g.create("conv2d", [y, w2, b2], {"pads": (1, 1, 1, 1), "strides": (2, 2)}, loc="c2").result
    g.set_outputs([y], ["y"])
    # channels of unlike scales and correlated pixels: where GPTQ's error feedback pays
    base = r.normal(0, 1, (24, 8, 10, 10)) * r.uniform(0.2, 3, (1, 8, 1, 1))
    xs = (base + np.roll(base, 1, axis=3)).astype(np.float32)
    return g, [{"x": xs[i:i + 1]} for i in range(16)], {"x": xs[16:17]}


def test_conv_rows_are_what_the_weight_matrix_multiplies():
    g, calib, _ = _cnn()
    op = next(op for op in g.ops if op.loc == "c2")
    x = np.random.default_rng(1).normal(size=(1, 16, 10, 10)).astype(np.float32)
    w = target_weight(op)[0]  # [K, O]
    y = evaluate_op(op, [x, op.operands[1].const_value, op.operands[2].const_value])[0]
    mine = (conv_rows(op, x) @ w + op.operands[2].const_value).reshape(1, 5, 5, 32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(mine, y, rtol=1e-4, atol=1e-4)


def test_conv_gptq_beats_round_to_nearest_and_max_error_keeps_layers():
    g, calib, _ = _cnn()
    errs = {}
    for method in ("rtn", "gptq"):
        ctx = PassContext(calibration=calib)
        run_pipeline(g, f"quantize-weights{{method={method}}}", ctx)
        rows = weight_report(ctx)
        assert [r["group"] for r in rows] == [72, 144]  # one scale per output channel: the whole filter
        errs[method] = [r["rel_error"] for r in rows]
    assert all(0 < e < r for e, r in zip(errs["gptq"], errs["rtn"])), errs
    limit = sum(errs["gptq"]) / 2  # the less accurate layer passes it and keeps its f32 weight
    ctx = PassContext(calibration=calib)
    out = run_pipeline(g, f"quantize-weights{{method=gptq,max_error={limit}}}", ctx)
    back = [e > limit for e in errs["gptq"]]
    assert [r["fallback"] for r in weight_report(ctx)] == back and sorted(back) == [False, True]
    convs = [op for op in out.ops if op.opname == "conv2d"]
    assert [op.operands[1].is_const for op in convs] == back


@pytest.mark.parametrize("pipeline", ["quantize-weights{method=gptq},quantize,lower-qdq,canonicalize,dce",
                                      "shift-add{method=gptq},quantize,lower-qdq,canonicalize,dce"],
                         ids=["int4", "apot"])
def test_conv_codes_run_on_int8_kernels_bit_exact_from_4bit_storage(pipeline, tmp_path):
    g, calib, feed = _cnn()
    graph = prepare(g, pipeline, calibration=calib).graph
    qconvs = [op for op in graph.ops if op.opname == "qconv2d"]
    assert len(qconvs) == 2 and all(len(np.unique(op.operands[1].const_value)) <= 16 for op in qconvs)
    art = lowbit.compile(graph, target=cpu_target("vnni"), pipeline="O0")
    path = tmp_path / "m.lbit"
    art.save(path)
    specs = art.manifest["table_weights"]
    assert len(specs) == 2 and all(len(s["values"]) <= 16 for s in specs)
    ws = [k["weight"] for k in art.manifest["kernels"] if "weight" in k]
    assert all("4-bit table codes" in w["encoding"] for w in ws), ws
    assert sum(w["stored_bytes"] for w in ws) < 0.16 * sum(w["f32_bytes"] for w in ws)
    got = rt.load(path).run(feed)["y"]
    np.testing.assert_array_equal(got, lowbit.interpret(graph, feed)["y"])


def test_conv_codes_with_f32_activations_are_stored_f32_with_a_warning():
    g, calib, feed = _cnn()
    graph = prepare(g, "quantize-weights", calibration=calib).graph
    with pytest.warns(LowbitWarning, match="stored as f32"):
        art = lowbit.compile(graph, target="cpu", pipeline="O0")
    ws = [k["weight"] for k in art.manifest["kernels"] if "weight" in k]
    assert [w["encoding"] for w in ws] == ["f32 (from i4 per-channel)"] * 2 and not art.manifest["table_weights"]


def test_dynamic_quantize_leaves_coded_convs_f32_without_calibration():
    g, _, feed = _cnn()
    with pytest.warns(LowbitWarning, match="needs calibration data"):
        out = run_pipeline(g, "quantize-weights,quantize{dynamic=true}", PassContext())
    assert not any(op.opname == "quantize" for op in out.ops)


def test_table_weight_refuses_a_malformed_entry():
    spec = {"member": "weights/0.u4", "shape": [3], "values": [-7, 0, 7]}
    # indices 1, 2, 1: low nibble first
    np.testing.assert_array_equal(rt.table_weight(spec, {"weights/0.u4": bytes([0x21, 0x01])}), [0, 7, 0])
    with pytest.raises(LowbitError, match="does not match its shape"):
        rt.table_weight(spec, {"weights/0.u4": b"\x00"})
    with pytest.raises(LowbitError, match="indexes past"):
        rt.table_weight(spec, {"weights/0.u4": bytes([0x33, 0x00])})
    with pytest.raises(LowbitError, match="missing or malformed"):
        rt.table_weight(spec, {})


def test_export_writes_conv_codes_as_int8_and_refuses_codebooks(tmp_path):
    import onnxruntime as ort

    from lowbit.compiler import export

    g, calib, feed = _cnn()
    path = tmp_path / "w4.onnx"
    export(g, path, pipeline="quantize-weights", calibration=calib)  # i4 codes: int8 initializers, same values
    got = ort.InferenceSession(str(path)).run(None, feed)[0]
    ref = lowbit.interpret(prepare(g, "quantize-weights", calibration=calib).graph, feed)["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(LowbitError, match="codebook weight .* has no ONNX form"):
        export(g, tmp_path / "apot.onnx", pipeline="shift-add")
    m = Graph("mm")  # a group-wise codebook matmul is not MatMulNBits either
    x = m.add_input("x", TensorType((2, 64), dt.f32))
    w = m.const(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    m.set_outputs([m.create("matmul", [x, w]).result], ["y"])
    with pytest.raises(LowbitError, match="codebook"):
        export(m, tmp_path / "mm.onnx", pipeline="shift-add{group=32}")
    assert not (tmp_path / "apot.onnx").exists() and not (tmp_path / "mm.onnx").exists()


@pytest.mark.parametrize("pipeline", ["quantize", "quantize-weights,quantize", "shift-add,quantize"])
def test_a_dead_channel_beside_a_large_bias_gets_a_larger_weight_scale(pipeline):
    """EfficientNet-Lite0's stem has such a channel (batch norm folded into weights of ~1e-10): its i32 bias
    in units of sx * sw would overflow; the channel's weight scale is raised instead, its weights become 0."""
    r = np.random.default_rng(0)
    g = Graph("dead")
    x = g.add_input("x", TensorType((1, 3, 6, 6), dt.f32))
    w = r.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w[2] *= 1e-10
    b = np.array([0.1, -0.2, 2.8, 0.3], np.float32)
    g.set_outputs([g.create("conv2d", [x, g.const(w), g.const(b)], loc="stem").result], ["y"])
    calib = [{"x": r.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
    out = run_pipeline(g, pipeline, PassContext(calibration=calib))
    wq = next(op for op in out.ops if op.opname == "conv2d").operands[1].producer.operands[0]
    assert not np.asarray(wq.const_value)[2].any() and wq.type.quant.scale[2] > 1e-9
    ref, got = lowbit.interpret(g, calib[0])["y"], lowbit.interpret(out, calib[0])["y"]
    np.testing.assert_allclose(got[0, 2], ref[0, 2], atol=0.03)  # the dead channel is its bias (u8 output steps)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_presets_on_a_cnn():
    """w4a8 with calibration data: every convolution integer, from GPTQ's 4-bit codes; w4 leaves them f32 (no f32
    kernel reads 4-bit convolution codes); w4a8 without data warns and leaves them f32."""
    g, calib, _ = _cnn()
    ctx = PassContext(calibration=calib)
    out = run_pipeline(g, "w4a8", ctx)
    convs = [op for op in out.ops if op.opname == "qconv2d"]
    assert len(convs) == 2 and all(len(np.unique(op.operands[1].const_value)) <= 15 for op in convs)
    assert [(r["op"], r["method"]) for r in weight_report(ctx)] == [("conv2d", "gptq")] * 2
    assert not any(op.opname == "dequantize" and op.operands[0].is_const for op in run_pipeline(g, "w4").ops)
    with pytest.warns(LowbitWarning):
        assert not any(op.opname == "qconv2d" for op in run_pipeline(g, "w4a8", PassContext()).ops)
