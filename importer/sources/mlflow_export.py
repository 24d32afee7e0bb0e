"""Folders written by mlflow-export-import (and its fork mlflow-migration) -> RunRecords.

Layouts, as the tool has written them over its versions (RUN = a run folder: `run.json` and
`artifacts/`):

    single run    RUN/
    experiment    EXP/experiment.json + EXP/runs/<run id>/     (since late 2025)
                  EXP/experiment.json + EXP/<run id>/          (1.2; mlflow-migration)
                  EXP/manifest.json   + EXP/<run id>/          (before 1.2: {"experiment", "export_info"})
    bulk          ROOT/experiments.json + ROOT/<experiment id>/EXP...  (before 1.2: manifest.json)
    all, models   ROOT/manifest.json + ROOT/experiments/... + ROOT/models/...

Since 1.2 every file is {"system": ..., "info": ..., "mlflow": PAYLOAD}; before, the payload was
the document itself. A run's payload has `info` (the REST RunInfo), `params`, `tags`, `metrics`
(key -> [{value, timestamp, step}, ...]; before March 2022 key -> last value, read as one point
at step 0 with the run's start time), and `inputs` (a list of dataset inputs, or
{"dataset_inputs": [...], "model_inputs": [...]}).

Unit: the folder of the file recognised. A folder is walked top-down and an export's own files
sit above its runs, so an export's root claims the whole export: `importer import out/` reads it
once. `read` takes any folder and reads every run folder below it.

Mapping: experiment = --experiment, else the name in the experiment's file, else the run's tag
`mlflow_export_import.metadata.experiment_name`, else the bulk listing, else the experiment
folder's name. Import key `store_import_key(<original run id>)`. Params and tags exactly as
exported (the tool's own `mlflow_export_import.*` / `mlflow_exim.*` tags too), except
`mlflow.parentRunId`, which becomes `parent_key`. `user` is the `mlflow.user` tag (what the UI
shows; the sink writes one user for both) else `info.user_id`. Metric points in order, NaN and
+-inf as floats; MLflow 3 point fields (model_id, dataset_name, dataset_digest) as extra string
columns. Artifacts: every file below RUN/artifacts/, links not followed out of it.

Not read (each noted): registered models (`models/`, `model.json`), logged models, traces,
prompts and evaluation datasets. A file that is not valid JSON is a problem naming its line and
column; the runs of an experiment whose experiment.json is broken are still read (named from
their tags or the bulk listing), so `inspect` shows them, but the experiment's tags would be lost,
so the import stops until the file is fixed.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from ..errors import Problem
from ..experiments import ExperimentRecord
from ..model import (INT64_MAX, METRIC_SCHEMA, OPTIONAL_METRIC_FIELDS, ArtifactFile, RunRecord,
                     key_problem, param_string, store_import_key)
from .base import Metrics, SourceOptions, SourceResult

NAME = "mlflow-export"
EXPERIMENT_NAME_TAG = "mlflow_export_import.metadata.experiment_name"

_FILES = ("run.json", "experiment.json", "experiments.json", "manifest.json")
_WRAPPED = re.compile(rb'^\s*\{\s*"system"\s*:\s*\{')  # 1.2 and later
_OLD_RUN = re.compile(rb'^\s*\{\s*"(export_info|info)"\s*:\s*\{')
_OLD_MANIFEST = re.compile(rb'^\s*\{\s*("experiment"\s*:\s*\{\s*"experiment_id"|"info"\s*:\s*\{\s*"mlflow_version")')
_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# What the tool exports besides runs: the summary file that marks it -> what it is.
_NOT_RUNS = {"models.json": "registered models", "model.json": "a registered model",
             "logged_models.json": "logged models", "traces.json": "traces",
             "prompts_summary.json": "prompts", "evaluation_datasets_summary.json": "evaluation datasets"}


def detect(path: Path) -> bool:
    """One of the tool's four file names, with the tool's shape in its first 4 KiB: `system` as
    first key (1.2 and later), or an old run (`info` with `run_uuid`) or old manifest. Importer's
    own manifests never start like this."""
    if path.name not in _FILES or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if _WRAPPED.match(head):
        return True
    if path.name == "run.json":
        return bool(_OLD_RUN.match(head)) and b'"run_uuid"' in head
    return path.name == "manifest.json" and bool(_OLD_MANIFEST.match(head))


def unit(file: Path) -> Path:
    """The folder holding the file: a run, an experiment or a whole export."""
    return file.parent


def _experiment_tags(exp: dict) -> dict[str, str]:
    tags = _pairs(exp.get("tags"))
    if isinstance(exp.get("description"), str):
        tags.setdefault("mlflow.note.content", exp["description"])
    return tags


def read(path: Path, options: SourceOptions) -> SourceResult:
    """Every exported run below `path` (a folder, or one of the tool's files in it)."""
    return _Export(path if path.is_dir() else path.parent, options).read()


def _payload(doc: dict) -> dict:
    """The MLflow part of a document: `mlflow` since 1.2, the document itself before."""
    data = doc.get("mlflow") if "system" in doc else doc
    return data if isinstance(data, dict) else {}


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _pairs(value: Any) -> dict[str, str]:
    """Tags and params: a JSON object, or a list of {key, value} as the REST API gives them."""
    if isinstance(value, list):
        value = {t.get("key"): t.get("value") for t in value if isinstance(t, dict)}
    if not isinstance(value, dict):
        return {}
    return {str(k): param_string(v) for k, v in value.items() if k is not None and v is not None}


def _at(*parts: Any) -> str:
    """A JSON path: `mlflow.metrics["val loss"][3]`."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if p.isidentifier() else f"[{json.dumps(p)}]"
    return out.lstrip(".")


class _Export:
    def __init__(self, root: Path, options: SourceOptions):
        self.root, self.options = root, options
        self.result = SourceResult()
        self.docs: dict[Path, Optional[dict]] = {}
        self.experiments: dict[Path, Optional[dict]] = {}

    def problem(self, file: Path, where: str, message: str) -> None:
        self.result.problems.append(Problem(str(file), where, message))

    def note(self, message: str) -> None:
        self.result.notes.append(message)

    def doc(self, file: Path) -> Optional[dict]:
        """The parsed JSON object, once per file; None (and a problem) when it is not one."""
        if file not in self.docs:
            self.docs[file] = None
            try:
                doc = json.loads(file.read_bytes())
            except UnicodeDecodeError as e:
                self.problem(file, f"byte {e.start}", "the file is not UTF-8 text")
            except json.JSONDecodeError as e:
                self.problem(file, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg.removesuffix(' at')}")
            except OSError as e:
                self.problem(file, "", f"cannot read the file: {e.strerror}")
            else:
                if isinstance(doc, dict):
                    self.docs[file] = doc
                else:
                    self.problem(file, "(document)", "must be a JSON object")
        return self.docs[file]

    # -- the walk ------------------------------------------------------------------------------

    def read(self) -> SourceResult:
        records: dict[str, RunRecord] = {}
        for run_dir in self.run_folders():
            rec = self.run(run_dir)
            if rec is None:
                continue
            if rec.import_key in records:
                self.problem(run_dir / "run.json", "", f"run {rec.source_run_id} is also exported in "
                             f"{records[rec.import_key].origin}")
                continue
            records[rec.import_key] = rec
        for rec in records.values():
            if rec.parent_key is not None and rec.parent_key not in records:
                self.note(f"{rec.origin}: its parent run ({rec.parent_key}) is not in this export; "
                          "it must have been imported before")
        # Parents before children.
        done: set[str] = set()

        def visit(rec: RunRecord) -> None:
            if rec.import_key not in done:
                done.add(rec.import_key)
                if rec.parent_key in records:
                    visit(records[rec.parent_key])
                self.result.records.append(rec)

        for rec in records.values():
            visit(rec)
        return self.result

    def run_folders(self):
        """Folders holding a run.json, not descending into them (artifacts, logged models)."""
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if "run.json" in files:
                dirs[:] = []
                yield here
                continue
            skipped = [name for name in _NOT_RUNS if name in files]
            if skipped and "experiment.json" not in files:  # a model version export holds a run
                if dirs or skipped[0] in ("models.json", "model.json"):
                    self.note(f"{here}: {_NOT_RUNS[skipped[0]]} not imported (only runs and "
                              "experiments are)")
                dirs[:] = []

    # -- one run -------------------------------------------------------------------------------

    def run(self, run_dir: Path) -> Optional[RunRecord]:
        file = run_dir / "run.json"
        doc = self.doc(file)
        if doc is None:
            return None
        data, pre = _payload(doc), ("mlflow",) if "system" in doc else ()
        info = data.get("info")
        if not isinstance(info, dict):
            self.problem(file, _at(*pre, "info"), "required field is missing: not a run exported by "
                         "mlflow-export-import")
            return None
        run_id = info.get("run_id") or info.get("run_uuid")
        if not isinstance(run_id, str):
            self.problem(file, _at(*pre, "info", "run_id"), "required field is missing")
            return None

        params, tags = _pairs(data.get("params")), _pairs(data.get("tags"))
        for kind, values in (("param", params), ("tag", tags)):
            for k in list(values):
                if msg := key_problem(k, kind):
                    self.problem(file, _at(*pre, kind + "s", k), msg)
                    del values[k]
        parent = tags.pop("mlflow.parentRunId", None)

        status = info.get("status", "FINISHED")
        if isinstance(status, int) and 1 <= status <= 5:  # MLflow 0.x stored the enum's number
            status = _STATUSES[status - 1]
        if status not in _STATUSES:
            self.problem(file, _at(*pre, "info", "status"), f"{status!r} is not one of {', '.join(_STATUSES)}")
        lifecycle = info.get("lifecycle_stage", "active")
        if lifecycle not in ("active", "deleted"):
            self.problem(file, _at(*pre, "info", "lifecycle_stage"), f"{lifecycle!r} is not active or deleted")
        times = {}
        for name in ("start_time", "end_time"):
            value = info.get(name)
            if value is not None and not (type(value) is int and 0 <= value <= INT64_MAX):
                self.problem(file, _at(*pre, "info", name), f"must be milliseconds since the epoch, got {value!r}")
                value = None
            times[name] = value

        experiment, experiment_tags = self.experiment_of(run_dir, tags)
        rec = RunRecord(
            experiment=experiment, import_key=store_import_key(run_id), origin=str(file),
            name=info.get("run_name") or tags.get("mlflow.runName"), status=str(status),
            user=tags.get("mlflow.user") or info.get("user_id") or None,
            description=tags.get("mlflow.note.content"), params=params, tags=tags,
            source_run_id=run_id, lifecycle=str(lifecycle), experiment_tags=experiment_tags,
            parent_key=store_import_key(parent) if parent else None, **times)
        metrics = Metrics(str(file), self.result)
        self.metrics(file, pre, data.get("metrics"), metrics)
        metrics.finish(rec)
        rec.inputs = self.inputs(file, pre, data)
        rec.artifacts = self.artifacts(run_dir, file)
        others = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and p.name != "artifacts")
        if others:
            self.note(f"{run_dir}: {', '.join(others)} not read (logged models are not imported)")
        return rec

    def metrics(self, file: Path, pre: tuple, raw: Any, out: Metrics) -> None:
        if not isinstance(raw, dict):
            if raw is not None:
                self.problem(file, _at(*pre, "metrics"), "must be an object of metric histories")
            return
        for key, points in raw.items():
            where = _at(*pre, "metrics", key)
            if msg := key_problem(key, "metric"):
                self.problem(file, where, msg)
                continue
            if not isinstance(points, list):  # before March 2022: only the last value
                points = [{"value": points, "step": 0}]
            table = self.metric_table(file, where, points)
            if table is not None:
                out.add(key, table, where)

    def metric_table(self, file: Path, where: str, points: list) -> Optional[pa.Table]:
        steps, stamps, values = [], [], []
        for i, p in enumerate(points):
            v = p.get("value") if isinstance(p, dict) else None
            value = _SPECIAL.get(v) if isinstance(v, str) else float(v) if type(v) in (int, float) else None
            step, ts = (p.get("step", 0), p.get("timestamp")) if isinstance(p, dict) else (None, None)
            if value is None or type(step) is not int or not (ts is None or type(ts) is int):
                self.problem(file, f"{where}[{i}]", "a point must be {value: number, step: integer, "
                             f"timestamp: integer}}, got {p!r}")
                return None
            steps.append(step)
            stamps.append(ts)
            values.append(value)
        columns, schema = [steps, stamps, values], METRIC_SCHEMA
        for name in OPTIONAL_METRIC_FIELDS:  # MLflow 3: the logged model and dataset of a point
            extra = [p.get(name) for p in points]
            if any(x is not None for x in extra):
                columns.append([None if x is None else str(x) for x in extra])
                schema = schema.append(pa.field(name, pa.string()))
        try:
            return pa.table([pa.array(c, f.type) for c, f in zip(columns, schema)], schema=schema)
        except (OverflowError, pa.ArrowInvalid):
            self.problem(file, where, "a step or timestamp is outside the 64-bit integer range the server stores")
            return None

    def inputs(self, file: Path, pre: tuple, data: dict) -> list[dict]:
        """Dataset inputs in the REST shape {"dataset": {...}, "tags": [{key, value}]}."""
        raw = data.get("inputs")
        if isinstance(raw, dict):  # mlflow-export-import: {"dataset_inputs", "model_inputs"}
            if raw.get("model_inputs") or _get(data, "outputs", "model_outputs"):
                self.note(f"{file}: logged-model inputs and outputs are not imported")
            raw = raw.get("dataset_inputs")
        if not isinstance(raw, list):
            if raw:
                self.problem(file, _at(*pre, "inputs"), "must be a list of dataset inputs")
            return []
        out = []
        for i, item in enumerate(raw):
            dataset = item.get("dataset") if isinstance(item, dict) else None
            if not isinstance(dataset, dict):
                self.problem(file, _at(*pre, "inputs", i), "a dataset input needs a `dataset` object")
                continue
            tags = [{k: v for k, v in t.items() if v is not None}
                    for t in item.get("tags") or [] if isinstance(t, dict)]
            out.append({"dataset": {k: v for k, v in dataset.items() if v is not None}, "tags": tags})
        return out

    def artifacts(self, run_dir: Path, file: Path) -> list[ArtifactFile]:
        """Every file below RUN/artifacts/; a link may point only inside that folder."""
        base = run_dir / "artifacts"
        if base.is_symlink():
            self.problem(file, "artifacts", "the artifacts folder is a link; links are not followed")
            return []
        real = base.resolve()
        out = []
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files) + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                path = Path(folder) / name
                rel = path.relative_to(base).as_posix()
                if path.is_symlink() and not (path.resolve().is_relative_to(real) and path.is_file()):
                    self.problem(file, f"artifacts/{rel}", "a link to a folder, outside the run's artifacts "
                                 "or to nothing; links are not followed")
                elif path.is_file():
                    out.append(ArtifactFile(path, rel))
        return out

    # -- experiments ---------------------------------------------------------------------------

    def experiment_of(self, run_dir: Path, tags: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(experiment name, experiment tags) for a run folder. Its experiment folder is the
        folder above it, or above `runs/`; read even when outside the folder named (a run
        folder named on its own still finds its experiment)."""
        exp_dir = _up(run_dir, 2 if _abs(run_dir).parent.name == "runs" else 1)
        exp = self.experiment(exp_dir)
        exp_tags = _experiment_tags(exp) if exp else {}
        folder = _abs(exp_dir) if self.inside(exp_dir) else _abs(run_dir)
        name = (self.options.experiment or (exp or {}).get("name") or tags.get(EXPERIMENT_NAME_TAG)
                or self.listed(exp_dir) or folder.name)
        return str(name), exp_tags

    def inside(self, path: Path) -> bool:
        return _abs(path).is_relative_to(_abs(self.root))

    def experiment(self, exp_dir: Path) -> Optional[dict]:
        """The experiment object of EXP/experiment.json (or an old EXP/manifest.json), once per
        folder; listed runs without a folder are problems, runs the export failed are noted."""
        if exp_dir in self.experiments:
            return self.experiments[exp_dir]
        self.experiments[exp_dir] = None
        for file in (exp_dir / "experiment.json", exp_dir / "manifest.json"):
            if not detect(file):
                continue
            if (doc := self.doc(file)) is None:
                self.note(f"{file}: unreadable, so its runs are named from their tags, the bulk listing "
                          "or the folder, and the experiment's tags are not known")
                continue
            data = _payload(doc)
            exp = data.get("experiment")
            if not isinstance(exp, dict):
                if file.name == "experiment.json":
                    self.problem(file, "mlflow.experiment", "required field is missing")
                continue  # a bulk manifest.json
            self.experiments[exp_dir] = exp
            if not self.options.experiment and isinstance(exp.get("name"), str):
                gone = exp.get("lifecycle_stage") == "deleted"
                self.result.experiments.append(
                    ExperimentRecord(exp["name"], _experiment_tags(exp), "deleted" if gone else "active"))
            if "system" in doc:
                listed, failed = data.get("runs"), _get(doc, "info", "failed_runs")
            else:
                listed, failed = _get(doc, "export_info", "ok_runs"), _get(doc, "export_info", "failed_runs")
            for run_id in listed if isinstance(listed, list) and self.inside(exp_dir) else []:
                if not ((exp_dir / "runs" / str(run_id)).is_dir() or (exp_dir / str(run_id)).is_dir()):
                    self.problem(file, _at("mlflow" if "system" in doc else "export_info", "runs"),
                                 f"run {run_id} is listed, but its folder is missing")
            if failed:
                self.note(f"{file}: the export failed for {len(failed)} run(s), which are not in it: "
                          + ", ".join(map(str, failed)))
            break
        return self.experiments[exp_dir]

    def listed(self, exp_dir: Path) -> Optional[str]:
        """The experiment's name in a bulk export's listing (experiments.json, or manifest.json
        before 1.2), found by the folder's name, which is the experiment id."""
        bulk = _up(exp_dir, 1)
        for file in (bulk / "experiments.json", bulk / "manifest.json"):
            if detect(file) and (doc := self.doc(file)) is not None:
                for entry in _payload(doc).get("experiments") or []:
                    if isinstance(entry, dict) and str(entry.get("id")) == _abs(exp_dir).name:
                        return entry.get("name")
        return None


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _up(path: Path, levels: int) -> Path:
    """The folder `levels` above, in the form the path was given (`.` has a parent too)."""
    return Path(os.path.normpath(os.path.join(path, *[".."] * levels)))
