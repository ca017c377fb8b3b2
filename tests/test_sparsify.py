"""sparsify: patterns, methods, the encodings in the type, bias correction, the int8 weights and the sparse kernel
end to end (small graphs; about 15 s)."""
import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.ir import dtypes as dt
from lowbit.ir import parse
from lowbit.ir.graph import Graph
from lowbit.ir.interp import interpret
from lowbit.ir.types import Encoding, TensorType
from lowbit.passes import PassContext, parse_pipeline, run_pipeline
from lowbit.quant import prune
from lowbit.runtime.host import cpu_flags


def _mlp(k=64, n=48, m=2, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    g = Graph("mlp")
    x = g.add_input("x", TensorType((m, k), dt.f32))
    y = g.create("matmul", [x, g.const(rng.standard_normal((k, n)).astype(np.float32))], loc="fc1").result
    if bias:
        y = g.create("add", [y, g.const(rng.standard_normal(n).astype(np.float32))], loc="b1").result
    y = g.create("relu", [y]).result
    y = g.create("matmul", [y, g.const(rng.standard_normal((n, 16)).astype(np.float32))], loc="fc2").result
    g.set_outputs([y], ["y"])
    return g


def _inputs(k=64, m=2, count=24, seed=1):
    """Correlated inputs (a random mixing of a few sources), as real activations are."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((8, k))
    return [{"x": (rng.standard_normal((m, 8)) @ mix + 0.1 * rng.standard_normal((m, k))).astype(np.float32)}
            for _ in range(count)]


def _weights(g):
    return {op.loc: np.asarray(op.operands[1].const_value) for op in g.ops if op.opname == "matmul"}


def _run(g, pipeline, calib=None):
    ctx = PassContext(calibration=calib)
    return run_pipeline(g, parse_pipeline(pipeline), ctx), ctx


def test_encoding_prints_parses_and_is_checked_by_the_verifier():
    text = """graph @g(%x: tensor<1x4xf32>) {
  %0 = const dense<[0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0]> : tensor<4x2xf32, sparse<0.5>>
  %1 = matmul(%x, %0) : tensor<1x2xf32>
  return %1 as "y"
}"""
    g = parse(text)
    assert str(g.ops[0].result.type) == "tensor<4x2xf32, sparse<0.5>>"
    assert str(parse(str(g))) == str(g)
    with pytest.raises(Exception, match=r"does not honour its encoding sparse<0.75>"):
        parse(text.replace("sparse<0.5>", "sparse<0.75>")).verify()
    with pytest.raises(Exception, match=r"a run of 4 has 3 nonzeros"):
        parse(text.replace("sparse<0.5>", "nm<2:4>").replace("[0.0, 1.0, 0.0, 0.0,", "[1.0, 1.0, 0.0, 1.0,")).verify()
    assert Encoding("nm", (2, 4)).ratio == 0.5 and Encoding.sparse(0.8749).params == (8749,)


@pytest.mark.parametrize("pattern,ratio", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5),
                                           ("1:4", 0.75), ("block:4x1", 0.5)])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_method_meets_the_pattern_and_types_it(pattern, ratio, method):
    g = _mlp()
    out, ctx = _run(g, f"sparsify{{pattern={pattern},ratio={ratio},method={method},min_weights=0}}", _inputs())
    out.verify()  # the constants honour the encodings their types carry
    for op in [op for op in out.ops if op.opname == "matmul"]:
        w = op.operands[1]
        zeros = np.count_nonzero(np.asarray(w.const_value) == 0) / w.type.size
        assert abs(zeros - ratio) < 0.02, (op.loc, zeros)
        assert w.type.encoding is not None and w.type.encoding.check(w.const_value) is None
        assert w.type.encoding.kind == {"unstructured": "sparse", "block": "block"}.get(pattern.split(":")[0], "nm")
    rows = ctx.sparsity_report
    assert [r["name"] for r in rows] == ["fc1", "fc2"] and all(r["method"] == method for r in rows)
    assert all(r["rel_error"] > 0 for r in rows)


def test_sparsegpt_beats_wanda_beats_magnitude_on_correlated_inputs():
    data = _inputs(count=28)  # one distribution: the calibration samples and 4 held out
    calib, test = data[:24], data[24:]
    g = _mlp()
    ref = [interpret(g, s)["y"] for s in test]
    errs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        out, ctx = _run(g, f"sparsify{{method={method},min_weights=0,bias_correction=false}}", calib)
        errs[method] = np.mean([np.linalg.norm(interpret(out, s)["y"] - r) / np.linalg.norm(r)
                                for s, r in zip(test, ref)])
        errs[method + " layer"] = ctx.sparsity_report[0]["rel_error"]
    assert errs["sparsegpt layer"] < errs["wanda layer"] <= errs["magnitude layer"] * 1.05, errs
    assert errs["sparsegpt"] < errs["magnitude"], errs


def test_magnitude_keeps_the_largest_and_wanda_weighs_by_input_norm():
    w = np.array([[4.0, -1.0], [0.5, 2.0], [-3.0, 0.25], [1.0, -5.0]], np.float32)
    got = prune.magnitude(w, prune.Pattern.parse("unstructured", 0.5))
    assert np.array_equal(got, [[4.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -5.0]])
    xtx = np.diag([1.0, 100.0, 1.0, 1.0])  # input 1 is 10x larger: its weights matter more
    got = prune.wanda(w, xtx, 1, prune.Pattern.parse("unstructured", 0.5))
    assert np.array_equal(got != 0, [[True, False], [True, True], [False, False], [False, True]])


def test_bias_correction_keeps_the_mean_output():
    g = _mlp(bias=True)
    calib = _inputs()
    out, ctx = _run(g, "sparsify{method=magnitude,min_weights=0,ratio=0.7}", None)  # no data: no correction
    assert not any(r["bias_corrected"] for r in ctx.sparsity_report)
    ctx = PassContext(calibration=calib)
    out = run_pipeline(g, parse_pipeline("sparsify{method=magnitude,min_weights=0,ratio=0.7,exclude_nodes=[fc2]}"),
                       ctx)
    assert ctx.sparsity_report[0]["bias_corrected"]

    def fc1(graph, s):  # the first layer's output after its bias, before the relu
        vals = interpret(graph, s, keep_all=True)
        i = next(i for i, op in enumerate(graph.ops) if op.opname == "add")
        return vals[f"%{i}.0"]

    pre = np.concatenate([fc1(g, s) for s in calib])
    post = np.concatenate([fc1(out, s) for s in calib])
    assert np.abs(post.mean(0) - pre.mean(0)).max() < 1e-4 * np.abs(pre).max()
    uncorrected = run_pipeline(g, parse_pipeline("sparsify{method=magnitude,min_weights=0,ratio=0.7,"
                                                 "exclude_nodes=[fc2],bias_correction=false}"), PassContext(calibration=calib))
    drift = np.concatenate([fc1(uncorrected, s) for s in calib])
    assert np.abs(drift.mean(0) - pre.mean(0)).max() > 1e-2 * np.abs(pre).max()  # the correction did something


def test_small_layers_stay_dense_and_bad_options_are_refused():
    out, ctx = _run(_mlp(), "sparsify{method=magnitude}")  # 64x48 and 48x16: fewer than 4096 weights each
    assert not getattr(ctx, "sparsity_report", None) and all(op.operands[1].type.encoding is None
                                           for op in out.ops if op.opname == "matmul")
    with pytest.raises(LowbitError, match=r"sparsify\{method=sparsegpt\} needs calibration data"):
        _run(_mlp(), "sparsify{method=sparsegpt,min_weights=0}")
    for bad, why in [("pattern=3:2", "0 < N < M"), ("pattern=dense", "unknown sparsity pattern"),
                     ("ratio=1.0", r"ratio must be in \[0, 1\)"), ("method=obs", "unknown method")]:
        with pytest.raises(LowbitError, match=why):
            parse_pipeline(f"sparsify{{{bad}}}")
    with pytest.raises(LowbitError, match="M = 3 must divide SparseGPT's block 128"):
        _run(_mlp(), "sparsify{method=sparsegpt,pattern=1:3,min_weights=0}", _inputs())


def test_int8_weights_keep_the_zeros_and_the_encoding():
    out, _ = _run(_mlp(), "sparsify{method=sparsegpt,pattern=2:4,min_weights=0},quantize{dynamic=true},dce",
                  _inputs())
    qs = [op for op in out.ops if op.opname == "qmatmul_dynamic"]
    assert len(qs) == 2
    for op in qs:
        w = op.operands[1]
        assert w.type.dtype == dt.i8 and str(w.type.encoding) == "nm<2:4>"
        assert w.type.encoding.check(w.const_value) is None


@pytest.mark.skipif(not cpu_flags() >= {"avx512_vnni", "avx512_vbmi2"},
                    reason="vnni-sparse runs on vpdpbusd (AVX-512 VNNI) and vpexpandb (VBMI2), which this CPU lacks; "
                           "the pass and its encodings are tested above on any CPU")
def test_sparse_int8_model_runs_the_sparse_kernel_and_matches_the_interpreter(capsys):
    import lowbit
    from lowbit.runtime import load

    rng = np.random.default_rng(3)
    g = _mlp(k=256, n=256, m=1, bias=True)
    calib = [{"x": rng.standard_normal((1, 256)).astype(np.float32)} for _ in range(16)]
    pipeline = "sparsify{method=wanda,ratio=0.7},quantize{dynamic=true},canonicalize,dce"
    import dataclasses

    from lowbit.codegen import Target

    host = Target.parse("cpu")  # a last-level cache smaller than the model: its weights are read from memory
    small_llc = dataclasses.replace(host, caches={**host.caches, "l3": 64 << 10})
    art = lowbit.compile(g, target=small_llc, pipeline=pipeline, calibration=calib)
    kernels = {k["name"]: k["kernel"] for k in art.manifest["kernels"] if k["op"] == "qmatmul_dynamic"}
    assert kernels["fc1"] == "vnni-sparse", art.manifest["kernels"]
    assert [r["name"] for r in art.manifest["sparsity_report"]] == ["fc1", "fc2"]
    rec = next(k for k in art.manifest["kernels"] if k["name"] == "fc1")["weight"]
    assert "sparse<0.699" in rec["encoding"] and rec["stored_bytes"] < 0.6 * 256 * 256
    ref_graph = run_pipeline(g, parse_pipeline(pipeline), PassContext(calibration=calib))
    x = calib[0]
    want = interpret(ref_graph, x)["y"]
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.lbit")
        art.save(path)
        got = load(path).run(x)["y"]
        from lowbit.cli import main

        assert main(["inspect", path]) == 0
    np.testing.assert_array_equal(got, want)
    text = capsys.readouterr().out
    assert "sparse weights (per layer" in text and "fc1  matmul unstructured 0.7 wanda, 69.9% zero of 65536" in text
    assert "-> vnni-sparse" in text


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_int4_weights_keep_the_pruned_zeros(method):
    g = _mlp(k=128, n=64)
    calib = _inputs(k=128)
    pipe = (f"sparsify{{method=sparsegpt,ratio=0.7,min_weights=0}},quantize-weights{{method={method},group=32}},"
            "quantize{dynamic=true},dce")
    out, _ = _run(g, pipe, calib)
    pruned, _ = _run(g, "sparsify{method=sparsegpt,ratio=0.7,min_weights=0}", calib)
    dense = {op.loc: np.asarray(op.operands[1].const_value) for op in pruned.ops if op.opname == "matmul"}
    qs = [op for op in out.ops if op.opname == "qmatmul_dynamic"]
    assert len(qs) == 2
    for op in qs:
        w = op.operands[1]
        assert w.type.quant.group == 32 and w.type.encoding is not None, w.type
        codes = np.asarray(w.const_value)
        assert np.array_equal(codes == 0, dense[op.loc] == 0) or np.all(codes[dense[op.loc] == 0] == 0)
        assert np.count_nonzero(codes == 0) / codes.size >= 0.7 - 1e-9
