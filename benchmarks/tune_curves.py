"""The cost model's worth: best latency against trials for random search, XGBoost cold and XGBoost warm-started
from the other models' records only (leave one model out), on the largest kernels of each model.

    python benchmarks/tune_curves.py [--models resnet18,mobilenet_v2,minilm] [--kernels 3] [--random 256]
        [--cold 64] [--warm 32] [--out DIR]

Per model, the ``--kernels`` kernels with the most FLOPs (times the ops sharing them) whose space holds at
least 1000 candidates are tuned alone: ``--random`` trials of random search, ``--cold`` of XGBoost with an
empty database, then ``--warm`` of XGBoost whose database holds only the other models' random-search records.
Each run's curve is the speedup of its best over its own default (timings are paired with the default, and
the default's absolute time moves between runs on a shared machine). Printed per kernel: the space size,
random's best-of-N speedup, the trials XGBoost cold and warm needed to come within 2 % of it (timing noise on
a shared machine is of that order), and the Spearman correlation of a cost model
trained on the other models' records with this kernel's measured speed. DIR/curves.json has every curve,
DIR/curves.png draws them. Every candidate's timing is ``lowbit tune``'s (``LocalRunner``).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import pathlib
import statistics
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

WITHIN = 1.02


def _tasks(name, k):
    import lowbit
    from lowbit.autotune.space import Space
    from lowbit.autotune.workload import extract
    from lowbit.codegen import Target
    from zoo import registry

    bm = registry()[name]()
    g = lowbit.run_passes(lowbit.load(bm.onnx, shapes=bm.shapes(1)), "O2")
    tasks = [t for t in extract(g, Target.parse("auto")) if len(Space.for_task(t.op, t.kernel)) >= 1000]
    return sorted(tasks, key=lambda t: -t.flops * len(t.names))[:k]


def _run(task, db_path, search, trials, seed, batch=8):
    from lowbit.autotune.database import Database
    from lowbit.autotune.tuner import Tuner
    from lowbit.codegen import Target

    with Database(db_path) as db:
        t = Tuner([task], Target.parse("auto"), db, trials=trials, search=search, batch=batch, seed=seed,
                  stream=io.StringIO(), confirm=False)
        t.run()
        s = t.states[0]
    # speedup of the best over this run's own default after each batch, by trials done: each run's timings are
    # anchored on its default (paired measurement), and that anchor moves between runs on a shared machine
    return [(n, s.default_us / (lat / len(task.names))) for _, n, lat in t.curve], s


def _first_within(curve, target):
    return next((n for n, speedup in curve if speedup * WITHIN >= target), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,minilm")
    p.add_argument("--kernels", type=int, default=3)
    p.add_argument("--random", type=int, default=256)
    p.add_argument("--cold", type=int, default=64)
    p.add_argument("--warm", type=int, default=32)
    p.add_argument("--out", default="curves")
    a = p.parse_args(argv)
    from lowbit.autotune.database import Database
    from lowbit.autotune.model import CostModel, features, spearman
    from lowbit.autotune.space import Space
    from lowbit.autotune.tuner import describe, target_keys
    from lowbit.codegen import Target
    from lowbit.runtime.host import cpu_model_name, host_mcpu

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="lowbit-curves-"))
    models = a.models.split(",")
    tasks = {m: _tasks(m, a.kernels) for m in models}
    rows, keys, curves = [], [], {}
    # 1. random search everywhere: the reference best, and the records the warm runs start from
    for m in models:
        for i, t in enumerate(tasks[m]):
            curve, _ = _run(t, work / f"random-{m}.db", "random", a.random, seed=i)
            curves[(m, i, "random")] = curve
            print(f"[{m}] {describe(t)}: random best {curve[-1][1]:.3f}x its default after {curve[-1][0]}", flush=True)
    tinfo = target_keys(Target.parse("auto"))[2]
    for m in models:
        others = [o for o in models if o != m]
        # the cost model of the other models' records, for Spearman on this model's
        rows_x, labels, groups = [], [], []
        for o in others:
            with Database(work / f"random-{o}.db", create=False) as db:
                infos = db.workloads()
                recs = db.records()
                defaults = {r.workload: r.latency_us for r in recs if r.knobs == "{}"}
                for r in recs:
                    if r.workload in defaults:
                        rows_x.append(features(infos[r.workload], tinfo, json.loads(r.knobs)))
                        labels.append(math.log(defaults[r.workload] / r.latency_us))
                        groups.append(r.workload)
        model = CostModel().fit(rows_x, labels, groups)
        with Database(work / f"random-{m}.db", create=False) as db:
            infos, recs = db.workloads(), db.records()
        for i, t in enumerate(tasks[m]):
            mine = [r for r in recs if r.workload == t.key]
            rho = spearman(model.predict([features(infos[t.key], tinfo, json.loads(r.knobs)) for r in mine]),
                           [-r.latency_us for r in mine])
            ref = max(b for _, b in curves[(m, i, "random")])
            cold, _ = _run(t, work / f"cold-{m}-{i}.db", "xgb", a.cold, seed=100 + i)
            warm_db = work / f"warm-{m}-{i}.db"
            with Database(warm_db) as db:  # the other models' records only
                for o in others:
                    path = work / f"random-{o}.jsonl"
                    with Database(work / f"random-{o}.db", create=False) as src:
                        src.export_jsonl(path)
                    db.import_jsonl(path)
            warm, _ = _run(t, warm_db, "xgb", a.warm, seed=200 + i)
            curves[(m, i, "cold")], curves[(m, i, "warm")] = cold, warm
            row = {"model": m, "kernel": describe(t), "space": len(Space.for_task(t.op, t.kernel)),
                   "random_best_x": round(ref, 3), "random_trials": curves[(m, i, "random")][-1][0],
                   "cold_trials_to_random_best": _first_within(cold, ref), "cold_best_x": round(cold[-1][1], 3),
                   "warm_trials_to_random_best": _first_within(warm, ref), "warm_best_x": round(warm[-1][1], 3),
                   "spearman_leave_model_out": round(rho, 3)}
            rows.append(row)
            keys.append((m, i))
            print(json.dumps(row), flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")

    def med(key):
        vals = [r[key] if r[key] is not None else math.inf for r in rows]
        return statistics.median(vals)
    print(f"\nmedian trials to random's best-of-{a.random} (within {WITHIN - 1:.0%}; inf = not reached): "
          f"cold {med('cold_trials_to_random_best')} (bar <= 64), warm {med('warm_trials_to_random_best')} "
          f"(bar <= 32); median Spearman {med('spearman_leave_model_out')} (bar >= 0.6)")
    print(f"CPU: {cpu_model_name()} (LLVM mcpu {host_mcpu()})")
    (out / "curves.json").write_text(json.dumps({"rows": rows, "curves": {"/".join(map(str, k)): v
                                                                           for k, v in curves.items()}}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3), squeeze=False)
        for ax, r, (m, i) in zip(axes[0], rows, keys):
            for kind in ("random", "cold", "warm"):
                c = curves[(m, i, kind)]
                ax.plot([n for n, _ in c], [b for _, b in c], label=kind)
            ax.set_title(f"{m}\n{r['kernel'][:28]}", fontsize=7)
            ax.set_xlabel("trials")
        axes[0][0].set_ylabel("best / default speed")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=110)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
