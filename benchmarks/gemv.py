"""Low-bit GEMV (batch-1 matmul by a constant weight) at LLM shapes: lowbit W4A8 against onnxruntime's
MatMulNBits and lowbit int8, effective bandwidth against the machine's measured read bandwidth, same process.

    python benchmarks/gemv.py [--shapes 576x1536,1024x2816,4096x11008] [--blocks 32,128] [--threads 2]
                              [--runs 30] [--rounds 10] [--m 1] [--only lowbit_w2_lut,lowbit_int8]
                              [--json out.json]

Per shape K x N (y[m, N] = x[m, K] @ W[K, N]) and block size, one ONNX model of R MatMulNBits nodes (4-bit,
packed zero points, the same random codes for every contestant) reading the same input, R chosen so a call
streams at least 8 MB of 4-bit weights:

- lowbit ``w4a8``: the model through ``--preset int8-dynamic``, i.e. qmatmul_dynamic by the group-wise 4-bit
  codes (u8 activations per row, the VNNI nibble kernel where the CPU has VNNI);
- onnxruntime MatMulNBits, ``accuracy_level`` 0 (f32 activations) and 4 (int8 activations per block);
- lowbit int8: R qmatmul_dynamic by i8 per-column weights of the same shape (the W8A8 form, twice the bytes);
- lowbit ``apot``: the ``shift-add`` form, 4-bit APoT codebook indices with per-group scales (the nibble kernel
  decoding through a ``vpshufb`` table);
- lowbit ``w2_lut``: R qmatmul_dynamic by group-wise 2-bit codes with zero points (u8 range 0:3, as
  ``quantize-weights{bits=2,symmetric=false}`` makes), block ``block``: the T-MAC-style lookup kernel
  (``lut-w2``) where the CPU has AVX-512 BW and VNNI; its time is also given as lowbit int8's time over it.

Weights are cache-cold: before every timed call a read of twice the last-level cache evicts them (this VM
reports a large LLC, so rotating copies alone could not), and the R copies are read once per call. The read
bandwidth is a TVM-built parallel sum over that buffer of 2x the LLC, with the same thread count, in the same run.
Printed per contestant: microseconds per GEMV (median over rounds), effective GB/s (the weight bytes a GEMV
reads — codes, scales, zero points — over its time), the fraction of the read bandwidth, and lowbit's ratio to
onnxruntime's level 4.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[rows, cols] codes 0..15 -> [rows, cols / 2] bytes, the first of each pair in the low nibble (MatMulNBits)."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def nbits_model(k: int, n: int, block: int, copies: int, level: int, m: int, seed: int = 0):
    """(ONNX bytes, weight bytes per GEMV): ``copies`` MatMulNBits nodes (4-bit, packed zero points) on input A."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    inits, nodes, outs = [], [], []
    for i in range(copies):
        q = rng.integers(0, 16, size=(n, nb * block))
        scales = (rng.random((n, nb)) * 0.01 + 0.001).astype(np.float32)
        zp = rng.integers(0, 16, size=(n, -(-nb // 2) * 2))
        inits += [numpy_helper.from_array(_pack_nibbles(q).reshape(n, nb, block // 2), f"B{i}"),
                  numpy_helper.from_array(scales.reshape(-1), f"S{i}"),
                  numpy_helper.from_array(_pack_nibbles(zp).reshape(-1), f"Z{i}")]
        nodes.append(helper.make_node("MatMulNBits", ["A", f"B{i}", f"S{i}", f"Z{i}"], [f"Y{i}"], domain="com.microsoft",
                                      K=k, N=n, bits=4, block_size=block, accuracy_level=level))
        outs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [m, n]))
    graph = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])], outs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    per = n * nb * (block // 2) + n * nb * 4 + n * nb // 2
    return model.SerializeToString(), per


def int8_graph(k: int, n: int, copies: int, m: int, seed: int = 1):
    """R qmatmul_dynamic by i8 per-column weights (the int8-dynamic form) on one input; weight bytes per GEMV."""
    from lowbit.ir import dtypes as dt
    from lowbit.ir.graph import Graph
    from lowbit.ir.types import QuantParams, TensorType

    rng = np.random.default_rng(seed)
    g = Graph("gemv_i8")
    x = g.add_input("A", TensorType((m, k), dt.f32))
    outs = []
    for _ in range(copies):
        sw = tuple(map(float, rng.uniform(0.001, 0.01, n).astype(np.float32)))
        w = g.const(rng.integers(-127, 128, (k, n)).astype(np.int8),
                    type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * n, 1, storage=(-127, 127))))
        outs.append(g.create("qmatmul_dynamic", [x, w], {"per_row": True}).result)
    g.set_outputs(outs, [f"Y{i}" for i in range(copies)])
    return g, k * n + 4 * n


def apot_graph(k: int, n: int, block: int, copies: int, m: int, seed: int = 2):
    """R qmatmul_dynamic by APoT codebook weights (``shift-add``: 4-bit codes, group ``block``); bytes per GEMV."""
    import ml_dtypes

    from lowbit.ir import dtypes as dt
    from lowbit.ir.graph import Graph
    from lowbit.ir.types import QuantParams, TensorType
    from lowbit.quant.codebooks import CODEBOOKS

    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    g = Graph("gemv_apot")
    x = g.add_input("A", TensorType((m, k), dt.f32))
    outs = []
    for _ in range(copies):
        q = QuantParams(tuple(map(float, rng.uniform(0.001, 0.01, nb * n))), (0,) * (nb * n), 1, block,
                        codebook=CODEBOOKS["apot"])
        w = g.const(rng.integers(0, 16, (k, n)).astype(ml_dtypes.uint4), type=TensorType((k, n), dt.u4, q))
        outs.append(g.create("qmatmul_dynamic", [x, w], {"per_row": True}).result)
    g.set_outputs(outs, [f"Y{i}" for i in range(copies)])
    return g, n * nb * (block // 2) + n * nb * 4


def lut_graph(k: int, n: int, block: int, copies: int, m: int, seed: int = 3):
    """R qmatmul_dynamic by group-wise 2-bit codes (u8 range 0:3, zero points), group ``block``; the bytes a GEMV
    reads from the lookup kernel's stream (2 bits per weight; per group and column an f32 scale and a u16)."""
    from lowbit.codegen import lut
    from lowbit.ir import dtypes as dt
    from lowbit.ir.graph import Graph
    from lowbit.ir.types import QuantParams, TensorType

    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    g = Graph("gemv_w2")
    x = g.add_input("A", TensorType((m, k), dt.f32))
    outs = []
    for _ in range(copies):
        q = QuantParams(tuple(map(float, rng.uniform(0.001, 0.01, nb * n))),
                        tuple(map(int, rng.integers(0, 4, nb * n))), 1, block, storage=(0, 3))
        w = g.const(rng.integers(0, 4, (k, n)).astype(np.uint8), type=TensorType((k, n), dt.u8, q))
        outs.append(g.create("qmatmul_dynamic", [x, w], {"per_row": True}).result)
    g.set_outputs(outs, [f"Y{i}" for i in range(copies)])
    nv = -(-n // lut.columns(2))
    return g, nv * nb * (block * 8 + lut.tail_bytes(2))


def read_bandwidth(nbytes: int, threads: int, runs: int = 7) -> tuple[float, object]:
    """(GB/s of a parallel read-only sum over ``nbytes``, a function that streams the buffer once: the flush)."""
    import tvm
    from tvm.script import tirx as T

    from lowbit.codegen import Target

    chunks = 1024
    words = nbytes // 4 // (chunks * 64) * (chunks * 64)

    per = words // chunks // 64  # 64-word (256-byte) steps per chunk, into 4 vector accumulators

    @T.prim_func
    def stream(A: T.Buffer((words,), "int32"), S: T.Buffer((chunks, 16), "int32")):
        T.func_attr({"tirx.noalias": True})
        for c in T.parallel(chunks):
            acc = T.decl_buffer((64,), "int32", scope="local")
            for j in T.vectorized(64):
                acc[j] = 0
            for i in range(per):
                for u in T.unroll(4):
                    acc[T.ramp(u * 16, 1, 16)] = acc[T.ramp(u * 16, 1, 16)] + A.vload(
                        [(c * per + i) * 64 + u * 16], "int32x16")
            for j in T.vectorized(16):
                S[c, j] = acc[j] + acc[16 + j] + acc[32 + j] + acc[48 + j]
    import lowbit.runtime as rt

    rt.set_threads(threads)
    lib = tvm.compile(tvm.IRModule({"stream": stream}), target=Target.parse("cpu").tvm())
    a = tvm.runtime.tensor(np.ones(words, np.int32))
    s = tvm.runtime.tensor(np.zeros((chunks, 16), np.int32))
    f = lib["stream"]
    f(a, s)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f(a, s)
        times.append(time.perf_counter() - t0)
    return words * 4 / statistics.median(times) / 1e9, lambda: f(a, s)


def _lowbit_fn(graph_or_model, pipeline, threads, work):
    import lowbit
    import lowbit.runtime as rt

    art = lowbit.compile(graph_or_model, pipeline=pipeline)
    path = work / f"m{len(list(work.iterdir()))}.lbit"
    art.save(path)
    mod = rt.load(path)
    rt.set_threads(threads)
    kernels = rt.artifact.kernel_summary(mod.manifest)
    return mod, kernels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="576x1536,1024x2816,4096x11008", help="K x N, comma-separated")
    p.add_argument("--blocks", default="32,128")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="timed calls per contestant")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds the runs are spread over")
    p.add_argument("--m", type=int, default=1, help="rows of the input (1: a GEMV)")
    p.add_argument("--only", help="time only these contestants (comma-separated names), e.g. the 2-bit lookup "
                   "kernel against int8 on one thread: --only lowbit_w2_lut,lowbit_int8 --threads 1")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)

    import onnxruntime as ort

    from lowbit.runtime.host import cpu_model_name, host_caches

    llc = host_caches().get("l3", 32 << 20)
    bw, flush = read_bandwidth(2 * llc, a.threads)  # the same stream is the flush before each timed call
    print(f"read bandwidth {bw:.1f} GB/s ({a.threads} threads, {2 * llc >> 20} MB stream); LLC {llc >> 20} MB",
          flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-gemv-"))
    rows = []
    rng = np.random.default_rng(7)
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        copies = max(1, -(-(8 << 20) // (k * n // 2)))
        x = {"A": rng.standard_normal((a.m, k)).astype(np.float32)}
        for block in (int(b) for b in a.blocks.split(",")):
            print(f"[{k}x{n} block {block}] building {copies} copies", file=sys.stderr, flush=True)
            fns, nbytes, kern = {}, {}, {}
            only = set(a.only.split(",")) if a.only else None

            def want(name):
                return only is None or name in only
            m0, per4 = nbits_model(k, n, block, copies, 0, a.m)
            m4, _ = nbits_model(k, n, block, copies, 4, a.m)
            if want("lowbit_w4a8"):
                lb, kern["lowbit_w4a8"] = _lowbit_fn(m0, "int8-dynamic", a.threads, work)
                args = lb._prepare(x)
                fns["lowbit_w4a8"], nbytes["lowbit_w4a8"] = (lambda f=lb._vm["main"], args=args: f(*args)), per4
            for level, model in ((0, m0), (4, m4)):
                if want(f"ort_nbits_l{level}"):
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = a.threads
                    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
                    fns[f"ort_nbits_l{level}"], nbytes[f"ort_nbits_l{level}"] = (lambda s=s: s.run(None, x)), per4
            if want("lowbit_apot"):
                ga, pera = apot_graph(k, n, block, copies, a.m)
                la, kern["lowbit_apot"] = _lowbit_fn(ga, "O0", a.threads, work)
                argsa = la._prepare(x)
                fns["lowbit_apot"], nbytes["lowbit_apot"] = (lambda f=la._vm["main"], args=argsa: f(*args)), pera
            if want("lowbit_w2_lut"):
                g2, per2 = lut_graph(k, n, block, copies, a.m)
                l2, kern["lowbit_w2_lut"] = _lowbit_fn(g2, "O0", a.threads, work)
                args2 = l2._prepare(x)
                fns["lowbit_w2_lut"], nbytes["lowbit_w2_lut"] = (lambda f=l2._vm["main"], args=args2: f(*args)), per2
            if block == int(a.blocks.split(",")[0]) and want("lowbit_int8"):  # int8 once per shape
                g8, per8 = int8_graph(k, n, copies, a.m)
                l8, kern["lowbit_int8"] = _lowbit_fn(g8, "O0", a.threads, work)
                args8 = l8._prepare(x)
                fns["lowbit_int8"], nbytes["lowbit_int8"] = (lambda f=l8._vm["main"], args=args8: f(*args8)), per8
            times = {name: [] for name in fns}
            per_round = max(1, -(-a.runs // a.rounds))
            for _ in range(a.rounds):
                for name, fn in fns.items():
                    time.sleep(0.05)  # the previous contestant's worker threads (onnxruntime's spin) go idle
                    fn()
                    for _ in range(per_round):
                        flush()
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
            for name, t in times.items():
                us = statistics.median(t) / copies * 1e6
                gbs = nbytes[name] / (us * 1e-6) / 1e9
                rows.append({"shape": f"{k}x{n}", "block": block if "int8" not in name else "-", "contestant": name,
                             "us": us, "GB/s": gbs, "of_read_bw": gbs / bw, "copies": copies,
                             "kernels": kern.get(name, "")})
            ref = next((r["us"] for r in rows if r["shape"] == f"{k}x{n}" and r["block"] == block
                        and r["contestant"] == "ort_nbits_l4"), None)
            for r in rows:
                if r["shape"] == f"{k}x{n}" and r["block"] in (block, "-") and "vs_ort_l4" not in r:
                    r["vs_ort_l4"] = r["us"] / ref if ref else float("nan")
            for r in rows[-len(fns):]:
                vs = f", {r['vs_ort_l4']:.2f}x ort level 4" if ref else ""
                print(f"[{k}x{n} block {block}] {r['contestant']}: {r['us']:.1f} us, {r['GB/s']:.1f} GB/s "
                      f"({r['of_read_bw']:.0%} of read bw){vs}", flush=True)
            i8 = next((r for r in rows if r["shape"] == f"{k}x{n}" and r["contestant"] == "lowbit_int8"), None)
            w2 = rows[-len(fns):]
            w2 = next((r for r in w2 if r["contestant"] == "lowbit_w2_lut"), None)
            if i8 and w2:
                w2["int8_over_lut"] = i8["us"] / w2["us"]
                print(f"[{k}x{n} block {block}] lowbit int8 / 2-bit LUT: {w2['int8_over_lut']:.2f}x "
                      f"({i8['us']:.1f} us / {w2['us']:.1f} us; bar 1.5x)", flush=True)
    cols = ["shape", "block", "contestant", "us", "GB/s", "of_read_bw", "vs_ort_l4", "int8_over_lut"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r.get(c, ''):.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                for c in cols) + " |")
    print(f"\nCPU: {cpu_model_name()}; {a.threads} threads; m = {a.m}; read bandwidth {bw:.1f} GB/s; weights "
          f"cache-cold (a {2 * llc >> 20} MB read before every timed call); medians of {a.runs} calls in {a.rounds} "
          "alternating rounds, per GEMV (a call runs R copies)")
    for r in rows:
        if r["kernels"]:
            print(f"  {r['shape']} {r['contestant']}: {r['kernels']}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
