"""Compilation targets: what the code generator may use, in one object.

``Target.parse`` takes ``auto`` / ``cpu`` (this host), ``cuda`` / ``cuda:sm_80``, or a TVM target JSON object
(a dict or its text). An x86 target knows its CPU features (cpuinfo names: ``avx512_vnni``, ``amx_int8``),
vector width, caches and cores; ``mattr`` turns features off (``"mattr": ["-amx-int8"]``) so any machine can
build — and test — every kernel family it can execute. Kernel families are chosen from features
(``Target.has``), never from CPU names. A new architecture (ARM NEON/SDOT) is a new subclass here plus its
kernel families.

TVM 0.27's own host detection reports "rocketlake" on Sapphire Rapids VMs, so the host's features come from
``lowbit.runtime.host`` (/proc/cpuinfo), which the runtime also uses to check an artifact's needs.

>>> t = Target.parse('{"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-int8"], "num-cores": 4}')
>>> t.has("avx512_vnni"), t.has("amx_int8"), t.cores
(True, False, 4)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import LowbitError
from ..runtime import host

DEFAULT_CUDA_ARCH = "sm_90a"
# per-core caches assumed for a target that is not this host (Sapphire Rapids-class sizes)
DEFAULT_CACHES = {"l1d": 48 << 10, "l2": 2 << 20}


@dataclass(frozen=True)
class Target:
    """Base of every target: ``kind`` ("llvm", "cuda") and its TVM target JSON."""

    kind: str

    @staticmethod
    def parse(spec) -> "Target":
        """A Target from ``auto``/``cpu``/``llvm``/None (this CPU), ``cuda``/``cuda:sm_XX``, a JSON object (dict
        or text), or a Target (returned as it is)."""
        if isinstance(spec, Target):
            return spec
        if spec is None or spec in ("auto", "cpu", "llvm"):
            return X86Target.host()
        if isinstance(spec, dict):
            obj = dict(spec)
        elif isinstance(spec, str) and (spec == "cuda" or spec.startswith("cuda:")):
            return CudaTarget.make(spec.split(":", 1)[1] if ":" in spec else DEFAULT_CUDA_ARCH)
        else:
            try:
                obj = json.loads(spec)
            except (json.JSONDecodeError, TypeError):
                raise LowbitError(f"unknown target '{spec}' (use auto, cpu, cuda, cuda:sm_XX or a TVM target JSON)") from None
            if not isinstance(obj, dict):
                raise LowbitError(f"target JSON must be an object, got {spec}")
        if obj.get("kind") == "llvm":
            return X86Target.from_json(obj)
        if obj.get("kind") == "cuda":
            return CudaTarget.from_json(obj)
        raise LowbitError(f"target kind '{obj.get('kind')}' is not supported (llvm and cuda are)")

    def to_json(self) -> dict:
        raise NotImplementedError

    def has(self, feature: str) -> bool:
        return False

    def tvm(self):
        """The TVM target; TVM's own errors become one line naming the JSON."""
        import tvm

        js = self.to_json()
        try:
            return tvm.target.Target(js)
        except Exception as e:  # TVM raises its own error types for bad keys
            raise LowbitError(f"TVM rejects target {json.dumps(js)}: {str(e).splitlines()[0]}") from None

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class X86Target(Target):
    """An x86-64 CPU: LLVM ``mcpu``, the features code may use (cpuinfo names), cores, caches (bytes)."""

    mcpu: str = "x86-64"
    features: frozenset = frozenset()
    cores: int = 1
    mattr: tuple = ()
    caches: dict = field(default_factory=lambda: dict(DEFAULT_CACHES), compare=False)
    extra: tuple = ()  # other target JSON keys, passed to TVM as given: ((key, value), ...)

    @staticmethod
    def host() -> "X86Target":
        """This CPU: the best ``mcpu`` its flags allow, plus ``mattr`` for flags assumed past it
        (``$LOWBIT_ASSUME_CPU_FEATURES``)."""
        mcpu = host.host_mcpu()
        mattr = tuple(host.assumed_mattr(mcpu))
        return X86Target("llvm", mcpu, frozenset(host.required_features({"mcpu": mcpu, "mattr": list(mattr)})),
                         host.host_cores(), mattr, caches=host.host_caches() or dict(DEFAULT_CACHES))

    @staticmethod
    def from_json(obj: dict) -> "X86Target":
        obj = dict(obj)
        obj.pop("kind", None)
        mcpu = obj.pop("mcpu", None) or host.host_mcpu()
        mattr = obj.pop("mattr", ())
        if isinstance(mattr, str):
            mattr = [m for m in mattr.split(",") if m]
        if not isinstance(mattr, (list, tuple)) or not all(isinstance(m, str) for m in mattr):
            raise LowbitError(f"target 'mattr' must be a list of LLVM features like \"-amx-int8\", got {mattr!r}")
        cores = obj.pop("num-cores", None)
        cores = host.host_cores() if cores is None else cores
        if not isinstance(cores, int) or cores < 1:
            raise LowbitError(f"target 'num-cores' must be a positive integer, got {cores!r}")
        features = frozenset(host.required_features({"mcpu": mcpu, "mattr": list(mattr)}))
        this_host = mcpu == host.host_mcpu()
        caches = host.host_caches() if this_host else {}
        return X86Target("llvm", mcpu, features, cores, tuple(mattr), caches or dict(DEFAULT_CACHES),
                         tuple(sorted((k, v) for k, v in obj.items() if k != "host")))

    def to_json(self) -> dict:
        js = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.cores}
        if self.mattr:
            js["mattr"] = list(self.mattr)
        js.update(dict(self.extra))
        return js

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def vector_bytes(self) -> int:
        """Bytes in one SIMD register the code may use: 64 with AVX-512, 32 with AVX2, else 16."""
        return 64 if self.has("avx512f") else 32 if self.has("avx2") else 16

    def describe(self) -> str:
        off = f", {' '.join(self.mattr)}" if self.mattr else ""
        return f"llvm ({self.mcpu}{off})"


@dataclass(frozen=True)
class CudaTarget(Target):
    """An NVIDIA GPU of compute capability ``arch`` (``sm_90a``) with its x86 ``host``."""

    arch: str = DEFAULT_CUDA_ARCH
    host: X86Target | None = None
    limits: tuple = ()  # the keys MetaSchedule and dlight read (max_threads_per_block, ...)

    @staticmethod
    def make(arch: str = DEFAULT_CUDA_ARCH) -> "CudaTarget":
        # The limits MetaSchedule and dlight need (H100/H200 class); codegen itself only reads arch.
        return CudaTarget("cuda", arch, X86Target.host(),
                          (("max_threads_per_block", 1024), ("max_shared_memory_per_block", 49152),
                           ("thread_warp_size", 32), ("registers_per_block", 65536)))

    @staticmethod
    def from_json(obj: dict) -> "CudaTarget":
        obj = dict(obj)
        obj.pop("kind", None)
        arch = obj.pop("arch", DEFAULT_CUDA_ARCH)
        h = obj.pop("host", None)
        hst = X86Target.from_json(h) if isinstance(h, dict) else X86Target.host()
        return CudaTarget("cuda", arch, hst, tuple(sorted(obj.items())))

    def to_json(self) -> dict:
        js = {"kind": "cuda", "arch": self.arch}
        js.update(dict(self.limits))
        js["host"] = self.host.to_json() if self.host else X86Target.host().to_json()
        return js

    @property
    def sm(self) -> int:
        digits = "".join(c for c in self.arch if c.isdigit())
        return int(digits) if digits else 0

    def has(self, feature: str) -> bool:
        return feature == "tensor_cores" and self.sm >= 70

    def describe(self) -> str:
        return f"cuda ({self.arch})"


def resolve_target(spec) -> dict:
    """The target JSON (as the manifest records it) for any spec ``Target.parse`` takes."""
    return Target.parse(spec).to_json()


__all__ = ["Target", "X86Target", "CudaTarget", "resolve_target", "DEFAULT_CUDA_ARCH"]
