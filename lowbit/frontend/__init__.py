"""Frontends: ONNX files and PyTorch modules into lowbit's IR."""
from __future__ import annotations

import os

from ..errors import LowbitError
from ..ir.graph import Graph
from .onnx_import import CONVERTERS, import_onnx
from . import onnx_attention  # noqa: F401,E402  (Attention-23 converter)
from . import onnx_recurrent  # noqa: F401,E402,I001  (LSTM, GRU, RNN)


def load(source, example_inputs=None, *, shapes=None) -> Graph:
    """Import ``source``: an ONNX path / bytes / ModelProto, or a torch.nn.Module with ``example_inputs``."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray)) or hasattr(source, "opset_import"):
        if example_inputs is not None:
            raise LowbitError("example_inputs is only for torch modules; use shapes= to bind ONNX dimensions")
        return import_onnx(source, shapes)
    if type(source).__module__.startswith("torch") or hasattr(source, "forward"):
        from .torch_import import import_torch

        if shapes:
            raise LowbitError("shapes= is for ONNX models; a torch module takes its shapes from example_inputs")
        return import_torch(source, example_inputs)
    raise LowbitError(f"cannot load a {type(source).__name__}: give an ONNX path, ONNX bytes or a torch.nn.Module")


__all__ = ["load", "import_onnx", "CONVERTERS"]
