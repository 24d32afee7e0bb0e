"""The run manifest (format version 1) and the canonical run record every source yields.

The pydantic models below describe what a user writes; `schemas/run-manifest.schema.json` is generated
from them (`importer schema`). `RunRecord` is what sources produce and sinks consume: plain fields,
params already flattened to strings, metrics as Arrow columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Awaitable, Callable, Literal, Optional, Union

import pyarrow as pa
import pydantic
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Discriminator, Field, StrictFloat,
                      StrictInt, StrictStr, Tag, WrapValidator)
from pydantic_core import PydanticCustomError

# Tags importer writes on every run it creates; `IMPORT_KEY_TAG` is how a run is found again.
IMPORT_KEY_TAG = "importer.import_key"
SOURCE_RUN_ID_TAG = "importer.source_run_id"  # a run moved from another MLflow store: its id there
LONG_PARAMS_TAG = "importer.long_params"  # params longer than the server keeps (see spill_long_params)
LONG_PARAMS_DIR = "importer/long_params"
DERIVED_TIMESTAMPS_TAG = "importer.derived_timestamps"
INFINITE_VALUES_TAG = "importer.infinite_values"

# Limits the MLflow server enforces (mlflow/utils/validation.py, re-measured in tests/test_server_rules.py).
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")

# System tags set from run fields; writing them under `tags` would contradict the field.
_FIELD_TAGS = {
    "mlflow.runName": "name",
    "mlflow.user": "user",
    "mlflow.source.name": "source",
    "mlflow.note.content": "description",
    "mlflow.parentRunId": "parent",
}

_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# ---------------------------------------------------------------------------------------------
# The manifest as a user writes it
# ---------------------------------------------------------------------------------------------

def _one_error(message: str):
    """A wrap validator that turns a union's several branch errors into one plain message."""
    def wrap(value: Any, handler):
        try:
            return handler(value)
        except pydantic.ValidationError:
            raise PydanticCustomError("invalid", message + f", got {value!r}") from None
    return WrapValidator(wrap)


Timestamp = Annotated[
    Union[StrictInt, AwareDatetime],
    Field(description="Milliseconds since the epoch, or ISO 8601 with a UTC offset."),
    _one_error("must be milliseconds since the epoch (an integer) or ISO 8601 with a UTC offset"),
]
MetricValue = Annotated[
    Union[StrictInt, StrictFloat, Literal["NaN", "Infinity", "-Infinity"]],
    Field(description='A number, or one of the strings "NaN", "Infinity", "-Infinity".'),
    _one_error('must be a number or one of "NaN", "Infinity", "-Infinity"'),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_Strict):
    step: StrictInt
    value: MetricValue
    timestamp: Optional[Timestamp] = None


class Column:
    """A metric column the reader already converted to Arrow (see sources/jsondoc.py)."""

    def __init__(self, array: pa.Array | pa.ChunkedArray):
        self.array = array


def _converted(value: Any, handler):
    return value if isinstance(value, Column) else handler(value)


class Columns(_Strict):
    """A metric history as parallel arrays; `timestamp` may be left out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    step: Annotated[list[StrictInt], WrapValidator(_converted)]
    value: Annotated[list[MetricValue], WrapValidator(_converted)]
    timestamp: Annotated[Optional[list[Timestamp]], WrapValidator(_converted)] = None


def _metric_shape(v: Any) -> str:
    if isinstance(v, list):
        return "points"
    if isinstance(v, dict):
        return "columns"
    return "scalar"


Metric = Annotated[
    Union[
        Annotated[MetricValue, Tag("scalar")],
        Annotated[list[Point], Tag("points")],
        Annotated[Columns, Tag("columns")],
    ],
    Discriminator(_metric_shape),
]


class Artifact(_Strict):
    path: StrictStr = Field(description="A file or folder, relative to the manifest's folder.")
    dest: Optional[StrictStr] = Field(None, description="A folder inside the run's artifacts.")


class Run(_Strict):
    id: Optional[StrictStr] = Field(
        None, description="Import key, unique in the manifest; parents refer to it.")
    name: Optional[StrictStr] = None
    experiment: Optional[StrictStr] = None
    description: Optional[StrictStr] = None
    user: Optional[StrictStr] = None
    source: Optional[StrictStr] = None
    start_time: Optional[Timestamp] = None
    end_time: Optional[Timestamp] = None
    status: Literal["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"] = "FINISHED"
    params: dict[str, Any] = Field(
        default_factory=dict, description="Nested objects and lists are flattened to dotted keys.")
    tags: dict[str, StrictStr] = Field(default_factory=dict)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    parent: Optional[StrictStr] = Field(
        None, description="The `id` of another run in this manifest, or an existing MLflow run id.")
    runs: list["Run"] = Field(default_factory=list, description="Child runs of this run.")


class Manifest(_Strict):
    format_version: Literal[1]
    experiment: Optional[StrictStr] = None
    runs: list[Run]


def manifest_json_schema() -> dict:
    """The JSON Schema of a manifest document: a `Manifest`, or one `Run` naming its experiment."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(Union[Manifest, Run]).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "importer run manifest, format version 1"
    schema["description"] = (
        "Either {format_version: 1, experiment, runs: [RUN, ...]} or a single RUN object that names "
        "its experiment. A document with `format_version` is read as the first form.")
    return schema


# ---------------------------------------------------------------------------------------------
# The canonical record
# ---------------------------------------------------------------------------------------------

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
    return f"mlflow-run-{run_id}"


@dataclass
class ArtifactFile:
    # A regular file, already checked to lie inside the folder the user named; a file on
    # another server (sources.server.RemoteArtifact), streamed from there; or bytes.
    source: Any
    dest: str  # relative posix path inside the run's artifact root


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


# ---------------------------------------------------------------------------------------------
# Rules shared by every source
# ---------------------------------------------------------------------------------------------


def to_ms(ts: int | datetime) -> int:
    """Milliseconds since the epoch; an aware datetime is converted exactly (no float rounding)."""
    if isinstance(ts, datetime):
        return (ts - _EPOCH) // _MS
    return ts


def param_string(value: Any) -> str:
    """The canonical string of a param value: strings as they are, anything else as JSON writes it
    (`true`, `null`, `0.1`, `1e-05`, `[]`, `{}`)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested objects and lists to dotted keys: {"model": {"layers": [{"units": 8}]}} gives
    `model.layers.0.units = "8"`. Empty objects and lists keep their key with value `{}` / `[]`.
    Raises ValueError when two paths flatten to the same key."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        items = (value.items() if isinstance(value, dict)
                 else enumerate(value) if isinstance(value, list) else None)
        if items is None or not value:
            if key in out:
                raise ValueError(f"param {key!r} is given twice once nested keys are flattened")
            out[key] = param_string(value)
            return
        for k, v in items:
            walk(v, f"{key}.{k}" if key else str(k))

    for k, v in params.items():
        walk(v, f"{prefix}{k}")
    return out


def key_problem(key: str, what: str) -> Optional[str]:
    """Why the MLflow server would reject `key` as a metric, param or tag name, or None."""
    if not key:
        return f"{what} name is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"{what} name is {len(key)} characters long; the server allows {MAX_KEY_LENGTH}"
    if not _VALID_NAME.match(key):
        bad = "".join(sorted({c for c in key if not _VALID_NAME.match(c)}))
        return (f"{what} name {key!r} has characters the server rejects ({bad!r}); allowed are "
                "letters, digits, '_', '-', '.', '/', ':' and space")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        return f"{what} name {key!r} is not a plain relative path (the server rejects it)"
    return None


def value_problem(value: str, limit: int) -> Optional[str]:
    """Why a param or tag value cannot be written as it is, or None: longer than the server keeps
    (it would cut it silently), or holding a NUL character (PostgreSQL-backed servers refuse the
    write half-way through a run; no log or manifest holds one on purpose)."""
    if len(value) > limit:
        return f"value is {len(value)} characters long; the server allows {limit}"
    if "\0" in value:
        return (f"value holds a NUL character (\\x00) at position {value.index(chr(0))}; "
                "PostgreSQL-backed servers refuse it")
    return None


def derived_key(experiment: str, name: Optional[str], start_time: Optional[int]) -> str:
    """The import key of a manifest run without `id`: a hash of experiment, name and start time."""
    ident = json.dumps([experiment, name, start_time])
    return "auto-" + hashlib.sha256(ident.encode()).hexdigest()[:24]


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


def metric_value(v: Any) -> float:
    if isinstance(v, str):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[v]
    return float(v)
