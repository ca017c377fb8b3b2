"""Lowering rules of the tensor ops added for ONNX coverage (issue 14)."""
from __future__ import annotations
