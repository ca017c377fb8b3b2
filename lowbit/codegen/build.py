"""Code generation's entry: an optimized Graph → Relax (``lower.py``) → TVM build for a ``Target`` → an
``Artifact`` with its manifest. Knows no file formats and no passes (``lowbit.compiler`` is the driver).

>>> art = build(graph, Target.parse("cpu"), CodegenConfig())   # doctest: +SKIP
"""
from __future__ import annotations

import os
import platform
import tempfile

from .. import __version__
from ..errors import LowbitError
from ..progress import Progress
from ..ir.registry import ops_with
from ..runtime.artifact import LIBRARY, sha256, write_artifact
from ..runtime.host import cpu_flags, enable_amx
from .config import CodegenConfig
from .intrinsics import vector_rounding
from .lower import to_relax
from .lowering import table_codes
from .stack import short_stack
from .target import CudaTarget, Target


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
    compute = ops_with("compute")
    layers = []
    for i, op in enumerate(graph.ops):
        if op.opname not in compute:
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


@short_stack
def schedule(graph, target: Target, config: CodegenConfig | None = None, kernels: list | None = None,
             log: list | None = None, lower_options: dict | None = None):
    """The IRModule of ``graph`` lowered, fused and scheduled for ``target``, before LLVM/CUDA code generation
    (``kernels``, when given, receives the kernel choices, as the manifest records them; ``log`` the schedule
    rules' reasons for declining; ``lower_options``: ``to_relax``'s keyword options, for the autotuner)."""
    from tvm.s_tir import dlight as dl

    config = config or CodegenConfig()
    target = Target.parse(target)
    vector_rounding()
    mod, chosen = to_relax(graph, target, config, **(lower_options or {}))
    if kernels is not None:
        kernels.extend(chosen)
    mod = _fuse(mod)
    with target.tvm():
        if isinstance(target, CudaTarget):
            mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                          dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
        else:
            from .schedules import default_rules

            mod = dl.ApplyDefaultSchedule(*default_rules(target, config, log))(mod)
    return mod


def build_module(graph, target, config: CodegenConfig | None = None, kernels: list | None = None,
                 log: list | None = None, lower_options: dict | None = None):
    """The TVM executable of ``graph`` for ``target`` (run in-process with ``tvm.relax.VirtualMachine``)."""
    import tvm
    from tvm import relax

    config = config or CodegenConfig()
    target = Target.parse(target)
    if any(target.has(f) and f in cpu_flags() for f in ("amx_int8", "amx_bf16")):
        enable_amx()  # so this process can run what it builds (cross-compiling needs no AMX)
    mod = schedule(graph, target, config, kernels, log, lower_options)
    try:
        if isinstance(target, CudaTarget):
            return tvm.compile(mod, target.tvm())
        return relax.build(mod, target.tvm(), exec_mode=config.vm_exec_mode)
    except LowbitError:
        raise
    except Exception as e:
        raise LowbitError(f"TVM could not build the model: {str(e).strip().splitlines()[-1]}") from None


def _cuda_device_code(ex, target: CudaTarget) -> dict[str, bytes]:
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
            with tvm.target.Target({"kind": "cuda", "arch": target.arch}):
                try:
                    fatbin = nvcc.compile_cuda(src, target_format="fatbin", compiler="nvcc")
                except Exception as e:
                    raise LowbitError(f"nvcc could not compile the CUDA kernels: {str(e).splitlines()[0]}") from None
            blobs[f"cuda/{sha256(src.encode())}.fatbin"] = bytes(fatbin)
    if not blobs:
        raise LowbitError("the CUDA build produced no device code")
    return blobs


def build(graph, target, config: CodegenConfig | None = None, progress=None, schedule_log: list | None = None) -> Artifact:
    """``graph`` (already through its pipeline) built for ``target`` into an Artifact whose manifest records
    the target, every codegen knob and the kernel chosen for every op."""
    import tvm

    prog = progress if isinstance(progress, Progress) else Progress(progress)
    config = CodegenConfig.parse(config)
    target = Target.parse(target)
    kernels: list = []
    tables: list = []
    with prog.step(f"building for {target.describe()}"):
        ex = build_module(graph, target, config, kernels, schedule_log, {"table_weights": tables})
    members, table_specs = {}, []
    for i, (var, a, values) in enumerate(tables):
        name = f"weights/{i}.u4"
        members[name] = table_codes(a, values)
        table_specs.append({"param": str(var.name), "member": name, "shape": list(a.shape),
                            "values": [int(v) for v in values]})
    if isinstance(target, CudaTarget):
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
        "target": target.to_json(),
        "pipeline": "",
        "layers": layer_precision(graph),
        "codegen": config.as_dict(),
        "kernels": kernels,
        "table_weights": table_specs,
        "versions": {"lowbit": __version__, "tvm": tvm.__version__, "python": platform.python_version()},
    }
    return Artifact(manifest, members)


__all__ = ["Artifact", "build", "build_module", "schedule", "layer_precision"]
