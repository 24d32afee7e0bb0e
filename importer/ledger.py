"""The ledger: a small SQLite file saying what went where and how far each run got.

It is a cache of the truth on the server, never the only copy: a run is always findable by its
import-key tag, so a lost or stale ledger costs time, not correctness.

    runs       (server, experiment, import_key) -> run_id, experiment_id, fingerprint, complete
    progress   (run_id, metric) -> points of the source's series already stored, in source order
    artifacts  (run_id, dest) -> sha256 of the uploaded, verified file
    errors     one row per failed run and attempt
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Optional

# The tables as sqlite-utils created them before: ledgers written by earlier versions still work.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS "runs" ("server" TEXT, "experiment" TEXT, "import_key" TEXT,
    "run_id" TEXT, "experiment_id" TEXT, "fingerprint" TEXT, "complete" INTEGER, "origin" TEXT,
    "updated" REAL, PRIMARY KEY ("server", "experiment", "import_key"));
CREATE TABLE IF NOT EXISTS "progress" ("run_id" TEXT, "metric" TEXT, "sent" INTEGER,
    PRIMARY KEY ("run_id", "metric"));
CREATE TABLE IF NOT EXISTS "artifacts" ("run_id" TEXT, "dest" TEXT, "sha256" TEXT,
    PRIMARY KEY ("run_id", "dest"));
CREATE TABLE IF NOT EXISTS "errors" ("server" TEXT, "experiment" TEXT, "import_key" TEXT,
    "origin" TEXT, "message" TEXT, "at" REAL);
"""


def default_path() -> Path:
    """`$XDG_STATE_HOME/importer/ledger.db`, else `~/.local/state/importer/ledger.db`."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "importer" / "ledger.db"


class Ledger:
    """Plain sqlite3 statements: progress is saved after every batch that lands, and
    sqlite-utils read the table's columns again on each upsert (and took 0.2 s to import)."""

    def __init__(self, path: Optional[Path] = None):
        path = Path(path) if path else default_path()
        if path.is_dir():
            path = path / "ledger.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.row_factory = sqlite3.Row
        # Several importers may share a ledger (cron and a manual run): wait instead of failing.
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        with self.db:
            self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- runs ----------------------------------------------------------------------------------

    def run(self, server: str, experiment: str, key: str) -> Optional[dict]:
        """This is a read-only operation."""
        row = self.db.execute("SELECT * FROM runs WHERE server = ? AND experiment = ? AND import_key = ?",
                              [server, experiment, key]).fetchone()
        return dict(row) if row else None

    def save_run(self, server: str, experiment: str, key: str, *, run_id: str, experiment_id: str,
                 origin: str, fingerprint: str = "", complete: bool = False) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO runs (server, experiment, import_key, run_id, "
                            "experiment_id, fingerprint, complete, origin, updated) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [server, experiment, key, run_id, experiment_id, fingerprint,
                             int(complete), origin, time.time()])

    def forget_run(self, server: str, experiment: str, key: str, run_id: str) -> None:
        """Drop what the ledger believed about a run the server no longer has."""
        with self.db:
            self.db.execute("DELETE FROM runs WHERE server = ? AND experiment = ? AND import_key = ?",
                            [server, experiment, key])
            self.db.execute("DELETE FROM progress WHERE run_id = ?", [run_id])
            self.db.execute("DELETE FROM artifacts WHERE run_id = ?", [run_id])

    # -- progress ------------------------------------------------------------------------------

    def progress(self, run_id: str) -> dict[str, int]:
        """This is a read-only operation."""
        rows = self.db.execute("SELECT metric, sent FROM progress WHERE run_id = ?", [run_id])
        return dict(rows.fetchall())

    def save_progress(self, run_id: str, sent: dict[str, int]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO progress (run_id, metric, sent) VALUES (?, ?, ?)",
                                [(run_id, k, v) for k, v in sent.items()])

    def artifact(self, run_id: str, dest: str) -> Optional[str]:
        """This is a read-only operation."""
        row = self.db.execute("SELECT sha256 FROM artifacts WHERE run_id = ? AND dest = ?",
                              [run_id, dest]).fetchone()
        return row[0] if row else None

    def save_artifact(self, run_id: str, dest: str, sha256: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO artifacts (run_id, dest, sha256) VALUES (?, ?, ?)",
                            [run_id, dest, sha256])

    def record_error(self, server: str, experiment: str, key: str, origin: str, message: str) -> None:
        with self.db:
            self.db.execute("INSERT INTO errors (server, experiment, import_key, origin, message, at) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [server, experiment, key, origin, message, time.time()])
