"""What every log-format source shares: how it reports, how it keys runs, how it names metrics.

A source is a module with

    NAME: str                                  # "keras", "lightning", ... (the --format value)
    def detect(path: Path) -> bool             # by content, cheap: a file or a folder
    def read(path: Path, options: SourceOptions) -> SourceResult

`read` never touches a server. It yields RunRecords (see importer/model.py) whose metrics are
METRIC_SCHEMA tables, and Problems for what it cannot use (file, line or row, column, rule).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from ..errors import Problem
from ..model import METRIC_SCHEMA, RunRecord, key_problem

DERIVED_STEPS_TAG = "importer.derived_steps"
RENAMED_METRICS_TAG = "importer.renamed_metrics"
_BAD_CHARS = re.compile(r"[^/\w.\- :]")


@dataclass
class SourceOptions:
    experiment: Optional[str] = None  # --experiment; a source may derive a default from the path
    step_column: Optional[str] = None  # generic tables
    time_column: Optional[str] = None
    key_prefix: str = ""
    patterns: list[str] = field(default_factory=list)  # text logs: regexes with named groups


@dataclass
class SourceResult:
    records: list[RunRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. renamed metric keys, for the report


def import_key(fmt: str, source_identity: str, run_identity: str = "") -> str:
    """`<format>-` + 24 hex digits of SHA-256 over the source's identity (its resolved path) and
    the run's identity within it. Not over content: a log that grows keeps its key."""
    digest = hashlib.sha256(f"{fmt}\0{source_identity}\0{run_identity}".encode()).hexdigest()[:24]
    return f"{fmt}-{digest}"


def safe_metric_key(key: str) -> str:
    """The documented mapping for metric names the server rejects: every character outside
    letters, digits, `_ - . / :` and space becomes `_`, repeated and edge slashes are collapsed
    (`val/AR@100` -> `val/AR_100`). Valid names are returned unchanged."""
    if key_problem(key, "metric") is None:
        return key
    mapped = _BAD_CHARS.sub("_", key)
    mapped = "/".join(p for p in mapped.split("/") if p not in ("", ".", "..")) or "_"
    return mapped[:250]


def metric_table(steps, values, timestamps=None) -> pa.Table:
    """A METRIC_SCHEMA table from three sequences or Arrow arrays (timestamps may hold nulls)."""
    n = len(steps)
    ts = pa.nulls(n, pa.int64()) if timestamps is None else timestamps
    return pa.table([pa.array(steps, pa.int64()), pa.array(ts, pa.int64()),
                     pa.array(values, pa.float64())], schema=METRIC_SCHEMA)
