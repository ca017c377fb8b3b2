"""Graph passes: one file per pass, registered by name for pipeline text."""
from . import bf16, canonicalize, dce, fold_batchnorm, fold_constants, fuse, lower_qdq, quantize  # noqa: F401  (registration)
from . import quantize_weights  # noqa: F401  (registration)
from . import shift_add  # noqa: F401  (registration)
from . import sparsify  # noqa: F401  (registration)
from .base import (PRESETS, Pass, PassContext, Pipeline, parse_pipeline, register_pass, registered_passes,
                   resolve_pipeline, run_pipeline)
from .rewriter import Any, Const, Pat, Rule, apply_rules

__all__ = ["PRESETS", "Pass", "PassContext", "Pipeline", "parse_pipeline", "register_pass", "registered_passes",
           "resolve_pipeline", "run_pipeline", "Any", "Const", "Pat", "Rule", "apply_rules"]
