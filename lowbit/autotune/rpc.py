"""Timing compiled kernels on TVM's RPC: a tracker (``python -m tvm.exec.rpc_tracker``), servers registered with
it under a key (``serve``: ``lowbit rpc-server``, ``python -m lowbit.autotune.rpc``), and ``RPCMeasurer``, which
times the Relax VM's "main" of exported libraries on them, one worker thread per free server.

>>> RPCMeasurer("127.0.0.1:9190", "cpu").measure_many([Job(0, "m.so", [([1, 3, 32, 32], "float32")])])  # doctest: +SKIP

What of TVM, and why
- The server is TVM's ``tvm.rpc.server.PopenRPCServerState`` (what ``tvm.rpc.Server`` starts in a PopenWorker),
  run in the serving process itself: it listens and forks a child per session, so AMX permission is requested
  where the forks happen, SIGTERM reaches the process that knows the children, and a server costs one TVM import
  (~4 s), not two. Around it: a session child dying abnormally (a segfaulting kernel) makes TVM's listener raise
  and stop serving for good, so ``_serving`` is wrapped to log and go on; session children get PR_SET_PDEATHSIG
  (a SIGKILLed server leaves no orphan serving on) and SIGTERM's default action (the Python handler they inherit
  would run only after the kernel: TVM's kill at the session timeout would wait for it).
- Sessions are TVM's: ``tvm.rpc.connect`` with the tracker's match key, ``upload``, ``load_module``, the remote
  ``cpu()``, ``tvm.runtime.tensor``, ``VirtualMachine(remote_lib, remote_dev)``, its ``time_evaluator`` of
  ``invoke_stateful``. TVM's client serializes calls per session and releases the GIL while it waits.
- The tracker gets its own messages (``TrackerCode.SUMMARY``, ``REQUEST``) through ``tvm.rpc.base`` on a socket
  that can time out and be ``select``ed: ``TrackerSession.request`` waits without bound for a free server (seen:
  forever, once the only server had died) and retries a refused tracker for 60 s.
- Not MetaSchedule's ``RPCRunner``: it times ``rt_mod.time_evaluator(rt_mod.entry_name)`` of a TIR module with
  ``TensorInfo`` arguments (a Relax VM needs ``vm_load_executable``, ``vm_initialization``, ``set_input``: every
  hook but session creation would be replaced), opens a session per candidate in a PopenPoolExecutor (a process
  per worker, each importing TVM), and returns seconds or an error string: a lost session and a failing kernel
  cannot be told apart, which is what the caller needs most.

Losses, and what bounds them
- Lost: the connection breaks (server killed, refused, reset), the server ends the session at ``session_timeout``
  ("RPCSessionTimeoutError"), or the watchdog does: a session's calls must end by its start + ``session_timeout``
  + ``SESSION_GRACE``, a connect within ``CONNECT_TIMEOUT``, a probe within ``PROBE_TIMEOUT``, or the session's
  socket (found in /proc/self/fd by its peer) is shut down and the blocked call raises. Waiting for a server is
  bounded by ``request_timeout`` and stops as soon as no job waits. Sessions are renewed before they run out.
- After a failure one remote call probes the session: an answer means the kernel failed on a healthy server
  (``MeasurementError``, recorded); none while the server's listener still answers a handshake means the kernel
  took its session down (a crash: ``MeasurementError`` too); else the server is gone (``MeasurementLost``): the
  job is queued again, and after ``max_attempts`` losses returned with ``lost=True``, no time.

Needs ``tornado`` and ``cloudpickle`` (the tracker) and ``psutil`` (TVM's server ends a timed-out session's children
with it; so does ``serve``): ``pip install 'lowbit[rpc]'``. Linux only (prctl, /proc).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import os
import queue
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import LowbitError

CONNECT_TIMEOUT = 20.0   # s: tracker handshake + TVM's RPC handshake with a server
PROBE_TIMEOUT = 10.0     # s: the liveness probe after a failed call
SESSION_GRACE = 10.0     # s: past the session timeout, before the watchdog cuts a session the server did not end
_ENTRY = "main"


class MeasurementLost(Exception):
    """The session died under the job (server gone, connection refused or reset, session timeout): measure it
    again elsewhere; never record it."""


class MeasurementError(Exception):
    """The kernel itself failed to load or run on a healthy server: deterministic, record it as an error."""


@dataclasses.dataclass
class Job:
    """One library to time: ``args`` are the (shape, dtype) of the inputs of the VM's "main", in order."""
    id: object
    lib_path: str
    args: list


@dataclasses.dataclass
class Result:
    """``runs_s``: seconds per repeat; or ``error`` (the kernel failed); or ``lost`` (no healthy session could
    finish it in ``attempts`` tries; ``error`` then says why). ``server``: HOST:PORT of the last server tried."""
    id: object
    runs_s: list | None
    error: str | None
    lost: bool
    server: str
    attempts: int = 1


# -- addresses and the tracker's protocol ---------------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LowbitError(f"expected HOST:PORT for the RPC tracker, got {text!r}")
    return host, int(port)


def _tracker_socket(addr, timeout: float) -> socket.socket:
    from tvm.rpc import base

    sock = socket.create_connection(addr, timeout=timeout)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise OSError(f"{addr[0]}:{addr[1]} is not an RPC tracker")
    except BaseException:
        sock.close()
        raise
    return sock


def tracker_summary(tracker: str, timeout: float = 10.0) -> dict:
    """The tracker's summary: ``{"queue_info": {key: {"free": n, "pending": n}}, "server_info": [...]}``."""
    from tvm.rpc import base

    addr = parse_address(tracker)
    try:
        with _tracker_socket(addr, timeout) as sock:
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            reply = base.recvjson(sock)
    except (OSError, ValueError) as e:
        raise LowbitError(f"cannot reach the RPC tracker at {tracker}: {e}") from None
    if reply[0] != base.TrackerCode.SUCCESS:
        raise LowbitError(f"the RPC tracker at {tracker} refused a summary: {reply!r}")
    return reply[1]


def _free_servers(summary: dict, key: str) -> int:
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def _request(addr, key: str, deadline: float, give_up) -> tuple[str, int, str] | None:
    """(host, port, match key) of a free server for ``key`` from the tracker; None when ``give_up()`` or past
    ``deadline``. Closing the socket withdraws the request (the tracker skips closed requesters)."""
    from tvm.rpc import base

    with _tracker_socket(addr, CONNECT_TIMEOUT) as sock:
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        while not select.select([sock], [], [], 0.2)[0]:
            if give_up() or time.monotonic() > deadline:
                return None
        reply = base.recvjson(sock)
    if reply[0] != base.TrackerCode.SUCCESS:
        raise OSError(f"the tracker refused the request: {reply!r}")
    host, port, match = reply[1]
    return host, int(port), match


def _listening(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether TVM's listener at host:port still answers a handshake (a wrong key: it replies "mismatch" and
    drops it). A socket that merely exists -- held open by a session child still dying -- does not answer."""
    from tvm.rpc import base

    key = b"client:lowbit-liveness-probe"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack("<ii", base.RPC_MAGIC, len(key)) + key)
            base.recvall(s, 4)
        return True
    except OSError:
        return False


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("RPCError: Error caught from RPC call", "Traceback"))]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- the client-side watchdog ---------------------------------------------------------------------------------
def _sockets_to(ips: set[str], port: int) -> dict[int, int]:
    """{inode: fd} of this process's sockets connected to one of ``ips`` at ``port`` (empty off Linux)."""
    found = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        fd = int(name)
        try:
            st = os.fstat(fd)
            if not stat.S_ISSOCK(st.st_mode) or st.st_ino in found:
                continue
            dup = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            peer = dup.getpeername()
            if isinstance(peer, tuple) and peer[0] in ips and peer[1] == port:
                found[st.st_ino] = fd
        except OSError:
            pass
        finally:
            dup.close()
    return found


def _resolve(host: str, port: int) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)}
    except OSError:
        return {host}


class _Session:
    """One TVM RPC session with the socket that carries it (a dup the watchdog can shut down) and its deadline."""

    def __init__(self, sess, host: str, port: int, sock: socket.socket | None, timeout: float):
        self.sess, self.host, self.port, self.sock = sess, host, port, sock
        self.server = f"{host}:{port}"
        self.started = time.monotonic()
        self.deadline = self.started + timeout + SESSION_GRACE
        self.cut = False  # shut down (by the watchdog, or as dead)

    def shut(self) -> None:
        """Shut the connection down: a call blocked on it raises."""
        self.cut = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.sess = None  # TVM sends its shutdown message as the last reference goes
        self.shut()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Watchdog(threading.Thread):
    """Cuts a worker's session when the phase it is in runs past its deadline."""

    def __init__(self):
        super().__init__(daemon=True, name="lowbit-rpc-watchdog")
        self.lock = threading.Lock()
        self.phases: dict[int, tuple] = {}  # worker -> (deadline, _Session | None, (ips, port, known inodes))
        self.claimed: set[int] = set()      # socket inodes owned by live sessions
        self.stop = threading.Event()

    def enter(self, worker: int, deadline: float, session=None, connecting=None) -> None:
        with self.lock:
            self.phases[worker] = (deadline, session, connecting)

    def leave(self, worker: int) -> None:
        with self.lock:
            self.phases.pop(worker, None)

    def cut_all(self) -> None:
        with self.lock:
            sessions = [p[1] for p in self.phases.values() if p[1] is not None]
        for session in sessions:
            session.shut()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            now = time.monotonic()
            with self.lock:
                late = [(w, p) for w, p in self.phases.items() if now > p[0]]
                for w, _ in late:
                    del self.phases[w]
                claimed = set(self.claimed)
            for _, (_, session, connecting) in late:
                if session is not None:
                    session.shut()
                elif connecting is not None:  # a handshake that hangs: cut the unclaimed new socket to that peer
                    ips, port, known = connecting
                    for ino, fd in _sockets_to(ips, port).items():
                        if ino not in known and ino not in claimed:
                            try:
                                with socket.socket(fileno=os.dup(fd)) as dup:
                                    dup.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass


# -- the measurer ---------------------------------------------------------------------------------------------
def _random_input(shape, dtype: str, rng):
    from .measure import random_input

    try:
        return random_input(shape, dtype, rng)
    except ValueError as e:
        raise MeasurementError(str(e)) from None


class _Work:
    """The job queue shared by the workers: pending indices, how many are running, attempts per job."""

    def __init__(self, n: int):
        self.cv = threading.Condition()
        self.pending = collections.deque(range(n))
        self.running = 0
        self.attempts = [0] * n
        self.stop = False

    def wait_for_work(self) -> bool:
        """Block until a job is pending (True) or nothing is left to do (False)."""
        with self.cv:
            while not self.pending and self.running and not self.stop:
                self.cv.wait(0.5)
            return bool(self.pending) and not self.stop

    def no_job_waits(self) -> bool:
        return self.stop or not self.pending

    def take(self) -> int | None:
        with self.cv:
            if self.stop or not self.pending:
                return None
            self.running += 1
            i = self.pending.popleft()
            self.attempts[i] += 1
            return i

    def done(self, i: int, again: bool = False) -> None:
        with self.cv:
            self.running -= 1
            if again:
                self.pending.appendleft(i)
            self.cv.notify_all()

    def halt(self) -> None:
        with self.cv:
            self.stop = True
            self.cv.notify_all()


class RPCMeasurer:
    """Times "main" of Relax VM libraries on the servers a TVM RPC tracker has for ``key`` (see the module's doc
    for how losses are told from failures and how every wait is bounded)."""

    def __init__(self, tracker: str, key: str, number: int = 1, repeat: int = 5, min_repeat_ms: int = 25,
                 session_timeout: float = 60, max_attempts: int = 3, request_timeout: float = 60):
        self.tracker, self.addr, self.key = tracker, parse_address(tracker), key
        self.number, self.repeat, self.min_repeat_ms = int(number), int(repeat), int(min_repeat_ms)
        self.session_timeout, self.max_attempts = float(session_timeout), max(1, int(max_attempts))
        self.request_timeout = float(request_timeout)
        if self.session_timeout <= 0:
            raise LowbitError("session_timeout must be positive: TVM keeps a session of 0 s forever")
        self._longest = 0.0  # the longest job seen, s (to renew sessions before the server's timeout)
        self._uploads = 0
        self._lock = threading.Lock()

    # one job on one session ----------------------------------------------------------------------------------
    def _open(self, worker: int, work: _Work, dog: _Watchdog) -> _Session | str:
        """A new session, or "idle" (no job waits any more) or "timeout" (no server in ``request_timeout``)."""
        from tvm import rpc

        deadline = time.monotonic() + self.request_timeout
        while time.monotonic() < deadline:
            if work.no_job_waits():
                return "idle"
            try:
                match = _request(self.addr, self.key, deadline, work.no_job_waits)
            except (OSError, ValueError):
                time.sleep(0.5)  # tracker unreachable for now: try again until the deadline
                continue
            if match is None:
                continue
            host, port, matchkey = match
            ips = _resolve(host, port)
            known = set(_sockets_to(ips, port))
            dog.enter(worker, time.monotonic() + CONNECT_TIMEOUT, connecting=(ips, port, known))
            try:
                sess = rpc.connect(host, port, matchkey, session_timeout=self.session_timeout)
            except Exception:  # noqa: BLE001  (the server went away between match and connect: ask again)
                time.sleep(0.2)
                continue
            finally:
                dog.leave(worker)
            with dog.lock:
                fds = _sockets_to(ips, port)
                mine = [ino for ino in fds if ino not in known and ino not in dog.claimed]
                sock = None
                if len(mine) == 1:
                    dog.claimed.add(mine[0])
                    sock = socket.socket(fileno=os.dup(fds[mine[0]]))
            return _Session(sess, host, port, sock, self.session_timeout)
        return "timeout"

    def _release(self, session: _Session, dog: _Watchdog) -> None:
        if session.sock is not None:
            with dog.lock:
                dog.claimed.discard(os.fstat(session.sock.fileno()).st_ino)
        session.close()

    def _expiring(self, session: _Session) -> bool:
        left = self.session_timeout - (time.monotonic() - session.started)
        return left < max(2 * self._longest + 1.0, 0.25 * self.session_timeout)

    def _alive(self, worker: int, session: _Session, dog: _Watchdog) -> bool:
        if session.cut or session.sess is None:
            return False
        dog.enter(worker, min(session.deadline, time.monotonic() + PROBE_TIMEOUT), session=session)
        try:
            session.sess.get_function("tvm.rpc.server.upload")  # one round trip
            return not session.cut
        except Exception:  # noqa: BLE001
            return False
        finally:
            dog.leave(worker)

    def _remote(self, session: _Session, name: str, blob: bytearray, inputs: list, phase: list) -> list[float]:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        sess = session.sess
        sess.upload(blob, name)
        phase[0] = "load_module"
        lib = sess.load_module(name)
        dev = sess.cpu()
        phase[0] = "VM init"
        vm = VirtualMachine(lib, dev)
        phase[0] = "inputs"
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        vm.set_input(_ENTRY, *args)
        phase[0] = "run"
        timer = vm.time_evaluator("invoke_stateful", dev, number=self.number, repeat=self.repeat,
                                  min_repeat_ms=self.min_repeat_ms)
        runs = [float(t) for t in timer(_ENTRY).results]
        del timer, vm, args, lib  # free the remote objects here, in this thread
        try:
            sess.remove(name)
        except Exception:  # noqa: BLE001  (the time is measured; a dead session shows on the next job)
            pass
        return runs

    def _run(self, worker: int, session: _Session, job: Job, dog: _Watchdog) -> list[float]:
        """Seconds per repeat of ``job`` on ``session``; raises MeasurementError or MeasurementLost."""
        import numpy as np

        try:
            with open(job.lib_path, "rb") as f:
                blob = bytearray(f.read())
        except OSError as e:
            raise MeasurementError(f"cannot read {job.lib_path}: {e.strerror}") from None
        with self._lock:
            self._uploads += 1
            name = f"lowbit_{self._uploads}.so"
        rng = np.random.default_rng(self._uploads)
        inputs = [_random_input(shape, dtype, rng) for shape, dtype in job.args]
        phase, failure, runs = ["upload"], None, None
        dog.enter(worker, session.deadline, session=session)
        try:
            runs = self._remote(session, name, blob, inputs, phase)
        except Exception as e:  # noqa: BLE001  (classified below, once the failed frames are gone)
            failure = (_one_line(e), "RPCSessionTimeoutError" in str(e))
            if failure[1]:  # cut it before the frames' remote objects are freed through it
                session.shut()
        finally:
            dog.leave(worker)
        if failure is None:
            return runs
        text, server_timeout = failure
        if server_timeout:
            raise MeasurementLost(f"{session.server} ended the session at its {self.session_timeout:g} s timeout")
        if session.cut:
            raise MeasurementLost(f"{session.server} did not answer within the session's time ({phase[0]})")
        if self._alive(worker, session, dog):
            raise MeasurementError(f"{phase[0]}: {text}")
        session.shut()
        if _listening(session.host, session.port):
            raise MeasurementError(f"{phase[0]}: the kernel took the server's session down ({text})")
        raise MeasurementLost(f"{session.server} is gone ({phase[0]}: {text})")

    # the workers ---------------------------------------------------------------------------------------------
    def _worker(self, worker: int, jobs: list, work: _Work, dog: _Watchdog, out: queue.Queue, bugs: list):
        session = None
        try:
            while work.wait_for_work():
                if session is not None and (session.cut or self._expiring(session)):
                    self._release(session, dog)
                    session = None
                if session is None:
                    got = self._open(worker, work, dog)
                    if got == "timeout":
                        return  # no server in request_timeout: leave the jobs to the others (or to lost)
                    if got == "idle":
                        continue
                    session = got
                i = work.take()
                if i is None:
                    continue
                job, t0, again, res = jobs[i], time.monotonic(), False, None
                try:
                    runs = self._run(worker, session, job, dog)
                    with self._lock:
                        self._longest = max(self._longest, time.monotonic() - t0)
                    res = Result(job.id, runs, None, False, session.server, work.attempts[i])
                except MeasurementError as e:
                    res = Result(job.id, None, str(e), False, session.server, work.attempts[i])
                except MeasurementLost as e:
                    server = session.server
                    self._release(session, dog)
                    session = None
                    again = work.attempts[i] < self.max_attempts
                    if not again:
                        res = Result(job.id, None, f"lost {work.attempts[i]} times, last: {e}", True, server,
                                     work.attempts[i])
                if res is not None:
                    out.put((i, res))
                work.done(i, again)
        except BaseException as e:  # a bug here: stop everything and raise it in the caller's thread
            bugs.append(e)
            work.halt()
        finally:
            if session is not None:
                self._release(session, dog)

    def measure_many(self, jobs: list, on_result=None) -> list[Result]:
        """Time every job, concurrently on the free servers; ``on_result(result)`` is called in this thread as
        each job finishes (lost ones included). Results come back in the order of ``jobs``."""
        jobs = list(jobs)
        if not jobs:
            return []
        n_workers = max(1, min(len(jobs), _free_servers(tracker_summary(self.tracker), self.key)))
        work, out, dog, bugs = _Work(len(jobs)), queue.Queue(), _Watchdog(), []
        dog.start()
        threads = [threading.Thread(target=self._worker, args=(w, jobs, work, dog, out, bugs), daemon=True,
                                    name=f"lowbit-rpc-{w}") for w in range(n_workers)]
        for t in threads:
            t.start()
        results: list = [None] * len(jobs)

        def record(i, res):
            results[i] = res
            if on_result is not None:
                on_result(res)

        got = 0
        try:
            while got < len(jobs) and not bugs:
                try:
                    i, res = out.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and out.empty():
                        break
                    continue
                got += 1
                record(i, res)
        except BaseException:  # on_result raised, or ^C: stop the workers now, drop what they were doing
            work.halt()
            dog.cut_all()
            raise
        finally:
            for t in threads:
                t.join()
            dog.stop.set()
        if bugs:
            raise bugs[0]
        while not out.empty():
            record(*out.get_nowait())
        for i, r in enumerate(results):
            if r is None:  # every worker gave up: no server for the key within request_timeout
                record(i, Result(jobs[i].id, None, f"no server for key {self.key!r} at {self.tracker} within "
                                 f"{self.request_timeout:g} s", True, "", work.attempts[i]))
        return results

    def measure(self, job: Job) -> list[float]:
        """Seconds per repeat of one job; raises MeasurementError or MeasurementLost."""
        res = self.measure_many([job])[0]
        if res.lost:
            raise MeasurementLost(res.error)
        if res.error is not None:
            raise MeasurementError(res.error)
        return res.runs_s


# -- the server -----------------------------------------------------------------------------------------------
def _session_child() -> None:
    """In a forked session child: die by SIGKILL with the listener thread that forked it, and by SIGTERM at once
    (the server's Python handler it inherits would only run once TVM's C++ loop returns: TVM's own kill at the
    session timeout would wait for the kernel to finish)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _harden_tvm_server() -> None:
    """Keep TVM's listener serving when a session child dies abnormally, and have session children die with it."""
    from tvm.rpc import server as tvm_server

    serving = tvm_server._serving  # the per-session function TVM's _listen_loop looks up at each connection
    if getattr(serving, "lowbit_guarded", False):
        return

    def guarded(sock, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            serving(sock, addr, opts, load_library)
        except RuntimeError as e:  # "Child process N exited unsuccessfully": TVM's listener would end here
            print(f"lowbit rpc-server: a session ended abnormally: {e}", file=sys.stderr, flush=True)
            workdir = os.getcwd()
            os.chdir(cwd)
            if workdir != cwd:
                shutil.rmtree(workdir, ignore_errors=True)
            sock.close()

    guarded.lowbit_guarded = True
    tvm_server._serving = guarded
    os.register_at_fork(after_in_child=_session_child)


def _listen(host: str, port: int, port_end: int, key: str, tracker_addr, silent: bool):
    from tvm.rpc.server import PopenRPCServerState

    try:
        return PopenRPCServerState(host, port, max(port_end, port + 1), False, tracker_addr, key, None, None,
                                   silent)
    except (OSError, ValueError) as e:
        raise LowbitError(f"the RPC server cannot listen on {host}:{port}..{port_end}: {e}") from None


def _registered(tracker: str, key: str, port: int) -> bool:
    try:
        servers = tracker_summary(tracker).get("server_info", [])
    except LowbitError:
        return False
    return any(s.get("key") == "server:" + key and int(s.get("addr", [None, -1])[1]) == port for s in servers)


def _end_children(state, psutil) -> None:
    """Refuse connections at once (session children hold copies of the listening socket), then end them."""
    try:
        state.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    kids = psutil.Process().children(recursive=True)
    for end in (psutil.Process.terminate, psutil.Process.kill):
        for k in kids:
            try:
                end(k)
            except psutil.NoSuchProcess:
                pass
        kids = psutil.wait_procs(kids, timeout=2)[1]


def serve(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
          on_ready=None, silent: bool = True):
    """Serve as a TVM RPC server registered with ``tracker`` (HOST:PORT) under ``key``, on the first free port of
    [port, port_end). Prints one line when registered, then ``on_ready(port)``. Never returns: SIGTERM or SIGINT
    ends the sessions' children and exits 0 (TVM's listener thread is no daemon: only an exit ends it)."""
    import traceback

    if not sys.platform.startswith("linux"):
        raise LowbitError("lowbit rpc-server runs on Linux only (it uses prctl and /proc)")
    if not key:
        raise LowbitError("an RPC server needs a key (the device type clients request from the tracker)")
    tracker_addr = parse_address(tracker)
    try:
        import psutil
    except ImportError:
        raise LowbitError("lowbit rpc-server needs psutil: pip install 'lowbit[rpc]'") from None
    wait_for_servers(tracker, key, 0, timeout=30)  # a tracker still starting is waited for; a dead one is an error
    from ..runtime.host import cpu_flags, enable_amx

    if {"amx_int8", "amx_bf16"} & cpu_flags():
        enable_amx()  # before any session forks: the children inherit the tile permission
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)  # TVM forks a session child; forkserver would lose AMX
    _harden_tvm_server()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    state = _listen(host, port, port_end, key, tracker_addr, silent)
    code = 1
    try:
        deadline = time.monotonic() + 30
        while not _registered(tracker, key, state.port) and not stop.wait(0.1):
            if time.monotonic() > deadline:
                print(f"lowbit rpc-server: not registered with the tracker {tracker} after 30 s; TVM keeps trying",
                      file=sys.stderr, flush=True)
                break
        print(f"lowbit rpc-server: serving key {key} on {host}:{state.port}, tracker {tracker}", flush=True)
        if on_ready is not None:
            on_ready(state.port)
        while not stop.wait(0.5):
            if not state.thread.is_alive():  # TVM's listener gave up (the tracker was away for over 60 s)
                print("lowbit rpc-server: TVM's listener stopped; starting it again", file=sys.stderr, flush=True)
                _end_children(state, psutil)
                state.sock.close()
                state = _listen(host, state.port, port_end, key, tracker_addr, silent)
        code = 0
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        _end_children(state, psutil)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main_rpc_server(argv=None) -> int:
    """``python -m lowbit.autotune.rpc --tracker HOST:PORT --key KEY [--host H] [--port P] [--port-end Q]``."""
    p = argparse.ArgumentParser(prog="python -m lowbit.autotune.rpc",
                                description="A TVM RPC server for lowbit's autotuner, registered with a tracker.")
    p.add_argument("--tracker", required=True, help="the RPC tracker, HOST:PORT")
    p.add_argument("--key", required=True, help="the device key clients ask the tracker for")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="the first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=9199, help="the end of the port range, exclusive (9199)")
    p.add_argument("--verbose", action="store_true", help="keep TVM's per-session log lines")
    a = p.parse_args(argv)
    try:
        serve(a.tracker, a.key, a.host, a.port, a.port_end, silent=not a.verbose)
    except LowbitError as e:
        print(f"lowbit: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


# -- helpers for tests and benchmarks -------------------------------------------------------------------------
class _GroupPopen(subprocess.Popen):
    """Signals go to the whole process group (TVM's tracker runs in a PopenWorker child that outlives it)."""

    def send_signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def start_tracker(host: str = "127.0.0.1", port: int = 9190, timeout: float = 60) -> subprocess.Popen:
    """``python -m tvm.exec.rpc_tracker --host H --port P`` in its own process group, once it answers; its
    ``terminate()``/``kill()`` reach the tracker's worker process too."""
    log = tempfile.TemporaryFile()
    proc = _GroupPopen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                        "--port-end", str(port + 1), "--silent"], stdout=log, stderr=subprocess.STDOUT,
                       start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            _tracker_socket((host, port), 2).close()
            log.close()  # (the tracker keeps its own handle)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    log.seek(0)
    tail = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()][-1:]
    raise LowbitError(f"the RPC tracker on {host}:{port} did not start within {timeout:g} s"
                      + (f": {tail[0].strip()}" if tail else ""))


def wait_for_servers(tracker: str, key: str, n: int, timeout: float) -> dict:
    """Wait until the tracker answers and has ``n`` free servers for ``key``; its summary, or a LowbitError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            summary, unreachable = tracker_summary(tracker), None
            if _free_servers(summary, key) >= n:
                return summary
        except LowbitError as e:
            unreachable = e
        if time.monotonic() > deadline:
            if unreachable is not None:
                raise LowbitError(f"{unreachable} (waited {timeout:g} s)")
            raise LowbitError(f"the tracker {tracker} has {_free_servers(summary, key)} free servers for key "
                              f"{key!r}, not {n}, after {timeout:g} s")
        time.sleep(0.1)


__all__ = ["Job", "Result", "MeasurementLost", "MeasurementError", "RPCMeasurer", "serve", "main_rpc_server",
           "start_tracker", "wait_for_servers", "tracker_summary", "parse_address"]

if __name__ == "__main__":
    from .._startup import keep_torch_from_tvm

    keep_torch_from_tvm()
    sys.exit(main_rpc_server())
