"""lowbit's default CPU schedules: numerics on contraction shapes, and the machine code they become."""
import numpy as np
import pytest

import lowbit
from lowbit.ir import Graph, TensorType, dtypes as dt
from lowbit.runtime.host import cpu_flags
from helpers import max_rel_err
from test_codegen_ops import build_and_run


def _graph(build):
    g = Graph("g")
    outs = build(g)
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    return g


@pytest.mark.parametrize("m,k,n", [(1, 768, 3072), (128, 64, 64), (5, 7, 33), (64, 256, 1000)])
def test_matmul_shapes(m, k, n):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    g = _graph(lambda g: [g.create("matmul", [g.add_input("x", TensorType((m, k), dt.f32)), g.const(w)]).result])
    x = {"x": rng.normal(0, 1, (m, k)).astype(np.float32)}
    assert max_rel_err(build_and_run(g, x)["y0"], lowbit.interpret(g, x)["y0"]) <= 1e-5


@pytest.mark.parametrize("cin,cout,hw,k,stride,groups", [(3, 64, 56, 7, 2, 1), (64, 64, 14, 3, 1, 1),
                                                        (32, 32, 15, 3, 2, 32), (16, 24, 9, 1, 1, 1)])
def test_conv_shapes(cin, cout, hw, k, stride, groups):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.2, (cout, cin // groups, k, k)).astype(np.float32)
    b = rng.normal(0, 0.2, cout).astype(np.float32)

    def build(g):
        x = g.add_input("x", TensorType((1, cin, hw, hw), dt.f32))
        y = g.create("conv2d", [x, g.const(w), g.const(b)], {"strides": (stride, stride), "pads": (k // 2,) * 4,
                                                                "groups": groups}).result
        return [g.create("relu", [y]).result]

    g = _graph(build)
    x = {"x": rng.normal(0, 1, (1, cin, hw, hw)).astype(np.float32)}
    assert max_rel_err(build_and_run(g, x)["y0"], lowbit.interpret(g, x)["y0"]) <= 1e-5


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="checks AVX-512 code; this CPU has no AVX-512")
def test_dense_kernel_uses_avx512_fma():
    import tvm

    from lowbit.codegen import build_module

    w = np.ones((256, 512), np.float32)
    g = _graph(lambda g: [g.create("matmul", [g.add_input("x", TensorType((64, 256), dt.f32)), g.const(w)]).result])
    ex = build_module(g, "cpu")
    asm = "".join(m.inspect_source("asm") for m in [ex.mod] + list(ex.mod.imports) if m.kind == "llvm")
    assert "vfmadd" in asm and "zmm" in asm, "no AVX-512 FMA in the dense kernel"


def _conv(g, x, cin, cout, k, stride=1, groups=1, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    w = g.const(rng.normal(0, 0.3, (cout, cin // groups, k, k)).astype(np.float32))
    ops = [x, w] + ([g.const(rng.normal(0, 0.3, cout).astype(np.float32))] if bias else [])
    return g.create("conv2d", ops, {"strides": (stride, stride), "pads": (k // 2,) * 4, "groups": groups}).result


def _block_net(g):
    """Convs kept channel-blocked end to end: stem from NCHW, depthwise, residual add, per-channel scale
    (constant and computed), max pool, global pool, channel concat, a transposed conv, then plain ops."""
    x = g.add_input("x", TensorType((1, 3, 18, 18), dt.f32))
    a = g.create("relu", [_conv(g, x, 3, 16, 3, stride=2)]).result                       # 9x9, 16 channels
    d = g.create("clip", [_conv(g, a, 16, 16, 3, groups=16, seed=1)], {"min": 0.0, "max": 6.0}).result
    r = g.create("add", [_conv(g, d, 16, 16, 1, seed=2), a]).result
    s = g.create("sigmoid", [g.create("global_avg_pool", [r]).result]).result            # [1, 16, 1, 1]
    r = g.create("mul", [r, s]).result
    r = g.create("mul", [r, g.const(np.linspace(0.5, 1.5, 16, dtype=np.float32).reshape(1, 16, 1, 1))]).result
    p = g.create("max_pool2d", [r], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}).result  # 5x5
    c = g.create("concat", [p, _conv(g, p, 16, 8, 3, seed=3)], {"axis": 1}).result     # 24 channels, block 8
    rng = np.random.default_rng(4)
    wt = g.const(rng.normal(0, 0.3, (24, 16, 3, 3)).astype(np.float32))
    u = g.create("conv_transpose2d", [c, wt], {"strides": (2, 2), "pads": (1, 1, 1, 1),
                                               "output_padding": (1, 1)}).result          # 10x10, 16 channels
    flat = g.create("reshape", [g.create("global_avg_pool", [u]).result], {"shape": (1, 16)}).result
    return [u, flat, g.create("reduce_mean", [r], {"axes": (2, 3), "keepdims": True}).result]


def test_blocked_layout_plan_and_numerics():
    from lowbit.codegen import layout

    g = _graph(_block_net)
    blocked = layout.plan(g)
    by_op = {}
    for op in g.ops:
        if op.results and id(op.results[0]) in blocked:
            by_op.setdefault(op.opname, set()).add(blocked[id(op.results[0])])
    assert set(by_op) >= {"conv2d", "relu", "clip", "add", "mul", "global_avg_pool", "sigmoid", "max_pool2d",
                          "concat", "conv_transpose2d", "reduce_mean"}, by_op
    assert by_op["concat"] == {8} and by_op["conv_transpose2d"] == {16}
    assert "reshape" not in by_op  # plain ops read the plain layout, unblocked on demand
    rng = np.random.default_rng(5)
    x = {"x": rng.normal(0, 1, (1, 3, 18, 18)).astype(np.float32)}
    got, want = build_and_run(g, x), lowbit.interpret(g, x)
    for k in want:
        assert max_rel_err(got[k], want[k]) <= 1e-5, k


@pytest.mark.parametrize("batch", [(), (2,), (1, 3)])
def test_packed_matmul_leading_dims(batch):
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (48, 40)).astype(np.float32)
    b = rng.normal(0, 1, 40).astype(np.float32)

    def build(g):
        x = g.add_input("x", TensorType(batch + (7, 48), dt.f32))
        return [g.create("add", [g.create("matmul", [x, g.const(w)]).result, g.const(b)]).result]
    g = _graph(build)
    x = {"x": rng.normal(0, 1, batch + (7, 48)).astype(np.float32)}
    assert max_rel_err(build_and_run(g, x)["y0"], lowbit.interpret(g, x)["y0"]) <= 1e-5


def test_fast_softmax_and_gelu_extremes():
    """Masked scores (-1e9) and large logits through the vectorized exp, and GELU far into both tails."""
    def build(g):
        x = g.add_input("x", TensorType((4, 64), dt.f32))
        return [g.create("softmax", [x], {"axis": -1}).result, g.create("gelu", [x]).result]
    g = _graph(build)
    rng = np.random.default_rng(7)
    v = rng.normal(0, 30, (4, 64)).astype(np.float32)
    v[0, :32] = -1e9
    v[1, 5] = 80.0
    v[2] = np.linspace(-12, 12, 64)
    got, want = build_and_run(g, {"x": v}), lowbit.interpret(g, {"x": v})
    assert np.all(np.isfinite(got["y0"])) and np.all(got["y0"][0, :32] == 0.0)
    assert max_rel_err(got["y0"], want["y0"]) <= 1e-5
    assert np.max(np.abs(got["y1"] - want["y1"])) <= 1e-5 * np.max(np.abs(want["y1"]))
