"""Code generation: IR → Relax (``lower.py``) → TVM build → an ``Artifact``.

>>> art = lowbit.compile("examples/tiny_cnn.onnx", target="cpu")   # doctest: +SKIP
>>> art.save("tiny_cnn.lbit")                                     # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from .. import __version__
from ..errors import LowbitError
from ..progress import Progress
from ..runtime.artifact import LIBRARY, sha256, write_artifact
from ..runtime.host import enable_amx, uses_amx
from .lower import to_relax
from .target import resolve_target, tvm_target

COMPUTE_OPS = {"conv2d", "conv_transpose2d", "matmul", "gemm", "qconv2d", "qmatmul"}


class Artifact:
    """A compiled model in memory: the manifest and the member files; ``save`` writes the one-file artifact."""

    def __init__(self, manifest: dict, members: dict[str, bytes]):
        self.manifest, self.members = manifest, members

    def save(self, path) -> None:
        write_artifact(path, self.manifest, self.members)


def _io_spec(values, names) -> list[dict]:
    out = []
    for v, n in zip(values, names):
        spec = {"name": n, "shape": list(v.type.shape), "dtype": v.type.dtype.name}
        if v.type.quant is not None:
            spec["quant"] = str(v.type.quant)
        out.append(spec)
    return out


def layer_precision(graph) -> list[dict]:
    """One record per compute op: its name, op, activation dtype and weight dtype."""
    layers = []
    for i, op in enumerate(graph.ops):
        if op.opname not in COMPUTE_OPS:
            continue
        w = op.operands[1].type
        layers.append({"name": op.loc or f"{op.opname}_{i}", "op": op.opname,
                       "input": op.operands[0].type.dtype.name, "weight": w.dtype.name,
                       "output": op.result.type.dtype.name})
    return layers


def _fuse(mod):
    from tvm import relax

    mod = relax.transform.CanonicalizeBindings()(mod)
    mod = relax.transform.LegalizeOps()(mod)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FoldConstant()(mod)
    mod = relax.transform.FuseOps()(mod)
    return relax.transform.FuseTIR()(mod)


def vector_rounding() -> None:
    """Let TVM vectorize ``nearbyint`` (round half to even, every requantization): TVM 0.27 leaves the op without
    ``TVectorizable``, so a vectorized loop that rounds is scalarized, though ``llvm.nearbyint`` takes vectors."""
    import tvm

    if not tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable"):
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


def lrint(x):
    """x (f32) rounded half to even to i32 in one instruction (``vcvtps2dq``; the default rounding mode), for
    hand-written CPU kernels; the same result as ``i32(nearbyint(x))``, which LLVM emits as two."""
    from tvm import tirx

    return tirx.call_llvm_pure_intrin("int32", "llvm.lrint", x)


# How a CPU build runs its Relax program: "compiled" (machine code: a model makes ~100 kernel calls a run, and
# the bytecode interpreter's dispatch shows) or "bytecode" (what benchmarks/kernel_profile.py needs: the VM's
# instrument hook, which times every kernel call, exists only there).
VM_EXEC_MODE = "compiled"


def _build_cpu(mod, target):
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from .schedules import default_rules

    vector_rounding()
    t = tvm_target(target)
    mod = _fuse(mod)
    with t:
        mod = dl.ApplyDefaultSchedule(*default_rules())(mod)
    return relax.build(mod, t, exec_mode=VM_EXEC_MODE)


def _build_cuda(mod, target):
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    t = tvm_target(target)
    mod = _fuse(mod)
    with t:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return tvm.compile(mod, t)


def _cuda_device_code(ex, target) -> dict[str, bytes]:
    """Compile every CUDA source module of the executable to a fatbin with nvcc, keyed by source sha256."""
    import tvm
    from tvm.support import nvcc

    blobs, seen, stack = {}, set(), [ex.mod]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        stack.extend(m.imports)
        if m.kind == "cuda":
            src = m.inspect_source()
            with tvm.target.Target({"kind": "cuda", "arch": target["arch"]}):
                try:
                    fatbin = nvcc.compile_cuda(src, target_format="fatbin", compiler="nvcc")
                except Exception as e:
                    raise LowbitError(f"nvcc could not compile the CUDA kernels: {str(e).splitlines()[0]}") from None
            blobs[f"cuda/{sha256(src.encode())}.fatbin"] = bytes(fatbin)
    if not blobs:
        raise LowbitError("the CUDA build produced no device code")
    return blobs


def compile(graph_or_path, target="auto", pipeline="O2", *, shapes=None, progress=None, calibration=None,
            report: bool = False) -> Artifact:
    """Import (if given a path), run ``pipeline``, lower to TVM, build for ``target``; return an Artifact.

    ``calibration`` feeds passes that need data (``quantize``): an .npz path, a directory of them, or an
    iterable of ``{input name: array}``. ``report`` records per-layer SQNR and cosine of every integer op
    against the same pipeline without ``quantize``/``lower-qdq`` (on up to 4 calibration samples) in the
    manifest's ``quant_report``."""
    import tvm

    from ..frontend import load
    from ..ir.graph import Graph
    from ..passes import PassContext, parse_pipeline, run_pipeline

    prog = progress if isinstance(progress, Progress) else Progress(progress)
    t_start = time.perf_counter()
    target = resolve_target(target)
    passes = parse_pipeline(pipeline)
    if isinstance(graph_or_path, Graph):
        graph = graph_or_path
    else:
        with prog.step("importing"):
            graph = load(graph_or_path, shapes=shapes)
    if report and calibration is None:
        raise LowbitError("--report compares against float on calibration data: give --calib")
    source = graph
    if calibration is not None:  # read (and checked) once, for the quantize pass and the report
        from ..quant.calibrate import load_samples

        calibration = load_samples(calibration, source)
    with prog.step(f"running passes ({str(passes) or 'none'})"):
        graph = run_pipeline(source, passes, PassContext(calibration=calibration))
    quant_report = None
    if report:
        from ..quant.report import layer_report

        with prog.step("measuring per-layer quantization error"):
            reference = run_pipeline(source, [p for p in passes if p.name not in ("quantize", "lower-qdq")])
            quant_report = layer_report(reference, graph, calibration)
    with prog.step("lowering to TVM Relax"):
        amx = uses_amx(target)
        if amx:
            enable_amx()  # so this process can run what it builds
        mod = to_relax(graph, blocked_layout=target["kind"] == "llvm", amx=amx)
    with prog.step(f"building for {target['kind']} ({target.get('arch') or target.get('mcpu')})"):
        try:
            ex = _build_cuda(mod, target) if target["kind"] == "cuda" else _build_cpu(mod, target)
        except LowbitError:
            raise
        except Exception as e:
            raise LowbitError(f"TVM could not build the model: {str(e).strip().splitlines()[-1]}") from None
    members = {}
    if target["kind"] == "cuda":
        with prog.step("compiling CUDA device code with nvcc"):
            members.update(_cuda_device_code(ex, target))
    with prog.step("exporting the library"):
        with tempfile.TemporaryDirectory() as d:
            lib = os.path.join(d, "model.so")
            ex.export_library(lib)
            with open(lib, "rb") as f:
                members[LIBRARY] = f.read()
    manifest = {
        "name": graph.name,
        "inputs": _io_spec(graph.inputs, [v.name for v in graph.inputs]),
        "outputs": _io_spec(graph.outputs, graph.output_names),
        "target": target,
        "pipeline": str(passes),
        "layers": layer_precision(graph),
        "versions": {"lowbit": __version__, "tvm": tvm.__version__, "python": platform.python_version()},
        "compile_seconds": round(time.perf_counter() - t_start, 3),
    }
    if quant_report is not None:
        manifest["quant_report"] = quant_report
    return Artifact(manifest, members)


__all__ = ["Artifact", "compile", "resolve_target", "to_relax"]
