"""Compile → artifact → run, on the CPU: the zoo against onnxruntime, the CLI, the runtime's checks."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lowbit
import lowbit.runtime
from conftest import run_cli
from helpers import max_rel_err, run_ort
import model_zoo as zoo


@pytest.fixture(scope="module")
def artifacts(zoo_dir, tmp_path_factory):
    """Every zoo model compiled once (O2, this CPU) through the CLI, two compiles at a time (a compile is
    mostly one thread: LLVM's code generation)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    d = tmp_path_factory.mktemp("art")

    def build(name):
        art = d / f"{name}.lbit"
        shape_args = [a for n, s in zoo.SHAPES.get(name, {}).items() for a in ("--shape", f"{n}={'x'.join(map(str, s))}")]
        p = subprocess.run(["lowbit", "compile", str(zoo_dir / f"{name}.onnx"), "-o", str(art), *shape_args],
                           capture_output=True, text=True)
        assert p.returncode == 0, f"{name}: {p.stderr[-2000:]}"
        return name, art
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(build, zoo.ZOO))


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_cli_compile_run_matches_onnxruntime(zoo_dir, artifacts, tmp_path, name):
    outputs = tmp_path / "out.npz"
    run_cli("run", artifacts[name], "--inputs", zoo_dir / f"{name}.npz", "-o", outputs, check_rc=0)
    got = dict(np.load(outputs))
    want = run_ort((zoo_dir / f"{name}.onnx").read_bytes(), dict(np.load(zoo_dir / f"{name}.npz")))
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype
        assert max_rel_err(got[k], want[k]) <= 1e-4, f"{k}: {max_rel_err(got[k], want[k])}"


def test_python_api_matches_onnxruntime(zoo_dir, tmp_path):
    # one model: the fixture above compiles every zoo model through the CLI, which calls the same API
    for name in ("qdq_cnn",):
        g = lowbit.load(zoo_dir / f"{name}.onnx", shapes=zoo.SHAPES.get(name))
        art = lowbit.compile(g, target="cpu", pipeline="O2")
        art.save(tmp_path / f"{name}.lbit")
        m = lowbit.runtime.load(tmp_path / f"{name}.lbit")
        inputs = dict(np.load(zoo_dir / f"{name}.npz"))
        got = m.run(inputs)
        want = run_ort((zoo_dir / f"{name}.onnx").read_bytes(), inputs)
        for k in want:
            assert max_rel_err(got[k], want[k]) <= 1e-4, (name, k)
        b = m.benchmark(inputs, runs=3, warmup=1)
        assert b["runs"] == 3 and 0 < b["min_ms"] <= b["median_ms"] <= b["max_ms"]


def test_artifact_runs_elsewhere_with_only_the_tvm_runtime(artifacts, zoo_dir, tmp_path):
    """A fresh process in another directory, TVM in runtime-only mode, none of lowbit's compiler imported."""
    moved = tmp_path / "elsewhere" / "model.lbit"
    moved.parent.mkdir()
    moved.write_bytes(artifacts["legacy_cnn"].read_bytes())
    script = f"""
import sys, numpy as np
import lowbit.runtime
m = lowbit.runtime.load("model.lbit")
out = m.run(dict(np.load({str(zoo_dir / 'legacy_cnn.npz')!r})))
np.save("prob.npy", out["prob"])
maps = open("/proc/self/maps").read()
assert "libtvm_runtime" in maps, "TVM runtime not loaded"
assert "libtvm_compiler" not in maps and "libtvm.so" not in maps, "the TVM compiler library was loaded"
bad = [n for n in sys.modules if n.split(".")[0] == "onnx" or n.startswith(("lowbit.ir", "lowbit.frontend",
       "lowbit.passes", "lowbit.codegen", "lowbit.autotune", "tvm.relax"))]
assert not bad, bad
"""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    p = subprocess.run([sys.executable, "-c", script], cwd=moved.parent, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    want = run_ort((zoo_dir / "legacy_cnn.onnx").read_bytes(), dict(np.load(zoo_dir / "legacy_cnn.npz")))
    assert max_rel_err(np.load(moved.parent / "prob.npy"), want["prob"]) <= 1e-4


def _one_line_error(p, *needles):
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: ") and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("where", ["library", "manifest", "local-header", "directory", "eocd", "seal", "last"])
def test_flipped_byte_is_an_integrity_error(artifacts, zoo_dir, tmp_path, where):
    data = bytearray(artifacts["legacy_cnn"].read_bytes())
    z = zipfile.ZipFile(artifacts["legacy_cnn"])
    info = {i.filename: i for i in z.infolist()}
    cd_start = data.rfind(b"PK\x01\x02", 0, len(data) - 100)
    offset = {"library": info["lib/model.so"].header_offset + 200,
              "manifest": info["manifest.json"].header_offset + 60,
              "local-header": info["lib/model.so"].header_offset + 10,  # a timestamp no CRC covers
              "directory": cd_start + 12, "eocd": len(data) - 78 - 10, "seal": len(data) - 30,
              "last": len(data) - 1}[where]
    data[offset] ^= 0x01
    bad = tmp_path / "bad.lbit"
    bad.write_bytes(bytes(data))
    p = run_cli("run", bad, "--inputs", zoo_dir / "legacy_cnn.npz", "-o", tmp_path / "o.npz")
    _one_line_error(p, "bad.lbit", "integrity check failed")
    assert not (tmp_path / "o.npz").exists()


def test_truncated_artifact(artifacts, zoo_dir, tmp_path):
    bad = tmp_path / "short.lbit"
    bad.write_bytes(artifacts["legacy_cnn"].read_bytes()[:5000])
    _one_line_error(run_cli("run", bad, "--inputs", zoo_dir / "legacy_cnn.npz", "-o", tmp_path / "o.npz"),
                    "integrity check failed")


def _rewrite_manifest(src, dst, change):
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    from lowbit.runtime.artifact import write_artifact  # a validly sealed artifact with a changed manifest

    write_artifact(dst, {k: v for k, v in manifest.items() if k not in ("members",)},
                   {n: d for n, d in members.items() if n != "manifest.json"})


def test_unknown_format_version_and_foreign_target(artifacts, zoo_dir, tmp_path):
    newer = tmp_path / "newer.lbit"
    _rewrite_manifest(artifacts["legacy_cnn"], newer, lambda m: m.update(format_version=99))
    _one_line_error(run_cli("run", newer, "--inputs", zoo_dir / "legacy_cnn.npz", "-o", tmp_path / "o.npz"),
                    "format version 99 is not supported")
    arm = tmp_path / "arm.lbit"
    _rewrite_manifest(artifacts["legacy_cnn"], arm, lambda m: m["target"].update(kind="metal"))
    _one_line_error(run_cli("run", arm, "--inputs", zoo_dir / "legacy_cnn.npz", "-o", tmp_path / "o.npz"),
                    "target kind 'metal' is not supported")


def test_wrong_inputs_name_the_signature(artifacts, tmp_path):
    m = lowbit.runtime.load(artifacts["legacy_cnn"])
    with pytest.raises(lowbit.LowbitError, match=r"missing input 'data'; the model takes \(data: f32\[1x3x32x32\]\)"):
        m.run({"image": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(lowbit.LowbitError, match=r"input 'data' is float32\[1x3x16x16\], expected float32\[1x3x32x32\]"):
        m.run({"data": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(lowbit.LowbitError, match=r"input 'data' is float64"):
        m.run({"data": np.zeros((1, 3, 32, 32))})
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 3, 32, 32), np.float32))
    _one_line_error(run_cli("run", artifacts["legacy_cnn"], "--inputs", tmp_path / "wrong.npz", "-o", tmp_path / "o.npz"),
                    "missing input 'data'", "data: f32[1x3x32x32]")


def test_inspect(artifacts):
    p = run_cli("inspect", artifacts["qdq_cnn"], check_rc=0)
    assert "pipeline   canonicalize,fold-constants,fold-batchnorm,fuse,lower-qdq,canonicalize,dce" in p.stdout
    assert "input: f32[1x3x32x32]" in p.stdout and "lib/model.so" in p.stdout
    m = json.loads(run_cli("inspect", artifacts["qdq_cnn"], "--json", check_rc=0).stdout)
    assert m["format_version"] == 1 and m["versions"]["tvm"].startswith("0.27")
    assert m["target"]["kind"] == "llvm" and m["target"]["num-cores"] >= 1
    assert [lay["op"] for lay in m["layers"]] == ["qconv2d", "qconv2d", "qconv2d", "qmatmul"]
    assert {(lay["input"], lay["weight"], lay["output"]) for lay in m["layers"]} == {("u8", "i8", "u8")}
    assert set(m["members"]) == {"lib/model.so"} and all(len(h) == 64 for h in m["members"].values())


def test_bench_json_against_onnxruntime(artifacts, zoo_dir):
    p = run_cli("bench", artifacts["qdq_cnn"], "--vs", zoo_dir / "qdq_cnn.onnx", "--runs", "3", "--warmup", "1",
                "--threads", "1", "--json", check_rc=0)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(r) >= {"lowbit_ms", "onnxruntime_ms", "ratio"} and r["threads"] == 1
    assert r["ratio"] == pytest.approx(r["lowbit_ms"] / r["onnxruntime_ms"], rel=1e-2)


def test_compile_errors(tmp_path, zoo_dir):
    _one_line_error(run_cli("compile", zoo_dir / "legacy_cnn.onnx", "-o", tmp_path / "x.lbit", "--target", "tpu"),
                    "unknown target 'tpu'")
    _one_line_error(run_cli("compile", zoo_dir / "legacy_cnn.onnx", "-o", tmp_path / "x.lbit", "--preset", "O9"),
                    "unknown preset 'O9'")
    _one_line_error(run_cli("compile", zoo_dir / "encoder.onnx", "-o", tmp_path / "x.lbit"), "symbolic input")
    assert not (tmp_path / "x.lbit").exists()


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="CUDA builds need nvcc on the build machine")
def test_cuda_build_on_a_cpu_machine(zoo_dir, tmp_path):
    """--target cuda builds here (device code compiled by nvcc into the artifact); running needs a GPU,
    which benchmarks/cuda_check.py does on a CUDA machine."""
    art = tmp_path / "enc_cuda.lbit"
    run_cli("compile", zoo_dir / "encoder.onnx", "-o", art, "--target", "cuda", "--shape", "input_ids=1x128",
            "--shape", "attention_mask=1x128", check_rc=0)
    m = json.loads(run_cli("inspect", art, "--json", check_rc=0).stdout)
    assert m["target"]["kind"] == "cuda" and m["target"]["arch"] == "sm_90a"
    fatbins = [n for n in m["members"] if n.startswith("cuda/") and n.endswith(".fatbin")]
    assert fatbins and "lib/model.so" in m["members"]
    with zipfile.ZipFile(art) as z:
        assert z.read(fatbins[0])[:4] == b"\x50\xed\x55\xba"  # the fatbin magic
    import tvm

    if not tvm.cuda(0).exist:
        p = run_cli("run", art, "--inputs", zoo_dir / "encoder.npz", "-o", tmp_path / "o.npz")
        _one_line_error(p, "CUDA")


def test_scalar_input_runs(tmp_path):
    """A rank-0 input reaches the library as rank 0 (numpy's ascontiguousarray would make it rank 1)."""
    g = lowbit.parse('graph @s(%x: tensor<3xf32>, %y: tensor<f32>) {\n  %0 = mul(%x, %y) : tensor<3xf32>\n'
                     '  return %0 as "z"\n}\n')
    lowbit.compile(g).save(tmp_path / "s.lbit")
    out = lowbit.runtime.load(tmp_path / "s.lbit").run({"x": np.arange(3, dtype=np.float32),
                                                       "y": np.array(2, np.float32)})
    np.testing.assert_array_equal(out["z"], [0, 2, 4])
