"""What this host can run: x86 CPU features (from /proc/cpuinfo), caches, core count — and which features code
built for a target needs. The one place that reads the hardware; the runtime checks an artifact with it (no
compiler needed), and the code generator's ``Target`` (``lowbit.codegen.target``) is built from it.

Features are named as /proc/cpuinfo names them (``avx512_vnni``, ``amx_int8``); LLVM's ``mattr`` names
(``+avx512vnni``, ``-amx-int8``) map onto them through ``MATTR_FLAGS``.

>>> sorted(required_features({"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-int8", "-amx-bf16"]}))[:3]
['avx512_bf16', 'avx512_vnni', 'avx512bw']
"""
from __future__ import annotations

import functools
import os
import platform

_AVX512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
# LLVM CPU names lowbit targets, with the /proc/cpuinfo flags code built for them needs, best first.
MCPU_FLAGS = {
    "sapphirerapids": _AVX512 | {"avx512_vnni", "avx512vbmi", "avx512_vbmi2", "avx512_bf16", "amx_tile", "amx_int8",
                                 "amx_bf16"},
    "znver4": _AVX512 | {"avx512_vnni", "avx512vbmi", "avx512_vbmi2", "avx512_bf16"},
    "cascadelake": _AVX512 | {"avx512_vnni"},
    "skylake-avx512": set(_AVX512),
    "alderlake": {"avx2", "fma", "avx_vnni"},
    "haswell": {"avx2", "fma"},
    "x86-64": set(),
}
# LLVM target features (``mattr`` entries, without the sign) and the cpuinfo flag each one is.
MATTR_FLAGS = {
    "amx-int8": "amx_int8", "amx-bf16": "amx_bf16", "amx-tile": "amx_tile", "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16", "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512cd": "avx512cd", "avxvnni": "avx_vnni",
    "avx2": "avx2", "fma": "fma",
}
# features whose absence removes the ones that build on them (turning off AVX-512 turns off VNNI-512 too)
_IMPLIED_BY = {"avx512f": {"avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512vbmi",
                           "avx512_vbmi2", "avx512_bf16"},
               "amx_tile": {"amx_int8", "amx_bf16"}, "avx2": {"avx_vnni"}}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """The first processor's /proc/cpuinfo fields (read once: they do not change while a process runs)."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break  # the end of the first processor's block
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


ASSUME_ENV = "LOWBIT_ASSUME_CPU_FEATURES"


def assumed_flags() -> set[str]:
    """Flags named in ``$LOWBIT_ASSUME_CPU_FEATURES`` (comma-separated cpuinfo names, e.g. ``avx512_bf16``): for a
    CPU that executes an instruction its hypervisor hides from /proc/cpuinfo. Taken as the user's word: code
    built with them dies of an illegal instruction where the silicon lacks them."""
    return {f.strip() for f in os.environ.get(ASSUME_ENV, "").split(",") if f.strip()}


def cpu_flags() -> set[str]:
    """/proc/cpuinfo's flags, and the assumed ones."""
    return set(_cpuinfo().get("flags", "").split()) | assumed_flags()


def assumed_mattr(mcpu: str) -> list[str]:
    """LLVM ``mattr`` entries (``+avx512bf16``) for the assumed flags that ``mcpu`` does not already imply."""
    have = MCPU_FLAGS.get(mcpu, set())
    return sorted(f"+{name}" for name, flag in MATTR_FLAGS.items() if flag in assumed_flags() - have)


def cpu_vendor() -> str:
    return _cpuinfo().get("vendor_id", "")


def cpu_model_name() -> str:
    """The CPU's marketing name, as /proc/cpuinfo gives it (what every benchmark figure names)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def host_mcpu(flags: set[str] | None = None, vendor: str | None = None) -> str:
    """The best LLVM CPU name in MCPU_FLAGS whose features this host has (x86); 'generic' elsewhere. AMD's
    AVX-512 parts are ``znver4`` (LLVM's Intel names would turn off VBMI and BF16 there)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic"
    flags = cpu_flags() if flags is None else flags
    amd = (cpu_vendor() if vendor is None else vendor) == "AuthenticAMD"
    for mcpu, need in MCPU_FLAGS.items():
        if (mcpu == "znver4") != amd and mcpu in ("znver4", "sapphirerapids"):
            continue
        if need <= flags:
            return mcpu
    return "x86-64"


def _without(features: set[str], flag: str) -> set[str]:
    out = features - {flag}
    for dep in _IMPLIED_BY.get(flag, ()):
        out = _without(out, dep)
    return out


def apply_mattr(features: set[str], mattr) -> set[str]:
    """``features`` with LLVM ``mattr`` entries applied (``-amx-int8`` removes amx_int8, ``+avxvnni`` adds
    avx_vnni); entries lowbit does not track are left to LLVM."""
    out = set(features)
    for entry in mattr or ():
        sign, name = entry[:1], entry[1:]
        flag = MATTR_FLAGS.get(name)
        if flag is None or sign not in "+-":
            continue
        out = out | {flag} if sign == "+" else _without(out, flag)
    return out


def required_features(target: dict) -> set[str]:
    """The cpuinfo flags that code built for an llvm target JSON (``mcpu``, ``mattr``) may use."""
    return apply_mattr(MCPU_FLAGS.get(target.get("mcpu", ""), set()), target.get("mattr"))


def missing_cpu_features(target: dict | str) -> set[str]:
    """Features code compiled for ``target`` (a target JSON, or an mcpu name) needs that this host lacks
    (empty when unknown or fine)."""
    if isinstance(target, str):
        target = {"kind": "llvm", "mcpu": target}
    if target.get("mcpu") not in MCPU_FLAGS or platform.machine() not in ("x86_64", "AMD64"):
        return set()
    return required_features(target) - cpu_flags()


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG") or 0) * scale


def host_caches() -> dict[str, int]:
    """Per-core data cache sizes in bytes (``l1d``, ``l2``) and the shared ``l3``, from sysfs; {} if unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    out = {}
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            if not idx.startswith("index") or not os.path.isdir(d):  # (sysfs also has a ``uevent`` file here)
                continue
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = _size(f.read())
            if kind == "Instruction":
                continue
            out["l1d" if level == "1" else f"l{level}"] = size
    except (OSError, ValueError):
        return {}
    return out


_AMX_GRANTED = False


def enable_amx() -> None:
    """Ask Linux for the AMX tile state for this process (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
    code with AMX instructions dies with SIGILL without it. Idempotent; a refusal is a one-line error."""
    global _AMX_GRANTED
    if _AMX_GRANTED:
        return
    import ctypes

    from ..errors import LowbitError

    libc = ctypes.CDLL(None, use_errno=True)
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    if libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) != 0:
        err = ctypes.get_errno()
        raise LowbitError(f"this kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: "
                          f"{os.strerror(err)}); compile without AMX, e.g. --target "
                          f"'{{\"kind\": \"llvm\", \"mcpu\": \"sapphirerapids\", \"mattr\": [\"-amx-tile\"]}}'")
    _AMX_GRANTED = True


def uses_amx(target: dict) -> bool:
    """Whether code for this target JSON may hold AMX instructions."""
    return target.get("kind") == "llvm" and bool({"amx_int8", "amx_bf16"} & required_features(target))
