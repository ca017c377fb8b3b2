"""Golden IR tests: every .lbir file under tests/filecheck runs through lit + filecheck."""
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from lowbit.cli import split_input
from lowbit.ir import dtypes as dt

ROOT = pathlib.Path(__file__).parent / "filecheck"
FILES = sorted(ROOT.rglob("*.lbir"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_lit(path):
    lit = shutil.which("lit")
    assert lit, "lit is not installed: pip install -e '.[dev]'"
    p = subprocess.run([lit, "-v", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def test_every_pass_has_a_golden_file():
    from lowbit.passes import registered_passes

    missing = [n for n in registered_passes() if not (ROOT / "passes" / f"{n}.lbir").exists()]
    assert not missing, f"passes without a golden test: {missing}"


def _random_inputs(g, rng):
    out = {}
    for v in g.inputs:
        t = v.type
        if t.dtype.is_float:
            out[v.name] = rng.normal(0, 1, t.shape).astype(t.dtype.np_dtype)
        elif t.dtype == dt.boolean:
            out[v.name] = rng.integers(0, 2, t.shape).astype(bool)
        else:
            lo, hi = t.dtype.iinfo()
            out[v.name] = rng.integers(max(lo, -100), min(hi, 100) + 1, t.shape).astype(t.dtype.np_dtype)
    return out


# passes that change the function on purpose (zeroing weights): tests/test_sparsify.py checks them by their error
PRUNING = ("sparsify",)
CASES = []
for f in sorted((ROOT / "passes").glob("*.lbir")):
    text = f.read_text()
    pipelines = re.findall(r"RUN: lowbit opt %s --split-input-file -p '?([^'|]+?)'? \|", text)
    for pipe in pipelines:
        if pipe.strip().startswith(PRUNING):
            continue
        for i, chunk in enumerate(split_input(text)):
            CASES.append(pytest.param(f, chunk, pipe.strip(), id=f"{f.stem}-{pipe.strip()}-case{i}"))


# passes that lower precision on purpose, and their bound: to-bf16 rounds inputs and weights to 8 significant
# bits (each within 2^-9 relative), so a product is within about 2^-8 and a sum within that of its magnitude;
# dynamic quantization rounds each input row to 256 levels of its range (and a float weight to 255)
PRECISION = {"to-bf16": 2.0 ** -7, "quantize{dynamic=true}": 2.0 ** -6}


@pytest.mark.parametrize("path,chunk,pipeline", CASES)
def test_golden_cases_keep_numerics(path, chunk, pipeline):
    """The graph computes the same before and after the pass (interpreter, max relative error 1e-5, or the
    bound of a pass in PRECISION)."""
    g = lowbit.parse(chunk, source=str(path))
    after = lowbit.run_passes(g, pipeline)
    inputs = _random_inputs(g, np.random.default_rng(0))
    a, b = lowbit.interpret(g, inputs), lowbit.interpret(after, inputs)
    for k in a:
        scale = max(float(np.max(np.abs(a[k].astype(np.float64)))), 1e-30) if a[k].size else 1.0
        err = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) / scale if a[k].size else 0.0
        tol = max([1e-5] + [t for name, t in PRECISION.items() if name in pipeline.split(",")])
        assert err <= tol, f"{k}: {err}"
