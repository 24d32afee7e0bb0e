"""Moving runs between stores: `export` (server -> bundle) and `migrate` (server -> server);
`verify` (verify.py) compares the two ends. `import` of a bundle or an `mlruns/` folder is the
ordinary import (pipeline.import_paths); a migration is that import, from a server, with the same
steps after the runs (pipeline.after_runs).

Order of a migration: experiments, runs, MLflow 3 logged models (their points go into the runs),
registered models (a version may be of a logged model), then deleting again the experiments
deleted at the source.

The id map: a moved run carries its source id in the tag `importer.source_run_id` and its import
key `mlflow-run-<source id>` (tag `importer.import_key`); the ledger keeps key -> destination id.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional

from .errors import ImporterError, InputError
from .mlflow_api import DEFAULT_CONFIG, ClientConfig, MlflowApi
from .model import RunRecord, store_run_id
from .model.bundle import BundleExperiment
from .pipeline import Summary, after_runs, check_policy, import_async, open_ledger
from .sinks import experiments
from .sinks.bundle import BundleSink
from .sinks.mlflow import EXPERIMENT_TAGS, Outcome
from .sources import server
from .sources.server import Selection


def check_selection(selection: Selection) -> None:
    """A selection a library caller built by hand is checked as the command line checks its own."""
    if selection.shard is not None:
        i, n = selection.shard
        if not 1 <= i <= n:
            raise InputError(f"shard {i}/{n}: I counts from 1 to N")
    if isinstance(selection.experiments, str):  # ("name") for ("name",): one experiment per letter
        raise InputError(f"experiments {selection.experiments!r}: expected a tuple of names")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------


def export(source_uri: str, out: Path, selection: Selection = Selection(), *,
           models: bool = True, config: ClientConfig = DEFAULT_CONFIG,
           env: Optional[dict[str, str]] = None, progress=None) -> Summary:
    """Write the selected runs of a server into a bundle folder; a rerun resumes, skipping runs
    already exported in their current state and rewriting those that changed."""
    check_selection(selection)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    return asyncio.run(_export(source_uri, Path(out), selection, models, config, env or {}, progress))


async def _export(uri, out, selection, with_models, config, env, progress) -> Summary:
    started = time.monotonic()
    async with MlflowApi(uri, config, env) as api:
        await api.call("experiments/search", {"max_results": 1})  # unreachable or refused: exit 3
        writer = BundleSink(out, api.url)
        summary = Summary(server=str(out), dry_run=False, title="Exported to")
        exps = await server.experiments(api, selection)
        summary.notes += await server.not_carried(api, exps)
        for exp in exps:
            record = server.experiment_record(exp)
            writer.experiment(BundleExperiment(experiment_id=exp["experiment_id"], name=record.name,
                                               tags=record.tags, lifecycle=record.lifecycle))
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
                    parent = store_run_id(rec.parent_key)
                    out_.points = await writer.write(rec, exp["experiment_id"], parent, rec.load.pages())
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
        for m in await server.logged_models(api, exps, records, selection.shard):
            try:
                if not writer.logged_model_done(m.doc):
                    await writer.write_logged_model(m.doc, m.files)
            except (ImporterError, OSError) as e:  # this model only; the others go on
                summary.outcomes.append(Outcome(f"logged model {m.doc.name!r} ({m.doc.model_id})",
                                                m.experiment, f"logged-model-{m.doc.model_id}",
                                                action="failed", error=str(e)))
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else {o.run_id for o in summary.outcomes}
            for model in await server.registered_models(api, ids):
                writer.write_model(model)
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
    copies only what is new or grew. Every argument is checked before anything is written."""
    check_policy(on_param_conflict)
    check_selection(selection)
    ledger = open_ledger(state)
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
        exps = [server.experiment_record(e) for e in found]
        deleted, prepared, notes = await experiments.prepare(dest, exps, EXPERIMENT_TAGS)
        notes += await server.not_carried(api, found)
        records = [rec async for _, rec in server.runs(api, selection)]
        summary = await import_async(records, dst, ledger, policy=policy, config=config,
                                     progress=progress, env=dst_env, prepared=prepared)
        summary.title = f"Migrated from {api.url} to"
        logged = await server.logged_models(api, found, records, selection.shard)
        models = []
        if with_models:
            ids = None if not (selection.experiments or selection.shard) else {r.source_run_id for r in records}
            models = await server.registered_models(api, ids)
        summary.notes += notes + await after_runs(dest, summary, records, logged, models, deleted, selection.shard)
        summary.requests += api.requests + dest.requests
        summary.retried += api.retried + dest.retried
        return summary
