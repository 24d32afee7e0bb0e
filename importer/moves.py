"""Moving runs between stores: `export` (server -> bundle), `migrate` (server -> server) and
`verify` (compare the two ends through the id map). `import` of a bundle or an `mlruns/` folder
is the ordinary import (pipeline.import_paths); a migration is that import, from a server, with
the same steps after the runs (pipeline.after_runs).

Order of a migration: experiments, runs, MLflow 3 logged models (their points go into the runs),
registered models (a version may be of a logged model), then deleting again the experiments
deleted at the source.

The id map: a moved run carries its source id in the tag `importer.source_run_id` and its import
key `mlflow-run-<source id>` (tag `importer.import_key`); the ledger keeps key -> destination id.
`verify` finds destination runs by their import key, as the writer does, so it needs no ledger.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pyarrow as pa

from . import experiments, logged_models, registry
from .bundle import BundleExperiment, BundleWriter
from .errors import ImporterError, InputError
from .experiments import ExperimentRecord
from .ledger import Ledger
from .mlflow_api import DEFAULT_CONFIG, ClientConfig, MlflowApi, optional_int, pairs
from .model import IMPORT_KEY_TAG, SOURCE_RUN_ID_TAG, RunRecord
from .pipeline import Summary, after_runs, import_async
from .sinks.mlflow import EXPERIMENT_TAGS, Outcome, _stored_value
from .sources import server
from .sources.server import Selection


def side_env(token_env: Optional[str] = None, username_env: Optional[str] = None,
             password_env: Optional[str] = None) -> dict[str, str]:
    """The credentials of one side (--from-token-env VAR and friends): MLflow's variable names
    with values taken from the variables the user named. MLflow's own variables are not used for
    a side, so one server's secret never goes to the other."""
    env = {}
    for target, var in (("MLFLOW_TRACKING_TOKEN", token_env), ("MLFLOW_TRACKING_USERNAME", username_env),
                        ("MLFLOW_TRACKING_PASSWORD", password_env)):
        if var:
            if var not in os.environ:
                raise InputError(f"environment variable {var} is not set")
            env[target] = os.environ[var]
    for var in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        if var in os.environ:
            env[var] = os.environ[var]
    return env


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def export(source_uri: str, out: Path, selection: Selection = Selection(), *,
           models: bool = True, config: ClientConfig = DEFAULT_CONFIG,
           env: Optional[dict[str, str]] = None, progress=None) -> Summary:
    """Write the selected runs of a server into a bundle folder; a rerun resumes, skipping runs
    already exported in their current state and rewriting those that changed."""
    return asyncio.run(_export(source_uri, Path(out), selection, models, config, env or {}, progress))


async def _export(uri, out, selection, with_models, config, env, progress) -> Summary:
    started = time.monotonic()
    async with MlflowApi(uri, config, env) as api:
        await api.call("experiments/search", {"max_results": 1})  # unreachable or refused: exit 3
        writer = BundleWriter(out, api.url)
        summary = Summary(server=str(out), dry_run=False, title="Exported to")
        exps = await server.experiments(api, selection)
        summary.notes += await experiments.not_carried(api, exps)
        for exp in exps:
            writer.experiment(BundleExperiment(
                experiment_id=exp["experiment_id"], name=exp["name"],
                tags={k: v for k, v in pairs(exp.get("tags")).items() if k != "mlflow.experimentKind"},
                lifecycle=exp.get("lifecycle_stage", "active")))
        slots = asyncio.Semaphore(config.max_in_flight)
        done = 0

        async def one(exp: dict, rec: RunRecord, out_: Outcome) -> None:
            nonlocal done
            async with slots:
                try:
                    if writer.done(rec):
                        out_.action = "unchanged"
                        return
                    rec.artifacts = await rec.load.artifacts()
                    parent = rec.parent_key.removeprefix("mlflow-run-") if rec.parent_key else None
                    out_.points = await writer.write_run(rec, exp["experiment_id"], parent, rec.load.pages())
                    out_.artifacts = len(rec.artifacts)
                    out_.action = "created"
                    done += out_.points
                    if progress:
                        progress(done, 0)
                except (ImporterError, OSError) as e:  # this run only; the others go on
                    out_.action, out_.error = "failed", str(e)
                finally:
                    rec.metrics, rec.artifacts = {}, []

        jobs, records = [], []
        async for exp, rec in server.runs(api, selection):
            o = Outcome(rec.origin, rec.experiment, rec.import_key, run_id=rec.source_run_id)
            summary.outcomes.append(o)
            records.append(rec)
            jobs.append(one(exp, rec, o))
        await asyncio.gather(*jobs)
        for m in await logged_models.read(api, exps, records, selection.shard):
            try:
                if not writer.logged_model_done(m.doc):
                    await writer.write_logged_model(m.doc, m.files)
            except (ImporterError, OSError) as e:  # this model only; the others go on
                summary.outcomes.append(Outcome(f"logged model {m.doc.name!r} ({m.doc.model_id})",
                                                m.experiment, f"logged-model-{m.doc.model_id}",
                                                action="failed", error=str(e)))
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else {o.run_id for o in summary.outcomes}
            for model in await registry.read_models(api, ids):
                writer.model(model)
        manifest = writer.finish()
        summary.notes.append(f"bundle holds {manifest.counts['runs']} runs, {manifest.counts['points']:,} "
                             f"points, {manifest.counts['artifacts']} artifacts, "
                             f"{manifest.counts['models']} registered models, "
                             f"{manifest.counts['logged_models']} logged models")
        summary.seconds = time.monotonic() - started
        summary.requests, summary.retried = api.requests, api.retried
        return summary


# ---------------------------------------------------------------------------------------------
# migrate, and the models of an import
# ---------------------------------------------------------------------------------------------


def migrate(source_uri: str, dest_uri: str, selection: Selection = Selection(), *,
            state: Optional[Path] = None, on_param_conflict: str = "error", models: bool = True,
            config: ClientConfig = DEFAULT_CONFIG, source_env: Optional[dict] = None,
            dest_env: Optional[dict] = None, progress=None) -> Summary:
    """Copy the selected runs (and registered models) from one server to another. A rerun
    copies only what is new or grew."""
    ledger = Ledger(Path(state) if state else None)
    try:
        return asyncio.run(_migrate(source_uri, dest_uri, selection, ledger, on_param_conflict,
                                    models, config, source_env or {}, dest_env or {}, progress))
    finally:
        ledger.close()


async def _migrate(src, dst, selection, ledger, policy, with_models, config, src_env, dst_env,
                   progress) -> Summary:
    async with MlflowApi(src, config, src_env) as api, MlflowApi(dst, config, dst_env) as dest:
        await api.call("experiments/search", {"max_results": 1})
        found = await server.experiments(api, selection)
        exps = [ExperimentRecord.from_rest(e) for e in found]
        deleted, prepared, notes = await experiments.prepare(dest, exps, EXPERIMENT_TAGS)
        notes += await experiments.not_carried(api, found)
        records = [rec async for _, rec in server.runs(api, selection)]
        summary = await import_async(records, dst, ledger, policy=policy, config=config,
                                     progress=progress, env=dst_env, prepared=prepared)
        summary.title = f"Migrated from {api.url} to"
        logged = await logged_models.read(api, found, records, selection.shard)
        models = []
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else {r.source_run_id for r in records}
            models = await registry.read_models(api, ids)
        summary.notes += notes + await after_runs(dest, summary, records, logged, models, deleted, selection.shard)
        summary.requests += api.requests + dest.requests
        summary.retried += api.retried + dest.retried
        return summary


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


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
        dest_runs: dict[str, dict] = {}  # source id -> destination run
        copies: dict[str, int] = {}
        exps = await server.experiments(a, selection)
        for exp in exps:
            other = await b.experiment_by_name(exp["name"])
            if other is None:
                diff(Difference(f"experiment {exp['name']}", "experiment", "present", "missing"))
                continue
            if other.get("lifecycle_stage") != exp.get("lifecycle_stage"):
                diff(Difference(f"experiment {exp['name']}", "lifecycle", exp.get("lifecycle_stage"),
                                other.get("lifecycle_stage")))
            want = {k: v for k, v in pairs(exp.get("tags")).items() if k != "mlflow.experimentKind"}
            have = pairs(other.get("tags"))
            for k, v in want.items():
                if have.get(k) != v:
                    diff(Difference(f"experiment {exp['name']}", f"tag {k}", v, have.get(k, "(missing)")))
            async for run in b.search_runs([other["experiment_id"]], include_deleted=True):
                tags = pairs(run["data"].get("tags"))
                key = tags.get(IMPORT_KEY_TAG, "")  # what the writer finds a run by
                if not key.startswith("mlflow-run-"):
                    continue
                src_id = key.removeprefix("mlflow-run-")
                copies[src_id] = copies.get(src_id, 0) + 1
                if src_id not in dest_runs or _older(run, dest_runs[src_id]):
                    dest_runs[src_id] = run  # the one the writer keeps, should there be two
        for src_id, n in copies.items():
            if n > 1:
                diff(Difference(src_id, "copies on the destination", "1", str(n)))
        sem = asyncio.Semaphore(config.max_in_flight)
        jobs, records = [], []
        async for _, rec in server.runs(a, selection):
            report.runs += 1
            records.append(rec)
            jobs.append(_compare_run(a, b, rec, dest_runs, report, sem))
        await asyncio.gather(*jobs)
        model_ids = await logged_models.compare(
            a, b, exps, records, report.id_map,
            lambda where, what, s, d: diff(Difference(where, what, s, d)),
            lambda n: setattr(report, "logged_models", n), selection.shard)
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else set(report.id_map)
            await _compare_models(await registry.read_models(a, ids), await registry.read_models(b), report,
                                  model_ids)
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
        want_parent = rec.parent_key.removeprefix("mlflow-run-")
        report_parent = dest_runs.get(want_parent, {}).get("info", {}).get("run_id", "(not moved)")
    if parent != report_parent:
        diff("parent", want_parent, parent)
    for k, v in rec.tags.items():
        got = tags.get(k)
        if got != v and got != v.replace(src_id, info["run_id"]):
            diff(f"tag {k}", v, got if got is not None else "(missing)")
    extra = set(tags) - set(rec.tags) - {IMPORT_KEY_TAG, SOURCE_RUN_ID_TAG}
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
    values = [_stored_value(v) for v in t.column("value").to_pylist()]
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
        copies = {}
        for v in sorted(d.versions, key=lambda v: -int(v.version)):  # the first copy wins
            copies[v.tags.get(registry.SOURCE_VERSION_TAG)] = v
        for src in {v.version for v in m.versions}:
            n = sum(v.tags.get(registry.SOURCE_VERSION_TAG) == src for v in d.versions)
            if n > 1:
                report.differences.append(Difference(where, f"version {src}", "1 copy", f"{n} copies"))
        for v in m.versions:
            c = copies.get(v.version)
            if c is None:
                report.differences.append(Difference(where, f"version {v.version}", "present", "missing"))
                continue
            if c.version != v.version:
                report.differences.append(Difference(where, f"version {v.version} number", v.version, c.version))
            tags = {k: x for k, x in c.tags.items() if k != registry.SOURCE_VERSION_TAG}
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



def _older(a: dict, b: dict) -> bool:
    return (int(a["info"]["start_time"]), a["info"]["run_id"]) < (int(b["info"]["start_time"]), b["info"]["run_id"])
