"""Schemas and numpy references of the math ops added for ONNX coverage (issue 14)."""
from __future__ import annotations
