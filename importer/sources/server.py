"""An MLflow tracking server as a source: experiments, runs and everything in them, MLflow 3
logged models and registered models, read through the REST API. Used by `export`, `migrate` and
`verify`. Everything here is a read-only operation.

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
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Optional

import pyarrow as pa

from ..errors import InputError, ServerError
from ..mlflow_api import MlflowApi, aliases, optional_int, pairs
from ..model import (EXPERIMENT_KIND_TAG, METRIC_SCHEMA, OPTIONAL_METRIC_FIELDS, SPECIAL_VALUES,
                     ArtifactFile, ExperimentRecord, LoggedModel, LoggedModelRecord, ModelMetric,
                     ModelOutput, ModelVersion, RegisteredModel, RunRecord, artifact_path, goes_with,
                     logged_model_id, store_import_key, store_run_id)

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


def experiment_record(exp: dict) -> ExperimentRecord:
    """An experiment as `experiments/search` gives it; its kind tag is each server's own."""
    tags = {k: v for k, v in pairs(exp.get("tags")).items() if k != EXPERIMENT_KIND_TAG}
    return ExperimentRecord(exp["name"], tags, exp.get("lifecycle_stage", "active"))


async def not_carried(api: MlflowApi, exps: list[dict]) -> list[str]:
    """Notes naming the selected experiments that hold traces, which no move carries. An MLflow 2
    server has none (nor the endpoint)."""
    notes = []
    for exp in exps:
        try:
            if (await api.call("traces", {"experiment_ids": exp["experiment_id"], "max_results": 1},
                               get=True)).get("traces"):
                notes.append(f"experiment {exp['name']!r} holds traces, which are not carried")
        except ServerError as e:
            if e.status != 404:
                raise
    return notes


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
    exp_tags = experiment_record(experiment).tags
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
        run_id = store_run_id(parent)


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
        return pa.array([SPECIAL_VALUES.get(v, v) if isinstance(v, str) else float(v) for v in values], pa.float64())


# -- MLflow 3 logged models ---------------------------------------------------------------------

def logged_model_record(m: dict) -> LoggedModelRecord:
    """A logged model as the REST API gives it (`logged-models/{id}`, `logged-models/search`)."""
    info, data = m["info"], m.get("data", {})
    return LoggedModelRecord(
        model_id=info["model_id"], experiment_id=info["experiment_id"], name=info.get("name", ""),
        model_type=info.get("model_type") or None, status=info.get("status", "LOGGED_MODEL_READY"),
        status_message=info.get("status_message") or None, source_run_id=info.get("source_run_id") or None,
        creation_timestamp_ms=info.get("creation_timestamp_ms"), params=pairs(data.get("params")),
        tags=pairs(info.get("tags")),
        metrics=[ModelMetric(key=p["key"], value=float(p.get("value", 0.0)), timestamp=int(p["timestamp"]),
                             step=int(p.get("step", 0)), run_id=p["run_id"],
                             dataset_name=p.get("dataset_name"), dataset_digest=p.get("dataset_digest"))
                 for p in data.get("metrics", []) if p.get("run_id")])


async def logged_models(api: MlflowApi, exps: list[dict], records: list[RunRecord], shard=None) -> list[LoggedModel]:
    """The logged models of the experiments `exps` that go with the runs `records` (see
    model.goes_with), with the runs' links to them and their artifact listing."""
    run_ids = {r.source_run_id for r in records}
    in_shard = Selection(shard=shard).in_shard
    out = []
    for exp in exps:
        found = [m async for m in api.search_logged_models(exp["experiment_id"])]
        uris = {m["info"]["model_id"]: m["info"]["artifact_uri"] for m in found}
        docs = {d.model_id: d for d in map(logged_model_record, found) if goes_with(d, run_ids, in_shard)}
        if not docs:
            continue
        # Outputs come with runs/search too, model inputs only with runs/get.
        for rec in records:
            if rec.experiment != exp["name"]:
                continue
            run = await api.get_run(rec.source_run_id) or {}
            for o in run.get("outputs", {}).get("model_outputs", []):
                if o["model_id"] in docs:
                    docs[o["model_id"]].outputs.append(ModelOutput(run_id=rec.source_run_id,
                                                                   step=int(o.get("step", 0))))
            for i in run.get("inputs", {}).get("model_inputs", []):
                if i["model_id"] in docs:
                    docs[i["model_id"]].inputs.append(rec.source_run_id)
        for doc in docs.values():
            uri = uris[doc.model_id]
            files = [ArtifactFile(RemoteArtifact(api, api.artifact_path(uri, f["path"]), f["file_size"]), f["path"])
                     async for f in api.list_artifact_tree(uri)]
            listing = sorted((f.dest, f.source.size) for f in files)
            doc.signature = "sig-" + hashlib.sha256(json.dumps(
                [doc.model_dump(mode="json", exclude={"signature"}), listing], sort_keys=True).encode()).hexdigest()
            out.append(LoggedModel(doc, exp["name"], files))
    return out


# -- registered models --------------------------------------------------------------------------


async def registered_models(api: MlflowApi, run_ids: Optional[set[str]] = None) -> list[RegisteredModel]:
    """Every registered model, or (with `run_ids`) those with a version from one of these runs."""
    models = []
    async for found in api.paged("registered-models/search", {"max_results": 1000}, "registered_models", get=True):
        # `get` has the aliases, which search results may lack
        m = (await api.call("registered-models/get", {"name": found["name"]}, get=True))["registered_model"]
        versions = await api.model_versions(m["name"])
        if run_ids is not None and not any(v.get("run_id") in run_ids for v in versions):
            continue
        versions.sort(key=lambda v: int(v["version"]))
        models.append(RegisteredModel(
            name=m["name"], description=m.get("description") or None, tags=pairs(m.get("tags")),
            aliases=aliases(m),
            versions=[ModelVersion(
                version=v["version"], run_id=v.get("run_id") or None, source=v.get("source", ""),
                model_id=logged_model_id(v),
                artifact_path=artifact_path(v.get("source", ""), v.get("run_id")),
                description=v.get("description") or None, tags=pairs(v.get("tags")),
                stage=v.get("current_stage") if v.get("current_stage") not in (None, "None") else None,
                status=v.get("status")) for v in versions]))
    return models
