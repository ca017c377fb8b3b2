"""bf16 against lowbit's own f32: latency and fidelity, same process.

    python benchmarks/bf16.py [--models resnet18,minilm] [--runs 100] [--rounds 20] [--threads 2] [--keep-bf16]
                              [--target JSON]

Per model: lowbit f32 (O2) and bf16 (the ``bf16`` preset: convolutions and matmuls by constants in bf16 with
f32 sums), onnxruntime f32 for context, timed in one process with the same thread count in alternating rounds
(medians after warm-up); the cosine of the bf16 output to lowbit's f32 output on held-out inputs; the ratio
bf16 / f32; the CPU model and the kernel families that ran. bf16 runs on AMX-BF16 tiles or AVX512-BF16
registers; with neither, the preset keeps the model f32 (the compile says so) unless ``--keep-bf16``, which runs
the generic bf16 kernels (the same products, computed in f32: the cosine is the fast kernels' up to summation
order; the speed is not). ``--target`` builds both for another target JSON (``"mattr": ["-amx-bf16"]`` measures
AVX512-BF16 on an AMX machine); on a VM that hides AVX512-BF16 from /proc/cpuinfo though the CPU executes it,
set ``LOWBIT_ASSUME_CPU_FEATURES=avx512_bf16``.

Models: the test zoo's resnet18 and mobilenet_v2 (random weights, random normal images), ``minilm``
(all-MiniLM-L6-v2 with its real weights, sequence 128; cosine of mean-pooled embeddings over 24 real sentences)
and ``minilm-shape`` (the zoo encoder at MiniLM's sizes — 6 layers, hidden 384, 12 heads, FFN 1536, sequence
128 — with random weights: the same work, for machines without the real model's files).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _model(name: str):
    """(ONNX bytes, symbolic shapes to bind, held-out inputs)."""
    import model_zoo as zoo
    from int8 import _minilm, _samples

    if name == "minilm":
        model, inputs, _, held = _minilm(1)
        return model, {k: v.shape for k, v in inputs.items()}, held
    if name == "minilm-shape":
        model, inputs = zoo.encoder(seq=128, hidden=384, heads=12, ffn=1536, layers=6, vocab=30522)
        return model, {k: v.shape for k, v in inputs.items()}, _samples(inputs, 4, 1)
    model, inputs = zoo.ZOO[name]()
    return model, zoo.SHAPES.get(name), _samples(inputs, 4, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,minilm")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20, help="alternating rounds the runs are spread over")
    p.add_argument("--target", default="auto", help="target of both builds (default: this CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep-bf16", action="store_true", help="run the bf16 ops even without AMX-BF16")
    a = p.parse_args(argv)

    import onnxruntime as ort

    import lowbit
    from lowbit.codegen import Target
    import lowbit.runtime as rt
    from int8 import _cos, _interleaved_ms
    from lowbit.errors import LowbitWarning
    from lowbit.runtime.host import cpu_model_name, host_mcpu

    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-bf16-"))
    rows, families, notes = [], {}, []
    for name in a.models.split(","):
        model, shapes, held = _model(name)
        src = work / f"{name}.onnx"
        src.write_bytes(model)
        print(f"[{name}] compiling", file=sys.stderr, flush=True)
        fp, bf = work / f"{name}.f32.lbit", work / f"{name}.bf16.lbit"
        lowbit.compile(str(src), target=a.target, shapes=shapes).save(fp)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LowbitWarning)
            lowbit.compile(str(src), target=a.target, pipeline="bf16", shapes=shapes, keep_bf16=a.keep_bf16).save(bf)
        notes += [str(w.message) for w in caught if issubclass(w.category, LowbitWarning)]
        compile_s = time.perf_counter() - t0
        m_fp, m_bf = rt.load(fp), rt.load(bf)
        rt.set_threads(a.threads)
        families[name] = rt.artifact.kernel_summary(m_bf.manifest)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        s_fp = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        feed = held[0]
        fns = {}
        for key, m in (("lowbit_f32_ms", m_fp), ("lowbit_bf16_ms", m_bf)):
            args, f = m._prepare(feed), m._vm["main"]
            fns[key] = lambda f=f, args=args: f(*args)
        fns["ort_f32_ms"] = lambda: s_fp.run(None, feed)
        r = {"model": name, "bf16_compile_s": round(compile_s, 1)}
        r.update(_interleaved_ms(fns, a.runs, a.rounds))
        r["bf16_vs_own_f32"] = r["lowbit_bf16_ms"] / r["lowbit_f32_ms"]
        r["bf16_cos_to_f32"] = min(_cos(list(m_bf.run(h).values())[0], list(m_fp.run(h).values())[0], h)
                                   for h in held)
        rows.append(r)
        print(f"[{name}] " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in r.items() if k != "model"), flush=True)
    cols = ["model", "lowbit_f32_ms", "lowbit_bf16_ms", "ort_f32_ms", "bf16_vs_own_f32", "bf16_cos_to_f32",
            "bf16_compile_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join((f"{r[c]:.6f}" if c.endswith("_cos_to_f32") else f"{r[c]:.4g}")
                                if isinstance(r.get(c), float) else str(r.get(c, "—")) for c in cols) + " |")
    print(f"\nCPU: {cpu_model_name()} (LLVM mcpu {host_mcpu()}); kernel families of the bf16 build:")
    for name, text in families.items():
        print(f"  {name}: {text}")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    print(f"target {Target.parse(a.target).describe()}")
    print(f"{a.threads} threads, medians of {max(1, -(-a.runs // a.rounds)) * a.rounds} runs in {a.rounds} alternating "
          "rounds (3 warm-up "
          "calls each); cosine: min over held-out inputs (4 random; minilm: 24 real sentences, of mean-pooled "
          "sentence embeddings), first output, bf16 to lowbit f32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
