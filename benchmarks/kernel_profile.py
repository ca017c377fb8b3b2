"""Per-kernel time of a compiled model: where the milliseconds go.

    python benchmarks/kernel_profile.py MODEL.onnx [-p int8 --calib C.npz] [--runs 20] [--threads 2] [--top 25]
        [--shape x=1x3x224x224]

Compiles an ONNX file (its Relax program as VM bytecode, for the VM's instrument hook; an artifact built with
``lowbit compile --codegen vm_exec_mode=bytecode`` loads too), runs it with a Relax VM instrument that times every
kernel call, and prints kernels by total median time with their share of the run (plus the VM's own overhead).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def profile(module, runs: int) -> tuple[list[tuple[str, float, int]], float]:
    """(kernel symbol, median ms per run, calls per run) sorted by time, and the median total ms."""
    args = module._prepare(__import__("lowbit.runtime", fromlist=["x"]).example_inputs(module.manifest))
    per_run: list[dict] = []
    starts: dict = {}
    current: dict = collections.defaultdict(float)
    calls: dict = collections.Counter()

    def instrument(func, name, before, ret, *a):
        if before:
            starts[name] = time.perf_counter()
        else:
            current[name] += (time.perf_counter() - starts.pop(name)) * 1e3
            calls[name] += 1
        return 0

    f = module._vm["main"]
    for _ in range(3):
        f(*args)
    module._vm.set_instrument(instrument)
    totals = []
    for _ in range(runs):
        current.clear()
        t0 = time.perf_counter()
        f(*args)
        totals.append((time.perf_counter() - t0) * 1e3)
        per_run.append(dict(current))
    n_calls = {k: v // runs for k, v in calls.items()}
    names = set().union(*per_run)
    rows = [(k, statistics.median(r.get(k, 0.0) for r in per_run), n_calls.get(k, 0)) for k in names]
    rows.sort(key=lambda r: -r[1])
    return rows, statistics.median(totals)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--shape", action="append", default=[])
    p.add_argument("-p", "--pipeline", default="O2")
    p.add_argument("--calib", help="calibration data (.npz) for a pipeline that quantizes")
    a = p.parse_args(argv)
    import lowbit
    import lowbit.runtime as rt

    path = a.model
    if not path.endswith(".lbit"):
        shapes = {k: tuple(int(d) for d in v.split("x")) for k, v in (s.split("=", 1) for s in a.shape)}
        t0 = time.perf_counter()
        # bytecode: the VM's instrument hook, which times each kernel call, exists only there
        art = lowbit.compile(path, pipeline=a.pipeline, shapes=shapes or None, calibration=a.calib,
                             codegen="vm_exec_mode=bytecode")
        print(f"compiled in {time.perf_counter() - t0:.1f} s")
        path = tempfile.mktemp(suffix=".lbit")
        art.save(path)
    module = rt.load(path)
    rt.set_threads(a.threads)
    rows, total = profile(module, a.runs)
    if not rows:
        print(f"{a.model}: no kernel call was seen: the artifact's Relax program is compiled machine code (the "
              f"default); give the ONNX model instead, which this script builds as VM bytecode", file=sys.stderr)
        return 1
    kernels = sum(r[1] for r in rows)
    print(f"median run {total:.3f} ms; kernels {kernels:.3f} ms; other (VM, allocation) {total - kernels:.3f} ms")
    print(f"{'ms':>8} {'share':>6} {'calls':>5}  kernel")
    for name, ms, n in rows[: a.top]:
        print(f"{ms:8.3f} {100 * ms / total:5.1f}% {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
