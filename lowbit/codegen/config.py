"""``CodegenConfig``: every code generation knob in one frozen dataclass.

Defaults are the values lowbit's schedules were measured with. A knob can be set for the whole model or for
one kernel (the op's name, its ``loc`` as ``lowbit inspect`` lists it): the autotuner searches exactly these.
The text form, as ``lowbit compile --codegen`` takes it, is ``key=value`` pairs separated by commas, a
per-kernel setting written ``NAME:key=value``:

>>> c = CodegenConfig.parse("accumulators=8,conv0:amx_tasks=4")
>>> c.accumulators, c.knob("amx_tasks", "conv0"), c.knob("amx_tasks", "conv1")
(8, 4, 16)
>>> str(c)
'accumulators=8,conv0:amx_tasks=4'

Every artifact's manifest records ``as_dict()`` under ``codegen``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import LowbitError

# knobs that take effect per kernel (read where one op is lowered or one kernel scheduled)
PER_KERNEL = ("tile", "accumulators", "vectors", "loop_order", "reduce_unroll", "vnni_rows", "vnni_pixels",
              "vnni_tasks", "amx_tasks", "depthwise_plane_elements", "panel_columns", "min_parallel")
# knobs where 0 means "the schedule rule decides"
_AUTO_ZERO = ("vectors", "loop_order")


@dataclass(frozen=True)
class CodegenConfig:
    """Code generation knobs (see the module docstring for the text form)."""

    # how a CPU build runs its Relax program: "compiled" (machine code: a model makes ~100 kernel calls a run,
    # and the bytecode interpreter's dispatch shows) or "bytecode" (the VM's instrument hook, which times
    # every kernel call, exists only there: benchmarks/kernel_profile.py)
    vm_exec_mode: str = "compiled"
    # elements: smaller loops nests stay serial (thread start-up costs more than they do)
    min_parallel: int = 1 << 14
    # Contraction rule: register tile rows over the unrolled spatial axis, and accumulator registers in all
    tile: int = 8
    accumulators: int = 16
    # Contraction rule, TIR-level: vectors per register-tile row (0: the rule picks 1 or 2; 1 or 2 forces it where
    # the extent allows), loop order (0: the rule picks; 1: the vector operand's block outermost, e.g. weights kept
    # hot; 2: spatial tiles outermost), unroll factor of the innermost reduction loop (1: not unrolled)
    vectors: int = 0
    loop_order: int = 0
    reduce_unroll: int = 1
    # NCHW dot4 conv (vpdpbusd via tensorize): output columns per register tile of 16-channel accumulators
    vnni_rows: int = 8
    # NHWC VNNI conv (vnni.py): output pixels per register tile (beside up to 4 channel vectors), parallel tasks
    vnni_pixels: int = 6
    vnni_tasks: int = 16
    # AMX kernels: parallel tasks a layer is split into (channel blocks x row groups)
    amx_tasks: int = 16
    # integer depthwise (NCHW): planes up to this many padded elements run as one vector run per tap
    depthwise_plane_elements: int = 2048
    # float matmul by a constant: the largest packed weight panel (columns, a multiple of 8)
    panel_columns: int = 64
    # channel blocks the NCHWc layout may use, tried in order (f32 lanes: 2 AVX-512 vectors, 1, 1 AVX2)
    channel_blocks: tuple = (32, 16, 8)
    # per-kernel settings: ((kernel name, ((knob, value), ...)), ...)
    kernels: tuple = field(default=())

    def __post_init__(self):
        if self.vm_exec_mode not in ("compiled", "bytecode"):
            raise LowbitError(f"codegen knob vm_exec_mode must be compiled or bytecode, got {self.vm_exec_mode!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            low = 0 if f.name in _AUTO_ZERO else 1
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise LowbitError(f"codegen knob {f.name} must be a {'non-negative' if low == 0 else 'positive'} "
                                  f"integer, got {v!r}")
        if self.vectors > 2 or self.loop_order > 2:
            raise LowbitError(f"codegen knobs vectors and loop_order are 0, 1 or 2, got {self.vectors} and "
                              f"{self.loop_order}")
        if not self.channel_blocks or any(not isinstance(c, int) or c < 1 for c in self.channel_blocks):
            raise LowbitError(f"codegen knob channel_blocks must be positive integers, got {self.channel_blocks!r}")
        if self.panel_columns % 8:
            raise LowbitError(f"codegen knob panel_columns must be a multiple of 8, got {self.panel_columns}")

    # -- access ---------------------------------------------------------------------------------------------
    def knob(self, name: str, kernel: str | None = None):
        """The value of knob ``name`` for ``kernel`` (its own setting if it has one, else the model's)."""
        if kernel is not None:
            for k, pairs in self.kernels:
                if k == kernel:
                    for key, v in pairs:
                        if key == name:
                            return v
        return getattr(self, name)

    def as_dict(self) -> dict:
        """Every knob and its value, per-kernel settings under ``kernels`` (the manifest's ``codegen``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kernels"}
        d["channel_blocks"] = list(self.channel_blocks)
        d["kernels"] = {k: dict(pairs) for k, pairs in self.kernels}
        return d

    def __str__(self) -> str:
        base = CodegenConfig()
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                 if f.name != "kernels" and getattr(self, f.name) != getattr(base, f.name)]
        parts += [f"{k}:{key}={_fmt(v)}" for k, pairs in self.kernels for key, v in pairs]
        return ",".join(parts)

    # -- construction ----------------------------------------------------------------------------------------
    @staticmethod
    def parse(spec) -> "CodegenConfig":
        """From None (defaults), a CodegenConfig, a dict (``{"tile": 4, "kernels": {"conv0": {...}}}``) or text."""
        if spec is None:
            return CodegenConfig()
        if isinstance(spec, CodegenConfig):
            return spec
        if isinstance(spec, dict):
            spec = dict(spec)
            per = spec.pop("kernels", {}) or {}
            items = [(None, k, v) for k, v in spec.items()]
            items += [(kern, k, v) for kern, d in per.items() for k, v in d.items()]
        elif isinstance(spec, str):
            items = []
            for part in filter(None, (p.strip() for p in _split(spec))):
                key, eq, text = part.partition("=")
                if not eq:
                    raise LowbitError(f"codegen setting '{part}' is not key=value")
                kern, _, key = key.rpartition(":") if ":" in key else (None, "", key)
                items.append((kern or None, key.strip(), _value(text.strip())))
        else:
            raise LowbitError(f"codegen settings must be text, a dict or a CodegenConfig, not {type(spec).__name__}")
        names = {f.name: f for f in dataclasses.fields(CodegenConfig) if f.name != "kernels"}
        glob, per_kernel = {}, {}
        for kern, key, v in items:
            if key not in names:
                raise LowbitError(f"unknown codegen knob '{key}' (known: {', '.join(names)})")
            if key == "channel_blocks":
                v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
            if kern is None:
                glob[key] = v
                continue
            if key not in PER_KERNEL:
                raise LowbitError(f"codegen knob '{key}' applies to the whole model, not to kernel '{kern}'")
            per_kernel.setdefault(kern, {})[key] = v
        cfg = CodegenConfig(**glob, kernels=tuple((k, tuple(sorted(d.items()))) for k, d in per_kernel.items()))
        for k, pairs in cfg.kernels:  # per-kernel values pass the same checks as model-wide ones
            dataclasses.replace(cfg, kernels=(), **dict(pairs))
        return cfg


def _split(text: str):
    """Split at commas outside parentheses (``channel_blocks=(16,8)``)."""
    depth, cur = 0, ""
    for ch in text:
        depth += ch in "([" and 1 or (-1 if ch in ")]" else 0)
        if ch == "," and depth == 0:
            yield cur
            cur = ""
        else:
            cur += ch
    yield cur


def _value(text: str):
    if text[:1] in "([":
        return tuple(_value(t.strip()) for t in text.strip("()[]").split(",") if t.strip())
    try:
        return int(text, 0)
    except ValueError:
        return text


def _fmt(v) -> str:
    return "(" + ",".join(map(str, v)) + ")" if isinstance(v, (tuple, list)) else str(v)


__all__ = ["CodegenConfig", "PER_KERNEL"]
