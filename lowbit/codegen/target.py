"""Compilation targets: ``auto`` (this host), ``cpu``, ``cuda`` (with ``arch``), or a TVM target JSON.

TVM 0.27's own host detection reports "rocketlake" on Sapphire Rapids VMs, so x86 features are read from
/proc/cpuinfo instead.

>>> resolve_target('{"kind": "llvm", "mcpu": "haswell", "num-cores": 4}')["mcpu"]
'haswell'
"""
from __future__ import annotations

import json

from ..errors import LowbitError
from ..runtime.host import host_cores, host_mcpu

DEFAULT_CUDA_ARCH = "sm_90a"


def cpu_target() -> dict:
    return {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": host_cores()}


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> dict:
    # The limits MetaSchedule and dlight need (H100/H200 class); codegen itself only reads arch.
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32, "registers_per_block": 65536,
            "host": {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": host_cores()}}


def resolve_target(spec: str | dict | None) -> dict:
    """A target JSON dict for ``auto`` / ``cpu`` / ``cuda`` / ``cuda:sm_80`` / a JSON string or dict."""
    if spec is None or spec in ("auto", "cpu", "llvm"):
        return cpu_target()
    if isinstance(spec, dict):
        target = dict(spec)
    elif spec == "cuda" or spec.startswith("cuda:"):
        return cuda_target(spec.split(":", 1)[1] if ":" in spec else DEFAULT_CUDA_ARCH)
    else:
        try:
            target = json.loads(spec)
        except json.JSONDecodeError:
            raise LowbitError(f"unknown target '{spec}' (use auto, cpu, cuda, cuda:sm_XX or a TVM target JSON)") from None
        if not isinstance(target, dict):
            raise LowbitError(f"target JSON must be an object, got {spec}")
    if target.get("kind") not in ("llvm", "cuda"):
        raise LowbitError(f"target kind '{target.get('kind')}' is not supported (llvm and cuda are)")
    if target["kind"] == "llvm":
        target.setdefault("num-cores", host_cores())
    return target


def tvm_target(target: dict):
    import tvm

    try:
        return tvm.target.Target(target)
    except Exception as e:  # TVM raises its own error types for bad keys
        raise LowbitError(f"TVM rejects target {json.dumps(target)}: {str(e).splitlines()[0]}") from None
