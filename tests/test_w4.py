"""W4A8: qmatmul_dynamic by a group-wise 4-bit (or 2-bit) weight — the reference, the VNNI nibble kernel and
the plain loop kernel bit-exact against it, and onnxruntime's MatMulNBits models compiled onto them."""
import ml_dtypes
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, run_ort
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import QuantParams, TensorType
from test_codegen_ops import cpu_target
from test_matmul_nbits import _model


def _graph(lead, k, n, group, kind, per_row=True, bias=True, seed=0):
    r = np.random.default_rng(seed)
    ng = -(-k // group)
    if kind == "i4":  # symmetric codes -8..7
        codes, zw, d, npd, storage = r.integers(-8, 8, (k, n)), np.zeros((ng, n), np.int64), dt.i4, ml_dtypes.int4, None
    elif kind == "u4":
        codes, zw, d, npd, storage = r.integers(0, 16, (k, n)), r.integers(0, 16, (ng, n)), dt.u4, ml_dtypes.uint4, None
    elif kind == "apot":  # codebook indices (shift-add), zero points 0
        codes, zw, d, npd, storage = r.integers(0, 16, (k, n)), np.zeros((ng, n), np.int64), dt.u4, ml_dtypes.uint4, None
    else:  # 2-bit codes in u8 storage
        codes, zw, d, npd, storage = r.integers(0, 4, (k, n)), r.integers(0, 4, (ng, n)), dt.u8, np.uint8, (0, 3)
    sw = r.uniform(0.001, 0.01, (ng, n)).astype(np.float32)
    g = Graph("w4")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    from lowbit.quant.codebooks import CODEBOOKS

    q = QuantParams(tuple(map(float, sw.ravel())), tuple(map(int, zw.ravel())), 1, group, storage=storage,
                    codebook=CODEBOOKS["apot"] if kind == "apot" else None)
    w = g.const(codes.astype(npd), type=TensorType((k, n), d, q))
    ops = [x, w] + ([g.const(r.normal(0, 1, n).astype(np.float32))] if bias else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    rows = r.normal(0.2, 2, lead + (k,)) * r.uniform(0.05, 20, lead + (1,))  # rows of unlike ranges
    return g, {"x": rows.astype(np.float32)}


def _run(g, xs, target):
    """(the compiled graph's output, the kernel chosen for its op, why the kernels before it were passed over)."""
    import tvm
    from tvm import relax

    from lowbit.codegen import build_module

    kernels = []
    ex = build_module(g, target, kernels=kernels)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(next(iter(xs.values()))))
    return out[0].numpy(), kernels[0]["kernel"], kernels[0].get("passed_over", {})


CASES = [((1,), 256, 64, 128, "i4"), ((3,), 200, 40, 32, "u4"), ((2, 5), 128, 48, 64, "u4", False),
         ((1,), 64, 16, 16, "i4", True, False), ((4,), 96, 33, 32, "u2"), ((3,), 200, 40, 64, "apot")]


@pytest.mark.parametrize("family,kernel", [("vnni", "vnni-w4"), ("base", "grouped-loops")])
@pytest.mark.parametrize("case", CASES, ids=["gemv-g128", "partial-group", "per-tensor", "g16-nobias", "2bit", "apot"])
def test_grouped_qmatmul_dynamic_bit_exact(case, family, kernel):
    g, xs = _graph(*case)
    got, chosen, _ = _run(g, xs, cpu_target(family))
    # 2-bit codes on 4 rows: the lookup kernel where the CPU has AVX-512 BW (tests/test_lut.py), else vnni-w4
    assert chosen == ("lut-w2" if kernel == "vnni-w4" and case[4] == "u2" and cpu_target().has("avx512bw")
                      else kernel)
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])


def test_reference_is_the_grouped_sum():
    """The reference against a float64 transcription: per group the exact integer sum, then the rescale."""
    from lowbit.quant.scheme import dynamic_u8_row_params

    g, xs = _graph((3,), 200, 40, 32, "u4")
    op = next(op for op in g.ops if op.opname == "qmatmul_dynamic")
    w, q = op.operands[1], op.operands[1].type.quant
    codes, zw = w.const_value.astype(np.int64), np.asarray(q.zero_point).reshape(-1, 40)
    sw, b = np.asarray(q.scale, np.float32).reshape(-1, 40), op.operands[2].const_value
    sx, zx = dynamic_u8_row_params(xs["x"])
    xq = np.clip(np.rint(xs["x"] / sx) + zx, 0, 255)
    want = b.astype(np.float64)
    for i in range(zw.shape[0]):
        sl = slice(32 * i, 32 * i + 32)
        want = want + ((xq[:, sl] - zx) @ (codes[sl] - zw[i])) * (sx.astype(np.float64) * sw[i])
    assert max_rel_err(lowbit.interpret(g, xs)["y"], want) < 1e-6


@pytest.mark.parametrize("bits,bs,zp", [(4, 32, "packed"), (4, 128, None), (2, 64, "packed")])
def test_matmul_nbits_compiles_onto_the_w4a8_kernel(bits, bs, zp):
    """An onnxruntime MatMulNBits model under int8-dynamic: qmatmul_dynamic with its codes as they are, the VNNI
    kernel where the CPU has VNNI, bit-exact with the interpreter, within int8-activation error of onnxruntime."""
    model, a, _ = _model(256, 48, bits, bs, zp=zp, m=2)
    g = lowbit.run_passes(lowbit.load(model), "int8-dynamic")
    assert g.op_counts() == {"const": 1, "qmatmul_dynamic": 1}
    got, kernel, _ = _run(g, {"x": a}, cpu_target())
    host = cpu_target()
    vnni = "lut-w2" if bits == 2 and host.has("avx512bw") else "vnni-w4"
    assert kernel == (vnni if host.has("avx512_vnni") else "grouped-loops")
    np.testing.assert_array_equal(got, lowbit.interpret(g, {"A": a})["Y"])
    assert max_rel_err(got, run_ort(model.SerializeToString(), {"A": a})["Y"]) < 0.03


@pytest.mark.parametrize("bits,bs,zp", [(4, 32, "packed"), (2, 64, "packed"), (8, 16, None)])
def test_matmul_by_group_wise_weight_exports_as_matmul_nbits(bits, bs, zp):
    """lowbit export writes matmul(x, dequantize(group-wise w)) as MatMulNBits; onnxruntime computes what the
    interpreter does (both dequantize W in f32 and run an f32 matmul)."""
    import onnxruntime as ort

    from lowbit.export import to_onnx_qdq

    model, a, _ = _model(200, 48, bits, bs, zp=zp, m=3)
    g = lowbit.load(model)
    m = to_onnx_qdq(g)
    assert [n.op_type for n in m.graph.node] == ["MatMulNBits", "Identity"]
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    assert max_rel_err(got, lowbit.interpret(g, {"A": a})["Y"]) <= 1e-6


def test_w4_encoder_exports_as_matmul_nbits_and_w4a8_is_refused():
    import onnxruntime as ort

    import model_zoo as zoo
    from lowbit.errors import LowbitError
    from lowbit.export import to_onnx_qdq

    model, inputs = zoo.encoder(seq=16)
    src = lowbit.load(model, shapes={k: v.shape for k, v in inputs.items()})
    g = lowbit.run_passes(src, "canonicalize,fold-constants,fuse,quantize-weights,dce")
    m = to_onnx_qdq(g)
    assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 13
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    for o, w in zip(got, lowbit.interpret(g, inputs).values()):
        assert max_rel_err(o, w) <= 1e-5
    with pytest.raises(LowbitError, match="W4A8. has no exact ONNX form"):
        to_onnx_qdq(lowbit.run_passes(g, "quantize{dynamic=true},dce"))
