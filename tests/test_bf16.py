"""bf16 ops (conv2d_bf16, matmul_bf16): the to-bf16 pass, the reference, each kernel family, the policy.

The kernels compute exact bf16 x bf16 products summed in f32, in their own order; they are checked against a
float64 sum of the same products, to within f32 rounding of the sum of their magnitudes. The AMX-BF16 family
runs only where the CPU has AMX-BF16, the AVX512-BF16 family where the CPU executes ``vdpbf16ps`` (forced on
with ``+avx512bf16`` where a hypervisor hides the flag); their selection (and features turned off) is checked
on any machine by compiling for a Sapphire Rapids target without running.
"""
import pathlib

import ml_dtypes
import numpy as np
import pytest

import lowbit
from lowbit.errors import LowbitWarning
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import TensorType

SPR = {"kind": "llvm", "mcpu": "sapphirerapids"}
TINY_CNN = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx")


FAMILIES = ["amx-bf16", "avx512-bf16", "generic"]


def bf16_target(family):
    """This CPU with the bf16 kernels of ``family``: ``amx-bf16``, ``avx512-bf16`` (AMX-BF16 turned off) or
    ``generic`` (both off); skips where the CPU cannot execute the family's instruction."""
    from helpers import instruction_runs
    from lowbit.codegen import Target

    host = Target.parse("cpu")
    if family == "amx-bf16":
        if not host.has("amx_bf16"):
            pytest.skip("this CPU has no amx_bf16")
        return host
    mattr = ["-amx-bf16"] if host.has("amx_bf16") else []
    if family == "avx512-bf16":
        if not host.has("avx512_bf16"):
            if not host.has("avx512f") or not instruction_runs("avx512_bf16"):
                pytest.skip("this CPU cannot execute vdpbf16ps (avx512_bf16)")
            mattr.append("+avx512bf16")
    elif host.has("avx512_bf16"):
        mattr.append("-avx512bf16")
    return Target.parse({**host.to_json(), "mattr": mattr}) if mattr else host


def _run(graph, inputs, target):
    import tvm
    from tvm import relax

    from lowbit.codegen import build_module

    kernels = []
    ex = build_module(graph, target, kernels=kernels)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(inputs[v.name]) for v in graph.inputs])
    return [o.numpy() for o in out], [k["kernel"] for k in kernels]


def _bf16(a):
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16)


def _conv_graph(shape, w, b, strides, pads, dilations, relu):
    g = Graph("c")
    x = g.add_input("x", TensorType(shape, dt.f32))
    ops = [x, g.const(w)] + ([g.const(b)] if b is not None else [])
    y = g.create("conv2d_bf16", ops, {"strides": strides, "pads": pads, "dilations": dilations, "groups": 1,
                                      "activation": "relu" if relu else "none"}).result
    g.set_outputs([y], ["y"])
    return g


def _check_close(got, x, w, exact, conv_args=None):
    """got vs the float64 sum of the same bf16 products: within 2^-20 of the sum of their magnitudes."""
    from lowbit.ir import interp

    xr = interp.bf16_round(x).astype(np.float64)
    mag = exact(np.abs(xr), np.abs(w.astype(np.float64)))
    want = exact(xr, w.astype(np.float64))
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= mag * 2.0 ** -20 + 1e-30), float(np.max(err - mag * 2.0 ** -20))


# (input NCHW, output channels, kernel, stride, pads, dilation): an RGB stem (folded taps), odd channel counts,
# 1x1 and strided, a partial last 16-pixel tile, a dilated 3x3
CONVS = [((1, 3, 23, 23), 32, 7, 2, (3, 3, 3, 3), 1), ((1, 20, 9, 9), 24, 3, 1, (1, 1, 1, 1), 1),
         ((1, 64, 7, 7), 48, 1, 1, (0, 0, 0, 0), 1), ((2, 40, 10, 10), 80, 1, 2, (0, 0, 0, 0), 1),
         ((1, 33, 12, 12), 16, 3, 1, (2, 2, 2, 2), 2)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CONVS, ids=[f"{c[0][1]}to{c[1]}k{c[2]}s{c[3]}d{c[5]}" for c in CONVS])
def test_conv2d_bf16_family(case, family):
    from lowbit.ir import interp

    shape, o, k, s, pads, d = case
    r = np.random.default_rng(0)
    x = r.normal(0, 1, shape).astype(np.float32)
    w = _bf16(r.normal(0, 0.2, (o, shape[1], k, k)))
    b = r.normal(0, 0.1, o).astype(np.float32)
    g = _conv_graph(shape, w, b, (s, s), pads, (d, d), relu=o % 3 == 0)
    (got,), kernels = _run(g, {"x": x}, bf16_target(family))
    assert kernels[0] == family
    ref = interp.interpret(g, {"x": x})["y"]

    class Op:  # the conv of the reference in float64, as a function of (x, w)
        opname, attrs = "conv2d", {"strides": (s, s), "pads": pads, "dilations": (d, d), "groups": 1}
        result = g.ops[-1].result

    def exact(xv, wv):
        return interp._conv2d(Op, xv, wv)
    relu = g.ops[-1].attrs["activation"] == "relu"
    bias = b.astype(np.float64).reshape(1, -1, 1, 1)
    if relu:  # compare before the clamp where the sum is positive, and at 0 elsewhere
        want = exact(interp.bf16_round(x).astype(np.float64), w.astype(np.float64)) + bias
        assert np.all((got == 0) | (want > -1e-5))
        got = np.where(want > 0, got, want).astype(np.float32)
    _check_close(got - b.reshape(1, -1, 1, 1), x, w, exact)
    assert np.allclose(got if not relu else np.maximum(got, 0), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lead,k,n", [((1,), 70, 10), ((20,), 64, 48), ((1, 128), 96, 40), ((2, 3, 12), 33, 16)])
def test_matmul_bf16_family(lead, k, n, family):
    r = np.random.default_rng(1)
    x = r.normal(0, 1, lead + (k,)).astype(np.float32)
    w = _bf16(r.normal(0, 0.2, (k, n)))
    b = r.normal(0, 0.1, n).astype(np.float32)
    g = Graph("m")
    xv = g.add_input("x", TensorType(lead + (k,), dt.f32))
    y = g.create("matmul_bf16", [xv, g.const(w), g.const(b)], {}).result
    g.set_outputs([y], ["y"])
    (got,), kernels = _run(g, {"x": x}, bf16_target(family))
    assert kernels[0] == family
    _check_close(got - b, x, w, np.matmul)


def test_bf16_rounding_matches_ml_dtypes():
    """The kernels' f32 -> bf16 rounding (ties to even, NaN kept, overflow to infinity) is ml_dtypes'."""
    from lowbit.ir import interp

    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.3895314e38,
                        3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan, 1e-40, -1e-45], np.float32)
    x = np.concatenate([special, np.random.default_rng(2).normal(0, 100, 2000).astype(np.float32)])
    w = _bf16(np.eye(1))
    g = Graph("r")
    xv = g.add_input("x", TensorType((x.size, 1), dt.f32))
    g.set_outputs([g.create("matmul_bf16", [xv, g.const(w)], {}).result], ["y"])
    (got,), _ = _run(g, {"x": x.reshape(-1, 1)}, bf16_target("generic"))
    want = interp.bf16_round(x).reshape(-1, 1) + np.float32(0)  # the matmul's sum 0 + x * 1: -0 becomes +0
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


def test_amx_bf16_chosen_and_forced_off():
    """On a Sapphire Rapids target conv2d_bf16 / matmul_bf16 take AMX-BF16 (conv results NHWC, so a residual
    add after them runs NHWC); with ``-amx-bf16`` AVX512-BF16 (a Zen 4 picks it too), with ``-avx512bf16`` as
    well the generic kernels, and the passed-over reasons are recorded. Compiled only: any machine checks the
    selection."""
    from lowbit import codegen as cg
    g = lowbit.run_passes(lowbit.load(TINY_CNN), "bf16")
    art = cg.build(g, cg.Target.parse(SPR))
    fam = {k["name"]: k for k in art.manifest["kernels"]}
    assert fam["conv1"]["kernel"] == "amx-bf16" and fam["fc"]["kernel"] == "amx-bf16"
    for spec in ({**SPR, "mattr": ["-amx-bf16"]}, {"kind": "llvm", "mcpu": "znver4"}):
        fam = {k["name"]: k for k in cg.build(g, cg.Target.parse(spec)).manifest["kernels"]}
        assert fam["conv1"]["kernel"] == "avx512-bf16" and fam["fc"]["kernel"] == "avx512-bf16"
    off = cg.build(g, cg.Target.parse({**SPR, "mattr": ["-amx-bf16", "-avx512bf16"]}))
    fam = {k["name"]: k for k in off.manifest["kernels"]}
    assert fam["conv1"]["kernel"] == "generic"
    assert fam["conv1"]["passed_over"] == {"amx-bf16": "target has no amx_bf16",
                                          "avx512-bf16": "target has no avx512_bf16"}


def test_bf16_preset_policy(tmp_path):
    """Without AMX-BF16 and AVX512-BF16 the bf16 preset keeps the model f32 and says so; keep_bf16 runs the bf16
    ops anyway."""
    no_amx = {**SPR, "mattr": ["-amx-bf16", "-amx-int8", "-amx-tile", "-avx512bf16"]}
    with pytest.warns(LowbitWarning, match="half the FMA rate"):  # an Intel core with AVX512-BF16 only
        slow = lowbit.compile(TINY_CNN, target={**SPR, "mattr": ["-amx-bf16"]}, pipeline="bf16")
    assert "to-bf16" not in slow.manifest["pipeline"]
    with pytest.warns(LowbitWarning, match="neither AMX-BF16 nor AVX512-BF16"):
        art = lowbit.compile(TINY_CNN, target=no_amx, pipeline="bf16")
    assert "to-bf16" not in art.manifest["pipeline"]
    assert any("to-bf16 did not run" in w for w in art.manifest["warnings"])
    assert not any(k["op"].endswith("_bf16") for k in art.manifest["kernels"])
    kept = lowbit.compile(TINY_CNN, target=no_amx, pipeline="bf16", keep_bf16=True)
    assert {k["op"] for k in kept.manifest["kernels"]} >= {"conv2d_bf16", "matmul_bf16"}
    for spec in (SPR, {"kind": "llvm", "mcpu": "znver4"}):
        art = lowbit.compile(TINY_CNN, target=spec, pipeline="bf16")
        assert "warnings" not in art.manifest and "to-bf16" in art.manifest["pipeline"]


@pytest.mark.parametrize("family", ["avx512-bf16", "generic"])
def test_bf16_model_close_to_f32(family):
    """The bundled CNN through the bf16 preset (the AVX512-BF16 kernels, or the generic ones: the same products
    as AMX-BF16) stays within cosine 0.999 of f32; the interpreter and the build agree."""
    inputs = dict(np.load(TINY_CNN.replace(".onnx", "_inputs.npz")))
    src = lowbit.load(TINY_CNN)
    g = lowbit.run_passes(src, "bf16")
    ref = lowbit.interpret(g, inputs)["logits"]
    f32 = lowbit.interpret(src, inputs)["logits"]
    (got,), kernels = _run(g, inputs, bf16_target(family))
    assert family in kernels and (family == "generic" or kernels.count(family) == g.op_counts().get(
        "conv2d_bf16", 0) + g.op_counts().get("matmul_bf16", 0))
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-6)
    cos = float(np.dot(ref.ravel(), f32.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(f32)))
    assert cos >= 0.999, cos


@pytest.mark.parametrize("name", ["resnet18", "encoder"])
def test_bf16_zoo_close_to_f32(name):
    """ResNet-18 (56x56) and the encoder through the bf16 preset, in the interpreter: cosine to f32 >= 0.999."""
    import model_zoo as zoo

    model, inputs = zoo.resnet18(56) if name == "resnet18" else zoo.encoder(seq=32)
    shapes = {k: v.shape for k, v in inputs.items()} if name == "encoder" else None
    src = lowbit.load(model, shapes=shapes)
    g = lowbit.run_passes(src, "bf16")
    assert g.op_counts().get("conv2d_bf16", 0) + g.op_counts().get("matmul_bf16", 0) > 0
    for k, want in lowbit.interpret(src, inputs).items():
        got = lowbit.interpret(g, inputs)[k].astype(np.float64).ravel()
        want = want.astype(np.float64).ravel()
        cos = float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cos >= 0.999, (k, cos)
