"""`verify`: compare the selected runs of a source server with their copies on a destination,
field by field and point by point, and likewise their experiments, MLflow 3 logged models and
registered models. Read-only on both servers.

Copies are found as the writer finds them: a run by its import key `mlflow-run-<source id>`
(tag `importer.import_key`), a logged model by `importer.source_model_id`, a version by
`importer.source_version`; so no ledger is needed. Where a race made two copies, the first made
is compared (as the writer keeps it) and the others are reported.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from .mlflow_api import DEFAULT_CONFIG, ClientConfig, MlflowApi, optional_int, pairs
from .model import (IMPORT_KEY_TAG, SOURCE_MODEL_TAG, SOURCE_RUN_ID_TAG, SOURCE_VERSION_TAG, LoggedModel,
                    RunRecord, first_logged_model, first_version, is_pending, model_point, oldest_run,
                    store_run_id, stored_value, with_import_key)
from .sources import server
from .sources.server import Selection


@dataclass
class Difference:
    run: str  # source run id, or `experiment NAME` / `model NAME`
    what: str
    source: str
    dest: str


@dataclass
class Report:
    source: str
    dest: str
    runs: int = 0
    points: int = 0
    artifacts: int = 0
    logged_models: int = 0
    id_map: dict[str, str] = field(default_factory=dict)  # source run id -> destination run id
    differences: list[Difference] = field(default_factory=list)

    def text(self, show_map: bool = False) -> str:
        lines = [f"Compared {self.source} with {self.dest}: {self.runs} runs, {self.points:,} metric "
                 f"points, {self.artifacts} artifacts, {self.logged_models} logged models"]
        if show_map:
            lines += ["", f"{'source run':32}  {'destination run':32}"]
            lines += [f"{s:32}  {d:32}" for s, d in sorted(self.id_map.items())]
        if not self.differences:
            lines.append("no differences")
            return "\n".join(lines)
        lines += ["", f"{len(self.differences)} differences:",
                  f"{'run':34} {'what':28} {'source':30} {'destination':30}"]
        for d in self.differences:
            lines.append(f"{d.run:34} {d.what:28} {_cell(d.source):30} {_cell(d.dest):30}")
        return "\n".join(lines)


def _cell(v: str) -> str:
    return v if len(v) <= 30 else v[:27] + "..."


def verify(source_uri: str, dest_uri: str, selection: Selection = Selection(), *,
           models: bool = True, config: ClientConfig = DEFAULT_CONFIG,
           source_env: Optional[dict] = None, dest_env: Optional[dict] = None) -> Report:
    """Compare every selected source run with its copy on the destination. This is a read-only
    operation on both servers."""
    return asyncio.run(_verify(source_uri, dest_uri, selection, models, config,
                               source_env or {}, dest_env or {}))


async def _verify(src, dst, selection, with_models, config, src_env, dst_env) -> Report:
    async with MlflowApi(src, config, src_env) as a, MlflowApi(dst, config, dst_env) as b:
        report = Report(a.url, b.url)
        diff = report.differences.append
        copies: dict[str, list[dict]] = {}  # source id -> its copies on the destination
        exps = await server.experiments(a, selection)
        for exp in exps:
            other = await b.experiment_by_name(exp["name"])
            if other is None:
                diff(Difference(f"experiment {exp['name']}", "experiment", "present", "missing"))
                continue
            if other.get("lifecycle_stage") != exp.get("lifecycle_stage"):
                diff(Difference(f"experiment {exp['name']}", "lifecycle", exp.get("lifecycle_stage"),
                                other.get("lifecycle_stage")))
            want = server.experiment_record(exp).tags
            have = pairs(other.get("tags"))
            for k, v in want.items():
                if have.get(k) != v:
                    diff(Difference(f"experiment {exp['name']}", f"tag {k}", v, have.get(k, "(missing)")))
            async for run in b.search_runs([other["experiment_id"]], include_deleted=True):
                # what the writer finds a run by; a copy that gave way to another importer's (in
                # the trash, pending, unwritten) is no copy
                if is_pending(run) and run["info"].get("lifecycle_stage") == "deleted":
                    continue
                if src_id := store_run_id(pairs(run["data"].get("tags")).get(IMPORT_KEY_TAG)):
                    copies.setdefault(src_id, []).append(run)
        for src_id, runs in copies.items():
            if len(runs) > 1:
                diff(Difference(src_id, "copies on the destination", "1", str(len(runs))))
        # the copy the writer keeps: a settled one (an active pending copy is an interrupted one)
        dest_runs = {src_id: oldest_run([r for r in runs if not is_pending(r)] or runs)
                     for src_id, runs in copies.items()}
        sem = asyncio.Semaphore(config.max_in_flight)
        jobs, records = [], []
        async for _, rec in server.runs(a, selection):
            report.runs += 1
            records.append(rec)
            jobs.append(_compare_run(a, b, rec, dest_runs, report, sem))
        await asyncio.gather(*jobs)
        model_ids = await _compare_logged_models(
            a, b, exps, records, report.id_map,
            lambda where, what, s, d: diff(Difference(where, what, s, d)),
            lambda n: setattr(report, "logged_models", n), selection.shard)
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else set(report.id_map)
            await _compare_models(await server.registered_models(a, ids), await server.registered_models(b),
                                  report, model_ids)
        return report


async def _compare_run(a: MlflowApi, b: MlflowApi, rec: RunRecord, dest_runs: dict, report: Report,
                       sem: asyncio.Semaphore) -> None:
    src_id = rec.source_run_id
    run = dest_runs.get(src_id)
    diff = lambda what, s, d: report.differences.append(Difference(src_id, what, str(s), str(d)))  # noqa: E731
    if run is None:
        diff("run", "present", "missing")
        return
    async with sem:
        await rec.load()
    info = run["info"]
    report.id_map[src_id] = info["run_id"]
    for what, s, d in (("name", rec.name, info.get("run_name")), ("status", rec.status, info.get("status")),
                       ("start_time", rec.start_time, optional_int(info.get("start_time"))),
                       ("end_time", rec.end_time, optional_int(info.get("end_time"))),
                       ("user", rec.user, info.get("user_id") or None),
                       ("lifecycle", rec.lifecycle, info.get("lifecycle_stage"))):
        if s != d:
            diff(what, s, d)
    params = pairs(run["data"].get("params"))
    if params != rec.params:
        for k in sorted(set(params) | set(rec.params)):
            if params.get(k) != rec.params.get(k):
                diff(f"param {k}", rec.params.get(k, "(missing)"), params.get(k, "(missing)"))
    tags = pairs(run["data"].get("tags"))
    parent = tags.pop("mlflow.parentRunId", None)
    want_parent = report_parent = None
    if rec.parent_key:
        want_parent = store_run_id(rec.parent_key)
        report_parent = dest_runs.get(want_parent, {}).get("info", {}).get("run_id", "(not moved)")
    if parent != report_parent:
        diff("parent", want_parent, parent)
    want_tags = with_import_key(rec.tags, rec.import_key)  # as the sink writes them
    for k, v in want_tags.items():
        got = tags.get(k)
        if got != v and got != v.replace(src_id, info["run_id"]):
            diff(f"tag {k}", v, got if got is not None else "(missing)")
    extra = set(tags) - set(want_tags) - {SOURCE_RUN_ID_TAG}
    for k in sorted(extra):
        diff(f"tag {k}", "(missing)", tags[k])
    async with sem:
        for key in sorted(set(rec.metrics) | {m["key"] for m in run["data"].get("metrics", [])}):
            want = rec.metrics.get(key)
            got = await server.history(b, info["run_id"], key)
            n = 0 if want is None else want.num_rows
            report.points += n
            if n != got.num_rows:
                diff(f"metric {key}", f"{n} points", f"{got.num_rows} points")
            elif n and _points(want) != _points(got):
                diff(f"metric {key}", "points", "differ in step, timestamp or value")
        await _compare_artifacts(a, b, rec, info, report, diff)
    rec.metrics, rec.artifacts = {}, []


def _points(t: pa.Table) -> list[tuple]:
    """The points as a sorted list; NaN as a marker, +-Infinity as the server stores it."""
    values = [stored_value(v) for v in t.column("value").to_pylist()]
    return sorted(zip(t.column("step").to_pylist(), t.column("timestamp").to_pylist(), map(str, values)))


async def _compare_artifacts(a, b, rec, info, report, diff) -> None:
    want = {art.dest: art.source for art in rec.artifacts}
    got = {f["path"]: f["file_size"] async for f in b.list_artifacts(info["run_id"])}
    report.artifacts += len(want)
    for path in sorted(set(want) | set(got)):
        if path not in got or path not in want:
            diff(f"artifact {path}", "present" if path in want else "(missing)",
                 "present" if path in got else "(missing)")
            continue
        s_hash, s_size = await a.download_digest(want[path].url_path)
        d_hash, d_size = await b.download_digest(b.artifact_path(info["artifact_uri"], path))
        if (s_hash, s_size) != (d_hash, d_size):
            diff(f"artifact {path}", f"{s_size} B {s_hash[:12]}", f"{d_size} B {d_hash[:12]}")


async def _compare_models(src_models, dst_models, report: Report, logged: dict[str, str]) -> None:
    by_name = {m.name: m for m in dst_models}
    for m in src_models:
        where = f"model {m.name}"
        d = by_name.get(m.name)
        if d is None:
            report.differences.append(Difference(where, "registered model", "present", "missing"))
            continue
        for what, s, t in (("description", m.description, d.description), ("tags", m.tags, d.tags)):
            if s != t:
                report.differences.append(Difference(where, what, str(s), str(t)))
        found: dict[str, list] = {}
        for v in d.versions:
            found.setdefault(v.tags.get(SOURCE_VERSION_TAG), []).append(v)
        copies = {src: first_version(vs) for src, vs in found.items()}  # as the writer keeps
        for src in {v.version for v in m.versions}:
            if (n := len(found.get(src, []))) > 1:
                report.differences.append(Difference(where, f"version {src}", "1 copy", f"{n} copies"))
        for v in m.versions:
            c = copies.get(v.version)
            if c is None:
                report.differences.append(Difference(where, f"version {v.version}", "present", "missing"))
                continue
            if c.version != v.version:
                report.differences.append(Difference(where, f"version {v.version} number", v.version, c.version))
            tags = {k: x for k, x in c.tags.items() if k != SOURCE_VERSION_TAG}
            if (v.description, v.tags, v.stage) != (c.description, tags, c.stage):
                report.differences.append(Difference(where, f"version {v.version}",
                                                     f"{v.description} {v.tags} {v.stage}",
                                                     f"{c.description} {tags} {c.stage}"))
            if v.run_id and report.id_map.get(v.run_id) != c.run_id:
                report.differences.append(Difference(where, f"version {v.version} run", v.run_id, str(c.run_id)))
            if v.model_id and logged.get(v.model_id) != c.model_id:
                report.differences.append(Difference(where, f"version {v.version} logged model",
                                                     v.model_id, str(c.model_id)))
        to_dest = {v.version: copies[v.version].version for v in m.versions if v.version in copies}
        want = {alias: to_dest.get(ver) for alias, ver in m.aliases.items()}
        if want != d.aliases:
            report.differences.append(Difference(where, "aliases", str(want), str(d.aliases)))


# -- logged models ---------------------------------------------------------------------------


async def _compare_logged_models(a: MlflowApi, b: MlflowApi, exps: list[dict], records: list[RunRecord],
                                 id_map: dict[str, str], diff, counted, shard=None) -> dict[str, str]:
    """Compare the logged models of the source `a` with their copies on `b`, through the tag
    SOURCE_MODEL_TAG and the run id map `id_map`; each difference goes to `diff(where, what,
    source, destination)`, their number to `counted`. Returns source model id -> destination
    model id. Points and links of runs that are not in `id_map` (not part of the move) are not
    compared."""
    mapped: dict[str, str] = {}
    models = await server.logged_models(a, exps, records, shard)
    counted(len(models))
    for name in dict.fromkeys(m.experiment for m in models):
        other = await b.experiment_by_name(name)
        if other is None:
            continue  # the experiment's own difference says it
        found: dict[str, list[dict]] = {}
        async for d in b.search_logged_models(other["experiment_id"]):
            if src := pairs(d["info"].get("tags")).get(SOURCE_MODEL_TAG):
                found.setdefault(src, []).append(d)
        copies = Counter({src: len(ds) for src, ds in found.items()})
        first = {src: first_logged_model(ds) for src, ds in found.items()}
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
    got, model_id = server.logged_model_record(copy), copy["info"]["model_id"]
    got.tags.pop(SOURCE_MODEL_TAG, None)
    for what in ("name", "model_type", "status", "params", "tags"):
        if getattr(src, what) != getattr(got, what):
            diff(where, what, str(getattr(src, what)), str(getattr(got, what)))
    want_run = id_map.get(src.source_run_id, "(not moved)") if src.source_run_id else None
    if got.source_run_id != want_run:
        diff(where, "source run", str(src.source_run_id), str(got.source_run_id))
    want = sorted(model_point(p, id_map[p.run_id]) for p in src.metrics if p.run_id in id_map)
    have = sorted(model_point(p, p.run_id) for p in got.metrics)
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
