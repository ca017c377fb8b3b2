"""fuse: recognise multi-op idioms as the single ops the code generator has fast kernels for.

- ``layer-norm``: ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`` over trailing axes (``Pow(d, 2)`` or
  ``d * d``) becomes ``layer_norm(x, 1, 0)``; a following ``* gamma`` and ``+ beta`` with constants of the
  normalised shape move into its scale and bias operands.
- ``gelu``: ``x * 0.5 * (1 + erf(x / sqrt(2)))`` in any association of the products (``x * (1/sqrt(2))``
  too) becomes ``gelu(x)``. The constants must be 0.5, 1 and sqrt(2) to float32 precision.
- ``softmax``: ``exp(x - max(x)) / sum(exp(x - max(x)))`` over one axis becomes ``softmax(x)``.
- ``conv-bias`` / ``gemm-bias``: a constant per-channel ``add`` after ``conv2d`` (``[1, O, 1, 1]`` or
  ``[O, 1, 1]``), or a constant ``[N]`` add after a rank-2 ``matmul`` by a constant, becomes the op's bias
  operand (``gemm`` for the matmul), added to any bias it had.

Activations and residual additions after a convolution or matmul are not rewritten here: the code generator
fuses them into the kernel's epilogue, where they run on the accumulator tile (``codegen/schedules``).

Each rewrite only replaces the root's result; ops of the idiom that have other users stay, so a partial
overlap can never change what those users see.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Graph
from .base import Pass, PassContext, register_pass
from .rewriter import Any, Const, Pat, Rule, apply_rules


def _scalar(v, expect: float, rtol: float = 1e-6) -> bool:
    """A constant with one element equal to ``expect`` (to float32 precision)."""
    if not v.is_const or v.type.size != 1:
        return False
    return abs(float(v.const_value.reshape(())) - expect) <= rtol * abs(expect)


def _producer(v, *names):
    p = v.producer
    return p if p is not None and p.opname in names else None


def _trailing_axes(op, rank: int) -> list[int] | None:
    """The axes of a keepdims reduction when they are the trailing ones ([r-k .. r-1]), else None."""
    if not op.attrs["keepdims"] or not op.attrs["axes"]:
        return None
    axes = sorted(a % rank for a in op.attrs["axes"])
    return axes if axes == list(range(rank - len(axes), rank)) else None


# -- layer norm ----------------------------------------------------------------------------------------------------
_LN = Pat("div", Pat("sub", Any("x"), Pat("reduce_mean", Any("x2"), bind="mean"), bind="sub"),
          Pat("sqrt", Pat("add", Pat("reduce_mean", Any("sq"), bind="var"), Const("eps")), bind="sqrt"))


def _check_ln(root, m):
    x = m["x"]
    if m["x2"] is not x:
        return "the mean is not of the normalised value"
    if x.type.dtype != dt.f32:
        return f"only f32 is recognised, got {x.type.dtype.name}"
    axes = _trailing_axes(m["mean"], x.type.rank)
    if axes is None or _trailing_axes(m["var"], x.type.rank) != axes:
        return "the reductions are not over the same trailing axes with keepdims"
    d = m["sub"].result
    sq = _producer(m["sq"], "pow", "mul")
    if sq is None or not ((sq.opname == "pow" and sq.operands[0] is d and _scalar(sq.operands[1], 2.0)) or
                          (sq.opname == "mul" and sq.operands[0] is d and sq.operands[1] is d)):
        return "the variance is not the mean of the squared deviation"
    if m["eps"].type.size != 1:
        return "epsilon is not a scalar"
    if root.result.type.shape != x.type.shape:
        return "the result broadcasts beyond the input's shape"
    return None


def _rewrite_ln(g: Graph, root, m):
    x = m["x"]
    axes = _trailing_axes(m["mean"], x.type.rank)
    norm_shape = x.type.shape[axes[0]:]
    ones = g.const(np.ones(norm_shape, np.float32), loc=root.loc, before=root)
    eps = float(str(m["eps"].const_value.reshape(()).astype(np.float32)))  # the shortest text of the f32
    return [g.create("layer_norm", [x, ones], {"axis": axes[0], "epsilon": eps}, loc=root.loc, before=root).result]


def _norm_shape(ln):
    x = ln.operands[0]
    return x.type.shape[ln.attrs["axis"] % x.type.rank:]


def _as_norm_const(v, shape):
    """``v``'s constant reshaped to ``shape`` when it has exactly that shape after dropping leading 1s."""
    if not v.is_const or v.type.dtype != dt.f32:
        return None
    s = list(v.type.shape)
    while len(s) > len(shape) and s[0] == 1:
        s.pop(0)
    return v.const_value.reshape(shape) if tuple(s) == tuple(shape) else None


def _ln_operand(slot: int, key: str, what: str):
    """Check and rewrite moving a constant ``* gamma`` (slot 1, replacing the ones scale) or ``+ beta`` (slot 2)
    after a layer_norm into that operand."""
    def check(root, m):
        ln = m["ln"]
        if len(ln.operands) > 2 or (slot == 1 and not (ln.operands[1].is_const and
                                                       np.all(ln.operands[1].const_value == 1))):
            return "the layer_norm already has a " + ("scale or a bias" if slot == 1 else "bias")
        if _as_norm_const(m[key], _norm_shape(ln)) is None:
            return f"the {what} is not a constant of the normalised shape"
        return None

    def rewrite(g: Graph, root, m):
        ln = m["ln"]
        c = g.const(_as_norm_const(m[key], _norm_shape(ln)), loc=root.loc, before=root)
        ops = list(ln.operands[:slot]) + [c]
        return [g.create("layer_norm", ops, ln.attrs, loc=ln.loc, before=root).result]
    return rewrite, check


# -- gelu ------------------------------------------------------------------------------------------------------------
def _factors(root):
    """The factors of a product of at most three terms: the root's operands, with mul operands opened once."""
    out = []
    for v in root.operands:
        p = _producer(v, "mul")
        out.extend(p.operands if p is not None else [v])
    return out


def _gelu_input(root):
    """x when ``root`` computes x * 0.5 * (1 + erf(x / sqrt 2)) in some association, else None."""
    fs = _factors(root)
    if len(fs) != 3:
        return None
    half = [f for f in fs if _scalar(f, 0.5)]
    one_plus = [f for f in fs if (a := _producer(f, "add")) is not None and
                any(_scalar(o, 1.0) for o in a.operands) and any(_producer(o, "erf") for o in a.operands)]
    if len(half) != 1 or len(one_plus) != 1:
        return None
    rest = [f for f in fs if f is not half[0] and f is not one_plus[0]]
    if len(rest) != 1:
        return None
    x = rest[0]
    a = one_plus[0].producer
    erf = next(_producer(o, "erf") for o in a.operands if _producer(o, "erf"))
    u = _producer(erf.operands[0], "div", "mul")
    if u is None or u.operands[0] is not x:
        return None
    k = u.operands[1]
    if (u.opname == "div" and _scalar(k, float(np.sqrt(2)))) or (u.opname == "mul" and _scalar(k, float(1 / np.sqrt(2)))):
        return x
    return None


def _check_gelu(root, m):
    x = _gelu_input(root)
    if x is None:
        return "not x * 0.5 * (1 + erf(x / sqrt(2)))"
    if x.type.dtype != dt.f32 or root.result.type.shape != x.type.shape:
        return "not an f32 gelu of the input's shape"
    return None


def _rewrite_gelu(g: Graph, root, m):
    return [g.create("gelu", [_gelu_input(root)], {"approximate": "none"}, loc=root.loc, before=root).result]


# -- softmax ---------------------------------------------------------------------------------------------------------
_SOFTMAX = Pat("div", Pat("exp", Pat("sub", Any("x"), Pat("reduce_max", Any("x2"), bind="max")), bind="exp"),
               Pat("reduce_sum", Any("e2"), bind="sum"))


def _one_axis(op, rank):
    a = op.attrs["axes"]
    return a[0] % rank if op.attrs["keepdims"] and len(a) == 1 else None


def _check_softmax(root, m):
    x = m["x"]
    if m["x2"] is not x or m["e2"] is not m["exp"].result:
        return "the max and the sum are not of the same exponentials"
    if x.type.dtype != dt.f32:
        return f"only f32 is recognised, got {x.type.dtype.name}"
    r = x.type.rank
    ax = _one_axis(m["max"], r)
    if ax is None or _one_axis(m["sum"], r) != ax:
        return "the max and the sum are not over one and the same axis with keepdims"
    return None


def _rewrite_softmax(g: Graph, root, m):
    ax = _one_axis(m["max"], m["x"].type.rank)
    return [g.create("softmax", [m["x"]], {"axis": ax}, loc=root.loc, before=root).result]


# -- biases ------------------------------------------------------------------------------------------------------------
def _check_conv_bias(root, m):
    conv = m["conv"]
    o = conv.result.type.shape[1]
    b = m["b"]
    if len(conv.result.uses) != 1 or root.graph.is_output(conv.result):
        return "the conv2d result has other users"
    if tuple(b.type.shape) not in ((1, o, 1, 1), (o, 1, 1)) or b.type.dtype != conv.result.type.dtype:
        return f"the addend has shape {b.type.shape}, not a per-channel [1, {o}, 1, 1]"
    if len(conv.operands) > 2 and not conv.operands[2].is_const:
        return "the conv2d bias is not a constant"
    return None


def _rewrite_conv_bias(g: Graph, root, m):
    conv = m["conv"]
    b = m["b"].const_value.reshape(-1)
    if len(conv.operands) > 2:
        b = conv.operands[2].const_value + b
    bias = g.const(b.astype(m["b"].const_value.dtype), loc=root.loc, before=root)
    return [g.create("conv2d", [conv.operands[0], conv.operands[1], bias], conv.attrs, loc=conv.loc,
                     before=root).result]


def _check_gemm_bias(root, m):
    mm = m["mm"]
    y = mm.result
    if len(y.uses) != 1 or root.graph.is_output(y):
        return "the matmul result has other users"
    if y.type.rank != 2 or mm.operands[0].type.rank != 2 or not mm.operands[1].is_const:
        return "not a rank-2 matmul by a constant"
    n = y.type.shape[1]
    if tuple(m["b"].type.shape) not in ((n,), (1, n)) or m["b"].type.dtype != y.type.dtype:
        return f"the addend has shape {m['b'].type.shape}, not [{n}]"
    return None


def _rewrite_gemm_bias(g: Graph, root, m):
    mm = m["mm"]
    bias = g.const(m["b"].const_value.reshape(-1), loc=root.loc, before=root)
    return [g.create("gemm", [mm.operands[0], mm.operands[1], bias], {}, loc=mm.loc, before=root).result]


RULES = [
    Rule("layer-norm", _LN, _rewrite_ln, _check_ln),
    Rule("layer-norm-scale", Pat("mul", Pat("layer_norm", Any(), Any(), bind="ln", variadic=True), Any("gamma")),
         *_ln_operand(1, "gamma", "factor")),
    Rule("layer-norm-bias", Pat("add", Pat("layer_norm", Any(), Any(), bind="ln", variadic=True), Any("beta")),
         *_ln_operand(2, "beta", "addend")),
    Rule("gelu", Pat("mul", Any(), Any()), _rewrite_gelu, _check_gelu),
    Rule("softmax", _SOFTMAX, _rewrite_softmax, _check_softmax),
    Rule("conv-bias", Pat("add", Pat("conv2d", Any(), Any(), bind="conv", variadic=True), Const("b")),
         _rewrite_conv_bias, _check_conv_bias),
    Rule("gemm-bias", Pat("add", Pat("matmul", Any(), Any(), bind="mm"), Const("b")),
         _rewrite_gemm_bias, _check_gemm_bias),
]


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    name = "fuse"

    def run(self, graph: Graph, ctx: PassContext) -> None:
        apply_rules(graph, RULES, ctx)
