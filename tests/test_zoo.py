"""The test zoo end to end through the frontend, the text form, the CLI and the interpreter."""
import io
import contextlib

import numpy as np
import pytest

import lowbit
from lowbit import cli
from helpers import max_rel_err, run_ort
import model_zoo as zoo

MODELS = list(zoo.ZOO)


def _opt_text(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["opt", *map(str, argv)]) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", MODELS)
def test_interpreter_matches_onnxruntime(zoo_dir, name):
    model = (zoo_dir / f"{name}.onnx").read_bytes()
    inputs = dict(np.load(zoo_dir / f"{name}.npz"))
    want = run_ort(model, inputs)
    g = lowbit.load(zoo_dir / f"{name}.onnx", shapes=zoo.SHAPES.get(name))
    got = lowbit.interpret(g, inputs)
    assert set(got) == set(want)
    for k in want:
        assert max_rel_err(got[k], want[k]) <= 1e-4, k


@pytest.mark.parametrize("name", MODELS)
def test_opt_prints_ir_that_round_trips(zoo_dir, tmp_path, name):
    shape_args = [a for n, s in zoo.SHAPES.get(name, {}).items() for a in ("--shape", f"{n}={'x'.join(map(str, s))}")]
    text = _opt_text(zoo_dir / f"{name}.onnx", *shape_args)
    assert text.startswith("graph @") and "return " in text
    ir = tmp_path / f"{name}.lbir"
    ir.write_text(text)
    assert _opt_text(ir) == text
    # and the parsed text computes what the imported model computes
    inputs = dict(np.load(zoo_dir / f"{name}.npz"))
    a = lowbit.interpret(lowbit.parse(text), inputs)
    b = lowbit.interpret(lowbit.load(zoo_dir / f"{name}.onnx", shapes=zoo.SHAPES.get(name)), inputs)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_qdq_model_keeps_integer_types(zoo_dir):
    g = lowbit.load(zoo_dir / "qdq_cnn.onnx")
    text = str(g)
    assert "xu8, q<" in text and "xi8, q<axis=0, [" in text
    counts = g.op_counts()
    assert counts["quantize"] > 0 and counts["dequantize"] > 0


def test_cli_subprocess_round_trip(zoo_dir, tmp_path):
    """The console script itself (fresh process): ONNX in, IR out, IR in, the same IR out."""
    from conftest import run_cli

    out = tmp_path / "legacy.lbir"
    run_cli("opt", zoo_dir / "legacy_cnn.onnx", "-o", out, check_rc=0)
    p = run_cli("opt", out, check_rc=0)
    assert p.stdout == out.read_text()
