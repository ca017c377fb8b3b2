"""What this host can run: x86 CPU features (from /proc/cpuinfo), core count, CUDA devices."""
from __future__ import annotations

import os
import platform

# LLVM CPU names lowbit targets, with the /proc/cpuinfo flags code built for them needs.
MCPU_FLAGS = {
    "sapphirerapids": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"},
    "cascadelake": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
    "skylake-avx512": {"avx512f", "avx512bw", "avx512vl"},
    "haswell": {"avx2", "fma"},
    "x86-64": set(),
}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_mcpu(flags: set[str] | None = None) -> str:
    """The best LLVM CPU name in MCPU_FLAGS whose features this host has (x86); 'generic' elsewhere."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic"
    flags = cpu_flags() if flags is None else flags
    for mcpu, need in MCPU_FLAGS.items():
        if need <= flags:
            return mcpu
    return "x86-64"


def missing_cpu_features(mcpu: str) -> set[str]:
    """Features code compiled for ``mcpu`` needs that this host lacks (empty when unknown or fine)."""
    need = MCPU_FLAGS.get(mcpu)
    if need is None or platform.machine() not in ("x86_64", "AMD64"):
        return set()
    return need - cpu_flags()


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
                          f"{os.strerror(err)}); compile for a CPU without AMX, e.g. --target "
                          f"'{{\"kind\": \"llvm\", \"mcpu\": \"cascadelake\"}}'")
    _AMX_GRANTED = True


def uses_amx(target: dict) -> bool:
    """Whether code for this lowbit target may hold AMX instructions."""
    return target.get("kind") == "llvm" and target.get("mcpu") == "sapphirerapids"
