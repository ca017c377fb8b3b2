"""The compile driver: load → (calibration) → pass pipeline → code generation → artifact.

The Python API (``lowbit.compile``), ``lowbit compile``, ``lowbit export`` and ``lowbit tune`` all go through here, so the
sequence — and what is checked before any slow step — is written once. Code generation (``lowbit.codegen``)
sees only the optimized graph; it knows no file formats and no passes.

>>> art = compile("examples/tiny_cnn.onnx", target="cpu")    # doctest: +SKIP
>>> art.save("tiny_cnn.lbit")                                # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .errors import LowbitError, LowbitWarning
from .ir.graph import Graph
from .progress import Progress

# the passes a per-layer report leaves out to get the float graph it compares against; also the ones that make
# integer kernels, which need int8 dot-product instructions to beat float
QUANTIZING_PASSES = ("quantize", "lower-qdq")
# measured on a 2-core Xeon with VNNI turned off (benchmarks/int8.py models): lowbit int8 / lowbit fp32
SLOW_INT8 = "MobileNetV2 17.6 vs 4.4 ms, ResNet-18 72.9 vs 14.6 ms"
BF16_PASS = "to-bf16"  # the pass that makes bf16 ops


def _looks_like_ir(path: str) -> bool:
    if path.endswith(".onnx"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    text = head.lstrip()
    while text.startswith(b"//"):
        text = text.split(b"\n", 1)[1].lstrip() if b"\n" in text else b""
    return text.startswith(b"graph")


def load_model(source, shapes: dict | None = None, example_inputs=None) -> Graph:
    """A Graph from IR text (a file whose first word is ``graph``), an ONNX path / bytes / ModelProto, or a
    torch module with ``example_inputs``; a Graph is returned as it is."""
    if isinstance(source, Graph):
        return source
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and _looks_like_ir(str(source)):
        from .ir import parse

        with open(source, encoding="utf-8", errors="replace") as f:
            return parse(f.read(), source=str(source))
    from .frontend import load

    return load(source, example_inputs, shapes=shapes)


@dataclass
class Prepared:
    """A model after the pipeline: ``graph`` (optimized), ``source`` (as imported), the parsed ``passes``, the
    checked calibration samples (None without calibration data) and the per-layer records of the weight passes
    (``quantize-weights`` / ``shift-add``: method, error, scheme, fallback; empty without them)."""

    graph: Graph
    source: Graph
    passes: object
    calibration: list | None
    weight_report: list | None = None
    sparsity_report: list | None = None


def prepare(model, pipeline="O2", *, shapes=None, calibration=None, progress=None) -> Prepared:
    """Parse the pipeline (a bad one fails before any import), load the model, read and check calibration
    data against its inputs, run the pipeline."""
    from .passes import PassContext, parse_pipeline, run_pipeline

    prog = progress if isinstance(progress, Progress) else Progress(progress)
    passes = pipeline if isinstance(pipeline, list) else parse_pipeline(pipeline)
    if isinstance(model, Graph):
        source = model
    else:
        with prog.step("importing"):
            source = load_model(model, shapes=shapes)
    samples = None
    if calibration is not None:  # read (and checked) once, for the quantize pass and any report
        from .quant.calibrate import load_samples

        samples = load_samples(calibration, source)
    ctx = PassContext(calibration=samples, progress=prog.tick)
    with prog.step(f"running passes ({str(passes) or 'none'})"):
        graph = run_pipeline(source, passes, ctx)
    return Prepared(graph, source, passes, samples, list(getattr(ctx, "weight_report", None) or []),
                    list(getattr(ctx, "sparsity_report", None) or []))


def integer_policy(target, passes, keep_integer: bool = False):
    """(passes, warning): on an x86 target with no VNNI (AVX-512 or AVX) and no AMX-INT8, lowbit's exact integer kernels
    are several times slower than its float ones, so the passes that make integer kernels do not run (the model
    stays float, a QDQ model keeps its float simulation, which is its ONNX meaning) and the warning says so;
    ``keep_integer`` runs them anyway."""
    from .codegen import X86Target
    from .passes import Pipeline

    if keep_integer or not isinstance(target, X86Target) or any(
            target.has(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8")):
        return passes, None
    dropped = [p.name for p in passes if p.name in QUANTIZING_PASSES]
    if not dropped:
        return passes, None
    kept = Pipeline(p for p in passes if p.name not in QUANTIZING_PASSES)
    return kept, (f"target {target.describe()} has no VNNI (AVX-512 or AVX) and no AMX-INT8: lowbit's exact integer kernels "
                  f"are slower than float there ({SLOW_INT8}), so {' and '.join(dict.fromkeys(dropped))} did not "
                  "run and the model stays float (--keep-integer runs the integer kernels anyway)")


# Where AVX512-BF16 pays: vdpbf16ps (2 products per f32 lane) must issue as fast as an FMA (1 product per lane).
# On AMD Zen 4 both are one 512-bit op per cycle; on Intel cores vdpbf16ps issues at half the FMA rate (Xeon,
# family 6 model 207: 0.39 vs 0.19 ns per instruction, 0.73 in the conv kernel's register tile), so there bf16
# computes no faster than f32 and lowbit's bf16 ResNet-18 ran 2.0x slower than its f32 one.
FAST_BF16_DOT_MCPUS = ("znver4", "znver5")


def bf16_policy(target, passes, keep_bf16: bool = False):
    """(passes, warning): bf16 runs where it is faster than f32, on AMX-BF16 tiles or on AVX512-BF16 where the
    core issues ``vdpbf16ps`` at the FMA rate (``FAST_BF16_DOT_MCPUS``). Elsewhere lowbit's bf16 kernels are no
    faster than float (the generic ones compute the same products in f32), so ``to-bf16`` does not run, the
    model stays f32 and the warning says so; ``keep_bf16`` runs it anyway."""
    from .codegen import X86Target
    from .passes import Pipeline

    if keep_bf16 or not isinstance(target, X86Target) or target.has("amx_bf16") or not any(
            p.name == BF16_PASS for p in passes):
        return passes, None
    if target.has("avx512_bf16") and target.mcpu in FAST_BF16_DOT_MCPUS:
        return passes, None
    kept = Pipeline(p for p in passes if p.name != BF16_PASS)
    why = ("has AVX512-BF16 but no AMX-BF16, and its cores issue vdpbf16ps at half the FMA rate: lowbit's bf16 "
           "kernels there are no faster than float" if target.has("avx512_bf16") else
           "has neither AMX-BF16 nor AVX512-BF16: lowbit's bf16 kernels there compute in f32 and are no faster "
           "than float")
    return kept, (f"target {target.describe()} {why}, so {BF16_PASS} did not run and the model stays f32 "
                  "(--keep-bf16 runs the bf16 ops anyway)")


def compile(model, target="auto", pipeline="O2", *, shapes=None, progress=None, calibration=None,
            report: bool = False, codegen=None, schedule_log: list | None = None, keep_integer: bool = False,
            keep_bf16: bool = False, tune_db=None):
    """Import (if not a Graph), run ``pipeline``, generate code for ``target``; return an ``Artifact``.

    ``calibration`` feeds passes that need data (``quantize``): an .npz path, a directory of them, or an
    iterable of ``{input name: array}``. ``report`` records per-layer SQNR and cosine of every integer op
    against the same pipeline without ``quantize``/``lower-qdq`` (on up to 4 calibration samples) in the
    manifest's ``quant_report``. ``codegen`` sets code generation knobs (``CodegenConfig``, its text
    ``"key=value,..."`` or a dict); they are recorded in the manifest. ``schedule_log``, a list, receives one
    line per schedule rule that declined a kernel. Where integer kernels would be slower than float
    (``integer_policy``) the model stays float, with a warning (``warnings.warn`` and the manifest's
    ``warnings``), unless ``keep_integer``; likewise bf16 without AMX-BF16 (``bf16_policy``) unless
    ``keep_bf16``. ``tune_db``, a tuning database (``lowbit tune``), gives each kernel its best measured knobs
    for this target (``autotune.tuned_config``); the manifest's kernel records mark the tuned ones."""
    import warnings

    from . import codegen as cg
    from .passes import parse_pipeline

    prog = progress if isinstance(progress, Progress) else Progress(progress)
    t_start = time.perf_counter()
    tgt = cg.Target.parse(target)  # a bad target or knob fails before the import
    config = cg.CodegenConfig.parse(codegen)
    if report and calibration is None:
        raise LowbitError("--report compares against float on calibration data: give --calib")
    passes, warning = integer_policy(tgt, parse_pipeline(pipeline), keep_integer)
    passes, bf16_warning = bf16_policy(tgt, passes, keep_bf16)
    notes = [w for w in (warning, bf16_warning) if w]
    for w in notes:
        warnings.warn(w, LowbitWarning, stacklevel=2)
    p = prepare(model, passes, shapes=shapes, calibration=calibration, progress=prog)
    quant_report = None
    if report:
        from .passes import run_pipeline
        from .quant.report import layer_report

        with prog.step("measuring per-layer quantization error"):
            reference = run_pipeline(p.source, [q for q in p.passes if q.name not in QUANTIZING_PASSES])
            quant_report = layer_report(reference, p.graph, p.calibration)
    tuned = {}
    if tune_db is not None:
        from .autotune import tuned_config

        with prog.step(f"looking up tuned kernels in {tune_db}"):
            config, tuned = tuned_config(p.graph, tgt, config, tune_db)
    art = cg.build(p.graph, tgt, config, progress=prog, schedule_log=schedule_log)
    for k in art.manifest["kernels"]:
        if k["name"] in tuned:
            k["tuned"] = tuned[k["name"]]
    if tune_db is not None:
        art.manifest["tune_db"] = {"path": os.path.basename(str(tune_db)), "tuned_kernels": len(tuned)}
    art.manifest["pipeline"] = str(p.passes)
    meta = getattr(p.source, "metadata", None)
    if meta:  # e.g. the ONNX opset, and the one an old model was upgraded from
        art.manifest["source"] = dict(meta)
    if quant_report is not None:
        art.manifest["quant_report"] = quant_report
    if p.weight_report:
        art.manifest["weight_report"] = p.weight_report
    if p.sparsity_report:
        art.manifest["sparsity_report"] = p.sparsity_report
    if notes:
        art.manifest["warnings"] = notes
    art.manifest["compile_seconds"] = round(time.perf_counter() - t_start, 3)
    return art


def export(model, path, fmt: str = "onnx-qdq", pipeline="int8", *, shapes=None, calibration=None,
           progress=None) -> None:
    """Run ``pipeline`` over ``model`` and write the result to ``path`` in ``fmt`` (``onnx-qdq``: an opset-20
    QDQ model onnxruntime loads), atomically: nothing is half-written."""
    from .runtime.artifact import write_atomically

    if fmt != "onnx-qdq":
        raise LowbitError(f"unknown export format '{fmt}' (known: onnx-qdq)")
    if isinstance(model, (str, os.PathLike)) and str(model).endswith(".lbit"):
        raise LowbitError(f"{model}: an artifact holds compiled code, not the graph; export from the model "
                          "itself with the same --preset/--pipeline and --calib")
    from .export import to_onnx_qdq

    p = prepare(model, pipeline, shapes=shapes, calibration=calibration, progress=progress)
    write_atomically(path, to_onnx_qdq(p.graph).SerializeToString())


def tune(model, db_path, *, target="auto", pipeline="O2", shapes=None, calibration=None, trials: int = 0,
         time_budget: float = 0.0, search: str = "xgb", batch: int = 8, rpc: str | None = None, seed: int = 0,
         stream=None, progress=None):
    """Tune ``model``'s kernels for ``target`` into the database at ``db_path`` (created if missing; resumed
    if it holds records for this target). ``rpc`` = ``"HOST:PORT:KEY"`` measures on TVM RPC servers
    registered with that tracker. Returns the tuner (its ``states`` hold per-kernel results). The pipeline
    and the integer / bf16 policies are ``compile``'s, so the tuned kernels are the ones it builds."""
    from .autotune.database import Database
    from .autotune.tuner import Tuner
    from .autotune.workload import extract
    from .codegen import Target
    from .passes import parse_pipeline

    tgt = Target.parse(target)
    if not trials and not time_budget:
        raise LowbitError("give --trials or --time-budget (or both): tuning needs a limit")
    passes, _ = integer_policy(tgt, parse_pipeline(pipeline))
    passes, _ = bf16_policy(tgt, passes)
    runner = None
    if rpc:
        from .autotune.rpc import RPCMeasurer

        tracker, _, key = rpc.rpartition(":")
        if ":" not in tracker or not key:
            raise LowbitError(f"--rpc wants HOST:PORT:KEY, got '{rpc}'")
        runner = RPCMeasurer(tracker, key)
    p = prepare(model, passes, shapes=shapes, calibration=calibration, progress=progress)
    tasks = extract(p.graph, tgt)
    with Database(db_path) as db:
        tuner = Tuner(tasks, tgt, db, trials=trials, time_budget=time_budget, search=search, batch=batch,
                      runner=runner, seed=seed, model_name=str(model) if isinstance(model, str) else p.source.name,
                      stream=stream)
        tuner.run()
    return tuner


__all__ = ["load_model", "prepare", "Prepared", "compile", "export", "tune", "integer_policy", "bf16_policy"]
