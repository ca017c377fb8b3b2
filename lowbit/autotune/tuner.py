"""Tuning jobs: a model's kernels searched over lowbit's knobs, time shared by expected gain, every measured
batch committed to the database before it is reported.

Per task (one workload) the hand-rule default is measured first; then batches of candidates are proposed,
either at random or by the cost model (XGBoost ranking, warm-started from the database's records of other
workloads of this target family and retrained after every batch), over a pool of random candidates and
mutations of the best ones, with a share of random picks kept for exploration. Candidates that schedule to
code already measured take its timing without running. A resumed job skips every candidate the database
holds for this target and these versions. Which task gets the next batch follows the gradient idea of TVM's
task scheduler: the one whose model-weighted time (latency x the ops that share it) fell most over its last
batches, every task getting its default and a first batch before that.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import LowbitError
from .database import Database, Record, canonical_json
from .measure import LocalRunner, build_candidate, export
from .model import CostModel, features
from .space import Space, canonical
from .workload import KERNEL, Task


CONFIRMED = "confirmed "  # + exact target text: a workload info key holding the re-timed best of that target


def versions() -> str:
    import tvm
    import tvm_ffi

    from .. import __version__

    return canonical_json({"lowbit": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__})


def target_keys(target) -> tuple[str, str, dict]:
    """(exact target text, feature family text, the cost model's target columns) of a lowbit Target."""
    feats = sorted(getattr(target, "features", ()))
    caches = dict(getattr(target, "caches", {}) or {})
    exact = canonical_json({"target": target.to_json(), "features": feats, "caches": caches})
    family = canonical_json({"kind": target.to_json().get("kind"), "features": feats})
    info = {"cores": getattr(target, "cores", 1), "vector_bytes": getattr(target, "vector_bytes", 32),
            "vnni": int(target.has("avx512_vnni")), "amx": int(target.has("amx_int8")), "l2": caches.get("l2", 0)}
    return exact, family, info


@dataclass
class TaskState:
    task: Task
    space: Space
    measured: dict = field(default_factory=dict)  # canonical knobs -> latency_us (None: failed)
    default_us: float | None = None
    best_us: float | None = None
    best_knobs: str = "{}"
    trials: int = 0  # measured this run
    history: list = field(default_factory=list)  # best_us after each batch
    exhausted: bool = False
    priority: list = field(default_factory=list)  # candidates to measure first (stale records' best)

    @property
    def weight(self) -> float:
        return len(self.task.names) * (self.best_us or 0.0)

    def gflops(self, us: float | None) -> float:
        return self.task.flops / (us * 1e3) if us else 0.0


class Tuner:
    """``Tuner(tasks, target, db, ...).run()``; ``runner`` is a ``LocalRunner`` or an ``rpc.RPCMeasurer``."""

    def __init__(self, tasks: list[Task], target, db: Database, *, trials: int = 0, time_budget: float = 0.0,
                 search: str = "xgb", batch: int = 8, runner=None, seed: int = 0, model_name: str = "",
                 stream=None, explore: float = 0.25, confirm: bool = True):
        if search not in ("xgb", "random"):
            raise LowbitError(f"unknown search '{search}' (known: xgb, random)")
        self.target, self.db, self.search, self.batch = target, db, search, max(1, batch)
        self.trials, self.time_budget = trials, time_budget
        self.runner = runner or LocalRunner()
        self.rng = random.Random(seed)
        self.model_name, self.explore, self.confirming = model_name, explore, confirm
        self.stream = stream if stream is not None else sys.stderr
        self.exact, self.family, self.tinfo = target_keys(target)
        self.versions = versions()
        self.states = [TaskState(t, Space.for_task(t.op, t.kernel)) for t in tasks]
        self.states = [s for s in self.states if len(s.space)]
        self.model = CostModel(seed=seed)
        self.code_seen: dict = {}  # (task key, code hash) -> latency_us
        self._defaults: dict = {}  # (workload, target) -> the default's latency_us in the database, or None
        self._refs: dict = {}  # task key -> its default, built (LocalRunner pairs every candidate with it)
        self.t0 = time.perf_counter()
        self.total = 0
        self.curve: list = []  # (seconds, trials, model-weighted latency)
        for s in self.states:
            self._load(s)

    # -- state from the database -----------------------------------------------------------------------------
    def _load(self, s: TaskState) -> None:
        for text, rec in self.db.measured(s.task.key, self.exact, self.versions).items():
            s.measured[text] = rec.latency_us if rec.status == "ok" else None
            self._note(s, text, s.measured[text])
        # the best candidates another lowbit/TVM version measured: re-measured first, never used unmeasured
        stale = sorted(self.db.stale(s.task.key, self.exact, self.versions), key=lambda r: r.latency_us)
        s.priority = [json.loads(r.knobs) for r in stale[:4] if r.knobs not in s.measured]
        s.history.append(s.best_us)

    def _note(self, s: TaskState, text: str, us: float | None) -> None:
        if text == "{}" and us is not None:
            s.default_us = us
        if us is not None and (s.best_us is None or us < s.best_us):
            s.best_us, s.best_knobs = us, text

    # -- proposing candidates --------------------------------------------------------------------------------
    def _fresh(self, s: TaskState, knobs: dict, picked: set) -> bool:
        t = canonical(knobs)
        return t not in s.measured and t not in picked

    def _propose(self, s: TaskState) -> list[dict]:
        picked: dict = {}
        if "{}" not in s.measured:
            picked["{}"] = s.space.default()
        while s.priority and len(picked) < self.batch:
            k = {**s.space.default(), **s.priority.pop(0)}
            if self._fresh(s, k, set(picked)):
                picked[canonical(k)] = k
        pool: dict = {}
        tries = 0
        want = max(256, 4 * self.batch)
        top = sorted((us, t) for t, us in s.measured.items() if us is not None)[:8]
        while len(pool) < want and tries < want * 4:
            tries += 1
            if top and self.rng.random() < 0.5:
                base = {**s.space.default(), **json.loads(self.rng.choice(top)[1])}
                k = s.space.mutate(base, self.rng)
            else:
                k = s.space.sample(self.rng)
            if self._fresh(s, k, set(picked)):
                pool[canonical(k)] = k
        if not pool and not picked:
            s.exhausted = True
            return []
        cands = list(pool.values())
        n = self.batch - len(picked)
        if self.search == "xgb" and self.model.trained and n > 0:
            scores = self.model.predict([features(s.task.info(), self.tinfo, k) for k in cands])
            order = sorted(range(len(cands)), key=lambda i: -scores[i])
            n_explore = int(round(n * self.explore))
            chosen = [cands[i] for i in order[:n - n_explore]]
            rest = [cands[i] for i in order[n - n_explore:]]
            chosen += self.rng.sample(rest, min(n_explore, len(rest)))
        else:
            chosen = self.rng.sample(cands, min(max(n, 0), len(cands)))
        for k in chosen:
            picked[canonical(k)] = k
        return list(picked.values())[:max(self.batch, 1)]

    def _train(self) -> None:
        if self.search != "xgb":
            return
        rows, labels, groups = [], [], []
        infos = self.db.workloads()
        for rec in self.db.records(family=self.family, versions=self.versions):
            default = self._default_of(rec.workload, rec.target)
            if not default:
                continue
            rows.append(features(infos.get(rec.workload, {}), self.tinfo, json.loads(rec.knobs)))
            labels.append(math.log(default / rec.latency_us))
            groups.append(hash((rec.workload, rec.target)))
        self.model.fit(rows, labels, groups)

    def _default_of(self, workload: str, target: str) -> float | None:
        if (workload, target) not in self._defaults:
            d = self.db.measured(workload, target, self.versions).get("{}")
            self._defaults[(workload, target)] = d.latency_us if d is not None and d.status == "ok" else None
        return self._defaults[(workload, target)]

    # -- measuring -------------------------------------------------------------------------------------------
    def _measure(self, s: TaskState, cands: list[dict]) -> list[Record]:
        built = [build_candidate(s.task, self.target, k) for k in cands]
        out, todo = [], []
        for b in built:
            text = canonical(b.knobs)
            base = dict(workload=s.task.key, target=self.exact, family=self.family, knobs=text,
                        versions=self.versions, is_default=text == "{}")
            if b.error:
                out.append(Record(status="build_error", latency_us=None, error=b.error, **base))
            elif (s.task.key, b.code) in self.code_seen:
                us = self.code_seen[(s.task.key, b.code)]
                out.append(Record(status="ok", latency_us=us, runs_us=(us,), host="same code", **base))
            else:
                todo.append((b, base))
        # here, the default first: the candidates after it are timed against it (remote: all at once)
        groups = [todo]
        if isinstance(self.runner, LocalRunner):
            groups = [[t for t in todo if t[1]["is_default"]], [t for t in todo if not t[1]["is_default"]]]
        for group in groups:
            for (b, base), tm in zip(group, self._run(s, [b for b, _ in group])):
                if tm.lost:
                    continue  # never recorded: proposed again later
                if tm.error:
                    out.append(Record(status="run_error", latency_us=None, error=tm.error, host=tm.server, **base))
                    continue
                runs = tuple(r * 1e6 for r in tm.runs_s)
                us = s.default_us * tm.ratio if tm.ratio and s.default_us else statistics.median(runs)
                if base["is_default"]:
                    s.default_us = us
                self.code_seen[(s.task.key, b.code)] = us
                out.append(Record(status="ok", latency_us=us, runs_us=runs, host=tm.server, **base))
        return out

    def _reference(self, s: TaskState):
        """The task's default, built once: the candidate timed beside each candidate (``LocalRunner``)."""
        if s.task.key not in self._refs:
            b = build_candidate(s.task, self.target, s.space.default())
            self._refs[s.task.key] = None if b.error else b
        return self._refs[s.task.key]

    def _run(self, s: TaskState, built: list) -> list:
        if not built:
            return []
        if isinstance(self.runner, LocalRunner):
            return [self.runner.run(s.task, b, reference=self._reference(s) if s.default_us and
                                    canonical(b.knobs) != "{}" else None) for b in built]
        from .measure import Timing, arg_specs
        from .rpc import Job

        with tempfile.TemporaryDirectory() as d:
            jobs = [Job(i, export(b, d, f"c{i}"), arg_specs(s.task)) for i, b in enumerate(built)]
            results = {r.id: r for r in self.runner.measure_many(jobs)}
        return [Timing(runs_s=results[i].runs_s, error=results[i].error, lost=results[i].lost,
                       server=results[i].server) for i in range(len(built))]

    # -- scheduling ------------------------------------------------------------------------------------------
    def _pick(self) -> TaskState | None:
        live = [s for s in self.states if not s.exhausted]
        if not live:
            return None
        first = [s for s in live if len(s.history) < 3]  # the default and a first batch everywhere first
        if first:
            return min(first, key=lambda s: len(s.history))

        def gain(s):
            h = [x for x in s.history if x]
            recent = (h[-3] - h[-1]) / h[-3] if len(h) >= 3 else 0.0
            return s.weight * max(recent, 0.02 / (1 + len(h) / 4))
        return max(live, key=gain)

    def _done(self) -> bool:
        if self.trials and self.total >= self.trials:
            return True
        return bool(self.time_budget) and time.perf_counter() - self.t0 >= self.time_budget

    def model_latency(self) -> float:
        return sum(s.weight for s in self.states)

    def run(self) -> list[TaskState]:
        self._say(f"tuning {len(self.states)} kernels ({sum(len(s.task.names) for s in self.states)} ops) for "
                  f"{self.target.describe()}, search {self.search}"
                  + (f", {self.trials} trials" if self.trials else "")
                  + (f", {self.time_budget:.0f}s budget" if self.time_budget else ""))
        self._train()
        while not self._done():
            s = self._pick()
            if s is None:
                break
            cands = self._propose(s)
            if not cands:
                s.history.append(s.best_us)
                continue
            recs = self._measure(s, cands)
            infos = {s.task.key: s.task.info(self.model_name)}
            self.db.add_batch(recs, infos)  # committed before it is reported
            for r in recs:
                s.measured[r.knobs] = r.latency_us
                self._note(s, r.knobs, r.latency_us)
            s.trials += len(recs)
            self.total += len(recs)
            s.history.append(s.best_us)
            self.curve.append((time.perf_counter() - self.t0, self.total, self.model_latency()))
            self._report(s, len(recs))
            self._train()
        if self.confirming:
            self.confirm()
        self._say("done: " + self.summary_line())
        return self.states

    def confirm(self, rounds: int = 3) -> None:
        """Re-time each kernel's best candidate against its default, alternating, and store the outcome in the
        workload's info (``confirmed`` per exact target): ``compile --tune-db`` takes a confirmed candidate only,
        so a record that was fast by chance (a quieter moment of a shared machine) is not used."""
        for s in self.states:
            if s.best_knobs == "{}" or not s.best_us or not s.default_us:
                continue
            best = {**s.space.default(), **json.loads(s.best_knobs)}
            built = [build_candidate(s.task, self.target, k) for k in (s.space.default(), best)]
            if any(b.error for b in built):
                continue
            if isinstance(self.runner, LocalRunner):  # paired with the default, call by call
                tm = self.runner.run(s.task, built[1], reference=built[0], repeat=rounds * self.runner.repeat)
                if not tm.ratio:
                    continue
                d = s.default_us
                b = d * tm.ratio
            else:  # remote: alternating rounds of each
                times: list = [[], []]
                for _ in range(rounds):
                    for i, tm in enumerate(self._run(s, built)):
                        if tm.runs_s:
                            times[i].extend(tm.runs_s)
                if not times[0] or not times[1]:
                    continue
                d, b = statistics.median(times[0]) * 1e6, statistics.median(times[1]) * 1e6
            info = {CONFIRMED + self.exact: {"knobs": s.best_knobs, "speedup": round(d / b, 4),
                                             "default_us": round(d, 2), "best_us": round(b, 2)}}
            self.db.add_batch([], {s.task.key: info})
            if d / b < 1.0:  # the default wins on a second look: no gain to report
                s.best_us, s.best_knobs = s.default_us, "{}"
            self._say(f"confirmed {describe(s.task)}: {d:.1f} -> {b:.1f} us ({d / b:.2f}x)")

    # -- progress --------------------------------------------------------------------------------------------
    def _eta(self) -> str:
        el = time.perf_counter() - self.t0
        left = []
        if self.time_budget:
            left.append(max(self.time_budget - el, 0.0))
        if self.trials and self.total:
            left.append(el / self.total * max(self.trials - self.total, 0))
        return f"ETA {min(left):.0f}s" if left else ""

    def _report(self, s: TaskState, n: int) -> None:
        speed = f"{s.default_us / s.best_us:.2f}x" if s.default_us and s.best_us else "-"
        self._say(f"[{self.total} trials, {time.perf_counter() - self.t0:.0f}s, {self._eta()}] "
                  f"{describe(s.task)}: +{n} ({s.trials} this run), best {s.best_us or float('nan'):.1f} us "
                  f"({s.gflops(s.best_us):.1f} GFLOP/s), {speed} vs default")

    def summary_line(self) -> str:
        base = sum(len(s.task.names) * (s.default_us or 0) for s in self.states)
        now = self.model_latency()
        return (f"{self.total} trials in {time.perf_counter() - self.t0:.0f}s; the tuned kernels' summed time "
                f"{base / 1e3:.2f} -> {now / 1e3:.2f} ms ({base / now if now else 1:.2f}x)")

    def _say(self, line: str) -> None:
        self.stream.write(f"lowbit tune: {line}\n")
        self.stream.flush()


def describe(task: Task) -> str:
    op = next(o for o in task.graph.ops if o.loc == KERNEL)
    epi = "+".join(o.opname for o in task.graph.ops if o.loc and o.loc.startswith(KERNEL + "_"))
    shapes = "x".join(map(str, op.result.type.shape))
    return f"{task.op}{'+' + epi if epi else ''} {task.kernel} -> {shapes}" + (f" (x{len(task.names)})" if len(task.names) > 1 else "")


__all__ = ["Tuner", "TaskState", "versions", "target_keys", "describe", "CONFIRMED"]
