"""Autotuning: lowbit's own schedule space searched per kernel, a crash-safe tuning database, a learned cost
model, measurement in this process or on TVM RPC servers.

- ``workload.py``: a model's kernels as tasks, deduplicated by lowbit's canonical workload key.
- ``space.py``: the knobs each kernel family reads and their candidate values.
- ``measure.py``: build a candidate, time it (here; ``rpc.py``: on TVM RPC servers).
- ``model.py``: the XGBoost ranking cost model. ``tuner.py``: the search and the task scheduler.
- ``database.py``: SQLite in WAL mode, one transaction per measured batch.

>>> lowbit.compiler.tune("resnet18.onnx", "r18.db", trials=200)   # doctest: +SKIP
>>> lowbit.compile("resnet18.onnx", tune_db="r18.db")             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json


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


__all__ = ["tuned_config", "MARGIN"]
