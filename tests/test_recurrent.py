"""LSTM, GRU and RNN imported as compositions unrolled over the sequence, against onnxruntime: directions, layouts,
optional inputs, the attributes, partial outputs and constant sequence_lens; what is not exact is refused by name."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lowbit
import lowbit.runtime
from helpers import run_ort
from lowbit.errors import LowbitError, LowbitWarning

F = TensorProto.FLOAT
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
OUTS = ("Y", "Y_h", "Y_c")


def _arrays(op, seq=3, batch=2, n_x=3, hid=2, nd=1, layout=0, bias=True, init=False, peep=False, seed=0):
    rng = np.random.default_rng(seed)
    g = GATES[op]

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    v = {"X": r(batch, seq, n_x) if layout else r(seq, batch, n_x), "W": r(nd, g * hid, n_x, scale=0.7),
         "R": r(nd, g * hid, hid, scale=0.7)}
    if bias:
        v["B"] = r(nd, 2 * g * hid, scale=0.5)
    state = (batch, nd, hid) if layout else (nd, batch, hid)
    if init:
        v["initial_h"] = r(*state)
        if op == "LSTM":
            v["initial_c"] = r(*state)
    if peep:
        v["P"] = r(nd, 3 * hid)
    return v


def _model(op, arrays, attrs, outputs=OUTS, opset=14, runtime=("X",), seq_lens=None, seq_lens_input=False):
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][:8 if op == "LSTM" else 6]
    vals = dict(arrays)
    if seq_lens is not None:
        vals["sequence_lens"] = np.asarray(seq_lens, np.int32)
    names = [k if k in vals else "" for k in order]
    while names and not names[-1]:
        names.pop()
    n_out = 3 if op == "LSTM" else 2
    outs = [o if o in outputs else "" for o in OUTS[:n_out]]
    node = helper.make_node(op, names, outs, name="rnn0", **attrs)
    is_input = set(runtime) | ({"sequence_lens"} if seq_lens_input else set())
    ins = [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "sequence_lens" else F, vals[k].shape)
           for k in names if k in is_input]
    inits = [numpy_helper.from_array(vals[k], k) for k in names if k and k not in is_input]
    g = helper.make_graph([node], "rnn", ins, [helper.make_tensor_value_info(o, F, None) for o in outs if o], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 18 else 10
    feeds = {k: vals[k] for k in names if k in is_input}
    return m.SerializeToString(), feeds


def _reference(op, arrays, attrs, **kw):
    """onnxruntime's outputs; it has no layout 1, so a layout-1 model is run as its layout-0 twin, transposed."""
    if not attrs.get("layout"):
        return run_ort(*_model(op, arrays, attrs, **kw))
    t = {k: v.transpose(1, 0, 2) if k in ("X", "initial_h", "initial_c") else v for k, v in arrays.items()}
    want = run_ort(*_model(op, t, {k: v for k, v in attrs.items() if k != "layout"}, **kw))
    return {k: v.transpose(2, 0, 1, 3) if k == "Y" else v.transpose(1, 0, 2) for k, v in want.items()}


def _check(op, arrays, attrs, atol=1e-5, **kw):
    """lowbit's interpreter against onnxruntime."""
    want = _reference(op, arrays, attrs, **kw)
    model, feeds = _model(op, arrays, attrs, **kw)
    got = lowbit.interpret(lowbit.load(model), feeds)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=atol, err_msg=k)
    return want


def _attrs(op, direction="forward", layout=0, **kw):
    a = {"hidden_size": kw.pop("hid", 2), "direction": direction, **kw}
    if layout:
        a["layout"] = layout
    return a


# -- every op x direction x layout, with and without initial states ----------------------------------------------
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_and_layouts(op, direction, layout):
    nd = 2 if direction == "bidirectional" else 1
    init = layout == 1 or direction == "reverse"
    arrays = _arrays(op, nd=nd, layout=layout, init=init, seed=layout * 7 + nd)
    _check(op, arrays, _attrs(op, direction, layout))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_runtime_weights_no_bias(op):
    # W, R, B and the initial states graph inputs (as in ONNX's own test cases), B absent
    arrays = _arrays(op, nd=2, bias=False, init=True, seq=2, batch=1, hid=3)
    _check(op, arrays, _attrs(op, "bidirectional", hid=3), runtime=tuple(arrays))


@pytest.mark.parametrize("opset", [7, 22])
def test_opsets(opset):
    for op in ("LSTM", "GRU"):
        arrays = _arrays(op, nd=2, init=True, peep=op == "LSTM")
        if opset < 9:
            with pytest.warns(LowbitWarning, match="upgraded"):
                _check(op, arrays, _attrs(op, "bidirectional"), opset=opset)
        else:
            _check(op, arrays, _attrs(op, "bidirectional"), opset=opset)


# -- attributes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes_and_input_forget(direction):
    nd = 2 if direction == "bidirectional" else 1
    arrays = _arrays("LSTM", nd=nd, init=True, peep=True, seq=4)
    for extra in ({}, {"input_forget": 1}):
        _check("LSTM", arrays, _attrs("LSTM", direction, **extra))
    _check("LSTM", _arrays("LSTM", nd=nd), _attrs("LSTM", direction, input_forget=1))


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_gru_linear_before_reset(lbr, direction):
    nd = 2 if direction == "bidirectional" else 1
    for bias in (True, False):
        arrays = _arrays("GRU", nd=nd, init=True, bias=bias, seq=4, hid=3)
        _check("GRU", arrays, _attrs("GRU", direction, hid=3, linear_before_reset=lbr))


@pytest.mark.parametrize("op,extra", [("RNN", {}), ("GRU", {}), ("GRU", {"linear_before_reset": 1})])
def test_clip(op, extra):
    arrays = _arrays(op, nd=2, init=True, seq=4)
    arrays["X"] *= 4
    _check(op, arrays, _attrs(op, "bidirectional", clip=0.5, **extra))


# every activation of the spec, with its alpha / beta, as RNN's f (forward) and g (reverse)
_ACTS = [("Relu", [], []), ("Tanh", [], []), ("Sigmoid", [], []), ("Affine", [0.7], [-0.2]),
         ("LeakyRelu", [0.3], []), ("LeakyRelu", [], []), ("ThresholdedRelu", [0.4], []),
         ("ScaledTanh", [1.5], [0.6]), ("HardSigmoid", [0.3], [0.4]), ("HardSigmoid", [], []), ("Elu", [0.8], []),
         ("Elu", [], []), ("Softsign", [], []), ("Softplus", [], [])]


@pytest.mark.parametrize("name,alpha,beta", _ACTS, ids=[f"{a[0]}{len(a[1])}" for a in _ACTS])
def test_rnn_activations(name, alpha, beta):
    arrays = _arrays("RNN", nd=2, init=True)
    attrs = _attrs("RNN", "bidirectional", activations=[name, "Tanh"])
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    _check("RNN", arrays, attrs)


def test_lstm_and_gru_activations():
    arrays = _arrays("LSTM", init=True, peep=True)
    attrs = _attrs("LSTM", activations=["HardSigmoid", "LeakyRelu", "Softsign"], activation_alpha=[0.25, 0.2],
                   activation_beta=[0.45])
    _check("LSTM", arrays, attrs)
    arrays = _arrays("GRU", nd=2, init=True)
    attrs = _attrs("GRU", "bidirectional", activations=["Sigmoid", "Relu", "HardSigmoid", "Tanh"])
    _check("GRU", arrays, attrs)


# -- outputs and sequence_lens ------------------------------------------------------------------------------------
@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c")])
def test_partial_outputs(outputs):
    arrays = _arrays("LSTM", nd=2, layout=1, init=True)
    _check("LSTM", arrays, _attrs("LSTM", "bidirectional", 1), outputs=outputs)
    if "Y_c" not in outputs:
        _check("GRU", _arrays("GRU", nd=2, layout=1), _attrs("GRU", "bidirectional", 1), outputs=outputs)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 1), ("bidirectional", 0)])
def test_constant_sequence_lens(op, direction, layout):
    nd = 2 if direction == "bidirectional" else 1
    arrays = _arrays(op, nd=nd, layout=layout, init=True, seq=4, peep=op == "LSTM")
    for lens in ([4, 2], [1, 3], [4, 4]):
        _check(op, arrays, _attrs(op, direction, layout), seq_lens=lens)


# -- refusals -----------------------------------------------------------------------------------------------------
def _refused(model, pattern):
    with pytest.raises(LowbitError, match=pattern):
        lowbit.load(model)


def test_refusals():
    a = _arrays("LSTM")
    _refused(_model("LSTM", a, _attrs("LSTM"), seq_lens=[3, 2], seq_lens_input=True)[0],
             r"LSTM node 'rnn0': input 4 \(sequence_lens\) must be a constant: .* 'sequence_lens' is computed")
    _refused(_model("LSTM", a, _attrs("LSTM"), seq_lens=[3, 0])[0],
             r"sequence_lens\) gives batch entry 1 a length of 0: lowbit takes lengths 1..3")
    _refused(_model("LSTM", a, _attrs("LSTM", clip=1.0))[0], r"attribute 'clip' of LSTM is not supported")
    _refused(_model("GRU", _arrays("GRU"), _attrs("GRU", clip=-1.0))[0], r"attribute 'clip' is -1.0")
    _refused(_model("RNN", _arrays("RNN"), _attrs("RNN", activations=["Gelu"]))[0],
             r"activation 'Gelu' in attribute 'activations' is not supported")
    _refused(_model("RNN", _arrays("RNN"), _attrs("RNN", activations=["Affine"]))[0],
             r"activation Affine \(activation 0\) needs its alpha in attribute 'activation_alpha'")
    # onnxruntime gives LeakyRelu the first value, a reader of one value per activation the second
    _refused(_model("LSTM", a, _attrs("LSTM", activations=["Sigmoid", "LeakyRelu", "Tanh"],
                                      activation_alpha=[0.1, 0.2]))[0],
             r"attribute 'activation_alpha' \[0.1.*, 0.2.*\] is ambiguous")
    _refused(_model("LSTM", a, _attrs("LSTM", activations=["Sigmoid", "Tanh"]))[0],
             r"attribute 'activations' has 2 function\(s\), LSTM with 1 direction\(s\) takes 3")
    _refused(_model("GRU", _arrays("GRU"), _attrs("GRU", hid=3))[0], r"attribute 'hidden_size' is 3, R has shape")
    _refused(_model("RNN", _arrays("RNN", seq=513, batch=1, n_x=1, hid=1), _attrs("RNN", hid=1))[0],
             r"X has a sequence length of 513: lowbit unrolls RNN at import, up to 512 steps")
    _refused(_model("RNN", _arrays("RNN", layout=1), _attrs("RNN", layout=1), opset=13)[0],
             r"attribute 'layout' is not part of RNN before opset 14")


# -- compiled -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_compiled(op, tmp_path):
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    arrays = _arrays(op, nd=2, init=True, peep=op == "LSTM", seq=3)
    m, feeds = _model(op, arrays, _attrs(op, "bidirectional", **extra), seq_lens=[3, 2])
    want = run_ort(m, feeds)
    lowbit.compile(m).save(tmp_path / "rnn.lbit")
    got = lowbit.runtime.load(tmp_path / "rnn.lbit").run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
