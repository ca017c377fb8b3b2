"""Autotuning: lowbit's own schedule space searched per kernel, a crash-safe tuning database, a learned cost
model, measurement in this process or on TVM RPC servers.

- ``workload.py``: a model's kernels as tasks, deduplicated by lowbit's canonical workload key.
- ``space.py``: the knobs each kernel family reads and their candidate values.
- ``measure.py``: build a candidate, time it (here; ``rpc.py``: on TVM RPC servers).
- ``model.py``: the XGBoost ranking cost model. ``tuner.py``: the search and the task scheduler.
- ``database.py``: SQLite in WAL mode, one transaction per measured batch.

>>> tune("resnet18.onnx", "r18.db", trials=200)                   # doctest: +SKIP
>>> lowbit.compile("resnet18.onnx", tune_db="r18.db")             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json


def tune(model, db_path, *, target="auto", pipeline="O2", shapes=None, calibration=None, trials: int = 0,
         time_budget: float = 0.0, search: str = "xgb", batch: int = 8, rpc: str | None = None, seed: int = 0,
         stream=None, progress=None):
    """Tune ``model``'s kernels for ``target`` into the database at ``db_path`` (created if missing; resumed
    if it holds records for this target). ``rpc`` = ``"HOST:PORT:KEY"`` measures on TVM RPC servers
    registered with that tracker. Returns the tuner (its ``states`` hold per-kernel results)."""
    from ..codegen import Target
    from ..compiler import bf16_policy, integer_policy, prepare
    from ..errors import LowbitError
    from ..passes import parse_pipeline
    from .database import Database
    from .tuner import Tuner
    from .workload import extract

    tgt = Target.parse(target)
    if not trials and not time_budget:
        raise LowbitError("give --trials or --time-budget (or both): tuning needs a limit")
    passes, _ = integer_policy(tgt, parse_pipeline(pipeline))
    passes, _ = bf16_policy(tgt, passes)
    runner = None
    if rpc:
        from .rpc import RPCMeasurer

        host, _, rest = rpc.rpartition(":")
        if not host or ":" not in host:
            raise LowbitError(f"--rpc wants HOST:PORT:KEY, got '{rpc}'")
        runner = RPCMeasurer(host, rest)
    p = prepare(model, passes, shapes=shapes, calibration=calibration, progress=progress)
    tasks = extract(p.graph, tgt)
    name = p.source.name if hasattr(p.source, "name") else ""
    with Database(db_path) as db:
        tuner = Tuner(tasks, tgt, db, trials=trials, time_budget=time_budget, search=search, batch=batch,
                      runner=runner, seed=seed, model_name=str(model) if isinstance(model, str) else name,
                      stream=stream)
        tuner.run()
    return tuner


# a tuned kernel is used only when it measured at least this much faster than its default (timing noise)
MARGIN = 0.97


def tuned_config(graph, target, config, db_path) -> tuple:
    """(config with the database's best knobs set per kernel, {op name: {"knobs", "speedup", "match"}}):
    each kernel of ``graph`` takes its best record for this target (else its feature family) and these
    versions when that beat the default by at least 3 % — and, where the tuner re-timed it against the default
    at the end (``Tuner.confirm``), held that up — else keeps the default. Per-kernel settings already in
    ``config`` win."""
    from ..codegen import CodegenConfig
    from .database import Database
    from .tuner import CONFIRMED, target_keys, versions
    from .workload import extract

    config = CodegenConfig.parse(config)
    exact, family, _ = target_keys(target)
    ver = versions()
    taken = {k for k, _ in config.kernels}
    extra, notes = [], {}
    with Database(db_path, create=False, readonly=True) as db:
        infos = db.workloads()
        for task in extract(graph, target, config):
            best, default, how = db.best(task.key, exact, family, ver)
            if best is None or default is None or best.knobs == "{}":
                continue
            if best.latency_us >= MARGIN * default.latency_us:
                continue
            seen = infos.get(task.key, {}).get(CONFIRMED + exact)
            if how == "exact" and seen is not None and (seen["knobs"] != best.knobs or seen["speedup"] * MARGIN < 1):
                continue  # re-timed against the default at the end of tuning, it did not hold up
            knobs = json.loads(best.knobs)
            for name in task.names:
                if name in taken:
                    continue
                extra.append((name, tuple(sorted(knobs.items()))))
                notes[name] = {"knobs": best.knobs, "speedup": round(default.latency_us / best.latency_us, 3),
                               "match": how, "default_us": round(default.latency_us, 2),
                               "tuned_us": round(best.latency_us, 2)}
    return dataclasses.replace(config, kernels=config.kernels + tuple(extra)), notes


__all__ = ["tune", "tuned_config", "MARGIN"]
