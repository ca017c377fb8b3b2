"""ONNX LSTM, GRU and RNN (opsets 7, 14 and 22), imported as exact compositions of existing IR ops, unrolled over
the static sequence length (issue 14).

Per direction, ``X·Wᵀ`` (plus the biases that are added outside the recurrence) is one matmul over every step;
then each step adds ``H·Rᵀ`` and applies the gates, in the spec's gate order (LSTM ``iofc``, GRU ``zrh``) and
equations. Covered: direction forward / reverse / bidirectional, layout 0 and 1 (opset 14+), optional B,
initial_h, initial_c and P (peepholes), any subset of the outputs, hidden_size, GRU linear_before_reset, LSTM
input_forget (``f = 1 - i``), clip for RNN and GRU (``min(max(x, -clip), clip)`` on every activation's input),
the spec's activations with activation_alpha / activation_beta, and a constant sequence_lens (outputs zero past
each length, Y_h / Y_c held at each sequence's last step, the reverse direction starting at each sequence's own
end). Refused by name: a sequence_lens computed at run time or holding a length outside 1..seq_length, LSTM's
clip (the spec clips the input of every activation, h(Ct) included; onnxruntime clips only the gates' inputs),
activation parameters that the two readings of "consumed in the order of activation functions" (one value per
activation that takes one, as onnxruntime reads it, or one per activation) give different values, and more than
``MAX_STEPS`` steps.
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, ints, reshape_to

# The most time steps a recurrent op is unrolled to.
MAX_STEPS = 512

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# activation (lower case) -> (takes alpha, takes beta, default alpha, default beta). A default is listed only where
# the spec ("the same as of corresponding ONNX operators") and onnxruntime agree; Affine, ScaledTanh and
# ThresholdedRelu have none there (onnxruntime uses 0), so they need their values given.
_ACTS = {"relu": (False, False, None, None), "tanh": (False, False, None, None),
         "sigmoid": (False, False, None, None), "affine": (True, True, None, None),
         "leakyrelu": (True, False, 0.01, None), "thresholdedrelu": (True, False, None, None),
         "scaledtanh": (True, True, None, None), "hardsigmoid": (True, True, 0.2, 0.5),
         "elu": (True, False, 1.0, None), "softsign": (False, False, None, None),
         "softplus": (False, False, None, None)}
_ACT_NAMES = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid",
              "Elu", "Softsign", "Softplus")


# -- attributes ---------------------------------------------------------------------------------------------------
def _same(a: float, b: float) -> bool:
    return np.float32(a).tobytes() == np.float32(b).tobytes()


def _act_params(names: list, given: list, k: int) -> dict:
    """position -> alpha (k = 0) or beta (k = 1) of the activations that take one. ONNX: the values "are consumed
    in the order of activation functions"; onnxruntime gives them to the activations that take one, in order,
    others read one value per activation. A value is used only where both readings give it."""
    which = ("alpha", "beta")[k]
    users = [p for p, n in enumerate(names) if _ACTS[n.lower()][k]]
    out = {}
    for j, p in enumerate(users):
        default = _ACTS[names[p].lower()][2 + k]
        stream = given[j] if j < len(given) else default
        positional = given[p] if p < len(given) else default
        if stream is None:
            raise NodeError(f"activation {names[p]} (activation {p}) needs its {which} in attribute "
                            f"'activation_{which}' (the spec's default and onnxruntime's differ)")
        if positional is None or not _same(stream, positional):
            raise NodeError(f"attribute 'activation_{which}' {list(given)} is ambiguous for activations {names}: "
                            f"ONNX says the values are consumed in the order of the activations; read as one value "
                            f"per activation that takes one (onnxruntime) it gives {names[p]} {which} {stream}, read "
                            f"as one value per activation {positional}")
        out[p] = float(stream)
    return out


def _activations(c: Ctx, kind: str, a: dict, nd: int) -> list:
    """[(name, alpha, beta)] per activation: n per direction, forward first."""
    n = len(_DEFAULT_ACTS[kind])
    names = a["activations"]
    names = list(_DEFAULT_ACTS[kind]) * nd if names is None else list(names)
    if len(names) != n * nd:
        raise NodeError(f"attribute 'activations' has {len(names)} function(s), {kind} with {nd} direction(s) "
                        f"takes {n * nd}")
    for nm in names:
        if nm.lower() not in _ACTS:
            raise NodeError(f"activation {nm!r} in attribute 'activations' is not supported ({', '.join(_ACT_NAMES)} "
                            "are)")
    al = _act_params(names, list(a["activation_alpha"] or []), 0)
    be = _act_params(names, list(a["activation_beta"] or []), 1)
    return [(nm.lower(), al.get(p), be.get(p)) for p, nm in enumerate(names)]


# -- building blocks ----------------------------------------------------------------------------------------------
def _s(c: Ctx, v, like: Value) -> Value:
    return c.const_value(np.asarray(v).astype(like.type.dtype.np_dtype))


def _act(c: Ctx, x: Value, act) -> Value:
    """One of the spec's activation functions, as written there."""
    name, alpha, beta = act
    if name in ("relu", "tanh", "sigmoid", "softplus"):
        return c.op(name, [x])
    if name == "affine":  # alpha * x + beta
        return c.op("add", [c.op("mul", [_s(c, alpha, x), x]), _s(c, beta, x)])
    if name == "leakyrelu":  # x if x >= 0 else alpha * x
        return c.op("leaky_relu", [x], {"alpha": alpha})
    if name == "thresholdedrelu":  # x if x >= alpha else 0 (the RNN ops' table; ThresholdedRelu itself has >)
        return c.op("where", [c.op("greater_equal", [x, _s(c, alpha, x)]), x, _s(c, 0, x)])
    if name == "scaledtanh":  # alpha * tanh(beta * x)
        return c.op("mul", [_s(c, alpha, x), c.op("tanh", [c.op("mul", [_s(c, beta, x), x])])])
    if name == "hardsigmoid":  # min(max(alpha * x + beta, 0), 1)
        return c.op("hard_sigmoid", [x], {"alpha": alpha, "beta": beta})
    if name == "elu":  # x if x >= 0 else alpha * (e^x - 1)
        return c.op("elu", [x], {"alpha": alpha})
    assert name == "softsign"  # x / (1 + |x|)
    return c.op("div", [x, c.op("add", [c.op("abs", [x]), _s(c, 1, x)])])


def _sl(c: Ctx, x: Value, axis: int, start: int, end: int) -> Value:
    return c.op("slice", [x], {"starts": (start,), "ends": (end,), "axes": (axis,), "steps": (1,)})


def _split(c: Ctx, x: Value, sizes) -> list:
    return c.op_multi("split", [x], {"axis": x.type.rank - 1, "sizes": tuple(sizes)})


def _cat(c: Ctx, xs: list, axis: int) -> Value:
    return xs[0] if len(xs) == 1 else c.op("concat", xs, {"axis": axis})


def _take(c: Ctx, v: Value | None, d: int) -> Value | None:
    """Direction ``d`` of a [num_directions, ...] operand, without its first axis."""
    return None if v is None else reshape_to(c, _sl(c, v, 0, d, d + 1), v.type.shape[1:])


class _Dir:
    """One direction's operands: Wᵀ, Rᵀ (split as the cell needs), biases, peepholes and activations."""


def _direction(c: Ctx, kind: str, d: int, ops: dict, hid: int, acts: list, lbr: bool) -> _Dir:
    p = _Dir()
    g = _GATES[kind]
    p.acts = acts
    p.wt = c.op("transpose", [_take(c, ops["W"], d)], {"perm": (1, 0)})  # [input, g * hid]
    rt = c.op("transpose", [_take(c, ops["R"], d)], {"perm": (1, 0)})  # [hid, g * hid]
    p.rt = rt
    if kind == "GRU" and not lbr:  # (r (.) H) Rhᵀ needs Rh apart from Rz, Rr
        p.rt_zr, p.rt_h = _sl(c, rt, 1, 0, 2 * hid), _sl(c, rt, 1, 2 * hid, 3 * hid)
    p.bias, p.rbh = None, None
    b = _take(c, ops["B"], d)
    if b is not None:
        wb, rb = _sl(c, b, 0, 0, g * hid), _sl(c, b, 0, g * hid, 2 * g * hid)
        if kind == "GRU" and lbr:  # Rbh is added inside r (.) (H Rhᵀ + Rbh)
            zr = c.op("add", [_sl(c, wb, 0, 0, 2 * hid), _sl(c, rb, 0, 0, 2 * hid)])
            p.bias = c.op("concat", [zr, _sl(c, wb, 0, 2 * hid, 3 * hid)], {"axis": 0})
            p.rbh = _sl(c, rb, 0, 2 * hid, 3 * hid)
        else:
            p.bias = c.op("add", [wb, rb])
    p.peep = None
    pp = _take(c, ops.get("P"), d)
    if pp is not None:
        p.peep = _split(c, pp, (hid,) * 3)  # i, o, f
    return p


# -- the cells: one step, H (and C) at t-1 -> at t -----------------------------------------------------------------
def _clipped(c: Ctx, x: Value, clip) -> Value:
    return x if clip is None else c.op("clip", [x], {"min": -clip, "max": clip})


def _rnn_cell(c: Ctx, p: _Dir, xw: Value, h: Value, cell, k: dict):
    pre = c.op("add", [xw, c.op("matmul", [h, p.rt])])
    return _act(c, _clipped(c, pre, k["clip"]), p.acts[0]), None


def _gru_cell(c: Ctx, p: _Dir, xw: Value, h: Value, cell, k: dict):
    hid, clip = k["hid"], k["clip"]
    f, g = p.acts
    xw_zr, xw_h = _split(c, xw, (2 * hid, hid))
    if k["lbr"]:  # ht = g(Xt Whᵀ + (rt (.) (Ht-1 Rhᵀ + Rbh)) + Wbh)
        hr_zr, hr_h = _split(c, c.op("matmul", [h, p.rt]), (2 * hid, hid))
        zr = _act(c, _clipped(c, c.op("add", [xw_zr, hr_zr]), clip), f)
        z, r = _split(c, zr, (hid, hid))
        if p.rbh is not None:
            hr_h = c.op("add", [hr_h, p.rbh])
        pre = c.op("add", [xw_h, c.op("mul", [r, hr_h])])
    else:  # ht = g(Xt Whᵀ + (rt (.) Ht-1) Rhᵀ + Rbh + Wbh)
        zr = _act(c, _clipped(c, c.op("add", [xw_zr, c.op("matmul", [h, p.rt_zr])]), clip), f)
        z, r = _split(c, zr, (hid, hid))
        pre = c.op("add", [xw_h, c.op("matmul", [c.op("mul", [r, h]), p.rt_h])])
    ht = _act(c, _clipped(c, pre, clip), g)
    # Ht = (1 - zt) (.) ht + zt (.) Ht-1
    return c.op("add", [c.op("mul", [c.op("sub", [_s(c, 1, z), z]), ht]), c.op("mul", [z, h])]), None


def _lstm_cell(c: Ctx, p: _Dir, xw: Value, h: Value, cell: Value, k: dict):
    hid = k["hid"]
    f, g, hh = p.acts
    gates = c.op("add", [xw, c.op("matmul", [h, p.rt])])
    if p.peep is None and not k["input_forget"]:  # i, o, f share f: one activation over the three
        ifo, cpre = _split(c, gates, (3 * hid, hid))
        i, o, fg = _split(c, _act(c, ifo, f), (hid,) * 3)
    else:
        ipre, opre, fpre, cpre = _split(c, gates, (hid,) * 4)
        pi, po, pf = p.peep if p.peep is not None else (None,) * 3
        # it = f(Xt Wiᵀ + Ht-1 Riᵀ + Pi (.) Ct-1 + Wbi + Rbi), ft likewise with Pf
        i = _act(c, ipre if pi is None else c.op("add", [ipre, c.op("mul", [pi, cell])]), f)
        if k["input_forget"]:  # the input and forget gates coupled: ft = 1 - it
            fg = c.op("sub", [_s(c, 1, i), i])
        else:
            fg = _act(c, fpre if pf is None else c.op("add", [fpre, c.op("mul", [pf, cell])]), f)
    ct = _act(c, cpre, g)
    c_new = c.op("add", [c.op("mul", [fg, cell]), c.op("mul", [i, ct])])  # Ct = ft (.) Ct-1 + it (.) ct
    if p.peep is not None:  # ot = f(Xt Woᵀ + Ht-1 Roᵀ + Po (.) Ct + Wbo + Rbo)
        o = _act(c, c.op("add", [opre, c.op("mul", [po, c_new])]), f)
    elif k["input_forget"]:
        o = _act(c, opre, f)
    return c.op("mul", [o, _act(c, c_new, hh)]), c_new  # Ht = ot (.) h(Ct)


_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


# -- the converter ------------------------------------------------------------------------------------------------
def _check_shape(v: Value | None, want: tuple, what: str) -> None:
    if v is not None and v.type.shape != want:
        raise NodeError(f"{what} has shape {list(v.type.shape)}, expected {list(want)}")


def _sequence_lens(c: Ctx, steps: int, batch: int):
    """The constant lengths, or None where every sequence is ``steps`` long."""
    v = c.inp(4)
    if v is None:
        return None
    if not v.type.dtype.is_integer:
        raise NodeError(f"input 4 (sequence_lens) is {v.type.dtype.name}, expected int32")
    if not v.is_const:
        raise NodeError(f"input 4 (sequence_lens) must be a constant: lowbit compiles static sequence "
                        f"lengths, and '{c.node.input[4]}' is computed at run time (lowbit unrolls the sequence at import)")
    lens = np.asarray(ints(v.const_value), np.int64)
    if v.type.shape != (batch,):
        raise NodeError(f"input 4 (sequence_lens) has shape {list(v.type.shape)}, expected [{batch}]")
    bad = [(j, int(n)) for j, n in enumerate(lens) if not 1 <= n <= steps]
    if bad:
        j, n = bad[0]
        raise NodeError(f"input 4 (sequence_lens) gives batch entry {j} a length of {n}: lowbit takes lengths "
                        f"1..{steps} (seq_length; ONNX does not define the outputs of an empty sequence)")
    return None if (lens == steps).all() else lens


@converter("RNN", "GRU", "LSTM")
def _recurrent(c: Ctx):
    kind = c.node.op_type
    defaults = dict(activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
                    hidden_size=None)
    if c.opset >= 14:
        defaults["layout"] = 0
    elif any(at.name == "layout" for at in c.node.attribute):
        raise NodeError(f"attribute 'layout' is not part of {kind} before opset 14 (the model's opset is {c.opset})")
    if kind == "GRU":
        defaults["linear_before_reset"] = 0
    if kind == "LSTM":
        defaults["input_forget"] = 0
    a = c.attrs(**defaults)
    n_in = 8 if kind == "LSTM" else 6
    if len(c.node.input) > n_in:
        raise NodeError(f"{kind} takes at most {n_in} inputs, the node has {len(c.node.input)}")
    x, w, r = c.need(0, "X"), c.need(1, "W"), c.need(2, "R")
    ops = {"W": w, "R": r, "B": c.inp(3), "initial_h": c.inp(5)}
    if kind == "LSTM":
        ops.update(initial_c=c.inp(6), P=c.inp(7))
    dtype = x.type.dtype
    if dtype not in (dt.f32, dt.f64):
        raise NodeError(f"{kind} of {dtype.name} tensors is not supported (f32/f64 only)")
    for k, v in ops.items():
        if v is not None and v.type.dtype != dtype:
            raise NodeError(f"{k} is {v.type.dtype.name}, X is {dtype.name}")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        raise NodeError(f"attribute 'layout' is {layout}, expected 0 or 1")
    direction = a["direction"]
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NodeError(f"attribute 'direction' is {direction!r}, expected forward, reverse or bidirectional")
    nd = 2 if direction == "bidirectional" else 1
    lbr = bool(a.get("linear_before_reset", 0))  # the spec's equations: linear_before_reset != 0
    input_forget = a.get("input_forget", 0)
    if input_forget not in (0, 1):
        raise NodeError(f"attribute 'input_forget' is {input_forget}, expected 0 or 1")
    clip = a["clip"]
    if clip is not None:
        if kind == "LSTM":
            raise NodeError("attribute 'clip' of LSTM is not supported: ONNX clips the input of every activation, "
                            "h(Ct) included, onnxruntime only the gates' inputs, so the answer depends on the reader")
        if not clip > 0:
            raise NodeError(f"attribute 'clip' is {clip}, expected a positive threshold")
    if x.type.rank != 3:
        raise NodeError(f"X has shape {list(x.type.shape)}, expected rank 3")
    if layout:
        x = c.op("transpose", [x], {"perm": (1, 0, 2)})
    steps, batch, n_x = x.type.shape
    g = _GATES[kind]
    if r.type.rank != 3:
        raise NodeError(f"R has shape {list(r.type.shape)}, expected rank 3")
    hid = r.type.shape[2]
    if a["hidden_size"] is not None and a["hidden_size"] != hid:
        raise NodeError(f"attribute 'hidden_size' is {a['hidden_size']}, R has shape {list(r.type.shape)}")
    if hid < 1:
        raise NodeError(f"R has shape {list(r.type.shape)}: hidden_size must be at least 1")
    _check_shape(w, (nd, g * hid, n_x), "W")
    _check_shape(r, (nd, g * hid, hid), "R")
    _check_shape(ops["B"], (nd, 2 * g * hid), "B")
    _check_shape(ops.get("P"), (nd, 3 * hid), "P")
    state = (batch, nd, hid) if layout else (nd, batch, hid)
    for k in ("initial_h", "initial_c"):
        _check_shape(ops.get(k), state, k)
        if layout and ops.get(k) is not None:
            ops[k] = c.op("transpose", [ops[k]], {"perm": (1, 0, 2)})
    if steps < 1 or batch < 1:
        raise NodeError(f"X has shape {list(x.type.shape)}: lowbit needs at least one step and one batch entry")
    if steps > MAX_STEPS:
        raise NodeError(f"X has a sequence length of {steps}: lowbit unrolls {kind} at import, up to {MAX_STEPS} "
                        "steps")
    lens = _sequence_lens(c, steps, batch)
    acts = _activations(c, kind, a, nd)
    n_act = len(_DEFAULT_ACTS[kind])
    cfg = {"hid": hid, "clip": clip, "lbr": lbr, "input_forget": input_forget}
    want_y = len(c.node.output) > 0 and bool(c.node.output[0])
    x2 = reshape_to(c, x, (steps * batch, n_x))
    zeros = c.const_value(np.zeros((batch, hid), dtype.np_dtype))
    ys, hs, cs = [], [], []
    for d in range(nd):
        p = _direction(c, kind, d, ops, hid, acts[d * n_act:(d + 1) * n_act], lbr)
        xw = c.op("matmul", [x2, p.wt])  # X Wᵀ for every step at once: [steps * batch, g * hid]
        if p.bias is not None:
            xw = c.op("add", [xw, p.bias])
        h = zeros if ops["initial_h"] is None else _take(c, ops["initial_h"], d)
        cell = None
        if kind == "LSTM":
            cell = zeros if ops["initial_c"] is None else _take(c, ops["initial_c"], d)
        y = [None] * steps
        reverse = direction == "reverse" or d == 1
        for t in (reversed(range(steps)) if reverse else range(steps)):
            live = None if lens is None else lens > t
            if live is not None and not live.any():  # every sequence has ended (forward) or not begun (reverse)
                y[t] = zeros
                continue
            h_new, c_new = _CELLS[kind](c, p, _sl(c, xw, 0, t * batch, (t + 1) * batch), h, cell, cfg)
            if live is None or live.all():
                h, cell, y[t] = h_new, c_new, h_new
                continue
            # past its length a sequence keeps its state and outputs zeros; in reverse, it starts at its own end
            m = c.const_value(live.reshape(batch, 1))
            h = c.op("where", [m, h_new, h])
            if c_new is not None:
                cell = c.op("where", [m, c_new, cell])
            y[t] = c.op("where", [m, h_new, zeros]) if want_y else None
        hs.append(reshape_to(c, h, (1, batch, hid)))
        if cell is not None:
            cs.append(reshape_to(c, cell, (1, batch, hid)))
        if want_y:
            ys.append(_cat(c, [reshape_to(c, v, (1, 1, batch, hid)) for v in y], 0))  # [steps, 1, batch, hid]
    state_perm = {"perm": (1, 0, 2)}
    outs = [None, _cat(c, hs, 0)] + ([_cat(c, cs, 0)] if cs else [])
    if layout:
        outs[1:] = [c.op("transpose", [v], state_perm) for v in outs[1:]]
    if want_y:
        y = _cat(c, ys, 1)  # [steps, nd, batch, hid]
        outs[0] = c.op("transpose", [y], {"perm": (2, 0, 1, 3)}) if layout else y
    return outs
