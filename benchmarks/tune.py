"""Tuning, end to end: each model tuned with `lowbit tune`'s machinery, then lowbit untuned, lowbit tuned and
onnxruntime timed in one process, in alternating rounds.

    python benchmarks/tune.py [--models resnet18,mobilenet_v2,minilm,vit_tiny,efficientnet_lite0]
        [--precisions fp32,int8] [--batches 1,8] [--budget 600] [--db-dir DIR] [--runs 50] [--threads 2]
        [--search xgb] [--runs 100] [--json OUT.json]

Per model, precision and batch: tuning time (``--budget`` seconds of wall time at most, into
DIR/<model>-<precision>-b<batch>.db: a rerun resumes and measures only what is not recorded), then the medians
of lowbit (defaults), lowbit (--tune-db) and onnxruntime (fp32; for int8 its static QDQ model, per-channel S8
weights and U8 activations, after its own quant_pre_process; for MiniLM also quantize_dynamic, and lowbit's
int8-dynamic), the ratios, and the count of kernels the database changed. Models: benchmarks/zoo (ResNet-18,
MobileNetV2 and ViT-Ti with PyTorch's architectures, random weights; EfficientNet-Lite0 and all-MiniLM-L6-v2
with real weights). Batch 8 applies to the CNNs only.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from int8 import _interleaved_ms, _samples, ort_int8_models  # noqa: E402  (as benchmarks/int8.py does it)

CNNS = ("resnet18", "mobilenet_v2", "efficientnet_lite0")


def _ort(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _fix_batch(onnx_bytes: bytes, shapes: dict) -> bytes:
    """The model with its symbolic input dims bound (onnxruntime then plans for the same shapes lowbit has)."""
    import onnx

    m = onnx.load_from_string(onnx_bytes)
    for inp in m.graph.input:
        if inp.name in shapes:
            for d, n in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = n
    return m.SerializeToString()


def bench(name, precision, batch, a, work) -> dict:
    import lowbit
    import lowbit.runtime as rt
    from lowbit.compiler import tune
    from zoo import registry

    bm = registry()[name]()
    shapes = bm.shapes(batch)
    feed = {k: np.concatenate([v] * batch) if batch > 1 else v for k, v in bm.inputs.items()}
    src = work / f"{name}-b{batch}.onnx"
    src.write_bytes(_fix_batch(bm.onnx, shapes))
    text = "input_ids" in feed
    calib = None
    pipes = {"fp32": "O2"}
    if precision == "int8":
        calib = _samples(feed, 8, 0)
        pipes = {"int8": "int8"}
        if text:
            pipes["int8-dynamic"] = "int8-dynamic"
    row = {"model": name, "precision": precision, "batch": batch}
    fns = {}
    db_dir = pathlib.Path(a.db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    for label, pipe in pipes.items():
        db = db_dir / f"{name}-{label}-b{batch}.db"
        t0 = time.perf_counter()
        tuner = tune(str(src), db, pipeline=pipe, calibration=calib, time_budget=a.budget, search=a.search,
                     shapes=shapes)
        row[f"{label}_tune_s"] = round(time.perf_counter() - t0, 1)
        row[f"{label}_trials"] = tuner.total
        base = lowbit.compile(str(src), pipeline=pipe, calibration=calib, shapes=shapes)
        tuned = lowbit.compile(str(src), pipeline=pipe, calibration=calib, shapes=shapes, tune_db=db)
        row[f"{label}_tuned_kernels"] = sum(1 for k in tuned.manifest["kernels"] if "tuned" in k)
        for kind, art in (("default", base), ("tuned", tuned)):
            path = work / f"{name}-{label}-{kind}-b{batch}.lbit"
            art.save(path)
            m = rt.load(path)
            args, f = m._prepare(feed), m._vm["main"]
            fns[f"lowbit_{label}_{kind}_ms"] = lambda f=f, args=args: f(*args)
    rt.set_threads(a.threads)
    sessions = {"ort_fp32_ms": _ort(src, a.threads)}
    if precision == "int8":
        for kind, path in ort_int8_models(src, calib, text, work).items():
            sessions[f"ort_int8_{kind}_ms"] = _ort(path, a.threads)
    for key, s in sessions.items():
        fns[key] = lambda s=s: s.run(None, feed)
    # many short rounds: a shared VM switches between two speeds every few seconds (see lowbit.autotune.measure)
    row.update(_interleaved_ms(fns, a.runs, rounds=20))
    peer = min(v for k, v in row.items() if k.startswith("ort_int8") and k.endswith("_ms")) \
        if precision == "int8" else row["ort_fp32_ms"]
    mine_default = min(row[f"lowbit_{lb}_default_ms"] for lb in pipes)
    mine_tuned = min(row[f"lowbit_{lb}_tuned_ms"] for lb in pipes)
    row["peer_ms"] = peer
    row["default_vs_peer"] = mine_default / peer
    row["tuned_vs_peer"] = mine_tuned / peer
    row["tuned_vs_default"] = mine_tuned / mine_default
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,minilm,vit_tiny,efficientnet_lite0")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--batches", default="1")
    p.add_argument("--budget", type=float, default=600.0, help="tuning seconds per model, precision and batch")
    p.add_argument("--db-dir", default=str(pathlib.Path.home() / ".cache" / "lowbit-tune"))
    p.add_argument("--search", default="xgb", choices=["xgb", "random"])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    from lowbit.runtime.host import cpu_model_name, host_mcpu

    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-tune-"))
    rows = []
    for name in a.models.split(","):
        for prec in a.precisions.split(","):
            for batch in map(int, a.batches.split(",")):
                if batch > 1 and name not in CNNS:
                    continue
                r = bench(name, prec, batch, a, work)
                rows.append(r)
                print(f"[{name} {prec} b{batch}] " + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                    if k not in ("model", "precision", "batch")), flush=True)
    cols = ["model", "precision", "batch", "lowbit default ms", "lowbit tuned ms", "peer ms", "default / peer",
            "tuned / peer", "tuned / default", "tuning s", "trials", "kernels tuned"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        labels = [k[:-7] for k in r if k.endswith("_tune_s")]
        dflt = min(r[f"lowbit_{lb}_default_ms"] for lb in labels)
        tnd = min(r[f"lowbit_{lb}_tuned_ms"] for lb in labels)
        print(f"| {r['model']} | {r['precision']} | {r['batch']} | {dflt:.3f} | {tnd:.3f} | {r['peer_ms']:.3f} | "
              f"{r['default_vs_peer']:.2f} | {r['tuned_vs_peer']:.2f} | {r['tuned_vs_default']:.2f} | "
              f"{sum(r[f'{lb}_tune_s'] for lb in labels):.0f} | {sum(r[f'{lb}_trials'] for lb in labels)} | "
              f"{sum(r[f'{lb}_tuned_kernels'] for lb in labels)} |")
    print(f"\nCPU: {cpu_model_name()} (LLVM mcpu {host_mcpu()}), {a.threads} threads; peer = onnxruntime fp32, or its "
          f"fastest int8 form for int8 rows; medians of {max(1, -(-a.runs // 20)) * 20} runs in 20 alternating rounds")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
