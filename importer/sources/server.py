"""An MLflow tracking server as a source: experiments, runs and everything in them, read through
the REST API. Used by `export`, `migrate` and `verify`.

Runs come out in two steps, so that a rerun skips unchanged runs cheaply: `runs()` yields a
RunRecord skeleton per run from `runs/search` (info, params, tags, inputs, and a `signature` of
all that plus each metric's latest point), and `load()` fills in the metric histories, page by
page into Arrow columns, and the artifact listing.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Optional

import pyarrow as pa

from ..errors import InputError
from ..mlflow_api import MlflowApi, optional_int, pairs
from ..model import METRIC_SCHEMA, ArtifactFile, OPTIONAL_METRIC_FIELDS, RunRecord, store_import_key

_VALUES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
KEYS_AT_ONCE = 8  # metrics of one run read at once (within the client's limit of requests in flight)
PAGES_AHEAD = 4  # pages of up to 25,000 points (about 0.6 MB each) held per metric read ahead: at most
# 32 pages (about 20 MB) per run, whatever its size


@dataclass
class RemoteArtifact:
    """An artifact file on the source server, streamed through its artifact proxy."""

    api: MlflowApi
    url_path: str
    size: int


@dataclass(frozen=True)
class Selection:
    """Which runs to take: experiments by name (none: all), lifecycle, time, and a shard."""

    experiments: tuple[str, ...] = ()
    include_deleted: bool = False
    since: Optional[int] = None  # ms: runs started or ended at or after this
    shard: Optional[tuple[int, int]] = None  # (i, n), i from 1 to n

    def in_shard(self, root_run_id: str) -> bool:
        """A stable hash of the run's root run: a family of nested runs stays in one shard."""
        if self.shard is None:
            return True
        i, n = self.shard
        return int(hashlib.sha256(root_run_id.encode()).hexdigest()[:16], 16) % n == i - 1


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: I counts from 1 to N")
    return i, n


async def experiments(api: MlflowApi, selection: Selection) -> list[dict]:
    """The selected experiments; a name that does not exist is an InputError."""
    found = [e async for e in api.experiments(selection.include_deleted)]
    if not selection.experiments:
        return found
    by_name = {e["name"]: e for e in found}
    missing = [n for n in selection.experiments if n not in by_name]
    if missing:
        raise InputError(f"no experiment named {', '.join(map(repr, missing))} on {api.url}")
    return [by_name[n] for n in selection.experiments]


def signature(run: dict) -> str:
    """A hash of what `runs/search` says about a run: info, params, tags, inputs, and each metric's
    latest point. A run that gained points, tags or a new status gets another signature."""
    data = run.get("data", {})
    info = {k: v for k, v in run["info"].items() if k != "artifact_uri"}
    doc = [info, sorted(pairs(data.get("params")).items()), sorted(pairs(data.get("tags")).items()),
           sorted((m["key"], m.get("step"), m.get("timestamp"), str(m.get("value")))
                  for m in data.get("metrics", [])), run.get("inputs", {})]
    return "sig-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def skeleton(api: MlflowApi, run: dict, experiment: dict) -> RunRecord:
    """A RunRecord of everything `runs/search` returned; metrics and artifacts come with `load`."""
    info, data = run["info"], run.get("data", {})
    tags = pairs(data.get("tags"))
    parent = tags.pop("mlflow.parentRunId", None)
    run_id = info["run_id"]
    exp_tags = pairs(experiment.get("tags"))
    exp_tags.pop("mlflow.experimentKind", None)  # the destination sets its own
    rec = RunRecord(
        experiment=experiment["name"], import_key=store_import_key(run_id),
        origin=f"run {run_id}", name=info.get("run_name") or tags.get("mlflow.runName"),
        start_time=optional_int(info.get("start_time")), end_time=optional_int(info.get("end_time")),
        status=info.get("status", "FINISHED"), user=info.get("user_id") or None,
        params=pairs(data.get("params")), tags=tags,
        parent_key=store_import_key(parent) if parent else None,
        source_run_id=run_id, lifecycle=info.get("lifecycle_stage", "active"),
        experiment_tags=exp_tags, inputs=run.get("inputs", {}).get("dataset_inputs", []))
    rec.signature = signature(run)
    rec.load = ServerRun(api, rec, sorted({m["key"] for m in data.get("metrics", [])}),
                         info.get("artifact_uri", ""))
    return rec


async def runs(api: MlflowApi, selection: Selection) -> AsyncIterator[tuple[dict, RunRecord]]:
    """(experiment, skeleton) of the selected runs, experiment by experiment."""
    for exp in await experiments(api, selection):
        records = [skeleton(api, run, exp) async for run in
                   api.search_runs([exp["experiment_id"]], include_deleted=selection.include_deleted)]
        parents = {r.source_run_id: r.parent_key for r in records}  # before --since drops any
        for rec in records:
            recent = selection.since is None or max(rec.start_time or 0, rec.end_time or 0) >= selection.since
            if recent and selection.in_shard(_root(rec, parents)):
                yield exp, rec


def _root(rec: RunRecord, parents: dict[str, Optional[str]]) -> str:
    run_id, seen = rec.source_run_id, set()
    while True:
        parent = parents.get(run_id)
        if parent is None or run_id in seen:
            return run_id
        seen.add(run_id)
        run_id = parent.removeprefix("mlflow-run-")


@dataclass
class ServerRun:
    """The rest of a skeleton, read on demand: `await rec.load()` fills in every metric history
    and the artifact listing; `pages()` streams the histories instead (export)."""

    api: MlflowApi
    rec: RunRecord
    keys: list[str]
    artifact_uri: str

    async def __call__(self) -> None:
        self.rec.metrics = {key: await history(self.api, self.rec.source_run_id, key) for key in self.keys}
        self.rec.artifacts = await self.artifacts()

    async def pages(self) -> AsyncIterator[tuple[str, pa.Table]]:
        """(metric, page) for every history, metric after metric in name order (so a bundle's
        bytes do not depend on timing), while the next metrics are read ahead: read one page
        after another, a run keeps one server worker busy and the others idle, which is the
        whole export when it is one long run. `KEYS_AT_ONCE` metrics are read at once, each up
        to `PAGES_AHEAD` pages ahead of the consumer."""
        run_id, keys = self.rec.source_run_id, iter(self.keys)

        def read(key: str) -> tuple[str, asyncio.Queue, asyncio.Future]:
            queue: asyncio.Queue = asyncio.Queue(PAGES_AHEAD)

            async def reader() -> None:
                try:
                    async for table in history_pages(self.api, run_id, key):
                        await queue.put(table)
                    await queue.put(None)
                except Exception as e:  # handed to the consumer, raised there
                    await queue.put(e)
            return key, queue, asyncio.ensure_future(reader())

        window = deque(read(key) for key in itertools.islice(keys, KEYS_AT_ONCE))
        try:
            while window:
                key, queue, _ = window[0]
                while (table := await queue.get()) is not None:
                    if isinstance(table, BaseException):
                        raise table
                    yield key, table
                window.popleft()
                if (following := next(keys, None)) is not None:
                    window.append(read(following))
        finally:
            for _, _, task in window:
                task.cancel()

    async def artifacts(self) -> list[ArtifactFile]:
        out = []
        if self.artifact_uri:
            async for f in self.api.list_artifacts(self.rec.source_run_id):
                remote = RemoteArtifact(self.api, self.api.artifact_path(self.artifact_uri, f["path"]),
                                        f["file_size"])
                out.append(ArtifactFile(remote, f["path"]))
        return out


async def history(api: MlflowApi, run_id: str, key: str) -> pa.Table:
    """Every point of a metric as a METRIC_SCHEMA table (plus MLflow 3 fields where present)."""
    batches = [t async for t in history_pages(api, run_id, key)]
    if not batches:
        return METRIC_SCHEMA.empty_table()
    return pa.concat_tables(batches, promote_options="default")


async def history_pages(api: MlflowApi, run_id: str, key: str) -> AsyncIterator[pa.Table]:
    """A metric's points page by page, each a METRIC_SCHEMA table (plus MLflow 3 fields)."""
    async for page in api.metric_history_pages(run_id, key):
        if not page:
            continue
        cols = {"step": _int64s([m.get("step", 0) for m in page]),
                "timestamp": _int64s([m["timestamp"] for m in page]),
                "value": _doubles([m.get("value", 0.0) for m in page])}
        for name in OPTIONAL_METRIC_FIELDS:
            if any(name in m for m in page):
                cols[name] = pa.array([m.get(name) for m in page], pa.string())
        del page  # its dicts are ten times the table: not kept while the table waits in a queue
        yield pa.table(cols)


# Arrow converts a list of JSON numbers at C speed; only a page it refuses takes the per-point way.

def _int64s(values: list) -> pa.Array:
    try:
        return pa.array(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # an int64 sent as a string
        return pa.array([int(v) for v in values], pa.int64())


def _doubles(values: list) -> pa.Array:
    try:
        return pa.array(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # "NaN", "Infinity", "-Infinity"
        return pa.array([_VALUES.get(v, v) if isinstance(v, str) else float(v) for v in values], pa.float64())
