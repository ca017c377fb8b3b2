"""ONNX ``Attention`` (opset 23) as an exact composition of existing IR ops (issue 14).

Imported as ONNX's function body and its reference (``onnx/reference/ops/op_attention.py``) compute it, op for op::

    Q, K, V          3-D [batch, seq, heads * head] -> [batch, heads, seq, head] (reshape, transpose); 4-D as given
    present_K/V      concat(past, K/V) along the sequence axis (K/V themselves without a past)
    K, V heads       GQA / MQA: each of the kv_num_heads repeated q_num_heads / kv_num_heads times in a row
                     ([h0, h0, h1, h1, ...]: reshape, expand, reshape)
    qk               matmul(Q * s, transpose(K) * s), s = sqrt(scale) rounded to the input type (scale defaults to
                     1 / sqrt(head_size), in f64 as the reference has it)
    capped           softcap * tanh(qk / softcap) where softcap > 0, else qk
    bias             boolean attn_mask: where(mask, 0, -inf); a float one as it is; is_causal: + where(j <= i + past
                     length, 0, -inf) (bottom-right aligned: the past length is the offset)
    probs            softmax(capped + bias) over the keys, in softmax_precision (a cast there and back) and 0 on a row
                     whose bias is -inf everywhere (the spec's fully-masked row; decided on the bias, counting its
                     -inf entries, as the reference decides it on max(bias) == -inf)
    Y                matmul(probs, V); 3-D: transpose and reshape back to [batch, seq, heads * v_head]
    qk_matmul_output mode 0: qk; 1: capped; 2: capped + bias; 3: probs

Where the spec and ONNX's Python reference disagree, lowbit follows the spec, its function body and onnxruntime:
mode 0 with a softcap is the raw product (the reference returns the capped one); a row whose logits, not bias, are
all -inf (an overflow) is Softmax's NaN (the reference's softmax gives 0).

Refused by name: opsets before 23; inputs other than f32/f64 (f16 and bf16 compose exactly here and interpret bit
for bit as the reference, but lowbit's compiled half-precision softmax and matmul round differently from its
interpreter, by up to 2 ulp in ONNX's own f16 / bf16 Attention cases, so they would compile to another answer); V or
a past of another type than Q; an attn_mask of integer type or of another float type than Q, or one that does not
broadcast to [batch, q_heads, q_seq, total_seq] with its last dimension the total sequence length (the reference
pads a shorter one with masked keys, the spec says broadcastable: a last dimension of 1 would mean two things);
q_num_heads not a multiple of kv_num_heads; a non-positive scale; a negative softcap; a softmax_precision narrower
than the input type (the reference then rounds each step of the softmax to it, which lowbit's softmax op does not).
"""
from __future__ import annotations

import numpy as np

from ..ir import dtypes as dt
from ..ir.graph import Value
from .onnx_ctx import Ctx, NodeError, converter, onnx_dtype, reshape_to

# f16 / bf16 compose as they are (the ops below in that type; _WIDER gives their softmax_precision) once compiled
# half-precision softmax and matmul round as the interpreter does; until then they are refused
_FLOATS = (dt.f32, dt.f64)
_WIDER = {dt.f16: (dt.f32, dt.f64), dt.bf16: (dt.f32, dt.f64), dt.f32: (dt.f64,), dt.f64: ()}


def _const(c: Ctx, v, d) -> Value:
    return c.const_value(np.asarray(v, np.float64).astype(d.np_dtype) if d.is_float else np.asarray(v, d.np_dtype))


def _heads(c: Ctx, x: Value, what: str, heads, other: str) -> Value:
    """``x`` as [batch, heads, seq, head]: a 3-D [batch, seq, heads * head] reshaped and transposed; a 4-D one as
    it is (its heads checked against the attribute when one is given)."""
    s = x.type.shape
    if x.type.rank == 4:
        if heads is not None and heads != s[1]:
            raise NodeError(f"{other}={heads} disagrees with the {s[1]} heads of the 4-D input {what} {list(s)}")
        return x
    if heads is None or heads <= 0 or s[2] % heads:
        raise NodeError(f"a 3-D input {what} {list(s)} needs {other} dividing its hidden size {s[2]}, got {heads}")
    return c.op("transpose", [reshape_to(c, x, (s[0], s[1], heads, s[2] // heads))], {"perm": (0, 2, 1, 3)})


def _repeat_heads(c: Ctx, x: Value, reps: int) -> Value:
    """np.repeat(x, reps, axis=1) of a [batch, heads, seq, head] tensor: each head ``reps`` times in a row."""
    if reps == 1:
        return x
    b, h, s, d = x.type.shape
    e = c.op("expand", [reshape_to(c, x, (b, h, 1, s, d))], {"shape": (b, h, reps, s, d)})
    return reshape_to(c, e, (b, h * reps, s, d))


def _mask_bias(c: Ctx, mask: Value, t, target) -> Value:
    """The additive bias of ``attn_mask``: where(mask, 0, -inf) for a boolean one, a float one as it is."""
    md, ms = mask.type.dtype, mask.type.shape
    if md != dt.boolean and md != t:
        raise NodeError(f"attn_mask of {md.name} is not supported (bool, or the inputs' {t.name})")
    if not 1 <= mask.type.rank <= 4:
        raise NodeError(f"attn_mask of rank {mask.type.rank} is not supported (1 to 4: it broadcasts to "
                        f"{list(target)})")
    if ms[-1] != target[-1]:
        raise NodeError(f"attn_mask's last dimension {ms[-1]} is not the total sequence length {target[-1]} "
                        "(ONNX's reference pads a shorter mask with masked keys, the spec broadcasts it)")
    if any(m not in (1, want) for m, want in zip(ms[::-1], target[::-1])):
        raise NodeError(f"attn_mask of shape {list(ms)} does not broadcast to {list(target)}")
    if md == dt.boolean:
        return c.op("where", [mask, _const(c, 0, t), _const(c, -np.inf, t)])
    return mask


def _fully_masked(c: Ctx, bias: Value, total: int) -> Value | None:
    """Where a row of ``bias`` is -inf everywhere (keepdims over the last axis), or None where no row can be."""
    if bias.is_const:
        rows = np.isneginf(np.max(bias.const_value, axis=-1, keepdims=True))
        return c.const_value(rows) if rows.any() else None
    neg = c.op("cast", [c.op("equal", [bias, _const(c, -np.inf, bias.type.dtype)])], {"to": dt.i32})
    count = c.op("reduce_sum", [neg], {"axes": (bias.type.rank - 1,), "keepdims": True})
    return c.op("equal", [count, _const(c, total, dt.i32)])


@converter("Attention")
def _attention(c: Ctx):
    a = c.attrs(is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
                softmax_precision=None)
    if c.opset < 23:
        raise NodeError(f"Attention needs opset 23, the model imports opset {c.opset}")
    q, k, v = c.need(0, "Q"), c.need(1, "K"), c.need(2, "V")
    mask, past_k, past_v = c.inp(3), c.inp(4), c.inp(5)
    t = q.type.dtype
    if t not in _FLOATS:
        raise NodeError(f"Attention of {t.name} inputs is not supported (f32 or f64; f16 and bf16 wait for compiled "
                        "half-precision softmax and matmul that round as the interpreter does)")
    for x, what in ((k, "K"), (v, "V"), (past_k, "past_key"), (past_v, "past_value")):
        if x is not None and x.type.dtype != t:
            raise NodeError(f"{what} is {x.type.dtype.name}, Q is {t.name}: mixed types are not supported")
    if not q.type.rank == k.type.rank == v.type.rank or q.type.rank not in (3, 4):
        raise NodeError(f"Q, K and V must all be 3-D or all 4-D, got ranks {q.type.rank}, {k.type.rank}, "
                        f"{v.type.rank}")
    if (past_k is None) != (past_v is None):
        raise NodeError("past_key and past_value must be given together")
    mode, causal, softcap = a["qk_matmul_output_mode"], a["is_causal"], float(a["softcap"])
    if mode not in (0, 1, 2, 3):
        raise NodeError(f"qk_matmul_output_mode {mode} is not 0-3")
    if causal not in (0, 1):
        raise NodeError(f"is_causal {causal} is not 0 or 1")
    if softcap < 0:
        raise NodeError(f"softcap {softcap} is negative (the spec defines none; 0 is off)")
    prec = t if a["softmax_precision"] is None else onnx_dtype(a["softmax_precision"], "softmax_precision")
    if prec != t and prec not in _WIDER[t]:
        raise NodeError(f"softmax_precision {prec.name} with {t.name} inputs is not supported (the input type or a "
                        "wider float: the reference rounds every step of a narrower softmax)")

    q4 = _heads(c, q, "Q", a["q_num_heads"], "q_num_heads")
    k4 = _heads(c, k, "K", a["kv_num_heads"], "kv_num_heads")
    v4 = _heads(c, v, "V", a["kv_num_heads"], "kv_num_heads")
    (b, hq, sq, d), (bk, hkv, skv, dk), (bv, hv, sv, dv) = q4.type.shape, k4.type.shape, v4.type.shape
    if not b == bk == bv or hkv != hv or skv != sv or d != dk:
        raise NodeError(f"Q {list(q.type.shape)}, K {list(k.type.shape)} and V {list(v.type.shape)} disagree on the "
                        "batch, the kv heads, the kv sequence or the head size of Q and K")
    if hq % hkv:
        raise NodeError(f"q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    past = 0
    if past_k is not None:
        past = past_k.type.shape[2] if past_k.type.rank == 4 else -1
        for x, what, hd in ((past_k, "past_key", d), (past_v, "past_value", dv)):
            if x.type.shape != (b, hkv, past, hd):
                raise NodeError(f"{what} has shape {list(x.type.shape)}, expected [{b}, {hkv}, past length, {hd}]")
        present_k = c.op("concat", [past_k, k4], {"axis": 2})
        present_v = c.op("concat", [past_v, v4], {"axis": 2})
    else:
        present_k, present_v = c.op("identity", [k4]), c.op("identity", [v4])
    total = past + skv

    scale = 1 / np.sqrt(np.float64(d)) if a["scale"] is None else np.float64(a["scale"])
    if not scale > 0:
        raise NodeError(f"scale {a['scale']} is not positive (Q and K are scaled by its square root)")
    s = c.const_value(np.asarray(t.np_dtype.type(np.sqrt(scale))))
    reps = hq // hkv
    kx, vx = _repeat_heads(c, present_k, reps), _repeat_heads(c, present_v, reps)
    qs = c.op("mul", [q4, s])
    ks = c.op("mul", [c.op("transpose", [kx], {"perm": (0, 1, 3, 2)}), s])
    qk = c.op("matmul", [qs, ks])
    capped = qk
    if softcap > 0:
        cap = _const(c, softcap, t)
        capped = c.op("mul", [c.op("tanh", [c.op("div", [qk, cap])]), cap])

    target = (b, hq, sq, total)
    bias = None if mask is None else _mask_bias(c, mask, t, target)
    if causal:
        i, j = np.arange(sq).reshape(sq, 1), np.arange(total).reshape(1, total)
        tri = _const(c, np.where(j <= i + past, 0.0, -np.inf), t)
        bias = tri if bias is None else c.op("add", [bias, tri])
    scores = capped if bias is None else c.op("add", [capped, bias])

    x = scores if prec == t else c.op("cast", [scores], {"to": prec})
    rows = None if bias is None else _fully_masked(c, bias, total)
    if rows is not None:  # (0 in, so that no NaN is computed; 0 out)
        x = c.op("where", [rows, _const(c, 0, prec), x])
    probs = c.op("softmax", [x], {"axis": 3})
    if rows is not None:
        probs = c.op("where", [rows, _const(c, 0, prec), probs])
    if prec != t:
        probs = c.op("cast", [probs], {"to": t})
    y = c.op("matmul", [probs, vx])
    if q.type.rank == 3:
        y = reshape_to(c, c.op("transpose", [y], {"perm": (0, 2, 1, 3)}), (b, sq, hq * dv))
    return [y, present_k, present_v, (qk, capped, scores, probs)[mode]]
