"""quantize-weights: group-wise low-bit weights by round to nearest (against a numpy re-implementation) and by
GPTQ (against a transcription of the reference algorithm, and better than round to nearest where the inputs are
correlated); the rewritten graphs in the interpreter; the w4 preset on the zoo encoder."""
import io
import warnings

import ml_dtypes
import numpy as np
import pytest

import lowbit
from lowbit.errors import LowbitError, LowbitWarning
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.passes import PassContext, parse_pipeline, run_pipeline
from lowbit.passes.quantize_weights import weight_report
from lowbit.quant import gptq as qw
from lowbit.quant.scheme import dequantize_array
import model_zoo as zoo


def _matmul_graph(x_shape, w, loc="mm"):
    g = Graph("g")
    x = g.add_input("x", TensorType(x_shape, dt.f32))
    y = g.create("matmul", [x, g.const(w)], loc=loc).result
    g.set_outputs([y], ["y"])
    return g


def _weight_const(g):
    """The quantized constant of the (only) rewritten layer: (integers, type)."""
    deq = [op for op in g.ops if op.opname == "dequantize"]
    assert len(deq) == 1
    c = deq[0].operands[0]
    return c.const_value, c.type


def _numpy_rtn(w, bits, group, symmetric):
    """Round to nearest, written out: per group of rows and per column, f32 scales, f32 division."""
    k, n = w.shape
    scales, zps, q = [], [], np.zeros((k, n), np.int64)
    for g0 in range(0, k, group):
        blk = w[g0:g0 + group].astype(np.float64)
        if symmetric:
            top = 2 ** (bits - 1) - 1
            amax = np.abs(blk).max(0)
            s = np.where(amax > 0, amax / top, 1).astype(np.float32)
            z = np.zeros(n, np.int64)
            lo, hi = -top, top
        else:
            top = 2 ** bits - 1
            mn, mx = np.minimum(blk.min(0), 0), np.maximum(blk.max(0), 0)
            s = np.where(mx > mn, (mx - mn) / top, 1).astype(np.float32)
            z = np.clip(np.rint(-mn / s.astype(np.float64)), 0, top).astype(np.int64)
            lo, hi = 0, top
        q[g0:g0 + group] = np.clip(np.rint(w[g0:g0 + group].astype(np.float32) / s) + z, lo, hi)
        scales.append(s)
        zps.append(z)
    return q, np.stack(scales), np.stack(zps)


@pytest.mark.parametrize("bits,symmetric,k,group,dtype,storage", [
    (4, True, 40, 16, dt.i4, (-7, 7)),      # 16 + 16 + a partial group of 8
    (4, False, 40, 16, dt.u4, None),
    (8, True, 33, 8, dt.i8, (-127, 127)),
    (8, False, 33, 8, dt.u8, None),
    (2, False, 20, 32, dt.u8, (0, 3)),      # one group, larger than K
    (3, True, 24, 8, dt.i8, (-3, 3)),
])
def test_rtn_matches_numpy(bits, symmetric, k, group, dtype, storage):
    rng = np.random.default_rng(bits + k)
    w = rng.normal(0, 1, (k, 6)).astype(np.float32)
    w[:, 2] += 1.5  # a column of mostly positive weights: the zero point moves
    w[: min(group, k), 4] = 0  # a group of zeros: scale 1, zero point 0
    g = lowbit.run_passes(_matmul_graph((3, k), w), f"quantize-weights{{bits={bits},group={group},"
                                                    f"symmetric={'true' if symmetric else 'false'}}}")
    q, t = _weight_const(g)
    want_q, want_s, want_z = _numpy_rtn(w, bits, group, symmetric)
    assert t.dtype == dtype and t.quant.storage == storage and (t.quant.axis, t.quant.group) == (1, group)
    assert q.dtype == dtype.np_dtype and q.shape == (k, 6)
    np.testing.assert_array_equal(q.astype(np.int64), want_q)
    np.testing.assert_array_equal(t.quant.scale_array(), want_s.ravel())
    np.testing.assert_array_equal(t.quant.zero_point_array(), want_z.ravel())
    assert want_s[0, 4] == 1 and want_z[0, 4] == 0
    if symmetric:
        assert not np.any(want_z) and np.abs(want_q).max() == 2 ** (bits - 1) - 1
    # the graph computes matmul(x, (q - zp) * scale)
    x = rng.normal(0, 1, (3, k)).astype(np.float32)
    w_hat = ((want_q - np.repeat(want_z, group, 0)[:k]) * np.repeat(want_s, group, 0)[:k]).astype(np.float32)
    np.testing.assert_allclose(lowbit.interpret(g, {"x": x})["y"], x @ w_hat, rtol=1e-5, atol=1e-5)
    err = np.abs(w_hat - w).max(0)
    assert np.all(err <= 0.5001 * want_s.max(0)), "round to nearest is within half a step"


def _reference_gptq(w, h, bits, group, symmetric, damp, block):
    """The reference fasterquant (IST-DASLab/gptq gptq.py, groupsize, no act-order) in numpy, on lowbit's
    grid; W in the reference's [out, in] orientation."""
    W = w.T.astype(np.float64).copy()
    H = h.copy()
    cols = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[np.arange(cols), np.arange(cols)] += damp * np.mean(np.diag(H))
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: Hinv' = U^T U
    Q = np.zeros_like(W)
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    scales, zeros = [], []
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w_col = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % group == 0:
                grp = W[:, i1 + i:i1 + i + group]
                if symmetric:
                    amax = np.abs(grp).max(1)
                    scale = np.where(amax > 0, amax / hi, 1).astype(np.float32).astype(np.float64)
                    zero = np.zeros(len(amax))
                else:
                    xmin, xmax = np.minimum(grp.min(1), 0), np.maximum(grp.max(1), 0)
                    scale = np.where(xmax > xmin, (xmax - xmin) / hi, 1).astype(np.float32).astype(np.float64)
                    zero = np.clip(np.round(-xmin / scale), 0, hi)
                scales.append(scale)
                zeros.append(zero)
            q = np.clip(np.round(w_col / scale) + zero, lo, hi)
            Q[:, i1 + i] = q
            err1 = (w_col - scale * (q - zero)) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q.T, np.stack(scales), np.stack(zeros)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_equals_the_reference_algorithm(symmetric):
    """A tiny layer (K = 14: groups of 4 inside blocks of 8, a partial last group and block, one dead input)."""
    rng = np.random.default_rng(11)
    k, n = 14, 5
    x = rng.normal(0, 1, (64, k)) @ rng.normal(0, 1, (k, k))
    x[:, 5] = 0  # a dead input
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    h = 2 * x.T @ x / len(x)
    q, t = qw.gptq(w, h, 4, 4, symmetric, damp=0.01, block=8)
    want_q, want_s, want_z = _reference_gptq(w, h, 4, 4, symmetric, 0.01, 8)
    np.testing.assert_array_equal(q.astype(np.int64), want_q.astype(np.int64))
    np.testing.assert_array_equal(t.quant.scale_array(), want_s.astype(np.float32).ravel())
    np.testing.assert_array_equal(t.quant.zero_point_array(), want_z.astype(np.int64).ravel())
    assert not np.any(dequantize_array(q, t)[5]), "a dead input's weights are zero"


def _correlated(k, seed=0):
    """A source of inputs with strongly correlated channels of unequal scale (as transformer activations are):
    ``draw(rng, rows)`` -> [rows, k], the same mixing for every draw."""
    r = np.random.default_rng(seed)
    mix = (r.normal(0, 1, (k, k)) * (r.uniform(0, 1, (k, k)) < 0.1) + np.eye(k)) * r.lognormal(0, 0.7, k)
    return lambda rng, rows: (rng.normal(0, 1, (rows, k)) @ mix).astype(np.float32)


def test_gptq_beats_round_to_nearest_on_held_out_data():
    rng = np.random.default_rng(5)
    k, n = 96, 48
    w = rng.normal(0, 0.1, (k, n)).astype(np.float32)
    g = _matmul_graph((64, k), w)
    draw = _correlated(k)
    calib = [{"x": draw(rng, 64)} for _ in range(8)]
    held_out = {"x": draw(rng, 64)}
    want = lowbit.interpret(g, held_out)["y"]
    mse = {}
    for method in ("rtn", "gptq"):
        ctx = PassContext(calibration=calib)
        q = run_pipeline(g, f"quantize-weights{{group=32,method={method}}}", ctx)
        mse[method] = float(np.mean((lowbit.interpret(q, held_out)["y"] - want) ** 2))
        assert [r["method"] for r in weight_report(ctx)] == [method]
    assert mse["gptq"] <= 0.8 * mse["rtn"], mse


def test_gemm_is_rewritten_exactly():
    """trans_a, trans_b, alpha, beta and C: with weights on the 4-bit grid the result is the float gemm's."""
    rng = np.random.default_rng(2)
    k, n, m = 24, 5, 3
    b = (rng.integers(-7, 8, (n, k)) * 0.25).astype(np.float32)  # [N, K]: trans_b
    b[:, 0] = 1.75  # every (group, column) reaches +-7 steps: scale 0.25 exactly
    b[:, 8] = -1.75
    b[:, 16] = 1.75
    g = Graph("g")
    a = g.add_input("a", TensorType((k, m), dt.f32))
    c = g.const(rng.normal(0, 1, (n,)).astype(np.float32))
    y = g.create("gemm", [a, g.const(b), c], {"trans_a": True, "trans_b": True, "alpha": 0.5, "beta": 3.0},
                 loc="Gemm_0").result
    g.set_outputs([y], ["y"])
    ctx = PassContext()
    q = run_pipeline(g, "quantize-weights{group=8}", ctx)
    assert [op.opname for op in q.ops if op.opname != "const"] == ["dequantize", "transpose", "matmul", "mul", "add"]
    qint, t = _weight_const(q)
    np.testing.assert_array_equal(t.quant.scale_array(), np.float32(0.25))
    np.testing.assert_array_equal(dequantize_array(qint, t), b.T)
    x = {"a": rng.normal(0, 1, (k, m)).astype(np.float32)}
    np.testing.assert_allclose(lowbit.interpret(q, x)["y"], lowbit.interpret(g, x)["y"], rtol=1e-6, atol=1e-6)
    assert ctx.rule_hits["quantize-weights"] == 1 and weight_report(ctx)[0]["rel_error"] is None


def test_interpreter_tracks_float_within_the_quantization_error():
    """A two-layer MLP by GPTQ and RTN: each layer's recorded error and the output's are a few percent at 4 bits."""
    rng = np.random.default_rng(8)
    g = Graph("mlp")
    x = g.add_input("x", TensorType((16, 64), dt.f32))
    h = g.create("matmul", [x, g.const(rng.normal(0, 0.125, (64, 128)).astype(np.float32))], loc="fc1").result
    h = g.create("relu", [h]).result
    y = g.create("gemm", [h, g.const(rng.normal(0, 0.09, (128, 32)).astype(np.float32)),
                          g.const(rng.normal(0, 0.1, (32,)).astype(np.float32))], loc="fc2").result
    g.set_outputs([y], ["y"])
    draw = _correlated(64, seed=1)
    calib = [{"x": draw(rng, 16)} for _ in range(16)]
    test = {"x": draw(rng, 16)}
    want = lowbit.interpret(g, test)["y"]
    out = {}
    for method in ("gptq", "rtn"):
        ctx = PassContext(calibration=calib)
        q = run_pipeline(g, f"quantize-weights{{group=32,method={method}}},dce", ctx)
        assert q.op_counts()["dequantize"] == 2 and "gemm" not in q.op_counts()
        rows = weight_report(ctx)
        assert [r["name"] for r in rows] == ["fc1", "fc2"]
        # a Gaussian group of 32 has max|w| ~ 2.1 sigma: steps of 0.3 sigma, rounding noise 0.09 sigma
        assert all(0 < r["rel_error"] < 0.12 and (r["bits"], r["group"]) == (4, 32) for r in rows), rows
        got = lowbit.interpret(q, test)["y"]
        out[method] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert out["gptq"] < 0.1 and out["rtn"] < 0.15 and out["gptq"] < out["rtn"], out


def test_exclusions_and_what_stays_float():
    rng = np.random.default_rng(3)
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 8), dt.f32))
    wdyn = g.add_input("w", TensorType((8, 8), dt.f32))
    a = g.create("matmul", [x, g.const(rng.normal(0, 1, (8, 8)).astype(np.float32))], loc="keep").result
    b = g.create("matmul", [a, g.const(rng.normal(0, 1, (8, 8)).astype(np.float32))], loc="quant").result
    c = g.create("matmul", [b, wdyn], loc="dynamic").result
    d = g.create("gemm", [c, g.const(rng.normal(0, 1, (8, 8)).astype(np.float32))], loc="fc").result
    g.set_outputs([d], ["y"])
    ctx = PassContext(debug_rewrites=True, stream=io.StringIO())
    q = run_pipeline(g, "quantize-weights{exclude_nodes=[keep],exclude_ops=[gemm]}", ctx)
    deq = [op for op in q.ops if op.opname == "dequantize"]
    assert [op.loc for op in deq] == ["quant"]
    assert [op.loc for op in q.ops if op.opname in ("matmul", "gemm")] == ["keep", "quant", "dynamic", "fc"]
    log = ctx.stream.getvalue()
    assert "matmul 'keep' stays f32: excluded" in log and "matmul 'dynamic' stays f32: the weight is not a constant" in log


def test_gptq_needs_calibration_and_w4_skips_awq_without_it():
    w = np.random.default_rng(4).normal(0, 1, (16, 4)).astype(np.float32)
    g = _matmul_graph((2, 16), w)
    with pytest.raises(LowbitError, match=r"quantize-weights\{method=gptq\} needs calibration data"):
        lowbit.run_passes(g, "quantize-weights{method=gptq}")
    ctx = PassContext()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = run_pipeline(g, "w4", ctx)
    msgs = [str(c.message) for c in caught if issubclass(c.category, LowbitWarning)]
    assert len(msgs) == 1 and "no AWQ scaling" in msgs[0] and "--calib" in msgs[0]
    assert weight_report(ctx)[0]["method"] == "rtn"
    qint, t = _weight_const(q)  # the preset: asymmetric u4 with zero points (AWQ skipped without data)
    np.testing.assert_array_equal(qint.astype(np.int64), _numpy_rtn(w, 4, 128, False)[0])
    assert t.dtype == dt.u4 and qint.dtype == ml_dtypes.uint4 and "mul" not in q.op_counts()


def test_options():
    assert str(parse_pipeline("quantize-weights{bits=4,group=128,method=rtn}")) == "quantize-weights"
    text = "quantize-weights{bits=3,group=64,symmetric=false,method=gptq,damp=0.05,block=32,exclude_nodes=[a,b]}"
    assert str(parse_pipeline(text)) == text
    for bad, needle in [("bits=9", "bits must be 2..8"), ("method=awq", "unknown method 'awq'"),
                        ("group=0", "group and block must be >= 1"), ("damp=-1", "damp must be >= 0")]:
        with pytest.raises(LowbitError, match=needle):
            parse_pipeline(f"quantize-weights{{{bad}}}")


def test_encoder_w4_with_calibration_keeps_cosine():
    """The zoo encoder (seq 16) through the w4 preset with 64 calibration sequences: AWQ scaling and rounding on
    every linear layer (the pooler's gemm included); both outputs keep cosine >= 0.98 to fp32 in the interpreter."""
    model, inputs = zoo.encoder(seq=16)
    g = lowbit.load(model, shapes={k: v.shape for k, v in inputs.items()})
    rng = np.random.default_rng(0)
    calib = []
    for _ in range(64):
        mask = np.ones((1, 16), np.int64)
        mask[0, 16 - rng.integers(0, 6):] = 0
        calib.append({"input_ids": rng.integers(0, 1000, (1, 16)).astype(np.int64), "attention_mask": mask})
    ctx = PassContext(calibration=calib)
    q = run_pipeline(g, "w4", ctx)
    rows = weight_report(ctx)
    assert len(rows) == 13 and {r["method"] for r in rows} == {"rtn"} and "gemm" in {r["op"] for r in rows}
    assert any(r["awq_alpha"] for r in rows)
    assert q.op_counts()["dequantize"] == 13 and all(
        op.operands[0].type.dtype == dt.u4 for op in q.ops if op.opname == "dequantize")
    want, got = lowbit.interpret(g, inputs), lowbit.interpret(q, inputs)
    for k in want:
        a, b = want[k].ravel().astype(np.float64), got[k].ravel().astype(np.float64)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos >= 0.98, (k, cos)


def test_awq_scaling_lowers_the_error_on_outlier_channels():
    """AWQ: input channels with outlying activations get their weight rows scaled up before rounding (and the
    input divided, an f32 mul before the matmul); on held-out inputs the error falls well below plain RTN's, and
    the chosen alpha is recorded (the clip search off, so that the scaling alone is measured)."""
    r = np.random.default_rng(0)
    k, n = 256, 64
    g = Graph("l")
    x = g.add_input("x", TensorType((32, k), dt.f32))
    g.set_outputs([g.create("matmul", [x, g.const(r.normal(0, 0.05, (k, n)).astype(np.float32))]).result], ["y"])
    scale = np.ones(k)
    scale[r.choice(k, 8, replace=False)] = 30.0
    calib = [{"x": (r.normal(0, 1, (32, k)) * scale).astype(np.float32)} for _ in range(8)]
    test = {"x": (r.normal(0, 1, (32, k)) * scale).astype(np.float32)}
    ref = lowbit.interpret(g, test)["y"]
    errs = {}
    for awq in (False, True):
        ctx = PassContext(calibration=calib)
        q = lowbit.run_passes(g, f"quantize-weights{{method=rtn,clip=false,awq={str(awq).lower()}}}", ctx=ctx)
        errs[awq] = np.linalg.norm(lowbit.interpret(q, test)["y"] - ref) / np.linalg.norm(ref)
        assert ("mul" in q.op_counts()) == awq
        assert (ctx.weight_report[0].get("awq_alpha") or 0) > 0 or not awq
    assert errs[True] < 0.8 * errs[False], errs
    with pytest.warns(LowbitWarning, match="no AWQ scaling"):
        assert "mul" not in lowbit.run_passes(g, "quantize-weights{awq=true}").op_counts()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_lowers_the_calibration_error(method, symmetric):
    """clip (on by default with calibration data): each group's range is shrunk where that lowers its output
    error on the calibration inputs, so round-to-nearest's recorded error falls below the plain min/max grid's
    (GPTQ's own error feedback already absorbs much of what clipping gains: there it must not do worse); the
    scales of a clipped grid are smaller, never larger."""
    r = np.random.default_rng(3)
    k, n = 256, 48
    g = Graph("l")
    x = g.add_input("x", TensorType((64, k), dt.f32))
    w = r.standard_t(4, (k, n)).astype(np.float32) * 0.05  # heavy tails: a few weights stretch the range
    g.set_outputs([g.create("matmul", [x, g.const(w)]).result], ["y"])
    calib = [{"x": r.normal(0, 1, (64, k)).astype(np.float32)} for _ in range(4)]
    errs, scales = {}, {}
    for clip in (False, True):
        ctx = PassContext(calibration=calib)
        q = lowbit.run_passes(g, f"quantize-weights{{method={method},group=64,symmetric={str(symmetric).lower()},"
                                 f"clip={str(clip).lower()}}}", ctx=ctx)
        errs[clip] = ctx.weight_report[0]["rel_error"]
        scales[clip] = _weight_const(q)[1].quant.scale_array()
    assert errs[True] < (0.95 if method == "rtn" else 1.0) * errs[False], errs
    if method == "rtn":
        assert np.all(scales[True] <= scales[False])


def test_calibrated_weight_passes_report_progress_per_layer(monkeypatch):
    """A calibrated weight pass says how many layers it has done (``Progress.tick``): in a file one line per tick
    (at most every TICK_EVERY_S seconds), and the step still ends with its 'done'."""
    import io

    from lowbit import progress
    from lowbit.compiler import prepare

    monkeypatch.setattr(progress, "TICK_EVERY_S", 0.0)
    r = np.random.default_rng(1)
    g = Graph("two")
    x = g.add_input("x", TensorType((8, 64), dt.f32))
    h = g.create("matmul", [x, g.const(r.normal(0, 0.1, (64, 64)).astype(np.float32))]).result
    g.set_outputs([g.create("matmul", [h, g.const(r.normal(0, 0.1, (64, 32)).astype(np.float32))]).result], ["y"])
    calib = [{"x": r.normal(0, 1, (8, 64)).astype(np.float32)} for _ in range(2)]
    for pipeline in ("quantize-weights{method=gptq,group=32}", "shift-add{group=32}"):
        out = io.StringIO()
        prepare(g, pipeline, calibration=calib, progress=progress.Progress(True, out))
        name = pipeline.split("{")[0]
        text = out.getvalue()
        assert f"\n  {name}: layer 1/2\n  {name}: layer 2/2 done (" in text, text
