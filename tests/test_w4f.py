"""W4 with f32 activations: ``matmul(x, dequantize(w))`` by a group-wise low-bit constant (MatMulNBits at
accuracy_level 0-3, the ``w4`` preset) compiled onto ``codegen/w4f.py``'s kernels — the AVX-512 one (nibbles
decoded in registers) and the TE fallback — within 1e-5 of the interpreter (which dequantizes W exactly and runs
an f32 matmul); an onnxruntime MatMulNBits model and the w4 zoo encoder compiled with ``lowbit.compile``."""
import warnings

import ml_dtypes
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, run_ort
from lowbit.errors import LowbitError, LowbitWarning
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import QuantParams, TensorType
from test_matmul_nbits import _model
import model_zoo as zoo


def _graph(lead, k, n, group, kind, seed=0):
    """matmul(x [lead.., K] f32, dequantize(w [K, N] group-wise along K)) and an input of rows of unlike ranges."""
    r = np.random.default_rng(seed)
    ng = -(-k // group)
    if kind == "i4":  # symmetric codes -8..7
        codes, zw, d, npd, storage = r.integers(-8, 8, (k, n)), np.zeros((ng, n), np.int64), dt.i4, ml_dtypes.int4, None
    elif kind == "u4":  # zero points
        codes, zw, d, npd, storage = r.integers(0, 16, (k, n)), r.integers(0, 16, (ng, n)), dt.u4, ml_dtypes.uint4, None
    elif kind == "u2":  # 2-bit codes in u8 storage
        codes, zw, d, npd, storage = r.integers(0, 4, (k, n)), r.integers(0, 4, (ng, n)), dt.u8, np.uint8, (0, 3)
    else:  # 8-bit codes: the TE kernel only
        codes, zw, d, npd, storage = r.integers(0, 256, (k, n)), r.integers(0, 256, (ng, n)), dt.u8, np.uint8, None
    sw = r.uniform(0.001, 0.01, (ng, n)).astype(np.float32)
    g = Graph("w4f")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    q = QuantParams(tuple(map(float, sw.ravel())), tuple(map(int, zw.ravel())), 1, group, storage=storage)
    w = g.const(codes.astype(npd), type=TensorType((k, n), d, q))
    g.set_outputs([g.create("matmul", [x, g.create("dequantize", [w], {}).result]).result], ["y"])
    rows = r.normal(0.2, 2, lead + (k,)) * r.uniform(0.05, 20, lead + (1,))
    return g, {"x": rows.astype(np.float32)}


def _target(family):
    """This CPU ("avx512": skipped without avx512f) or with AVX-512 turned off ("fallback")."""
    from lowbit.codegen import Target

    host = Target.parse("cpu")
    if family == "fallback":
        return Target.parse({**host.to_json(), "mattr": [*host.mattr, "-avx512f"]})
    if not host.has("avx512f"):
        pytest.skip("this CPU has no avx512f")
    return host


def _run(g, xs, target):
    import tvm
    from tvm import relax

    from lowbit.codegen import build_module

    kernels = []
    ex = build_module(g, target, kernels=kernels)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xs["x"]))
    return out[0].numpy(), {k["op"]: k for k in kernels}


CASES = [((1,), 256, 64, 128, "i4"), ((3,), 200, 40, 32, "u4"), ((5,), 96, 33, 32, "u2")]


@pytest.mark.parametrize("family,kernel", [("avx512", "avx512-w4f"), ("fallback", "w4f-te")])
@pytest.mark.parametrize("case", CASES, ids=["gemv-g128-i4", "partial-group-u4", "2bit-n33"])
def test_kernel_matches_the_interpreter(case, family, kernel):
    """Within 1e-5 of the output's largest magnitude (measured: <= 6e-7 on these, 1.1e-6 at K = 4096)."""
    g, xs = _graph(*case)
    got, ks = _run(g, xs, _target(family))
    assert ks["matmul"]["kernel"] == kernel and "dequantize" not in ks
    assert ks["matmul"]["weight"]["encoding"].startswith(g.ops[0].result.type.dtype.name + " group")
    want = lowbit.interpret(g, xs)["y"]
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("kind,kernel", [("u4", "avx512-w4f"), ("u8", "w4f-te")])
def test_batched_rows_and_eight_bit_codes(kind, kernel):
    """x [2, 3, K], K = 100 (not a multiple of 8: padded rows); 8-bit codes take the TE kernel on AVX-512 too."""
    g, xs = _graph((2, 3), 100, 48, 16, kind)
    got, ks = _run(g, xs, _target("avx512"))
    assert ks["matmul"]["kernel"] == kernel
    if kind == "u8":
        assert "the nibble kernel takes 16" in ks["matmul"]["passed_over"]["avx512-w4f"]
    want = lowbit.interpret(g, xs)["y"]
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_other_uses_of_a_dequantized_weight_stay_refused():
    g, xs = _graph((2,), 64, 16, 32, "u4")
    deq = next(op for op in g.ops if op.opname == "dequantize").result
    g.set_outputs([g.outputs[0], g.create("relu", [deq]).result], ["y", "w"])
    with pytest.raises(LowbitError, match="not only a matmul's weight: it is read by relu"):
        lowbit.compile(g)


def test_matmul_nbits_compiles_and_matches_onnxruntime(tmp_path):
    """A MatMulNBits model (4 bits, block 32, packed zero points, a bias) through lowbit.compile (O2)."""
    model, a, _ = _model(256, 48, 4, 32, zp="packed", bias=True, m=3)
    art = lowbit.compile(model)
    kernel = next(k for k in art.manifest["kernels"] if k["op"] == "matmul")
    assert kernel["kernel"] in ("avx512-w4f", "w4f-te") and kernel["weight"]["encoding"] == "u4 group 32, zero points"
    art.save(tmp_path / "nbits.lbit")
    got = lowbit.runtime.load(tmp_path / "nbits.lbit").run({"A": a})["Y"]
    assert max_rel_err(got, run_ort(model.SerializeToString(), {"A": a})["Y"]) <= 1e-4
    assert max_rel_err(got, lowbit.interpret(lowbit.load(model), {"A": a})["Y"]) <= 1e-5


def test_w4_preset_on_the_zoo_encoder(tmp_path):
    """Every linear layer of the encoder (seq 16) 4-bit group 128 by round to nearest, compiled: within 1e-4 of
    the same graph interpreted."""
    model, inputs = zoo.encoder(seq=16)
    g = lowbit.load(model, shapes={k: v.shape for k, v in inputs.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowbitWarning)  # (no calibration data: rtn)
        want = lowbit.interpret(lowbit.run_passes(g, "w4"), inputs)
        art = lowbit.compile(g, pipeline="w4")
    kernels = [k for k in art.manifest["kernels"] if k["op"] == "matmul" and "weight" in k]
    assert len(kernels) == 13 and {k["kernel"] for k in kernels} <= {"avx512-w4f", "w4f-te"}
    assert {k["weight"]["encoding"].split(",")[0] for k in kernels} <= {"i4 group 128", "u4 group 128"}
    art.save(tmp_path / "enc.lbit")
    got = lowbit.runtime.load(tmp_path / "enc.lbit").run(inputs)
    for k in want:
        assert max_rel_err(got[k], want[k]) <= 1e-4, k
