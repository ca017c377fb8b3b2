"""Sparse int8 GEMV: lowbit's ``vnni-sparse`` kernel (masks + packed nonzeros, vpexpandb) against lowbit's dense
int8 kernel, batch 1, weights cache-cold (or warm), effective bandwidth against the read bandwidth of the same run.

    python benchmarks/sparse_gemv.py [--shapes 1024x2816,4096x11008] [--ratios 0.5,0.7,0.9,2:4] [--threads 2]
                                     [--runs 30] [--rounds 10] [--m 1[,2,4]] [--warm] [--int4 GROUP]
                                     [--json out.json]

``--int4 GROUP``: group-wise symmetric int4 weights (codes -8..7, zero points 0, one f32 scale per GROUP k and
column) instead: ``dense`` runs the nibble kernel ``vnni-w4``, the sparse contestants (the same zeros) the sparse
nibble kernel ``vnni-w4-sparse``; the bytes are each kernel's format (``sparse_w4.stored_bytes``).

``--warm``: no eviction, and R chosen so a call's weights total at most the L2 size (each of the 2 cores reads
half of them: cache-resident, as a small model's layers are between two calls) — the case where the kernel is
bound by its decode, not memory: the selection predicate (``ops_sparse.gain_reason``) is checked there too. The
sparse contestants always run the sparse kernel (the predicate is bypassed for them, so its misses show); the
``accepts`` column says whether the predicate would pick it for the contestant's graph (cache-cold: as if the
model were larger than the last-level cache, which the eviction stands for).

    python benchmarks/sparse_gemv.py --warm --shapes 384x384,384x1536,1536x384,576x1536,1024x1024 \
        --ratios 0.35,0.5,0.7,2:4 --m 1,2,4 --runs 40        # L2-resident
    python benchmarks/sparse_gemv.py --warm --shapes 1024x2816,2048x2048 --ratios 0.35,0.5,0.7,2:4 --m 1,2,4
    python benchmarks/sparse_gemv.py --shapes 1024x2816 --ratios 0.3,0.35,0.4,0.5 --m 1,2,4   # the bar's edge
    python benchmarks/sparse_gemv.py --int4 128 --ratios 0.4,0.5,0.6,0.7,0.9,2:4 --m 1,2,4

Per shape K x N, contestants (each R qmatmul_dynamic by i8 per-column [K, N] weights reading one input, R chosen
so a call streams at least 8 MB of its own format):

- ``dense``: random i8 weights without an encoding (the ``vnni-rows`` kernel, as ``benchmarks/gemv.py``'s int8);
- ``sparse r``: the same kind of weights with a fraction r of zeros at random places, typed ``sparse<r>``;
- ``2:4``: two zeros in every 4 consecutive k, typed ``nm<2:4>`` (50 % zero bytes in the format).

The method is ``benchmarks/gemv.py``'s: before every timed call a read of twice the last-level cache evicts the
weights; medians of the timed calls, spread over rounds in which the contestants alternate, in one process.
Printed per contestant: microseconds per GEMV, effective GB/s (the bytes the kernel streams per GEMV — the dense
int8 weight, or the sparse format's nonzeros, masks and starts — over its time), the fraction of the read
bandwidth, and dense time / sparse time (issue 17's bar: 1.3x at 50 % zeros, 1.8x at 70 %).
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from gemv import _lowbit_fn, read_bandwidth  # noqa: E402

STREAM_BYTES = 8 << 20  # at least this much weight per timed call (cache-cold)


def _force_sparse():
    """Make the kernel table take ``vnni-sparse`` for every encoded i8 weight (its predicate's bytes and rows
    limits bypassed), so a contestant measures the kernel, not the predicate's choice."""
    from dataclasses import replace

    from lowbit.codegen import kernels

    table = kernels.TABLE["qmatmul_dynamic"]
    enc = lambda L, op: None if op.operands[1].type.encoding is not None else "no encoding"  # noqa: E731
    for name, kind in (("vnni-sparse", kernels._not_grouped), ("vnni-w4-sparse", kernels._grouped)):
        i = next(i for i, k in enumerate(table) if k.name == name)
        table[i] = replace(table[i], check=kernels._all(kind, kernels.VNNI, kernels.VBMI2, enc))


def _accepts(graph, warm: bool) -> str:
    """What ``ops_sparse.gain_reason`` says of the contestant's graph on this host: "yes" or its reason. Cache-cold
    the host is taken as having no last-level cache: the eviction stands for a model larger than it."""
    from dataclasses import replace

    from lowbit.codegen import Target, ops_sparse

    class L:
        target = Target.parse("cpu") if warm else replace(Target.parse("cpu"), caches={"l3": 0})
    op = next(op for op in graph.ops if op.opname == "qmatmul_dynamic")
    grouped = op.operands[1].type.quant.group is not None
    return (ops_sparse.w4_gain_reason if grouped else ops_sparse.gain_reason)(L, op) or "yes"


def _sparse_weight(k: int, n: int, ratio: str, rng) -> tuple[np.ndarray, object]:
    """(a [K, N] i8 weight, its encoding) for ``ratio`` "0.5" (that fraction of zeros, at random) or "2:4"."""
    from lowbit.ir.types import Encoding

    w = (rng.integers(1, 128, (k, n)) * rng.choice(np.array([-1, 1]), (k, n))).astype(np.int8)
    if ratio == "dense":
        return rng.integers(-127, 128, (k, n)).astype(np.int8), None
    if ":" in ratio:
        nn, mm = (int(v) for v in ratio.split(":"))
        kr = -(-k // mm) * mm
        runs = np.pad(w, ((0, kr - k), (0, 0))).reshape(kr // mm, mm, n)
        drop = np.argsort(rng.random(runs.shape), axis=1)[:, : mm - nn]  # mm - nn random places of every run
        np.put_along_axis(runs, drop, 0, axis=1)
        return runs.reshape(kr, n)[:k], Encoding("nm", (nn, mm))
    r = float(ratio)
    w.reshape(-1)[rng.permutation(k * n)[:int(np.ceil(r * k * n - 1e-9))]] = 0
    return w, Encoding.sparse(r)


def layer_graph(k: int, n: int, ratio: str, m: int, seed: int, budget: int = STREAM_BYTES, group: int = 0):
    """(graph of R qmatmul_dynamic by ``ratio``'s weights on one input, bytes the kernel streams per GEMV, R):
    R copies so a call streams at least ``budget`` bytes (or, with ``budget`` < 0, at most -budget, R >= 1).
    With ``group``: group-wise symmetric int4 weights (codes -8..7, zero points 0) of that group instead."""
    import ml_dtypes

    from lowbit.codegen import sparse, sparse_w4
    from lowbit.ir import dtypes as dt
    from lowbit.ir.graph import Graph
    from lowbit.ir.types import QuantParams, TensorType

    rng = np.random.default_rng(seed)
    kp = (k + 3) // 4 * 4
    g = Graph(f"gemv_{ratio.replace(':', '_').replace('.', '_')}")
    x = g.add_input("A", TensorType((m, k), dt.f32))
    outs, per, copies = [], None, None
    while copies is None or len(outs) < copies:
        w, enc = _sparse_weight(k, n, ratio, rng)
        if group:  # the same zeros, nonzero codes in -8..7
            codes = rng.integers(1, 9, (k, n)) * rng.choice(np.array([-1, 1]), (k, n))
            w = (np.clip(codes, -8, 7) * (w != 0)).astype(np.int8)
            gp = -(-k // group) * group
        if per is None:
            if group:
                per = sparse_w4.stored_bytes(w, gp, group)[enc is None]
            else:  # (+ the f32 scales for dense)
                per = k * n + 4 * n if enc is None else sparse.stored_bytes(w, kp)[0]
            copies = max(1, -(-budget // per) if budget > 0 else -budget // per)
        if group:
            ng = gp // group
            sw = tuple(map(float, rng.uniform(0.001, 0.01, ng * n).astype(np.float32)))
            wc = g.const(w.astype(ml_dtypes.int4),
                         type=TensorType((k, n), dt.i4, QuantParams(sw, (0,) * (ng * n), 1, group), enc))
            outs.append(g.create("qmatmul_dynamic", [x, wc], {"per_row": True}).result)
            continue
        sw = tuple(map(float, rng.uniform(0.001, 0.01, n).astype(np.float32)))
        wc = g.const(w, type=TensorType((k, n), dt.i8, QuantParams(sw, (0,) * n, 1, storage=(-127, 127)), enc))
        outs.append(g.create("qmatmul_dynamic", [x, wc], {"per_row": True}).result)
    g.set_outputs(outs, [f"Y{i}" for i in range(copies)])
    return g, per, copies


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1024x2816,4096x11008", help="K x N, comma-separated")
    p.add_argument("--ratios", default="0.5,0.7,0.9,2:4", help="fractions of zeros, or N:M")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="timed calls per contestant")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds the runs are spread over")
    p.add_argument("--m", default="1", help="rows of the input (1: a GEMV), comma-separated")
    p.add_argument("--int4", type=int, default=0, metavar="GROUP",
                   help="group-wise int4 weights of this group: vnni-w4 against vnni-w4-sparse")
    p.add_argument("--warm", action="store_true", help="no eviction; a call's weights fit in L2 (see above)")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args(argv)

    from lowbit.runtime.host import cpu_model_name, host_caches

    cpu = cpu_model_name()
    print(f"CPU: {cpu}", flush=True)
    caches = host_caches()
    llc = caches.get("l3", 32 << 20)
    budget = -caches.get("l2", 1 << 20) if a.warm else STREAM_BYTES
    _force_sparse()
    bw, flush = read_bandwidth(2 * llc, a.threads)  # the same stream is the flush before each timed call
    print(f"read bandwidth {bw:.1f} GB/s ({a.threads} threads, {2 * llc >> 20} MB stream); LLC {llc >> 20} MB",
          flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-sparse-gemv-"))
    rows = []
    rng = np.random.default_rng(7)
    for shape, m in [(s, int(m)) for s in a.shapes.split(",") for m in a.m.split(",")]:
        k, n = (int(v) for v in shape.lower().split("x"))
        x = {"A": rng.standard_normal((m, k)).astype(np.float32)}
        fns, meta = {}, {}
        for i, ratio in enumerate(["dense"] + a.ratios.split(",")):
            g, per, copies = layer_graph(k, n, ratio, m, seed=11 + i, budget=budget, group=a.int4)
            print(f"[{k}x{n} m={m}] {ratio}: building {copies} copies", file=sys.stderr, flush=True)
            mod, kern = _lowbit_fn(g, "O0", a.threads, work)
            args = mod._prepare(x)
            fns[ratio] = lambda f=mod._vm["main"], args=args: f(*args)
            meta[ratio] = (per, copies, kern, "-" if ratio == "dense" else _accepts(g, a.warm))
        times = {name: [] for name in fns}
        per_round = max(1, -(-a.runs // a.rounds))
        for _ in range(a.rounds):
            for name, fn in fns.items():
                time.sleep(0.05)
                fn()
                for _ in range(per_round):
                    if not a.warm:
                        flush()
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        dense_us = None
        for name, t in times.items():
            per, copies, kern, accepts = meta[name]
            us = statistics.median(t) / copies * 1e6
            dense_us = us if name == "dense" else dense_us
            gbs = per / (us * 1e-6) / 1e9
            r = {"shape": f"{k}x{n}", "m": m, "weight": name, "us": us, "GB/s": gbs, "of_read_bw": gbs / bw,
                 "bytes_per_weight": per / (k * n), "dense_over_this": dense_us / us, "copies": copies,
                 "kernels": kern, "accepts": accepts}
            rows.append(r)
            print(f"[{k}x{n} m={m}] {name}: {us:.1f} us, {gbs:.1f} GB/s ({r['of_read_bw']:.0%} of read bw), "
                  f"{r['bytes_per_weight']:.3f} B/weight, dense / this {r['dense_over_this']:.2f}x; {kern}; "
                  f"predicate: {accepts}",
                  flush=True)
    cols = ["shape", "m", "weight", "us", "GB/s", "of_read_bw", "bytes_per_weight", "dense_over_this", "accepts"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    heat = (f"weights warm (no eviction, at most {-budget >> 10} KB of them per call)" if a.warm else
            f"weights cache-cold (a {2 * llc >> 20} MB read before every timed call)")
    kind = f"int4 group {a.int4}" if a.int4 else "int8"
    print(f"\nCPU: {cpu}; {kind}; {a.threads} threads; m = {a.m}; read bandwidth {bw:.1f} GB/s; {heat}; "
          f"medians of {a.runs} calls in {a.rounds} alternating "
          "rounds, per GEMV (a call runs R copies)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
