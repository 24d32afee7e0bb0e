"""The worker: imports spooled jobs with the pipeline of `importer import`, one job per worker
thread at a time, and keeps the counters /metrics shows.

A job whose MLflow server cannot be reached stays queued and is tried again after RETRY_AFTER
seconds: it was accepted, so it is finished some day, not failed by an outage. Any other failure
ends the job as `failed`, with the summary naming what failed. Running a job twice (a crash after
its runs were written, before its result) creates nothing new: the import keys find the runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import pipeline
from ..errors import ConnectionFailed, ImporterError, ValidationError
from ..mlflow_api import ClientConfig
from ..model import RunRecord
from ..sources.manifest import ManifestReader
from .spool import Spool

RETRY_AFTER = 5.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def read_manifest(manifest: Path, base: Path, file: str) -> ManifestReader:
    """A received manifest, its artifact paths read against `base`: the job's uploaded files, or
    --artifacts-from for a manifest posted without parts."""
    with open(manifest, "rb") as f:
        return ManifestReader(f, manifest.stat().st_size, file, base)


@dataclass
class Counters:
    """What /metrics reports, for this process's life."""

    runs: dict[str, int] = field(default_factory=dict)  # by action: created, appended, ...
    points: int = 0
    artifacts: int = 0
    failures: int = 0  # jobs that ended failed
    retries: int = 0  # jobs put back because the MLflow server was unreachable
    # The MLflow server's answers to jobs' requests: a histogram of their seconds (LATENCY_BUCKETS).
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0


class Jobs:
    def __init__(self, spool: Spool, tracking_uri: str, *, state: Optional[Path] = None,
                 artifacts_from: Optional[Path] = None, workers: int = 2):
        self.spool = spool
        self.tracking_uri = tracking_uri
        self.state_path = state
        self.artifacts_from = artifacts_from
        self.workers = workers
        self.states: dict[str, str] = {}  # queued / running, for jobs this process has not finished
        self.finished = spool.count_finished()  # done / failed, in the spool: read once, then counted
        self.counters = Counters()
        self._queue: queue.Queue = queue.Queue()
        self._records: dict[str, list[RunRecord]] = {}  # read already when posted
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the queue ------------------------------------------------------------------------------

    def start(self) -> None:
        for job_id in self.spool.unfinished():  # accepted before a restart: finish them
            self.enqueue(job_id)
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"importer-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=60)

    def enqueue(self, job_id: str, records: Optional[list[RunRecord]] = None) -> None:
        with self._lock:
            self.states[job_id] = "queued"
            if records is not None:
                self._records[job_id] = records
        self._queue.put(job_id)

    def state(self, job_id: str) -> Optional[str]:
        with self._lock:
            return self.states.get(job_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            live = list(self.states.values())
            return {"queued": live.count("queued"), "running": live.count("running"), **self.finished}

    def waiter(self, job_id: str) -> asyncio.Future:
        """A future of the running loop, resolved when the job finishes (now, if it has)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if job_id in self.states:
                self._waiters.setdefault(job_id, []).append((loop, fut))
                return fut
        fut.set_result(None)
        return fut

    # -- the work -------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                self.states[job_id] = "running"
                records = self._records.pop(job_id, None)
            result = self._run(job_id, records)
            if result is None:  # the MLflow server is unreachable: again later
                with self._lock:
                    self.states[job_id] = "queued"
                    self.counters.retries += 1
                later = threading.Timer(RETRY_AFTER, self._queue.put, (job_id,))
                later.daemon = True  # the spool keeps the job: a stop need not wait for this
                later.start()
                continue
            self.spool.finish(job_id, result)
            with self._lock:
                del self.states[job_id]
                self.finished[result["state"]] += 1
                waiters = self._waiters.pop(job_id, [])
            for loop, fut in waiters:
                loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))

    def _observe(self, seconds: float) -> None:
        c = self.counters
        with self._lock:
            c.latency_sum += seconds
            c.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    c.latency_counts[i] += 1
                    break

    def _run(self, job_id: str, records: Optional[list[RunRecord]]) -> Optional[dict]:
        """The job's result, or None to try it again later."""
        try:
            if records is None:
                job = self.spool.jobs / job_id
                from_dir = self.spool.info(job_id)["artifacts"] == "artifacts-from"
                base = self.artifacts_from if from_dir and self.artifacts_from else job / "files"
                reader = read_manifest(job / "manifest.json", base, f"job {job_id}")
                if reader.problems:  # was valid when posted: its --artifacts-from files changed
                    raise ValidationError(reader.problems)
                records = reader.records
            summary = pipeline.import_records(records, self.tracking_uri, state=self.state_path,
                                              config=ClientConfig(observe=self._observe))
        except ConnectionFailed:
            return None
        except Exception as e:  # the job fails, the worker goes on with the next
            with self._lock:
                self.counters.failures += 1
            error = str(e) if isinstance(e, (ImporterError, OSError)) else f"{type(e).__name__}: {e}"
            return {"id": job_id, "state": "failed", "error": error, "summary": None, "runs": [],
                    "finished": int(time.time() * 1000)}
        if any(o.unreachable for o in summary.failed):
            return None
        with self._lock:
            c = self.counters
            for o in summary.outcomes:
                c.runs[o.action] = c.runs.get(o.action, 0) + 1
            c.points += summary.points
            c.artifacts += summary.artifacts
            c.failures += bool(summary.failed)
        runs = [{"import_key": o.import_key, "experiment": o.experiment, "action": o.action,
                 "run_id": o.run_id, "error": o.error,
                 "url": (f"{summary.server}/#/experiments/{o.experiment_id}/runs/{o.run_id}"
                         if o.run_id and o.experiment_id else None)} for o in summary.outcomes]
        return {"id": job_id, "state": "failed" if summary.failed or summary.changed else "done",
                "error": None, "summary": summary.to_dict(), "runs": runs,
                "finished": int(time.time() * 1000)}
