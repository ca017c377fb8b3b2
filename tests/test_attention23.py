"""ONNX Attention (opset 23): imported as a composition of IR ops, interpreted against onnxruntime (which runs
Attention-23 on the CPU) and ONNX's reference evaluator, compiled once, and its unsupported forms refused by name."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import lowbit
from helpers import NP_TO_ONNX, max_rel_err, run_ort
from lowbit.errors import LowbitError

OUTS = ("Y", "present_key", "present_value", "qk")


def _model(inputs: dict, attrs: dict, consts: dict | None = None, opset: int = 23):
    """One Attention node reading ``inputs`` (graph inputs, in the order Q, K, V, attn_mask, past_key, past_value;
    None skips a slot) and ``consts`` (initializers in those slots), with every output."""
    consts = consts or {}
    names = ["Q", "K", "V", "attn_mask", "past_key", "past_value"]
    order = [n if (inputs.get(n) is not None or n in consts) else "" for n in names]
    while order[-1] == "":
        order.pop()
    node = helper.make_node("Attention", order, list(OUTS), **attrs)
    g = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info(k, NP_TO_ONNX[v.dtype], v.shape) for k, v in inputs.items() if v is not None],
        [onnx.ValueInfoProto(name=o) for o in OUTS],
        [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _qkv(b, hq, hkv, sq, skv, d, dv, rank=4, past=0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if rank == 4:
        x = {"Q": (b, hq, sq, d), "K": (b, hkv, skv, d), "V": (b, hkv, skv, dv)}
    else:
        x = {"Q": (b, sq, hq * d), "K": (b, skv, hkv * d), "V": (b, skv, hkv * dv)}
    if past:
        x.update(past_key=(b, hkv, past, d), past_value=(b, hkv, past, dv))
    return {k: rng.standard_normal(s).astype(dtype) for k, s in x.items()}


def _err(got, want) -> float:
    """max_rel_err over the finite entries, after checking the infinities (mode 2's masked scores) agree."""
    got, want = np.asarray(got), np.asarray(want)
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]) and not np.isinf(got[~inf]).any()
    return max_rel_err(got[~inf], want[~inf])


def _interp(model, feed):
    g = lowbit.load(model)
    return lowbit.interpret(g, {k: v for k, v in feed.items() if v is not None})


def _check(model, feed, against="both", tol=1e-5):
    """lowbit's four outputs within ``tol`` (relative to the largest magnitude) of onnxruntime's and/or the
    reference's; NaN nowhere."""
    got = _interp(model, feed)
    feed = {k: v for k, v in feed.items() if v is not None}
    wants = []
    if against in ("both", "ort"):
        want = run_ort(model.SerializeToString(), feed)
        # onnxruntime's mode-2 scores hold the lowest finite float where a boolean or causal mask gives -inf
        want["qk"] = np.where(want["qk"] == np.finfo(want["qk"].dtype).min, -np.inf, want["qk"])
        wants.append(want)
    if against in ("both", "ref"):
        wants.append(dict(zip(OUTS, ReferenceEvaluator(model).run(None, feed))))
    for want in wants:
        for o in OUTS:
            assert not np.isnan(got[o]).any(), o
            assert got[o].dtype == want[o].dtype and got[o].shape == want[o].shape, o
            assert _err(got[o], want[o]) <= tol, o
    return got


CASES = {  # name: (_qkv arguments, attributes, mask shape or None, mask kind); onnxruntime takes masks of rank 2-4
    "4d": (dict(b=2, hq=2, hkv=2, sq=3, skv=4, d=8, dv=8), {}, None, None),
    "3d": (dict(b=2, hq=2, hkv=2, sq=3, skv=4, d=4, dv=4, rank=3), dict(q_num_heads=2, kv_num_heads=2), None, None),
    "3d_gqa_diff_heads": (dict(b=1, hq=4, hkv=2, sq=3, skv=5, d=4, dv=6, rank=3), dict(q_num_heads=4, kv_num_heads=2),
                          None, None),
    "4d_mqa_scaled": (dict(b=1, hq=3, hkv=1, sq=2, skv=4, d=8, dv=4), dict(scale=0.3), None, None),
    "bool_mask_2d": (dict(b=1, hq=2, hkv=2, sq=3, skv=4, d=4, dv=4), {}, (3, 4), "bool"),
    "float_mask_4d": (dict(b=2, hq=2, hkv=1, sq=3, skv=4, d=4, dv=4), {}, (2, 1, 3, 4), "float"),
    "float_mask_1d": (dict(b=1, hq=2, hkv=2, sq=3, skv=4, d=4, dv=4), {}, (4,), "float"),
    "causal": (dict(b=1, hq=2, hkv=2, sq=4, skv=4, d=4, dv=4), dict(is_causal=1), None, None),
    "causal_past_bool_mask": (dict(b=2, hq=4, hkv=2, sq=2, skv=2, d=4, dv=4, past=3), dict(is_causal=1),
                              (2, 4, 2, 5), "bool"),
    "3d_past_softcap": (dict(b=1, hq=2, hkv=2, sq=2, skv=3, d=4, dv=4, rank=3, past=2),
                        dict(q_num_heads=2, kv_num_heads=2, softcap=0.7), None, None),
    "softmax_precision_f32": (dict(b=1, hq=2, hkv=2, sq=3, skv=4, d=4, dv=4), dict(softmax_precision=1),
                              (3, 4), "float"),
}


def _mask(shape, kind, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "bool":
        m = rng.random(shape) > 0.4
        m[..., 0, :] = False  # a fully-masked query row: a zero row of Y (the spec), not NaN
        return m
    m = rng.standard_normal(shape).astype(np.float32)
    m[..., -1] = -np.inf
    return m


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_matches_onnxruntime_and_the_reference(name, mode):
    args, attrs, mshape, kind = CASES[name]
    feed = _qkv(**args)
    feed = {"Q": feed["Q"], "K": feed["K"], "V": feed["V"], "attn_mask": _mask(mshape, kind) if mshape else None,
            "past_key": feed.get("past_key"), "past_value": feed.get("past_value")}
    attrs = dict(attrs, qk_matmul_output_mode=mode)
    # mode 0 with a softcap: the spec, its function body and onnxruntime give the raw product; the Python reference
    # gives the capped one (so it is compared on Y and the present caches only)
    against = "ort" if mode == 0 and attrs.get("softcap") else "ref" if mshape and len(mshape) == 1 else "both"
    got = _check(_model(feed, attrs), feed, against)
    if kind == "bool":
        assert not got["Y"][..., 0, :].any()  # (3-D Y: rank 4 here)
        if mode == 3:
            assert not got["qk"][..., 0, :].any()


def test_mode0_with_softcap_is_the_raw_product():
    feed = _qkv(b=1, hq=1, hkv=1, sq=2, skv=3, d=4, dv=4)
    got = _interp(_model(feed, dict(softcap=0.5, qk_matmul_output_mode=0)), feed)
    raw = feed["Q"] @ feed["K"].transpose(0, 1, 3, 2) * np.float32(0.5)  # scale 1/sqrt(4) = (1/sqrt(2))^2
    assert max_rel_err(got["qk"], raw) <= 1e-6 and np.abs(got["qk"]).max() > 0.5


def test_f64_and_a_wider_softmax_precision():
    feed = _qkv(b=1, hq=2, hkv=1, sq=3, skv=4, d=4, dv=2, dtype=np.float64)
    _check(_model(feed, dict(is_causal=1, qk_matmul_output_mode=3)), feed, "ref", tol=1e-12)
    f32 = _qkv(b=1, hq=2, hkv=1, sq=3, skv=4, d=4, dv=2)
    _check(_model(f32, dict(softmax_precision=TensorProto.DOUBLE, qk_matmul_output_mode=3)), f32)


def test_constant_mask_folds_and_causal_offsets_by_the_past():
    feed = _qkv(b=1, hq=2, hkv=2, sq=2, skv=2, d=4, dv=4, past=2)
    mask = _mask((2, 4), "bool")
    m = _model(feed, dict(is_causal=1, qk_matmul_output_mode=2), consts={"attn_mask": mask})
    g = lowbit.load(m)
    assert "where" in [op.opname for op in g.ops]  # the fully-masked row guard, folded to a constant condition
    assert "equal" not in [op.opname for op in g.ops]
    got = lowbit.interpret(g, feed)
    want = dict(zip(OUTS, ReferenceEvaluator(m).run(None, feed)))
    for o in OUTS:
        assert _err(got[o], want[o]) <= 1e-5
    # query i attends keys j <= i + 2 (the past length), intersected with the mask
    allowed = (np.arange(4)[None, :] <= np.arange(2)[:, None] + 2) & mask
    assert np.array_equal(np.isneginf(got["qk"][0, 0]), ~allowed)


def test_compiled(tmp_path):
    feed = _qkv(b=1, hq=4, hkv=2, sq=3, skv=2, d=4, dv=4, rank=3, past=2)
    mask = _mask((3, 4), "bool")
    feed = {"Q": feed["Q"], "K": feed["K"], "V": feed["V"], "attn_mask": mask, "past_key": feed["past_key"],
            "past_value": feed["past_value"]}
    m = _model(feed, dict(is_causal=1, q_num_heads=4, kv_num_heads=2, qk_matmul_output_mode=3))
    want = _check(m, feed)
    import lowbit.runtime as rt

    lowbit.compile(m).save(tmp_path / "attention.lbit")
    got = rt.load(tmp_path / "attention.lbit").run(feed)
    for o in OUTS:
        assert _err(got[o], want[o]) <= 1e-5, o
    assert not got["Y"][:, 0].any()  # the fully-masked query row (3-D Y: [batch, seq, hidden])


def _refused(model, match):
    with pytest.raises(LowbitError, match=match) as e:
        lowbit.load(model)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change,match", [
    (dict(dtype=np.float16), "Attention of f16 inputs is not supported"),
    (dict(mask=np.ones((3, 4), np.int32)), "attn_mask of i32 is not supported"),
    (dict(mask=np.ones((3, 3), bool)), "attn_mask's last dimension 3 is not the total sequence length 4"),
    (dict(mask=np.ones((3, 1), bool)), "attn_mask's last dimension 1"),
    (dict(mask=np.ones((2, 4), bool)), r"attn_mask of shape \[2, 4\] does not broadcast to \[1, 2, 3, 4\]"),
    (dict(mask=np.ones((1, 1, 1, 3, 4), bool)), "attn_mask of rank 5 is not supported"),
    (dict(mask=np.ones((3, 4), np.float64)), "attn_mask of f64 is not supported"),
    (dict(attrs=dict(softcap=-1.0)), "softcap -1.0 is negative"),
    (dict(attrs=dict(scale=0.0)), "scale 0.0 is not positive"),
    (dict(attrs=dict(qk_matmul_output_mode=4)), "qk_matmul_output_mode 4 is not 0-3"),
    (dict(attrs=dict(q_num_heads=3)), "q_num_heads=3 disagrees with the 2 heads"),
    (dict(dtype=np.float64, attrs=dict(softmax_precision=TensorProto.FLOAT)), "softmax_precision f32 with f64 inputs"),
    (dict(past_only=True), "past_key and past_value must be given together"),
])
def test_refusals(change, match):
    feed = _qkv(b=1, hq=2, hkv=2, sq=3, skv=4, d=4, dv=4, dtype=change.get("dtype", np.float32))
    if "mask" in change:
        feed["attn_mask"] = change["mask"]
    if change.get("past_only"):
        feed["past_key"] = np.zeros((1, 2, 1, 4), np.float32)
    _refused(_model(feed, change.get("attrs", {})), match)


def test_refusals_of_heads():
    feed = _qkv(b=1, hq=3, hkv=2, sq=2, skv=3, d=4, dv=4)
    _refused(_model(feed, {}), "q_num_heads 3 is not a multiple of kv_num_heads 2")
    feed3 = _qkv(b=1, hq=2, hkv=2, sq=2, skv=3, d=4, dv=4, rank=3)
    _refused(_model(feed3, dict(q_num_heads=3, kv_num_heads=2)), "needs q_num_heads dividing its hidden size 8")
    _refused(_model(feed3, dict(kv_num_heads=2)), "needs q_num_heads dividing its hidden size 8, got None")
    feed3["K"] = feed["K"]
    _refused(_model(feed3, dict(q_num_heads=2, kv_num_heads=2)), "Q, K and V must all be 3-D or all 4-D")
