"""One-node ONNX cases of the tensor ops (issue 14), in test_interp_vs_onnxruntime's CASES format:
(id, op_type, inputs, consts, attrs, opset, n_out). LOOSER: ids whose float results may differ by 1e-4."""
import numpy as np

_r = np.random.default_rng(1414)


def _f32(*shape, lo=-2.0, hi=2.0):
    return _r.uniform(lo, hi, shape).astype(np.float32)


def _ties(*shape):
    """Small integers as f32: many equal values (ties for TopK and MaxPool's Indices)."""
    return _r.integers(-3, 4, shape).astype(np.float32)


def _i64(*v):
    return np.array(v, np.int64)


_SEQ = _f32(2, 4, 11)
_IMG = _ties(1, 3, 7, 8)

CASES = [
    # 1-D convolution and pooling: the 2-D ops over a unit height
    ("conv1d", "Conv", {"x": _SEQ}, {"w": _f32(6, 4, 3), "b": _f32(6)}, {"pads": [1, 2], "strides": [2]}, 17, 1),
    ("conv1d-dilated-grouped", "Conv", {"x": _SEQ}, {"w": _f32(4, 2, 3)}, {"dilations": [2], "group": 2}, 17, 1),
    ("conv1d-same-lower", "Conv", {"x": _SEQ}, {"w": _f32(3, 4, 4)}, {"auto_pad": "SAME_LOWER", "strides": [2]}, 17, 1),
    ("convT1d", "ConvTranspose", {"x": _SEQ}, {"w": _f32(4, 3, 3), "b": _f32(3)},
     {"strides": [2], "pads": [1, 0], "output_padding": [1]}, 17, 1),
    ("maxpool1d-ceil-dil", "MaxPool", {"x": _SEQ}, {}, {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                                                       "dilations": [2], "ceil_mode": 1}, 17, 1),
    ("avgpool1d-exclude", "AveragePool", {"x": _SEQ}, {}, {"kernel_shape": [3], "pads": [1, 1], "strides": [2]}, 17, 1),
    ("avgpool1d-include-same", "AveragePool", {"x": _SEQ}, {}, {"kernel_shape": [4], "auto_pad": "SAME_UPPER",
                                                                "count_include_pad": 1}, 17, 1),
    # MaxPool's Indices (ties: the first in window order)
    ("maxpool-indices", "MaxPool", {"x": _IMG}, {}, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]},
     12, 2),
    ("maxpool-indices-colmajor-ceil", "MaxPool", {"x": _IMG}, {}, {"kernel_shape": [2, 3], "strides": [2, 2],
                                                                   "ceil_mode": 1, "storage_order": 1}, 12, 2),
    ("maxpool-indices-dilated", "MaxPool", {"x": _IMG}, {}, {"kernel_shape": [2, 2], "dilations": [2, 1]}, 12, 2),
    ("maxpool1d-indices", "MaxPool", {"x": _ties(2, 3, 9)}, {}, {"kernel_shape": [3], "pads": [1, 1]}, 12, 2),
    # TopK: ties resolved lower index first
    ("topk-largest-ties", "TopK", {"x": _ties(3, 7)}, {"k": _i64(4)}, {}, 11, 2),
    ("topk-smallest-axis0", "TopK", {"x": _r.integers(-2, 3, (6, 4)).astype(np.int64)}, {"k": _i64(3)},
     {"axis": 0, "largest": 0}, 11, 2),
    ("topk-negative-axis-3d", "TopK", {"x": _ties(2, 5, 3)}, {"k": _i64(2)}, {"axis": -2}, 11, 2),
    ("topk-9", "TopK", {"x": _f32(4, 6)}, {}, {"k": 3}, 9, 2),
    # Einsum as transposes, reshapes, strided slices (diagonals), reduce_sum and matmul
    ("einsum-matmul", "Einsum", {"a": _f32(3, 4), "b": _f32(4, 5)}, {}, {"equation": "ij,jk->ik"}, 12, 1),
    ("einsum-batch-transposed", "Einsum", {"a": _f32(2, 3, 4), "b": _f32(2, 5, 4)}, {}, {"equation": "bij,bkj->bki"},
     12, 1),
    ("einsum-implicit", "Einsum", {"a": _f32(3, 4), "b": _f32(4, 2)}, {}, {"equation": "ij,jk"}, 12, 1),
    ("einsum-diagonal", "Einsum", {"a": _f32(2, 4, 4)}, {}, {"equation": "bii->bi"}, 12, 1),
    ("einsum-trace", "Einsum", {"a": _f32(5, 5)}, {}, {"equation": "ii"}, 12, 1),
    ("einsum-sum-transpose", "Einsum", {"a": _f32(2, 3, 4)}, {}, {"equation": "ijk->kj"}, 12, 1),
    ("einsum-outer", "Einsum", {"a": _f32(3), "b": _f32(4)}, {}, {"equation": "i,j->ij"}, 12, 1),
    ("einsum-inner", "Einsum", {"a": _f32(6), "b": _f32(6)}, {}, {"equation": "i,i"}, 12, 1),
    ("einsum-ellipsis-broadcast", "Einsum", {"a": _f32(2, 1, 3, 4), "b": _f32(1, 3, 4, 5)}, {},
     {"equation": "...ij,...jk->...ik"}, 12, 1),
    ("einsum-three", "Einsum", {"a": _f32(2, 3), "b": _f32(3, 4), "c": _f32(4, 2)}, {}, {"equation": "ab,bc,cd->da"},
     12, 1),
    ("einsum-int", "Einsum", {"a": _r.integers(-5, 5, (2, 3)).astype(np.int64),
                              "b": _r.integers(-5, 5, (3, 3)).astype(np.int64)}, {}, {"equation": "ij,jk->ki"}, 12, 1),
    # GatherND
    ("gathernd-negative", "GatherND", {"x": _f32(3, 4, 2)}, {"i": np.array([[0, -1], [2, 1], [-3, 0]], np.int64)},
     {}, 13, 1),
    ("gathernd-batch-dims", "GatherND", {"x": _f32(2, 3, 4), "i": np.array([[[1], [-1]], [[0], [2]]], np.int64)}, {},
     {"batch_dims": 1}, 13, 1),
    ("gathernd-elements", "GatherND", {"x": _r.integers(0, 9, (3, 4)).astype(np.int32)},
     {"i": np.array([[[0, 3], [2, -4]], [[1, 1], [-1, -1]]], np.int64)}, {}, 13, 1),
    # ScatterND
    ("scatternd", "ScatterND", {"x": _f32(4, 3)}, {"i": np.array([[1], [-1]], np.int64), "u": _f32(2, 3)}, {}, 13, 1),
    ("scatternd-add-duplicates", "ScatterND", {"x": _f32(4, 3), "i": np.array([[[0, 1]], [[0, 1]], [[3, -1]]],
                                                                               np.int64), "u": _f32(3, 1)}, {},
     {"reduction": "add"}, 16, 1),
    ("scatternd-mul", "ScatterND", {"x": _f32(2, 3, 4)}, {"i": np.array([[1, 0], [1, 0], [0, 2]], np.int64),
                                                          "u": _f32(3, 4)}, {"reduction": "mul"}, 16, 1),
    ("scatternd-max", "ScatterND", {"x": _f32(5, 2)}, {"i": np.array([[4], [0], [4]], np.int64), "u": _f32(3, 2)},
     {"reduction": "max"}, 18, 1),
    ("scatternd-min-int", "ScatterND", {"x": _i64(5, -1, 3, 0), "i": np.array([[0], [0], [-2]], np.int64),
                                         "u": _i64(2, 2, -4)}, {}, {"reduction": "min"}, 18, 1),
    # ScatterElements (and the old Scatter)
    ("scatterelements-negative", "ScatterElements", {"x": _f32(3, 4)},
     {"i": np.array([[-1, 0, 2], [1, 3, -4]], np.int64), "u": _f32(2, 3)}, {"axis": -1}, 13, 1),
    ("scatterelements-add-duplicates", "ScatterElements", {"x": _f32(3, 4), "i": np.array([[0, 1, 2, 0], [0, 1, 2, 0],
                                                                                           [2, -2, 0, 0]], np.int64),
                                                           "u": _f32(3, 4)}, {}, {"reduction": "add"}, 16, 1),
    ("scatterelements-mul-3d", "ScatterElements", {"x": _f32(2, 3, 4)}, {"i": np.array([[[0, 2, 1], [2, 2, 0]]],
                                                                                       np.int64), "u": _f32(1, 2, 3)},
     {"axis": 1, "reduction": "mul"}, 16, 1),
    ("scatterelements-max", "ScatterElements", {"x": _f32(3, 3)},
     {"i": np.array([[1, 1, 0], [1, 2, 0]], np.int64), "u": _f32(2, 3)}, {"reduction": "max"}, 18, 1),
    ("scatterelements-min-int", "ScatterElements", {"x": _r.integers(-5, 5, (2, 4)).astype(np.int32),
                                                    "i": np.array([[3, 3], [0, -1]], np.int64),
                                                    "u": _r.integers(-5, 5, (2, 2)).astype(np.int32)}, {},
     {"axis": 1, "reduction": "min"}, 18, 1),
    ("scatter-9", "Scatter", {"x": _f32(3, 3)}, {"i": np.array([[2, 0]], np.int64), "u": _f32(1, 2)}, {"axis": 1}, 9, 1),
    # compositions: OneHot, DepthToSpace, SpaceToDepth, EyeLike, ReverseSequence
    ("onehot", "OneHot", {"i": np.array([[0, -1, 3], [5, -6, 2]], np.int64)},
     {"d": np.array(5, np.int64), "v": np.array([-1.5, 2.0], np.float32)}, {"axis": 1}, 11, 1),
    ("onehot-float-indices", "OneHot", {"i": np.array([1.0, -2.0, 0.0, 4.0], np.float32)},
     {"d": np.array([4.0], np.float32), "v": np.array([0.0, 1.0], np.float32)}, {}, 11, 1),
    ("depthtospace-dcr", "DepthToSpace", {"x": _f32(1, 8, 2, 3)}, {}, {"blocksize": 2}, 13, 1),
    ("depthtospace-crd", "DepthToSpace", {"x": _f32(2, 8, 2, 3)}, {}, {"blocksize": 2, "mode": "CRD"}, 13, 1),
    ("spacetodepth", "SpaceToDepth", {"x": _f32(2, 3, 4, 6)}, {}, {"blocksize": 2}, 13, 1),
    ("eyelike-k", "EyeLike", {"x": _f32(3, 5)}, {}, {"k": 1}, 9, 1),
    ("eyelike-dtype-negative-k", "EyeLike", {"x": _f32(4, 3)}, {}, {"k": -2, "dtype": 7}, 9, 1),
    ("reversesequence-time", "ReverseSequence", {"x": _f32(4, 3, 2)}, {"l": _i64(4, 1, 3)}, {}, 10, 1),
    ("reversesequence-batch-runtime", "ReverseSequence", {"x": _f32(3, 4, 2), "l": _i64(2, 4, 1)}, {},
     {"batch_axis": 0, "time_axis": 1}, 10, 1),
    # LayerNormalization's Mean and InvStdDev
    ("layernorm-stats", "LayerNormalization", {"x": _f32(2, 5, 8)}, {"s": _f32(8), "b": _f32(8)}, {}, 17, 3),
    ("layernorm-stats-axis1", "LayerNormalization", {"x": _f32(2, 5, 8)}, {"s": _f32(5, 8)}, {"axis": 1}, 17, 3),
]
LOOSER = {"layernorm-stats", "layernorm-stats-axis1"}

# a zero-size part (TVM's split takes only increasing indices: lowbit slices instead)
CASES.append(("split-13-zero-size", "Split", {"x": np.random.default_rng(3).uniform(-2, 2, (2, 7)).astype(np.float32)},
              {"s": np.array([3, 0, 4], np.int64)}, {"axis": 1}, 13, 3))
