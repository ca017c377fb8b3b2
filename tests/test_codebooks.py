"""Codebook weights (``QuantParams.codebook``: real = codebook[code] * scale): the type's text, dequantize, the
nearest-value encoder and the scale search (``lowbit.quant.codebooks``), the shift-add pass (accuracy, the int4
fallback, GPTQ), qmatmul_dynamic by an integer codebook against a float64 transcription, NF4 refused there, and
the w4a8-apot preset on the zoo encoder."""
import warnings

import numpy as np
import pytest

import lowbit
from lowbit.errors import LowbitError, LowbitWarning
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.ir.types import QuantParams
from lowbit.passes import PRESETS, PassContext, parse_pipeline, run_pipeline
from lowbit.passes.quantize_weights import weight_report
from lowbit.quant import codebooks as cbk
from lowbit.quant import gptq as qw
from lowbit.quant import scheme
import model_zoo as zoo

APOT, POW2, NF4 = (np.asarray(cbk.codebook(n), np.float64) for n in ("apot", "pow2", "nf4"))


def _codebook_type(shape, scales, values, group=None, axis=1, dtype=dt.u4):
    q = QuantParams(tuple(np.asarray(scales, np.float32).ravel().tolist()), (0,) * np.size(scales), axis, group,
                    codebook=tuple(values))
    return TensorType(shape, dtype, q)


def _matmul_graph(x_shape, w, loc="fc"):
    g = Graph("g")
    x = g.add_input("x", TensorType(x_shape, dt.f32))
    g.set_outputs([g.create("matmul", [x, g.const(w)], loc=loc).result], ["y"])
    return g


def _weight_const(g):
    (c,) = [op.operands[1] for op in g.ops if op.opname == "qmatmul_dynamic"] or \
        [op.operands[0] for op in g.ops if op.opname == "dequantize"]
    return c.const_value, c.type


# -- the type ------------------------------------------------------------------------------------------------------
def test_codebook_types_print_and_parse_back():
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 4), dt.f32))
    rng = np.random.default_rng(0)
    grouped = _codebook_type((4, 3), rng.uniform(0.01, 0.1, (2, 3)), cbk.codebook("apot"), group=2)
    nf4 = _codebook_type((4, 3), [0.5], cbk.codebook("nf4"), axis=None)
    wide = TensorType((4, 3), dt.u8, QuantParams((0.25, 0.5, 2.0), (0, 0, 0), 1, storage=(0, 39),
                                                 codebook=tuple(range(-20, 20))))  # per column, 40 values
    outs = []
    for t in (grouped, nf4, wide):
        codes = rng.integers(0, 16, (4, 3)).astype(t.dtype.np_dtype)
        outs.append(g.create("dequantize", [g.const(codes, type=t)]).result)
    g.set_outputs([g.create("matmul", [x, outs[0]]).result] + outs[1:], ["y", "n", "w"])
    text = str(g)
    assert "q<axis=1, group=2, codebook=[-96, -64, -48, -32, -20, -12, -6, 0, 0, 6, 12, 20, 32, 48, 64, 96], [" in text
    assert "q<codebook=[-1, -0.6961928, -0.52507305, " in text and ", 1], 0.5:0>" in text
    assert "q<range=0:39, axis=1, codebook=[-20, -19, " in text
    back = lowbit.parse(text)
    assert str(back) == text
    assert [o.producer.operands[0].type for o in back.outputs[1:]] == [nf4, wide]
    # existing types print as before
    plain = TensorType((4, 3), dt.i4, QuantParams((0.5,) * 6, (0,) * 6, 1, 2, storage=(-7, 7)))
    assert str(plain) == "tensor<4x3xi4, q<range=-7:7, axis=1, group=2, [" + ", ".join(["0.5:0"] * 6) + "]>>"


@pytest.mark.parametrize("make,needle", [
    (lambda: QuantParams((0.5,), (3,), codebook=cbk.codebook("apot")), "zero points must be 0"),
    (lambda: QuantParams((0.5,), (0,), codebook=(1.0,)), "at least two finite values"),
    (lambda: _codebook_type((2, 2), [1.0, 1.0], cbk.codebook("apot"), dtype=dt.i4), "must be unsigned"),
    (lambda: _codebook_type((2, 2), [1.0, 1.0], cbk.codebook("apot")[:8]), "at least 16 values"),
])
def test_codebook_types_are_checked(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_dequantize_applies_the_codebook():
    """codebook[code] * scale in f32 per group of K and column (a partial last group), as numpy writes it; the
    interpreter's dequantize is the same; quantize_array maps the values back to their codes."""
    rng = np.random.default_rng(1)
    k, n, group = 40, 5, 16
    for values in (APOT, NF4):
        codes = rng.integers(0, 16, (k, n))
        scales = rng.uniform(0.001, 0.1, (3, n)).astype(np.float32)
        t = _codebook_type((k, n), scales, values, group=group)
        want = (values.astype(np.float32)[codes] * np.repeat(scales, group, 0)[:k]).astype(np.float32)
        got = scheme.dequantize_array(codes.astype(np.uint8), t)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        g = Graph("g")
        g.set_outputs([g.create("dequantize", [g.const(codes.astype(t.dtype.np_dtype), type=t)]).result], ["y"])
        np.testing.assert_array_equal(lowbit.interpret(g, {})["y"], want)
        back = scheme.quantize_array(want, t).astype(np.int64)
        np.testing.assert_array_equal(values[back], values[codes])  # the same values (code 8 -> 7: both zero)
    with pytest.raises(ValueError, match="do not all index the codebook"):
        scheme.codebook_levels(np.array([0, 16]), QuantParams((1.0,), (0,), codebook=cbk.codebook("apot")))


# -- encoder and scales --------------------------------------------------------------------------------------------
def _brute_force_codes(v, values):
    """argmin |v - value| over the table; ties to the smaller |value|, then the lower code."""
    d = np.abs(v[:, None] - values[None, :])
    best = d == d.min(1, keepdims=True)
    key = np.where(best, np.abs(values)[None, :] * 1000 + np.arange(len(values))[None, :], np.inf)
    return np.argmin(key, 1)


@pytest.mark.parametrize("name", ["apot", "pow2", "nf4"])
def test_encoder_is_the_nearest_value(name):
    values = np.asarray(cbk.codebook(name), np.float64)
    rng = np.random.default_rng(2)
    u = np.unique(values)
    mids = (u[1:] + u[:-1]) / 2
    v = np.concatenate([rng.uniform(-1.3, 1.3, 4000) * u.max(), mids, u, [u.max() * 5, u.min() * 5, 0.0]])
    v = v.astype(np.float32).astype(np.float64)
    got = cbk.encode(v, values)
    np.testing.assert_array_equal(got, _brute_force_codes(v, values))
    if name != "nf4":  # the integer tables are mirror images, zero written as code 7, code 8 (a second zero) never
        assert np.array_equal(values[::-1], -values) and 8 not in got and 7 in got


def test_tables():
    assert cbk.CODEBOOKS["pow2"] == (-64, -32, -16, -8, -4, -2, -1, 0, 0, 1, 2, 4, 8, 16, 32, 64)
    assert cbk.CODEBOOKS["apot"] == (-96, -64, -48, -32, -20, -12, -6, 0, 0, 6, 12, 20, 32, 48, 64, 96)
    for v in cbk.CODEBOOKS["apot"]:  # at most two powers of two
        assert bin(abs(v)).count("1") <= 2
    assert len(NF4) == 16 and NF4[0] == -1 and NF4[-1] == 1 and NF4[7] == 0 and np.all(np.diff(NF4) > 0)
    assert QuantParams((1.0,), (0,), codebook=cbk.codebook("apot")).integer_codebook()
    assert not QuantParams((1.0,), (0,), codebook=cbk.codebook("nf4")).integer_codebook()


def _group_sse(w, t, group):
    d = (scheme.dequantize_array(scheme.quantize_array(w, t), t).astype(np.float64) - w) ** 2
    return np.add.reduceat(d, np.arange(0, w.shape[0], group), axis=0)


@pytest.mark.parametrize("name", ["apot", "pow2", "nf4"])
def test_scale_search_beats_max_scaling(name):
    rng = np.random.default_rng(3)
    k, n, group = 192, 32, 64
    w = rng.standard_t(4, (k, n)).astype(np.float32) * 0.05
    w[:group, 3] = 0  # a group of zeros: scale 1
    values = cbk.codebook(name)
    errs = {}
    for search in (False, True):
        q, t = cbk.rtn(w, values, group, search)
        assert t.dtype == dt.u4 and t.quant.codebook == values and not any(t.quant.zero_point)
        errs[search] = _group_sse(w, t, group)
        if not search:  # max|w| on the table's end
            amax = np.abs(w.reshape(3, group, n)).max(1)
            want = np.where(amax > 0, amax / np.abs(values).max(), 1).astype(np.float32)
            np.testing.assert_array_equal(t.quant.scale_array().reshape(3, n), want)
    assert np.all(errs[True] <= errs[False]), "never worse in any group"
    assert errs[True].sum() < 0.9 * errs[False].sum(), (errs[True].sum(), errs[False].sum())


# -- the pass ------------------------------------------------------------------------------------------------------
def test_shift_add_tracks_float():
    """A Gaussian linear layer (K = 256, groups of 128): the apot output's relative error is about 0.105, below
    the 0.12 bound and below int4's (round to nearest, -7..7 steps of max|w| / 7: about 0.118)."""
    rng = np.random.default_rng(4)
    k, n = 256, 64
    w = rng.normal(0, 0.1, (k, n)).astype(np.float32)
    g = _matmul_graph((16, k), w)
    x = {"x": rng.normal(0, 1, (16, k)).astype(np.float32)}
    want = lowbit.interpret(g, x)["y"]
    err = {}
    for pipe in ("shift-add", "quantize-weights", "shift-add,quantize{dynamic=true}"):
        ctx = PassContext()
        q = run_pipeline(g, pipe, ctx)
        err[pipe] = float(np.linalg.norm(lowbit.interpret(q, x)["y"] - want) / np.linalg.norm(want))
    assert err["shift-add"] < 0.12 and err["shift-add"] < err["quantize-weights"], err
    assert err["shift-add,quantize{dynamic=true}"] < 0.12, err
    (row,) = weight_report(ctx)
    assert row["scheme"] == "apot" and not row["fallback"] and row["rel_error"] is None
    assert row["errors"]["apot"] < row["errors"]["int4"] and row["weight_error"] == row["errors"]["apot"]
    assert ctx.rule_hits["shift-add"] == 1
    codes, t = _weight_const(q)
    assert t.dtype == dt.u4 and t.quant.codebook == cbk.codebook("apot") and (t.quant.axis, t.quant.group) == (1, 128)


def test_fallback_keeps_int4_where_the_codebook_is_worse():
    """Uniform weights suit int4's even steps and not pow2's: with calibration data both are measured on the
    layer's output and the layer stays int4 (quantize-weights' i4); fallback=false keeps pow2."""
    rng = np.random.default_rng(5)
    k, n = 64, 16
    g = _matmul_graph((8, k), rng.uniform(-1, 1, (k, n)).astype(np.float32))
    calib = [{"x": rng.normal(0, 1, (8, k)).astype(np.float32)} for _ in range(4)]
    ctx = PassContext(calibration=calib)
    q = run_pipeline(g, "shift-add{scheme=pow2,group=32}", ctx)
    (row,) = weight_report(ctx)
    assert row["fallback"] and row["scheme"] == "int4" and row["errors"]["pow2"] > row["errors"]["int4"], row
    assert row["rel_error"] == row["errors"]["int4"] and row["method"] == "rtn"
    _, t = _weight_const(q)
    assert t.dtype == dt.i4 and t.quant.codebook is None and t.quant.storage == (-7, 7)
    ctx = PassContext(calibration=calib)
    q = run_pipeline(g, "shift-add{scheme=pow2,group=32,fallback=false}", ctx)
    (row,) = weight_report(ctx)
    assert not row["fallback"] and row["scheme"] == "pow2" and row["errors"] is None
    assert _weight_const(q)[1].quant.codebook == cbk.codebook("pow2")


def test_codebook_gptq_is_the_gptq_loop():
    """With the int4 grid as a codebook (-7..7, 7 again as code 15) and no scale search, codebook GPTQ is
    ``quant.gptq``'s symmetric 4-bit GPTQ: the same codes (shifted by 7) and scales (groups of 4, blocks of 8,
    a dead input)."""
    rng = np.random.default_rng(11)
    k, n = 14, 5
    x = rng.normal(0, 1, (64, k)) @ rng.normal(0, 1, (k, k))
    x[:, 5] = 0
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    h = 2 * x.T @ x / len(x)
    want_q, want_t = qw.gptq(w, h, 4, 4, True, damp=0.01, block=8)
    q, t = cbk.gptq(w, h, tuple(range(-7, 8)) + (7,), 4, search=False, damp=0.01, block=8)
    np.testing.assert_array_equal(q.astype(np.int64), want_q.astype(np.int64) + 7)
    np.testing.assert_array_equal(t.quant.scale_array(), want_t.quant.scale_array())


def test_gptq_with_a_codebook_beats_round_to_nearest():
    rng = np.random.default_rng(6)
    k, n = 64, 32
    mix = (rng.normal(0, 1, (k, k)) * (rng.uniform(0, 1, (k, k)) < 0.1) + np.eye(k)) * rng.lognormal(0, 0.7, k)
    draw = lambda rows: (rng.normal(0, 1, (rows, k)) @ mix).astype(np.float32)  # noqa: E731
    g = _matmul_graph((64, k), rng.normal(0, 0.1, (k, n)).astype(np.float32))
    calib = [{"x": draw(64)} for _ in range(4)]
    held_out = {"x": draw(64)}
    want = lowbit.interpret(g, held_out)["y"]
    mse = {}
    for method in ("rtn", "gptq"):
        ctx = PassContext(calibration=calib)
        q = run_pipeline(g, f"shift-add{{group=32,method={method},fallback=false}}", ctx)
        mse[method] = float(np.mean((lowbit.interpret(q, held_out)["y"] - want) ** 2))
        assert weight_report(ctx)[0]["method"] == method
    assert mse["gptq"] <= 0.8 * mse["rtn"], mse


def test_options_and_preset():
    assert str(parse_pipeline("shift-add{scheme=apot,group=128,method=rtn,search=true}")) == "shift-add"
    text = "shift-add{scheme=nf4,group=64,method=gptq,search=false,fallback=false,damp=0.05,exclude_nodes=[a]}"
    assert str(parse_pipeline(text)) == text
    assert "shift-add{method=auto},quantize{calibrator=mse,dynamic=true},lower-qdq" in str(parse_pipeline("w4a8-apot"))
    assert "shift-add{scheme=apot,group=128,method=auto}" in PRESETS["w4a8-apot"]
    for bad, needle in [("scheme=apot3", "unknown scheme 'apot3'"), ("method=awq", "unknown method"),
                        ("group=0", "group and block must be >= 1")]:
        with pytest.raises(LowbitError, match=needle):
            parse_pipeline(f"shift-add{{{bad}}}")
    g = _matmul_graph((2, 16), np.ones((16, 4), np.float32))
    with pytest.raises(LowbitError, match=r"shift-add\{method=gptq\} needs calibration data"):
        lowbit.run_passes(g, "shift-add{method=gptq}")
    with pytest.warns(LowbitWarning, match="method=rtn"):
        lowbit.run_passes(g, "shift-add{method=auto}")


# -- qmatmul_dynamic -----------------------------------------------------------------------------------------------
def _dynamic_graph(codes, t, lead, bias, per_row):
    g = Graph("g")
    x = g.add_input("x", TensorType(lead + (codes.shape[0],), dt.f32))
    ops = [x, g.const(codes.astype(t.dtype.np_dtype), type=t)] + ([g.const(bias)] if bias is not None else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    return g


@pytest.mark.parametrize("per_row", [True, False])
def test_qmatmul_dynamic_by_an_apot_codebook_is_exact(per_row):
    """Group sums acc_g = sum (xq - zx) * codebook[code] transcribed in float64 (exact integers): the interpreter
    equals their in-order fused multiply-adds bit for bit, and the float64 sum within f32 rounding."""
    rng = np.random.default_rng(7)
    k, n, group, lead = 200, 24, 64, (2, 3)  # a partial last group of 8
    ng = -(-k // group)
    codes = rng.integers(0, 16, (k, n))
    sw = rng.uniform(0.001, 0.01, (ng, n)).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    t = _codebook_type((k, n), sw, cbk.codebook("apot"), group=group)
    g = _dynamic_graph(codes, t, lead, bias, per_row)
    x = (rng.normal(0.3, 2, lead + (k,)) * rng.uniform(0.1, 10, lead + (1,))).astype(np.float32)
    got = lowbit.interpret(g, {"x": x})["y"]
    # the input's u8 quantization (onnxruntime's DynamicQuantizeLinear, per row or per tensor), written out
    axis = (-1,) if per_row else tuple(range(x.ndim))
    lo = np.minimum(x.min(axis, keepdims=True), 0).astype(np.float32)
    hi = np.maximum(x.max(axis, keepdims=True), 0).astype(np.float32)
    sx = ((hi - lo) / np.float32(255)).astype(np.float32)
    zx = np.rint(-lo / sx)
    xq = np.clip(np.rint(x / sx) + zx, 0, 255).astype(np.float64) - zx
    wv = APOT[codes]
    accs = np.stack([xq[..., i:i + group] @ wv[i:i + group] for i in range(0, k, group)])
    assert np.array_equal(accs, np.rint(accs)) and np.abs(accs).max() < 2 ** 24
    np.testing.assert_array_equal(got, scheme.grouped_dynamic_rescale(accs, sx, sw, bias))
    y64 = bias.astype(np.float64) + sum(accs[i] * (sx.astype(np.float64) * sw[i]).astype(np.float32)
                                        for i in range(ng))
    np.testing.assert_allclose(got, y64, rtol=1e-5, atol=1e-5 * np.abs(y64).max())
    # and it is the dequantized matmul up to the input's quantization
    deq = x @ scheme.dequantize_array(codes.astype(np.uint8), t) + bias
    assert np.linalg.norm(got - deq) / np.linalg.norm(deq) < 0.02


def test_qmatmul_dynamic_refuses_nf4():
    t = _codebook_type((8, 2), [0.1, 0.1], cbk.codebook("nf4"), group=8)
    with pytest.raises(ValueError, match=r"integer codebook values in -127..127 .* holds -0.696193 .*nf4"):
        _dynamic_graph(np.zeros((8, 2), np.int64), t, (1,), None, True)
    text = str(_dynamic_graph(np.zeros((8, 2), np.int64), _codebook_type((8, 2), [0.1, 0.1], cbk.codebook("apot"),
                                                                        group=8), (1,), None, True))
    nf4 = "codebook=[" + ", ".join(str(np.float32(v)).removesuffix(".0") for v in NF4) + "]"
    with pytest.raises(LowbitError, match="integer codebook values"):
        lowbit.parse(text.replace("codebook=[-96, -64, -48, -32, -20, -12, -6, 0, 0, 6, 12, 20, 32, 48, 64, 96]", nf4))


# -- the zoo encoder -----------------------------------------------------------------------------------------------
def test_encoder_w4a8_apot_keeps_cosine():
    """The zoo encoder (seq 16) through the w4a8-apot preset with 16 calibration sequences (GPTQ with the apot
    codebook, int4 where that is more accurate): both outputs keep cosine >= 0.98 to fp32 in the interpreter."""
    model, inputs = zoo.encoder(seq=16)
    g = lowbit.load(model, shapes={k: v.shape for k, v in inputs.items()})
    rng = np.random.default_rng(0)
    calib = []
    for _ in range(16):
        mask = np.ones((1, 16), np.int64)
        mask[0, 16 - rng.integers(0, 6):] = 0
        calib.append({"input_ids": rng.integers(0, 1000, (1, 16)).astype(np.int64), "attention_mask": mask})
    ctx = PassContext(calibration=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowbitWarning)
        q = run_pipeline(g, "w4a8-apot", ctx)
    rows = weight_report(ctx)
    assert len(rows) == 13 and {r["method"] for r in rows} == {"gptq"}
    assert sum(r["scheme"] == "apot" for r in rows) >= 10, [r["scheme"] for r in rows]
    assert q.op_counts()["qmatmul_dynamic"] == 13 and "dequantize" not in q.op_counts()
    want, got = lowbit.interpret(g, inputs), lowbit.interpret(q, inputs)
    for k in want:
        a, b = want[k].ravel().astype(np.float64), got[k].ravel().astype(np.float64)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos >= 0.98, (k, cos)
