"""The learned cost model: XGBoost with a pairwise ranking objective, grouped per workload.

It never predicts a latency; it ranks the candidates of one workload. A feature row joins the candidate's
knobs (log2 values, auto flags), the workload (op and kernel family one-hots, log2 of FLOPs, bytes,
arithmetic intensity and of the operand dims) and the target (cores, vector width, VNNI/AMX, caches), so
records of other workloads, other models and other machines of the family teach it (the TenSet idea): the
tuner warm-starts it from the database and retrains it after every measured batch. The label of a record is
log(default latency / latency) within its workload, so every group is on one scale.

>>> m = CostModel(); m.fit(rows, labels, groups); m.predict(rows2)     # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np

from .space import DEFAULTS, KNOBS

OPS = ("conv2d", "qconv2d", "conv2d_bf16", "conv_transpose2d", "matmul", "gemm", "qmatmul", "qmatmul_dynamic",
       "matmul_bf16")
FAMILIES = ("amx", "vnni", "dot4", "depthwise", "nchw", "generic")
_DIMS = 10


def _family(kernel: str) -> str:
    for f in FAMILIES[:-1]:
        if kernel.startswith(f) or f in kernel:
            return f
    return "generic"


def _log2(x) -> float:
    return math.log2(max(float(x), 1e-9) + 1.0)


def workload_features(info: dict, target_info: dict) -> list[float]:
    """The workload's and the target's columns (``info``: the task's info dict; ``target_info``: cores,
    vector_bytes, vnni, amx, l2 bytes)."""
    op, kernel = info.get("op", ""), info.get("kernel", "")
    f = [1.0 if op == o else 0.0 for o in OPS]
    fam = _family(kernel)
    f += [1.0 if fam == x else 0.0 for x in FAMILIES]
    flops, nbytes = info.get("flops", 0.0), info.get("bytes", 1.0)
    f += [_log2(flops), _log2(nbytes), _log2(flops / max(nbytes, 1.0))]
    dims = [d for s in info.get("inputs", [])[:2] for d in s][:_DIMS]
    f += [_log2(d) for d in dims] + [0.0] * (_DIMS - len(dims))
    dtypes = info.get("dtypes", [])
    f += [1.0 if dtypes and dtypes[0] in ("u8", "i8") else 0.0, 1.0 if dtypes and dtypes[0] == "bf16" else 0.0]
    f += [float(target_info.get("cores", 1)), float(target_info.get("vector_bytes", 32)),
          float(target_info.get("vnni", 0)), float(target_info.get("amx", 0)), _log2(target_info.get("l2", 0))]
    return f


def knob_features(knobs: dict) -> list[float]:
    """The candidate's columns: every knob (default where the candidate does not set it) as log2, plus a
    flag per knob for whether the candidate sets it away from the default."""
    full = {**DEFAULTS, **knobs}
    return [_log2(full[k]) for k in KNOBS] + [1.0 if k in knobs and knobs[k] != DEFAULTS[k] else 0.0 for k in KNOBS]


def features(info: dict, target_info: dict, knobs: dict) -> list[float]:
    return workload_features(info, target_info) + knob_features(knobs)


class CostModel:
    """XGBoost ``rank:pairwise``; ``fit`` on rows grouped by workload, ``predict`` scores (higher: faster)."""

    def __init__(self, rounds: int = 120, seed: int = 0):
        self.rounds, self.seed = rounds, seed
        self.booster = None

    @property
    def trained(self) -> bool:
        return self.booster is not None

    def fit(self, rows: list, labels: list, groups: list) -> "CostModel":
        """``groups``: one group id per row (rows of one id are one workload on one target)."""
        import xgboost as xgb

        order = sorted(range(len(rows)), key=lambda i: groups[i])
        x = np.asarray([rows[i] for i in order], dtype=np.float32)
        y = np.asarray([labels[i] for i in order], dtype=np.float32)
        g = [groups[i] for i in order]
        sizes, last = [], object()
        for gid in g:
            if gid != last:
                sizes.append(0)
                last = gid
            sizes[-1] += 1
        if len(rows) < 2 or max(sizes) < 2:
            self.booster = None
            return self
        d = xgb.DMatrix(x, label=y)
        d.set_group(sizes)
        params = {"objective": "rank:pairwise", "eta": 0.2, "max_depth": 6, "min_child_weight": 1,
                  "subsample": 0.9, "colsample_bytree": 0.9, "seed": self.seed, "nthread": 1, "verbosity": 0}
        self.booster = xgb.train(params, d, num_boost_round=self.rounds)
        return self

    def predict(self, rows: list) -> np.ndarray:
        import xgboost as xgb

        if self.booster is None:
            return np.zeros(len(rows))
        return self.booster.predict(xgb.DMatrix(np.asarray(rows, dtype=np.float32)))

    def save(self, path) -> None:
        self.booster.save_model(str(path))

    @staticmethod
    def load(path) -> "CostModel":
        import xgboost as xgb

        m = CostModel()
        m.booster = xgb.Booster()
        m.booster.load_model(str(path))
        return m


def spearman(a, b) -> float:
    """Spearman's rank correlation of two sequences (ties get average ranks)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average ranks over ties
            m = x == v
            r[m] = r[m].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


__all__ = ["CostModel", "features", "workload_features", "knob_features", "spearman"]
