"""Building and timing one candidate of one task.

``build_candidate`` lowers the task's one-op graph with the candidate's knobs set for its kernel (inputs in the
model's layouts, the output left in the kernel's), schedules it with lowbit's rules and builds it with TVM;
the scheduled module's structural hash identifies the code, so two candidates that schedule to the same code
are measured once. ``LocalRunner`` times ``main`` of the Relax VM in this process, one call at a time after a
cache flush, each call of a candidate paired with one of the task's default; ``rpc.RPCMeasurer`` times exported
libraries on TVM RPC servers (TVM's ``time_evaluator``). The tuner records the default's median and, for a
paired candidate, the default's latency times the median ratio.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ..errors import LowbitError
from .workload import KERNEL, Task


@dataclass
class Built:
    """A candidate built (``ex``: the Relax executable) or not (``error``); ``code`` hashes its scheduled TIR."""

    knobs: dict
    ex: object = None
    error: str | None = None
    code: int | None = None
    kernel: str | None = None
    build_s: float = 0.0


def arg_specs(task: Task) -> list[tuple[list[int], str]]:
    """(shape, dtype) of each input of the task's ``main``, in the layouts the model makes them in."""
    out = []
    for i, v in enumerate(task.graph.inputs):
        s, lay = list(v.type.shape), task.input_layouts.get(i, "plain")
        if lay == "nhwc":
            s = [s[0], *s[2:], s[1]]
        elif lay != "plain":
            s = [s[0], s[1] // lay, *s[2:], lay]
        out.append((s, v.type.dtype.np_dtype.name))
    return out


def random_input(shape, dtype: str, rng) -> np.ndarray:
    """A random array to time a kernel on: booleans, integers in [-8, 7] (clamped to the dtype), floats in
    [-1, 1); a spec that is not (static shape, dtype) raises ValueError."""
    import ml_dtypes

    try:
        dt, shape = np.dtype(dtype), tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"an input must be (static shape, dtype), got ({shape!r}, {dtype!r})") from None
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    try:
        info = ml_dtypes.iinfo(dt)
    except ValueError:
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32).astype(dt)
    return rng.integers(max(int(info.min), -8), min(int(info.max), 7) + 1, shape).astype(dt)


def random_args(specs, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_input(shape, dtype, rng) for shape, dtype in specs]


def config_for(knobs: dict, base=None):
    """``base`` (default: the defaults) with ``knobs`` set for the task's kernel."""
    from ..codegen import CodegenConfig

    base = CodegenConfig.parse(base)
    return dataclasses.replace(base, kernels=((KERNEL, tuple(sorted(knobs.items()))),)) if knobs else base


def build_candidate(task: Task, target, knobs: dict, base=None) -> Built:
    """Lower, schedule and build ``task`` with ``knobs``; a failure is returned as ``error``, not raised."""
    import time

    import tvm_ffi
    from tvm import relax

    from ..codegen.build import schedule
    from ..runtime.host import cpu_flags, enable_amx

    t0 = time.perf_counter()
    if any(target.has(f) and f in cpu_flags() for f in ("amx_int8", "amx_bf16")):
        enable_amx()
    kernels: list = []
    try:
        mod = schedule(task.graph, target, config_for(knobs, base), kernels,
                       lower_options={"input_layouts": task.input_layouts, "native_outputs": True})
        code = int(tvm_ffi.structural_hash(mod))
        ex = relax.build(mod, target.tvm(), exec_mode="compiled")
    except LowbitError as e:
        return Built(knobs, error=str(e), build_s=time.perf_counter() - t0)
    except Exception as e:  # a knob value TVM's schedule primitives reject: a failed candidate, never a crash
        lines = str(e).strip().splitlines()
        return Built(knobs, error=f"build failed: {lines[-1] if lines else type(e).__name__}",
                     build_s=time.perf_counter() - t0)
    kernel = next((k["kernel"] for k in kernels if k["name"] == KERNEL), None)
    return Built(knobs, ex=ex, code=code, kernel=kernel, build_s=time.perf_counter() - t0)


@dataclass
class Timing:
    runs_s: list | None = None
    error: str | None = None
    lost: bool = False
    server: str = "local"
    ratio: float | None = None  # median of (this call / the reference's call just before it), when paired


class LocalRunner:
    """Times candidates in this process: ``repeat`` calls, each after ``flush_bytes`` of other data have gone
    through the caches, as in the model, where the layers before a kernel evict its weights from L1/L2 (timed
    back to back, a kernel whose weights fit in L2 would look faster than it runs in its model). Each call is
    timed alone with ``perf_counter``.

    With a ``reference`` (the task's default), every call of the candidate follows one of the reference, and
    the timing's ``ratio`` is the median of the pairs' ratios: on a shared 2-core VM the same code runs at two
    speeds seconds apart (1.6 vs 2.5 ms for one ResNet-18 convolution), so absolute medians taken at different
    moments differ by up to 1.4x, while the ratio of neighbouring calls stays within about 5 %."""

    def __init__(self, repeat: int = 21, flush_bytes: int = 16 << 20, warmup: int = 2):
        self.repeat, self.warmup = repeat, warmup
        self._flush = np.zeros(flush_bytes // 8, dtype=np.float64)
        self._args: dict = {}

    def _call(self, f, args) -> float:
        import time

        self._flush += 1.0  # streams the buffer through every cache level
        t0 = time.perf_counter()
        f(*args)
        return time.perf_counter() - t0

    def run(self, task: Task, built: Built, reference: Built | None = None, repeat: int | None = None) -> Timing:
        import tvm
        from tvm import relax

        dev = tvm.cpu()
        key = task.key
        if key not in self._args:
            self._args = {key: [tvm.runtime.tensor(a, dev) for a in random_args(arg_specs(task))]}
        args = self._args[key]
        try:
            f = relax.VirtualMachine(built.ex, dev)["main"]
            g = relax.VirtualMachine(reference.ex, dev)["main"] if reference is not None else None
            for _ in range(self.warmup):
                f(*args)
                if g is not None:
                    g(*args)
            runs, ratios = [], []
            for _ in range(repeat or self.repeat):
                ref = self._call(g, args) if g is not None else None
                runs.append(self._call(f, args))
                if ref:
                    ratios.append(runs[-1] / ref)
            return Timing(runs_s=runs, ratio=float(np.median(ratios)) if ratios else None)
        except Exception as e:
            lines = str(e).strip().splitlines()
            return Timing(error=f"run failed: {lines[-1] if lines else type(e).__name__}")


def export(built: Built, directory: str, name: str) -> str:
    """Write the candidate's library for a remote runner; returns its path."""
    path = os.path.join(directory, f"{name}.so")
    built.ex.export_library(path)
    return path


__all__ = ["Built", "Timing", "LocalRunner", "build_candidate", "arg_specs", "random_input", "random_args",
           "config_for", "export"]
