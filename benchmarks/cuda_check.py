"""Run CUDA artifacts on a GPU machine (TVM runtime only) and compare with onnxruntime's outputs.

Prepare on the CPU machine (needs lowbit's compiler, nvcc and onnxruntime):
    python benchmarks/cuda_check.py prepare DIR            # resnet18 + encoder: .lbit, inputs, ORT outputs
Run where the GPU is (needs numpy and the TVM runtime; e.g. `source .gpu/activate.sh` first):
    python benchmarks/cuda_check.py run DIR [--runs 50]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

MODELS = ("resnet18", "encoder")


def prepare(d: pathlib.Path) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    import onnxruntime as ort
    import model_zoo as zoo

    import lowbit

    d.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        model, inputs = zoo.ZOO[name]()
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
        art = lowbit.compile(lowbit.load(model, shapes=zoo.SHAPES.get(name)), target="cuda", progress=True)
        art.save(d / f"{name}.lbit")
        np.savez(d / f"{name}.inputs.npz", **inputs)
        np.savez(d / f"{name}.ort.npz", **want)
        print(f"prepared {name}: {os.path.getsize(d / f'{name}.lbit') / 1e6:.1f} MB", flush=True)


def run(d: pathlib.Path, runs: int) -> int:
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import lowbit.runtime

    report, ok = {}, True
    for name in MODELS:
        m = lowbit.runtime.load(d / f"{name}.lbit")
        inputs = dict(np.load(d / f"{name}.inputs.npz"))
        want = dict(np.load(d / f"{name}.ort.npz"))
        got = m.run(inputs)
        errs = {k: float(np.max(np.abs(got[k].astype(np.float64) - want[k])) / np.max(np.abs(want[k]))) for k in want}
        bench = m.benchmark(inputs, runs=runs, warmup=10)
        report[name] = {"max_rel_err_vs_onnxruntime": errs, "median_ms": round(bench["median_ms"], 4),
                        "min_ms": round(bench["min_ms"], 4), "max_ms": round(bench["max_ms"], 4)}
        ok &= all(e <= 1e-3 for e in errs.values())
    maps = open("/proc/self/maps").read()
    report["tvm_compiler_loaded"] = "libtvm_compiler" in maps
    print(json.dumps(report, indent=1))
    print("PASS" if ok else "FAIL: an output differs from onnxruntime by more than 1e-3")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("prepare", "run"))
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--runs", type=int, default=50)
    a = p.parse_args()
    sys.exit(prepare(a.dir) if a.step == "prepare" else run(a.dir, a.runs))
