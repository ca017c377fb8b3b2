"""ONNX's own backend test suite through lowbit: tested / ran / correct / wrong / refused, refusals grouped.

    python benchmarks/conformance.py [--mode interp|compiled|both] [--filter SUBSTRING] [--list wrong,refused]

The cases are the onnx wheel's ``onnx/backend/test/data`` and Debian's ``libonnx-testdata``
(``/usr/share/libonnx-testdata/data``; ``apt-get install libonnx-testdata``), ~1050 in all: one model and one or
more data sets of inputs with reference outputs each. A case present in both sources is counted once, the
wheel's copy winning. ``real`` cases (model URLs, downloads) are listed as not available: nothing is fetched.
``light`` models get ONNX's own dummy inputs (``arange / n``) and the reference outputs shipped beside them.

Per case: ``interp`` imports the model with ``lowbit.load`` and runs lowbit's reference interpreter; ``compiled``
compiles it for this CPU (``lowbit.compile``, O2) and runs the artifact. A case is *correct* when every output
has the reference's dtype and shape and its values are within the case's tolerance (ONNX's runner: rtol 1e-3,
atol 1e-7, or the data.json's), with NaN where the reference has NaN; *wrong* otherwise; *refused* when lowbit
raises its one-line ``LowbitError`` (the reason is grouped with names and numbers blanked). Anything else is
an *internal error* — a bug. Cases whose reference data contradicts the ONNX spec of today are listed in
``OUTDATED`` with the spec text, not counted as correct or wrong; onnxruntime's answer is reported beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEBIAN = pathlib.Path("/usr/share/libonnx-testdata/data")
CATEGORIES = ("node", "pytorch-converted", "pytorch-operator", "simple", "real")

# reference data written before a spec change; the text is the current spec's
OUTDATED = {
    "node/test_cast_FLOAT_to_BFLOAT16": "ONNX 1.12's data truncates float -> bfloat16; the Cast spec since opset 19 "
                                        "(and onnxruntime, and ml_dtypes) round to nearest even",
    "node/test_resize_downsample_scales_linear_align_corners":
        "the spec's align_corners is x_original = x_resized * (length_original - 1) / (length_resized - 1), "
        "length_resized 'the length of the resized tensor' (2 here); the data divides by length x scale - 1 = 1.4",
    "node/test_castlike_FLOAT_to_BFLOAT16": "as test_cast_FLOAT_to_BFLOAT16 (1.12 data truncates; the spec rounds "
                                            "to nearest even)",
    "node/test_castlike_FLOAT_to_BFLOAT16_expanded": "as test_cast_FLOAT_to_BFLOAT16",
}


@dataclass
class Case:
    key: str  # category/name
    model: pathlib.Path
    data_sets: list = field(default_factory=list)  # [(inputs: [path], outputs: [path])]
    rtol: float = 1e-3
    atol: float = 1e-7
    light: bool = False
    url: str | None = None


def _data_sets(d: pathlib.Path) -> list:
    out = []
    for ds in sorted(d.glob("test_data_set_*")):
        ins = sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        outs = sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        out.append((ins, outs))
    return out


def discover() -> dict[str, Case]:
    """Every case of both sources, the wheel's winning where both have one."""
    import onnx

    wheel = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases: dict[str, Case] = {}
    for root in (wheel, DEBIAN):  # the wheel first: its copy wins
        if not root.is_dir():
            continue
        for cat in CATEGORIES:
            for d in sorted((root / cat).glob("*")) if (root / cat).is_dir() else []:
                key = f"{cat}/{d.name}"
                if key in cases or not d.is_dir():
                    continue
                c = Case(key, d / "model.onnx", _data_sets(d))
                meta = d / "data.json"
                if meta.exists():
                    m = json.loads(meta.read_text())
                    c.rtol, c.atol, c.url = m.get("rtol", c.rtol), m.get("atol", c.atol), m.get("url")
                cases[key] = c
        light = root / "light"
        for m in sorted(light.glob("light_*.onnx")) if light.is_dir() else []:
            key = f"light/{m.stem}"
            if key not in cases:
                outs = sorted(light.glob(f"{m.stem}_output_*.pb"))
                cases[key] = Case(key, m, [([], outs)], light=True)
    return cases


def _load_tensor(path):
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def _inputs(case: Case, model, ins: list) -> dict:
    """{graph input name: array} of a data set (inputs in the order of the graph's non-initializer inputs);
    bfloat16 data, which onnx reads as its uint16 bits, as bfloat16."""
    import ml_dtypes

    inits = {i.name for i in model.graph.initializer}
    graph_ins = [i for i in model.graph.input if i.name not in inits]
    if case.light:
        from onnx.backend.test.runner import Runner

        return {x.name: Runner.generate_dummy_data(x, seed=0, name=case.key, random=False) for x in graph_ins}
    out = {}
    for x, p in zip(graph_ins, ins):
        a = _load_tensor(p)
        if x.type.tensor_type.elem_type == 16 and a.dtype == np.uint16:  # TensorProto.BFLOAT16
            a = a.view(ml_dtypes.bfloat16)
        out[x.name] = a
    return out


_RUNTIME = re.compile(r"must be a constant: lowbit compiles static [a-z ]+, and '([^']+)' is computed at run time")


def _bind(model, name: str, value):
    """The model with graph input ``name`` turned into an initializer holding ``value``."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [i for i in m.graph.input if i.name != name]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return m


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    """None when ``got`` matches ``want`` (dtype, shape, values within tolerance, NaN positions), else why not."""
    got = np.asarray(got)
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    if want.dtype.kind in "fc":
        gn, wn = np.isnan(got), np.isnan(want)
        if not np.array_equal(gn, wn):
            return "NaN positions differ"
        g, w = got[~wn].astype(np.float64), want[~wn].astype(np.float64)
        inf = np.isinf(w)
        if not np.array_equal(g[inf], w[inf]):
            return "infinities differ"
        bad = np.abs(g[~inf] - w[~inf]) > atol + rtol * np.abs(w[~inf])
        if bad.any():
            return f"max |diff| {float(np.max(np.abs(g[~inf] - w[~inf]))):.3g}"
        return None
    if want.dtype.kind in "fcmM" or want.dtype == object:
        return None if np.array_equal(got, want) else "values differ"
    return None if np.array_equal(got, want) else "values differ"


def _reason(msg: str) -> str:
    """A refusal message with its specifics blanked, so that refusals group: names in quotes, paths, numbers."""
    msg = msg.split("\n")[0]
    msg = re.sub(r"^([^:]*model\.onnx|<ModelProto>): ", "", msg)
    msg = re.sub(r"node '[^']*'|node \S+ \(", "node … (", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\b\d+(\.\d+)?\b(?!-D)", "N", msg)  # (not "2-D")
    return msg[:160]


def run_case(case: Case, mode: str, work: pathlib.Path) -> tuple[str, str]:
    """(status, detail): status in correct / wrong / refused / internal / unavailable / outdated."""
    import onnx

    import lowbit
    from lowbit.errors import LowbitError

    if case.url is not None and not case.model.exists():
        return "unavailable", "model downloads from a URL"
    if not case.data_sets or not all(outs for _, outs in case.data_sets):
        return "unavailable", "no reference outputs"
    try:
        model = onnx.load(str(case.model))
    except Exception as e:  # noqa: BLE001  (the file itself)
        return "unavailable", f"onnx cannot load it: {e}"
    bound: dict = {}
    try:
        try:  # the model as it is first: a refusal of what it is comes before reading its data
            lowbit.load(model)
        except LowbitError as e:
            if _RUNTIME.search(str(e)) is None:
                raise
        for ins, outs in case.data_sets:
            feed = _inputs(case, model, ins)
            # an input lowbit needs constant (a shape, axes, pads: lowbit compiles static shapes) is bound to
            # this data set's value as an initializer, so the case tests the op at that value
            while True:
                try:
                    m = model
                    for name in bound:
                        m = _bind(m, name, feed[name])
                    if mode == "interp":
                        g = lowbit.load(m)
                        got = list(lowbit.interpret(g, {k: v for k, v in feed.items() if k not in bound}).values())
                    else:
                        import lowbit.runtime as rt

                        path = work / (case.key.replace("/", "_") + ".lbit")
                        lowbit.compile(m).save(path)
                        got = list(rt.load(path).run({k: v for k, v in feed.items() if k not in bound}).values())
                    break
                except LowbitError as e:
                    hit = _RUNTIME.search(str(e))
                    if hit is None or hit.group(1) not in feed or hit.group(1) in bound:
                        raise
                    bound[hit.group(1)] = True
            want = [_load_tensor(p) for p in outs]
            if len(got) != len(want):
                return "wrong", f"{len(got)} outputs, reference has {len(want)}"
            for i, (a, b) in enumerate(zip(got, want)):
                why = compare(a, b, case.rtol, case.atol)
                if why:
                    return "wrong", f"output {i}: {why}"
    except LowbitError as e:
        return "refused", str(e)
    except Exception as e:  # noqa: BLE001  (a bug: reported, never hidden)
        return "internal", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return "correct", ""


def _ort_agrees(case: Case) -> str:
    """Whether onnxruntime's answer on a case equals lowbit's interpreter's (bf16 outputs compared as f32:
    onnxruntime's Python API returns no bfloat16 arrays, so the model gets a Cast to f32 after each)."""
    try:
        import onnx
        import onnxruntime as ort

        import lowbit

        model = onnx.load(str(case.model))
        ins, _ = case.data_sets[0]
        feed = _inputs(case, model, ins)
        mine = [np.asarray(v, np.float32) if v.dtype.name == "bfloat16" else v
                for v in lowbit.interpret(lowbit.load(model), feed).values()]
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for o in m.graph.output:
            if o.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16:
                m.graph.node.append(onnx.helper.make_node("Cast", [o.name], [o.name + "_f32"], to=1))
                o.name = o.name + "_f32"
                o.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        theirs = s.run(None, feed)
        same = all(compare(a, b, 0.0, 0.0) is None for a, b in zip(theirs, mine))
        return "agrees with lowbit" if same else "differs from lowbit"
    except Exception as e:  # noqa: BLE001
        return f"cannot run it ({type(e).__name__})"


def run_suite(mode: str, filt: str | None = None, skip_light: bool = False, log=None) -> dict:
    """{"counts": Counter, "cases": {key: (status, detail)}} over every case (matching ``filt``)."""
    import tempfile
    import warnings

    cases = discover()
    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-conformance-"))
    results = {}
    for key, case in cases.items():
        if filt and filt not in key:
            continue
        if skip_light and case.light:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status, detail = run_case(case, mode, work)
        if key in OUTDATED and status in ("wrong", "correct"):
            detail = f"{status} against the data; {OUTDATED[key]}; onnxruntime {_ort_agrees(case)}"
            status = "outdated"
        results[key] = (status, detail)
        if log:
            log(key, status, detail)
    counts = Counter(s for s, _ in results.values())
    return {"counts": counts, "cases": results}


def summary(mode: str, res: dict, show: set) -> str:
    c = res["counts"]
    tested = sum(c.values()) - c["unavailable"]
    ran = tested - c["refused"]
    lines = [f"## {mode}",
             f"tested {tested}  ran {ran}  correct {c['correct']}  wrong {c['wrong']}  refused {c['refused']}  "
             f"internal errors {c['internal']}  outdated reference data {c['outdated']}  "
             f"(not available: {c['unavailable']})"]
    groups = Counter(_reason(d) for s, d in res["cases"].values() if s == "refused")
    lines.append("refusals, grouped:")
    lines += [f"  {n:4d}  {r}" for r, n in groups.most_common()]
    for status in ("wrong", "internal", "outdated"):
        items = [(k, d) for k, (s, d) in res["cases"].items() if s == status]
        if items:
            lines.append(f"{status}:")
            lines += [f"  {k}: {d}" for k, d in items]
    for status in sorted(show - {"wrong", "internal", "outdated"}):
        lines.append(f"{status}:")
        lines += [f"  {k}: {d}" for k, (s, d) in res["cases"].items() if s == status]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="interp", choices=("interp", "compiled", "both"))
    p.add_argument("--filter", help="only cases whose category/name contains this")
    p.add_argument("--list", default="", help="also list the cases of these statuses (e.g. refused,correct)")
    p.add_argument("--skip-light", action="store_true", help="leave out the light model-zoo networks (slow)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case as it finishes")
    a = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    modes = ("interp", "compiled") if a.mode == "both" else (a.mode,)
    show = {s for s in a.list.split(",") if s}
    from lowbit.runtime.host import cpu_model_name

    for mode in modes:
        t0 = time.perf_counter()
        log = (lambda k, s, d: print(f"[{mode}] {s:9s} {k} {d[:120]}", file=sys.stderr, flush=True)) \
            if a.verbose else None
        res = run_suite(mode, a.filter, a.skip_light, log)
        print(summary(mode, res, show))
        print(f"({time.perf_counter() - t0:.0f} s; CPU: {cpu_model_name()})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
