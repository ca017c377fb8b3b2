"""One-node ONNX cases of the tensor ops (issue 14), in test_interp_vs_onnxruntime's CASES format:
(id, op_type, inputs, consts, attrs, opset, n_out). LOOSER: ids whose float results may differ by 1e-4."""
CASES = []
LOOSER = set()
