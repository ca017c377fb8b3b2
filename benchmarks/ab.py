"""A/B of two lowbit revisions on one machine: compile times and latencies of the same models, alternating.

    python benchmarks/ab.py --old 3d2df14 [--new WORKTREE|REV] [--set int8|cpu] [--models a,b] [--runs 40]

Each revision is checked out into a temporary git worktree (``--new`` defaults to this working tree), and
every model is compiled by each revision in a fresh process (``PYTHONPATH`` = that checkout), old and new in
alternating order; then this process loads both artifacts with the runtime and times them in alternating
rounds (a pause before each, medians over all rounds), so a change in the shared machine's speed hits both.
Printed: per model and pipeline, old and new ms and compile s with the new/old ratios, and the CPU.

Sets: ``int8`` — the models of ``benchmarks/int8.py`` (the test zoo's ResNet-18 and MobileNetV2 at 224², random
weights; all-MiniLM-L6-v2, sequence 128) with O2 and int8 (MiniLM also int8-dynamic), calibrated as int8.py
does; ``cpu`` — the models of ``benchmarks/run.py --suite cpu`` with O2.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

COMPILE = """
import json, sys, time, numpy as np
import lowbit
spec = json.loads(sys.argv[1])
calib = None
if spec["calib"]:
    with np.load(spec["calib"]) as z:
        calib = [{k: z[k][i] for k in z.files} for i in range(len(z[z.files[0]]))]
shapes = {k: tuple(v) for k, v in spec["shapes"].items()} or None
t0 = time.perf_counter()
art = lowbit.compile(spec["model"], pipeline=spec["pipeline"], shapes=shapes, calibration=calib)
dt = time.perf_counter() - t0
art.save(spec["out"])
print(json.dumps({"compile_s": dt, "lowbit": lowbit.__file__}))
"""


def _checkout(rev: str, where: pathlib.Path) -> pathlib.Path:
    """A worktree of ``rev`` (or ``rev`` itself when it is a directory holding a lowbit checkout)."""
    if os.path.isdir(rev) and os.path.isdir(os.path.join(rev, "lowbit")):
        return pathlib.Path(rev).resolve()
    path = where / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    return path


def _models(which: str, names: list[str] | None, work: pathlib.Path):
    """(name, onnx path, shapes, pipelines, calibration .npz or None, inputs) per model of the set."""
    from run import SUITES, ensure_dependencies

    ensure_dependencies([n for n in (names or SUITES["cpu"]) if n in SUITES["cpu"]], install=True)
    out = []
    if which == "int8":
        import int8
        import model_zoo as zoo

        for name in names or ["resnet18", "mobilenet_v2", "minilm"]:
            if name == "minilm":
                model, inputs, calib, _ = int8._minilm(8)
                pipes = ["O2", "int8", "int8-dynamic"]
                shapes = {k: list(v.shape) for k, v in inputs.items()}
            else:
                model, inputs = zoo.ZOO[name]()
                calib, pipes = int8._samples(inputs, 8, 0), ["O2", "int8"]
                shapes = {k: list(v) for k, v in (zoo.SHAPES.get(name) or {}).items()}
            src = work / f"{name}.onnx"
            src.write_bytes(model)
            cpath = work / f"{name}.calib.npz"
            np.savez(cpath, **{k: np.stack([s[k] for s in calib]) for k in calib[0]})
            out.append((name, src, shapes, pipes, cpath, inputs))
    else:
        from zoo import registry

        reg = registry()
        for name in names or list(reg):
            bm = reg[name]()
            src = work / f"{name}.onnx"
            src.write_bytes(bm.onnx)
            shapes = {k: list(v) for k, v in bm.shapes(1).items()}
            out.append((name, src, shapes, ["O2"], None, bm.inputs))
    return out


def _compile(checkout: pathlib.Path, spec: dict) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    p = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(spec)], env=env, capture_output=True, text=True,
                       cwd=checkout)
    if p.returncode != 0:
        raise SystemExit(f"compile failed in {checkout}: {p.stderr.strip().splitlines()[-1] if p.stderr else ''}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["lowbit"].startswith(str(checkout)), res  # the checkout's lowbit, not the installed one
    return res["compile_s"]


def _alternating_ms(fns: dict, runs: int, rounds: int = 5, warmup: int = 3) -> dict:
    times = {k: [] for k in fns}
    per = max(1, -(-runs // rounds))
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            time.sleep(0.2)
            for _ in range(warmup):
                fns[k]()
            for _ in range(per):
                t0 = time.perf_counter()
                fns[k]()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the old revision (a git rev, or a checkout directory)")
    p.add_argument("--new", default=str(ROOT), help="the new revision (default: this working tree)")
    p.add_argument("--set", choices=["int8", "cpu"], default="int8")
    p.add_argument("--models", help="comma-separated subset of the set's models")
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import lowbit.runtime as rt
    from lowbit.runtime.host import cpu_model_name

    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-ab-"))
    old, new = _checkout(a.old, work), _checkout(a.new, work)
    rows = []
    for name, src, shapes, pipes, calib, inputs in _models(a.set, a.models.split(",") if a.models else None, work):
        for pipe in pipes:
            print(f"[{name} {pipe}] compiling with both revisions", file=sys.stderr, flush=True)
            comp = {"old": [], "new": []}
            for order in (("old", "new"), ("new", "old")):
                for tag in order:
                    out = work / f"{name}.{pipe}.{tag}.lbit"
                    spec = {"model": str(src), "pipeline": pipe, "shapes": shapes, "out": str(out),
                            "calib": str(calib) if calib and pipe == "int8" else None}
                    comp[tag].append(_compile(old if tag == "old" else new, spec))
            mods = {tag: rt.load(work / f"{name}.{pipe}.{tag}.lbit") for tag in ("old", "new")}
            libs = {tag: rt.artifact.read_artifact(work / f"{name}.{pipe}.{tag}.lbit")[1]["lib/model.so"]
                    for tag in ("old", "new")}
            rt.set_threads(a.threads)
            feed = {k: v for k, v in inputs.items()}
            outs = {tag: m.run(feed) for tag, m in mods.items()}
            same = all(np.array_equal(outs["old"][k], outs["new"][k]) for k in outs["old"])
            fns = {}
            for tag, m in mods.items():
                args, f = m._prepare(feed), m._vm["main"]
                fns[tag] = lambda f=f, args=args: f(*args)
            ms = _alternating_ms(fns, a.runs)
            rows.append({"model": name, "pipeline": pipe, "old_ms": ms["old"], "new_ms": ms["new"],
                         "old_compile_s": min(comp["old"]), "new_compile_s": min(comp["new"]), "same_output": same,
                         "same_library": libs["old"] == libs["new"]})
    print(f"\nA/B {a.old} -> {a.new}: {cpu_model_name()}, {a.threads} threads, medians of {a.runs} runs in 5 "
          f"alternating rounds; compile s = the faster of two alternating compiles")
    print("| model | pipeline | old ms | new ms | new/old | old compile s | new compile s | new/old | outputs | library |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['pipeline']} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | "
              f"{r['new_ms'] / r['old_ms']:.3f} | {r['old_compile_s']:.1f} | {r['new_compile_s']:.1f} | "
              f"{r['new_compile_s'] / r['old_compile_s']:.3f} | {'identical' if r['same_output'] else 'DIFFER'} | "
              f"{'same bytes' if r['same_library'] else 'differs'} |")
    for path in (old, new):
        if str(path).startswith(str(work)):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    return 0 if all(r["same_output"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
