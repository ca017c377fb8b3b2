"""Code generation: an optimized Graph → Relax → TVM build for a ``Target`` → an ``Artifact``.

``Target`` (``target.py``) says what the hardware offers, ``CodegenConfig`` (``config.py``) holds every knob,
``lower.py`` lowers op by op with kernels chosen from ``kernels.py``'s ordered table, ``schedules/`` holds
lowbit's CPU schedule rules, and ``build.py`` ties them together. The compile driver (``lowbit.compiler``)
calls ``build``; codegen never imports the frontend, the passes or calibration.

>>> art = build(graph, Target.parse("cpu"))   # doctest: +SKIP
"""
from __future__ import annotations

from .build import Artifact, build, build_module, layer_precision, schedule
from .config import CodegenConfig
from .lower import lowering_table
from .target import CudaTarget, Target, X86Target, resolve_target

__all__ = ["Artifact", "build", "build_module", "schedule", "layer_precision", "CodegenConfig", "Target",
           "X86Target", "CudaTarget", "resolve_target", "lowering_table"]
