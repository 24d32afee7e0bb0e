"""MLflow 3 logged models written to a server (by `migrate`, and by `import` of a bundle, an
`mlruns/` folder or an mlflow-export-import folder). The record is model.LoggedModelRecord,
read by sources/server.py from a server and by the store sources from files.

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

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ImporterError, InputError, ServerError
from ..files import sha256_file
from ..mlflow_api import MAX_METRICS_PER_BATCH, MlflowApi, pairs, tag_filter
from ..model import (IMPORT_KEY_TAG, MODEL_VERSIONS_TAG, SOURCE_MODEL_TAG, LoggedModel, RunRecord,
                     first_logged_model, goes_with, model_point, store_import_key, store_run_id,
                     stored_value)
from .mlflow import Outcome, upload_verified


@dataclass
class RunMap:
    """Source run id -> destination run id, and which source runs are deleted there."""

    ids: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)


async def run_map(dest: MlflowApi, outcomes: list, records: list[RunRecord],
                  models: list[LoggedModel]) -> RunMap:
    """Where the runs the models refer to are on the destination: the runs this move wrote
    (`outcomes`), else found by their import key (moved earlier, or by
    another shard)."""
    found = RunMap()
    for o in outcomes:
        if o.run_id and store_run_id(o.import_key) and o.action != "failed":
            found.ids[store_run_id(o.import_key)] = o.run_id
    found.deleted = {r.source_run_id for r in records if r.lifecycle == "deleted"}
    failed = {store_run_id(o.import_key) for o in outcomes if o.action == "failed"}
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
    model id, notes, a failed Outcome per model that could not be written)."""
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
    found: dict[str, list[dict]] = {}
    async for m in dest.search_logged_models(exp_id):
        if src := pairs(m["info"].get("tags")).get(SOURCE_MODEL_TAG):
            found.setdefault(src, []).append(m)
    return {src: first_logged_model(copies) for src, copies in found.items()}


async def _find(dest: MlflowApi, exp_id: str, source_id: str) -> Optional[dict]:
    return (await _copies(dest, exp_id)).get(source_id)


async def _write_one(dest: MlflowApi, m: LoggedModel, exp_id: str, copy: Optional[dict], runs: RunMap,
                     notes: list[str]) -> tuple[str, str]:
    """Write one model; returns (its destination id, created | completed | unchanged)."""
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


async def _links(dest: MlflowApi, m: LoggedModel, model_id: str, copy: dict, runs: RunMap,
                 notes: list[str]) -> int:
    """Send the model's missing metric points and run links, run by run; returns what was sent."""
    doc = m.doc
    have = {model_point(p, p.get("run_id")) for p in copy.get("data", {}).get("metrics", [])}
    todo: dict[str, dict] = {}  # destination run id -> {"metrics", "outputs", "inputs"}
    left_out = Counter()

    def slot(src_run: str) -> Optional[dict]:
        run_id = runs.ids.get(src_run)
        if run_id is None:
            left_out[src_run] += 1
            return None
        return todo.setdefault(run_id, {"metrics": [], "outputs": [], "inputs": [], "source": src_run})

    for p in doc.metrics:
        if (s := slot(p.run_id)) is not None and model_point(p, runs.ids[p.run_id]) not in have:
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
    for key in {p["key"] for p in metrics if p["value"] == 0.0}:
        history = await dest.metric_history(run_id, key)
        nan = {(int(h.get("step", 0)), int(h["timestamp"])) for h in history if stored_value(h["value"]) == "NaN"}
        zero = {(int(h.get("step", 0)), int(h["timestamp"])) for h in history if stored_value(h["value"]) == 0.0}
        for p in metrics:
            if p["key"] == key and p["value"] == 0.0 and (p["step"], p["timestamp"]) in nan - zero:
                p["value"] = "NaN"
