"""ONNX's backend test suite (the onnx wheel's cases and Debian's libonnx-testdata) through lowbit's interpreter:
no wrong answer, no internal error, and at least FLOOR cases correct (benchmarks/conformance.py runs it, and the
compiled artifacts, in full)."""
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLOOR = 880  # correct cases through the interpreter, light models left out (890 when set)


def _runner():
    spec = importlib.util.spec_from_file_location("lowbit_conformance", ROOT / "benchmarks" / "conformance.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_backend_suite_through_the_interpreter():
    conf = _runner()
    if not conf.DEBIAN.is_dir():
        pytest.skip("Debian's libonnx-testdata is not installed (apt-get install libonnx-testdata; .ci/run does)")
    res = conf.run_suite("interp", skip_light=True)
    c = res["counts"]
    bad = {k: d for k, (s, d) in res["cases"].items() if s in ("wrong", "internal")}
    assert not bad, f"{len(bad)} wrong or internal: {dict(list(bad.items())[:10])}"
    assert c["correct"] >= FLOOR, conf.summary("interp", res, set())
