"""The verbs: read sources, validate everything, then write runs with bounded concurrency.

`import_paths`, `validate`, `find` and `schema` are what the CLI calls, one each.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from .errors import InputError, Problem, ServerError, ValidationError
from .ledger import Ledger
from .mlflow_api import DEFAULT_CONFIG, ClientConfig, MlflowApi, tag_filter
from .model import RunRecord, manifest_json_schema
from .sinks.mlflow import MlflowSink, Outcome
from .sources.manifest import read_manifest

PathLike = Union[str, Path]


@dataclass
class Summary:
    """What an import did, run by run, and in total."""

    server: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    retried: int = 0  # requests sent again after a dropped connection, 429 or 5xx

    def count(self, *actions: str) -> int:
        return sum(o.action in actions for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.action == "failed"]

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
                     "unchanged": self.count("unchanged"), "failed": len(self.failed)},
            "points": self.points, "artifacts": self.artifacts,
            "requests": self.requests, "retried": self.retried,
            "experiments": self.experiment_urls(),
            "details": [asdict(o) for o in self.outcomes],
        }

    def text(self) -> str:
        verb = "would be " if self.dry_run else ""
        rate = f", {self.points / self.seconds:,.0f} points/s" if self.seconds and self.points >= 10_000 else ""
        lines = [
            f"{'Dry run against' if self.dry_run else 'Imported into'} {self.server} in {self.seconds:.1f} s",
            f"  runs: {self.count('created', 'would-create')} {verb}created, "
            f"{self.count('appended', 'would-append')} {verb}appended, "
            f"{self.count('unchanged')} unchanged, {len(self.failed)} failed",
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
        for o in self.failed:
            lines.append(f"  FAILED {o.origin} (key {o.import_key!r}): {o.error}")
        for name, url in self.experiment_urls().items():
            lines.append(f"  experiment {name!r}: {url}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _expand(paths: Iterable[PathLike]) -> list[Optional[Path]]:
    """Files to read; None stands for standard input (`-`). A folder means every *.json in it."""
    out: list[Optional[Path]] = []
    for raw in paths:
        if str(raw) == "-":
            out.append(None)
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.json") if p.is_file())
            if not found:
                raise InputError(f"{path}: no *.json manifest in this folder")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return out


def read_records(paths: Iterable[PathLike], experiment: Optional[str] = None) -> list[RunRecord]:
    """Read and validate every input; raise ValidationError listing all problems, or return the
    runs (parents before children). Nothing touches a server."""
    problems: list[Problem] = []
    records: list[RunRecord] = []
    seen: dict[tuple[str, str], str] = {}
    for path in _expand(paths):
        reader = read_manifest(path, experiment, stdin=sys.stdin.buffer)
        problems += reader.problems
        for rec in reader.records:
            scoped = (rec.experiment, rec.import_key)
            if scoped in seen and not seen[scoped].startswith(reader.file + ":"):
                problems.append(Problem(reader.file, rec.origin.split(": ", 1)[-1],
                                        f"run {rec.import_key!r} of experiment {rec.experiment!r} "
                                        f"is also in {seen[scoped]}"))
            seen.setdefault(scoped, rec.origin)
        records += reader.records
    if problems:
        raise ValidationError(problems)
    return records


def validate(paths: Iterable[PathLike], experiment: Optional[str] = None) -> list[RunRecord]:
    """Check inputs without a server. Returns the runs found; raises ValidationError."""
    return read_records(paths, experiment)


def schema() -> dict:
    """The run-manifest JSON Schema."""
    return manifest_json_schema()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def tracking_uri_or_env(tracking_uri: Optional[str]) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError("no tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return uri


def import_paths(paths: Iterable[PathLike], tracking_uri: Optional[str] = None, *,
                 experiment: Optional[str] = None, state: Optional[PathLike] = None,
                 dry_run: bool = False, on_param_conflict: str = "error",
                 config: ClientConfig = DEFAULT_CONFIG,
                 progress: Optional[Callable[[int, int], None]] = None) -> Summary:
    """Import manifests into an MLflow server. Validation of every input comes first: on any
    problem a ValidationError is raised and nothing is written."""
    uri = tracking_uri_or_env(tracking_uri)
    records = read_records(paths, experiment)
    return import_records(records, uri, state=state, dry_run=dry_run,
                          on_param_conflict=on_param_conflict, config=config, progress=progress)


def import_records(records: list[RunRecord], tracking_uri: str, *, state: Optional[PathLike] = None,
                   dry_run: bool = False, on_param_conflict: str = "error",
                   config: ClientConfig = DEFAULT_CONFIG,
                   progress: Optional[Callable[[int, int], None]] = None) -> Summary:
    ledger = Ledger(Path(state) if state else None)
    try:
        return asyncio.run(_import(records, tracking_uri, ledger, dry_run, on_param_conflict,
                                   config, progress))
    finally:
        ledger.close()


async def _import(records: list[RunRecord], uri: str, ledger: Ledger, dry_run: bool,
                  policy: str, config: ClientConfig, progress) -> Summary:
    started = time.monotonic()
    total = sum(r.point_count for r in records)
    done = 0

    def landed(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    async with MlflowApi(uri, config) as api:
        summary = Summary(server=api.url, dry_run=dry_run)
        try:
            await api.health()  # unreachable: ConnectionFailed, exit code 3, before any work
        except ServerError:
            pass  # a deployment without /health: the next call tells
        await api.call("experiments/search", {"max_results": 1})  # credentials refused: exit code 3
        sink = MlflowSink(api, ledger, on_param_conflict=policy, dry_run=dry_run, progress=landed)
        created: dict[tuple[str, str], asyncio.Future] = {}
        existing_parents: dict[str, asyncio.Task] = {}
        run_slots = asyncio.Semaphore(max(2, config.max_in_flight * 2))
        outcomes = [Outcome(r.origin, r.experiment, r.import_key) for r in records]
        for rec in records:
            created[(rec.experiment, rec.import_key)] = asyncio.get_running_loop().create_future()

        async def one(rec: RunRecord, out: Outcome) -> None:
            mine = created[(rec.experiment, rec.import_key)]
            parent_id = None
            if rec.parent_key is not None:
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
