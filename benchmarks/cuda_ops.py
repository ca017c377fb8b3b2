"""Every op case of tests/test_interp_vs_onnxruntime.py, lowered for CUDA and checked on a GPU.

All single-node cases are merged into one graph (inputs and outputs prefixed with the case name), so one
build and one nvcc call cover every lowering rule.

    python benchmarks/cuda_ops.py prepare DIR     # CPU machine: build DIR/ops.lbit, inputs, reference outputs
    python benchmarks/cuda_ops.py run DIR         # GPU machine (TVM runtime only): compare, print failures
"""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOOSE = 1e-4  # TVM's CUDA transcendental functions (erf, exp, tanh...) are not correctly rounded
STRICT = 1e-5


def prepare(d: pathlib.Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    import lowbit
    from helpers import single_node_model
    from lowbit.ir import Graph
    from lowbit.ir.graph import Op
    from test_interp_vs_onnxruntime import CASES, _inputs_order

    big = Graph("cuda_ops")
    inputs, outs, names = {}, [], []
    for case in CASES:
        name, op_type, ins, consts, attrs, opset, n_out = case
        g = lowbit.load(single_node_model(op_type, ins, consts, attrs, opset, n_out,
                                          _inputs_order(ins, consts, op_type)))
        vmap = {}
        for v in g.inputs:
            vmap[id(v)] = big.add_input(f"{name}/{v.name}", v.type)
            inputs[f"{name}/{v.name}"] = ins[v.name]
        for op in g.ops:
            new = Op(op.opname, [vmap[id(v)] for v in op.operands], op.attrs, [r.type for r in op.results],
                     f"{name}/{op.loc}" if op.loc else name)
            big.insert(new)
            vmap.update({id(r): nr for r, nr in zip(op.results, new.results)})
        for v, n in zip(g.outputs, g.output_names):
            outs.append(vmap[id(v)])
            names.append(f"{name}/{n}")
    big.set_outputs(outs, names)
    big.verify()
    ref = lowbit.interpret(big, inputs)
    d.mkdir(parents=True, exist_ok=True)
    lowbit.compile(big, target="cuda", pipeline="", progress=True).save(d / "ops.lbit")
    np.savez(d / "ops.inputs.npz", **inputs)
    np.savez(d / "ops.ref.npz", **ref)
    print(f"prepared {len(CASES)} cases, {len(big.ops)} ops")


def run(d: pathlib.Path) -> int:
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.path.insert(0, str(ROOT))
    import lowbit.runtime

    m = lowbit.runtime.load(d / "ops.lbit")
    got = m.run(dict(np.load(d / "ops.inputs.npz")))
    ref = dict(np.load(d / "ops.ref.npz"))
    bad = 0
    for k, want in ref.items():
        g = got[k]
        if np.issubdtype(want.dtype, np.floating):
            scale = float(np.max(np.abs(want))) if want.size else 1.0
            err = float(np.max(np.abs(g.astype(np.float64) - want))) / (scale or 1.0) if want.size else 0.0
            ok = err <= LOOSE
            if not ok or err > STRICT:
                print(f"{'FAIL' if not ok else 'loose'} {k}: max rel err {err:.3g}")
        else:
            ok = g.dtype == want.dtype and np.array_equal(g, want)
            if not ok:
                print(f"FAIL {k}: integer results differ")
        bad += not ok
    print(f"{len(ref) - bad} of {len(ref)} outputs match the interpreter on CUDA")
    return 1 if bad else 0


if __name__ == "__main__":
    step, d = sys.argv[1], pathlib.Path(sys.argv[2])
    sys.exit(prepare(d) if step == "prepare" else run(d))
