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


def cpu_target(amx=None):
    """This CPU as a lowbit Target; ``amx`` False turns AMX off (``-amx-int8``), True requires it."""
    from lowbit.codegen import Target

    host = Target.parse("cpu")
    if amx is False and host.has("amx_int8"):
        return Target.parse({**host.to_json(), "mattr": ["-amx-int8"]})
    if amx and not host.has("amx_int8"):
        pytest.skip("this CPU has no AMX-INT8")
    return host


def build_and_run(graph, inputs, amx=None, config=None):
    """lowbit's CPU build (blocked layout, fusion, default schedules) as compile() does it, run in-process;
    ``amx`` True/False forces the integer kernels onto AMX tiles or off them (None: as compile() decides)."""
    import tvm
    from tvm import relax

    from lowbit.codegen import build_module

    ex = build_module(graph, cpu_target(amx), config)
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
