"""Every op case of the onnxruntime table, lowered to TVM and built for the CPU with lowbit's default
schedules, against the interpreter.

Integer results must be identical; float results within 1e-5 relative (1e-4 for the transcendental
functions TVM approximates with its own polynomials).
"""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err, single_node_model
from test_interp_vs_onnxruntime import CASES, _inputs_order

LOOSER = {"erf", "gelu-erf", "gelu-tanh", "tanh", "sigmoid", "exp", "log", "softplus", "sin", "cos", "elu",
          "layernorm", "layernorm-axis1", "softmax-13", "softmax-11-coerced", "logsoftmax", "lrn-odd", "pow-float"}


def build_and_run(graph, inputs, amx=None):
    """lowbit's CPU build (blocked layout, fusion, default schedules) as compile() does it, run in-process;
    ``amx`` True/False forces the integer kernels onto AMX tiles or off them (None: as compile() decides)."""
    import tvm
    from tvm import relax

    from lowbit.codegen import _build_cpu
    from lowbit.codegen.lower import to_relax
    from lowbit.codegen.target import resolve_target
    from lowbit.runtime.host import enable_amx, uses_amx

    target = resolve_target("cpu")
    amx = uses_amx(target) if amx is None else amx
    if amx:
        enable_amx()
    ex = _build_cpu(to_relax(graph, blocked_layout=True, amx=amx), target)
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
