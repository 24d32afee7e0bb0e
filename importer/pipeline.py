"""The verbs: read sources, validate everything, then write runs with bounded concurrency.

`import_paths`, `validate`, `find` and `schema` are what the CLI calls, one each.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import pyarrow.compute as pc

from .errors import ConnectionFailed, InputError, Problem, ServerError, ValidationError
from .ledger import Ledger
from .mlflow_api import DEFAULT_CONFIG, ClientConfig, MlflowApi, tag_filter
from .model import ExperimentRecord, RunRecord, manifest_json_schema, model_name_problem
from .sinks import experiments, logged_models, registry
from .sinks.mlflow import CONFLICT_POLICIES, EXPERIMENT_TAGS, METRIC_CHANGE_POLICIES, MlflowSink, Outcome
from .sources.base import SourceOptions, SourceResult

PathLike = Union[str, Path]


@dataclass
class Summary:
    """What an import did, run by run, and in total."""

    server: str
    dry_run: bool
    title: str = ""  # what happened, before the server: "Imported into" unless set
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    retried: int = 0  # requests sent again after a dropped connection, 429 or 5xx
    notes: list[str] = field(default_factory=list)  # from the sources: renamed keys, skipped values
    unrecognised: list[str] = field(default_factory=list)  # files in the named folders no source knows
    model_versions: list[dict] = field(default_factory=list)  # registered from runs (registry.register_versions)

    def count(self, *actions: str) -> int:
        return sum(o.action in actions for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.action == "failed"]

    @property
    def changed(self) -> list[Outcome]:
        """Runs whose source changed points already sent, left as stored: like failed ones, they
        make the exit code 1 and are named, every time, until the user chooses."""
        return [o for o in self.outcomes if o.action == "changed"]

    @property
    def points(self) -> int:
        return sum(o.points for o in self.outcomes if o.action != "failed")

    @property
    def artifacts(self) -> int:
        return sum(o.artifacts for o in self.outcomes if o.action != "failed")

    def experiment_urls(self) -> dict[str, str]:
        return {o.experiment: f"{self.server}/#/experiments/{o.experiment_id}/runs"
                for o in self.outcomes if o.experiment_id}

    def to_dict(self) -> dict:
        return {
            "server": self.server, "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
            "runs": {"created": self.count("created", "would-create"),
                     "appended": self.count("appended", "would-append"),
                     "unchanged": self.count("unchanged"), "failed": len(self.failed),
                     # only when there are (as in text()): the four counts above are what scripts know
                     **({"changed": len(self.changed)} if self.changed else {})},
            "points": self.points, "artifacts": self.artifacts,
            "requests": self.requests, "retried": self.retried,
            "notes": self.notes, "unrecognised": self.unrecognised,
            "experiments": self.experiment_urls(), "model_versions": self.model_versions,
            "details": [asdict(o) for o in self.outcomes],
        }

    def text(self) -> str:
        verb = "would be " if self.dry_run else ""
        rate = f", {self.points / self.seconds:,.0f} points/s" if self.seconds and self.points >= 10_000 else ""
        lines = [
            f"{self.title or ('Dry run against' if self.dry_run else 'Imported into')} {self.server} "
            f"in {self.seconds:.1f} s",
            f"  runs: {self.count('created', 'would-create')} {verb}created, "
            f"{self.count('appended', 'would-append')} {verb}appended, "
            f"{self.count('unchanged')} unchanged, "
            + (f"{len(self.changed)} changed at the source, " if self.changed else "")
            + f"{len(self.failed)} failed",
            f"  metric points {verb}sent: {self.points:,}{rate}; artifacts {verb}sent: {self.artifacts}",
        ]
        if self.retried:
            lines.append(f"  {self.retried} of {self.requests} requests were retried")
        for o in self.outcomes:
            if self.dry_run and o.action != "failed":
                lines.append(f"  {o.action}: {o.origin} (key {o.import_key!r}): {o.points:,} points, "
                             f"{o.params} params, {o.artifacts} artifacts")
            for note in o.notes:
                lines.append(f"  note: {o.origin}: {note}")
        lines += [f"  note: {n}" for n in self.notes[:20]]
        if len(self.notes) > 20:
            lines.append(f"  ... and {len(self.notes) - 20} more notes (--json lists them all)")
        if self.unrecognised:
            lines.append(f"  not recognised ({len(self.unrecognised)} files, not imported): "
                         + ", ".join(self.unrecognised[:10]) + (" ..." if len(self.unrecognised) > 10 else ""))
        for o in self.changed:
            differ = ", ".join(f"{k}: {n:,} point{'s' * (n != 1)}" for k, n in o.changed.items())
            lines.append(f"  CHANGED {o.origin} (run {o.run_id}): the source has other values than the "
                         f"server at the same step and time ({differ}); left as stored. "
                         "--on-metric-change append logs the new values as new points")
        for o in self.failed:
            lines.append(f"  FAILED {o.origin} (key {o.import_key!r}): {o.error}")
        for name, url in self.experiment_urls().items():
            lines.append(f"  experiment {name!r}: {url}")
        for v in self.model_versions:
            if v["version"] is None:  # a dry run's
                lines.append(f"  model {v['name']!r}: would register a version from {v['path']!r} of run "
                             f"{v['import_key']!r}")
            else:
                lines.append(f"  model {v['name']!r} version {v['version']} ({v['action']}): {v['url']}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What the paths hold: runs (parents before children), what each source noted, and the files
    no source recognised."""

    records: list[RunRecord] = field(default_factory=list)
    units: list[tuple[str, str, int]] = field(default_factory=list)  # format, path, runs
    notes: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    models: list = field(default_factory=list)  # registered models of stores (model.RegisteredModel)
    logged_models: list = field(default_factory=list)  # from bundles (model.LoggedModel)
    skipped: list[Problem] = field(default_factory=list)  # lose only what they name (SourceResult)
    experiments: list = field(default_factory=list)  # of other stores (model.ExperimentRecord)


def read_inputs(paths: Iterable[PathLike], experiment: Optional[str] = None, *,
                fmt: Optional[str] = None, options: Optional[SourceOptions] = None,
                strict: bool = True, everything: bool = False,
                register_model: Optional[str] = None) -> Inputs:
    """Read and validate every input; raise ValidationError listing all problems (unless not
    `strict`: then they are in `problems`), with `everything` those too that lose only what they
    name and an import gets past (`skipped`: a broken model of a store). A folder is walked and
    each file offered to every source (see importer.sources); `fmt` forces one. `-` reads a
    manifest from standard input. Nothing touches a server. `register_model`: the saved models of
    training folders become artifacts and versions of it (sources.model_files)."""
    from .sources import discover, manifest, model_files  # every format: only commands that read inputs load them
    from .sources.folder import name_unread

    paths = list(paths)
    options = replace(options or SourceOptions(), **({"experiment": experiment} if experiment else {}))
    for old, new in options.artifact_roots:
        if not old or not Path(new).is_dir():
            raise InputError(f"--artifact-root {old}={new}: expected OLD=NEW, NEW an existing folder")
    inputs = Inputs()
    seen: dict[tuple[str, str], int] = {}  # (experiment, key) -> unit index
    for raw in paths:
        if str(raw) == "-":
            reader = manifest.read_manifest(None, options.experiment, stdin=sys.stdin.buffer)
            _collect("manifest", "<stdin>", SourceResult(reader.records, reader.problems), inputs, seen)
        elif not Path(raw).exists():
            raise InputError(f"{raw}: no such file or folder")
    units, unknown = discover([Path(p) for p in paths if str(p) != "-"], fmt)
    # Manifests and stores first: files they name as artifacts (a store's may lie beside it) are
    # not runs of their own.
    units.sort(key=lambda unit: (unit[0] is not manifest, unit[0].NAME != "mlruns"))
    artifacts: set[Path] = set()
    for module, unit in units:
        if unit.resolve() in artifacts:
            continue
        result = module.read(unit, options)
        models = model_files.attach(module.NAME, result, register_model)
        artifacts.update(p.resolve() for p in models)
        name_unread(result, models)
        if module is manifest:
            artifacts.update(a.source.resolve() for r in result.records for a in r.artifacts)
        elif module.NAME == "mlruns":  # those inside the store are its own already
            artifacts.update(a.source.resolve() for r in result.records for a in r.artifacts
                             if not Path(a.source).is_relative_to(unit))
        _collect(module.NAME, str(unit), result, inputs, seen)
    inputs.unrecognised = [str(p) for p in unknown if p.resolve() not in artifacts]
    if strict and (inputs.problems or everything and inputs.skipped):
        raise ValidationError(inputs.problems + (inputs.skipped if everything else []))
    if not inputs.records and not inputs.problems:
        raise InputError("no runs found in " + ", ".join(map(str, paths)) +
                         (f" ({len(inputs.unrecognised)} files not recognised; name the format with "
                          "--format)" if inputs.unrecognised else ""))
    return inputs


def _collect(fmt: str, unit: str, result: SourceResult, inputs: Inputs, seen: dict) -> None:
    """Add one unit's runs, problems and notes; a run key already read from another unit is a
    problem (two inputs would write the same run)."""
    index = len(inputs.units)
    inputs.units.append((fmt, unit, len(result.records)))
    inputs.problems += result.problems
    inputs.notes += result.notes
    inputs.models += result.models
    inputs.logged_models += result.logged_models
    inputs.skipped += result.skipped
    inputs.experiments += result.experiments
    for rec in result.records:
        scoped = (rec.experiment, rec.import_key)
        if seen.setdefault(scoped, index) != index:
            inputs.problems.append(Problem(unit, rec.origin.split(": ", 1)[-1],
                                           f"run {rec.import_key!r} of experiment {rec.experiment!r} "
                                           f"is also in {inputs.units[seen[scoped]][1]}"))
    inputs.records += result.records


def read_records(paths: Iterable[PathLike], experiment: Optional[str] = None, **kwargs) -> list[RunRecord]:
    """The runs of `read_inputs`."""
    return read_inputs(paths, experiment, **kwargs).records


def validate(paths: Iterable[PathLike], experiment: Optional[str] = None, **kwargs) -> list[RunRecord]:
    """Check inputs without a server. Returns the runs found; raises ValidationError listing every
    problem, those an import gets past (`Inputs.skipped`) included."""
    return read_inputs(paths, experiment, everything=True, **kwargs).records


def inspect(paths: Iterable[PathLike], experiment: Optional[str] = None, **kwargs) -> dict:
    """What the paths hold, per source unit and run, problems included. This is a read-only
    operation: no server, nothing written."""
    inputs = read_inputs(paths, experiment, strict=False, **kwargs)
    runs = []
    for rec in inputs.records:
        series = getattr(rec.load, "series", None)  # a streamed log: its facts, not its points
        if series is not None:
            metrics = {key: {"points": f.points, "steps": list(f.steps) if f.steps else None}
                       for key, f in series.items()}
        else:
            if rec.load is not None:  # a bundle's run: read it for the report, then let it go
                asyncio.run(rec.load())
            metrics = {}
            for key, table in rec.metrics.items():
                steps = table.column("step")
                metrics[key] = {"points": table.num_rows,
                                "steps": [pc.min(steps).as_py(), pc.max(steps).as_py()] if table.num_rows else None}
        runs.append({"origin": rec.origin, "experiment": rec.experiment, "name": rec.name,
                     "import_key": rec.import_key, "status": rec.status, "start_time": rec.start_time,
                     "end_time": rec.end_time, "params": len(rec.params), "tags": rec.tags,
                     "artifacts": len(rec.artifacts), "metrics": metrics})
        if rec.load is not None:
            rec.metrics = {}
    return {"units": [{"format": f, "path": p, "runs": n} for f, p, n in inputs.units], "runs": runs,
            "notes": inputs.notes, "unrecognised": inputs.unrecognised,
            "problems": [str(p) for p in inputs.problems + inputs.skipped]}


def inspect_text(report: dict) -> str:
    lines = [f"{u['format']}: {u['path']} ({u['runs']} runs)" for u in report["units"]]
    for run in report["runs"]:
        lines.append(f"\nrun {run['name'] or run['import_key']!r} in experiment {run['experiment']!r} "
                     f"({run['origin']}), status {run['status']}, {run['params']} params, "
                     f"{run['artifacts']} artifacts")
        for key, m in run["metrics"].items():
            span = f"steps {m['steps'][0]}..{m['steps'][1]}" if m["steps"] else "no points"
            lines.append(f"  {key}: {m['points']:,} points, {span}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"not recognised: {p}" for p in report["unrecognised"]]
    lines += [f"problem: {p}" for p in report["problems"]]
    return "\n".join(lines)


def schema() -> dict:
    """The run-manifest JSON Schema."""
    return manifest_json_schema()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def check_policy(on_param_conflict: str, on_metric_change: str = "leave") -> None:
    """An unknown conflict or metric-change policy is an InputError, raised before anything is
    written."""
    for option, value, known in (("--on-param-conflict", on_param_conflict, CONFLICT_POLICIES),
                                 ("--on-metric-change", on_metric_change, METRIC_CHANGE_POLICIES)):
        if value not in known:
            raise InputError(f"{option} {value!r}: expected one of " + ", ".join(known))


def open_ledger(state: Optional[PathLike]) -> Ledger:
    """The ledger at `state` (default: Ledger's), opened before anything is written: a path that
    cannot hold it is an InputError, not a failure halfway."""
    try:
        return Ledger(Path(state) if state else None)
    except (OSError, sqlite3.Error) as e:
        raise InputError(f"--state {state or '(default)'}: cannot open the ledger there: {e}") from None


def tracking_uri_or_env(tracking_uri: Optional[str]) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError("no tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return uri


def import_paths(paths: Iterable[PathLike], tracking_uri: Optional[str] = None, *,
                 experiment: Optional[str] = None, fmt: Optional[str] = None,
                 options: Optional[SourceOptions] = None, state: Optional[PathLike] = None,
                 dry_run: bool = False, on_param_conflict: str = "error",
                 on_metric_change: str = "leave",
                 include_deleted: bool = False, config: ClientConfig = DEFAULT_CONFIG,
                 progress: Optional[Callable[[int, int], None]] = None,
                 register_model: Optional[str] = None) -> Summary:
    """Import manifests, training logs, `mlruns/` folders and bundles into an MLflow server.
    Validation of every input comes first: on any problem a ValidationError is raised and nothing
    is written. Runs deleted in the store they come from are left out unless `include_deleted`.
    A run of a store that cannot be read fails alone: in the summary, not an error.
    `on_metric_change`: points the source changed after they were sent are left as stored and
    reported (`leave`: the run's action is `changed`), or also logged with the new value (`append`).
    `register_model`: a training folder's saved model is uploaded under `model/` and registered as
    a version of that model (one per run)."""
    uri = tracking_uri_or_env(tracking_uri)
    check_policy(on_param_conflict, on_metric_change)
    if register_model is not None and (problem := model_name_problem(register_model)):
        raise InputError(f"--register-model: {problem}")
    inputs = read_inputs(paths, experiment, fmt=fmt, options=options, register_model=register_model)
    named: dict[str, ExperimentRecord] = {}
    for exp in inputs.experiments:
        named.setdefault(exp.name, exp)
    exps = list(named.values())
    gone = {e.name for e in exps if e.lifecycle == "deleted"}
    records = inputs.records
    if not include_deleted:
        records = [r for r in records if r.lifecycle != "deleted" and r.experiment not in gone]
        exps = [e for e in exps if e.name not in gone]
        if len(records) < len(inputs.records):
            inputs.notes.append(f"{len(inputs.records) - len(records)} deleted runs left out "
                                "(--include-deleted imports them, deleted)")
    deleted: list[str] = []
    prepared: dict[str, bool] = {}
    ledger = open_ledger(state)
    try:
        if exps and not dry_run:
            deleted, prepared, notes = asyncio.run(_on_server(uri, config, experiments.prepare, exps,
                                                              EXPERIMENT_TAGS))
            inputs.notes += notes
        summary = asyncio.run(import_async(records, uri, ledger, dry_run=dry_run, policy=on_param_conflict,
                                           on_metric_change=on_metric_change, config=config,
                                           progress=progress, prepared=prepared))
    finally:
        ledger.close()
    # A model with no source run goes with its experiment: not when that is left out, deleted.
    logged = [m for m in inputs.logged_models if include_deleted or m.experiment not in gone]
    if not dry_run and (logged or inputs.models or deleted or any(r.models for r in records)):
        inputs.notes += asyncio.run(_on_server(uri, config, after_runs, summary, records, logged,
                                               inputs.models, deleted))
    elif dry_run and any(r.models for r in records):
        summary.model_versions = asyncio.run(_on_server(uri, config, registry.plan_versions, records,
                                                        summary.outcomes))
    summary.outcomes += [Outcome(p.file, "", "", action="failed", error=f"{p.location}: {p.message}"
                                 if p.location else p.message) for p in inputs.skipped]
    summary.notes, summary.unrecognised = inputs.notes, inputs.unrecognised
    return summary


async def after_runs(dest: MlflowApi, summary: Summary, records: list[RunRecord], logged: list, models: list,
                     deleted: list[str], shard: Optional[tuple[int, int]] = None) -> list[str]:
    """What a move writes once its runs are in, in this order: MLflow 3 logged models (their points
    go into the runs), registered models (a version may be of a logged model), the logged models'
    version tags again (the server rewrote them), then deleting again the experiments deleted at the
    source (`deleted`, from experiments.prepare). Failures go into summary.outcomes; returns notes."""
    ids, notes, failed = await logged_models.copy(dest, logged, summary.outcomes, records)
    summary.outcomes += failed
    summary.model_versions += await registry.register_versions(dest, records, summary.outcomes)
    if models:
        notes += await registry.copy_models(dest, models, summary.outcomes, ids)
        await logged_models.retag(dest, logged, ids)
    return notes + await experiments.finish(dest, deleted, shard)


async def _on_server(uri: str, config: ClientConfig, work, *args):
    async with MlflowApi(uri, config) as api:
        return await work(api, *args)


def import_records(records: list[RunRecord], tracking_uri: str, *, state: Optional[PathLike] = None,
                   dry_run: bool = False, on_param_conflict: str = "error",
                   on_metric_change: str = "leave", config: ClientConfig = DEFAULT_CONFIG,
                   progress: Optional[Callable[[int, int], None]] = None,
                   prepared: Optional[dict[str, bool]] = None) -> Summary:
    check_policy(on_param_conflict, on_metric_change)
    ledger = open_ledger(state)
    try:
        summary = asyncio.run(import_async(records, tracking_uri, ledger, dry_run=dry_run,
                                           policy=on_param_conflict, on_metric_change=on_metric_change,
                                           config=config, progress=progress, prepared=prepared))
    finally:
        ledger.close()
    if any(r.models for r in records):
        work = registry.plan_versions if dry_run else registry.register_versions
        summary.model_versions = asyncio.run(_on_server(tracking_uri, config, work, records, summary.outcomes))
    return summary


async def import_async(records: list[RunRecord], uri: str, ledger: Ledger, *, dry_run: bool = False,
                       policy: str = "error", on_metric_change: str = "leave",
                       config: ClientConfig = DEFAULT_CONFIG, progress=None,
                       env: Optional[dict[str, str]] = None,
                       prepared: Optional[dict[str, bool]] = None) -> Summary:
    """Write `records` with bounded concurrency. `prepared`: the experiments experiments.prepare
    has just written, as name -> created just now (see MlflowSink)."""
    started = time.monotonic()
    total = sum(r.point_count for r in records)
    done = 0

    def landed(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    async with MlflowApi(uri, config, env) as api:
        summary = Summary(server=api.url, dry_run=dry_run)
        async def reachable() -> None:
            try:
                await api.health()  # unreachable: ConnectionFailed, exit code 3, before any work
            except ServerError:
                pass  # a deployment without /health: the next call tells

        sink = MlflowSink(api, ledger, on_param_conflict=policy, on_metric_change=on_metric_change,
                          dry_run=dry_run, progress=landed, prepared=prepared)

        async def first_experiment() -> None:
            if records:
                await sink.experiment(records[0].experiment, records[0].experiment_tags)
            else:
                await api.call("experiments/search", {"max_results": 1})

        # Both at once: one round trip, not two, on a far server. Health's failure is the one
        # told; the experiment's tells of refused credentials (exit code 3). Whatever else it met
        # is told by each of its runs.
        reached, first = await asyncio.gather(reachable(), first_experiment(), return_exceptions=True)
        if isinstance(reached, BaseException):
            raise reached
        if isinstance(first, ConnectionFailed):
            raise first
        created: dict[tuple[str, str], asyncio.Future] = {}
        existing_parents: dict[str, asyncio.Task] = {}
        run_slots = asyncio.Semaphore(max(2, config.max_in_flight * 2))
        outcomes = [Outcome(r.origin, r.experiment, r.import_key) for r in records]
        for rec in records:
            created[(rec.experiment, rec.import_key)] = asyncio.get_running_loop().create_future()

        async def one(rec: RunRecord, out: Outcome) -> None:
            mine = created[(rec.experiment, rec.import_key)]
            try:
                await write(rec, out, mine)
            except Exception as e:  # this run's failure, wherever in its step: the others go on
                out.fail(e)
                if not dry_run:
                    ledger.record_error(api.url, rec.experiment, rec.import_key, rec.origin, out.error)
            finally:
                if not mine.done():  # its children wait on it
                    mine.set_result(out.run_id if out.action != "failed" else None)

        async def write(rec: RunRecord, out: Outcome, mine: asyncio.Future) -> None:
            parent_id = None
            if rec.parent_key is not None and (rec.experiment, rec.parent_key) not in created:
                # A parent not in this import (moved earlier, or deleted and left out).
                exp_id, _ = await sink.experiment(rec.experiment, rec.experiment_tags)
                found = await sink.find(exp_id, rec.parent_key) if exp_id else None
                if found is not None:
                    parent_id = found["info"]["run_id"]
                else:
                    out.notes.append(f"its parent run ({rec.parent_key}) is not part of this "
                                     "import nor on the destination: written without a parent")
            elif rec.parent_key is not None:
                parent_id = await created[(rec.experiment, rec.parent_key)]
                if parent_id is None and not dry_run:
                    out.action, out.error = "failed", f"its parent run {rec.parent_key!r} failed"
                    mine.set_result(None)
                    return
            elif rec.parent_run_id is not None:
                if rec.parent_run_id not in existing_parents:
                    existing_parents[rec.parent_run_id] = asyncio.ensure_future(api.get_run(rec.parent_run_id))
                if await existing_parents[rec.parent_run_id] is None:
                    out.action = "failed"
                    out.error = f"parent run {rec.parent_run_id} does not exist on {api.url}"
                    mine.set_result(None)
                    return
                parent_id = rec.parent_run_id
            async with run_slots:
                await sink.write(rec, parent_id, out, mine)
                if rec.load is not None:  # read again if ever needed: free the memory now
                    rec.metrics, rec.artifacts = {}, []

        await asyncio.gather(*(one(r, o) for r, o in zip(records, outcomes)))
        summary.outcomes = outcomes
        summary.seconds = time.monotonic() - started
        summary.requests, summary.retried = api.requests, api.retried
        return summary


def find(experiment: str, tags: dict[str, str], tracking_uri: Optional[str] = None,
         config: ClientConfig = DEFAULT_CONFIG) -> list[str]:
    """Run ids of the active runs in `experiment` holding every tag in `tags`. This is a read-only
    operation."""
    uri = tracking_uri_or_env(tracking_uri)

    async def search() -> list[str]:
        async with MlflowApi(uri, config) as api:
            found = await api.experiment_by_name(experiment)
            if found is None:
                return []
            where = " and ".join(tag_filter(k, v) for k, v in tags.items())
            ids = []
            async for run in api.search_runs([found["experiment_id"]], where):
                have = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
                if all(have.get(k) == v for k, v in tags.items()):
                    ids.append(run["info"]["run_id"])
            return ids

    return asyncio.run(search())


def summary_json(summary: Summary) -> str:
    return json.dumps(summary.to_dict(), indent=2)
