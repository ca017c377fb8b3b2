"""The house rules, checked on the source with ``ast``: which packages code generation may import, no import
cycles, no private cross-imports, no file over 800 lines, and the quantization arithmetic only in the scheme
module. Then the code generation knobs and forced-off features, end to end."""
import ast
import json
import re
import os
import pathlib

import numpy as np
import pytest

import lowbit
import lowbit.runtime.artifact
from conftest import run_cli

ROOT = pathlib.Path(lowbit.__file__).parent
MODULES = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
           for p in ROOT.rglob("*.py")}


def _imports(name: str, path: pathlib.Path):
    """(imported module, imported names, line) for every import in a module, function-local ones included."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names = [a.name for a in node.names]
            yield mod, names, node.lineno
            for n in names:  # ``from . import layout`` imports a module
                if f"{mod}.{n}" in MODULES:
                    yield f"{mod}.{n}", [], node.lineno


def _graph():
    edges = {}
    for name, path in MODULES.items():
        edges[name] = set()
        for mod, _, _ in _imports(name, path):
            if mod in MODULES and mod != name:
                edges[name].add(mod)
    return edges


def test_codegen_imports_no_frontend_passes_or_calibration():
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("lowbit.codegen"):
            continue
        for mod, _, line in _imports(name, path):
            if mod and mod.startswith(("lowbit.frontend", "lowbit.passes", "lowbit.quant.calibrate",
                                       "lowbit.compiler", "lowbit.cli")):
                bad.append(f"{path.name}:{line} imports {mod}")
    assert not bad, bad


def test_runtime_imports_nothing_of_the_compiler():
    bad = [f"{p.name}:{line} imports {mod}" for n, p in MODULES.items() if n.startswith("lowbit.runtime")
           for mod, _, line in _imports(n, p)
           if mod and mod.startswith("lowbit.") and not mod.startswith(("lowbit.runtime", "lowbit.errors"))]
    assert not bad, bad


def test_no_import_cycles():
    """Between modules of ``lowbit`` (a package's ``__init__`` importing its own modules is not a cycle)."""
    edges = _graph()
    for name in edges:  # a package -> its submodule is the package's own re-export
        edges[name] = {m for m in edges[name] if not (MODULES[name].name == "__init__.py" and m.startswith(name + "."))}
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2
    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    assert not cycles, [" -> ".join(c) for c in cycles[:5]]


def test_no_private_names_imported_from_other_modules():
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            if mod and mod.startswith("lowbit"):
                bad += [f"{path.relative_to(ROOT)}:{line} imports {mod}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_source_file_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800}
    assert not long, long


SCHEME = ROOT / "quant" / "scheme.py"


def _quant_arithmetic(path: pathlib.Path):
    """Lines that compute a requantization multiplier or bias unit (a product or quotient of quantization
    scales), an output clamp (``lo, hi = <dtype>.iinfo()``) or a bias in i32 (division by a scale product)."""
    tree = ast.parse(path.read_text())
    src = path.read_text()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple) and \
                isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) and \
                node.value.func.attr == "iinfo":
            yield node.lineno, "output clamp from the dtype range"
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            sides = [ast.get_source_segment(src, s) or "" for s in (node.left, node.right)]
            if all("scale" in s or re.search(r"\b(sx|sw|sy|unit)\b", s) for s in sides):
                yield node.lineno, "product or quotient of quantization scales"


def test_quantization_arithmetic_only_in_the_scheme_module():
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in ROOT.rglob("*.py") if p != SCHEME
             for line, what in _quant_arithmetic(p)]
    assert not found, found
    assert list(_quant_arithmetic(SCHEME)), "the checker finds nothing even in the scheme module"


def test_storage_range_prints_and_parses():
    from lowbit.ir import Graph, QuantParams, TensorType, dtypes as dt

    t = TensorType((2, 3), dt.i8, QuantParams((0.5, 0.25), (0, 0), 0, storage=(-127, 127)))
    g = Graph("g")
    g.add_input("x", TensorType((2, 3), dt.f32))
    g.set_outputs([g.const(np.int8([[1, 2, 3], [4, 5, 6]]), type=t)], ["y"])
    assert "q<range=-127:127, axis=0, [0.5:0, 0.25:0]>" in str(g)
    back = lowbit.parse(str(g))
    assert back.outputs[0].type.quant.storage == (-127, 127) and str(back) == str(g)
    with pytest.raises(lowbit.LowbitError, match="storage range 5:5 is empty"):
        lowbit.parse(str(g).replace("range=-127:127", "range=5:5"))


def test_quantized_weights_carry_the_narrow_range():
    from lowbit.passes import PassContext, run_pipeline
    from model_zoo import small_cnn

    model, inputs = small_cnn(16)
    g = run_pipeline(lowbit.load(model), "int8", PassContext(calibration=[inputs]))
    weights = [op.operands[1].type for op in g.ops if op.opname == "qconv2d"]
    assert weights and all(w.quant.storage == (-127, 127) for w in weights)
    assert "range=-127:127" in str(g)


# -- knobs and forced-off features, end to end ----------------------------------------------------------------
def _int8_conv_model(tmp_path):
    """A u8 conv net (dense 3x3 convs, 32 channels) and its calibration data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.2, (32, 8, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (32, 32, 3, 3)).astype(np.float32)
    hw = 6
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv0"),
             helper.make_node("Relu", ["a"], ["r"], name="relu0"),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, hw, hw])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.normal(0, 1, (8, 1, 8, hw, hw)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "in.npz", x=x[0])
    return tmp_path / "m.onnx"


def _compile_run(tmp_path, tag, *extra):
    art = tmp_path / f"{tag}.lbit"
    run_cli("compile", tmp_path / "m.onnx", "-o", art, "--preset", "int8", "--calib", tmp_path / "calib.npz",
            *extra, check_rc=0)
    run_cli("run", art, "--inputs", tmp_path / "in.npz", "-o", tmp_path / f"{tag}.npz", check_rc=0)
    manifest = json.loads(run_cli("inspect", art, "--json", check_rc=0).stdout)
    with np.load(tmp_path / f"{tag}.npz") as z:
        return manifest, z["y"], lowbit.runtime.artifact.read_artifact(art)[1]["lib/model.so"]


@pytest.fixture(scope="module")
def int8_default(tmp_path_factory):
    """The int8 conv net compiled for this CPU as it is: (directory, manifest, output, library)."""
    d = tmp_path_factory.mktemp("int8net")
    _int8_conv_model(d)
    return (d, *_compile_run(d, "default"))


def test_codegen_knobs_change_the_code_keep_the_outputs_and_are_recorded(int8_default):
    tmp_path, m0, y0, lib0 = int8_default
    # one knob per kernel family conv1 may get here (AMX, VNNI in NHWC, the dot4 and generic contractions)
    knobs = {"amx_tasks": 1, "vnni_pixels": 4, "vnni_rows": 4, "tile": 4}  # (a 6x6 map has 3 AMX row blocks)
    m1, y1, lib1 = _compile_run(tmp_path, "knobs", "--codegen",
                                ",".join(f"conv1:{k}={v}" for k, v in knobs.items()) + ",accumulators=8")
    assert m0["codegen"]["vnni_rows"] == 8 and m0["codegen"]["kernels"] == {}
    assert m1["codegen"]["accumulators"] == 8 and m1["codegen"]["kernels"] == {"conv1": knobs}
    assert lib0 != lib1, "the knobs did not change the generated code"
    np.testing.assert_array_equal(y0, y1)
    kernels = {k["name"]: k for k in m0["kernels"] if k["op"] == "qconv2d"}
    assert set(kernels) == {"conv0", "conv1"} and all(k["kernel"] for k in kernels.values())


def test_unknown_codegen_knob_is_one_line_error(tmp_path):
    _int8_conv_model(tmp_path)
    p = run_cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "x.lbit", "--codegen", "tiles=4", check_rc=1)
    assert p.stderr.startswith("lowbit: error: unknown codegen knob 'tiles'") and not (tmp_path / "x.lbit").exists()


def test_forcing_a_feature_off_changes_the_kernel_family_and_keeps_outputs(int8_default):
    from lowbit.codegen import Target

    host = Target.parse("cpu")
    if not host.has("avx512_vnni"):
        pytest.skip("this CPU has neither AMX nor VNNI: there is no family to turn off")
    tmp_path, m0, y0, _ = int8_default
    off = ["-amx-int8", "-avx512vnni"] if not host.has("amx_int8") else ["-amx-int8"]
    m1, y1, _ = _compile_run(tmp_path, "off", "--target", json.dumps({**host.to_json(), "mattr": off}),
                             "--keep-integer")  # (without VNNI the model would stay float: the test below)
    k0 = {k["name"]: k for k in m0["kernels"] if k["op"] == "qconv2d"}["conv1"]
    k1 = {k["name"]: k for k in m1["kernels"] if k["op"] == "qconv2d"}["conv1"]
    assert k0["kernel"] == ("amx-conv" if host.has("amx_int8") else "vnni-nhwc")
    assert k1["kernel"] != k0["kernel"] and k0["kernel"] in k1["passed_over"], (k0, k1)
    assert m1["target"]["mattr"] == off
    np.testing.assert_array_equal(y0, y1)
    text = run_cli("inspect", tmp_path / "off.lbit", check_rc=0).stdout
    assert "passed over" in text and k0["kernel"] in text


def test_int8_stays_float_with_a_warning_where_integer_kernels_would_be_slower(int8_default):
    """Without VNNI and AMX lowbit's exact integer kernels are several times slower than float: the model stays
    float and the compile says so; --keep-integer runs the integer kernels anyway (bit-exact, as tested)."""
    from lowbit.codegen import Target

    tmp_path = int8_default[0]
    target = json.dumps({**Target.parse("cpu").to_json(), "mattr": ["-amx-int8", "-avx512vnni"]})
    art = tmp_path / "novnni.lbit"
    p = run_cli("compile", tmp_path / "m.onnx", "-o", art, "--preset", "int8", "--calib", tmp_path / "calib.npz",
                "--target", target, check_rc=0)
    assert p.stderr.startswith("lowbit: warning: target llvm")
    assert "no VNNI (AVX-512 or AVX) and no AMX-INT8" in p.stderr
    m = json.loads(run_cli("inspect", art, "--json", check_rc=0).stdout)
    assert "quantize" not in m["pipeline"] and m["warnings"] and {k["op"] for k in m["kernels"]} >= {"conv2d"}
    p = run_cli("compile", tmp_path / "m.onnx", "-o", art, "--preset", "int8", "--calib", tmp_path / "calib.npz",
                "--target", target, "--keep-integer", check_rc=0)
    assert "warning" not in p.stderr
    m = json.loads(run_cli("inspect", art, "--json", check_rc=0).stdout)
    assert [k["kernel"] for k in m["kernels"] if k["op"] == "qconv2d"] == ["dot4", "dot4"]


def test_cli_names_every_preset():
    """The CLI lists the presets without importing the passes: the list must be the passes' own."""
    from lowbit.cli import PRESET_NAMES
    from lowbit.passes import PRESETS

    assert PRESET_NAMES == tuple(PRESETS)
