"""lut-w2: qmatmul_dynamic by group-wise 1- and 2-bit weights on a few rows through the T-MAC-style lookup
kernel (``codegen/lut.py``) — bit-exact against the interpreter; chosen from the target's features, declined
(to the next kernel) where it does not apply."""
import numpy as np
import pytest

import lowbit
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import QuantParams, TensorType
from test_codegen_ops import cpu_target
from test_w4 import _run

# kind: (dtype, storage range, zero points drawn from it?)
KINDS = {"u2": (dt.u8, (0, 3), True),  # quantize-weights{bits=2,symmetric=false}, MatMulNBits 2-bit
         "t2": (dt.i8, (-1, 1), False),  # quantize-weights{bits=2,symmetric=true}: ternary, zero points 0
         "u1": (dt.u8, (0, 1), True)}  # 1-bit codes (no pass makes them; the type expresses them)


def _graph(lead, k, n, group, kind, per_row=True, bias=True, seed=0):
    r = np.random.default_rng(seed)
    ng = -(-k // group)
    d, (lo, hi), zero_points = KINDS[kind]
    codes = r.integers(lo, hi + 1, (k, n))
    zw = r.integers(lo, hi + 1, (ng, n)) if zero_points else np.zeros((ng, n), np.int64)
    sw = r.uniform(0.001, 0.01, (ng, n)).astype(np.float32)
    g = Graph("lut")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    q = QuantParams(tuple(map(float, sw.ravel())), tuple(map(int, zw.ravel())), 1, group, storage=(lo, hi))
    w = g.const(codes.astype(np.uint8 if d == dt.u8 else np.int8), type=TensorType((k, n), d, q))
    ops = [x, w] + ([g.const(r.normal(0, 1, n).astype(np.float32))] if bias else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    rows = r.normal(0.2, 2, lead + (k,)) * r.uniform(0.05, 20, lead + (1,))  # rows of unlike ranges
    return g, {"x": rows.astype(np.float32)}


CASES = {"gemv-g128": ((1,), 256, 64, 128, "u2"),
         "3rows-partial-group": ((3,), 200, 40, 32, "u2"),  # K % group = 8, N < one 64-column vector
         "per-tensor-ternary": ((2, 3), 128, 96, 64, "t2", False),
         "gemv-g16-nobias": ((1,), 64, 100, 16, "t2", True, False),
         "1bit-8rows": ((8,), 160, 70, 32, "u1", False),
         "1bit-gemv": ((1,), 128, 130, 64, "u1")}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_lut_qmatmul_dynamic_bit_exact(case):
    g, xs = _graph(*case)
    got, chosen, _ = _run(g, xs, cpu_target("vnni"))
    assert chosen == "lut-w2"
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])


def test_quantize_weights_ternary_compiles_onto_the_lut_kernel():
    """A float matmul through quantize-weights{bits=2} (i8 codes -1..1) and dynamic quantization: lut-w2,
    bit-exact with the interpreter."""
    r = np.random.default_rng(3)
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 96), dt.f32))
    g.set_outputs([g.create("matmul", [x, g.const(r.normal(0, 1, (96, 80)).astype(np.float32))]).result], ["y"])
    q = lowbit.run_passes(g, "quantize-weights{bits=2,group=32},quantize{dynamic=true},dce")
    assert q.op_counts() == {"const": 1, "qmatmul_dynamic": 1}
    xs = {"x": r.normal(0, 1, (1, 96)).astype(np.float32)}
    got, chosen, _ = _run(q, xs, cpu_target("vnni"))
    assert chosen == "lut-w2"
    np.testing.assert_array_equal(got, lowbit.interpret(q, xs)["y"])


def test_matmul_nbits_2bit_compiles_onto_the_lut_kernel():
    """onnxruntime's MatMulNBits with 2-bit codes and packed zero points under int8-dynamic: lut-w2, bit-exact
    with the interpreter, within int8-activation error of onnxruntime."""
    from helpers import max_rel_err, run_ort
    from test_matmul_nbits import _model

    model, a, _ = _model(256, 48, 2, 64, zp="packed", m=1)
    g = lowbit.run_passes(lowbit.load(model), "int8-dynamic")
    got, chosen, _ = _run(g, {"x": a}, cpu_target("vnni"))
    assert chosen == "lut-w2"
    np.testing.assert_array_equal(got, lowbit.interpret(g, {"A": a})["Y"])
    assert max_rel_err(got, run_ort(model.SerializeToString(), {"A": a})["Y"]) < 0.03


@pytest.mark.parametrize("lead,group,kernel,why", [
    ((9,), 32, "vnni-w4", "9 rows"),  # more rows than the lookup pays for
    ((1,), 24, "vnni-w4", "group 24 is not a multiple of 16")])
def test_lut_declines_to_the_nibble_kernel(lead, group, kernel, why):
    g, xs = _graph(lead, 96, 40, group, "u2")
    got, chosen, passed = _run(g, xs, cpu_target("vnni"))
    assert chosen == kernel and why in passed["lut-w2"]
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])


@pytest.mark.parametrize("family,off,kernel,why", [("base", [], "grouped-loops", "target has no avx512_vnni"),
                                                   ("vnni", ["-avx512bw"], "vnni-w4", "target has no avx512bw")])
def test_lut_is_forced_off_by_target_features(family, off, kernel, why):
    """Without VNNI (``base``) or AVX-512 BW turned off the kernel table passes over lut-w2, by the target's
    features."""
    from lowbit.codegen import Target

    host = cpu_target(family)
    target = Target.parse({**host.to_json(), "mattr": list(host.to_json().get("mattr", [])) + off})
    g, xs = _graph((2,), 64, 40, 32, "u2")
    got, chosen, passed = _run(g, xs, target)
    assert chosen == kernel and passed["lut-w2"] == why
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])
