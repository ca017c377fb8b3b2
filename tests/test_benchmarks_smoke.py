"""The benchmark suite's fast subset: a CNN trained on scikit-learn's digits, end to end."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_digits_subset(tmp_path):
    pytest.importorskip("sklearn", reason="the benchmark suite needs scikit-learn (.ci/run installs it)")
    pytest.importorskip("torch", reason="the benchmark suite trains its CNN with PyTorch")
    pytest.importorskip("matplotlib", reason="the benchmark suite draws its chart with matplotlib")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--models", "digits", "--runs", "5",
                        "--out", str(tmp_path), "--no-install"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| digits | fp32 |" in p.stdout
    report = json.loads((tmp_path / "latest.json").read_text())
    (row,) = report["results"]
    assert row["lowbit_ms"] > 0 and row["onnxruntime_ms"] > 0 and row["pytorch_ms"] > 0
    acc = row["accuracy"]
    assert acc["lowbit"]["test_images"] >= 350
    assert acc["lowbit"]["accuracy"] > 0.9  # a trained model, not chance
    assert round(acc["lowbit"]["accuracy"], 4) == round(acc["onnxruntime"]["accuracy"], 4)
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_benchmark_runs_on_the_zoo_encoder():
    """benchmarks/int8.py end to end on a small model: both quantizers, both timed, fidelity measured."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "int8.py"), "--models", "encoder", "--runs", "5",
                        "--threads", "1", "--calib", "2"],  # one thread: beside another test worker, no spin contention
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [line for line in p.stdout.splitlines() if line.startswith("| encoder |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(line for line in p.stdout.splitlines() if line.startswith("| model |"))
              .strip("|").split("|")]
    r = dict(zip(header, cells))
    assert float(r["lowbit_int8_ms"]) > 0 and float(r["ort_int8_static_ms"]) > 0
    assert float(r["lowbit_int8_cos"]) > 0.99 and float(r["ort_int8_static_cos"]) > 0.99
    assert float(r["lowbit_int8_vs_ort_int8"]) > 0
