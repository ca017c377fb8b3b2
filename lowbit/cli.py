"""The ``lowbit`` console script.

Errors print one line, ``lowbit: error: ...``, and exit 1 (usage errors exit 2); ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys

from . import __version__
from ._startup import keep_torch_from_tvm
from .errors import LowbitError

PRESET_NAMES = ("O0", "O1", "O2", "int8", "int8-dynamic", "bf16", "w4", "w4a8", "w4a8-apot")  # passes.PRESETS, without importing the passes


def _shape_arg(text: str):
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=DIMS (like input_ids=1x128)") from None
    return name, shape


def load_any(path: str, shapes: dict | None = None):
    """Load IR text or an ONNX model from ``path`` (IR text is recognised by its leading ``graph``)."""
    from .compiler import load_model

    return load_model(path, shapes=shapes)


def _write_text(text: str, out: str | None) -> None:
    if out is None or out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from .runtime.artifact import write_atomically

    write_atomically(out, text.encode("utf-8"))


SPLIT_MARKER = re.compile(r"^// -----\s*$", re.M)


def split_input(text: str) -> list[str]:
    """Cases of a ``// -----``-separated file, each padded with newlines so error line numbers stay true."""
    chunks, line = [], 0
    for part in SPLIT_MARKER.split(text):
        chunks.append("\n" * line + part)
        line += part.count("\n")
    return chunks


def cmd_opt(args) -> int:
    from .ir import parse
    from .passes import PassContext, parse_pipeline, run_pipeline

    pipeline = parse_pipeline(args.pipeline)  # a bad pipeline fails before any slow import
    ctx = PassContext(verify_each=not args.no_verify_each, print_after_all=args.print_after_all,
                      timing=args.timing, debug_rewrites=args.debug_rewrites, calibration=args.calib)
    if args.split_input_file:
        try:
            with open(args.file, encoding="utf-8") as f:
                chunks = split_input(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise LowbitError(f"{args.file}: cannot read IR text: {e}") from None
        graphs = [parse(c, source=args.file) for c in chunks]
    else:
        graphs = [load_any(args.file, dict(args.shape or []))]
    texts = [str(run_pipeline(g, pipeline, ctx)) for g in graphs]
    _write_text("// -----\n".join(texts), args.output)
    return 0


def _pipeline_arg(args, default: str = "O2") -> str:
    if args.pipeline is not None and args.preset is not None:
        raise LowbitError("give --pipeline or --preset, not both")
    if args.preset is not None:
        from .passes import PRESETS

        if args.preset not in PRESETS:
            raise LowbitError(f"unknown preset '{args.preset}' (known: {', '.join(PRESETS)})")
        return args.preset
    return args.pipeline if args.pipeline is not None else default


def cmd_compile(args) -> int:
    from .compiler import compile as compile_model

    import warnings

    from .errors import LowbitWarning

    log = [] if args.debug_schedules else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LowbitWarning)
        art = compile_model(args.model, target=args.target, pipeline=_pipeline_arg(args),
                            shapes=dict(args.shape or []), calibration=args.calib, report=args.report,
                            codegen=args.codegen, schedule_log=log, keep_integer=args.keep_integer,
                            keep_bf16=args.keep_bf16, tune_db=args.tune_db)
    for w in caught:
        if issubclass(w.category, LowbitWarning):
            print(f"lowbit: warning: {w.message}", file=sys.stderr)
    art.save(args.output)
    if log is not None:
        for line in log or ["every rule applied where it matched"]:
            print(f"lowbit: schedules: {line}", file=sys.stderr)
    if args.report:
        from .quant.report import format_report

        print(format_report(art.manifest["quant_report"]))
    if sys.stderr.isatty():
        print(f"lowbit: wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .compiler import export

    export(args.model, args.output, args.format, _pipeline_arg(args, default="int8"), shapes=dict(args.shape or []),
           calibration=args.calib)
    if sys.stderr.isatty():
        print(f"lowbit: wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB, ONNX opset 20, QDQ)",
              file=sys.stderr)
    return 0


def _read_npz(path: str) -> dict:
    import numpy as np

    if not os.path.isfile(path):
        raise LowbitError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises several types for a bad archive
        raise LowbitError(f"{path}: not a readable .npz archive ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _runtime():
    # `lowbit run` and `lowbit bench` need only TVM's runtime library; load nothing more if TVM is not in yet.
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    from . import runtime

    return runtime


def cmd_run(args) -> int:
    import numpy as np

    rt = _runtime()
    m = rt.load(args.artifact)
    out = m.run(_read_npz(args.inputs))
    buf = io.BytesIO()
    np.savez(buf, **out)
    rt.artifact.write_atomically(args.output, buf.getvalue())
    return 0


def cmd_inspect(args) -> int:
    from .runtime.artifact import read_artifact

    manifest, members = read_artifact(args.artifact)
    if args.json:
        print(json.dumps(manifest, sort_keys=True))
        return 0
    t = manifest["target"]
    lines = [f"artifact   {args.artifact} (format {manifest['format_version']})",
             f"model      {manifest.get('name', '?')}",
             f"target     {json.dumps({k: v for k, v in t.items() if k != 'host'})}",
             f"pipeline   {manifest['pipeline'] or '(none)'}",
             "versions   " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
             f"compiled   in {manifest.get('compile_seconds', '?')} s"]
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for spec in manifest[kind]:
            q = f", {spec['quant']}" if spec.get("quant") else ""
            lines.append(f"  {spec['name']}: {spec['dtype']}[{'x'.join(map(str, spec['shape']))}]{q}")
    layers = manifest.get("layers", [])
    lines.append(f"layers ({len(layers)}):")
    width = max((len(layer["name"]) for layer in layers), default=4)
    for layer in layers:
        lines.append(f"  {layer['name']:<{width}}  {layer['op']:<16} in {layer['input']:<5} weight {layer['weight']:<5} "
                     f"out {layer['output']}")
    for w in manifest.get("warnings", []):
        lines.append(f"warning    {w}")
    if "codegen" in manifest:
        from .codegen.config import CodegenConfig

        cfg = manifest["codegen"]
        changed = str(CodegenConfig.parse({k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}))
        lines.append(f"codegen    {changed or '(defaults)'}")
    kernels = manifest.get("kernels", [])
    if kernels:
        lines.append(f"kernels ({len(kernels)}):")
        width = max(len(k["name"]) for k in kernels)
        for k in kernels:
            why = "; ".join(f"{name}: {reason}" for name, reason in k.get("passed_over", {}).items())
            tuned = k.get("tuned")
            mark = f" tuned {tuned['speedup']:.2f}x {tuned['knobs']}" if tuned else ""
            lines.append(f"  {k['name']:<{width}}  {k['op']:<16} {k['kernel']:<16}{mark}"
                         + (f" (passed over {why})" if why else ""))
    weights = [k["weight"] for k in kernels if "weight" in k]
    if weights:
        stored, f32 = sum(w["stored_bytes"] for w in weights), sum(w["f32_bytes"] for w in weights)
        enc: dict = {}
        for w in weights:
            enc[w["encoding"]] = enc.get(w["encoding"], 0) + 1
        lines.append(f"weights    {stored} bytes stored, {stored / f32:.3f}x their f32 {f32} bytes ("
                     + ", ".join(f"{e}: {n}" for e, n in enc.items()) + ")")
    if manifest.get("weight_report"):
        lines.append("low-bit weights (per layer):")
        for r in manifest["weight_report"]:
            what = r.get("scheme") or f"int{r.get('bits')}"
            err = "" if r.get("rel_error") is None else f" output error {r['rel_error']:.4f}"
            back = " (fallback)" if r.get("fallback") else ""
            lines.append(f"  {r['name']}  {r['op']} {what} group {r.get('group')} {r.get('method')}{err}{back}")
    if manifest.get("sparsity_report"):
        lines.append("sparse weights (per layer; the kernel, and why a sparse one was passed over):")
        by_name = {k["name"]: k for k in kernels}
        for r in manifest["sparsity_report"]:
            err = "" if r.get("rel_error") is None else f" output error {r['rel_error']:.4f}"
            k = by_name.get(r["name"], {})
            passed = k.get("passed_over", {})
            why = next((f" ({name} passed over: {reason})" for name, reason in passed.items() if "sparse" in name), "")
            kern = f" -> {k['kernel']}{why}" if k else ""
            lines.append(f"  {r['name']}  {r['op']} {r['pattern']} {r['method']}, {r['sparsity']:.1%} zero of "
                         f"{r['weights']}{err}{' bias corrected' if r.get('bias_corrected') else ''}{kern}")
    if "quant_report" in manifest:
        from .quant.report import format_report

        lines.append("quantization report (per layer, against float):")
        lines.extend("  " + ln for ln in format_report(manifest["quant_report"]).splitlines())
    lines.append("members:")
    for name, digest in manifest["members"].items():
        lines.append(f"  {name}  {len(members[name]):>10} bytes  sha256 {digest[:16]}")
    print("\n".join(lines))
    return 0


def _bench_onnxruntime(model: str, inputs: dict, threads: int, runs: int, warmup: int) -> dict:
    import statistics
    import time

    try:
        import onnxruntime as ort
    except ImportError:
        raise LowbitError("--vs needs onnxruntime: pip install onnxruntime") from None
    if not os.path.isfile(model):
        raise LowbitError(f"{model}: no such file")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise LowbitError(f"{model}: onnxruntime cannot load it: {str(e).splitlines()[0]}") from None
    names = [i.name for i in sess.get_inputs()]
    feed = {n: inputs[n] for n in names if n in inputs}
    if len(feed) != len(names):
        raise LowbitError(f"{model}: its inputs {names} differ from the artifact's {sorted(inputs)}")
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def cmd_bench(args) -> int:
    rt = _runtime()
    m = rt.load(args.artifact)
    threads = args.threads or rt.host.host_cores()
    rt.set_threads(threads)
    inputs = _read_npz(args.inputs) if args.inputs else rt.example_inputs(m.manifest)
    ours = m.benchmark(inputs, runs=args.runs, warmup=args.warmup)
    result = {"lowbit_ms": round(ours["median_ms"], 4), "threads": threads, "runs": args.runs,
              "device": "cuda" if m.manifest["target"]["kind"] == "cuda" else "cpu"}
    peer = None
    if args.vs:
        peer = _bench_onnxruntime(args.vs, inputs, threads, args.runs, args.warmup)
        result["onnxruntime_ms"] = round(peer["median_ms"], 4)
        result["ratio"] = round(ours["median_ms"] / peer["median_ms"], 4)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"lowbit       {ours['median_ms']:10.3f} ms  (median of {args.runs}, min {ours['min_ms']:.3f}, "
          f"max {ours['max_ms']:.3f}; {threads} threads)")
    if peer:
        print(f"onnxruntime  {peer['median_ms']:10.3f} ms  (median of {args.runs}, min {peer['min_ms']:.3f}, "
              f"max {peer['max_ms']:.3f}; {threads} threads)")
        print(f"ratio lowbit/onnxruntime: {result['ratio']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="lowbit: a compiler for low-precision neural networks.")
    p.add_argument("--version", action="version", version=f"lowbit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    o = sub.add_parser("opt", help="import a model (ONNX or IR text), run a pass pipeline, print IR text",
                       description="Print lowbit IR for an ONNX model or IR text, after an optional pass pipeline.")
    o.add_argument("file", help="an .onnx model or a file of lowbit IR text")
    o.add_argument("-p", "--pipeline", default="", help="pass pipeline text or preset, e.g. 'fold-constants,dce' or O2")
    o.add_argument("-o", "--output", help="write the IR here instead of stdout")
    o.add_argument("--shape", action="append", type=_shape_arg, metavar="NAME=DIMS",
                   help="bind a symbolic input shape, e.g. --shape input_ids=1x128 (repeatable)")
    o.add_argument("--calib", metavar="DATA", help="calibration data for quantize (.npz or a directory of them)")
    o.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    o.add_argument("--timing", action="store_true", help="print per-pass wall time (stderr)")
    o.add_argument("--debug-rewrites", action="store_true", help="print why rewrite rules declined (stderr)")
    o.add_argument("--split-input-file", action="store_true",
                   help="treat '// -----' lines as separators between independent IR graphs")
    o.add_argument("--no-verify-each", action="store_true", help="skip verifying the graph after every pass")
    o.set_defaults(func=cmd_opt)

    c = sub.add_parser("compile", help="compile a model into a one-file artifact",
                       description="Import a model, run a pass pipeline, build it with TVM, write an artifact.")
    c.add_argument("model", help="an .onnx model (or lowbit IR text)")
    c.add_argument("-o", "--output", required=True, help="the artifact to write (e.g. model.lbit)")
    c.add_argument("--target", default="auto",
                   help="auto (this CPU), cpu, cuda, cuda:sm_XX, or a TVM target JSON object (default: auto)")
    c.add_argument("--pipeline", help="pass pipeline text (default: the O2 preset)")
    c.add_argument("--preset", help="a named pipeline: " + ", ".join(PRESET_NAMES))
    c.add_argument("--report", action="store_true", help="print per-layer SQNR/cosine of the quantized layers "
                   "against float (needs --calib) and record them in the manifest")
    c.add_argument("--calib", metavar="DATA", help="calibration data for quantize: an .npz (keys = input names, "
                   "leading axis = samples) or a directory of .npz files")
    c.add_argument("--shape", action="append", type=_shape_arg, metavar="NAME=DIMS",
                   help="bind a symbolic input shape (repeatable)")
    c.add_argument("--codegen", metavar="KNOBS", help="code generation knobs, e.g. 'tile=4,accumulators=8' or "
                   "per kernel 'conv0:amx_tasks=8' (recorded in the manifest; see lowbit inspect --json)")
    c.add_argument("--debug-schedules", action="store_true", help="print why schedule rules declined (stderr)")
    c.add_argument("--keep-integer", action="store_true", help="run integer kernels even on a CPU without VNNI or "
                   "AMX, where they are slower than float (by default the model then stays float, with a warning)")
    c.add_argument("--keep-bf16", action="store_true", help="run bf16 ops (--preset bf16) even on a CPU without "
                   "AMX-BF16, where they compute in f32 (by default the model then stays f32, with a warning)")
    c.add_argument("--tune-db", metavar="DB", help="a tuning database (lowbit tune): each kernel takes its best "
                   "record for this target, else its default")
    c.set_defaults(func=cmd_compile)

    e = sub.add_parser("export", help="write a model, after a pass pipeline, as an ONNX QDQ model",
                       description="Import a model, run a pass pipeline (default: the int8 preset) and write the "
                                   "result as an ONNX model in QDQ form that onnxruntime loads, to cross-check "
                                   "lowbit's quantization.")
    e.add_argument("model", help="an .onnx model (or lowbit IR text); not an artifact")
    e.add_argument("--format", required=True, choices=["onnx-qdq"], help="the output format")
    e.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    e.add_argument("--pipeline", help="pass pipeline text (default: the int8 preset)")
    e.add_argument("--preset", help="a named pipeline: " + ", ".join(PRESET_NAMES))
    e.add_argument("--calib", metavar="DATA", help="calibration data for quantize (.npz or a directory of them)")
    e.add_argument("--shape", action="append", type=_shape_arg, metavar="NAME=DIMS",
                   help="bind a symbolic input shape (repeatable)")
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="run an artifact on inputs from an .npz file",
                       description="Run an artifact; npz keys are the model's input and output names.")
    r.add_argument("artifact")
    r.add_argument("--inputs", required=True, help=".npz with one array per model input")
    r.add_argument("-o", "--output", required=True, help=".npz to write the outputs to")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="time an artifact (and onnxruntime with --vs) in this process",
                       description="Median latency of an artifact after warm-up, optionally beside onnxruntime "
                                   "on the same inputs with the same thread count.")
    b.add_argument("artifact")
    b.add_argument("--inputs", help=".npz inputs (default: random inputs of the right shapes)")
    b.add_argument("--vs", metavar="MODEL.onnx", help="also time this ONNX model with onnxruntime")
    b.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--threads", type=int, help="threads for lowbit and onnxruntime (default: all cores)")
    b.add_argument("--json", action="store_true", help='one line: {"lowbit_ms": .., "onnxruntime_ms": .., "ratio": ..}')
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("inspect", help="show an artifact's manifest", description="Show an artifact's manifest.")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_inspect)
    from .cli_tune import add_parsers

    add_parsers(sub, _pipeline_arg, _shape_arg, PRESET_NAMES)
    return p


def _warnings_as_lines():
    """LowbitWarnings print as one line, ``lowbit: warning: ...``, from every command (others as Python prints
    them)."""
    import warnings

    from .errors import LowbitWarning

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LowbitWarning):
            print(f"lowbit: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    warnings.showwarning = one_line
    return show


def main(argv=None) -> int:
    import warnings

    if argv is None:  # a process of its own (the console script): start faster
        keep_torch_from_tvm()

    parser = build_parser()
    args = parser.parse_args(argv)
    show = _warnings_as_lines()
    try:
        return args.func(args)
    except LowbitError as e:
        if args.debug:
            raise
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head); not an error
        return 0
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in lowbit: still one line unless --debug
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"lowbit: error: internal error ({type(e).__name__}: {msg}); rerun with --debug for a traceback",
              file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
