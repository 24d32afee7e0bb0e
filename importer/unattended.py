"""Running unattended: `scan` (one pass, for cron), `watch` (a daemon) and `status`.

Both drivers decide *when* to import *what*, and hand the work to the pipeline's readers and
writer (pipeline.read_inputs, pipeline.import_records): no parser or writer of their own.

A pass walks the folders (sources.discover), and for each unit (a file, or a run folder) computes
a signature of its files: size, modification time and inode of each. A unit whose signature is
the one in the ledger (`units` table) is not read again; a file unit is not even offered to the
sources' detection (discover's `known`). A changed or new unit is read alone: a bad one fails
alone, is recorded with its reason, and is retried only when its signature changes.

A unit whose files changed less than `finish_after` seconds ago is a run still training: its runs
are written RUNNING, without end time (state `growing`). Once quiet that long, the next pass
writes the status the source knows (else FINISHED) and the end time: the record's own, else its
last point's time, else the newest file's modification time. Growth after that reopens it
RUNNING. The sink sends only the points the server lacks, and sets status and end time last.

A lock (fcntl.flock on `<ledger>.lock`) lets one scan or watch at a time work on a ledger; the OS
drops it with its process, so a killed scan never blocks the next.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, NamedTuple, Optional

import pyarrow.compute as pc

from . import pipeline
from .errors import ConnectionFailed, ImporterError, InputError, ValidationError
from .ledger import UNIT_STATES, Ledger, default_path
from .mlflow_api import DEFAULT_CONFIG, ClientConfig, safe_url
from .model import RunRecord
from .sinks.mlflow import Outcome
from .sources import discover

# Exit code of a scan that found the ledger locked by another scan or watch (sysexits' EX_TEMPFAIL:
# cron may simply try again later).
EXIT_LOCKED = 75
DEFAULT_FINISH_AFTER = 30 * 60.0
DEFAULT_SETTLE = 5.0
BATCH_UNITS = 200  # units read, then written, at a time: memory bounded, progress saved as it goes


class LockHeld(ImporterError):
    """Another scan or watch holds the ledger's lock."""


class ScanLock:
    """An exclusive OS lock on `<ledger>.lock`, held while the object lives (a `with` block). The
    kernel releases it when the process ends however it ends, so no stale lock is ever left."""

    def __init__(self, ledger_path: Path):
        self.ledger = Path(ledger_path)
        self.path = Path(str(ledger_path) + ".lock")
        self._fd: Optional[int] = None

    def __enter__(self) -> "ScanLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(f"another importer scan or watch (pid {holder}) is working on the ledger "
                           f"{self.ledger}; try again when it is done") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


def _stat_sig(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def signature(unit: Path) -> tuple[str, float]:
    """(a signature of the unit's files, the newest modification time among them). A file: its
    size, mtime_ns and inode; a folder: a hash of those of every file in it, links not followed."""
    if not unit.is_dir():
        st = unit.stat()
        return _stat_sig(st), st.st_mtime
    h, newest = hashlib.sha1(), 0.0
    for folder, dirs, files in os.walk(unit):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:  # deleted while walked: the next pass sees the new state
                continue
            h.update(f"{os.path.relpath(path, unit)}\0{_stat_sig(st)}\0".encode())
            newest = max(newest, st.st_mtime)
    return h.hexdigest(), newest


# ---------------------------------------------------------------------------------------------
# One pass
# ---------------------------------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass did: the import summary of what it wrote, and per unit what it decided."""

    summary: pipeline.Summary
    units: dict[str, int] = field(default_factory=lambda: {
        "new": 0, "changed": 0, "unchanged": 0, "finished": 0, "settling": 0, "failed": 0,
        "failed_before": 0})  # failed in an earlier pass, unchanged since: not read again
    events: list[dict] = field(default_factory=list)  # one per unit acted on, for watch's log
    next_due: Optional[float] = None  # epoch seconds when a settling or growing unit is next due
    walk_seconds: float = 0.0  # of walking the folders and taking the signatures

    def to_dict(self) -> dict:
        return {**self.summary.to_dict(), "units": self.units}

    def text(self) -> str:
        u = self.units
        head = (f"units: {u['new']} new, {u['changed']} changed, {u['unchanged']} unchanged, "
                f"{u['finished']} finished, {u['settling']} settling, {u['failed']} failed")
        return self.summary.text() + "\n  " + head


def _due(p: Pass, when: float) -> None:
    p.next_due = when if p.next_due is None else min(p.next_due, when)


def scan_pass(paths: Iterable[pipeline.PathLike], uri: str, ledger: Ledger, *,
              experiment: Optional[str] = None, settle: float = 0.0,
              finish_after: float = DEFAULT_FINISH_AFTER, config: ClientConfig = DEFAULT_CONFIG,
              now: Optional[Callable[[], float]] = None) -> Pass:
    """Import the units of `paths` that are new or changed since the ledger last saw them, those
    quiet for `settle` seconds; finish those quiet for `finish_after`. The caller holds the lock."""
    clock = now or time.time
    walk_started = time.monotonic()
    server = safe_url(uri).rstrip("/")
    exp = experiment or ""
    known = ledger.units(server, exp)
    paths = [Path(p).absolute() for p in paths]  # the ledger's keys, from wherever it runs
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")

    statted: dict[Path, tuple[str, float]] = {}  # (signature, mtime) of the files stat()ed below

    def unchanged_format(file: Path) -> Optional[str]:
        row = known.get(str(file))
        if row is None or row["state"] not in ("imported", "growing", "empty"):
            return None
        try:
            st = file.stat()
        except OSError:
            return None
        statted[file] = _stat_sig(st), st.st_mtime  # the same file's unit: not stat()ed again
        return row["format"] if row["signature"] == statted[file][0] else None

    units, unknown = discover(paths, known=unchanged_format)
    result = Pass(pipeline.Summary(server=server, dry_run=False, title="Scanned into"))
    result.summary.unrecognised = [str(u) for u in unknown]
    todo: list[_Todo] = []
    waiting: list[dict] = []
    at = clock()
    for module, unit in units:
        try:
            sig, newest = statted.get(unit) or signature(unit)
        except OSError:  # gone since discovery
            continue
        row = known.get(str(unit))
        if row is not None and row["state"] == "artifact":  # a manifest's or store's file: no run
            continue
        if row is not None and row["signature"] == sig and row["state"] != "settling":
            if row["state"] == "growing" and at - newest >= finish_after:
                todo.append(_Todo(module, unit, sig, newest, True, row["state"]))
                result.units["finished"] += 1
                continue
            result.units["unchanged"] += 1
            if row["state"] == "growing":
                _due(result, newest + finish_after)
            elif row["state"] == "failed":
                result.units["failed_before"] += 1
            continue
        if at - newest < settle:
            result.units["settling"] += 1
            _due(result, newest + settle)
            if row is None or row["state"] != "settling" or row["signature"] != sig:
                waiting.append(_row(server, exp, _Todo(module, unit, sig, newest, False, None), "settling", at))
                result.events.append({"event": "settling", "unit": str(unit)})
            continue
        result.units["new" if row is None or not row["imported"] else "changed"] += 1
        todo.append(_Todo(module, unit, sig, newest, at - newest >= finish_after, row and row["state"]))
    ledger.save_units(waiting)
    result.walk_seconds = time.monotonic() - walk_started
    # Manifests and stores first, as read_inputs does: files they name as artifacts are no runs.
    todo.sort(key=lambda t: (t.module.NAME != "manifest", t.module.NAME != "mlruns"))
    artifacts: set[Path] = set()
    for start in range(0, len(todo), BATCH_UNITS):
        _import_batch(todo[start:start + BATCH_UNITS], uri, ledger, server, exp, experiment,
                      finish_after, config, result, clock, artifacts)
    if artifacts:
        result.summary.unrecognised = [u for u in result.summary.unrecognised if Path(u).resolve() not in artifacts]
    return result


class _Todo(NamedTuple):
    """A unit to read and write, and what the pass knows of it."""

    module: ModuleType
    unit: Path
    sig: str
    newest: float  # its newest file's modification time
    finished: bool  # quiet for finish_after: its runs get their end time and final status
    before: Optional[str]  # its state in the ledger until now


def _row(server: str, exp: str, todo: _Todo, state: str, at: float, runs: int = 0,
         error: Optional[tuple[str, str, str]] = None) -> dict:
    """The unit's ledger row: what became of it at `at`; `error`: (file, where, reason)."""
    file, where, reason = error or ("", "", "")
    row = {"server": server, "experiment": exp, "path": str(todo.unit), "format": todo.module.NAME,
           "signature": todo.sig, "state": state, "runs": runs, "error_file": file, "error_where": where,
           "error": reason, "modified": todo.newest, "seen": at}
    if state in ("imported", "growing", "empty"):
        row["imported"] = at
    return row


def _import_batch(batch, uri: str, ledger: Ledger, server: str, exp: str, experiment: Optional[str],
                  finish_after: float, config: ClientConfig, result: Pass, clock, artifacts: set[Path]) -> None:
    """Read each unit of `batch` alone (a bad one fails alone), then write all their runs in one
    import, and record in the ledger what became of each unit. `artifacts`: the files named as
    artifacts by the manifests and stores read so far in this pass (their rows say `artifact`)."""
    records: list[RunRecord] = []
    owners: list[int] = []  # per record, its unit's index in `batch`
    keys: dict[tuple[str, str], int] = {}  # (experiment, import key) -> the unit that has the run
    rows: dict[int, dict] = {}
    at = clock()
    for i, todo in enumerate(batch):
        module, unit = todo.module, todo.unit
        if unit.resolve() in artifacts:
            rows[i] = _row(server, exp, todo, "artifact", at)
            continue
        try:
            inputs = pipeline.read_inputs([unit], experiment, fmt=module.NAME, strict=False)
        except ImporterError as e:
            if isinstance(e, InputError) and str(e).startswith("no runs found"):
                rows[i] = _row(server, exp, todo, "empty", at)
                continue
            rows[i] = _failed(server, exp, todo, at, (str(unit), "", str(e)), result)
            continue
        if inputs.problems:
            first = inputs.problems[0]
            more = f" (and {len(inputs.problems) - 1} more problems)" if len(inputs.problems) > 1 else ""
            rows[i] = _failed(server, exp, todo, at, (first.file, first.location, first.message + more), result)
            continue
        if inputs.experiments or inputs.models or inputs.logged_models:
            # A store or bundle brings experiments and models besides runs: the whole import verb.
            row = _import_store(todo, uri, ledger, server, exp, experiment, config, result, at)
            if row is not None:
                rows[i] = row
            continue
        twice = [r for r in inputs.records if (r.experiment, r.import_key) in keys]
        if twice:  # two units would write one run (two manifests naming the same id)
            other = batch[keys[(twice[0].experiment, twice[0].import_key)]].unit
            rows[i] = _failed(server, exp, todo, at, (str(unit), "", f"run {twice[0].import_key!r} of experiment "
                                                      f"{twice[0].experiment!r} is also in {other}"), result)
            continue
        result.summary.notes += inputs.notes
        if module.NAME in ("manifest", "mlruns"):
            artifacts.update(a.source.resolve() for r in inputs.records for a in r.artifacts
                             if isinstance(a.source, Path) and not a.source.is_relative_to(unit))
        for rec in inputs.records:
            keys[(rec.experiment, rec.import_key)] = i
            _set_status(rec, todo.newest, todo.finished)
            records.append(rec)
            owners.append(i)
        if inputs.skipped:  # the runs go in without what these name; as `import`, a failure
            first = inputs.skipped[0]
            rows[i] = _failed(server, exp, todo, at, (first.file, first.location, first.message), result)
        else:
            rows[i] = _row(server, exp, todo, "imported" if todo.finished else "growing", at,
                           runs=len(inputs.records))
    if records:
        summary = pipeline.import_records(records, uri, state=ledger.path, config=config)
        _merge(result.summary, summary)
        for out, i in zip(summary.outcomes, owners):
            if out.action != "failed" or i not in rows:
                continue
            if _server_trouble(out):  # not the unit's fault: left as it was, tried again next pass
                del rows[i]
                continue
            rows[i] = _row(server, exp, batch[i], "failed", at, error=(out.origin, "", out.error or "failed"))
    for i, row in rows.items():
        if row["state"] == "failed":
            result.units["failed"] += 1
            result.events.append({"event": "failed", "unit": row["path"], "file": row["error_file"],
                                  "where": row["error_where"], "reason": row["error"]})
        elif row["state"] != "artifact":
            finished = batch[i].before == "growing" and row["state"] == "imported"
            result.events.append({"event": "finished" if finished else row["state"], "unit": row["path"],
                                  "runs": row["runs"]})
        if row["state"] == "growing":  # due again when it may have finished
            _due(result, batch[i].newest + finish_after)
    ledger.save_units(list(rows.values()))


def _server_trouble(out: Outcome) -> bool:
    """A run that failed because the server could not be reached, or kept answering 429 or 5xx."""
    return out.unreachable or out.retryable


def _merge(into: pipeline.Summary, summary: pipeline.Summary) -> None:
    into.outcomes += summary.outcomes
    into.seconds += summary.seconds
    into.requests += summary.requests
    into.retried += summary.retried
    into.notes += summary.notes


def _failed(server: str, exp: str, todo: _Todo, at: float, error: tuple[str, str, str], result: Pass) -> dict:
    """A unit that could not be read: in the summary as a failed run, and its ledger row."""
    file, where, reason = error
    result.summary.outcomes.append(Outcome(str(todo.unit), exp, "", action="failed",
                                           error=": ".join(x for x in (file, where, reason) if x)))
    return _row(server, exp, todo, "failed", at, error=error)


def _import_store(todo: _Todo, uri: str, ledger: Ledger, server: str, exp: str, experiment: Optional[str],
                  config: ClientConfig, result: Pass, at: float) -> Optional[dict]:
    """A store or bundle: imported by the import verb, with its experiments and models. None when
    the server could not be reached."""
    try:
        summary = pipeline.import_paths([todo.unit], uri, experiment=experiment, fmt=todo.module.NAME,
                                        state=ledger.path, config=config)
    except ValidationError as e:
        p = e.problems[0]
        return _failed(server, exp, todo, at, (p.file, p.location, p.message), result)
    except InputError as e:
        return _failed(server, exp, todo, at, (str(todo.unit), "", str(e)), result)
    _merge(result.summary, summary)
    if any(_server_trouble(o) for o in summary.failed):
        return None  # not the unit's fault: left as it was, tried again next pass
    if summary.failed:
        bad = summary.failed[0]
        return _row(server, exp, todo, "failed", at, error=(bad.origin, "", bad.error or ""))
    return _row(server, exp, todo, "imported", at, runs=len(summary.outcomes))


def _set_status(rec: RunRecord, newest: float, finished: bool) -> None:
    """RUNNING while the unit grows; once quiet, the source's status (RUNNING from a source that
    cannot tell means FINISHED) and an end time: the record's, its last point's, else the mtime."""
    if not finished:
        rec.status, rec.end_time = "RUNNING", None
        return
    if rec.status == "RUNNING":
        rec.status = "FINISHED"
    if rec.end_time is None:
        last = [pc.max(t.column("timestamp")).as_py() for t in rec.metrics.values() if t.num_rows]
        last = [t for t in last if t is not None]
        rec.end_time = max(last) if last else int(newest * 1000)


# ---------------------------------------------------------------------------------------------
# The verbs
# ---------------------------------------------------------------------------------------------


def scan(paths: Iterable[pipeline.PathLike], tracking_uri: Optional[str] = None, *,
         experiment: Optional[str] = None, state: Optional[pipeline.PathLike] = None,
         finish_after: float = DEFAULT_FINISH_AFTER, config: ClientConfig = DEFAULT_CONFIG) -> Pass:
    """One pass, under the ledger's lock: import what is new or changed since the last scan.
    Raises LockHeld when another scan or watch works on the same ledger."""
    uri = pipeline.tracking_uri_or_env(tracking_uri)
    ledger = pipeline.open_ledger(state)
    try:
        with ScanLock(ledger.path):
            result = scan_pass(paths, uri, ledger, experiment=experiment, finish_after=finish_after,
                               config=config)
    finally:
        ledger.close()
    if result.units["failed_before"]:
        result.summary.notes.append(f"{result.units['failed_before']} units failed in an earlier scan and "
                                    "are unchanged since: not read again (`importer status` lists them)")
    return result


def status(state: Optional[pipeline.PathLike] = None) -> dict:
    """What the ledger knows of the units scan and watch have seen: counts per state, and the
    failed, growing and settling units. This is a read-only operation: a ledger that does not
    exist yet is reported empty, not created."""
    path = Path(state) if state else default_path()
    exists = path.exists()
    rows = []
    if exists:
        ledger = pipeline.open_ledger(path)
        try:
            rows = ledger.all_units()
        finally:
            ledger.close()
    counts = {s: 0 for s in UNIT_STATES}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    keep = ("server", "experiment", "path", "format", "runs", "modified", "seen")
    listed = {s: [{k: r[k] for k in keep} for r in rows if r["state"] == s] for s in ("growing", "settling")}
    failed = [{**{k: r[k] for k in keep}, "file": r["error_file"], "where": r["error_where"],
               "reason": r["error"]} for r in rows if r["state"] == "failed"]
    return {"ledger": str(path), "exists": exists, "units": counts, "failed": failed, **listed}


def status_text(report: dict) -> str:
    c = report["units"]
    if not report["exists"]:
        return f"ledger {report['ledger']}: none yet (nothing scanned, watched or imported with it)"
    lines = [f"ledger {report['ledger']}",
             f"  units: {c['imported']} imported, {c['growing']} growing, {c['failed']} failed, "
             f"{c['settling']} settling, {c['empty']} with no run yet"]
    for r in report["growing"]:
        lines.append(f"  growing (RUNNING): {r['path']} (last change {_when(r['modified'])})")
    for r in report["settling"]:
        lines.append(f"  settling: {r['path']} (last change {_when(r['modified'])})")
    for r in report["failed"]:
        where = ": ".join(x for x in (r["file"], r["where"]) if x)
        lines.append(f"  FAILED {r['path']}: {where}: {r['reason']} (retried when it changes)")
    return "\n".join(lines)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------


class Log:
    """One line per event on stderr: `TIME EVENT key=value ...`, or a JSON object per line."""

    def __init__(self, as_json: bool = False, stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stderr

    def __call__(self, event: str, **fields) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.as_json:
            line = json.dumps({"time": stamp, "event": event, **fields})
        else:
            line = " ".join([stamp, event] + [f"{k}={v}" for k, v in fields.items() if v not in ("", None)])
        self.stream.write(line + "\n")
        self.stream.flush()


class Stopped(BaseException):
    """SIGTERM or SIGINT during an import: what is in flight is abandoned (the ledger and the
    server's import keys make the next start go on from there, without duplicates)."""


# Events that say a file was only read (our own passes make them): no change to look at.
_READ_ONLY_EVENTS = {"opened", "closed_no_write"}
POLL_DEFAULT = 5.0  # seconds between polls with --polling and no value, or when inotify fails
BACKOFF_MAX = 60.0
THROTTLE_MAX = 5.0  # seconds between passes at most, for the throttle (see _follow)
RESCAN_EVERY = 600.0  # a full pass even without events: the native observer may miss some (overflow)


def watch(paths: list[pipeline.PathLike], tracking_uri: Optional[str] = None, *,
          experiment: Optional[str] = None, state: Optional[pipeline.PathLike] = None,
          settle: float = DEFAULT_SETTLE, finish_after: float = DEFAULT_FINISH_AFTER,
          polling: Optional[float] = None, log: Optional[Log] = None,
          config: ClientConfig = DEFAULT_CONFIG, stop: Optional[threading.Event] = None) -> None:
    """Follow `paths` until SIGTERM or SIGINT (or `stop` is set): a catch-up pass at the start,
    then a pass whenever files changed, importing each unit once quiet for `settle` seconds."""
    log = log or Log()
    uri = pipeline.tracking_uri_or_env(tracking_uri)
    folders = [Path(p) for p in paths]
    for p in folders:
        if not p.is_dir():
            raise InputError(f"{p}: not a folder (watch follows folders)")
    stop = stop or threading.Event()
    woken = threading.Event()
    importing = [False]

    def on_signal(signum, frame) -> None:
        stop.set()
        woken.set()
        if importing[0]:
            importing[0] = False  # raised once: the unwinding must not be interrupted again
            raise Stopped()

    ledger = pipeline.open_ledger(state)
    lock = ScanLock(ledger.path)
    try:
        with lock:
            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            observer = _start_observer(folders, polling, woken, ledger.path, log)
            log("started", folders=",".join(map(str, folders)), server=safe_url(uri), settle=settle,
                finish_after=finish_after, observer=type(observer).__name__)
            try:
                _follow(folders, uri, ledger, experiment, settle, finish_after, config, log, stop, woken,
                        importing)
            except Stopped:
                log("stopping", reason="signal during an import: abandoned, resumed at the next start")
            finally:
                observer.stop()
                observer.join(timeout=5)
                for s, h in previous.items():
                    signal.signal(s, h)
    finally:
        ledger.close()
    log("stopped")


NATIVE_OBSERVER = None  # watchdog's best observer for this system, unless set (tests)


def _native():
    from watchdog.observers import Observer  # loaded by watch only: scan and status need none of it

    return Observer


def _start_observer(folders: list[Path], polling: Optional[float], woken: threading.Event,
                    ledger_path: Path, log: Log):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.polling import PollingObserver

    own = (str(ledger_path), str(ledger_path) + "-wal", str(ledger_path) + "-shm", str(ledger_path) + ".lock")

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.event_type not in _READ_ONLY_EVENTS and event.src_path not in own:
                woken.set()

    def started(observer):
        for folder in folders:
            observer.schedule(Wake(), str(folder), recursive=True)
        observer.start()
        return observer

    if polling is None:
        observer = (NATIVE_OBSERVER or _native())()
        try:
            return started(observer)
        except OSError as e:  # the inotify watch or instance limit, most often
            try:
                observer.stop()
            except Exception:
                pass
            log("observer-failed", reason=str(e), fallback=f"polling every {POLL_DEFAULT:g} s",
                hint="raise fs.inotify.max_user_watches (sysctl), or pass --polling")
            polling = POLL_DEFAULT
    return started(PollingObserver(timeout=polling))


def _follow(folders, uri, ledger, experiment, settle, finish_after, config, log: Log,
            stop: threading.Event, woken: threading.Event, importing: list) -> None:
    backoff = 0.0
    due: Optional[float] = None

    def back_off(event: str, **fields) -> None:
        """Log `event`, and wait twice as long as last time (1 s at first) before the next pass."""
        nonlocal backoff, due
        backoff = min(BACKOFF_MAX, max(1.0, backoff * 2))
        log(event, **fields, retry_in=f"{backoff:g}s")
        due = time.time() + backoff

    last_full = 0.0
    told: set[str] = set()  # files not recognised, logged once each
    took = 0.0  # seconds the last pass took
    woken.set()  # the catch-up pass
    while not stop.is_set():
        wait = RESCAN_EVERY - (time.monotonic() - last_full)
        if due is not None:
            wait = min(wait, due - time.time())
        woken.wait(timeout=max(0.0, wait))
        # Events come in bursts, and a pass walks every folder: a pass waits twice as long as the
        # last walk took (capped), so a log appended every second costs a folder of 100,000 files
        # a walk every few seconds, not one per line.
        if stop.wait(min(2 * took, THROTTLE_MAX)) or stop.is_set():
            return
        woken.clear()
        last_full = time.monotonic()
        importing[0] = True
        try:
            result = scan_pass(folders, uri, ledger, experiment=experiment, settle=settle,
                               finish_after=finish_after, config=config)
        except ConnectionFailed as e:
            back_off("server-unreachable", reason=str(e))
            continue
        except (ImporterError, OSError) as e:  # a folder gone, a ledger error: said, tried again
            back_off("error", reason=str(e))
            continue
        finally:
            importing[0] = False
        took = result.walk_seconds
        for event in result.events:
            log(**event)
        for path in result.summary.unrecognised:
            if path not in told:
                told.add(path)
                log("not-recognised", unit=path)
        unreachable = [o for o in result.summary.failed if _server_trouble(o)]
        if unreachable:
            back_off("server-unreachable", reason=unreachable[0].error, runs=len(unreachable))
            continue
        backoff = 0.0
        due = result.next_due
