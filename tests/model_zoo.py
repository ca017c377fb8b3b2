"""The test zoo: ONNX models built in code with fixed seeds (no model files in git).

Each builder returns ``(model_bytes, inputs)`` where ``inputs`` is a dict of numpy arrays keyed by the
model's input names. Architectures follow the real networks (ResNet-18, MobileNetV2, ...) with random
weights; the weights are scaled so activations stay in a sane range through every layer.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


class Builder:
    def __init__(self, name: str, opset: int, seed: int = 0, ir_version: int = 10):
        self.name, self.opset, self.ir_version = name, opset, ir_version
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def init(self, arr, base="w") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or self.fresh(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name, shape, elem=F):
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value, name, elem=F, shape=None):
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"out_{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, list_inits_as_inputs: bool = False) -> bytes:
        inputs = list(self.inputs)
        if list_inits_as_inputs:  # how pre-IR-4 model-zoo files were written
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        g = helper.make_graph(self.nodes, self.name, inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = self.ir_version
        return m.SerializeToString()

    # -- layers ---------------------------------------------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pad=None, groups=1, bias=True, dilation=1):
        pad = (k // 2) * dilation if pad is None else pad
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k)).astype(np.float32)
        ins = [x, self.init(w, "conv_w")]
        if bias:
            ins.append(self.init(self.rng.normal(0, 0.05, cout).astype(np.float32), "conv_b"))
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         group=groups, dilations=[dilation, dilation])

    def bn(self, x, c):
        r = self.rng
        ins = [x] + [self.init(a.astype(np.float32), "bn") for a in (
            r.uniform(0.5, 1.0, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c))]
        return self.node("BatchNormalization", ins, epsilon=1e-5)

    def gemm(self, x, cin, cout):
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin)).astype(np.float32)
        return self.node("Gemm", [x, self.init(w, "fc_w"), self.init(np.zeros(cout, np.float32) + 0.01, "fc_b")],
                         transB=1)

    def linear(self, x, cin, cout):
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cin, cout)).astype(np.float32)
        y = self.node("MatMul", [x, self.init(w, "lin_w")])
        return self.node("Add", [y, self.init(self.rng.normal(0, 0.02, cout).astype(np.float32), "lin_b")])

    def scalar(self, v, dtype=np.float32):
        return self.init(np.asarray(v, dtype), "c")

    def ints(self, v):
        return self.init(np.asarray(v, np.int64), "i")

    def clip(self, x, lo, hi):
        return self.node("Clip", [x, self.scalar(lo), self.scalar(hi)])


def _image(rng, shape):
    return {"input": rng.normal(0, 1, shape).astype(np.float32)}


def resnet18(size: int = 224):
    b = Builder("resnet18", opset=13)
    x = b.input("input", [1, 3, size, size])
    y = b.node("Relu", [b.bn(b.conv(x, 3, 64, 7, stride=2, bias=False), 64)])
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for blk in range(2):
            s = stride if blk == 0 else 1
            h = b.node("Relu", [b.bn(b.conv(y, cin, cout, 3, stride=s, bias=False), cout)])
            h = b.bn(b.conv(h, cout, cout, 3, bias=False), cout)
            short = y if s == 1 and cin == cout else b.bn(b.conv(y, cin, cout, 1, stride=s, pad=0, bias=False), cout)
            y = b.node("Relu", [b.node("Add", [h, short])])
            cin = cout
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.output(b.gemm(y, 512, 1000), "logits")
    return b.model(), _image(np.random.default_rng(1), (1, 3, size, size))


def mobilenet_v2(size: int = 224):
    b = Builder("mobilenet_v2", opset=13, seed=2)
    x = b.input("input", [1, 3, size, size])
    y = b.clip(b.bn(b.conv(x, 3, 32, 3, stride=2, bias=False), 32), 0.0, 6.0)
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            h = y
            if t != 1:
                h = b.clip(b.bn(b.conv(h, cin, hid, 1, pad=0, bias=False), hid), 0.0, 6.0)
            h = b.clip(b.bn(b.conv(h, hid, hid, 3, stride=stride, groups=hid, bias=False), hid), 0.0, 6.0)
            h = b.bn(b.conv(h, hid, c, 1, pad=0, bias=False), c)
            y = b.node("Add", [y, h]) if stride == 1 and cin == c else h
            cin = c
    y = b.clip(b.bn(b.conv(y, cin, 1280, 1, pad=0, bias=False), 1280), 0.0, 6.0)
    y = b.node("GlobalAveragePool", [y])
    # the Shape -> Gather -> Unsqueeze -> Concat -> Reshape idiom of torch's exporter
    batch = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [y]), b.ints(0)], axis=0), b.ints([0])])
    y = b.node("Reshape", [y, b.node("Concat", [batch, b.ints([-1])], axis=0)])
    b.output(b.gemm(y, 1280, 1000), "logits")
    return b.model(), _image(np.random.default_rng(3), (1, 3, size, size))


def mobilenet_v3_like(size: int = 96):
    """MobileNetV3-style blocks: HardSwish, squeeze-excitation (GlobalAveragePool or ReduceMean) with
    HardSigmoid and Mul; opset 18 (ReduceMean axes as an input)."""
    b = Builder("mobilenet_v3_like", opset=18, seed=4)
    x = b.input("input", [1, 3, size, size])
    y = b.node("HardSwish", [b.bn(b.conv(x, 3, 16, 3, stride=2, bias=False), 16)])
    cin = 16
    for i, (exp, cout, k, stride, se, act) in enumerate(
            ((16, 16, 3, 2, True, "Relu"), (64, 24, 3, 2, False, "Relu"), (72, 24, 3, 1, False, "Relu"),
             (96, 40, 5, 2, True, "HardSwish"), (240, 40, 5, 1, True, "HardSwish"), (120, 48, 5, 1, True, "HardSwish"))):
        h = y
        if exp != cin:
            h = b.node(act, [b.bn(b.conv(h, cin, exp, 1, pad=0, bias=False), exp)])
        h = b.node(act, [b.bn(b.conv(h, exp, exp, k, stride=stride, groups=exp, bias=False), exp)])
        if se:
            squeeze = max(8, exp // 4)
            pooled = (b.node("GlobalAveragePool", [h]) if i % 2 else
                      b.node("ReduceMean", [h, b.ints([2, 3])], keepdims=1))
            s = b.node("Relu", [b.conv(pooled, exp, squeeze, 1, pad=0)])
            s = b.node("HardSigmoid", [b.conv(s, squeeze, exp, 1, pad=0)], alpha=1.0 / 6, beta=0.5)
            h = b.node("Mul", [h, s])
        h = b.bn(b.conv(h, exp, cout, 1, pad=0, bias=False), cout)
        y = b.node("Add", [y, h]) if stride == 1 and cin == cout else h
        cin = cout
    y = b.node("HardSwish", [b.bn(b.conv(y, cin, 288, 1, pad=0, bias=False), 288)])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    y = b.node("HardSwish", [b.gemm(y, 288, 256)])
    b.output(b.gemm(y, 256, 100), "logits")
    return b.model(), _image(np.random.default_rng(5), (1, 3, size, size))


def encoder(seq: int = 128, hidden: int = 64, heads: int = 4, ffn: int = 256, layers: int = 2, vocab: int = 1000):
    """A BERT/ViT-style encoder with symbolic batch and sequence dimensions (bind them at load)."""
    b = Builder("encoder", opset=20, seed=6)
    ids = b.input("input_ids", ["batch_size", "sequence_length"], TensorProto.INT64)
    mask = b.input("attention_mask", ["batch_size", "sequence_length"], TensorProto.INT64)
    r = b.rng
    shape = b.node("Shape", [ids])
    bsz = b.node("Gather", [shape, b.ints(0)], axis=0)
    slen = b.node("Gather", [shape, b.ints(1)], axis=0)
    word = b.node("Gather", [b.init(r.normal(0, 0.5, (vocab, hidden)).astype(np.float32), "word_emb"), ids], axis=0)
    pos_ids = b.node("Range", [b.ints(0), slen, b.ints(1)])
    pos = b.node("Gather", [b.init(r.normal(0, 0.5, (512, hidden)).astype(np.float32), "pos_emb"), pos_ids], axis=0)
    h = b.node("Add", [word, pos])

    def decomposed_ln(x):
        mean = b.node("ReduceMean", [x, b.ints([-1])], keepdims=1)
        d = b.node("Sub", [x, mean])
        var = b.node("ReduceMean", [b.node("Pow", [d, b.scalar(2.0)]), b.ints([-1])], keepdims=1)
        y = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, b.scalar(1e-12)])])])
        y = b.node("Mul", [y, b.init(r.uniform(0.8, 1.2, hidden).astype(np.float32), "ln_g")])
        return b.node("Add", [y, b.init(r.normal(0, 0.1, hidden).astype(np.float32), "ln_b")])

    def ln_op(x):
        return b.node("LayerNormalization", [x, b.init(r.uniform(0.8, 1.2, hidden).astype(np.float32), "ln_g"),
                                             b.init(r.normal(0, 0.1, hidden).astype(np.float32), "ln_b")],
                      axis=-1, epsilon=1e-12)

    h = decomposed_ln(h)
    # additive mask (1 - mask) * -10000, and a boolean mask for Where
    m = b.node("Cast", [b.node("Unsqueeze", [mask, b.ints([1, 2])])], to=F)
    additive = b.node("Mul", [b.node("Sub", [b.scalar(1.0), m]), b.scalar(-10000.0)])
    is_pad = b.node("Equal", [b.node("Unsqueeze", [mask, b.ints([1, 2])]), b.ints(0)])
    full = b.node("Concat", [b.node("Unsqueeze", [bsz, b.ints([0])]), b.ints([heads]),
                             b.node("Unsqueeze", [slen, b.ints([0])]), b.node("Unsqueeze", [slen, b.ints([0])])], axis=0)
    is_pad = b.node("Expand", [is_pad, full])
    dh = hidden // heads
    split_shape = b.node("Concat", [b.node("Unsqueeze", [bsz, b.ints([0])]), b.node("Unsqueeze", [slen, b.ints([0])]),
                                    b.ints([heads, dh])], axis=0)
    merge_shape = b.node("Concat", [b.node("Unsqueeze", [bsz, b.ints([0])]), b.node("Unsqueeze", [slen, b.ints([0])]),
                                    b.ints([hidden])], axis=0)
    for layer in range(layers):
        def heads_of(t, perm):
            return b.node("Transpose", [b.node("Reshape", [t, split_shape])], perm=perm)
        q = heads_of(b.linear(h, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(b.linear(h, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(b.linear(h, hidden, hidden), [0, 2, 1, 3])
        s = b.node("Div", [b.node("MatMul", [q, k]), b.scalar(np.sqrt(dh))])
        s = b.node("Add", [s, additive])
        if layer == 1:
            s = b.node("Where", [is_pad, b.scalar(-1e9), s])
        p = b.node("Softmax", [s], axis=-1)
        ctx = b.node("Reshape", [b.node("Transpose", [b.node("MatMul", [p, v])], perm=[0, 2, 1, 3]), merge_shape])
        h = b.node("Add", [h, b.linear(ctx, hidden, hidden)])
        h = decomposed_ln(h) if layer == 0 else ln_op(h)
        f = b.linear(h, hidden, ffn)
        if layer == 0:  # Gelu in its Erf form, as older exporters write it
            f = b.node("Mul", [b.node("Mul", [f, b.node("Add", [b.node("Erf", [b.node("Div", [f, b.scalar(np.sqrt(2))])]),
                                                                 b.scalar(1.0)])]), b.scalar(0.5)])
        else:
            f = b.node("Gelu", [f])
        h = b.node("Add", [h, b.linear(f, ffn, hidden)])
        h = ln_op(h)
    b.output(h, "last_hidden_state")
    cls = b.node("Squeeze", [b.node("Slice", [h, b.ints([0]), b.ints([1]), b.ints([1])]), b.ints([1])])
    b.output(b.node("Tanh", [b.linear(cls, hidden, hidden)]), "pooled")
    rng = np.random.default_rng(7)
    ids_v = rng.integers(0, vocab, (1, seq)).astype(np.int64)
    mask_v = np.ones((1, seq), np.int64)
    mask_v[0, seq - seq // 4:] = 0
    return b.model(), {"input_ids": ids_v, "attention_mask": mask_v}


def unet(size: int = 64):
    b = Builder("unet", opset=13, seed=8)
    x = b.input("input", [1, 3, size, size])

    def block(t, cin, cout):
        t = b.node("Relu", [b.bn(b.conv(t, cin, cout, 3, bias=False), cout)])
        return b.node("Relu", [b.bn(b.conv(t, cout, cout, 3, bias=False), cout)])

    e1 = block(x, 3, 16)
    e2 = block(b.node("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2]), 16, 32)
    e3 = block(b.node("MaxPool", [e2], kernel_shape=[2, 2], strides=[2, 2]), 32, 64)
    w = b.rng.normal(0, np.sqrt(2.0 / (64 * 4)), (64, 32, 2, 2)).astype(np.float32)
    u2 = b.node("ConvTranspose", [e3, b.init(w, "up_w"), b.init(np.zeros(32, np.float32) + 0.01, "up_b")],
                kernel_shape=[2, 2], strides=[2, 2])
    d2 = block(b.node("Concat", [u2, e2], axis=1), 64, 32)
    empty = b.init(np.zeros(0, np.float32), "roi")
    u1 = b.node("Resize", [d2, empty, b.init(np.array([1, 1, 2, 2], np.float32), "scales")], mode="linear",
                coordinate_transformation_mode="half_pixel")
    d1 = block(b.node("Concat", [b.conv(u1, 32, 16, 1, pad=0), e1], axis=1), 32, 16)
    coarse = b.node("Resize", [e3, empty, b.init(np.array([1, 1, 4, 4], np.float32), "scales")], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    d1 = b.node("Concat", [d1, b.conv(coarse, 64, 8, 1, pad=0)], axis=1)
    wt = b.rng.normal(0, 0.3, (24, 4, 3, 3)).astype(np.float32)  # strided, padded ConvTranspose too
    d1 = b.node("ConvTranspose", [d1, b.init(wt, "ct_w")], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                output_padding=[1, 1])
    d1 = b.node("AveragePool", [d1], kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.node("Sigmoid", [b.conv(d1, 4, 2, 1, pad=0)]), "mask")
    return b.model(), _image(np.random.default_rng(9), (1, 3, size, size))


def legacy_cnn(size: int = 32):
    """Opset 9, IR version 3: initializers listed among the inputs, LRN, Sum, Dropout, Upsample, and a
    Softmax with pre-13 (coerced 2-D) semantics."""
    b = Builder("legacy_cnn", opset=9, seed=10, ir_version=3)
    x = b.input("data", [1, 3, size, size])
    a = b.node("Relu", [b.conv(x, 3, 16, 5, stride=1, pad=2)])
    a = b.node("LRN", [a], size=5, alpha=1e-4, beta=0.75, bias=1.0)
    a = b.node("MaxPool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    c1 = b.node("Relu", [b.conv(a, 16, 16, 3)])
    c2 = b.node("Relu", [b.conv(a, 16, 16, 1, pad=0)])
    s = b.node("Sum", [c1, c2, a])
    s = b.node("Dropout", [s], ratio=0.3)
    up = b.node("Upsample", [s, b.init(np.array([1, 1, 2, 2], np.float32), "up")], mode="nearest")
    sm = b.node("Softmax", [b.conv(up, 16, 4, 3, stride=2)], axis=1)
    f = b.node("Flatten", [sm], axis=1)
    b.output(b.gemm(f, 4 * (size // 2) ** 2, 10), "prob")
    return b.model(list_inits_as_inputs=True), {"data": np.random.default_rng(11).normal(0, 1, (1, 3, size, size))
                                                .astype(np.float32)}


def small_cnn(size: int = 32, seed: int = 12):
    """The float model that quantize_static turns into the zoo's QDQ model."""
    b = Builder("small_cnn", opset=13, seed=seed)
    x = b.input("input", [1, 3, size, size])
    y = b.node("Relu", [b.bn(b.conv(x, 3, 16, 3, stride=2), 16)])
    y = b.node("Relu", [b.conv(y, 16, 32, 3, stride=2)])
    y = b.node("Relu", [b.conv(y, 32, 32, 3, groups=32)])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    b.output(b.gemm(y, 32, 10), "logits")
    return b.model(), _image(np.random.default_rng(seed + 1), (1, 3, size, size))


def qdq_cnn(size: int = 32):
    """small_cnn quantized by onnxruntime's quantize_static: QDQ, per-channel S8 weights, U8 activations."""
    import os
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model, inputs = small_cnn(size)
    rng = np.random.default_rng(13)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        with open(src, "wb") as f:
            f.write(model)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        with open(dst, "rb") as f:
            return f.read(), inputs


ZOO = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2, "mobilenet_v3_like": mobilenet_v3_like,
       "encoder": encoder, "unet": unet, "legacy_cnn": legacy_cnn, "qdq_cnn": qdq_cnn}
# Inputs whose dimensions are symbolic in the model, bound at load.
SHAPES = {"encoder": {"input_ids": (1, 128), "attention_mask": (1, 128)}}
