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
