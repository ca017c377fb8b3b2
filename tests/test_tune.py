"""lowbit tune: tasks, search, records applied by compile --tune-db, crash safety of a killed run (tiny models,
a few trials each: the whole file takes ~40 s on 2 cores)."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
INPUTS = os.path.join(ROOT, "examples", "tiny_cnn_inputs.npz")


def _graph():
    import lowbit

    return lowbit.run_passes(lowbit.load(TINY), "O2")


def test_tasks_are_deduplicated_workloads_with_the_models_layouts():
    from lowbit.autotune.space import Space
    from lowbit.autotune.workload import KERNEL, extract
    from lowbit.codegen import Target

    tasks = extract(_graph(), Target.parse("cpu"))
    assert [t.op for t in tasks] == ["conv2d", "conv2d", "conv2d", "gemm"]
    assert len({t.key for t in tasks}) == len(tasks)
    conv1 = tasks[1]
    assert conv1.names == ["conv1"] and "+relu" in conv1.key  # the fused activation is part of the workload
    assert set(conv1.input_layouts.values()) <= {8, 16, 32}  # its input arrives channel-blocked, as in the model
    assert [o.loc for o in conv1.graph.ops if o.opname != "const"] == [KERNEL, f"{KERNEL}_e1"]
    assert len(Space.for_task(conv1.op, conv1.kernel)) >= 1000


def test_new_contraction_knobs_change_the_code_and_keep_the_outputs(tmp_path):
    import lowbit
    import lowbit.runtime

    inputs = dict(np.load(INPUTS))
    ref = lowbit.interpret(_graph(), inputs)["logits"]
    for knobs in ("vectors=1,loop_order=1,reduce_unroll=4", "conv1:vectors=2,conv1:loop_order=2,tile=3"):
        art = lowbit.compile(TINY, target="cpu", codegen=knobs)
        art.save(tmp_path / "m.lbit")
        out = lowbit.runtime.load(tmp_path / "m.lbit").run(inputs)["logits"]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_records_are_applied_per_kernel_and_marked_in_inspect(tmp_path):
    """A database whose record for conv1's workload beats the default: compile --tune-db gives conv1 (and only
    the kernels with such a record) those knobs; a record slower than its default is never applied."""
    from lowbit.autotune.database import Database, Record
    from lowbit.autotune.tuner import target_keys, versions
    from lowbit.autotune.workload import extract
    from lowbit.codegen import Target

    tgt = Target.parse("auto")
    exact, family, _ = target_keys(tgt)
    tasks = {t.names[0]: t for t in extract(_graph(), tgt)}
    ver = versions()

    def rec(task, knobs, us):
        return Record(workload=task.key, target=exact, family=family, knobs=knobs, status="ok", latency_us=us,
                      versions=ver, runs_us=(us,))
    db = tmp_path / "t.db"
    with Database(db) as d:
        d.add_batch([rec(tasks["conv1"], "{}", 100.0), rec(tasks["conv1"], '{"tile":4}', 50.0),
                     rec(tasks["conv2"], "{}", 100.0), rec(tasks["conv2"], '{"tile":2}', 150.0)])
    import lowbit
    import lowbit.runtime

    art = tmp_path / "m.lbit"
    lowbit.compile(TINY, target="auto", tune_db=db).save(art)
    manifest = lowbit.runtime.load(art).manifest
    tuned = {k["name"]: k["tuned"] for k in manifest["kernels"] if "tuned" in k}
    assert list(tuned) == ["conv1"] and tuned["conv1"]["speedup"] == 2.0
    assert manifest["codegen"]["kernels"] == {"conv1": {"tile": 4}}
    text = run_cli("inspect", art, check_rc=0).stdout
    assert 'tuned 2.00x {"tile":4}' in text
    inputs = dict(np.load(INPUTS))
    out = lowbit.runtime.load(art).run(inputs)["logits"]
    np.testing.assert_allclose(out, lowbit.interpret(_graph(), inputs)["logits"], rtol=1e-4, atol=1e-5)


def test_tune_cli_xgb_then_show_merge_export(tmp_path):
    db = tmp_path / "a.db"
    p = run_cli("tune", TINY, "-o", db, "--trials", "16", "--batch", "4", "--search", "xgb", check_rc=0)
    assert "lowbit tune: done:" in p.stderr and "speedup" in p.stdout
    summary = json.loads(run_cli("tune-db", "show", db, "--json", check_rc=0).stdout)
    assert summary["records"] >= 16 and summary["workloads"] == 4
    assert all(b["speedup"] >= 1.0 for b in summary["best"] if b["speedup"] is not None)
    run_cli("tune-db", "export", db, "-o", tmp_path / "a.jsonl", check_rc=0)
    run_cli("tune-db", "import", tmp_path / "b.db", tmp_path / "a.jsonl", check_rc=0)
    run_cli("tune-db", "merge", db, tmp_path / "b.db", "-o", tmp_path / "c.db", check_rc=0)
    merged = json.loads(run_cli("tune-db", "show", tmp_path / "c.db", "--json", check_rc=0).stdout)
    assert merged["records"] == summary["records"]


def test_bad_tuning_inputs_are_one_line_errors(tmp_path):
    p = run_cli("tune", TINY, "-o", tmp_path / "x.db", check_rc=1)
    assert p.stderr.startswith("lowbit: error:") and "--trials or --time-budget" in p.stderr
    import lowbit
    from lowbit.errors import LowbitError

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 50)
    with pytest.raises(LowbitError, match="junk.db"):
        lowbit.compile(TINY, target="cpu", tune_db=junk)
    with pytest.raises(LowbitError, match="no such tuning database"):
        lowbit.compile(TINY, target="cpu", tune_db=tmp_path / "missing.db")


def test_sigkill_mid_batch_keeps_every_reported_record_and_the_rerun_resumes(tmp_path):
    from lowbit.autotune.database import Database

    db = tmp_path / "k.db"
    proc = subprocess.Popen(["lowbit", "tune", TINY, "-o", str(db), "--trials", "400", "--batch", "2",
                             "--search", "random"], stderr=subprocess.PIPE, text=True)
    reported, deadline = 0, time.time() + 120
    try:
        for line in proc.stderr:
            if line.startswith("lowbit tune: ["):
                reported = int(line.split("[", 1)[1].split()[0])
                if reported >= 6:
                    time.sleep(0.15)  # into the next batch: built, measuring, not committed
                    break
            assert time.time() < deadline, "no progress from lowbit tune"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reported >= 6
    with Database(db, create=False) as d:
        before = d.summary()["records"]
    assert before >= reported  # nothing it reported is lost (a batch committed after the last line may be there too)
    p = run_cli("tune", TINY, "-o", db, "--trials", "4", "--batch", "2", "--search", "random", check_rc=0)
    with Database(db, create=False) as d:
        after = d.summary()["records"]
    done = int(p.stderr.split("lowbit tune: done: ", 1)[1].split()[0])
    assert done >= 4 and after == before + done  # every candidate it measured was new: none measured twice


def test_cost_model_ranks_and_spearman():
    from lowbit.autotune.model import CostModel, features, spearman

    rng = np.random.default_rng(0)
    info = {"op": "conv2d", "kernel": "nchw16c", "flops": 1e8, "bytes": 1e6, "inputs": [[1, 64, 28, 28]]}
    knobs = [{"tile": int(t), "accumulators": int(a)} for t, a in rng.choice([1, 2, 4, 8, 16], size=(60, 2))]
    truth = [-(k["tile"] - 4) ** 2 - (k["accumulators"] - 8) ** 2 / 4 for k in knobs]  # best at tile 4, acc 8
    rows = [features(info, {"cores": 2}, k) for k in knobs]
    m = CostModel(rounds=60).fit(rows[:40], truth[:40], [0] * 40)
    assert spearman(m.predict(rows[40:]), truth[40:]) > 0.6
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_records_of_other_versions_are_re_measured_before_use(tmp_path):
    import io

    from lowbit.autotune.database import Database, Record
    from lowbit.autotune.tuner import Tuner, target_keys, versions
    from lowbit.autotune.workload import extract
    from lowbit.codegen import Target

    tgt = Target.parse("auto")
    exact, family, _ = target_keys(tgt)
    task = extract(_graph(), tgt)[1]
    old = '{"lowbit":"0.0.1","tvm":"0.26","tvm_ffi":"0.1"}'
    with Database(tmp_path / "v.db") as db:
        db.add_batch([Record(workload=task.key, target=exact, family=family, knobs='{"tile":4}', status="ok",
                             latency_us=1.0, versions=old)])
        assert db.best(task.key, exact, family, versions())[0] is None  # never used as it was measured
        Tuner([task], tgt, db, trials=2, batch=2, search="random", stream=io.StringIO()).run()
        assert set(db.measured(task.key, exact, versions())) == {"{}", '{"tile":4}'}
