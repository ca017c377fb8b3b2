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

    from lowbit.codegen import _build_cpu
    from lowbit.codegen.lower import to_relax
    from lowbit.codegen.target import resolve_target

    w = np.ones((256, 512), np.float32)
    g = _graph(lambda g: [g.create("matmul", [g.add_input("x", TensorType((64, 256), dt.f32)), g.const(w)]).result])
    ex = _build_cpu(to_relax(g), resolve_target("cpu"))
    asm = "".join(m.inspect_source("asm") for m in [ex.mod] + list(ex.mod.imports) if m.kind == "llvm")
    assert "vfmadd" in asm and "zmm" in asm, "no AVX-512 FMA in the dense kernel"
