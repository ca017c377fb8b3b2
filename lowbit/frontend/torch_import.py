"""PyTorch → lowbit IR, through torch's TorchScript-based ONNX exporter (in memory) and the ONNX importer.

torch is optional and imported only here, only when a module is loaded.
"""
from __future__ import annotations

import io
import warnings

from ..errors import LowbitError
from ..ir.graph import Graph
from .onnx_import import import_onnx

OPSET = 17


def import_torch(module, example_inputs) -> Graph:
    try:
        import torch
    except ImportError:
        raise LowbitError("loading a torch module needs PyTorch: pip install 'lowbit[torch]'") from None
    if not isinstance(module, torch.nn.Module):
        raise LowbitError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if example_inputs is None:
        raise LowbitError("loading a torch module needs example_inputs (a tensor or a tuple of tensors)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise LowbitError("example_inputs must be tensors")
    names = ["input"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, buf, dynamo=False, opset_version=OPSET,
                              input_names=names, do_constant_folding=True)
    except Exception as e:  # the exporter raises many types; report its message on one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LowbitError(f"torch could not export {type(module).__name__} to ONNX: {msg}") from None
    finally:
        module.train(was_training)
    g = import_onnx(buf.getvalue())
    g.name = type(module).__name__
    return g
