"""Folders written by mlflow-export-import and mlflow-migration -> RunRecords, registered models
and MLflow 3 logged models.

Reads every layout the tool has written (single run, experiment, bulk, model, all; before and
after its 1.2 envelope). Runs keep their source ids (import key `mlflow-run-<id>`). A run that
cannot be read (its `run.json`, or listed in `experiment.json` without its folder) is lost alone,
as is a problem in one model or version. Layouts, mapping and what is not read:
docs/formats/mlflow-export.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pydantic

from ..files import within
from ..model import (DELETED_VERSION, INT64_MAX, METRIC_SCHEMA, OPTIONAL_METRIC_FIELDS, SPECIAL_VALUES,
                     ArtifactFile, ExperimentRecord, LoggedModel, LoggedModelRecord, ModelMetric,
                     ModelVersion, RegisteredModel, RunRecord, artifact_path, key_problem,
                     logged_model_id, model_stored_value, param_string, status_name, store_import_key)
from .base import Metrics, SourceOptions, SourceResult, StoreReader, text_or_none

NAME = "mlflow-export"
EXPERIMENT_NAME_TAG = "mlflow_export_import.metadata.experiment_name"

_FILES = ("run.json", "experiment.json", "experiments.json", "manifest.json", "model.json", "models.json")
_WRAPPED = re.compile(rb'^\s*\{\s*"system"\s*:\s*\{')  # 1.2 and later
_OLD_MODEL = re.compile(rb'^\s*\{\s*"registered_model"\s*:\s*\{')  # model.json before December 2022
_OLD_RUN = re.compile(rb'^\s*\{\s*"(export_info|info)"\s*:\s*\{')
_OLD_MANIFEST = re.compile(rb'^\s*\{\s*("experiment"\s*:\s*\{\s*"experiment_id"|"info"\s*:\s*\{\s*"mlflow_version")')
_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
# What the tool exports besides runs and models: the summary file that marks it -> what it is.
_NOT_RUNS = {"traces.json": "traces",
             "prompts_summary.json": "prompts", "evaluation_datasets_summary.json": "evaluation datasets"}


def detect(path: Path) -> bool:
    """One of the tool's file names, with the tool's shape in its first 4 KiB: `system` as first
    key (1.2 and later), or an old run (`info` with `run_uuid`), model (`registered_model`) or
    manifest. Importer's own manifests never start like this."""
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
    if path.name == "model.json":
        return bool(_OLD_MODEL.match(head))
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


class _Export(StoreReader):
    def __init__(self, root: Path, options: SourceOptions):
        super().__init__(SourceResult())
        self.root, self.options = root, options
        self.docs: dict[Path, Optional[dict]] = {}
        self.experiments: dict[Path, Optional[dict]] = {}
        self.model_dirs: list[Path] = []  # export-model folders (model.json), read after the walk
        # Run or logged model id -> the experiment model.json names for it (`_experiment_name`):
        # a version's run exported beside its model has no experiment file of its own.
        self.version_experiments: dict[str, str] = {}

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

        def add(run_dir: Path, copy: bool = False) -> None:
            with self.one_run() as problems:  # a run that cannot be read fails alone
                rec = self.run(run_dir)
            if rec is None or problems:
                return
            if rec.import_key in records:
                if not copy:
                    self.problem(run_dir / "run.json", "", f"run {rec.source_run_id} is also exported in "
                                 f"{records[rec.import_key].origin}")
                return
            records[rec.import_key] = rec

        for run_dir in self.run_folders():
            add(run_dir)
        # After the walk: export-models and export-all write each version's run twice, with its
        # experiment and beside its model; the experiment's copy (with experiment.json) is read.
        for model_dir in self.model_dirs:
            for run_dir in self.model_export(model_dir):
                if store_import_key(run_dir.name) not in records:  # the tool names the folder by the run id
                    add(run_dir, copy=True)
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
        self.hand_over()
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
            if "logged_models.json" in files:  # EXP/logged_models/: one folder per model
                self.logged_models(here)
                dirs[:] = []
                continue
            if "model.json" in files and detect(here / "model.json"):
                if "experiment.json" not in files:  # export-model: read once every other run is
                    self.model_dirs.append(here)
                    dirs[:] = []
                    continue
                if "version.json" in files:  # export-model-version: its run is in run/
                    self.note(f"{here}: a registered model version (version.json) is not imported, "
                              "only its run")
            if "models.json" in files:
                self.models_listing(here / "models.json")
            skipped = [name for name in _NOT_RUNS if name in files]
            if skipped and "experiment.json" not in files:
                if dirs:
                    self.note(f"{here}: {_NOT_RUNS[skipped[0]]} not imported (only runs, experiments "
                              "and models are)")
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

        params = self.checked(file, (*pre, "params"), "param", data.get("params"))
        tags = self.checked(file, (*pre, "tags"), "tag", data.get("tags"))
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

        experiment, experiment_tags = self.experiment_of(run_dir, run_id, tags)
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
        rec.inputs = self.inputs(file, pre, data, run_id)
        rec.artifacts = self.artifacts(run_dir, file)
        others = []
        for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name != "artifacts"):
            if (sub / "logged_model.json").is_file():  # a run exported alone, with its models
                with self.aside():
                    self.logged_model(sub, experiment)
            else:
                others.append(sub.name)
        if others:
            self.note(f"{run_dir}: {', '.join(others)} not read")
        return rec

    def checked(self, file: Path, at: tuple, kind: str, raw: Any) -> dict[str, str]:
        """Params or tags (`_pairs`), without the keys the server rejects (each a problem)."""
        values = _pairs(raw)
        for k in list(values):
            if msg := key_problem(k, kind):
                self.problem(file, _at(*at, k), msg)
                del values[k]
        return values

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
            value = SPECIAL_VALUES.get(v) if isinstance(v, str) else float(v) if type(v) in (int, float) else None
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

    def inputs(self, file: Path, pre: tuple, data: dict, run_id: str) -> list[dict]:
        """Dataset inputs in the REST shape {"dataset": {...}, "tags": [{key, value}]}; the
        MLflow 3 links to logged models (inputs.model_inputs, outputs.model_outputs) go to `links`."""
        raw = data.get("inputs")
        if isinstance(raw, dict):  # mlflow-export-import: {"dataset_inputs", "model_inputs"}
            for output, items in ((False, raw.get("model_inputs")), (True, _get(data, "outputs", "model_outputs"))):
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and isinstance(item.get("model_id"), str):
                        step = item.get("step") if type(item.get("step")) is int else 0
                        self.links.append((str(file), item["model_id"], run_id, step if output else None))
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
        out = []
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for name in sorted(files) + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                path = Path(folder) / name
                rel = path.relative_to(base).as_posix()
                if path.is_symlink() and not (within(path, base) and path.is_file()):
                    self.problem(file, f"artifacts/{rel}", "a link to a folder, outside the run's artifacts "
                                 "or to nothing; links are not followed")
                elif path.is_file():
                    out.append(ArtifactFile(path, rel))
        return out

    # -- MLflow 3 logged models ----------------------------------------------------------------

    def logged_models(self, folder: Path) -> None:
        """EXP/logged_models/: logged_models.json (per experiment: id, name, the model ids) and
        one <model id>/ folder per model. A problem loses only that model (`aside`)."""
        exp = self.experiment(_up(folder, 1))  # its problems are the runs' too: not aside
        with self.aside():
            doc = self.doc(folder / "logged_models.json")
            listing = {str(e.get("id")): e.get("name") for e in _payload(doc or {}).get("experiments") or []
                       if isinstance(e, dict)}
            if failed := _get(doc, "info", "failed_logged_models"):
                self.note(f"{folder / 'logged_models.json'}: the export failed for {len(failed)} logged "
                          "model(s), which are not in it: " + ", ".join(map(str, failed)))
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                self.logged_model(sub, self.options.experiment or (exp or {}).get("name"), listing)

    def logged_model(self, folder: Path, experiment: Optional[str], listing: Optional[dict] = None) -> None:
        """<model id>/logged_model.json (the tool's dump of MLflow's LoggedModel) and artifacts/."""
        file = folder / "logged_model.json"
        doc = self.doc(file)
        if doc is None:
            return
        data, pre = _payload(doc), ("mlflow",) if "system" in doc else ()
        model_id, exp_id = data.get("model_id"), data.get("experiment_id")
        status = status_name(data.get("status"))
        for field, ok in (("model_id", isinstance(model_id, str)), ("experiment_id", exp_id is not None),
                          ("status", status is not None)):
            if not ok:
                self.problem(file, _at(*pre, field), f"missing or not valid ({data.get(field)!r}); "
                             "this logged model is not imported")
                return
        if model_id in self.logged:
            return  # exported twice (with its run, and with its experiment)
        experiment = experiment or (listing or {}).get(str(exp_id)) or str(exp_id)
        metrics = []
        for i, p in enumerate(data.get("metrics") or []):
            try:
                v = p["value"]
                metrics.append(ModelMetric(
                    key=p["key"], value=model_stored_value(SPECIAL_VALUES[v] if isinstance(v, str) else float(v)),
                    timestamp=p["timestamp"], step=p.get("step") or 0, run_id=p["run_id"],
                    dataset_name=p.get("dataset_name"), dataset_digest=p.get("dataset_digest")))
            except (TypeError, KeyError, ValueError, pydantic.ValidationError):
                self.problem(file, _at(*pre, "metrics", i), "a point must be {key, value, timestamp, step, "
                             f"run_id[, dataset_name, dataset_digest]}}, got {p!r}; it is not imported")
        created = data.get("creation_time", data.get("creation_timestamp"))
        model = LoggedModelRecord(
            model_id=model_id, experiment_id=str(exp_id), name=str(data.get("name") or model_id),
            model_type=data.get("model_type") or None, status=status,
            status_message=data.get("status_message") or None, source_run_id=data.get("source_run_id") or None,
            creation_timestamp_ms=created if type(created) is int else None,
            params=_pairs(data.get("params")), tags=_pairs(data.get("tags")), metrics=metrics)
        self.logged[model_id] = LoggedModel(model, experiment, self.artifacts(folder, file))

    # -- registered models ---------------------------------------------------------------------

    def model_export(self, folder: Path) -> list[Path]:
        """An export-model folder: model.json, and beside it each version's run (<run id>/) and,
        for an MLflow 3 version, its logged model (<model id>/). Returns the run folders. A
        problem in the model or its logged models loses only them (`aside`)."""
        with self.aside():
            self.registered_model(folder / "model.json")
        runs, others = [], []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (sub / "run.json").is_file():
                runs.append(sub)
            elif (sub / "logged_model.json").is_file():
                with self.aside():
                    self.logged_model(sub, self.options.experiment or self.version_experiments.get(sub.name))
            else:  # version_models/ (--export-version-model): copies of what the runs hold
                others.append(sub.name)
        if others:
            self.note(f"{folder}: {', '.join(others)} not read")
        return runs

    def registered_model(self, file: Path) -> None:
        """model.json: MLflow's registered model as the REST API gives it (tags and aliases as
        lists), its versions as the Python client's ModelVersion (tags as an object), each with
        the tool's `_experiment_name` of its run -> a model.RegisteredModel, as sinks/registry.copy_models
        takes it. Deleted versions are left out: the writer keeps the numbers of the others."""
        doc = self.doc(file)
        if doc is None:
            return
        pre = ("mlflow",) if "system" in doc else ()
        model = _payload(doc).get("registered_model")
        name = model.get("name") if isinstance(model, dict) else None
        if not isinstance(name, str) or not name:
            self.problem(file, _at(*pre, "registered_model", "name"), "required field is missing; this "
                         "registered model is not imported")
            return
        # Until January 2023 the versions were under `latest_versions` (all of them, despite the name).
        key = "latest_versions" if "latest_versions" in model and "versions" not in model else "versions"
        raw = model.get(key) or []
        if not isinstance(raw, list):
            self.problem(file, _at(*pre, "registered_model", key), "must be a list of model versions")
            raw = []
        aliases = {str(a["alias"]): str(a.get("version")) for a in model.get("aliases") or []
                   if isinstance(a, dict) and a.get("alias")}
        versions = []
        for i, v in enumerate(raw):
            version = self.model_version(file, (*pre, "registered_model", key, i), v)
            if version is not None:
                versions.append(version)
                for alias in v["aliases"] if isinstance(v.get("aliases"), list) else []:  # since late 2023
                    aliases.setdefault(str(alias), version.version)
        if failed := _get(doc, "info", "failed_versions"):
            self.note(f"{file}: the export failed for {len(failed)} version(s) of model {name!r}, which "
                      "are not in it")
        versions.sort(key=lambda v: int(v.version))
        self.result.models.append(RegisteredModel(
            name=name, description=text_or_none(model.get("description")),
            tags=self.checked(file, (*pre, "registered_model", "tags"), "tag", model.get("tags")),
            aliases=aliases, versions=versions))

    def model_version(self, file: Path, at: tuple, v: Any) -> Optional[ModelVersion]:
        """One entry of model.json's versions; None for a deleted one, or (a problem) a broken one."""
        if not isinstance(v, dict):
            self.problem(file, _at(*at), "a model version must be an object; it is not imported")
            return None
        if v.get("current_stage") == DELETED_VERSION:
            return None
        number, source, run_id = v.get("version"), v.get("source"), v.get("run_id") or None
        numbered = type(number) is int and number > 0 or isinstance(number, str) and number.isdigit()
        for field, ok in (("version", numbered), ("source", isinstance(source, str) and source != ""),
                          ("run_id", run_id is None or isinstance(run_id, str))):
            if not ok:
                self.problem(file, _at(*at, field), f"missing or not valid ({v.get(field)!r}); this version "
                             "is not imported")
                return None
        model_id = logged_model_id({"model_id": v.get("model_id"), "source": source})
        if isinstance(v.get("_experiment_name"), str):
            for run_or_model in (run_id, model_id):
                if run_or_model:
                    self.version_experiments.setdefault(run_or_model, v["_experiment_name"])
        stage = text_or_none(v.get("current_stage"))
        return ModelVersion(
            version=str(number), run_id=run_id, source=source, model_id=model_id,
            artifact_path=artifact_path(source, run_id), description=text_or_none(v.get("description")),
            tags=self.checked(file, (*at, "tags"), "tag", v.get("tags")),
            stage=None if stage == "None" else stage, status=text_or_none(v.get("status")))

    def models_listing(self, file: Path) -> None:
        """ROOT/models/models.json: the models exported (each must have its folder) and those
        the export failed (noted)."""
        with self.aside():
            doc = self.doc(file) if detect(file) else None
            if failed := _get(doc, "info", "failed_models"):
                self.note(f"{file}: the export failed for {len(failed)} registered model(s), which are "
                          "not in it: " + ", ".join(map(str, failed)))
            for name in _payload(doc or {}).get("models") or []:
                if isinstance(name, str) and not (file.parent / name / "model.json").is_file():
                    self.problem(file, "mlflow.models", f"model {name!r} is listed, but its folder or "
                                 "its model.json is missing")

    # -- experiments ---------------------------------------------------------------------------

    def experiment_of(self, run_dir: Path, run_id: str, tags: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(experiment name, experiment tags) for a run folder. Its experiment folder is the
        folder above it, or above `runs/`; read even when outside the folder named (a run
        folder named on its own still finds its experiment). A run exported beside its model
        takes the experiment model.json names. Problems of these files are the experiment's, not
        the run's: they stop the import (the experiment's tags would be lost)."""
        exp_dir = _up(run_dir, 2 if _abs(run_dir).parent.name == "runs" else 1)
        with self.into(self.result.problems):
            exp = self.experiment(exp_dir)
            exp_tags = _experiment_tags(exp) if exp else {}
            folder = _abs(exp_dir) if self.inside(exp_dir) else _abs(run_dir)
            name = (self.options.experiment or (exp or {}).get("name") or tags.get(EXPERIMENT_NAME_TAG)
                    or self.version_experiments.get(run_id) or self.listed(exp_dir) or folder.name)
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
                    with self.aside():  # loses only that run: the others are imported
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
