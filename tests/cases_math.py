"""One-node ONNX cases of the math ops (issue 14), in test_interp_vs_onnxruntime's CASES format:
(id, op_type, inputs, consts, attrs, opset, n_out). LOOSER: ids whose float results may differ by 1e-4."""
import numpy as np

_r = np.random.default_rng(14)


def _f32(*shape, lo=-2.0, hi=2.0):
    return _r.uniform(lo, hi, shape).astype(np.float32)


def _i64(*v):
    return np.array(v, np.int64)


_X = _f32(2, 3, 4, 5)
_SPECIAL = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -2.5], np.float32)
_I32 = np.array([[-7, 7, -8, 9, 0, 2 ** 31 - 1], [-(2 ** 31), 5, -1, 3, 100, -100]], np.int32)

CASES = [
    (op.lower(), op, {"x": _f32(4, 6, lo=lo, hi=hi)}, {}, {}, 9, 1)
    for op, lo, hi in (("Sinh", -4, 4), ("Cosh", -4, 4), ("Tan", -1.4, 1.4), ("Asin", -1, 1), ("Acos", -1, 1),
                       ("Atan", -6, 6), ("Asinh", -6, 6), ("Acosh", 1, 6), ("Atanh", -0.99, 0.99))
] + [
    ("mod-int-floor", "Mod", {"a": np.array([-7, 7, -7, 7, 0, 5, -5, 100], np.int32),
                              "b": np.array([3, -3, -3, 3, 4, 5, 2, -7], np.int32)}, {}, {}, 13, 1),
    ("mod-int-fmod", "Mod", {"a": _i64(-7, 7, -7, 7, 0, 5, -5, 2 ** 40 + 5),
                             "b": _i64(3, -3, -3, 3, 4, 5, 2, 1024)}, {}, {"fmod": 1}, 13, 1),
    ("mod-int8-bcast", "Mod", {"a": np.arange(-12, 12, dtype=np.int8).reshape(4, 6)},
     {"b": np.array([[5], [-5], [3], [-128]], np.int8)}, {}, 13, 1),
    ("mod-u8", "Mod", {"a": np.arange(0, 256, 11, dtype=np.uint8), "b": np.array([7], np.uint8)}, {}, {}, 13, 1),
    ("mod-float-fmod", "Mod", {"a": _f32(3, 8, lo=-10, hi=10), "b": np.array([1.5, -2.25, 3, -0.7, 4, 5, -6, 0.3],
                                                                              np.float32)}, {}, {"fmod": 1}, 13, 1),
    ("isnan", "IsNaN", {"x": _SPECIAL}, {}, {}, 13, 1),
    ("isinf", "IsInf", {"x": _SPECIAL}, {}, {}, 10, 1),
    ("isinf-positive", "IsInf", {"x": _SPECIAL}, {}, {"detect_negative": 0}, 10, 1),
    ("isinf-negative", "IsInf", {"x": _SPECIAL}, {}, {"detect_positive": 0}, 10, 1),
    ("bitshift-left", "BitShift", {"x": np.array([1, 2, 255, 7, 128, 3, 9, 200], np.uint8),
                                   "y": np.array([0, 1, 1, 7, 1, 8, 10, 255], np.uint8)},
     {}, {"direction": "LEFT"}, 11, 1),
    ("bitshift-right-bcast", "BitShift", {"x": np.arange(0, 256, 8, dtype=np.uint8).reshape(2, 16)},
     {"y": np.array([3], np.uint8)}, {"direction": "RIGHT"}, 11, 1),
    ("castlike-f2i", "CastLike", {"x": np.array([-2.7, -0.5, 0.5, 2.7, 100.2], np.float32)},
     {"t": np.zeros(1, np.int32)}, {}, 15, 1),
    ("castlike-i2f", "CastLike", {"x": _i64(-3, 0, 7), "t": np.zeros((2, 2), np.float32)}, {}, {}, 19, 1),
    ("celu", "Celu", {"x": _f32(30, lo=-5, hi=5)}, {}, {"alpha": 2.0}, 12, 1),
    ("celu-default", "Celu", {"x": _f32(30, lo=-5, hi=5)}, {}, {}, 12, 1),
    ("thresholded-relu", "ThresholdedRelu", {"x": np.concatenate([_f32(20), np.float32([0.5, 1.0])])}, {},
     {"alpha": 0.5}, 10, 1),
    ("thresholded-relu-default", "ThresholdedRelu", {"x": np.float32([-1, 0, 1, 1.5, 2])}, {}, {}, 10, 1),
    ("shrink", "Shrink", {"x": np.concatenate([_f32(20, lo=-3, hi=3), np.float32([-1, 1, 0])])}, {},
     {"lambd": 1.0, "bias": 0.3}, 9, 1),
    ("shrink-default", "Shrink", {"x": _f32(20)}, {}, {}, 9, 1),
    ("softsign", "Softsign", {"x": _f32(30, lo=-9, hi=9)}, {}, {}, 9, 1),
    ("selu", "Selu", {"x": _f32(30, lo=-5, hi=5)}, {}, {}, 9, 1),
    ("selu-attrs", "Selu", {"x": _f32(30, lo=-5, hi=5)}, {}, {"alpha": 2.0, "gamma": 3.0}, 9, 1),
    ("mish", "Mish", {"x": _f32(40, lo=-9, hi=9)}, {}, {}, 18, 1),
]

for op, x in (("ReduceL1", _X), ("ReduceL2", _X), ("ReduceLogSum", np.abs(_X) + 0.1), ("ReduceLogSumExp", 4 * _X),
              ("ReduceSumSquare", _X)):
    n = op[len("Reduce"):].lower()
    CASES += [
        (f"reduce-{n}-13", op, {"x": x}, {}, {"axes": [1, -1], "keepdims": 0}, 13, 1),
        (f"reduce-{n}-all", op, {"x": x}, {}, {}, 13, 1),
        (f"reduce-{n}-18", op, {"x": x}, {"a": _i64(-2)}, {}, 18, 1),
        (f"reduce-{n}-18-all", op, {"x": x}, {}, {"keepdims": 0}, 18, 1),
        (f"reduce-{n}-18-noop", op, {"x": x}, {}, {"noop_with_empty_axes": 1}, 18, 1),
    ]
_INF_ROWS = np.array([[-np.inf, 1, 2], [1000, 1001, 999], [-1000, -1001, -np.inf]], np.float32)  # finite results
CASES += [
    ("reduce-logsumexp-inf", "ReduceLogSumExp", {"x": _INF_ROWS}, {"a": _i64(1)}, {"keepdims": 0}, 18, 1),
    ("reduce-l1-int", "ReduceL1", {"x": _I32 // 4096}, {}, {"axes": [1]}, 13, 1),
    ("reduce-sumsquare-int64", "ReduceSumSquare", {"x": _i64(3, -4, 5, 2 ** 25).reshape(2, 2)},
     {"a": _i64(0)}, {"keepdims": 0}, 18, 1),
    ("argmin", "ArgMin", {"x": _X}, {}, {"axis": -2}, 13, 1),
    ("argmin-last-nokeep", "ArgMin", {"x": np.array([[1, -3, -3], [2, 2, 5]], np.float32)}, {},
     {"axis": 1, "keepdims": 0, "select_last_index": 1}, 13, 1),
    ("argmin-first", "ArgMin", {"x": np.array([[1, -3, -3], [2, 2, 5]], np.float32)}, {}, {"axis": 1}, 11, 1),
    ("argmin-int32", "ArgMin", {"x": _I32}, {}, {"axis": 1, "keepdims": 0}, 13, 1),
    ("argmin-int32-axis0", "ArgMin", {"x": _I32}, {}, {"select_last_index": 1}, 13, 1),
    ("argmin-u8", "ArgMin", {"x": np.array([[0, 255, 3], [255, 254, 0]], np.uint8)}, {}, {"axis": 1}, 13, 1),
    ("hardmax-13", "Hardmax", {"x": _X}, {}, {}, 13, 1),
    ("hardmax-13-axis", "Hardmax", {"x": _X}, {}, {"axis": 1}, 13, 1),
    ("hardmax-11-coerced", "Hardmax", {"x": _f32(2, 3, 4)}, {}, {"axis": 1}, 11, 1),
    ("hardmax-ties", "Hardmax", {"x": np.array([[1, 3, 3], [2, 2, 2]], np.float32)}, {}, {}, 13, 1),
    ("cumsum", "CumSum", {"x": _f32(4, 5)}, {"a": np.int64(0)}, {}, 14, 1),
    ("cumsum-int64-excl-rev", "CumSum", {"x": np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 7},
     {"a": np.int32(-1)}, {"exclusive": 1, "reverse": 1}, 14, 1),
    ("cumsum-int32-rev", "CumSum", {"x": np.arange(12, dtype=np.int32).reshape(3, 4)}, {"a": np.int64(1)},
     {"reverse": 1}, 14, 1),
    ("cumsum-exclusive", "CumSum", {"x": _f32(3, 4)}, {"a": np.array([1], np.int64)}, {"exclusive": 1}, 14, 1),
    ("trilu-upper", "Trilu", {"x": _f32(4, 5)}, {"k": np.int64(1)}, {}, 14, 1),
    ("trilu-lower-neg", "Trilu", {"x": _f32(2, 4, 5)}, {"k": np.int64(-1)}, {"upper": 0}, 14, 1),
    ("trilu-default", "Trilu", {"x": np.arange(20, dtype=np.int64).reshape(5, 4)}, {}, {}, 14, 1),
    ("trilu-lower-big-k", "Trilu", {"x": _f32(3, 4)}, {"k": np.int64(-9)}, {"upper": 0}, 14, 1),
    ("trilu-bool", "Trilu", {"x": np.ones((3, 3), bool)}, {"k": np.int64(0)}, {"upper": 0}, 14, 1),
    ("mvn", "MeanVarianceNormalization", {"x": _X}, {}, {}, 13, 1),
    ("mvn-axes", "MeanVarianceNormalization", {"x": _f32(3, 4, 5)}, {}, {"axes": [-1]}, 13, 1),
    ("instancenorm", "InstanceNormalization", {"x": _X}, {"s": _f32(3), "b": _f32(3)}, {"epsilon": 1e-3}, 9, 1),
    ("instancenorm-3d", "InstanceNormalization", {"x": _f32(2, 4, 7), "s": _f32(4), "b": _f32(4)}, {}, {}, 9, 1),
    ("groupnorm-18", "GroupNormalization", {"x": _f32(2, 6, 3, 4)}, {"s": _f32(3), "b": _f32(3)},
     {"num_groups": 3}, 18, 1),
    ("groupnorm-21", "GroupNormalization", {"x": _f32(2, 6, 3, 4)}, {"s": _f32(6), "b": _f32(6)},
     {"num_groups": 2, "epsilon": 1e-3}, 21, 1),
    ("lpnorm-2", "LpNormalization", {"x": np.concatenate([_f32(3, 5), np.zeros((1, 5), np.float32)])}, {}, {}, 9, 1),
    ("lpnorm-1-axis0", "LpNormalization", {"x": np.concatenate([_f32(3, 5), np.zeros((3, 1), np.float32)], 1)},
     {}, {"p": 1, "axis": 0}, 9, 1),
]

LOOSER = {"sinh", "cosh", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh", "celu", "celu-default",
          "selu", "selu-attrs", "mish", "mvn", "mvn-axes", "instancenorm", "instancenorm-3d", "groupnorm-18",
          "groupnorm-21", "lpnorm-2"} | {c[0] for c in CASES if c[0].startswith(("reduce-log", "reduce-l2"))}

# NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss: targets are graph inputs (run-time values); ignored
# positions hold ignore_index (also out of [0, C): -1, 10)
_T43 = _r.integers(0, 4, (3, 2, 3)).astype(np.int64)
_T43[0, 0, :2] = 2
_T35 = _r.integers(0, 5, (3, 4)).astype(np.int64)
_T35[1, 1:3] = -1
_TIJ = _r.integers(0, 5, (2, 3, 2)).astype(np.int64)
_TIJ[1, 0, :] = 10
_TIJ[0, 2, 1] = 10
CASES += [
    ("nll-none", "NegativeLogLikelihoodLoss", {"x": _f32(4, 5), "t": _i64(0, 4, 2, 2)}, {}, {"reduction": "none"},
     13, 1),
    ("nll-mean-default", "NegativeLogLikelihoodLoss", {"x": _f32(4, 5), "t": _i64(1, 3, 0, 4)}, {}, {}, 12, 1),
    ("nll-sum-weight-ii", "NegativeLogLikelihoodLoss", {"x": _f32(3, 4, 2, 3), "t": _T43},
     {"w": _f32(4, lo=0.1, hi=2)}, {"reduction": "sum", "ignore_index": 2}, 13, 1),
    ("nll-mean-ii-int32", "NegativeLogLikelihoodLoss", {"x": _f32(3, 4, 2, 3), "t": _T43.astype(np.int32)}, {},
     {"ignore_index": 2}, 13, 1),
    ("nll-22-mean-weight-negative-ii", "NegativeLogLikelihoodLoss",
     {"x": _f32(3, 5, 4), "t": _T35, "w": _f32(5, lo=0.1, hi=2)}, {}, {"ignore_index": -1}, 22, 1),
    ("sce-mean", "SoftmaxCrossEntropyLoss", {"x": _f32(4, 6), "t": _i64(5, 0, 3, 3)}, {}, {}, 12, 1),
    ("sce-sum-weight", "SoftmaxCrossEntropyLoss", {"x": _f32(4, 6), "t": _i64(5, 0, 3, 1)},
     {"w": _f32(6, lo=0.1, hi=2)}, {"reduction": "sum"}, 13, 1),
    ("sce-none-log-prob", "SoftmaxCrossEntropyLoss", {"x": _f32(3, 5, 4), "t": _T35}, {},
     {"reduction": "none", "ignore_index": -1}, 13, 2),
    ("sce-mean-weight-high-ii-log-prob", "SoftmaxCrossEntropyLoss", {"x": _f32(2, 5, 3, 2), "t": _TIJ},
     {"w": _f32(5, lo=0.1, hi=2)}, {"ignore_index": 10}, 13, 2),
]

# opset 23
_r23 = np.random.default_rng(23)
CASES += [
    ("rmsnorm-23-last", "RMSNormalization", {"x": _r23.normal(0, 1, (2, 3, 8)).astype(np.float32)},
     {"s": _r23.normal(0, 1, 8).astype(np.float32)}, {"epsilon": 1e-5}, 23, 1),
    ("rmsnorm-23-axis1", "RMSNormalization", {"x": _r23.normal(0, 1, (2, 3, 4)).astype(np.float32)},
     {"s": _r23.normal(0, 1, (3, 4)).astype(np.float32)}, {"axis": 1}, 23, 1),
]

_cs = _r23.uniform(-1, 1, (10, 4)).astype(np.float32)
_sn = _r23.uniform(-1, 1, (10, 4)).astype(np.float32)
CASES += [
    ("rope-23-4d-pos", "RotaryEmbedding", {"x": _r23.normal(0, 1, (2, 3, 5, 8)).astype(np.float32),
                                           "p": np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], np.int64)},
     {"c": _cs, "s": _sn}, {}, 23, 1),
    ("rope-23-3d-interleaved-partial", "RotaryEmbedding",
     {"x": _r23.normal(0, 1, (2, 5, 24)).astype(np.float32), "p": np.array([[9, 8, 7, 6, 5], [0, 2, 4, 6, 8]], np.int64)},
     {"c": _cs, "s": _sn}, {"interleaved": 1, "num_heads": 2, "rotary_embedding_dim": 8}, 23, 1),
    ("rope-23-no-pos", "RotaryEmbedding", {"x": _r23.normal(0, 1, (1, 2, 3, 8)).astype(np.float32)},
     {"c": _r23.uniform(-1, 1, (1, 3, 4)).astype(np.float32), "s": _r23.uniform(-1, 1, (1, 3, 4)).astype(np.float32)},
     {}, 23, 1),
]
