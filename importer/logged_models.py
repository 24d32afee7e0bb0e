"""MLflow 3 logged models: read from a server with the runs linked to them, written to another
server (by `migrate`, and by `import` of a bundle), compared by `verify`. The bundle side is
bundle.BundleLoggedModel, which is also the record read here.

What moves: name, model type, status, params, tags, the source run (through the id map), the
artifacts (streamed, each checked by SHA-256 after upload), every metric point logged against the
model (key, step, timestamp, value, run, dataset name and digest), and the runs' links to it
(`outputs.model_outputs`, `inputs.model_inputs`). The server makes the model's id; the copy carries
the source id in the tag `importer.source_model_id`, set in the create call itself, so a rerun (or
a rerun after `kill -9` right after the create) finds the copy by a search instead of making a
second one. No ledger is needed.

A model goes with its source run: it moves when that run is part of the move (experiment,
`--since`, `--shard`, `--include-deleted`); one without a source run moves with its experiment
(with `--shard`, with the shard its id hashes to). Deleted logged models do not move: the server's
search never lists them.

A model's metric points reach the server only through `runs/log-batch` into their run with
`model_id` set; the server writes each point twice, into the run's history (where it drops a point
it already has: the run was moved before, so nothing is added there) and into the model's metrics.
So models are written after the runs, into the destination runs of the id map; a run deleted at
the source (already deleted on the destination) is restored for that and deleted again. Points and
links whose run is not part of the move (nor on the destination already) are named in a note.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from .bundle import BundleLoggedModel, BundleModelMetric, BundleModelOutput, sha256_file
from .errors import ImporterError, InputError, ServerError
from .mlflow_api import MAX_METRICS_PER_BATCH, MlflowApi, pairs, tag_filter
from .model import IMPORT_KEY_TAG, ArtifactFile, RunRecord, store_import_key

SOURCE_MODEL_TAG = "importer.source_model_id"
# Set by the server on a model when a registered version of it is made (and then rewritten with
# that version alone), so set again once the registered models are in: see `retag`.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
_PAGE = 100  # logged-models/search's default and usual page
# A logged model's status as the REST API names it, from what a store wrote: MLflow's number (a
# file store's meta.yaml) or its enum's value (mlflow-export-import's logged_model.json).
STATUSES = {0: "LOGGED_MODEL_STATUS_UNSPECIFIED", 1: "LOGGED_MODEL_PENDING", 2: "LOGGED_MODEL_READY",
            3: "LOGGED_MODEL_UPLOAD_FAILED"}
_ENUM = {"UNSPECIFIED": 0, "PENDING": 1, "READY": 2, "FAILED": 3}


@dataclass
class LoggedModel:
    """One logged model to write: its document, the experiment (by name) it goes to, and its
    artifacts (sources.server.RemoteArtifact or, from a bundle, local files with their SHA-256)."""

    doc: BundleLoggedModel
    experiment: str
    files: list[ArtifactFile] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # bundle: path -> SHA-256 in model.json


@dataclass
class RunMap:
    """Source run id -> destination run id, and which source runs are deleted there."""

    ids: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


# -- reading ----------------------------------------------------------------------------------


async def search(api: MlflowApi, experiment_id: str, filter_string: str = "") -> AsyncIterator[dict]:
    """The experiment's (active) logged models, page by page. An MLflow 2 server has none."""
    token = None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": _PAGE}
        if filter_string:
            body["filter"] = filter_string
        if token:
            body["page_token"] = token
        try:
            page = await api.call("logged-models/search", body)
        except ServerError as e:
            if e.status == 404:
                return
            raise
        for m in page.get("models", []):
            yield m
        token = page.get("next_page_token")
        if not token:
            return


def from_rest(m: dict) -> BundleLoggedModel:
    info, data = m["info"], m.get("data", {})
    return BundleLoggedModel(
        model_id=info["model_id"], experiment_id=info["experiment_id"], name=info.get("name", ""),
        model_type=info.get("model_type") or None, status=info.get("status", "LOGGED_MODEL_READY"),
        status_message=info.get("status_message") or None, source_run_id=info.get("source_run_id") or None,
        creation_timestamp_ms=info.get("creation_timestamp_ms"), params=pairs(data.get("params")),
        tags=pairs(info.get("tags")),
        metrics=[BundleModelMetric(key=p["key"], value=float(p.get("value", 0.0)), timestamp=int(p["timestamp"]),
                                   step=int(p.get("step", 0)), run_id=p["run_id"],
                                   dataset_name=p.get("dataset_name"), dataset_digest=p.get("dataset_digest"))
                 for p in data.get("metrics", []) if p.get("run_id")])


def status_name(value) -> Optional[str]:
    """The REST name of a stored status (see STATUSES), or None when it is none of them."""
    if isinstance(value, str) and value in STATUSES.values():
        return value
    number = _ENUM.get(value) if isinstance(value, str) else value
    return STATUSES.get(number) if type(number) is int else None


def stored_value(value: float) -> float:
    """A model point's value as the server keeps it (NaN as 0.0, +-Infinity as +-1.797e308: the
    run side's rule, sinks.mlflow._stored_value, but for NaN), so that a point read from a store
    compares equal with its copy; the run keeps NaN (`_nan_back`)."""
    from .sinks.mlflow import _stored_value

    stored = _stored_value(value)
    return 0.0 if stored == "NaN" else stored


def goes_with(doc: BundleLoggedModel, run_ids: set[str], shard=None) -> bool:
    """Whether a model is part of a move of the runs `run_ids` (see the module's docstring)."""
    if doc.source_run_id:
        return doc.source_run_id in run_ids
    from .sources.server import Selection
    return Selection(shard=shard).in_shard(doc.model_id)


async def read(api: MlflowApi, exps: list[dict], records: list[RunRecord], shard=None) -> list[LoggedModel]:
    """The logged models of the experiments `exps` that go with the runs `records`, with the
    runs' links to them and their artifact listing. This is a read-only operation."""
    from .sources.server import RemoteArtifact

    run_ids = {r.source_run_id for r in records}
    out = []
    for exp in exps:
        found = [m async for m in search(api, exp["experiment_id"])]
        uris = {m["info"]["model_id"]: m["info"]["artifact_uri"] for m in found}
        docs = {d.model_id: d for d in map(from_rest, found) if goes_with(d, run_ids, shard)}
        if not docs:
            continue
        # Outputs come with runs/search too, model inputs only with runs/get.
        for rec in records:
            if rec.experiment != exp["name"]:
                continue
            run = await api.get_run(rec.source_run_id) or {}
            for o in run.get("outputs", {}).get("model_outputs", []):
                if o["model_id"] in docs:
                    docs[o["model_id"]].outputs.append(BundleModelOutput(run_id=rec.source_run_id,
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


# -- writing ----------------------------------------------------------------------------------


async def run_map(dest: MlflowApi, outcomes: list, records: list[RunRecord],
                  models: list[LoggedModel]) -> RunMap:
    """Where the runs the models refer to are on the destination: the runs this move wrote
    (`outcomes`, sinks.mlflow.Outcome), else found by their import key (moved earlier, or by
    another shard)."""
    found = RunMap()
    for o in outcomes:
        if o.run_id and o.import_key.startswith("mlflow-run-") and o.action != "failed":
            found.ids[o.import_key.removeprefix("mlflow-run-")] = o.run_id
    found.deleted = {r.source_run_id for r in records if r.lifecycle == "deleted"}
    failed = {o.import_key.removeprefix("mlflow-run-") for o in outcomes if o.action == "failed"}
    for m in models:
        wanted = {p.run_id for p in m.doc.metrics} | {o.run_id for o in m.doc.outputs} | set(m.doc.inputs)
        wanted |= {m.doc.source_run_id} if m.doc.source_run_id else set()
        missing = wanted - set(found.ids) - failed
        exp = await dest.experiment_by_name(m.experiment) if missing else None
        for run_id in missing if exp else ():
            key = store_import_key(run_id)
            async for run in dest.search_runs([exp["experiment_id"]], tag_filter(IMPORT_KEY_TAG, key),
                                              include_deleted=True):
                if pairs(run["data"].get("tags")).get(IMPORT_KEY_TAG) == key:
                    found.ids.setdefault(run_id, run["info"]["run_id"])
    return found


async def copy(dest: MlflowApi, models: list[LoggedModel], outcomes: list,
               records: list[RunRecord]) -> tuple[dict[str, str], list[str], list]:
    """Write the models that go with the runs `records` an import or migration just wrote (their
    `outcomes`); see `write`."""
    chosen = [m for m in models if goes_with(m.doc, {r.source_run_id for r in records if r.source_run_id})]
    return await write(dest, chosen, await run_map(dest, outcomes, records, chosen))


async def write(dest: MlflowApi, models: list[LoggedModel], runs: RunMap) -> tuple[dict[str, str], list[str], list]:
    """Create or complete each model on the destination. Returns (source model id -> destination
    model id, notes, a failed sinks.mlflow.Outcome per model that could not be written)."""
    from .sinks.mlflow import Outcome

    ids: dict[str, str] = {}
    notes: list[str] = []
    failed: list = []
    made = Counter()
    copies: dict[str, dict[str, dict]] = {}  # experiment -> source id -> destination model
    for m in models:
        where = f"logged model {m.doc.name!r} ({m.doc.model_id})"
        try:
            exp = await dest.experiment_by_name(m.experiment)
            if exp is None:
                raise ServerError(f"experiment {m.experiment!r} is not on the destination", url=dest.url)
            if m.experiment not in copies:
                copies[m.experiment] = await _copies(dest, exp["experiment_id"])
            ids[m.doc.model_id], action = await _write_one(dest, m, exp["experiment_id"],
                                                           copies[m.experiment].get(m.doc.model_id), runs, notes)
            made[action] += 1
        except (ImporterError, OSError) as e:  # this model only; the others go on
            failed.append(Outcome(where, m.experiment, f"logged-model-{m.doc.model_id}", action="failed",
                                  error=str(e)))
    if models:
        made["failed"] = len(failed)
        notes.append("logged models: " + ", ".join(f"{n} {a}" for a, n in sorted(made.items()) if n))
    return ids, notes, failed


async def retag(dest: MlflowApi, models: list[LoggedModel], ids: dict[str, str]) -> None:
    """Give each written model its source's MODEL_VERSIONS_TAG again, after the registered models
    were written (the server rewrote it)."""
    for m in models:
        value = m.doc.tags.get(MODEL_VERSIONS_TAG)
        if value is None or m.doc.model_id not in ids:
            continue
        model_id = ids[m.doc.model_id]
        info = (await dest.call(f"logged-models/{model_id}", get=True))["model"]["info"]
        if pairs(info.get("tags")).get(MODEL_VERSIONS_TAG) != value:
            await dest.request("PATCH", f"/api/2.0/mlflow/logged-models/{model_id}/tags",
                               json={"model_id": model_id, "tags": [{"key": MODEL_VERSIONS_TAG, "value": value}]})


async def _copies(dest: MlflowApi, exp_id: str) -> dict[str, dict]:
    """The experiment's models importer made, by source id; the first made should a race ever
    have made two (verify reports the second)."""
    found: dict[str, dict] = {}
    async for m in search(dest, exp_id):
        src = pairs(m["info"].get("tags")).get(SOURCE_MODEL_TAG)
        if src and (src not in found or _made_before(m, found[src])):
            found[src] = m
    return found


def _made_before(a: dict, b: dict) -> bool:
    key = lambda m: (int(m["info"].get("creation_timestamp_ms") or 0), m["info"]["model_id"])  # noqa: E731
    return key(a) < key(b)


async def _find(dest: MlflowApi, exp_id: str, source_id: str) -> Optional[dict]:
    return (await _copies(dest, exp_id)).get(source_id)


async def _write_one(dest: MlflowApi, m: LoggedModel, exp_id: str, copy: Optional[dict], runs: RunMap,
                     notes: list[str]) -> tuple[str, str]:
    """Write one model; returns (its destination id, created | completed | unchanged)."""
    from .sinks.mlflow import upload_verified

    doc = m.doc
    for f in m.files:  # a bundle's file changed in place fails the model before any write
        if f.dest in m.digests and sha256_file(f.source) != m.digests[f.dest]:
            raise InputError(f"{f.source}: does not match its SHA-256 in model.json (changed or "
                             "corrupt); nothing of this logged model was written")
    source_run = runs.ids.get(doc.source_run_id) if doc.source_run_id else None
    if doc.source_run_id and source_run is None:
        raise ImporterError(f"its source run {doc.source_run_id} was not written")
    action = "unchanged"
    if copy is None:
        body = {"experiment_id": exp_id, "name": doc.name,
                "params": [{"key": k, "value": v} for k, v in doc.params.items()],
                "tags": [{"key": k, "value": v} for k, v in doc.tags.items()]
                + [{"key": SOURCE_MODEL_TAG, "value": doc.model_id}]}
        if doc.model_type:
            body["model_type"] = doc.model_type
        if source_run:
            body["source_run_id"] = source_run
        copy = await dest.create_once("logged-models", body, "model", lambda: _find(dest, exp_id, doc.model_id))
        action = "created"
    info, model_id = copy["info"], copy["info"]["model_id"]
    url = f"logged-models/{model_id}"
    have = pairs(copy.get("data", {}).get("params"))
    if params := [{"key": k, "value": v} for k, v in doc.params.items() if k not in have]:
        await dest.call(f"{url}/params", {"model_id": model_id, "params": params})
    stored_tags = pairs(info.get("tags"))
    if tags := [{"key": k, "value": v} for k, v in doc.tags.items() if stored_tags.get(k) != v]:
        await dest.request("PATCH", f"/api/2.0/mlflow/{url}/tags", json={"model_id": model_id, "tags": tags})
    # A file of another size than the source's is an upload cut short: sent again. Each upload
    # is checked by its hash.
    stored = {f["path"]: f["file_size"] async for f in dest.list_artifact_tree(info["artifact_uri"])}
    sent = [await upload_verified(dest, info["artifact_uri"], f) for f in m.files
            if stored.get(f.dest) != _size(f.source)]
    points = await _links(dest, m, model_id, copy, runs, notes)
    if info.get("status") != doc.status:
        await dest.request("PATCH", f"/api/2.0/mlflow/{url}", json={"model_id": model_id, "status": doc.status})
    if action == "unchanged" and (params or tags or sent or points):
        action = "completed"
    return model_id, action


def _size(source) -> int:
    return source.stat().st_size if hasattr(source, "stat") else source.size


def _point(p: dict | BundleModelMetric, run_id: str) -> tuple:
    get = p.get if isinstance(p, dict) else lambda k, d=None: getattr(p, k, d)
    return (get("key"), int(get("step") or 0), int(get("timestamp")), float(get("value")), run_id,
            get("dataset_name"), get("dataset_digest"))


async def _links(dest: MlflowApi, m: LoggedModel, model_id: str, copy: dict, runs: RunMap,
                 notes: list[str]) -> int:
    """Send the model's missing metric points and run links, run by run; returns what was sent."""
    doc = m.doc
    have = {_point(p, p.get("run_id")) for p in copy.get("data", {}).get("metrics", [])}
    todo: dict[str, dict] = {}  # destination run id -> {"metrics", "outputs", "inputs"}
    left_out = Counter()

    def slot(src_run: str) -> Optional[dict]:
        run_id = runs.ids.get(src_run)
        if run_id is None:
            left_out[src_run] += 1
            return None
        return todo.setdefault(run_id, {"metrics": [], "outputs": [], "inputs": [], "source": src_run})

    for p in doc.metrics:
        if (s := slot(p.run_id)) is not None and _point(p, runs.ids[p.run_id]) not in have:
            s["metrics"].append({"key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step,
                                 "model_id": model_id,
                                 **{k: v for k, v in (("dataset_name", p.dataset_name),
                                                      ("dataset_digest", p.dataset_digest)) if v}})
    for o in doc.outputs:
        if (s := slot(o.run_id)) is not None:
            s["outputs"].append({"model_id": model_id, "step": o.step})
    for run_id in doc.inputs:
        if (s := slot(run_id)) is not None:
            s["inputs"].append({"model_id": model_id})
    for src_run, n in left_out.items():
        notes.append(f"logged model {doc.name!r} ({doc.model_id}): {n} metric points or links of run "
                     f"{src_run} not written: that run is not part of this move")
    sent = 0
    for run_id, s in todo.items():
        run = await dest.get_run(run_id)
        if run is None:
            raise ServerError(f"run {run_id} is gone from the destination", url=dest.url)
        outputs = run.get("outputs", {}).get("model_outputs", [])
        inputs = run.get("inputs", {}).get("model_inputs", [])
        s["outputs"] = [o for o in s["outputs"]
                        if not any(x["model_id"] == model_id and int(x.get("step", 0)) == o["step"] for x in outputs)]
        s["inputs"] = [i for i in s["inputs"] if not any(x["model_id"] == model_id for x in inputs)]
        await _nan_back(dest, run_id, s["metrics"])
        work = s["metrics"] or s["outputs"] or s["inputs"]
        deleted = run["info"].get("lifecycle_stage") == "deleted"
        if work and deleted:  # a deleted run takes no writes
            await dest.restore_run(run_id)
        for i in range(0, len(s["metrics"]), MAX_METRICS_PER_BATCH):
            await dest.log_batch({"run_id": run_id, "metrics": s["metrics"][i:i + MAX_METRICS_PER_BATCH]})
        if s["outputs"]:
            await dest.call("runs/outputs", {"run_id": run_id, "models": s["outputs"]})
        if s["inputs"]:
            await dest.call("runs/log-inputs", {"run_id": run_id, "datasets": [], "models": s["inputs"]})
        # Deleted again; also a run an interrupted earlier move restored and left active.
        if (work and deleted) or (not deleted and s["source"] in runs.deleted):
            await dest.delete_run(run_id)
        sent += len(s["metrics"]) + len(s["outputs"]) + len(s["inputs"])
    return sent


async def _nan_back(dest: MlflowApi, run_id: str, metrics: list[dict]) -> None:
    """The server stores a model's NaN point as 0.0 (and the run's as NaN): a 0.0 sent back would
    add a point to the run's history. Where the run holds NaN at that step and time and no 0.0,
    the point is sent as NaN; the model side stores 0.0 again."""
    from .sinks.mlflow import _stored_value

    for key in {p["key"] for p in metrics if p["value"] == 0.0}:
        history = await dest.metric_history(run_id, key)
        nan = {(int(h.get("step", 0)), int(h["timestamp"])) for h in history if _stored_value(h["value"]) == "NaN"}
        zero = {(int(h.get("step", 0)), int(h["timestamp"])) for h in history if _stored_value(h["value"]) == 0.0}
        for p in metrics:
            if p["key"] == key and p["value"] == 0.0 and (p["step"], p["timestamp"]) in nan - zero:
                p["value"] = "NaN"


# -- verify -----------------------------------------------------------------------------------


async def compare(a: MlflowApi, b: MlflowApi, exps: list[dict], records: list[RunRecord],
                  id_map: dict[str, str], diff, counted, shard=None) -> dict[str, str]:
    """Compare the logged models of the source `a` with their copies on `b`, through the tag
    SOURCE_MODEL_TAG and the run id map `id_map`; each difference goes to `diff(where, what,
    source, destination)`, their number to `counted`. Returns source model id -> destination model id. Points and links of
    runs that are not in `id_map` (not part of the move) are not compared. This is a read-only
    operation on both servers."""
    mapped: dict[str, str] = {}
    models = await read(a, exps, records, shard)
    counted(len(models))
    for name in dict.fromkeys(m.experiment for m in models):
        other = await b.experiment_by_name(name)
        if other is None:
            continue  # the experiment's own difference says it
        copies = Counter()
        first: dict[str, dict] = {}
        async for d in search(b, other["experiment_id"]):
            src = pairs(d["info"].get("tags")).get(SOURCE_MODEL_TAG)
            if src:
                copies[src] += 1
                if src not in first or _made_before(d, first[src]):
                    first[src] = d
        for m in (m for m in models if m.experiment == name):
            await _compare_one(a, b, m, first.get(m.doc.model_id), copies[m.doc.model_id], id_map, diff)
            if m.doc.model_id in first:
                mapped[m.doc.model_id] = first[m.doc.model_id]["info"]["model_id"]
    return mapped


async def _compare_one(a: MlflowApi, b: MlflowApi, m: LoggedModel, copy: Optional[dict], n: int,
                       id_map: dict[str, str], diff) -> None:
    src = m.doc
    where = f"logged model {src.model_id}"
    if copy is None:
        diff(where, "logged model", "present", "missing")
        return
    if n > 1:
        diff(where, "copies on the destination", "1", str(n))
    got, model_id = from_rest(copy), copy["info"]["model_id"]
    got.tags.pop(SOURCE_MODEL_TAG, None)
    for what in ("name", "model_type", "status", "params", "tags"):
        if getattr(src, what) != getattr(got, what):
            diff(where, what, str(getattr(src, what)), str(getattr(got, what)))
    want_run = id_map.get(src.source_run_id, "(not moved)") if src.source_run_id else None
    if got.source_run_id != want_run:
        diff(where, "source run", str(src.source_run_id), str(got.source_run_id))
    want = sorted(_point(p, id_map[p.run_id]) for p in src.metrics if p.run_id in id_map)
    have = sorted(_point(p, p.run_id) for p in got.metrics)
    if want != have:
        diff(where, "metrics", f"{len(want)} points", f"{len(have)} points" if len(want) != len(have)
             else "differ in key, step, time, value, run or dataset")
    if any(p.get("model_id") != model_id for p in copy.get("data", {}).get("metrics", [])):
        diff(where, "metric model_id", model_id, "another model")
    for run_id in {o.run_id for o in src.outputs} | set(src.inputs):
        if run_id not in id_map:
            continue
        run = await b.get_run(id_map[run_id]) or {}
        outs = {(x["model_id"], int(x.get("step", 0))) for x in run.get("outputs", {}).get("model_outputs", [])}
        ins = {x["model_id"] for x in run.get("inputs", {}).get("model_inputs", [])}
        for o in (o for o in src.outputs if o.run_id == run_id):
            if (model_id, o.step) not in outs:
                diff(where, f"output of run {run_id}", f"step {o.step}", "(missing)")
        if run_id in src.inputs and model_id not in ins:
            diff(where, f"input of run {run_id}", "present", "(missing)")
    files = {f.dest: f.source for f in m.files}
    stored = {f["path"]: f["file_size"] async for f in b.list_artifact_tree(copy["info"]["artifact_uri"])}
    for path in sorted(set(files) | set(stored)):
        if path not in files or path not in stored:
            diff(where, f"artifact {path}", "present" if path in files else "(missing)",
                 "present" if path in stored else "(missing)")
            continue
        s_hash, s_size = await a.download_digest(files[path].url_path)
        d_hash, d_size = await b.download_digest(b.artifact_path(copy["info"]["artifact_uri"], path))
        if (s_hash, s_size) != (d_hash, d_size):
            diff(where, f"artifact {path}", f"{s_size} B {s_hash[:12]}", f"{d_size} B {d_hash[:12]}")
