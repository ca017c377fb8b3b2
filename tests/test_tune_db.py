"""The autotuning database: dedup, lookups with family fallback, versions, merge, JSONL, refusal of bad files,
and that a SIGKILLed writer never loses a committed batch. Real SQLite files under tmp_path, no mocks."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from lowbit.autotune.database import (SCHEMA_VERSION, Database, Record, canonical_json, format_summary, merge)
from lowbit.errors import LowbitError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V1 = canonical_json({"lowbit": "0.1.0", "tvm": "0.27.0", "tvm_ffi": "0.1.14"})
V2 = canonical_json({"lowbit": "0.2.0", "tvm": "0.27.0", "tvm_ffi": "0.1.14"})
T_A = canonical_json({"kind": "llvm", "mcpu": "sapphirerapids", "host": "a"})
T_B = canonical_json({"kind": "llvm", "mcpu": "sapphirerapids", "host": "b"})
T_C = canonical_json({"kind": "llvm", "mcpu": "cortex-a76"})
FAM_X86, FAM_ARM = "x86:avx512,vnni", "arm:neon,dotprod"
W = "matmul|M=64,N=64,K=64|int8,int8->int32|row"


def rec(knobs=None, latency=10.0, *, workload=W, target=T_A, family=FAM_X86, versions=V1, status="ok", **kw):
    knobs_text = canonical_json(knobs or {})
    return Record(workload, target, family, knobs_text, status, latency if status == "ok" else None, versions,
                  is_default=knobs_text == "{}", **kw)


def test_round_trip_and_dedup(tmp_path):
    path = tmp_path / "t.db"
    with Database(path) as db:
        batch = [rec(), rec({"tile": 8}, 7.5, runs_us=(7.4, 7.5, 7.9), host="box"),
                 rec({"tile": 16}, status="build_error", error="line one\nline two")]
        assert db.add_batch(batch, {W: {"op": "matmul", "flops": 524288, "models": ["m1"]}}) == 3
        # the same keys again are kept as first measured, a new one is added
        assert db.add_batch([rec({"tile": 8}, 99.0), rec({"tile": 4}, 8.0)], {W: {"models": ["m2", "m1"]}}) == 1
        assert db.has(W, T_A, '{ "tile" : 8 }', V1)  # lookups canonicalise JSON text
        assert not db.has(W, T_A, canonical_json({"tile": 8}), V2)
    with Database(path, create=False, readonly=True) as db:
        got = db.measured(W, T_A, V1)
        assert set(got) == {"{}", '{"tile":8}', '{"tile":16}', '{"tile":4}'}
        r = got['{"tile":8}']
        assert (r.latency_us, r.runs_us, r.host, r.status) == (7.5, (7.4, 7.5, 7.9), "box", "ok")
        assert r.created > 0 and got["{}"].is_default and not r.is_default
        assert got['{"tile":16}'].error == "line one line two" and got['{"tile":16}'].latency_us is None
        assert len(db.records()) == 3 and len(db.records(status=None)) == 4
        assert len(db.records(status="build_error")) == 1
        assert db.workloads() == {W: {"op": "matmul", "flops": 524288, "models": ["m1", "m2"]}}
        with pytest.raises(LowbitError, match="read-only"):
            db.add_batch([rec({"tile": 2})])


@pytest.mark.parametrize("bad, match", [
    (dict(status="ok", latency_us=None), "finite latency_us > 0"),
    (dict(status="ok", latency_us=float("nan")), "finite latency_us > 0"),
    (dict(status="ok", latency_us=-1.0), "finite latency_us > 0"),
    (dict(status="run_error", latency_us=3.0), "latency_us None"),
    (dict(status="crashed", latency_us=None), "status must be one of"),
    (dict(knobs="{tile: 8}"), "knobs is not valid JSON"),
    (dict(knobs="[1]"), "knobs must be a JSON object"),
    (dict(target="llvm -mcpu=x"), "target is not valid JSON"),
    (dict(versions="0.1.0"), "versions is not valid JSON"),
    (dict(runs_us=(1.0, float("inf"))), "runs_us"),
])
def test_bad_records_refused(tmp_path, bad, match):
    good = dict(workload=W, target=T_A, family=FAM_X86, knobs="{}", status="ok", latency_us=1.0, versions=V1)
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(LowbitError, match=match):
            db.add_batch([rec(), Record(**{**good, **bad})])
        assert db.records(status=None) == []  # a bad record refuses its whole batch


def test_best_exact_family_none_and_never_slower(tmp_path):
    with Database(tmp_path / "t.db") as db:
        db.add_batch([rec(latency=10.0), rec({"tile": 8}, 6.0), rec({"tile": 4}, 6.0), rec({"tile": 2}, 8.0),
                      rec({"tile": 1}, status="run_error"),
                      # target B: same family, faster numbers; target C: another family
                      rec(target=T_B, latency=5.0), rec({"tile": 32}, 3.0, target=T_B),
                      rec(target=T_C, family=FAM_ARM, latency=20.0)])
        best, default, how = db.best(W, T_A, FAM_X86, V1)
        assert how == "exact" and best.knobs == '{"tile":8}' and default.knobs == "{}"  # tie: first measured
        # an unmeasured target of the family borrows the fastest family record, with that target's default
        unseen = canonical_json({"kind": "llvm", "mcpu": "sapphirerapids", "host": "c"})
        best, default, how = db.best(W, unseen, FAM_X86, V1)
        assert how == "family" and best.knobs == '{"tile":32}' and best.target == default.target == T_B
        assert db.best(W, unseen, "riscv:v", V1) == (None, None, "none")
        assert db.best("conv2d|other", T_A, FAM_X86, V1) == (None, None, "none")
        assert db.best(W, T_A, FAM_X86, V2) == (None, None, "none")  # other versions never count
        # on C every candidate is slower than the default: the default is the best
        db.add_batch([rec({"tile": 8}, 25.0, target=T_C, family=FAM_ARM)])
        best, default, how = db.best(W, T_C, FAM_ARM, V1)
        assert how == "exact" and best == default and best.knobs == "{}"
        # equal to the default is not faster either
        db.add_batch([rec({"tile": 4}, 20.0, target=T_C, family=FAM_ARM)])
        assert db.best(W, T_C, FAM_ARM, V1)[0].knobs == "{}"
        # without a default the fastest candidate is returned alone
        db.add_batch([rec({"tile": 8}, 4.0, workload="w2")])
        best, default, how = db.best("w2", T_A, FAM_X86, V1)
        assert (best.latency_us, default, how) == (4.0, None, "exact")


def test_versions_and_stale(tmp_path):
    with Database(tmp_path / "t.db") as db:
        db.add_batch([rec(created=100.0), rec({"tile": 8}, 5.0, created=100.0),
                      rec({"tile": 4}, status="build_error", created=100.0)])
        db.add_batch([rec(versions=V2, latency=9.0, created=200.0)])
        assert [r.versions for r in db.records(versions=V2)] == [V2]
        assert {r.knobs for r in db.stale(W, T_A, V2)} == {"{}", '{"tile":8}'}  # ok records only
        assert [r.versions for r in db.stale(W, T_A, V1)] == [V2]
        assert {r.knobs for r in db.stale(W, T_A)} == {"{}", '{"tile":8}'}  # newest versions are current
        assert db.stale(W, T_B) == []
        assert db.best(W, T_A, FAM_X86, V2)[0].latency_us == 9.0


def test_merge(tmp_path):
    a, b, out = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "out.db"
    with Database(a) as db:
        db.add_batch([rec(), rec({"tile": 8}, 5.0)], {W: {"op": "matmul", "models": ["m1"]}})
    with Database(b) as db:
        db.add_batch([rec(latency=11.0), rec({"tile": 4}, 4.0), rec(target=T_C, family=FAM_ARM)],
                     {W: {"models": ["m2"]}, "w2": {"op": "conv2d"}})
    counts = merge([a, b], out)
    assert counts == {"sources": 2, "records_in": 5, "records": 4, "duplicates": 1, "workloads": 2}
    assert not os.path.exists(f"{out}.tmp") and not os.path.exists(f"{out}-wal")
    with Database(out, create=False) as db:
        assert db.measured(W, T_A, V1)["{}"].latency_us == 10.0  # the first source wins a duplicate
        assert db.best(W, T_A, FAM_X86, V1)[0].knobs == '{"tile":4}'
        assert db.workloads()[W] == {"op": "matmul", "models": ["m1", "m2"]}
    with pytest.raises(LowbitError, match="also one of its sources"):
        merge([a, out], out)
    with pytest.raises(LowbitError, match="no such tuning database"):
        merge([a, tmp_path / "missing.db"], tmp_path / "out2.db")
    assert not os.path.exists(tmp_path / "out2.db")


def test_jsonl_round_trip_and_bad_line(tmp_path):
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    with Database(src) as db:
        db.add_batch([rec(), rec({"tile": 8}, 5.0, runs_us=(5.0, 5.1)), rec({"tile": 2}, status="run_error",
                                                                           error="timeout")],
                     {W: {"op": "matmul", "models": ["m1"]}})
        assert db.export_jsonl(tmp_path / "x.jsonl") == 3
        original = db.records(status=None)
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["workload", "record", "record", "record"]
    with Database(dst) as db:
        assert db.import_jsonl(tmp_path / "x.jsonl") == 3
        assert db.import_jsonl(tmp_path / "x.jsonl") == 0
        assert db.records(status=None) == original and db.workloads() == {W: {"op": "matmul", "models": ["m1"]}}
    bad = lines[:2] + [lines[2].replace('"status": "ok"', '"status": "fine"')] + lines[3:]
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    (tmp_path / "junk.jsonl").write_text(lines[0] + "\n\n" + lines[1] + "\n{not json\n")
    with Database(tmp_path / "empty.db") as db:
        with pytest.raises(LowbitError, match=r"bad\.jsonl:3: .*status must be one of"):
            db.import_jsonl(tmp_path / "bad.jsonl")
        with pytest.raises(LowbitError, match=r"junk\.jsonl:4: not JSON"):
            db.import_jsonl(tmp_path / "junk.jsonl")
        assert db.records(status=None) == [] and db.workloads() == {}  # nothing imported


def test_refuses_files_that_are_not_tuning_databases(tmp_path):
    with pytest.raises(LowbitError, match="no such tuning database"):
        Database(tmp_path / "missing.db", create=False)
    with pytest.raises(LowbitError, match="no such tuning database"):
        Database(tmp_path / "missing.db", readonly=True)
    assert not os.path.exists(tmp_path / "missing.db")

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    with pytest.raises(LowbitError, match=r"garbage\.db: not a SQLite file"):
        Database(garbage)

    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (x)")
    con.commit()
    con.close()
    before = foreign.read_bytes()
    with pytest.raises(LowbitError, match=r"foreign\.db: .*not a lowbit tuning database"):
        Database(foreign)
    assert foreign.read_bytes() == before  # refused without being touched

    newer = tmp_path / "newer.db"
    Database(newer).close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(LowbitError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Database(newer)

    full = tmp_path / "full.db"
    with Database(full) as db:
        db.add_batch([rec({"tile": i}, 1.0 + i, workload=f"w{i % 50}", error="x" * 100) for i in range(3000)])
    data = full.read_bytes()
    assert len(data) > 100_000 and not os.path.exists(f"{full}-wal")
    for n, what in ((len(data) // 2, "corrupted"), (len(data) // 3 + 1000, "corrupted"), (10, "not a SQLite")):
        cut = tmp_path / f"cut{n}.db"
        cut.write_bytes(data[:n])
        with pytest.raises(LowbitError, match=f"cut{n}.db: {what}"):
            Database(cut)

    blank = tmp_path / "blank.db"
    blank.write_bytes(b"")  # what a crash between creating and initialising the file leaves
    with pytest.raises(LowbitError, match="empty SQLite file"):
        Database(blank, create=False)
    Database(blank).close()
    with Database(blank, readonly=True) as db:
        assert db.records() == []


def test_two_writers_share_one_file(tmp_path):
    with Database(tmp_path / "t.db") as a, Database(tmp_path / "t.db") as b:
        assert a.add_batch([rec()]) == 1 and b.add_batch([rec(), rec({"tile": 8}, 5.0)]) == 1
        assert len(a.records()) == 2


WRITER = textwrap.dedent("""
    import sys
    from lowbit.autotune.database import Database, Record, canonical_json
    db = Database(sys.argv[1])
    first = int(sys.argv[2])
    v = canonical_json({"lowbit": "0.1.0", "tvm": "0.27.0", "tvm_ffi": "0.1.14"})
    for i in range(first, first + 100000):
        batch = [Record(f"w{i}", '{"kind":"llvm"}', "fam", canonical_json({"t": j}) if j else "{}", "ok",
                        1.0 + j, v, error="e" * 200) for j in range(25)]
        db.add_batch(batch, {f"w{i}": {"op": "matmul", "models": ["m"]}})
        print("committed", i, flush=True)
""")


def test_sigkill_never_loses_a_committed_batch(tmp_path):
    path = str(tmp_path / "crash.db")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng, committed = random.Random(1), set()
    for round_ in range(3):  # each round recovers what the previous kill left, then gets killed itself
        p = subprocess.Popen([sys.executable, "-c", WRITER, path, str(round_ * 100000)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        want = rng.randrange(5, 40)
        try:
            for _ in range(want):
                line = p.stdout.readline()
                assert line.startswith("committed "), (line, p.stderr.read() if p.poll() is not None else "")
                committed.add(int(line.split()[1]))
            time.sleep(rng.random() * 0.02)  # land the kill anywhere inside a later batch
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert p.returncode == -signal.SIGKILL and committed
        assert os.path.exists(path + "-wal")  # it really died with a live WAL
        with Database(path, create=False) as db:  # opening runs quick_check
            counts = {}
            for r in db.records():
                counts[r.workload] = counts.get(r.workload, 0) + 1
            assert {f"w{i}" for i in committed} <= set(counts)
            assert set(counts.values()) == {25}  # no half batch, the one in flight included
            assert set(db.workloads()) == set(counts)
            committed = {int(w[1:]) for w in counts}
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()


def test_summary_and_format(tmp_path):
    path = tmp_path / "t.db"
    with Database(path) as db:
        db.add_batch([rec(latency=10.0), rec({"tile": 8}, 2.5), rec({"tile": 2}, status="build_error"),
                      rec(workload="w2", latency=4.0), rec({"tile": 8}, 5.0, workload="w2"),
                      rec(target=T_C, family=FAM_ARM, latency=9.0), rec({"u": 1}, 4.5, target=T_C, family=FAM_ARM),
                      rec({"tile": 8}, 7.0, workload="w3")])
        s = db.summary()
    assert (s["records"], s["ok"], s["errors"], s["workloads"]) == (8, 7, 1, 3)
    assert s["versions"] == [V1] and s["path"] == str(path)
    assert s["targets"][0] == {"target": T_A, "family": FAM_X86, "records": 6}
    assert [(b["workload"], b["target"], b["speedup"], b["knobs"]) for b in s["best"]] == [
        (W, T_A, 4.0, '{"tile":8}'), (W, T_C, 2.0, '{"u":1}'), ("w2", T_A, 1.0, "{}"), ("w3", T_A, None, '{"tile":8}')]
    text = format_summary(s)
    assert str(path) in text and "8 (7 ok, 1 failed), 3 workloads" in text and FAM_ARM in text
    lines = text.splitlines()
    rows = lines[[i for i, line in enumerate(lines) if line.split()[:1] == ["speedup"]][0] + 1:]
    assert len(rows) == 3 and "4.00x" in rows[0] and '{"tile":8}' in rows[0] and "2.00x" in rows[1]
    with Database(tmp_path / "empty.db") as db:
        assert "no kernel has both" in format_summary(db.summary())
