import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import model_zoo as zoo  # noqa: E402


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """Every zoo model written once per session as <name>.onnx, with its inputs as <name>.npz."""
    import numpy as np

    d = tmp_path_factory.mktemp("zoo")
    # the CNNs at 96x96, not 224: every layer and kernel shape class is still there, builds take half the time
    small = {"resnet18": lambda: zoo.resnet18(96), "mobilenet_v2": lambda: zoo.mobilenet_v2(96)}
    for name, build in zoo.ZOO.items():
        model, inputs = small.get(name, build)()
        (d / f"{name}.onnx").write_bytes(model)
        np.savez(d / f"{name}.npz", **inputs)
    return d


def run_cli(*args, check_rc=None, cwd=None):
    """Run the installed ``lowbit`` console script in a fresh process."""
    p = subprocess.run(["lowbit", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc={p.returncode}\nstdout={p.stdout[-2000:]}\nstderr={p.stderr[-2000:]}"
    return p
