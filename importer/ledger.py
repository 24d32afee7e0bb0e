"""The ledger: a small SQLite file saying what went where and how far each run got.

It records what this importer wrote to each server (keyed by the server's URL), and only after
the server took it: a run's progress once a batch landed, an artifact once its copy was verified,
a row `complete` once the run's status was set. A run is also findable by its import-key tag, so
a lost ledger costs time, not correctness. The sink (sinks/mlflow.py, `ledger_trust`) checks a
row's run on the server before writing to it, but believes the ledger without asking for:

- a row complete with the record's very fingerprint (and conflict policy) in the same experiment
  id: the run is reported `unchanged`, and not even looked up;
- once its run is found: the per-metric counts of points sent, where the points they cover are
  still the source's: the digest recorded with a count (of those first points, once a series was
  sent or compared whole) is the digest of the source's first points now, or, without one (a
  count saved batch by batch), the record is in the very state the row was begun in. A series
  whose first points changed is compared with the server's copy instead. Not believed: the
  counts of an import interrupted in another state of the record (batches may have landed
  beyond them, and the record changed since), nor of one that compared with the server (its row
  has no fingerprint until it completes), nor a run moved from another store in any other state
  than its row's;
- an artifact whose recorded hash matches the file: not downloaded to compare.

A server wiped or replaced under the same URL is noticed: the import makes the experiment anew,
and no row of an experiment it made is believed (sinks/mlflow.py `_locate`). A server restored
from a backup that still holds the experiment is not: a stale ledger, one ahead of such a server,
can leave runs, points or artifacts missing without a word. Delete the ledger, or point `--state`
at a new one, to have every run compared with the server again.

    runs       (server, experiment, import_key) -> run_id, experiment_id, fingerprint, complete
    progress   (run_id, metric) -> points of the source's series already stored, in source order,
               and a digest of those points (sinks.mlflow.SeriesDigest; null: counted batch by
               batch, in the row's state; COMPARE: to be compared with the server's copy)
    artifacts  (run_id, dest) -> sha256 of the uploaded, verified file
    errors     one row per failed run and attempt
    units      (server, experiment, path) -> what `scan` and `watch` last saw of a file or run
               folder: its format, a signature of its files (size, mtime_ns, inode), its state
               (imported, growing, failed, settling, empty, artifact), the last error (file, where, reason)
               and times. A unit whose signature is unchanged is not read again.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional

# The states of a unit (see `units`): imported; growing (imported while its files still change:
# its runs are RUNNING); failed (retried when its signature changes); settling (changed, waiting
# to be quiet); empty (recognised, but no run in it yet: a log with only its header); artifact (a
# file a manifest or store names as an artifact: no run of its own).
UNIT_STATES = ("imported", "growing", "failed", "settling", "empty", "artifact")

# A progress digest that matches no source: the series is compared with the server's copy on the
# next import. Its points were left changed at the source (on_metric_change `leave`).
COMPARE = "compare"


def default_path() -> Path:
    """`$XDG_STATE_HOME/importer/ledger.db`, else `~/.local/state/importer/ledger.db`."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "importer" / "ledger.db"


class Ledger:
    def __init__(self, path: Optional[Path] = None):
        import sqlite_utils  # here, not at import time: see cli.main about pandas

        path = Path(path) if path else default_path()
        if path.is_dir():
            path = path / "ledger.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite_utils.Database(path)
        # Several importers may share a ledger (cron and a manual run): wait instead of failing.
        self.db.execute("PRAGMA busy_timeout = 30000")
        self._enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        with self._writing():
            self._create()

    def _enable_wal(self, patience: float = 30.0) -> None:
        """Switch the file to WAL, waiting for other importers opening it at the same moment.
        The switch needs the file to itself, and SQLite answers "database is locked" at once,
        without waiting out busy_timeout, when two connections each hold a read lock and want it
        (measured: 5 of 480 openings by 8 processes at once failed before this loop)."""
        import random
        import sqlite3

        deadline = time.monotonic() + patience
        while True:
            try:
                self.db.enable_wal()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    @contextmanager
    def _writing(self):
        """A write transaction holding the write lock from its start. Several importers may share
        a ledger: a transaction that reads first (sqlite-utils reads the schema before it writes)
        cannot take the write lock once another process wrote meanwhile, and SQLite then answers
        "database is locked" at once instead of waiting out busy_timeout."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.conn.commit()

    def _create(self) -> None:
        self.db["runs"].create({
            "server": str, "experiment": str, "import_key": str, "run_id": str,
            "experiment_id": str, "fingerprint": str, "complete": int, "origin": str, "updated": float,
        }, pk=("server", "experiment", "import_key"), if_not_exists=True)
        self.db["progress"].create({"run_id": str, "metric": str, "sent": int, "digest": str},
                                   pk=("run_id", "metric"), if_not_exists=True)
        if "digest" not in self.db["progress"].columns_dict:  # a ledger older than the digests
            self.db["progress"].add_column("digest", str)
        self.db["artifacts"].create({"run_id": str, "dest": str, "sha256": str},
                                    pk=("run_id", "dest"), if_not_exists=True)
        self.db["errors"].create({"server": str, "experiment": str, "import_key": str,
                                  "origin": str, "message": str, "at": float}, if_not_exists=True)
        self.db["units"].create({
            "server": str, "experiment": str, "path": str, "format": str, "signature": str,
            "state": str, "runs": int, "error_file": str, "error_where": str, "error": str,
            "modified": float, "seen": float, "imported": float,
        }, pk=("server", "experiment", "path"), if_not_exists=True)

    def close(self) -> None:
        self.db.close()

    # -- runs ----------------------------------------------------------------------------------

    def run(self, server: str, experiment: str, key: str) -> Optional[dict]:
        """This is a read-only operation."""
        rows = list(self.db["runs"].rows_where(
            "server = ? and experiment = ? and import_key = ?", [server, experiment, key]))
        return rows[0] if rows else None

    def knows_experiment(self, server: str, experiment: str) -> bool:
        """Whether a run was imported into `experiment` on `server`. This is a read-only operation."""
        return self.db.execute("select 1 from runs where server = ? and experiment = ? limit 1",
                               [server, experiment]).fetchone() is not None

    def save_run(self, server: str, experiment: str, key: str, *, run_id: str, experiment_id: str,
                 origin: str, fingerprint: str = "", complete: bool = False) -> None:
        with self._writing():
            self.db["runs"].upsert({
                "server": server, "experiment": experiment, "import_key": key, "run_id": run_id,
                "experiment_id": experiment_id, "fingerprint": fingerprint, "complete": int(complete),
                "origin": origin, "updated": time.time()}, pk=("server", "experiment", "import_key"))

    def forget_run(self, server: str, experiment: str, key: str, run_id: str) -> None:
        """Drop what the ledger believed about a run the server no longer has."""
        with self._writing():
            self.db["runs"].delete_where("server = ? and experiment = ? and import_key = ?",
                                         [server, experiment, key])
            self.db["progress"].delete_where("run_id = ?", [run_id])
            self.db["artifacts"].delete_where("run_id = ?", [run_id])

    # -- progress ------------------------------------------------------------------------------

    def progress(self, run_id: str) -> dict[str, tuple[int, Optional[str]]]:
        """metric -> (points sent, their digest or None). This is a read-only operation."""
        return {r["metric"]: (r["sent"], r["digest"])
                for r in self.db["progress"].rows_where("run_id = ?", [run_id])}

    def save_progress(self, run_id: str, sent: Mapping[str, int],
                      digests: Mapping[str, Optional[str]] = {}) -> None:
        """Record points sent per metric; a metric without a digest in `digests` loses the one
        it had (it was of fewer points)."""
        with self._writing():
            self.db["progress"].upsert_all(
                [{"run_id": run_id, "metric": k, "sent": v, "digest": digests.get(k)} for k, v in sent.items()],
                pk=("run_id", "metric"))

    def artifact(self, run_id: str, dest: str) -> Optional[str]:
        """This is a read-only operation."""
        rows = list(self.db["artifacts"].rows_where("run_id = ? and dest = ?", [run_id, dest]))
        return rows[0]["sha256"] if rows else None

    def save_artifact(self, run_id: str, dest: str, sha256: str) -> None:
        with self._writing():
            self.db["artifacts"].upsert({"run_id": run_id, "dest": dest, "sha256": sha256},
                                        pk=("run_id", "dest"))

    def record_error(self, server: str, experiment: str, key: str, origin: str, message: str) -> None:
        with self._writing():
            self.db["errors"].insert({"server": server, "experiment": experiment, "import_key": key,
                                      "origin": origin, "message": message, "at": time.time()})

    # -- units (scan and watch) ----------------------------------------------------------------

    def units(self, server: str, experiment: str) -> dict[str, dict]:
        """path -> what a pass needs of a unit (format, signature, state, imported), for one server
        and --experiment; only those columns: a ledger of 100,000 units is held whole by a pass.
        This is a read-only operation."""
        return {r["path"]: r for r in self.db["units"].rows_where(
            "server = ? and experiment = ?", [server, experiment],
            select="path, format, signature, state, imported")}

    def all_units(self) -> list[dict]:
        """Every unit row, of every server. This is a read-only operation."""
        return list(self.db["units"].rows_where(order_by="server, experiment, path"))

    def save_units(self, rows: list[dict]) -> None:
        """Upsert unit rows (each with server, experiment and path) in one transaction."""
        if rows:
            with self._writing():
                self.db["units"].upsert_all(rows, pk=("server", "experiment", "path"))
