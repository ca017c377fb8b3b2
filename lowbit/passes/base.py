"""Passes, their registry, pipeline text, presets and the PassContext.

A pass is a frozen dataclass whose fields are its options, so pipeline text parses straight into objects and
prints back the same:

>>> from lowbit.passes import parse_pipeline
>>> str(parse_pipeline("fold-constants{max_elements=1024},dce"))
'fold-constants{max_elements=1024},dce'
"""
from __future__ import annotations

import dataclasses
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from typing import ClassVar, TextIO

from ..errors import LowbitError
from ..ir.graph import Graph

_PASSES: dict[str, type["Pass"]] = {}

# Named pipelines. The resolved text, never the preset name, is what gets recorded in artifacts.
PRESETS: dict[str, str] = {
    "O0": "",
    "O1": "canonicalize,fold-constants,dce",
    "O2": "canonicalize,fold-constants,fold-batchnorm,fuse,lower-qdq,canonicalize,dce",
    "int8": "canonicalize,fold-constants,fold-batchnorm,fuse,quantize{calibrator=mse},lower-qdq,canonicalize,dce",
    "int8-dynamic": "canonicalize,fold-constants,fold-batchnorm,fuse,quantize{dynamic=true},canonicalize,dce",
    "bf16": "canonicalize,fold-constants,fold-batchnorm,fuse,to-bf16,canonicalize,dce",
    # w4: no f32 kernel reads 4-bit convolution codes, so convolutions stay f32 (convs=none)
    "w4": "canonicalize,fold-constants,fold-batchnorm,fuse,quantize-weights{symmetric=false,awq=true,convs=none},"
          "canonicalize,dce",
    # w4a8: matmuls AWQ + round-to-nearest; convolutions (which AWQ does not scale) GPTQ where calibrated
    "w4a8": "canonicalize,fold-constants,fold-batchnorm,fuse,quantize-weights{symmetric=false,awq=true,convs=none},"
            "quantize-weights{method=auto,exclude_ops=[matmul,gemm]},quantize{dynamic=true,calibrator=mse},"
            "lower-qdq,canonicalize,dce",
    # (not "shift-add": a preset by a pass's name would hide the pass without options)
    "w4a8-apot": "canonicalize,fold-constants,fold-batchnorm,fuse,shift-add{scheme=apot,group=128,method=auto},"
                 "quantize{dynamic=true,calibrator=mse},lower-qdq,canonicalize,dce",
}


@dataclass(frozen=True)
class Pass:
    """Base of all passes: subclasses set ``name`` and implement ``run``; their fields are options."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: "PassContext") -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        opts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if v != default:
                opts.append(f"{f.name}={_fmt_option(v)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline text by its ``name``."""
    if not cls.name or cls.name in _PASSES:
        raise ValueError(f"pass name '{cls.name}' is empty or taken")
    _PASSES[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    return dict(sorted(_PASSES.items()))


def _fmt_option(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ",".join(_fmt_option(x) for x in v) + "]"
    return str(v)


def _parse_option(cls, fname: str, ftype, text: str):
    where = f"pass '{cls.name}' option '{fname}'"
    origin = typing.get_origin(ftype)
    try:
        if ftype is bool:
            if text not in ("true", "false"):
                raise ValueError
            return text == "true"
        if ftype is int:
            return int(text)
        if ftype is float:
            return float(text)
        if ftype is str:
            return text
        if ftype is tuple or origin is tuple:
            if not (text.startswith("[") and text.endswith("]")):
                raise ValueError
            inner = text[1:-1].strip()
            return tuple(x.strip() for x in inner.split(",")) if inner else ()
    except ValueError:
        pass
    raise LowbitError(f"{where}: cannot read '{text}' as {getattr(ftype, '__name__', ftype)}")


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise LowbitError(f"pipeline '{text}': unbalanced '{ch}'")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise LowbitError(f"pipeline '{text}': unbalanced braces")
    parts.append("".join(cur))
    return parts


_ELEMENT = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(?:\{(.*)\})?\s*\Z", re.S)


class Pipeline(list):
    """A list of passes that prints as canonical pipeline text."""

    def __str__(self) -> str:
        return ",".join(str(p) for p in self)


def parse_pipeline(text: str) -> Pipeline:
    """Parse pipeline text (pass names with ``{option=value,...}``; presets expand in place)."""
    out = Pipeline()
    text = text.strip()
    if not text:
        return out
    for part in _split_top(text):
        m = _ELEMENT.match(part)
        if not m:
            raise LowbitError(f"pipeline '{text}': cannot read '{part.strip()}' (expected name or name{{opt=value}})")
        pname, opts = m.group(1), m.group(2)
        if pname in PRESETS and opts is None:
            out.extend(parse_pipeline(PRESETS[pname]))
            continue
        if pname not in _PASSES:
            known = ", ".join(list(_PASSES) + list(PRESETS))
            raise LowbitError(f"unknown pass '{pname}' (known passes and presets: {known})")
        cls = _PASSES[pname]
        hints = typing.get_type_hints(cls)
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        kwargs = {}
        for item in (_split_top(opts) if opts and opts.strip() else []):
            if "=" not in item:
                raise LowbitError(f"pass '{pname}': option '{item.strip()}' needs a value (name=value)")
            k, v = (s.strip() for s in item.split("=", 1))
            if k not in fields:
                raise LowbitError(f"pass '{pname}' has no option '{k}' (options: {', '.join(fields) or 'none'})")
            kwargs[k] = _parse_option(cls, k, fields[k], v)
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as e:
            raise LowbitError(f"pass '{pname}': {e}") from None
    return out


def resolve_pipeline(text_or_preset: str) -> str:
    """Canonical pipeline text for a preset name or pipeline text."""
    return str(parse_pipeline(text_or_preset))


@dataclass
class PassContext:
    """Configuration and instruments for a pipeline run.

    verify_each: verify the graph after every pass (a broken graph names the pass that broke it).
    print_after_all: print the IR after every pass to ``stream``.
    timing: collect per-pass wall time in ``timings`` (always collected; ``timing`` also prints them).
    debug_rewrites: print every rewrite rule that matched but declined, with its reason.
    calibration: data for passes that need it (quantization), never read from globals.
    progress: where a slow pass says how far it is (a callable taking one line of text, e.g. ``Progress.tick``),
        or None.
    """

    verify_each: bool = True
    print_after_all: bool = False
    timing: bool = False
    debug_rewrites: bool = False
    calibration: object = None
    progress: object = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    timings: list = field(default_factory=list)
    rule_hits: dict = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(msg, file=self.stream)

    def tick(self, text: str) -> None:
        """Report how far a slow pass is (to ``progress``, if any)."""
        if self.progress is not None:
            self.progress(text)


def run_pipeline(graph: Graph, pipeline, ctx: PassContext | None = None) -> Graph:
    """Run ``pipeline`` (text, preset name or a list of passes) on a copy of ``graph``; return the copy."""
    ctx = ctx or PassContext()
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    g = graph.clone()
    for p in passes:
        t0 = time.perf_counter()
        p.run(g, ctx)
        dt = time.perf_counter() - t0
        ctx.timings.append((str(p), dt))
        if ctx.verify_each:
            try:
                g.verify()
            except ValueError as e:
                raise LowbitError(f"after pass '{p}': the graph does not verify: {e}") from None
        if ctx.print_after_all:
            ctx.log(f"// -----// IR after {p} //----- //\n{g}")
    if ctx.timing:
        total = sum(t for _, t in ctx.timings) or 1e-12
        ctx.log("// pass timing (wall)")
        for name, t in ctx.timings:
            ctx.log(f"{t * 1e3:10.2f} ms  {100 * t / total:5.1f}%  {name}")
    return g
