"""Shared test helpers: single-node ONNX models, onnxruntime runs, error metrics."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

NP_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: onnx.TensorProto.FLOAT, np.float16: onnx.TensorProto.FLOAT16, np.int64: onnx.TensorProto.INT64,
    np.int32: onnx.TensorProto.INT32, np.int8: onnx.TensorProto.INT8, np.uint8: onnx.TensorProto.UINT8,
    np.bool_: onnx.TensorProto.BOOL, np.float64: onnx.TensorProto.DOUBLE}.items()}


def single_node_model(op_type: str, inputs: dict, consts: dict | None = None, attrs: dict | None = None,
                      opset: int = 17, n_out: int = 1, input_order: list | None = None) -> bytes:
    """One node reading ``inputs`` (graph inputs) and ``consts`` (initializers); empty names skip a slot."""
    consts = consts or {}
    order = input_order or list(inputs) + list(consts)
    node = helper.make_node(op_type, order, [f"out{i}" for i in range(n_out)], name="node0", **(attrs or {}))
    g = helper.make_graph(
        [node], "single",
        [helper.make_tensor_value_info(k, NP_TO_ONNX[v.dtype], v.shape) for k, v in inputs.items()],
        [onnx.ValueInfoProto(name=f"out{i}") for i in range(n_out)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 18 else 10
    return m.SerializeToString()


def run_ort(model: bytes, inputs: dict) -> dict:
    so = ort.SessionOptions()
    # The ONNX semantics, op by op: onnxruntime's graph optimizer would, e.g., turn QDQ pairs into integer
    # kernels whose rounding differs from the spec's float simulation.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if want.size == 0:
        return 0.0
    scale = np.max(np.abs(want))
    diff = np.max(np.abs(got - want))
    return float(diff / scale) if scale > 0 else float(diff)


# machine code of one instruction of each family (then ``ret``), run by ``instruction_runs``
_PROBES = {"avx512_bf16": bytes.fromhex("62f27e4852c0c3"),  # vdpbf16ps zmm0, zmm0, zmm0
           "avx_vnni": bytes.fromhex("c4e27d50c0c3")}  # {vex} vpdpbusd ymm0, ymm0, ymm0
_RUNS: dict = {}


def instruction_runs(feature: str) -> bool:
    """Whether this CPU executes ``feature``'s instruction, whatever /proc/cpuinfo says (a hypervisor may hide
    a flag the silicon has): the instruction is run in a child process, where an illegal instruction kills only
    the child. Tests use it to force a kernel family on (``mattr: +...``) that the CPU can execute."""
    if feature not in _RUNS:
        import subprocess
        import sys
        code = ("import ctypes, mmap; m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC);"
                f"m.write({_PROBES[feature]!r}); a = ctypes.addressof(ctypes.c_char.from_buffer(m));"
                "ctypes.CFUNCTYPE(None)(a)()")
        _RUNS[feature] = subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    return _RUNS[feature]
