"""The sparse int4 GEMV kernel (``vnni-w4-sparse``: two vectors' nonzero nibbles in one byte stream, two masks,
vpshufb sign extension, vpexpandb + vpdpbusd): bit-exact against the interpreter and the dense nibble kernel
(``vnni-w4``), and the kernel table's reasons where it does not pay."""
import ml_dtypes
import numpy as np
import pytest

import lowbit
from lowbit.codegen import sparse_w4
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import Encoding, QuantParams, TensorType
from test_sparse_kernels import _dense_target, _sparse_target
from test_w4 import _run


def _codes(k, n, ratio, rng):
    """[K, N] signed 4-bit codes -8..7 with exactly ceil(ratio * K * N) zeros at random places."""
    w = rng.integers(1, 8, (k, n)) * rng.choice([-1, 1], (k, n))
    w[rng.random((k, n)) < 0.05] = -8
    w.reshape(-1)[rng.permutation(k * n)[:int(np.ceil(ratio * k * n - 1e-9))]] = 0
    return w


def _graph(lead, k, n, group, ratio, per_row=True, bias=True, zero_points=None, seed=0):
    r = np.random.default_rng(seed)
    ng = -(-k // group)
    codes = _codes(k, n, ratio, r)
    sw = r.uniform(0.001, 0.01, (ng, n)).astype(np.float32)
    zw = np.zeros((ng, n), np.int64) if zero_points is None else zero_points
    g = Graph("sparse_w4")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    q = QuantParams(tuple(map(float, sw.ravel())), tuple(map(int, zw.ravel())), 1, group)
    w = g.const(codes.astype(ml_dtypes.int4), type=TensorType((k, n), dt.i4, q, Encoding.sparse(ratio)))
    ops = [x, w] + ([g.const(r.normal(0, 1, n).astype(np.float32))] if bias else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    rows = r.normal(0.2, 2, lead + (k,)) * r.uniform(0.05, 20, lead + (1,))  # rows of unlike ranges
    return g, {"x": rows.astype(np.float32)}


CASES = [((1,), 256, 128, 128, 0.7, True, True), ((1,), 200, 40, 32, 0.8, True, True),
         ((2,), 256, 33, 64, 0.9, True, False), ((2,), 128, 64, 32, 0.8, False, True),
         ((1, 2), 96, 48, 32, 0.8, True, True)]


@pytest.mark.parametrize("case", CASES, ids=["gemv-g128", "partial-group-n40", "m2-n33-nobias", "m2-per-tensor",
                                             "lead1x2"])
def test_sparse_w4_bit_exact(case):
    """Against the interpreter and the dense nibble kernel (the same target without VBMI2)."""
    g, xs = _graph(*case)
    got, chosen, _ = _run(g, xs, _sparse_target())
    assert chosen == "vnni-w4-sparse"
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])
    dense, kernel, passed = _run(g, xs, _dense_target())
    assert kernel == "vnni-w4" and passed["vnni-w4-sparse"] == "target has no avx512_vbmi2"
    np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("kp,n,group,ratio", [(64, 32, 32, 0.0), (256, 48, 128, 0.95), (32, 16, 32, 1.0)])
def test_kernel_sums_are_exact_at_any_density(kp, n, group, ratio):
    """The TIR kernel alone (unit scales, input zero point 0: Y = the exact integer product) at densities the
    table would not pick it for, with more rows than a register tile."""
    import tvm

    r = np.random.default_rng(2)
    m = 5
    w = _codes(kp, n, ratio, r)
    p = sparse_w4.pack(w, kp, group, np.ones((kp // group, n), np.float32))
    lib = tvm.compile(tvm.IRModule({"main": sparse_w4.matmul_func(m, kp, n, group, p.stream.size, False, (m, n),
                                                                  rows=6)}), target=_sparse_target().tvm())
    x = r.integers(0, 256, (m, kp)).astype(np.uint8)
    t = tvm.runtime.tensor
    y = t(np.zeros((m, n), np.float32))
    lib["main"](t(x), t(np.ones(1, np.float32)), t(np.zeros(1, np.int32)), t(p.stream), t(p.masks), t(p.starts),
                t(p.scales), t(p.csum), t(np.zeros(-(-n // 16) * 16, np.float32)), t(sparse_w4.SIGN_TABLE), y)
    np.testing.assert_array_equal(y.numpy(), (x.astype(np.int64) @ w).astype(np.float32))


def test_dense_int4_is_kept_with_a_reason():
    """The predicate's bars (caches aside: ``_sparse_target`` has none, see test_sparse_kernels for them)."""
    from lowbit.codegen import kernels

    class L:
        target = _sparse_target()
    cases = [(_graph((1,), 64, 64, 32, 0.3),
              "the sparse nibble format would store 1.02 of the dense int4 bytes (30 % zeros), the bar is 0.9"),
             (_graph((4,), 64, 64, 32, 0.7), "4 rows, the sparse nibble kernel pays only memory-bound (at most 2"),
             (_graph((1,), 64, 64, 32, 0.7, zero_points=np.full((2, 64), 1)), "the codes are not symmetric")]
    for (g, _), reason in cases:
        op = next(op for op in g.ops if op.opname == "qmatmul_dynamic")
        chosen, passed = kernels.choose(L, op)
        assert chosen.name == "vnni-w4" and passed["vnni-w4-sparse"].startswith(reason), passed["vnni-w4-sparse"]
