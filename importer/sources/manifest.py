"""JSON run manifests (format version 1) -> RunRecords, with every problem named by file and JSON path."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO, Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from ..errors import Problem
from ..files import within
from ..model import (DERIVED_TIMESTAMPS_NOTE, DERIVED_TIMESTAMPS_TAG, FIELD_TAGS, INFINITE_VALUES_TAG,
                     INT64_MAX, INT64_MIN, MAX_MODEL_TAG_VALUE_LENGTH, MAX_PARAM_VALUE_LENGTH,
                     MAX_TAG_VALUE_LENGTH, METRIC_SCHEMA, RUN_ID, ArtifactFile, Columns, Manifest,
                     ModelToRegister, Point, Run, RunRecord, alias_problem, derived_key, flatten_params,
                     key_problem, metric_value, model_name_problem, to_ms, value_problem)
from . import jsondoc
from .base import SourceOptions, SourceResult

_METRIC_SHAPES = {"scalar", "points", "columns"}


def json_path(loc: tuple) -> str:
    """`("runs", 2, "metrics", "val loss", "points", 5, "step")` -> `runs[2].metrics["val loss"][5].step`.
    The metric shape names pydantic puts into locations are dropped."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if i >= 2 and loc[i - 2] == "metrics" and part in _METRIC_SHAPES:
            continue
        out += f".{part}" if part.isidentifier() else f"[{json.dumps(part)}]"
    return out.lstrip(".") or "(document)"


class ManifestReader:
    """Reads one manifest document. `records` holds the runs (parents before children) when
    `problems` is empty."""

    def __init__(self, stream: IO[bytes], size: Optional[int], file: str, base_dir: Path,
                 default_experiment: Optional[str] = None):
        self.file = file
        self.base_dir = base_dir.resolve()
        self.default_experiment = default_experiment
        self.problems: list[Problem] = []
        self.records: list[RunRecord] = []
        self._parse(stream, size)

    def _problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.file, where, message))

    # -- document level ------------------------------------------------------------------------

    def _parse(self, stream: IO[bytes], size: Optional[int]) -> None:
        doc = jsondoc.load(stream, size, self.file, self.problems)
        if doc is None:
            return
        if not isinstance(doc, dict):
            self._problem("(document)", "a manifest must be a JSON object")
            return
        model = Manifest if "format_version" in doc else Run
        try:
            parsed = model.model_validate(doc)
        except pydantic.ValidationError as e:
            for err in e.errors(include_url=False):
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = f"unknown field {err['loc'][-1]!r} (check the spelling)"
                elif err["type"] == "missing":
                    msg = "required field is missing"
                self._problem(json_path(err["loc"]), msg)
            return
        if isinstance(parsed, Manifest):
            experiment, runs, prefix = parsed.experiment, parsed.runs, "runs"
        else:
            experiment, runs, prefix = None, [parsed], ""
            if parsed.experiment is None and self.default_experiment is None:
                self._problem("experiment", "a single-run document must name its `experiment`")
                return
        self._build(runs, prefix, experiment or self.default_experiment)

    # -- runs ----------------------------------------------------------------------------------

    def _build(self, runs: list[Run], prefix: str, experiment: Optional[str]) -> None:
        flat: list[tuple[str, Run, Optional[str], Optional[Run]]] = []  # where, run, experiment, nesting parent

        def collect(items: list[Run], path: str, exp: Optional[str], parent: Optional[Run]) -> None:
            for i, run in enumerate(items):
                where = f"{path}[{i}]" if path else ""
                flat.append((where, run, run.experiment or exp, parent))
                collect(run.runs, f"{where}.runs" if where else "runs", run.experiment or exp, run)

        collect(runs, prefix, experiment, None)
        if not prefix:  # a single-run document: its location is the document itself
            flat[0] = ("(run)",) + flat[0][1:]

        by_id: dict[str, str] = {}  # manifest id -> location
        keys: dict[int, str] = {}
        for where, run, exp, _ in flat:
            if run.id is not None:
                if run.id in by_id:
                    self._problem(f"{where}.id", f"id {run.id!r} is already used at {by_id[run.id]}")
                by_id.setdefault(run.id, where)
            if not exp:
                self._problem(where, "no experiment: set `experiment` in the manifest or the run, "
                              "or pass --experiment")
                continue
            if run.id is None and run.name is None:
                self._problem(where, "a run needs an `id`, or a `name` to derive its import key from")

        built: dict[int, RunRecord] = {}
        for where, run, exp, nest_parent in flat:
            if not exp:
                continue
            start = to_ms(run.start_time) if run.start_time is not None else None
            key = run.id if run.id is not None else derived_key(exp, run.name, start)
            keys[id(run)] = key
            record = self._record(where, run, exp, key)
            if nest_parent is not None:
                if run.parent is not None:
                    self._problem(f"{where}.parent",
                                  "a nested run already has its parent; remove `parent` or un-nest it")
                record.parent_key = keys.get(id(nest_parent))
            elif run.parent is not None:
                if run.parent in by_id:
                    record.parent_key = run.parent
                elif RUN_ID.match(run.parent):
                    record.parent_run_id = run.parent
                else:
                    self._problem(f"{where}.parent", f"{run.parent!r} is neither an `id` in this "
                                  "manifest nor an MLflow run id (32 hex digits)")
            built[id(run)] = record

        # MLflow folds children under their parent only within one experiment.
        exp_of = {rec.import_key: rec.experiment for rec in built.values()}
        for where, run, _, _ in flat:
            rec = built.get(id(run))
            if rec is not None and rec.parent_key is not None and exp_of.get(rec.parent_key) != rec.experiment:
                self._problem(where, f"its parent {rec.parent_key!r} is in experiment "
                              f"{exp_of.get(rec.parent_key)!r}, not {rec.experiment!r}; a parent and its "
                              "children must share one experiment")

        # Derived keys may collide (same name and start time): the user must tell the runs apart.
        seen: dict[tuple[str, str], str] = {}
        for where, run, exp, _ in flat:
            rec = built.get(id(run))
            if rec is None:
                continue
            scoped = (rec.experiment, rec.import_key)
            if run.id is None and scoped in seen:
                self._problem(where, f"same name and start time as the run at {seen[scoped]}; "
                              "give each an `id`")
            seen.setdefault(scoped, where)

        # An alias points at one version: two runs cannot both claim it.
        claimed: dict[tuple[str, str], str] = {}  # (model, alias) -> location
        for where, run, _, _ in flat:
            for i, entry in enumerate(run.models if id(run) in built else []):
                for j, alias in enumerate(entry.aliases):
                    at = f"{where}.models[{i}].aliases[{j}]" if where != "(run)" else f"models[{i}].aliases[{j}]"
                    first = claimed.setdefault((entry.name, alias), at)
                    if first != at:
                        self._problem(at, f"alias {alias!r} of model {entry.name!r} is already "
                                      f"claimed at {first}; an alias points at one version")

        where_of = {rec.import_key: where for where, run, _, _ in flat
                    if (rec := built.get(id(run))) is not None}
        self.records = self._ordered(list(built.values()), where_of)

    def _ordered(self, records: list[RunRecord], where_of: dict[str, str]) -> list[RunRecord]:
        """Parents before children; a parent cycle is a problem."""
        by_key = {r.import_key: r for r in records}
        out: list[RunRecord] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def visit(rec: RunRecord) -> None:
            mark = state.get(rec.import_key)
            if mark == 2:
                return
            if mark == 1:
                self._problem(f"{where_of[rec.import_key]}.parent",
                              f"parent cycle through run {rec.import_key!r}")
                return
            state[rec.import_key] = 1
            if rec.parent_key in by_key:
                visit(by_key[rec.parent_key])
            state[rec.import_key] = 2
            out.append(rec)

        for rec in records:
            visit(rec)
        return out

    def _record(self, where: str, run: Run, experiment: str, key: str) -> RunRecord:
        def at(*parts: str) -> str:
            suffix = json_path(parts)
            return suffix if where == "(run)" else f"{where}.{suffix}"

        rec = RunRecord(
            experiment=experiment, import_key=key, origin=f"{self.file}: {where}", name=run.name,
            start_time=to_ms(run.start_time) if run.start_time is not None else None,
            end_time=to_ms(run.end_time) if run.end_time is not None else None,
            status=run.status, user=run.user, description=run.description, source=run.source)
        if rec.start_time is not None and rec.end_time is not None and rec.end_time < rec.start_time:
            self._problem(at("end_time"), "end_time is before start_time")
        for name, value in (("start_time", rec.start_time), ("end_time", rec.end_time)):
            if value is not None and not 0 <= value <= INT64_MAX:
                self._problem(at(name), "time is out of range")

        try:
            rec.params = flatten_params(run.params)
        except ValueError as e:
            self._problem(at("params"), str(e))
        for k, v in rec.params.items():
            if msg := key_problem(k, "param"):
                self._problem(at("params", k), msg)
            if msg := value_problem(v, MAX_PARAM_VALUE_LENGTH):
                self._problem(at("params", k), msg)

        for k, v in run.tags.items():
            if msg := key_problem(k, "tag"):
                self._problem(at("tags", k), msg)
            elif k in FIELD_TAGS:
                self._problem(at("tags", k), f"set the run's `{FIELD_TAGS[k]}` field instead")
            elif k.startswith("importer."):
                self._problem(at("tags", k), "tags under `importer.` are reserved for importer")
            elif msg := value_problem(v, MAX_TAG_VALUE_LENGTH):
                self._problem(at("tags", k), msg)
        rec.tags = dict(run.tags)

        infinite: list[str] = []
        derived_ts = False
        for k, metric in run.metrics.items():
            if msg := key_problem(k, "metric"):
                self._problem(at("metrics", k), msg)
                continue
            table = self._metric_table(at("metrics", k), metric)
            if table is None:
                continue
            rec.metrics[k] = table
            derived_ts = derived_ts or table.column("timestamp").null_count > 0
            if pc.any(pc.is_inf(table.column("value"))).as_py():
                infinite.append(k)
        if derived_ts:
            rec.tags[DERIVED_TIMESTAMPS_TAG] = DERIVED_TIMESTAMPS_NOTE
        if infinite:
            # The server stores +-Infinity as +-1.797e308; keep the truth on the run.
            rec.tags[INFINITE_VALUES_TAG] = ",".join(infinite)

        rec.artifacts = self._artifacts(where, run)
        rec.models = self._models(at, run, rec.artifacts)
        return rec

    def _models(self, at, run: Run, artifacts: list[ArtifactFile]) -> list[ModelToRegister]:
        """The model versions to register, each checked against the run's artifacts and the
        server's rules for names, aliases and tags."""
        stored = {a.dest for a in artifacts}
        out: list[ModelToRegister] = []
        for i, entry in enumerate(run.models):
            path = entry.path.strip("/")
            if not path or not (path in stored or any(d.startswith(path + "/") for d in stored)):
                self._problem(at("models", i, "path"), f"{entry.path!r} is not among the run's artifacts "
                              "(a file or folder as stored: its `dest` and name)" +
                              (f"; they are: {', '.join(sorted(stored)[:5])}" + (" ..." if len(stored) > 5 else "")
                               if stored else "; the run has none"))
            if msg := model_name_problem(entry.name):
                self._problem(at("models", i, "name"), msg)
            for j, alias in enumerate(entry.aliases):
                if msg := alias_problem(alias):
                    self._problem(at("models", i, "aliases", j), msg)
                elif alias in entry.aliases[:j]:
                    self._problem(at("models", i, "aliases", j), f"alias {alias!r} is given twice")
            for k, v in entry.tags.items():
                if msg := key_problem(k, "tag"):
                    self._problem(at("models", i, "tags", k), msg)
                elif k.startswith("importer."):
                    self._problem(at("models", i, "tags", k), "tags under `importer.` are reserved for importer")
                elif msg := value_problem(v, MAX_MODEL_TAG_VALUE_LENGTH):
                    self._problem(at("models", i, "tags", k), msg)
            out.append(ModelToRegister(entry.name, path, list(entry.aliases), dict(entry.tags),
                                       entry.description))
        return out

    def _metric_table(self, where: str, metric: Any) -> Optional[pa.Table]:
        if isinstance(metric, Columns):
            n = len(metric.step.array)
            lengths = [n, len(metric.value.array)] + ([len(metric.timestamp.array)] if metric.timestamp else [])
            if len(set(lengths)) > 1:
                self._problem(where, "`step`, `value` and `timestamp` must have the same length "
                              f"(got {', '.join(map(str, lengths))})")
                return None
            stamps = metric.timestamp.array if metric.timestamp else pa.nulls(n, pa.int64())
            return pa.table([metric.step.array, stamps, metric.value.array], schema=METRIC_SCHEMA)
        if isinstance(metric, list):
            points: list[Point] = metric
            steps = [p.step for p in points]
            values = [p.value for p in points]
            stamps = [None if p.timestamp is None else to_ms(p.timestamp) for p in points]
        else:
            steps, values, stamps = [0], [metric], [None]
        for i, v in enumerate(steps):
            if not INT64_MIN <= v <= INT64_MAX:
                self._problem(f"{where}[{i}].step" if isinstance(metric, list) else where,
                              f"{v} is outside the 64-bit integer range the server stores")
                return None
        return pa.table({
            "step": pa.array(steps, pa.int64()),
            "timestamp": pa.array(stamps, pa.int64()),
            "value": pa.array([metric_value(v) for v in values], pa.float64()),
        }, schema=METRIC_SCHEMA)

    # -- artifacts -----------------------------------------------------------------------------

    def _artifacts(self, where: str, run: Run) -> list[ArtifactFile]:
        out: list[ArtifactFile] = []
        seen: set[str] = set()
        for i, art in enumerate(run.artifacts):
            at = f"{where}.artifacts[{i}]" if where != "(run)" else f"artifacts[{i}]"
            dest = art.dest.strip("/") if art.dest else ""
            if art.dest is not None and (art.dest.startswith("/") or ".." in dest.split("/")):
                self._problem(f"{at}.dest", "must be a relative folder without '..'")
                continue
            files = self._artifact_files(f"{at}.path", art.path)
            for rel, path in files:
                target = "/".join(p for p in (dest, rel) if p)
                if target in seen:
                    self._problem(at, f"two artifacts would be stored as {target!r}")
                seen.add(target)
                out.append(ArtifactFile(path, target))
        return out

    def _artifact_files(self, at: str, raw: str) -> list[tuple[str, Path]]:
        """(destination-relative path, file) for a file or every file below a folder. Anything that
        resolves outside the manifest's folder is refused, links included."""
        if os.path.isabs(raw):
            self._problem(at, f"{raw!r} is absolute; artifact paths are relative to the manifest")
            return []
        if os.path.normpath(raw).split(os.sep)[0] == "..":  # refused before anything out there is looked at
            self._problem(at, f"{raw!r} leads outside the manifest's folder {self.base_dir}")
            return []
        path = self.base_dir / raw
        if not path.exists():
            self._problem(at, f"{raw!r} does not exist (looked in {self.base_dir})")
            return []
        if not self._inside(path):
            self._problem(at, f"{raw!r} resolves outside the manifest's folder {self.base_dir}")
            return []
        if path.is_file():
            return [(path.name, path)]
        files: list[tuple[str, Path]] = []
        visited: set[Path] = set()

        def walk(folder: Path, rel: str) -> None:
            real = folder.resolve()
            if real in visited:
                return
            visited.add(real)
            for entry in sorted(folder.iterdir()):
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if not self._inside(entry):
                    self._problem(at, f"{sub!r} inside {raw!r} links outside the manifest's folder")
                elif entry.is_dir():
                    walk(entry, sub)
                elif entry.is_file():
                    files.append((sub, entry))

        walk(path, "")
        return files

    def _inside(self, path: Path) -> bool:
        return within(path, self.base_dir)


NAME = "manifest"
_FIRST_KEY = re.compile(rb'^\s*\{\s*"([^"\\]*)"')
_FIELDS = {"format_version", *Run.model_fields}


def detect(path: Path) -> bool:
    """A .json file whose first key is a manifest field (`format_version`, `experiment`, `id`,
    `name`, `metrics`, ...): cheap, and leaves other JSON files (configs, W&B summaries) alone."""
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return False
    with open(path, "rb") as f:
        match = _FIRST_KEY.match(f.read(4096))
    return bool(match) and match.group(1).decode(errors="replace") in _FIELDS


def read(path: Path, options: SourceOptions) -> SourceResult:
    """A manifest file as a source like the others (the experiment option is the default)."""
    reader = read_manifest(path, options.experiment)
    return SourceResult(records=reader.records, problems=reader.problems)


def read_manifest(path: Path | None, default_experiment: Optional[str] = None,
                  stdin: Optional[IO[bytes]] = None) -> ManifestReader:
    """Read a manifest file, or `stdin` when `path` is None (artifacts then resolve against the
    current folder)."""
    if path is None:
        return ManifestReader(stdin, None, "<stdin>", Path.cwd(), default_experiment)
    with open(path, "rb") as f:
        return ManifestReader(f, path.stat().st_size, str(path), path.parent, default_experiment)
