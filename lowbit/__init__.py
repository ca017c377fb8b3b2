"""lowbit: a compiler for low-precision neural networks.

The package imports lazily: ``import lowbit.runtime`` loads none of the compiler.

>>> import lowbit
>>> g = lowbit.parse('graph @g(%x: tensor<2xf32>) {\\n  %0 = relu(%x) : tensor<2xf32>\\n  return %0 as "y"\\n}\\n')
>>> g = lowbit.run_passes(g, "canonicalize,dce")
"""
__version__ = "0.1.0"

from .errors import LowbitError


def load(path_or_module, example_inputs=None, *, shapes=None):
    """Import an ONNX file (path or bytes) or a torch.nn.Module into a ``Graph``.

    ``shapes`` binds symbolic input dimensions, e.g. ``{"input_ids": (1, 128)}``; a torch module needs
    ``example_inputs`` (a tensor or tuple of tensors).
    """
    from .frontend import load as _load

    return _load(path_or_module, example_inputs, shapes=shapes)


def run_passes(graph, pipeline: str, ctx=None):
    """Run pipeline text (``"fold-constants,dce"``) or a preset name over a copy of ``graph``; return it."""
    from .passes import run_pipeline

    return run_pipeline(graph, pipeline, ctx)


def compile(graph_or_path, target="auto", pipeline="O2", *, shapes=None, progress=None, calibration=None,
            report=False, codegen=None, keep_integer=False, keep_bf16=False, tune_db=None):
    """Compile a Graph, an ONNX path or a torch-free model into an ``Artifact`` (see ``Artifact.save``).

    ``calibration`` (an .npz path, a directory of them, or an iterable of ``{input name: array}``) feeds the
    ``quantize`` pass, e.g. ``lowbit.compile("m.onnx", pipeline="int8", calibration=samples)``; ``codegen``
    sets code generation knobs (``"tile=4,conv0:amx_tasks=8"``, a dict or a ``CodegenConfig``). On a CPU with
    neither VNNI nor AMX the model stays float (a ``LowbitWarning`` says so) unless ``keep_integer``; the
    ``bf16`` preset likewise stays f32 on a CPU without AMX-BF16 unless ``keep_bf16``. ``tune_db`` (a
    database ``lowbit tune`` wrote) gives each kernel its best measured knobs for this target."""
    from .compiler import compile as _compile

    return _compile(graph_or_path, target=target, pipeline=pipeline, shapes=shapes, progress=progress,
                    calibration=calibration, report=report, codegen=codegen, keep_integer=keep_integer,
                    keep_bf16=keep_bf16, tune_db=tune_db)


def __getattr__(name):
    if name in ("Graph", "interpret", "parse"):
        from . import ir

        return getattr(ir, name)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


__all__ = ["__version__", "LowbitError", "Graph", "interpret", "parse", "load", "run_passes", "compile"]
