"""The canonical records every source yields and every sink takes: runs, their artifacts and
experiments; the tags importer writes; import keys.

`RunRecord` has plain fields, params already flattened to strings, metrics as Arrow columns
(METRIC_SCHEMA). Logged and registered models are in `model.models`, the manifest a user writes
in `model.manifest`, value rules in `model.values`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import pyarrow as pa

from .values import MAX_PARAM_VALUE_LENGTH

# Tags importer writes on every run it creates; `IMPORT_KEY_TAG` is how a run is found again.
IMPORT_KEY_TAG = "importer.import_key"
SOURCE_RUN_ID_TAG = "importer.source_run_id"  # a run moved from another MLflow store: its id there
LONG_PARAMS_TAG = "importer.long_params"  # params longer than the server keeps (see spill_long_params)
LONG_PARAMS_DIR = "importer/long_params"
DERIVED_TIMESTAMPS_TAG = "importer.derived_timestamps"
DERIVED_TIMESTAMPS_NOTE = "points without a timestamp have the run's start_time"  # the tag's value
INFINITE_VALUES_TAG = "importer.infinite_values"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # each server sets its own (the UI's view)

# System tags set from run fields; writing them under `tags` would contradict the field.
FIELD_TAGS = {
    "mlflow.runName": "name",
    "mlflow.user": "user",
    "mlflow.source.name": "source",
    "mlflow.note.content": "description",
    "mlflow.parentRunId": "parent",
}

_STORE_KEY_PREFIX = "mlflow-run-"


METRIC_SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("timestamp", pa.int64()),  # null: derive from the run's start time (see DERIVED_TIMESTAMPS_TAG)
    ("value", pa.float64()),
])
# MLflow 3 metric fields a table may carry after the three above (string, null where absent).
OPTIONAL_METRIC_FIELDS = ("model_id", "dataset_name", "dataset_digest")


def store_import_key(run_id: str) -> str:
    """The import key of a run that comes from another MLflow store (a server, an `mlruns/` folder,
    a bundle, an mlflow-export-import folder): its run id there. Run ids are UUIDs, so the same
    run reached by any of these paths lands on the same destination run."""
    return _STORE_KEY_PREFIX + run_id


def store_run_id(import_key: Optional[str]) -> Optional[str]:
    """The source run id inside a `store_import_key`, or None for any other key (a log file's)."""
    if import_key and import_key.startswith(_STORE_KEY_PREFIX):
        return import_key[len(_STORE_KEY_PREFIX):]
    return None


def derived_key(experiment: str, name: Optional[str], start_time: Optional[int]) -> str:
    """The import key of a manifest run without `id`: a hash of experiment, name and start time."""
    ident = json.dumps([experiment, name, start_time])
    return "auto-" + hashlib.sha256(ident.encode()).hexdigest()[:24]


@dataclass
class ArtifactFile:
    # A regular file, already checked to lie inside the folder the user named; a file on
    # another server (sources.server.RemoteArtifact), streamed from there; or bytes.
    source: Any
    dest: str  # relative posix path inside the run's artifact root


# On a model version importer registered from a run's artifacts: the run's import key and the
# artifact path, by which a rerun finds the version instead of making another.
MODEL_RUN_KEY_TAG = "importer.run_import_key"
MODEL_PATH_TAG = "importer.model_path"


@dataclass
class ModelToRegister:
    """A model version to register from the run's artifacts once the run is written."""

    name: str
    path: str  # a file or folder inside the run's artifacts
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # the version's
    description: Optional[str] = None


@dataclass
class RunRecord:
    """One run as every source yields it and every sink takes it."""

    experiment: str
    import_key: str
    origin: str  # where the run came from, for messages: `runs.json: runs[2]`
    name: Optional[str] = None
    start_time: Optional[int] = None  # ms since the epoch
    end_time: Optional[int] = None
    status: str = "FINISHED"
    user: Optional[str] = None
    description: Optional[str] = None
    source: Optional[str] = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, pa.Table] = field(default_factory=dict)  # key -> METRIC_SCHEMA table
    artifacts: list[ArtifactFile] = field(default_factory=list)
    parent_key: Optional[str] = None  # import key of a parent in the same import
    parent_run_id: Optional[str] = None  # an existing run on the destination
    # Runs moved from another MLflow store:
    source_run_id: Optional[str] = None  # its id there (tag SOURCE_RUN_ID_TAG, the ledger's id map)
    lifecycle: str = "active"  # "deleted": imported only with --include-deleted, then deleted
    experiment_tags: dict[str, str] = field(default_factory=dict)  # set on the experiment; the
    # experiment's description is its tag `mlflow.note.content`
    inputs: list[dict] = field(default_factory=list)  # dataset inputs, as runs/log-inputs takes them
    models: list[ModelToRegister] = field(default_factory=list)  # registered after the run is written
    # A source that reads metrics and artifacts only when a run is written (a server) sets `load`,
    # and `signature`: a hash standing for the content, so an unchanged run is skipped unread.
    signature: Optional[str] = None
    load: Optional[Callable[[], Awaitable[None]]] = field(default=None, repr=False)
    points_to_load: int = 0  # what `load` will bring, where the source knows it (a bundle)

    @property
    def point_count(self) -> int:
        if self.load is not None and not self.metrics:
            return self.points_to_load
        return sum(t.num_rows for t in self.metrics.values())

    def fingerprint(self) -> str:
        """A hash of everything that would be written, to skip runs that did not change."""
        h = hashlib.sha256()
        head = {k: v for k, v in self.__dict__.items()
                if k not in ("metrics", "artifacts", "origin", "load", "points_to_load")}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        if self.signature is not None:
            return h.hexdigest()
        for key in sorted(self.metrics):
            h.update(key.encode())
            for batch in self.metrics[key].to_batches():
                for col in batch.columns:
                    for buf in col.buffers():
                        if buf is not None:
                            h.update(buf)
        for a in self.artifacts:
            st = a.source.stat()
            h.update(f"{a.dest}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()


def spill_long_params(rec: RunRecord) -> None:
    """A param longer than the server keeps (a store written by another client may hold one) is
    never cut silently: the param keeps the first MAX_PARAM_VALUE_LENGTH characters, the whole
    value goes to the artifact `importer/long_params/<key>`, and the tag LONG_PARAMS_TAG lists
    the keys."""
    long = {k: v for k, v in rec.params.items() if len(v) > MAX_PARAM_VALUE_LENGTH}
    for k, v in long.items():
        rec.params[k] = v[:MAX_PARAM_VALUE_LENGTH]
        rec.artifacts.append(ArtifactFile(v.encode(), f"{LONG_PARAMS_DIR}/{k}"))
    if long:
        rec.tags[LONG_PARAMS_TAG] = ",".join(sorted(long))


# A run importer has created and not yet settled as its import key's run (see sinks.mlflow,
# `MlflowSink.settle`). The value names its maker: "<ms> <host> <pid> <nonce>". The tag is deleted
# once the run is settled; a run that gave way to another keeps it, in the trash.
PENDING_TAG = "importer.pending"


def oldest_run(runs: list[dict]) -> dict:
    """Of several copies of one run on a server (a REST `run` each), the one every importer picks,
    by a rule each process computes the same way: the first by (start time, run id). The start
    time is the source's, the same for every copy, so in effect the smallest run id wins.

    The one rule for: `find` among settled copies (two settled ones exist only if written before
    runs were settled), which of several pending copies stays while the others give way, and which
    copy `verify` compares."""
    return min(runs, key=lambda r: (int(r["info"]["start_time"]), r["info"]["run_id"]))


def is_pending(run: dict) -> bool:
    """Whether a run (a REST `run`) is a copy not settled: being decided, or one that gave way."""
    return any(t["key"] == PENDING_TAG for t in run["data"].get("tags", []))


@dataclass
class ExperimentRecord:
    name: str
    tags: dict[str, str] = field(default_factory=dict)  # the description is `mlflow.note.content`
    lifecycle: str = "active"  # or "deleted"
