"""Static INT8 quantization: calibrators on known distributions, calibration-data validation, the quantize
pass end to end on a CNN trained on real data (against onnxruntime's quantize_static), and the CLI."""
import importlib
import pathlib
import sys

import numpy as np
import pytest

import lowbit
from lowbit.errors import LowbitError
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.passes import PassContext
from lowbit.quant.calibrate import Observed, calibrate_range, load_samples, qparams
from conftest import run_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _obs(v):
    o = Observed()
    o.add(np.asarray(v, np.float32), 1 << 20, np.random.default_rng(0))
    return o


def test_minmax_is_the_observed_range_and_always_holds_zero():
    assert calibrate_range(_obs([0.5, 2.0, 3.0]), "minmax") == (0.0, 3.0)
    assert calibrate_range(_obs([-4.0, 1.0]), "minmax") == (-4.0, 1.0)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_outlier_is_clipped(method):
    rng = np.random.default_rng(1)
    v = np.append(rng.normal(0, 1, 100_000), [60.0])
    lo, hi = calibrate_range(_obs(v), method)
    assert 3.0 < hi < 6.0 and -6.0 < lo < -3.0, (lo, hi)


def test_mse_keeps_a_uniform_range_and_clips_a_heavy_tail():
    rng = np.random.default_rng(2)
    lo, hi = calibrate_range(_obs(rng.uniform(-1, 1, 100_000)), "mse")
    assert hi > 0.97 and lo < -0.97
    lap = rng.laplace(0, 1, 200_000)
    lo, hi = calibrate_range(_obs(lap), "mse")
    assert hi < 0.8 * np.abs(lap).max()


def test_entropy_ignores_the_relu_spike_at_zero():
    rng = np.random.default_rng(3)
    v = np.maximum(rng.normal(0, 1, 200_000), 0)  # half the mass exactly at 0
    lo, hi = calibrate_range(_obs(v), "entropy")
    assert lo == 0.0 and 1.5 < hi <= v.max()


def test_qparams():
    s, z = qparams(-1.0, 1.0, signed=False)
    assert s == pytest.approx(2 / 255) and z == 128
    s, z = qparams(-0.5, 2.0, signed=True)
    assert s == pytest.approx(2 / 127) and z == 0


def _graph():
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 2, 3, 3), dt.f32))
    w = g.const(np.random.default_rng(4).normal(0, 1, (4, 2, 3, 3)).astype(np.float32))
    y = g.create("relu", [g.create("conv2d", [x, w], {"pads": (1, 1, 1, 1)}).result]).result
    g.set_outputs([y], ["y"])
    return g


def test_calibration_data_is_validated(tmp_path):
    g = _graph()
    good = np.random.default_rng(5).normal(0, 1, (3, 1, 2, 3, 3)).astype(np.float32)
    assert len(load_samples([{"x": good[0]}, {"x": good[1]}], g)) == 2
    np.savez(tmp_path / "a.npz", x=good)
    assert len(load_samples(tmp_path / "a.npz", g)) == 3
    assert len(load_samples(tmp_path, g)) == 3  # a directory of .npz files
    bad = good.copy()
    bad[1, 0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad)
    with pytest.raises(LowbitError, match="NaN or Inf"):
        load_samples(tmp_path / "nan.npz", g)
    with pytest.raises(LowbitError, match="no samples"):
        load_samples([], g)
    with pytest.raises(LowbitError, match="unknown input 'y'"):
        load_samples([{"y": good[0]}], g)
    with pytest.raises(LowbitError, match="shape"):
        load_samples([{"x": good[0, :, :1]}], g)
    with pytest.raises(LowbitError, match="needs calibration data"):
        lowbit.run_passes(g, "quantize")


def test_quantized_graph_tracks_float_and_runs_integer_kernels():
    g = _graph()
    rng = np.random.default_rng(6)
    samples = [{"x": rng.normal(0, 1, (1, 2, 3, 3)).astype(np.float32)} for _ in range(8)]
    q = lowbit.run_passes(g, "quantize{calibrator=minmax},lower-qdq,dce", ctx=PassContext(calibration=samples))
    assert [op.opname for op in q.ops if op.opname.startswith("q")] == ["quantize", "qconv2d"]
    for x in samples[:3]:  # inside the calibrated range: quantization noise only, no clipping
        want, got = lowbit.interpret(g, x)["y"].ravel(), lowbit.interpret(q, x)["y"].ravel()
        assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.999


def test_int8_cnn_on_real_data_matches_or_beats_onnxruntime(tmp_path):
    """The digits CNN: int8 top-1 within 0.5 points of fp32 and no worse than quantize_static (QDQ, per
    channel, u8 activations) given the same 64 calibration images; lowbit's number from the compiled artifact."""
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import importlib.util

    from sklearn.datasets import load_digits

    # benchmarks/zoo (a package), loaded under its own name
    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "benchmarks" / "zoo" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "benchmarks" / "zoo")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["bench_zoo"] = pkg
    spec.loader.exec_module(pkg)
    real = importlib.import_module("bench_zoo.real")

    bm = real.digits()
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    cut = len(x) * 4 // 5
    calib, xte, yte = x[order[:64]], x[order[cut:]], d.target[order[cut:]]
    src = tmp_path / "digits.onnx"
    src.write_bytes(bm.onnx)
    n = len(xte)
    np.savez(tmp_path / "calib.npz", input=calib[:, None])  # [samples, 1, 1, 8, 8]

    fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    acc_fp32 = np.mean(fp32.run(None, {"input": xte})[0].argmax(1) == yte)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)
    quantize_static(str(src), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ortq = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    acc_ort = np.mean(ortq.run(None, {"input": xte})[0].argmax(1) == yte)

    art = tmp_path / "digits-int8.lbit"
    run_cli("compile", src, "-o", art, "--preset", "int8", "--calib", tmp_path / "calib.npz",
            "--shape", "input=1x1x8x8", check_rc=0)
    import lowbit.runtime as rt
    m = rt.load(art)
    assert {lay["op"] for lay in m.manifest["layers"]} == {"qconv2d", "qmatmul"}
    pred = np.array([m.run({"input": xte[i:i + 1]})["output"].argmax() for i in range(n)])
    acc_lowbit = np.mean(pred == yte)
    print(f"digits top-1: fp32 {acc_fp32:.4f}, onnxruntime quantize_static {acc_ort:.4f}, lowbit int8 {acc_lowbit:.4f}")
    assert acc_lowbit >= acc_fp32 - 0.005 and acc_lowbit >= acc_ort, (acc_lowbit, acc_fp32, acc_ort)


def test_cli_refuses_bad_calibration(tmp_path, zoo_dir):
    np.savez(tmp_path / "c.npz", image=np.zeros((2, 1, 3, 32, 32), np.float32))
    p = run_cli("compile", zoo_dir / "legacy_cnn.onnx", "-o", tmp_path / "x.lbit", "--preset", "int8",
                "--calib", tmp_path / "c.npz")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "lowbit: error:" in p.stderr, p.stderr
    assert not (tmp_path / "x.lbit").exists()


def test_report_per_layer_error_in_manifest_and_inspect(tmp_path):
    import json

    import model_zoo as zoo

    model, _ = zoo.small_cnn()
    src = tmp_path / "small.onnx"
    src.write_bytes(model)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(7).normal(0, 1, (4, 1, 3, 32, 32)).astype(np.float32))
    art = tmp_path / "small.lbit"
    p = run_cli("compile", src, "-o", art, "--preset", "int8", "--calib", tmp_path / "calib.npz", "--report",
                check_rc=0)
    assert "SQNR dB" in p.stdout and "Conv_4" in p.stdout
    m = json.loads(run_cli("inspect", art, "--json", check_rc=0).stdout)
    rows = m["quant_report"]
    assert [r["op"] for r in rows] == ["qconv2d", "qconv2d", "qconv2d", "qmatmul"]
    assert all(r["sqnr_db"] > 25 and r["cosine"] > 0.99 for r in rows), rows
    assert "quantization report" in run_cli("inspect", art, check_rc=0).stdout
    p = run_cli("compile", src, "-o", tmp_path / "x.lbit", "--preset", "int8", "--report")
    assert p.returncode == 1 and "give --calib" in p.stderr and p.stderr.count("\n") == 1


def test_export_onnx_qdq_runs_in_onnxruntime_as_lowbit_computes_it(zoo_dir, tmp_path):
    """`lowbit export --format onnx-qdq`: onnxruntime loads the QDQ model, fuses it back into its integer kernels
    and computes what lowbit's interpreter computes for the quantized graph."""
    import onnxruntime as ort

    import model_zoo as zoo

    name = "mobilenet_v3_like"  # convs, depthwise, hard-swish, squeeze-excitation, a quantized classifier
    x = dict(np.load(zoo_dir / f"{name}.npz"))
    rng = np.random.default_rng(3)
    calib = {k: rng.normal(0, 1, (4,) + v.shape).astype(v.dtype) for k, v in x.items()}
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "q.onnx"
    run_cli("export", zoo_dir / f"{name}.onnx", "--format", "onnx-qdq", "--calib", tmp_path / "calib.npz", "-o", out,
            check_rc=0)
    g = lowbit.load(zoo_dir / f"{name}.onnx")
    q = lowbit.run_passes(g, "int8", PassContext(calibration=load_samples(tmp_path / "calib.npz", g)))
    assert sum(op.opname == "qconv2d" for op in q.ops) > 5
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, lowbit.interpret(q, x)["logits"], rtol=1e-4, atol=1e-4)

    # a transformer, dynamically quantized per tensor: DynamicQuantizeLinear + MatMulInteger
    enc = ["--shape", "input_ids=1x128", "--shape", "attention_mask=1x128"]
    run_cli("export", zoo_dir / "encoder.onnx", "--format", "onnx-qdq", "--pipeline",
            "fuse,quantize{dynamic=true,per_row=false}", *enc, "-o", tmp_path / "d.onnx", check_rc=0)
    xe = dict(np.load(zoo_dir / "encoder.npz"))
    want = lowbit.interpret(lowbit.load(zoo_dir / "encoder.onnx", shapes=zoo.SHAPES["encoder"]), xe)
    got = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"]).run(None, xe)[0]
    w = want["last_hidden_state"].ravel()
    assert np.dot(w, got.ravel()) / (np.linalg.norm(w) * np.linalg.norm(got)) > 0.999

    # what has no exact ONNX form is refused, and nothing is written
    p = run_cli("export", zoo_dir / "encoder.onnx", "--format", "onnx-qdq", "--preset", "int8-dynamic", *enc,
                "-o", tmp_path / "r.onnx")
    assert p.returncode == 1 and "qmatmul_dynamic" in p.stderr and "per-row" in p.stderr
    assert not (tmp_path / "r.onnx").exists()
    p = run_cli("export", tmp_path / "x.lbit", "--format", "onnx-qdq", "-o", tmp_path / "r.onnx")
    assert p.returncode == 1 and "artifact" in p.stderr and p.stderr.count("\n") == 1
