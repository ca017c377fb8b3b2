"""Low-bit weights on real models: accuracy and stored weight bytes per preset, against lowbit's fp32.

    python benchmarks/weights.py [--models digits,fashion_mnist,minilm,efficientnet_lite0] [--presets "w4;w4a8;w4a8-apot"] [--threads 2]

Per model (benchmarks/zoo/real.py: real weights or trained on real data) and preset, lowbit compiles the model
(GPTQ calibrated on the model's calibration samples — data its evaluation does not use), runs the model's own
evaluation (top-1 accuracy on the held-out test set; EfficientNet-Lite0: top-1 agreement with PyTorch on 216
photo crops; MiniLM: cosine of mean-pooled sentence embeddings to the PyTorch original and a sentiment probe)
and reads the weights' encodings and stored bytes from the manifest (``kernels[].weight``) and the weight
passes' per-layer choices (``weight_report``: which scheme each layer got, which fell back). ``O2`` (fp32) is
the baseline. Under ``w4`` (f32 activations) convolutions are quantized but stored f32 (codegen warns); under
``w4a8``/``w4a8-apot`` they run on the int8 kernels from 4-bit table codes; depthwise convolutions stay int8.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _weights(manifest) -> dict:
    ws = [k["weight"] for k in manifest.get("kernels", []) if "weight" in k]
    stored, f32 = sum(w["stored_bytes"] for w in ws), sum(w["f32_bytes"] for w in ws)
    enc: dict = {}
    for w in ws:
        enc[w["encoding"]] = enc.get(w["encoding"], 0) + 1
    layers: dict = {}  # the weight passes' per-layer choices (manifest "weight_report")
    for r in manifest.get("weight_report", []):
        kind = f"{r['op']} " + ("kept (fallback)" if r.get("fallback") and "scheme" not in r
                                else r.get("scheme") or f"int{r['bits']}")
        layers[kind] = layers.get(kind, 0) + 1
    out = {"stored_bytes": stored, "f32_bytes": f32, "ratio": stored / f32 if f32 else None, "encodings": enc,
           "layers": layers}
    pruned = manifest.get("sparsity_report", [])
    if pruned:  # sparsify's layers: the fraction of zeros over every weight of the model, and over the pruned ones
        zeros = sum(r["sparsity"] * r["weights"] for r in pruned)
        out["sparsity"] = round(zeros / (f32 / 4), 4) if f32 else None
        out["pruned_layers"] = f"{len(pruned)}/{len(ws)}, {zeros / sum(r['weights'] for r in pruned):.3f} zero"
    return out


def _batches(samples: list, shapes: dict) -> list:
    """Batch-1 calibration samples as batches of the compiled shapes: stacked, cut to the shapes' trailing sizes
    (a shorter sequence), the last batch filled up with the first samples."""
    import numpy as np

    b = next(iter(shapes.values()))[0]
    stacked = {k: np.concatenate([s[k] for s in samples]) for k in shapes}
    n = len(next(iter(stacked.values())))
    out = []
    for i in range(0, n, b):
        idx = np.arange(i, i + b) % n
        out.append({k: v[idx][(slice(None),) + tuple(slice(0, d) for d in shapes[k][1:])] for k, v in stacked.items()})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits,fashion_mnist,minilm")
    p.add_argument("--presets", default="w4;w4a8;w4a8-apot", help="presets or pipeline texts, separated by ;")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)

    import lowbit
    import lowbit.runtime as rt
    from lowbit.errors import LowbitWarning
    from lowbit.runtime.host import cpu_model_name
    from zoo import real

    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-weights-"))
    rows = []
    for name in a.models.split(","):
        bm = getattr(real, name)()
        for preset in ["O2"] + a.presets.split(";"):
            t0 = time.perf_counter()
            manifests, notes = [], []

            def make_run(shapes, preset=preset, manifests=manifests, notes=notes):
                path = work / f"{name}.{preset}.{len(list(work.iterdir()))}.lbit"
                calib = _batches(bm.calibration, shapes) if preset != "O2" and bm.calibration else None
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", LowbitWarning)
                    art = lowbit.compile(bm.onnx, pipeline=preset, shapes=shapes, calibration=calib)
                notes.extend(str(w.message) for w in caught)
                art.save(path)
                manifests.append(art.manifest)
                rt.set_threads(a.threads)
                return rt.load(path).run
            print(f"[{name} {preset}] compiling and evaluating", file=sys.stderr, flush=True)
            acc = bm.evaluate(make_run)
            row = {"model": name, "preset": preset, **acc, **_weights(manifests[0]),
                   "kernels": rt.artifact.kernel_summary(manifests[0]), "s": round(time.perf_counter() - t0, 1),
                   "notes": sorted(set(notes))}
            rows.append(row)
            print(f"[{name} {preset}] " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items() if k not in ("model", "preset", "notes")),
                  flush=True)
    print(f"\nCPU: {cpu_model_name()}; {a.threads} threads")
    for r in rows:
        metric = {k: v for k, v in r.items() if k in ("accuracy", "top1_agreement", "mean_cosine", "min_cosine",
                                                      "sentiment_probe_acc")}
        print(f"| {r['model']} | {r['preset']} | " + ", ".join(f"{k} {v:.4f}" for k, v in metric.items())
              + f" | {r['stored_bytes']} B ({r['ratio']:.3f}x f32) | {r['encodings']} | {r['layers']} |"
              + (f" sparsity {r['sparsity']:.3f} ({r['pruned_layers']}) |" if "sparsity" in r else ""))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
