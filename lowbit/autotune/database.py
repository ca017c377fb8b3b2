"""The autotuning database: every measurement the tuner makes, kept crash-safe in one SQLite file.

Design:

* One row per measured candidate: (workload, target, knobs, versions) is unique, so re-measuring a candidate
  under the same lowbit/TVM versions is a no-op (``INSERT OR IGNORE``: the first measurement stays) while a
  new version set starts a fresh series (the old rows become ``stale``, never silently reused).
* Crash safety is the point. The file is in WAL mode with ``synchronous=FULL``: each ``add_batch`` is one
  ``BEGIN IMMEDIATE ... COMMIT`` transaction whose WAL frames are fsync'ed before it returns, so a process
  killed at any instant (SIGKILL, OOM, power loss) leaves every returned batch readable and no half batch.
  WAL also lets readers run while a tuner writes; ``busy_timeout`` makes two writers queue, not fail.
* Opening checks before trusting or touching a file: the SQLite header, ``PRAGMA quick_check``, the
  ``application_id`` and the ``meta`` table's magic and schema version. A foreign SQLite file is refused
  without being modified (the journal mode is switched to WAL only after it is known to be ours).
* JSON columns (target, knobs, versions) are re-canonicalised on the way in and in every lookup, so the
  unique key is immune to key order or spacing in what callers pass.
* A best record is never slower than its default: the tuner's choice for a kernel falls back to the default
  schedule when no candidate beat it (``best``). Lookups fall back from the exact target to its feature family.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, fields

from ..errors import LowbitError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4C42_5444  # "LBTD": lowbit tuning database, in the SQLite header
MAGIC = "lowbit-tuning-db"
BUSY_TIMEOUT_S = 30.0
STATUSES = ("ok", "build_error", "run_error")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (key TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    workload TEXT NOT NULL, target TEXT NOT NULL, family TEXT NOT NULL, knobs TEXT NOT NULL,
    status TEXT NOT NULL, latency_us REAL, versions TEXT NOT NULL, is_default INTEGER NOT NULL,
    runs_us TEXT NOT NULL, error TEXT NOT NULL, host TEXT NOT NULL, created REAL NOT NULL,
    UNIQUE (workload, target, knobs, versions));
CREATE INDEX IF NOT EXISTS records_by_target ON records (workload, target, versions);
CREATE INDEX IF NOT EXISTS records_by_family ON records (workload, family, versions);
"""
_COLS = "workload, target, family, knobs, status, latency_us, versions, is_default, runs_us, error, host, created"
_INSERT = f"INSERT OR IGNORE INTO records ({_COLS}) VALUES ({', '.join('?' * 12)})"
# ties go to the default, then to the first measured: a candidate must be strictly faster to win
_FASTEST = "ORDER BY latency_us, is_default DESC, id LIMIT 1"


@dataclass(frozen=True)
class Record:
    """One measurement of one candidate (knob values) of one workload on one target."""

    workload: str  # canonical workload key (opaque text to the DB)
    target: str  # canonical JSON text of the exact target (sorted keys)
    family: str  # the target's feature family text (opaque; lookups fall back to it)
    knobs: str  # canonical JSON text of the knob values, sorted keys; "{}" is the default
    status: str  # "ok" | "build_error" | "run_error"
    latency_us: float | None  # median latency in microseconds; only for "ok" (finite > 0 then)
    versions: str  # canonical JSON text {"lowbit": .., "tvm": .., "tvm_ffi": ..}
    is_default: bool = False
    runs_us: tuple[float, ...] = ()  # per-repeat latencies
    error: str = ""  # one line, for the error statuses
    host: str = ""  # who measured it (hostname or rpc key), informational
    created: float = 0.0  # time.time() when measured (0 -> filled in on insert)


def canonical_json(obj) -> str:
    """The one text form of a JSON value: sorted keys, no spaces (NaN/inf refused: they are not JSON)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _canon(text, what: str, need_object: bool = True) -> str:
    if not isinstance(text, str):
        raise LowbitError(f"{what} must be JSON text, got {type(text).__name__}")
    try:
        obj = json.loads(text)
    except ValueError:
        raise LowbitError(f"{what} is not valid JSON: {text[:80]!r}") from None
    if need_object and not isinstance(obj, dict):
        raise LowbitError(f"{what} must be a JSON object, got {text[:80]!r}")
    return canonical_json(obj)


def _finite(x, positive: bool) -> bool:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return ok and (x > 0 if positive else x >= 0)


def _row(r: Record, now: float) -> tuple:
    """A validated, canonicalised row for ``_INSERT``; LowbitError naming what is wrong."""
    if not isinstance(r, Record):
        raise LowbitError(f"tuning database takes Record objects, got {type(r).__name__}")
    for name in ("workload", "target", "family", "knobs", "status", "versions", "error", "host"):
        if not isinstance(getattr(r, name), str):
            raise LowbitError(f"tuning record field {name} must be text, got {type(getattr(r, name)).__name__}")
    what = f"tuning record of workload {r.workload[:60]!r}"
    if not r.workload:
        raise LowbitError("tuning record has an empty workload key")
    knobs = _canon(r.knobs, f"{what}: knobs")
    target = _canon(r.target, f"{what}: target", need_object=False)
    versions = _canon(r.versions, f"{what}: versions")
    if r.status not in STATUSES:
        raise LowbitError(f"{what}: status must be one of {', '.join(STATUSES)}, got {r.status!r}")
    if r.status == "ok" and not _finite(r.latency_us, positive=True):
        raise LowbitError(f"{what}: status 'ok' needs a finite latency_us > 0, got {r.latency_us!r}")
    if r.status != "ok" and r.latency_us is not None:
        raise LowbitError(f"{what}: status {r.status!r} must have latency_us None, got {r.latency_us!r}")
    runs = list(r.runs_us) if isinstance(r.runs_us, (tuple, list)) else [None]
    if not all(_finite(x, positive=False) for x in runs):
        raise LowbitError(f"{what}: runs_us must be finite latencies >= 0, got {runs[:8]!r}")
    if not _finite(r.created, positive=False):
        raise LowbitError(f"{what}: created must be a finite time, got {r.created!r}")
    error = " ".join(r.error.split())[:1000]  # tracebacks arrive multi-line; the DB keeps one line
    latency = float(r.latency_us) if r.status == "ok" else None
    is_default = bool(r.is_default) or knobs == "{}"
    return (r.workload, target, r.family, knobs, r.status, latency, versions, int(is_default),
            canonical_json([float(x) for x in runs]), error, r.host, float(r.created) or now)


def _record(row) -> Record:
    w, t, f, k, s, lat, v, d, runs, e, h, c = row
    return Record(w, t, f, k, s, lat, v, bool(d), tuple(json.loads(runs)), e, h, c)


def _check_info(info) -> dict[str, dict]:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise LowbitError(f"workload_info must be a dict of workload key -> dict, got {type(info).__name__}")
    for key, value in info.items():
        if not isinstance(key, str) or not key or not isinstance(value, dict):
            raise LowbitError(f"workload_info[{key!r}] must be a dict under a non-empty text key")
        if not isinstance(value.get("models", []), list):
            raise LowbitError(f"workload_info[{key!r}]['models'] must be a list")
        try:
            canonical_json(value)
        except (TypeError, ValueError) as e:
            raise LowbitError(f"workload_info[{key!r}] is not JSON-able: {e}") from None
    return info


def _merge_info(old: dict, new: dict) -> dict:
    merged = {**old, **new}
    if isinstance(old.get("models"), list) and "models" in new:
        merged["models"] = old["models"] + [m for m in new["models"] if m not in old["models"]]
    return merged


def _why(e: sqlite3.Error) -> str:
    msg = str(e)
    if "not a database" in msg:
        return "not a SQLite file, so not a lowbit tuning database"
    if "malformed" in msg or "corrupt" in msg:
        return f"corrupted tuning database ({msg})"
    if "locked" in msg or "busy" in msg:
        return f"tuning database is locked by another process ({msg} after {BUSY_TIMEOUT_S:g} s)"
    return msg


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return  # not every platform can open a directory; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Database:
    """A lowbit tuning database file; also a context manager that closes it."""

    def __init__(self, path, create: bool = True, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        if os.path.isdir(self.path):
            raise LowbitError(f"{self.path}: is a directory, not a tuning database")
        if not os.path.exists(self.path):
            if readonly or not create:
                raise LowbitError(f"{self.path}: no such tuning database")
        else:
            try:
                with open(self.path, "rb") as f:
                    head = f.read(16)
            except OSError as e:
                raise LowbitError(f"{self.path}: cannot read ({e.strerror})") from None
            # an empty file is what a crash right after creation leaves: SQLite treats it as a new database
            if head and head != b"SQLite format 3\x00":
                raise LowbitError(f"{self.path}: not a SQLite file, so not a lowbit tuning database")
        mode = "ro" if readonly else "rwc" if create else "rw"
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode={mode}"
        try:
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self._open(create)
        except sqlite3.Error as e:
            self.close()
            raise LowbitError(f"{self.path}: {_why(e)}") from None
        except LowbitError:
            self.close()
            raise

    def _open(self, create: bool) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        check = c.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise LowbitError(f"{self.path}: corrupted tuning database (quick_check: {check.splitlines()[-1]})")
        if self._is_blank():
            if self.readonly or not create:
                raise LowbitError(f"{self.path}: empty SQLite file, not a lowbit tuning database")
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("BEGIN IMMEDIATE")
            try:
                if self._is_blank():  # another process may have initialised it while we waited for the lock
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.executemany("INSERT INTO meta VALUES (?, ?)",
                                  [("magic", MAGIC), ("schema_version", str(SCHEMA_VERSION))])
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        self._check_ours()
        if not self.readonly:
            if c.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise LowbitError(f"{self.path}: cannot switch the tuning database to WAL mode")
        c.execute("PRAGMA synchronous = FULL")

    def _is_blank(self) -> bool:
        c = self._conn
        return (c.execute("PRAGMA application_id").fetchone()[0] == 0
                and c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0)

    def _check_ours(self) -> None:
        c = self._conn
        app = c.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise LowbitError(f"{self.path}: a SQLite file of another application (application_id {app:#x}), "
                              "not a lowbit tuning database")
        try:
            meta = dict(c.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            raise LowbitError(f"{self.path}: has no meta table, not a lowbit tuning database") from None
        if meta.get("magic") != MAGIC:
            raise LowbitError(f"{self.path}: meta table lacks the lowbit magic, not a lowbit tuning database")
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise LowbitError(f"{self.path}: bad schema_version {meta.get('schema_version')!r}") from None
        if version > SCHEMA_VERSION:
            raise LowbitError(f"{self.path}: tuning database schema version {version} is newer than this "
                              f"lowbit supports ({SCHEMA_VERSION}); upgrade lowbit")
        if version < 1:
            raise LowbitError(f"{self.path}: unknown tuning database schema version {version}")

    # -- context manager ---------------------------------------------------------------------------------
    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the last connection checkpoints the WAL into the main file
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LowbitError(f"{self.path}: tuning database is closed")
        return self._conn

    def _query(self, sql: str, args=()) -> list:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise LowbitError(f"{self.path}: {_why(e)}") from None

    # -- writing -----------------------------------------------------------------------------------------
    def add_batch(self, records: list[Record], workload_info: dict[str, dict] | None = None) -> int:
        """Add records in one durable transaction; returns how many were new (existing keys are kept)."""
        now = time.time()
        rows = [_row(r, now) for r in records]  # validate everything before writing anything
        return self._write(rows, _check_info(workload_info))

    def _write(self, rows: list[tuple], info: dict[str, dict]) -> int:
        if not rows and not info:
            return 0
        if self.readonly:
            raise LowbitError(f"{self.path}: tuning database is opened read-only")
        c = self._db()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                before = c.total_changes
                c.executemany(_INSERT, rows)
                new = c.total_changes - before
                c.executemany("INSERT OR IGNORE INTO workloads VALUES (?, '{}')", sorted({(r[0],) for r in rows}))
                for key, value in info.items():
                    old = c.execute("SELECT info FROM workloads WHERE key = ?", (key,)).fetchone()
                    merged = _merge_info(json.loads(old[0]) if old else {}, value)
                    c.execute("INSERT OR REPLACE INTO workloads VALUES (?, ?)", (key, canonical_json(merged)))
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise LowbitError(f"{self.path}: cannot write ({_why(e)})") from None
        return new

    # -- reading -----------------------------------------------------------------------------------------
    def has(self, workload: str, target: str, knobs: str, versions: str) -> bool:
        key = (workload, _canon(target, "target", False), _canon(knobs, "knobs"), _canon(versions, "versions"))
        return bool(self._query("SELECT 1 FROM records WHERE workload = ? AND target = ? AND knobs = ? "
                                "AND versions = ? LIMIT 1", key))

    def measured(self, workload: str, target: str, versions: str) -> dict[str, Record]:
        """Knobs text -> record (any status) of everything measured for this workload, target and versions."""
        return {r.knobs: r for r in self.records(workload, target, versions=versions, status=None)}

    def records(self, workload: str | None = None, target: str | None = None, family: str | None = None,
                versions: str | None = None, status: str | None = "ok") -> list[Record]:
        """Records matching every filter given (status None: any status), in insertion order."""
        where, args = [], []
        for col, value in (("workload", workload), ("target", target and _canon(target, "target", False)),
                           ("family", family), ("versions", versions and _canon(versions, "versions")),
                           ("status", status)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = f"SELECT {_COLS} FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_record(row) for row in self._query(sql, args)]

    def _default(self, workload: str, target: str, versions: str) -> Record | None:
        rows = self._query(f"SELECT {_COLS} FROM records WHERE workload = ? AND target = ? AND versions = ? "
                           "AND status = 'ok' AND is_default ORDER BY knobs != '{}', id LIMIT 1",
                           (workload, target, versions))
        return _record(rows[0]) if rows else None

    def best(self, workload: str, target: str, family: str, versions: str) -> tuple[Record | None, Record | None, str]:
        """(best ok record, the ok default record of the same target or None, "exact" | "family" | "none").

        The exact target is asked first, then any target of the same family (the fastest record there, with
        the default of that record's target). Only these exact versions count. A best that is not strictly
        faster than its default is replaced by the default."""
        target, versions = _canon(target, "target", False), _canon(versions, "versions")
        for how, col, value in (("exact", "target", target), ("family", "family", family)):
            rows = self._query(f"SELECT {_COLS} FROM records WHERE workload = ? AND {col} = ? AND versions = ? "
                               f"AND status = 'ok' {_FASTEST}", (workload, value, versions))
            if rows:
                top = _record(rows[0])
                default = self._default(workload, top.target, versions)
                if default is not None and top.latency_us >= default.latency_us:
                    top = default
                return top, default, how
        return None, None, "none"

    def stale(self, workload: str, target: str, versions: str | None = None) -> list[Record]:
        """Ok records of this workload and target measured under versions other than ``versions``.

        Without ``versions``, the current versions are taken to be those of the newest record of this workload
        and target, so everything measured under earlier version sets is stale."""
        target = _canon(target, "target", False)
        if versions is None:
            newest = self._query("SELECT versions FROM records WHERE workload = ? AND target = ? "
                                 "ORDER BY created DESC, id DESC LIMIT 1", (workload, target))
            if not newest:
                return []
            versions = newest[0][0]
        rows = self._query(f"SELECT {_COLS} FROM records WHERE workload = ? AND target = ? AND versions != ? "
                           "AND status = 'ok' ORDER BY id", (workload, target, _canon(versions, "versions")))
        return [_record(row) for row in rows]

    def workloads(self) -> dict[str, dict]:
        """Workload key -> info dict, for every workload that has records or info."""
        return {key: json.loads(info) for key, info in self._query("SELECT key, info FROM workloads ORDER BY key")}

    def summary(self) -> dict:
        """Counts, targets, version sets and per (workload, target, versions) the default vs best latency."""
        q = self._query
        total, ok = q("SELECT count(*), coalesce(sum(status = 'ok'), 0) FROM records")[0]
        targets = [{"target": t, "family": f, "records": n} for t, f, n in
                   q("SELECT target, family, count(*) FROM records GROUP BY target, family ORDER BY 3 DESC, 1")]
        group = "GROUP BY workload, target, versions"
        # SQLite returns the other bare columns from the row that holds the MIN()
        defaults = {(w, t, v): (lat, k) for w, t, v, k, lat in q(
            f"SELECT workload, target, versions, knobs, min(latency_us) FROM records "
            f"WHERE status = 'ok' AND is_default {group}")}
        best = []
        for w, t, v, k, lat in q(f"SELECT workload, target, versions, knobs, min(latency_us) FROM records "
                                 f"WHERE status = 'ok' {group}"):
            default_us, default_knobs = defaults.get((w, t, v), (None, None))
            if default_us is not None and lat >= default_us:
                lat, k = default_us, default_knobs
            best.append({"workload": w, "target": t, "versions": v, "default_us": default_us, "best_us": lat,
                         "speedup": default_us / lat if default_us is not None else None, "knobs": k})
        best.sort(key=lambda b: (b["speedup"] is None, -(b["speedup"] or 0.0), b["workload"], b["target"]))
        return {"path": self.path, "records": total, "ok": ok, "errors": total - ok,
                "workloads": q("SELECT count(*) FROM workloads")[0][0], "targets": targets,
                "versions": [v for (v,) in q("SELECT DISTINCT versions FROM records ORDER BY 1")], "best": best}

    # -- JSONL -------------------------------------------------------------------------------------------
    def export_jsonl(self, path) -> int:
        """Write every workload, then every record, as one JSON object per line; returns the record count."""
        path = os.fspath(path)
        c = self._db()
        c.execute("BEGIN")  # one snapshot for both tables, even while a tuner keeps writing
        try:
            infos = c.execute("SELECT key, info FROM workloads ORDER BY key").fetchall()
            rows = c.execute(f"SELECT {_COLS} FROM records ORDER BY id").fetchall()
        finally:
            c.execute("COMMIT")
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for key, info in infos:
                    f.write(json.dumps({"kind": "workload", "key": key, "info": json.loads(info)}) + "\n")
                for row in rows:
                    rec = asdict(_record(row))
                    f.write(json.dumps({"kind": "record", **rec}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(path)
        return len(rows)

    def import_jsonl(self, path) -> int:
        """Add the workloads and records of a JSONL export in one transaction; returns how many records were new.
        Any bad line refuses the whole file."""
        path = os.fspath(path)
        names = {f.name for f in fields(Record)}
        now, rows, info = time.time(), [], {}
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LowbitError(f"{path}: cannot read ({e})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise LowbitError(f"not JSON ({e})") from None
                kind = obj.pop("kind", None) if isinstance(obj, dict) else None
                if kind == "workload":
                    if set(obj) != {"key", "info"}:
                        raise LowbitError(f"a workload line needs exactly key and info, got {sorted(obj)}")
                    _check_info({obj["key"]: obj["info"]})
                    info[obj["key"]] = _merge_info(info.get(obj["key"], {}), obj["info"])
                elif kind == "record":
                    if not set(obj) <= names:
                        raise LowbitError(f"unknown record fields {sorted(set(obj) - names)}")
                    if not isinstance(obj.get("runs_us", []), list):
                        raise LowbitError("runs_us must be a list")
                    try:
                        rec = Record(**{**obj, "runs_us": tuple(obj.get("runs_us", ()))})
                    except TypeError:
                        raise LowbitError(f"a record line lacks fields {sorted(names - set(obj))}") from None
                    rows.append(_row(rec, now))
                else:
                    raise LowbitError('expected an object with "kind": "workload" or "record"')
            except LowbitError as e:
                raise LowbitError(f"{path}:{n}: {e}") from None
        return self._write(rows, info)


def merge(sources: list, out) -> dict:
    """Build a new tuning database at ``out`` holding every record and workload of ``sources`` (deduplicated by
    the unique key; the first source's measurement wins), atomically: it is built in ``out.tmp`` and renamed.
    Returns {"sources", "records_in", "records", "duplicates", "workloads"}."""
    out, sources = os.fspath(out), [os.fspath(s) for s in sources]
    if not sources:
        raise LowbitError("merge needs at least one source tuning database")
    if os.path.exists(out):
        if any(os.path.exists(s) and os.path.samefile(s, out) for s in sources):
            raise LowbitError(f"{out}: the merge output is also one of its sources; choose a new output file")
        if os.path.exists(out + "-wal"):
            # an old WAL next to the new file would be replayed into it; it means the old DB is still open
            raise LowbitError(f"{out}: in use by another process (has a -wal file); choose another output")
    tmp = out + ".tmp"
    for p in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
        if os.path.exists(p):
            os.unlink(p)  # left by an interrupted merge
    records_in = 0
    try:
        with Database(tmp) as db:
            for src in sources:
                with Database(src, create=False, readonly=True) as s:
                    recs, info = s.records(status=None), s.workloads()
                records_in += len(recs)
                db.add_batch(recs, info)
            counts = {"sources": len(sources), "records_in": records_in,
                      "records": db._query("SELECT count(*) FROM records")[0][0],
                      "workloads": len(db.workloads())}
            db._db().execute("PRAGMA journal_mode = DELETE")  # fold the WAL in: one self-contained file to rename
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        for p in (tmp, tmp + "-wal", tmp + "-shm"):
            if os.path.exists(p):
                os.unlink(p)
        raise
    _fsync_dir(out)
    counts["duplicates"] = records_in - counts["records"]
    return counts


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_summary(summary: dict, rows: int = 30) -> str:
    """Human text for ``lowbit tune-db show``: counts, targets, versions, then the widest speedups."""
    s = summary
    lines = [f"tuning database {s['path']}",
             f"  records    {s['records']} ({s['ok']} ok, {s['errors']} failed), {s['workloads']} workloads"]
    lines += [f"  versions   {v}" for v in s["versions"]] or ["  versions   (none)"]
    index = {t["target"]: i for i, t in enumerate(s["targets"], 1)}
    lines.append("  targets" + ("" if s["targets"] else "    (none)"))
    lines += [f"    [{i}] {_short(t['family'], 40)}  {t['records']} records  {_short(t['target'], 70)}"
              for i, t in enumerate(s["targets"], 1)]
    tuned = [b for b in s["best"] if b["speedup"] is not None]
    if not tuned:
        lines.append("  no kernel has both a default and a tuned measurement yet")
        return "\n".join(lines)
    lines.append(f"  best speedups over the default schedule ({min(rows, len(tuned))} of {len(tuned)}, widest first)")
    lines.append(f"    {'speedup':>8}  {'default_us':>11}  {'best_us':>11}  {'tgt':>4}  {'workload':<48}  knobs")
    for b in tuned[:rows]:
        lines.append(f"    {b['speedup']:>7.2f}x  {b['default_us']:>11.2f}  {b['best_us']:>11.2f}  "
                     f"{'[' + str(index.get(b['target'], '?')) + ']':>4}  {_short(b['workload'], 48):<48}  "
                     f"{_short(b['knobs'], 60)}")
    return "\n".join(lines)
