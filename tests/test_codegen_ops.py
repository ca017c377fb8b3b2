"""Every op case of the onnxruntime table, lowered to TVM and built for the CPU with lowbit's default
schedules, against the interpreter.

Integer results must be identical; float results within 1e-5 relative (1e-4 for the transcendental
functions TVM approximates with its own polynomials).
"""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, single_node_model
import cases_math
import cases_tensor
from test_interp_vs_onnxruntime import CASES, _inputs_order

LOOSER = {"erf", "gelu-erf", "gelu-tanh", "tanh", "sigmoid", "exp", "log", "softplus", "sin", "cos", "elu",
          "layernorm", "layernorm-axis1", "softmax-13", "softmax-11-coerced", "logsoftmax", "lrn-odd", "pow-float"}
LOOSER |= cases_math.LOOSER | cases_tensor.LOOSER


# kernel families a test can force, by the features they turn off (``mattr``); each needs its instruction
FAMILIES = {"amx": ([], "amx_int8"), "vnni": (["-amx-int8"], "avx512_vnni"),
            "avx-vnni": (["-amx-int8", "-avx512f"], "avx_vnni"),  # 256-bit VNNI: AVX-512 off
            "base": (["-amx-int8", "-avx512vnni", "-avxvnni"], None)}
_FLAG = {"-amx-int8": "amx_int8", "-avx512vnni": "avx512_vnni", "-avx512f": "avx512f", "-avxvnni": "avx_vnni"}


def cpu_target(family=None):
    """This CPU as a lowbit Target, or with features turned off so that the integer kernels of ``family`` run:
    ``amx``, ``vnni`` (AMX off), ``avx-vnni`` (AMX and AVX-512 off; AVX-VNNI forced on where the CPU executes
    it though /proc/cpuinfo hides it) or ``base`` (AMX and VNNI off: the dot4 and generic kernels). Skips the
    test where this CPU lacks the family's instruction."""
    from helpers import instruction_runs
    from lowbit.codegen import Target

    host = Target.parse("cpu")
    if family is None:
        return host
    off, need = FAMILIES[family]
    mattr = [f for f in off if host.has(_FLAG[f])]
    if need == "avx_vnni" and not host.has(need) and host.has("avx2") and instruction_runs(need):
        mattr.append("+avxvnni")
    elif need is not None and not host.has(need):
        pytest.skip(f"this CPU has no {need}")
    return Target.parse({**host.to_json(), "mattr": mattr}) if mattr else host


def build_and_run(graph, inputs, family=None, config=None):
    """lowbit's CPU build (blocked layout, fusion, default schedules) as compile() does it, run in-process;
    ``family`` forces the integer kernels of one family (``cpu_target``); None: as compile() decides."""
    import tvm
    from tvm import relax

    from lowbit.codegen import build_module

    ex = build_module(graph, cpu_target(family), config)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(inputs[v.name]) for v in graph.inputs])
    return {n: o.numpy() for n, o in zip(graph.output_names, out)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_codegen_matches_interpreter(case):
    name, op_type, inputs, consts, attrs, opset, n_out = case
    model = single_node_model(op_type, inputs, consts, attrs, opset, n_out, _inputs_order(inputs, consts, op_type))
    g = lowbit.load(model)
    want = lowbit.interpret(g, inputs)
    got = build_and_run(g, inputs)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        if np.issubdtype(w.dtype, np.floating):
            tol = 1e-4 if name in LOOSER else 1e-5
            assert max_rel_err(got[k], w) <= tol, f"{k}: {max_rel_err(got[k], w)}"
        else:
            np.testing.assert_array_equal(got[k], w)


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keep", [([1], 0), ([0, 2], 1), (None, 0)])
def test_float_extrema_of_infinite_rows(op_type, axes, keep):
    """A row of -inf (+inf) reduces to -inf (+inf), as numpy: TOPI's max/min start from the largest finite value."""
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    x[1], x[0, 2] = -np.inf, np.inf
    consts = {"axes": np.array(axes, np.int64)} if axes else {}
    g = lowbit.load(single_node_model(op_type, {"x": x}, consts, {"keepdims": keep}, 18))
    want = lowbit.interpret(g, {"x": x})
    got = build_and_run(g, {"x": x})
    for k, w in want.items():
        assert got[k].shape == w.shape
        np.testing.assert_array_equal(got[k], w)
