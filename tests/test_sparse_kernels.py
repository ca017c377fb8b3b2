"""The sparse int8 GEMV kernel (``vnni-sparse``: masks + packed nonzeros, vpexpandb + vpdpbusd): the format
round-trips, the kernel is bit-exact against the interpreter and the dense VNNI kernel, and the kernel table
takes it only where its bytes model says it pays, with the reason otherwise."""
import numpy as np
import pytest

import lowbit
from lowbit.codegen import sparse
from lowbit.ir import dtypes as dt
from lowbit.ir.graph import Graph
from lowbit.ir.types import Encoding, QuantParams, TensorType
from test_codegen_ops import cpu_target
from test_w4 import _run


def _weight(k, n, ratio, rng, zero_columns=()):
    """A [K, N] i8 weight with exactly ceil(ratio * K * N) zeros at random places (nonzeros in -127..127 \\ 0)."""
    w = rng.integers(1, 128, (k, n)) * rng.choice([-1, 1], (k, n))
    w.reshape(-1)[rng.permutation(k * n)[:int(np.ceil(ratio * k * n - 1e-9))]] = 0
    w[:, list(zero_columns)] = 0
    return w.astype(np.int8)


def _graph(lead, k, n, ratio, per_row=True, bias=True, encoding="sparse", zero_columns=(), seed=0):
    r = np.random.default_rng(seed)
    w = _weight(k, n, ratio, r, zero_columns)
    if encoding == "nm":  # 2:4 along K: the two smallest magnitudes of every 4 consecutive k set to 0
        w = np.pad(w, ((0, -k % 4), (0, 0))).reshape(-1, 4, n)
        order = np.argsort(np.abs(w.astype(np.int32)), axis=1, kind="stable")
        np.put_along_axis(w, order[:, :2], 0, axis=1)
        w = w.reshape(-1, n)[:k]
    enc = {"sparse": Encoding.sparse(ratio), "nm": Encoding("nm", (2, 4)), None: None}[encoding]
    g = Graph("sparse")
    x = g.add_input("x", TensorType(lead + (k,), dt.f32))
    sw = tuple(map(float, r.uniform(0.001, 0.01, n).astype(np.float32)))
    wc = g.const(w, type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * n, 1, storage=(-127, 127)), enc))
    ops = [x, wc] + ([g.const(r.normal(0, 1, n).astype(np.float32))] if bias else [])
    g.set_outputs([g.create("qmatmul_dynamic", ops, {"per_row": per_row}).result], ["y"])
    rows = r.normal(0.2, 2, lead + (k,)) * r.uniform(0.05, 20, lead + (1,))  # rows of unlike ranges
    return g, {"x": rows.astype(np.float32)}


def _sparse_target(caches=None):
    """This CPU with the VNNI family, its caches taken as ``caches`` (default: none, so the tests' small models
    count as larger than the last-level cache and the bytes bar decides; ``ops_sparse.gain_reason``)."""
    from dataclasses import replace

    t = cpu_target("vnni")
    if not t.has("avx512_vbmi2"):
        pytest.skip("this CPU has no avx512_vbmi2")
    return replace(t, caches=caches or {"l2": 0, "l3": 0})


def _dense_target():
    from lowbit.codegen import Target

    t = _sparse_target()
    return Target.parse({**t.to_json(), "mattr": list(t.mattr) + ["-avx512vbmi2"]})


def _expand(p: sparse.Packed, nb: int, kc: int) -> np.ndarray:
    """The dense vectors [nb, kc, 64] back from the format, as the kernel walks it and vpexpandb rebuilds them
    (a numpy transcription): per group of g blocks one running offset, the blocks' vectors step by step."""
    g = sparse.block_group(nb)
    out = np.zeros((nb, kc, 64), np.int8)
    for grp in range(nb // g):
        off = int(p.starts[grp])
        for s in range(kc):
            for v in range(g):
                mask = np.array([p.masks[grp, s * g + v]], "<u8").view(np.uint8)
                bits = np.unpackbits(mask, bitorder="little").astype(bool)
                out[grp * g + v, s, bits] = p.stream[off:off + bits.sum()].view(np.int8)
                off += int(bits.sum())
    return out


@pytest.mark.parametrize("k,n,ratio", [(10, 40, 0.5), (64, 48, 0.9), (9, 16, 0.0), (32, 32, 1.0), (20, 128, 0.7)])
def test_format_round_trips(k, n, ratio):
    w = _weight(k, n, ratio, np.random.default_rng(1), zero_columns=(0, n - 1))
    kp = (k + 3) // 4 * 4
    p = sparse.pack(w, kp)
    dense = sparse.vectors(w, kp)
    np.testing.assert_array_equal(_expand(p, *dense.shape[:2]), dense)
    assert p.stream.size == np.count_nonzero(w) + sparse.TAIL and not p.stream[-sparse.TAIL:].any()
    assert p.nbytes == sparse.stored_bytes(w, kp)[0]


CASES = [((1,), 1024, 256, 0.5, True, True), ((1,), 70, 40, 0.7, True, True), ((3,), 130, 33, 0.9, True, False),
         ((4,), 256, 64, 0.5, False, True), ((2, 2), 64, 48, 0.8, True, True)]


@pytest.mark.parametrize("case", CASES, ids=["gemv", "k70-n40", "m3-n33-nobias", "m4-per-tensor", "lead2x2"])
def test_sparse_qmatmul_dynamic_bit_exact(case):
    """The sparse kernel against the interpreter and the dense VNNI kernel (the same target without VBMI2)."""
    g, xs = _graph(*case, zero_columns=(1, 5))
    got, chosen, _ = _run(g, xs, _sparse_target())
    assert chosen == "vnni-sparse"
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])
    dense, kernel, passed = _run(g, xs, _dense_target())
    assert kernel == ("vnni-rows" if case[4] else "vnni") and passed["vnni-sparse"] == "target has no avx512_vbmi2"
    np.testing.assert_array_equal(got, dense)


def test_two_four_weight_takes_the_sparse_kernel():
    g, xs = _graph((1,), 96, 32, 0.0, encoding="nm")
    got, chosen, _ = _run(g, xs, _sparse_target())
    assert chosen == "vnni-sparse"
    np.testing.assert_array_equal(got, lowbit.interpret(g, xs)["y"])


@pytest.mark.parametrize("kp,n,ratio", [(64, 32, 0.0), (256, 48, 0.9), (8, 16, 1.0)])
def test_kernel_sums_are_exact_at_any_density(kp, n, ratio):
    """The TIR kernel alone (unit rescale: Y = f32(acc) exactly) at densities the table would not pick it for."""
    import tvm

    r = np.random.default_rng(2)
    m = 8  # register tiles of 6 rows: the last one overlaps the first
    w = _weight(kp, n, ratio, r)
    p = sparse.pack(w, kp)
    lib = tvm.compile(tvm.IRModule({"main": sparse.matmul_func(m, kp, n, p.stream.size, False, (m, n))}),
                      target=_sparse_target().tvm())
    x = r.integers(0, 256, (m, kp)).astype(np.uint8)
    n16 = -(-n // 16) * 16
    t = tvm.runtime.tensor
    y = t(np.zeros((m, n), np.float32))
    lib["main"](t(x), t(np.zeros(1, np.int32)), t(np.ones(1, np.float32)), t(p.stream), t(p.masks), t(p.starts),
                t(np.zeros(n16, np.int32)), t(np.ones(n16, np.float32)), t(np.zeros(n16, np.float32)), y)
    np.testing.assert_array_equal(y.numpy(), (x.astype(np.int64) @ w.astype(np.int64)).astype(np.float32))


ZEN4 = {"l2": 1 << 20, "l3": 32 << 20}  # AMD EPYC Zen 4, per core L2 and the shared L3


@pytest.mark.parametrize("lead,ratio,encoding,caches,reason", [
    ((1,), 0.5, None, None, "the weight's type has no sparsity encoding"),
    ((1,), 0.2, "sparse", None,
     "the sparse format would store 0.941 of the dense bytes (20 % zero bytes), the bar is 0.8"),
    ((8,), 0.5, "sparse", None, "8 rows, the sparse kernel pays only memory-bound (at most 4 rows)"),
    ((1,), 0.9, "sparse", ZEN4, "the model's constants (0.00415 MiB) fit the last-level cache (32 MiB): cache-"
                                "resident the sparse kernel is decode-bound"),
    # the graph's constants: the 64x64 i8 weight and the 64 f32 of the bias, 4352 bytes
    ((1,), 0.9, "sparse", {"l2": 0, "l3": 4353}, "the model's constants (0.00415 MiB) fit"),
    ((4,), 0.35, "sparse", {"l2": 0, "l3": 4352}, None),
])
def test_dense_kernel_is_kept_with_a_reason(lead, ratio, encoding, caches, reason):
    """The predicate's bars: an encoding, at most 4 rows, a model too large for the last-level cache, the bytes.
    ``None``: the sparse kernel is chosen."""
    from lowbit.codegen import kernels

    g, _ = _graph(lead, 64, 64, ratio, encoding=encoding)
    op = next(op for op in g.ops if op.opname == "qmatmul_dynamic")

    class L:
        target = _sparse_target(caches)
    chosen, passed = kernels.choose(L, op)
    if reason is None:
        assert chosen.name == "vnni-sparse"
    else:
        assert chosen.name != "vnni-sparse" and passed["vnni-sparse"].startswith(reason), passed["vnni-sparse"]
