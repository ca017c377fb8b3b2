"""The tuning commands of the ``lowbit`` CLI: ``tune``, ``tune-db`` and ``rpc-server`` (``cli.py`` adds them)."""
from __future__ import annotations

import json
import os
import sys

from .errors import LowbitError


def cmd_tune(args, pipeline_arg) -> int:
    from .compiler import tune

    if args.trials is not None and args.trials < 1:
        raise LowbitError(f"--trials must be a positive number, got {args.trials}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise LowbitError(f"--time-budget must be positive seconds, got {args.time_budget}")
    tuner = tune(args.model, args.output, target=args.target, pipeline=pipeline_arg(args),
                 shapes=dict(args.shape or []), calibration=args.calib, trials=args.trials or 0,
                 time_budget=args.time_budget or 0.0, search=args.search, batch=args.batch, rpc=args.rpc,
                 seed=args.seed)
    rows = sorted(tuner.states, key=lambda s: -len(s.task.names) * (s.default_us or 0))
    print(f"{'kernel':<48} {'ops':>3} {'trials':>6} {'default us':>10} {'best us':>9} {'speedup':>7} {'GFLOP/s':>7}")
    from .autotune.tuner import describe

    for s in rows:
        sp = s.default_us / s.best_us if s.default_us and s.best_us else float("nan")
        print(f"{describe(s.task)[:48]:<48} {len(s.task.names):>3} {len(s.measured):>6} "
              f"{s.default_us or float('nan'):>10.1f} {s.best_us or float('nan'):>9.1f} {sp:>6.2f}x "
              f"{s.gflops(s.best_us):>7.1f}")
    print(tuner.summary_line())
    return 0


def cmd_tune_db(args) -> int:
    from .autotune import database as d

    if args.action == "show":
        with d.Database(args.db, create=False, readonly=True) as db:
            summary = db.summary()
        print(json.dumps(summary, sort_keys=True) if args.json else d.format_summary(summary))
        return 0
    if args.action == "merge":
        if len(args.db_more) < 1 or not args.output:
            raise LowbitError("tune-db merge A B [...] -o OUT")
        counts = d.merge([args.db, *args.db_more], args.output)
        print(f"lowbit: merged {counts.get('records', '?')} records into {args.output}", file=sys.stderr)
        return 0
    if args.action == "export":
        if not args.output:
            raise LowbitError("tune-db export DB -o FILE.jsonl")
        with d.Database(args.db, create=False, readonly=True) as db:
            n = db.export_jsonl(args.output)
        print(f"lowbit: wrote {n} records to {args.output}", file=sys.stderr)
        return 0
    if args.action == "import":  # tune-db import DB FILE.jsonl [...]
        if not args.db_more:
            raise LowbitError("tune-db import DB FILE.jsonl")
        with d.Database(args.db) as db:
            for path in args.db_more:
                if not os.path.isfile(path):
                    raise LowbitError(f"{path}: no such file")
                n = db.import_jsonl(path)
                print(f"lowbit: imported {n} new records from {path}", file=sys.stderr)
        return 0
    raise LowbitError(f"unknown tune-db action '{args.action}'")


def cmd_rpc_server(args) -> int:
    from .autotune.rpc import serve

    serve(args.tracker, args.key, host=args.host, port=args.port, port_end=args.port_end)
    return 0


def add_parsers(sub, pipeline_arg, shape_arg, preset_names) -> None:
    t = sub.add_parser("tune", help="tune a model's kernels into a tuning database",
                       description="Search lowbit's schedule knobs for every kernel of a model, measuring each "
                                   "candidate (here or on TVM RPC servers), and record every measurement in a "
                                   "crash-safe database; `lowbit compile --tune-db DB` then uses the best ones. "
                                   "A rerun resumes: recorded candidates are never measured again.")
    t.add_argument("model", help="an .onnx model (or lowbit IR text)")
    t.add_argument("-o", "--output", required=True, metavar="DB", help="the tuning database (created if missing)")
    t.add_argument("--target", default="auto", help="as for compile (default: this CPU)")
    t.add_argument("--pipeline", help="pass pipeline text (default: the O2 preset)")
    t.add_argument("--preset", help="a named pipeline: " + ", ".join(preset_names))
    t.add_argument("--calib", metavar="DATA", help="calibration data, as for compile")
    t.add_argument("--shape", action="append", type=shape_arg, metavar="NAME=DIMS", help="bind a symbolic input shape")
    t.add_argument("--trials", type=int, help="candidates to measure in all (over every kernel)")
    t.add_argument("--time-budget", type=float, metavar="S", help="stop after this many seconds")
    t.add_argument("--search", choices=["xgb", "random"], default="xgb",
                   help="xgb: the cost model picks candidates (default); random: uniform sampling")
    t.add_argument("--batch", type=int, default=8, help="candidates per measured batch (default 8)")
    t.add_argument("--rpc", metavar="HOST:PORT:KEY", help="measure on TVM RPC servers of this tracker and key")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=lambda a: cmd_tune(a, pipeline_arg))

    db = sub.add_parser("tune-db", help="show, merge, export or import tuning databases",
                        description="show DB [--json] | merge A B [...] -o OUT | export DB -o FILE.jsonl | "
                                    "import DB FILE.jsonl")
    db.add_argument("action", choices=["show", "merge", "export", "import"])
    db.add_argument("db", help="a tuning database")
    db.add_argument("db_more", nargs="*", help="more databases (merge) or JSONL files (import)")
    db.add_argument("-o", "--output", help="the merged database or the JSONL file to write")
    db.add_argument("--json", action="store_true", help="show: one JSON object")
    db.set_defaults(func=cmd_tune_db)

    r = sub.add_parser("rpc-server", help="serve measurements to `lowbit tune --rpc` through a TVM RPC tracker",
                       description="Run TVM's RPC server registered with a tracker (start one with `python -m "
                                   "tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`), with the AMX tile state "
                                   "requested before sessions fork.")
    r.add_argument("--tracker", required=True, metavar="HOST:PORT")
    r.add_argument("--key", required=True, help="the device key tune --rpc asks for")
    r.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    r.add_argument("--port", type=int, default=9090)
    r.add_argument("--port-end", type=int, default=9199)
    r.set_defaults(func=cmd_rpc_server)


__all__ = ["add_parsers"]
