"""``lowbit.autotune.rpc`` against TVM's own RPC on loopback: one tracker (``start_tracker``) and two servers
(``python -m lowbit.autotune.rpc``) per module, one small CNN built once. Jobs spread over both servers; a broken
library is an error, not a loss; a session past its timeout is a loss; a server SIGKILLed mid-run loses nothing
(its job finishes on the survivor) and leaves no process; a SIGTERMed server ends its session children and
exits 0."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("tornado")  # TVM's tracker

import lowbit  # noqa: E402
from lowbit.autotune.rpc import Job, MeasurementError, RPCMeasurer, start_tracker, wait_for_servers  # noqa: E402

# one cluster per xdist worker that gets a test of this module; under --dist loadgroup they all share one
pytestmark = pytest.mark.xdist_group("tune_rpc")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "lowbit-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _wait_gone(pids, timeout=10.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@dataclass
class Cluster:
    tracker: str
    servers: dict  # "127.0.0.1:PORT" -> Popen of its `python -m lowbit.autotune.rpc`
    lib: str
    args: list
    garbage: str
    crash: str | None


def _build(d) -> tuple[str, list]:
    from lowbit.codegen import CodegenConfig, Target, build_module

    g = lowbit.run_passes(lowbit.load(os.path.join(ROOT, "examples", "tiny_cnn.onnx")), "O2")
    ex = build_module(g, Target.parse("cpu"), CodegenConfig())
    lib = str(d / "m.so")
    ex.export_library(lib)
    return lib, [(list(v.type.shape), v.type.dtype.np_dtype.name) for v in g.inputs]


def _crash_library(d) -> str | None:
    """A library whose loading segfaults (a constructor writing to address 0), or None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = d / "crash.c"
    src.write_text("__attribute__((constructor)) static void boom(void) { *(volatile int *)0 = 0; }\n")
    out = d / "crash.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("rpc")
    procs = []
    try:
        tracker = f"127.0.0.1:{_free_port()}"
        servers = {}
        for _ in range(2):  # servers first: they wait for the tracker while TVM imports (~4 s each)
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-m", "lowbit.autotune.rpc", "--tracker", tracker,
                                     "--key", KEY, "--port", str(port), "--port-end", str(port + 1)],
                                    stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
            procs.append(proc)
            servers[f"127.0.0.1:{port}"] = proc
        procs.append(start_tracker("127.0.0.1", int(tracker.rsplit(":", 1)[1])))
        lib, args = _build(d)
        garbage = d / "garbage.so"
        garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        crash = _crash_library(d)
        wait_for_servers(tracker, KEY, 2, timeout=60)
        for addr, proc in servers.items():
            line = proc.stdout.readline()
            assert line.startswith(f"lowbit rpc-server: serving key {KEY} on {addr}, tracker {tracker}"), line
        yield Cluster(tracker, servers, lib, args, str(garbage), crash)
    finally:
        for proc in procs:  # whole process groups: the servers' session children, the tracker's worker
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def test_jobs_spread_over_both_servers(cluster):
    m = RPCMeasurer(cluster.tracker, KEY, number=2, repeat=3, min_repeat_ms=50)
    seen = []
    results = m.measure_many([Job(i, cluster.lib, cluster.args) for i in range(6)], on_result=seen.append)
    assert [r.id for r in results] == list(range(6))
    assert sorted(r.id for r in seen) == list(range(6))
    for r in results:
        assert r.error is None and not r.lost and r.attempts == 1, r
        assert len(r.runs_s) == 3 and all(0 < t < 1 for t in r.runs_s), r
    assert {r.server for r in results} == set(cluster.servers)


def test_a_broken_library_is_an_error_not_a_loss(cluster, tmp_path):
    m = RPCMeasurer(cluster.tracker, KEY, number=1, repeat=2, min_repeat_ms=10)
    jobs = [Job("garbage", cluster.garbage, cluster.args), Job("ok", cluster.lib, cluster.args),
            Job("missing", str(tmp_path / "nope.so"), cluster.args),
            Job("shape", cluster.lib, [([1, 3, 8, 8], "float32")])]
    if cluster.crash:
        jobs.append(Job("crash", cluster.crash, cluster.args))
    res = {r.id: r for r in m.measure_many(jobs)}
    for name in res.keys() - {"ok"}:
        assert res[name].runs_s is None and not res[name].lost and res[name].attempts == 1, res[name]
    assert res["garbage"].error.startswith("load_module: ") and "invalid ELF header" in res["garbage"].error
    assert res["missing"].error.startswith("cannot read ")
    assert res["shape"].error.startswith("run: ") and "mismatch" in res["shape"].error
    assert res["ok"].error is None and len(res["ok"].runs_s) == 2
    if cluster.crash:
        assert "took the server's session down" in res["crash"].error
    wait_for_servers(cluster.tracker, KEY, 2, timeout=20)  # a crashed session leaves its server serving
    with pytest.raises(MeasurementError, match="invalid ELF header"):
        m.measure(Job("garbage", cluster.garbage, cluster.args))


def test_a_session_past_its_timeout_is_lost_not_an_error(cluster):
    m = RPCMeasurer(cluster.tracker, KEY, number=1, repeat=10, min_repeat_ms=500, session_timeout=1.0,
                    max_attempts=1, request_timeout=10)
    t0 = time.monotonic()
    (r,) = m.measure_many([Job("slow", cluster.lib, cluster.args)])
    assert r.lost and r.runs_s is None and "timeout" in r.error and r.attempts == 1, r
    assert time.monotonic() - t0 < 10  # TVM's server ends the session at 1 s, not the 5 s of the job


def test_tuning_through_two_servers_survives_one_killed_mid_run(cluster, tmp_path):
    """The tuner measures the tiny CNN's kernels on both servers; one is SIGKILLed after its first result: the
    job it held is re-queued onto the survivor, the run completes, every record is a real timing from a server
    (no lost job recorded, no bogus latency), and the killed server's session children are gone."""
    import io
    import math

    from lowbit.autotune.database import Database
    from lowbit.autotune.tuner import Tuner, target_keys, versions
    from lowbit.autotune.workload import extract
    from lowbit.codegen import Target

    wait_for_servers(cluster.tracker, KEY, 2, timeout=20)
    inner = RPCMeasurer(cluster.tracker, KEY, number=1, repeat=3, min_repeat_ms=100, request_timeout=10)
    killed, results = {}, []

    class KillingRunner:  # the tuner's runner, with a server SIGKILLed at the first result it reports
        def measure_many(self, jobs):
            def on_result(r):
                results.append(r)
                if not killed and r.runs_s:
                    victim = cluster.servers[r.server]
                    killed.update(server=r.server, pids=[victim.pid] + [k.pid for k in
                                                                       psutil.Process(victim.pid).children(True)])
                    victim.send_signal(signal.SIGKILL)
            return inner.measure_many(jobs, on_result=on_result)

    tgt = Target.parse("cpu")
    g = lowbit.run_passes(lowbit.load(os.path.join(ROOT, "examples", "tiny_cnn.onnx")), "O2")
    tasks = extract(g, tgt)[:2]
    t0 = time.monotonic()
    with Database(tmp_path / "rpc.db") as db:
        tuner = Tuner(tasks, tgt, db, trials=8, batch=4, search="random", runner=KillingRunner(),
                      stream=io.StringIO())
        tuner.run()
        exact = target_keys(tgt)[0]
        recs = [r for t in tasks for r in db.measured(t.key, exact, versions()).values()]
    assert time.monotonic() - t0 < 60 and killed
    assert tuner.total >= 8 and len(recs) == tuner.total
    survivor = (set(cluster.servers) - {killed["server"]}).pop()
    for r in recs:
        if r.host == "same code":
            continue
        assert r.status == "ok" and math.isfinite(r.latency_us) and 0 < r.latency_us < 1e5, r
        assert r.host in cluster.servers, r
    assert any(r.attempts > 1 and r.server == survivor for r in results)  # the lost job, measured again
    assert not any(r.lost for r in results)
    assert cluster.servers[killed["server"]].wait(10) == -signal.SIGKILL
    assert not _wait_gone(killed["pids"]), "a session child outlived its SIGKILLed server"


def test_sigterm_ends_the_server_and_its_session_children(cluster):
    live = [a for a, p in cluster.servers.items() if p.poll() is None]
    target, proc = live[0], cluster.servers[live[0]]
    m = RPCMeasurer(cluster.tracker, KEY, number=1, repeat=10, min_repeat_ms=100, max_attempts=1,
                    request_timeout=5)
    out = []
    th = threading.Thread(target=lambda: out.extend(m.measure_many([Job(i, cluster.lib, cluster.args)
                                                                     for i in range(len(live))])))
    th.start()
    deadline, kids = time.monotonic() + 20, []
    while not kids and time.monotonic() < deadline:
        kids = [k.pid for k in psutil.Process(proc.pid).children(recursive=True) if _running(k.pid)]
        time.sleep(0.02)  # (TVM leaves a session child it killed at its timeout a zombie: not counted)
    assert kids, "no session started on the target server"
    time.sleep(0.3)  # past the handshake and the upload: the job is running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not _wait_gone(kids, timeout=1), "session children outlived the server's SIGTERM"
    th.join(30)
    assert not th.is_alive()
    on_target = [r for r in out if r.server == target]
    assert on_target and all(r.lost and r.runs_s is None for r in on_target), out
