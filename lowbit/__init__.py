"""lowbit: a compiler for low-precision neural networks.

>>> import lowbit
>>> g = lowbit.parse('graph @g(%x: tensor<2xf32>) {\\n  %0 = relu(%x) : tensor<2xf32>\\n  return %0 as "y"\\n}\\n')
>>> g = lowbit.run_passes(g, "canonicalize,dce")
"""
__version__ = "0.1.0"

from .errors import LowbitError
from .ir import Graph, interpret, parse


def load(path_or_module, example_inputs=None, *, shapes=None):
    """Import an ONNX file (path or bytes) or a torch.nn.Module into a ``Graph``.

    ``shapes`` binds symbolic input dimensions, e.g. ``{"input_ids": (1, 128)}``; a torch module needs
    ``example_inputs`` (a tensor or tuple of tensors).
    """
    from .frontend import load as _load

    return _load(path_or_module, example_inputs, shapes=shapes)


def run_passes(graph, pipeline: str, ctx=None):
    """Run pipeline text (``"fold-constants,dce"``) or a preset name over ``graph``; return the result."""
    from .passes import run_pipeline

    return run_pipeline(graph, pipeline, ctx)


__all__ = ["__version__", "LowbitError", "Graph", "interpret", "parse", "load", "run_passes"]
