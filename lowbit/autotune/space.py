"""The search space of one kernel: the ``CodegenConfig`` knobs its kernel family reads, each over a few values.

A candidate is a dict of knob values; its canonical form (``canonical``) keeps only the values that differ from
``CodegenConfig``'s defaults, so the hand-rule default is always ``{}`` and is measured first. Which knobs a
kernel reads follows from how it is written: the ``Contraction`` schedule rule (float and generic integer
convolutions and matmuls) reads the register tile, accumulators, vector count, loop order, reduction unroll
and parallel grain; the NCHW VNNI dot4 conv its row tile; the NHWC VNNI kernels their pixel tile and task
count; AMX kernels their task split; the integer depthwise family its plane limit (which picks between its
kernels). Kernels whose code no knob changes have no space and are not tuned.

>>> len(Space.for_task("conv2d", "nchw32c"))
9216
"""
from __future__ import annotations

import dataclasses
import json
import random

from ..codegen.config import CodegenConfig

_CONTRACTION = {
    "tile": (1, 2, 3, 4, 6, 8, 12, 16),
    "accumulators": (4, 6, 8, 12, 16, 20, 24, 28),
    "vectors": (0, 1, 2),
    "loop_order": (0, 1, 2),
    "reduce_unroll": (1, 2, 4, 8),
    "min_parallel": (1 << 10, 1 << 12, 1 << 14, 1 << 16),
}
_PANEL = {"panel_columns": (16, 32, 48, 64, 96, 128, 256)}
_VNNI_NHWC = {"vnni_pixels": (1, 2, 3, 4, 5, 6, 7, 8, 10, 12), "vnni_tasks": (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)}
_AMX = {"amx_tasks": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)}
_DOT4 = {"vnni_rows": (1, 2, 4, 6, 7, 8, 12, 14, 16, 28), "min_parallel": (1 << 10, 1 << 12, 1 << 14, 1 << 16)}
_DEPTHWISE = {"depthwise_plane_elements": (256, 512, 1024, 2048, 4096, 8192, 16384),
              "min_parallel": (1 << 10, 1 << 12, 1 << 14, 1 << 16)}

DEFAULTS = {f.name: f.default for f in dataclasses.fields(CodegenConfig) if f.name in
            set().union(_CONTRACTION, _PANEL, _VNNI_NHWC, _AMX, _DOT4, _DEPTHWISE)}
# every knob a candidate may set, in a fixed order (the cost model's feature columns)
KNOBS = tuple(sorted(DEFAULTS))


def domains(op: str, kernel: str) -> dict:
    """Knob -> candidate values for ``op`` lowered with ``kernel`` (empty: nothing to tune)."""
    if kernel.startswith("amx"):
        return dict(_AMX)
    if (kernel.startswith(("vnni", "avx-vnni")) and kernel != "vnni-dot4") or kernel in ("avx512-bf16", "avx512-w4f"):
        return dict(_VNNI_NHWC)
    if kernel in ("w4f-te", "grouped-loops"):
        return {}
    if kernel in ("vnni-dot4", "dot4"):
        return dict(_DOT4)
    if kernel.startswith("depthwise"):
        return dict(_DEPTHWISE)
    d = dict(_CONTRACTION)
    if op in ("matmul", "gemm"):
        d.update(_PANEL)
    return d


def canonical(knobs: dict) -> str:
    """The candidate's canonical text: the knobs that differ from the defaults, sorted, as compact JSON."""
    return json.dumps({k: v for k, v in sorted(knobs.items()) if DEFAULTS.get(k, object()) != v},
                      sort_keys=True, separators=(",", ":"))


class Space:
    """The candidates of one kernel (the product of its knob domains)."""

    def __init__(self, doms: dict):
        self.doms = {k: tuple(v) for k, v in sorted(doms.items())}
        # each domain holds its knob's default, so the default candidate is in the space
        for k in self.doms:
            if DEFAULTS[k] not in self.doms[k]:
                self.doms[k] = tuple(sorted((*self.doms[k], DEFAULTS[k])))

    @staticmethod
    def for_task(op: str, kernel: str) -> "Space":
        return Space(domains(op, kernel))

    def __len__(self) -> int:
        n = 1
        for v in self.doms.values():
            n *= len(v)
        return n if self.doms else 0

    def default(self) -> dict:
        return {k: DEFAULTS[k] for k in self.doms}

    def sample(self, rng: random.Random) -> dict:
        return {k: rng.choice(v) for k, v in self.doms.items()}

    def mutate(self, knobs: dict, rng: random.Random) -> dict:
        """``knobs`` with one or two knobs moved to a neighbouring or random value."""
        out = dict(knobs)
        for k in rng.sample(list(self.doms), k=min(len(self.doms), rng.choice((1, 1, 2)))):
            vals = self.doms[k]
            i = vals.index(out[k]) if out[k] in vals else 0
            out[k] = vals[max(0, min(len(vals) - 1, i + rng.choice((-1, 1))))] if rng.random() < 0.7 \
                else rng.choice(vals)
        return out


__all__ = ["Space", "domains", "canonical", "DEFAULTS", "KNOBS"]
