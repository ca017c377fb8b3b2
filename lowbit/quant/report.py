"""Per-layer accuracy of a quantized graph against its float original.

For every integer op (``qconv2d``, ``qmatmul``) of the quantized graph, the float graph's op of the same name
(location) gives the reference: its output, after the ReLU or Clip(0, hi) the quantize pass folds into it. Both graphs run in the
reference interpreter on the same samples (the whole float graph feeds the float layer, the whole quantized
graph the integer one, so errors accumulate as they do in deployment); per layer the report gives the SQNR
(10·log10 of signal power over error power, in dB) and the cosine similarity, over all samples.
"""
from __future__ import annotations

import numpy as np

INTEGER_OPS = ("qconv2d", "qmatmul")


def _run(graph, sample: dict, want: set) -> dict:
    from ..ir.interp import evaluate_op

    env, out = {}, {}
    for v in graph.inputs:
        env[id(v)] = sample[v.name]
    for op in graph.ops:
        for r, a in zip(op.results, evaluate_op(op, [env[id(v)] for v in op.operands])):
            env[id(r)] = a
            if id(r) in want:
                out[id(r)] = a
    return out


def layer_report(float_graph, quant_graph, samples: list[dict], max_samples: int = 4) -> list[dict]:
    """[{name, op, sqnr_db, cosine}] for every integer op that has a float counterpart of the same name."""
    from .scheme import dequantize_array
    from ..passes.quantize import output_point

    by_loc = {}
    for op in float_graph.ops:
        if op.opname in ("conv2d", "gemm", "matmul") and op.loc:
            by_loc.setdefault(op.loc, op)
    pairs = []
    for op in quant_graph.ops:
        if op.opname in INTEGER_OPS and op.loc in by_loc:
            pairs.append((op, output_point(float_graph, by_loc[op.loc])))
    if not pairs:
        return []
    acc = {id(q): [0.0, 0.0, 0.0, 0.0] for q, _ in pairs}  # sum ref^2, sum err^2, dot, sum q^2
    for s in samples[:max_samples]:
        fv = _run(float_graph, s, {id(f) for _, f in pairs})
        qv = _run(quant_graph, s, {id(q.results[0]) for q, _ in pairs})
        for q, f in pairs:
            ref = fv[id(f)].astype(np.float64).ravel()
            got = dequantize_array(qv[id(q.results[0])], q.results[0].type).astype(np.float64).ravel()
            a = acc[id(q)]
            a[0] += float(ref @ ref)
            a[1] += float((ref - got) @ (ref - got))
            a[2] += float(ref @ got)
            a[3] += float(got @ got)
    out = []
    for q, _ in pairs:
        sig, err, dot, qq = acc[id(q)]
        sqnr = float("inf") if err == 0 else 10 * np.log10(max(sig, 1e-30) / err)
        cos = dot / (np.sqrt(sig * qq) or 1.0)
        out.append({"name": q.loc, "op": q.opname, "sqnr_db": round(float(sqnr), 2), "cosine": round(float(cos), 6)})
    return out


def format_report(rows: list[dict]) -> str:
    if not rows:
        return "no quantized layers"
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'layer':<{w}}  {'op':<8} {'SQNR dB':>8} {'cosine':>9}"]
    for r in rows:
        lines.append(f"{r['name']:<{w}}  {r['op']:<8} {r['sqnr_db']:>8.2f} {r['cosine']:>9.6f}")
    return "\n".join(lines)
