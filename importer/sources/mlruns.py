"""MLflow file-store folders (`mlruns/`) from MLflow 1.x to 3.x -> RunRecords, logged models and
registered models.

Every run keeps its id, times, status, user, lifecycle, params and tags byte for byte, and every
metric point. Artifacts come from `<run>/artifacts/`; a run whose artifact location is elsewhere
(another machine's `file:///C:/...`) has them looked for by the location's longest end, under the
folder read and its parent, or where `--artifact-root OLD=NEW` maps it. A run that cannot be read
(its `meta.yaml`, a metrics line, a key the server rejects) is lost alone, as is a broken model,
version or point. Layout read and mapping: docs/formats/mlruns.md.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import yaml

from ..errors import Problem
from ..files import within
from ..model import (DELETED_VERSION, INFINITE_VALUES_TAG, METRIC_SCHEMA, ArtifactFile, ExperimentRecord,
                     LoggedModel, LoggedModelRecord, ModelMetric, ModelVersion, RegisteredModel, RunRecord,
                     artifact_path, key_problem, logged_model_id, model_stored_value, status_name,
                     store_import_key)
from ..model.values import NumberText, int64_problem, integer_text
from .base import SourceOptions, SourceResult, StoreReader, metric_table, text_or_none

NAME = "mlruns"
STATUSES = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
PARENT_TAG = "mlflow.parentRunId"
_HEAD = 8192  # meta.yaml files are a few hundred bytes; detect reads no more than this
_DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")  # REST Dataset
_NOT_RUNS = {"tags", "datasets", "models", "traces"}  # folders of an experiment that are not runs
_COLUMNS = pacsv.ConvertOptions(
    column_types={"f0": pa.int64(), "f1": pa.float64(), "f2": pa.int64(),  # timestamp value step
                  "f3": pa.string(), "f4": pa.string()},  # MLflow 3: dataset_name dataset_digest
    null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False)  # "nan" is a value
_PARSE = pacsv.ParseOptions(delimiter=" ", quote_char=False)
_READ = pacsv.ReadOptions(autogenerate_column_names=True)
_DRIVE = re.compile(r"^[A-Za-z]:[/\\]")  # a Windows path, which urlparse takes for a URL of scheme `c`


def _kind(doc) -> Optional[str]:
    """"run", "experiment" or None for a parsed meta.yaml (logged models and registered models
    have meta.yaml files too: they name a model_id or no experiment_id)."""
    if not isinstance(doc, dict) or "experiment_id" not in doc:
        return None
    if "run_id" in doc or "run_uuid" in doc:
        return "run"
    if "model_id" not in doc and ("name" in doc or "artifact_location" in doc):
        return "experiment"
    return None


def _head_kind(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return _kind(yaml.safe_load(f.read(_HEAD)))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None


def detect(path: Path) -> bool:
    """A run's or an experiment's meta.yaml of a file store."""
    return path.name == "meta.yaml" and path.is_file() and _head_kind(path) is not None


def unit(file: Path) -> Path:
    """The store root (the folder holding the experiment folders and `.trash`) for a meta.yaml."""
    exp = file.parent.parent if _head_kind(file) == "run" else file.parent
    root = exp.parent
    return root.parent if root.name == ".trash" else root


def read(path: Path, options: SourceOptions) -> SourceResult:
    """Every run under `path`: a store root, a folder holding one, an experiment or a run folder."""
    result = SourceResult()
    path = Path(path)
    if path.is_file():
        if not detect(path):
            result.problems.append(Problem(str(path), "", "not the meta.yaml of an MLflow experiment or run"))
            return result
        path = unit(path)
    store = _Store(path, options, result)
    kind = _head_kind(path / "meta.yaml")
    if kind == "run":
        store.experiment(path.absolute().parent, only=path)
    elif kind == "experiment":
        store.experiment(path)
    elif not store.root(path):
        result.problems.append(Problem(str(path), "", "no MLflow experiment or run meta.yaml found"))
    # A run folder named alone takes only the models it made.
    store.hand_over(lambda m: kind != "run" or m.doc.source_run_id in store.seen)
    keys = {r.import_key for r in result.records}
    for rec in result.records:
        if rec.parent_key is not None and rec.parent_key not in keys:
            result.notes.append(f"{rec.origin}: its parent run ({rec.parent_key}) is not in this folder; "
                                "it must have been imported before")
    return result


def _dirs(folder: Path) -> list[Path]:
    """Sub-folders, sorted; links are not followed."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


class _Store(StoreReader):
    def __init__(self, path: Path, options: SourceOptions, result: SourceResult):
        super().__init__(result)
        self.path, self.options = path, options
        self.boundary = path.resolve()  # nothing outside it is read
        self.seen: dict[str, Path] = {}  # run id -> its folder

    def meta(self, file: Path) -> Optional[dict]:
        """A parsed meta.yaml, or None with a problem."""
        try:
            doc = yaml.safe_load(file.read_bytes().decode("utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else ""
            self.problem(file, where, f"not valid YAML: {getattr(e, 'problem', None) or e}")
            return None
        except (OSError, UnicodeDecodeError, RecursionError) as e:
            self.problem(file, "", f"cannot read: {e or 'nested too deeply'}")
            return None
        if not isinstance(doc, dict):
            self.problem(file, "", "not an MLflow meta.yaml (expected a mapping)")
            return None
        return doc

    # -- folders ------------------------------------------------------------------------------

    def root(self, folder: Path) -> bool:
        """Read a store root; False when `folder` holds no experiment at all."""
        found = False
        for child in _dirs(folder):
            if child.name == ".trash":
                for exp in _dirs(child):
                    found = True
                    self.experiment(exp, deleted=True)
            elif (_head_kind(child / "meta.yaml") == "experiment"
                  or any(_head_kind(g / "meta.yaml") == "run" for g in _dirs(child))):
                found = True
                self.experiment(child)  # a missing or broken meta.yaml is reported there
            elif child.name == "models":
                with self.aside():
                    self.registered_models(child)
            elif ((child / ".trash").is_dir()
                  or any(_head_kind(g / "meta.yaml") == "experiment" for g in _dirs(child))):
                found = self.root(child) or found  # a store inside the store (`mlruns/mlruns`)
            elif not child.name.startswith("."):
                self.note(f"{child}: not an MLflow experiment folder; not read")
        return found

    def experiment(self, folder: Path, deleted: bool = False, only: Optional[Path] = None) -> None:
        meta_file = folder / "meta.yaml"
        meta = self.meta(meta_file) if meta_file.is_file() else {}
        name = self.options.experiment or (meta or {}).get("name")
        if meta is not None and not name:
            self.problem(meta_file, "name", "the experiment has no name (meta.yaml is missing or names "
                         "none); its runs were not read. Name one with --experiment")
        if not name:
            return
        name = str(name)
        deleted = deleted or (meta or {}).get("lifecycle_stage") == "deleted"
        exp_tags = self.values(folder / "tags", "tag")
        if not self.options.experiment:  # else every run goes to the one experiment named
            self.result.experiments.append(ExperimentRecord(name, exp_tags, "deleted" if deleted else "active"))
        if (folder / "traces").is_dir():
            self.note(f"{folder / 'traces'}: MLflow 3 traces are not imported")
        for model in _dirs(folder / "models"):
            with self.aside():
                self.logged_model(model, self.options.experiment or name)
        for run in [only] if only else _dirs(folder):
            if run.name in _NOT_RUNS and not only:
                continue
            if (run / "meta.yaml").is_file():
                with self.one_run() as problems:  # a run that cannot be read fails alone
                    rec = self.run(run, name, exp_tags, deleted)
                if rec is not None and not problems:
                    self.result.records.append(rec)
            else:
                self.note(f"{run}: no meta.yaml, not a run; not read")

    def run(self, folder: Path, experiment: str, exp_tags: dict[str, str], deleted: bool) -> Optional[RunRecord]:
        meta_file = folder / "meta.yaml"
        meta = self.meta(meta_file)
        if meta is None:
            return None
        if _kind(meta) != "run":
            self.problem(meta_file, "", "not a run's meta.yaml (no run_id or run_uuid, or no experiment_id)")
            return None
        run_id = str(meta.get("run_id") or meta.get("run_uuid"))
        if run_id in self.seen:  # the store's problem, not this run's: the first copy is read
            self.result.problems.append(Problem(str(meta_file), "run_id", f"run {run_id} is also in "
                                                f"{self.seen[run_id]}; read once"))
            return None
        self.seen[run_id] = folder
        origin = f"{self.path}: run {run_id}"
        tags = self.values(folder / "tags", "tag")
        parent = tags.pop(PARENT_TAG, None)
        rec = RunRecord(
            experiment=experiment, import_key=store_import_key(run_id), origin=origin,
            name=(text_or_none(meta.get("run_name")) or tags.get("mlflow.runName")
                  or text_or_none(meta.get("name"))),
            start_time=self.time(meta, "start_time", meta_file),
            end_time=self.time(meta, "end_time", meta_file),
            status=self.status(meta, meta_file), user=text_or_none(meta.get("user_id")),
            params=self.values(folder / "params", "param"), tags=tags,
            parent_key=store_import_key(parent.strip()) if parent else None, source_run_id=run_id,
            lifecycle="deleted" if deleted or meta.get("lifecycle_stage") == "deleted" else "active",
            experiment_tags=dict(exp_tags))
        rec.metrics = self.metrics(folder / "metrics")
        infinite = [k for k, t in rec.metrics.items() if _has_inf(t)]
        if infinite:  # the server stores +-Infinity as +-1.797e308: keep the truth on the run
            rec.tags[INFINITE_VALUES_TAG] = ",".join(infinite)
        rec.artifacts = self.located_artifacts(folder, folder.parent, text_or_none(meta.get("artifact_uri")),
                                               run_id, origin)
        rec.inputs = self.inputs(folder, origin, run_id)
        with self.aside():
            for sub in _dirs(folder / "outputs"):  # MLflow 3: the models the run logged
                link = self.meta(sub / "meta.yaml")
                if link is not None and link.get("destination_type") == "MODEL_OUTPUT":
                    step = link.get("step", 0)
                    self.links.append((origin, str(link.get("source_id") or sub.name), run_id,
                                       step if isinstance(step, int) and step >= 0 else 0))
        return rec

    # -- run fields ---------------------------------------------------------------------------

    def time(self, meta: dict, field: str, file: Path) -> Optional[int]:
        value = meta.get(field)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.problem(file, field, f"expected milliseconds since the epoch, got {value!r}")
        return None

    def status(self, meta: dict, file: Path) -> str:
        value = meta.get("status", 1)  # MLflow reads a missing status as RUNNING
        if isinstance(value, int) and value in STATUSES:
            return STATUSES[value]
        if isinstance(value, str) and value in STATUSES.values():
            return value
        self.problem(file, "status", f"unknown run status {value!r} (expected 1 to 5)")
        return "FINISHED"

    def values(self, folder: Path, what: str, whose: str = "run") -> dict[str, str]:
        """Params or tags: key = path under `folder`, value = the whole file, exactly."""
        out: dict[str, str] = {}
        for file, key in self.files(folder):
            problem = key_problem(key, what)
            if problem:
                self.problem(file, "", f"{problem}; the server will refuse this {whose}")
            try:
                out[key] = file.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                self.problem(file, "", f"cannot read the {what} value: {e}")
        return out

    def files(self, folder: Path) -> list[tuple[Path, str]]:
        """Regular files under `folder` (links skipped) with their posix path relative to it."""
        out = []
        if folder.is_symlink():
            return out
        for top, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                file = Path(top) / name
                if not file.is_symlink() and file.is_file():
                    out.append((file, file.relative_to(folder).as_posix()))
        return out

    def metrics(self, folder: Path) -> dict[str, pa.Table]:
        tables: dict[str, pa.Table] = {}
        for file, key in self.files(folder):
            problem = key_problem(key, "metric")
            if problem:
                self.problem(file, "", f"{problem}; the server will refuse this run")
            try:
                data = file.read_bytes()
            except OSError as e:
                self.problem(file, "", f"cannot read: {e}")
                continue
            table = _metric_fast(data)
            tables[key] = self.metric_lines(file, data) if table is None else table
        return tables

    def metric_lines(self, file: Path, data: bytes) -> pa.Table:
        """The line-by-line reader, for files the Arrow reader refused: every good point is kept,
        every bad line is a problem naming it."""
        rows: list[tuple] = []
        bad = 0
        for number, line in enumerate(data.split(b"\n"), 1):
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            parts = text.split(" ")
            try:
                if len(parts) not in (2, 3, 5):
                    raise ValueError
                step = _line_int(parts[2]) if len(parts) > 2 else 0
                stamp, value = _line_int(parts[0]), float(parts[1])
                extra = tuple(parts[3:5]) if len(parts) == 5 else (None, None)
            except ValueError:
                bad += 1
                if bad <= 5:
                    self.problem(file, f"line {number}", f"not `timestamp value step`: {text[:80]!r}")
                continue
            out_of_range = [(name, msg) for name, v in (("timestamp", stamp), ("step", step))
                            if (msg := int64_problem(v))]
            if out_of_range:
                bad += 1
                if bad <= 5:
                    name, msg = out_of_range[0]
                    self.problem(file, f"line {number}", f"{name} {msg}")
                continue
            rows.append((step, stamp, value) + extra)
        if bad > 5:
            self.problem(file, "", f"{bad - 5} more lines are not `timestamp value step`")
        steps, times, values, names, digests = (list(c) for c in zip(*rows)) if rows else ([],) * 5
        table = metric_table(steps, values, pa.array(times, pa.int64()))
        if any(n is not None for n in names):
            table = table.append_column("dataset_name", pa.array(names, pa.string()))
            table = table.append_column("dataset_digest", pa.array(digests, pa.string()))
        return table

    def artifacts(self, root: Path, origin: str, boundary: Path) -> list[ArtifactFile]:
        """The files below `root`; a link is followed only to a file inside `boundary`."""
        if not root.is_dir() or root.is_symlink():
            return []
        out, skipped = [], []
        for top, dirs, names in os.walk(root):  # links to folders are listed, never entered
            dirs.sort()
            skipped += [Path(top) / d for d in dirs if (Path(top) / d).is_symlink()]
            for name in sorted(names):
                file = Path(top) / name
                target = file.resolve()
                if file.is_symlink() and not (within(file, boundary) and target.is_file()):
                    skipped.append(file)
                elif target.is_file():
                    out.append(ArtifactFile(source=target if file.is_symlink() else file,
                                            dest=file.relative_to(root).as_posix()))
        if skipped:
            self.note(f"{origin}: links out of {boundary} or to folders are not followed: "
                      + ", ".join(p.relative_to(root).as_posix() for p in skipped))
        return out

    def located_artifacts(self, folder: Path, exp: Path, uri: Optional[str], ident: str,
                          origin: str) -> list[ArtifactFile]:
        """The artifacts of a run (or logged model, `ident` its id) in `folder`: its own artifacts/
        folder, unless its artifact location (`uri`) is elsewhere and that folder is empty: then
        where the location is now (`moved`). A note says where they came from, or that none were
        found. A relative location (MLflow 1.x's `./mlruns/0/<run>/artifacts`) is relative to the
        folder holding the store (the one holding `exp`, or its `.trash`)."""
        own = self.artifacts(folder / "artifacts", origin, self.boundary)
        if not uri:
            return own
        store = exp.absolute().parent
        store = store.parent if store.name == ".trash" else store
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme in ("", "file") and not parsed.netloc and not _DRIVE.match(uri):
            where = Path(urllib.parse.unquote(parsed.path if parsed.scheme else uri))
            where = (where if where.is_absolute() else store.parent / where).resolve()
            if where == (folder / "artifacts").resolve():
                return own
            if where.is_relative_to(store.resolve()) and not where.exists():
                return own  # an older place in this very store (a run moved to .trash)
        found = self.moved(uri, ident)
        if found is not None and found[0].resolve() == (folder / "artifacts").resolve():
            return own  # the store moved with its artifacts inside
        if own:
            self.note(f"{origin}: artifacts stored at {uri} (outside {self.path}) were not imported; "
                      f"the {len(own)} files in its artifacts/ folder were")
            return own
        if found is None:
            self.note(f"{origin}: artifacts stored at {uri} (outside {self.path}) were not imported; none "
                      f"were found here, nor under {self.path.absolute().parent} (--artifact-root OLD=NEW "
                      "names where they are)")
            return []
        files = self.artifacts(found[0], origin, found[1])
        self.note(f"{origin}: artifacts stored at {uri}: {len(files)} files read from {found[0]}")
        return files

    def moved(self, uri: str, ident: str) -> Optional[tuple[Path, Path]]:
        """(folder, the folder it must lie in) where an artifact location of another machine is
        now: with --artifact-root OLD=NEW, NEW and the rest of the location after OLD; else the
        longest end of the location, from the folder named by the run's (model's) id `ident` on,
        that is a folder under the folder named or its parent. None when there is none."""
        parts = location_parts(uri)
        if parts is None:
            return None
        for old, new in self.options.artifact_roots:
            prefix = location_parts(old) or []
            if prefix and _same(parts[:len(prefix)], prefix):
                rest = parts[len(prefix):]
                found = Path(new).joinpath(*rest)
                ok = ".." not in rest and found.is_dir() and within(found, Path(new))
                return (found, Path(new)) if ok else None
        if ident not in parts:
            return None
        at = len(parts) - 1 - parts[::-1].index(ident)
        # The parent is the one folder read beyond those named (issue 15): artifacts kept apart
        # from the store (`project/mlruns` + `project/mlflow_artifacts`) travel beside it.
        bases = (self.path.absolute(), self.path.absolute().parent)
        for start in range(at + 1):  # longest first
            rest = parts[start:]
            if ".." in rest:
                continue
            for base in bases:
                found = base.joinpath(*rest)
                if found.is_dir() and within(found, base):  # no link out
                    return found, base
        return None

    # -- MLflow 3 logged models and registered models -------------------------------------------

    def logged_model(self, folder: Path, experiment: str) -> None:
        """`<exp>/models/<id>/` as a model.LoggedModel (the record a bundle gives too)."""
        meta_file = folder / "meta.yaml"
        meta = self.meta(meta_file)
        if meta is None:
            return
        model_id = text_or_none(meta.get("model_id"))
        if model_id is None or "experiment_id" not in meta:
            self.problem(meta_file, "model_id", "not a logged model's meta.yaml (no model_id or "
                         "experiment_id); not imported")
            return
        if meta.get("lifecycle_stage") == "deleted":  # as from a server, whose search never lists them
            self.note(f"{folder}: logged model {model_id} is deleted; not imported")
            return
        status = status_name(meta.get("status", 2))  # MLflow reads a missing status as READY
        if status is None:
            self.problem(meta_file, "status", f"unknown logged model status {meta.get('status')!r} "
                         "(expected 0 to 3); not imported")
            return
        origin = f"{self.path}: logged model {model_id}"
        doc = LoggedModelRecord(
            model_id=model_id, experiment_id=str(meta["experiment_id"]),
            name=text_or_none(meta.get("name")) or model_id, model_type=text_or_none(meta.get("model_type")),
            status=status, status_message=text_or_none(meta.get("status_message")),
            source_run_id=text_or_none(meta.get("source_run_id")),
            creation_timestamp_ms=self.time(meta, "creation_timestamp", meta_file),
            params=self.values(folder / "params", "param", "model"),
            tags=self.values(folder / "tags", "tag", "model"), metrics=self.model_metrics(folder / "metrics"))
        files = self.located_artifacts(folder, folder.parent.parent, text_or_none(meta.get("artifact_location")),
                                       model_id, origin)
        if model_id in self.logged:
            self.problem(meta_file, "model_id", f"another folder holds logged model {model_id} too; read once")
            return
        self.logged[model_id] = LoggedModel(doc, experiment, files)

    def model_metrics(self, folder: Path) -> list[ModelMetric]:
        """Lines `timestamp value step run_id [dataset_name dataset_digest]`, in file order; values
        as the server keeps them (model.model_stored_value)."""
        out = []
        for file, key in self.files(folder):
            if problem := key_problem(key, "metric"):
                self.problem(file, "", f"{problem}; the server will refuse this model")
            try:
                lines = file.read_bytes().decode("utf-8").split("\n")
            except (OSError, UnicodeDecodeError) as e:
                self.problem(file, "", f"cannot read: {e}")
                continue
            for number, line in enumerate(lines, 1):
                parts = line.strip().split(" ")
                if parts == [""]:
                    continue
                try:
                    if len(parts) not in (4, 6):
                        raise ValueError
                    dataset = parts[4:6] if len(parts) == 6 else (None, None)
                    stamp, value, step = _line_int(parts[0]), float(parts[1]), _line_int(parts[2])
                except ValueError:
                    self.problem(file, f"line {number}", "not `timestamp value step run_id "
                                 f"[dataset_name dataset_digest]`: {line.strip()[:80]!r}; that point is not imported")
                    continue
                out_of_range = [f"{name} {msg}" for name, v in (("timestamp", stamp), ("step", step))
                                if (msg := int64_problem(v))]
                if out_of_range:
                    self.problem(file, f"line {number}", f"{out_of_range[0]}; that point is not imported")
                    continue
                out.append(ModelMetric(key=key, value=model_stored_value(value), timestamp=stamp, step=step,
                                       run_id=parts[3], dataset_name=dataset[0], dataset_digest=dataset[1]))
        return out

    def registered_models(self, folder: Path) -> None:
        """`ROOT/models/<name>/`: registered models as sinks/registry.copy_models takes them (a bundle's
        RegisteredModel). Deleted versions are left out: the writer keeps the numbers of the others."""
        for model_dir in _dirs(folder):
            meta = self.meta(model_dir / "meta.yaml")
            if meta is None:
                continue
            versions = []
            for sub in (d for d in _dirs(model_dir) if d.name.startswith("version-")):
                v = self.meta(sub / "meta.yaml")
                if v is None or v.get("current_stage") == DELETED_VERSION:
                    continue
                number = str(v.get("version") or sub.name.removeprefix("version-"))
                if not number.isdigit():  # the server numbers versions 1, 2, ...
                    self.problem(sub / "meta.yaml", "version", f"not a version number: {number!r}; "
                                 "this version is not imported")
                    continue
                run_id, source = text_or_none(v.get("run_id")), str(v.get("source") or "")
                stage = text_or_none(v.get("current_stage"))
                versions.append(ModelVersion(
                    version=number, run_id=run_id,
                    source=source, model_id=logged_model_id({"model_id": v.get("model_id"), "source": source}),
                    artifact_path=artifact_path(source, run_id), description=text_or_none(v.get("description")),
                    tags=self.values(sub / "tags", "tag", "model version"), stage=None if stage == "None" else stage,
                    status=text_or_none(v.get("status"))))
            versions.sort(key=lambda v: int(v.version))
            self.result.models.append(RegisteredModel(
                name=text_or_none(meta.get("name")) or model_dir.name,
                description=text_or_none(meta.get("description")),
                tags=self.values(model_dir / "tags", "tag", "model"),
                aliases={a: v.strip() for a, v in self.values(model_dir / "aliases", "alias", "model").items()},
                versions=versions))

    def inputs(self, folder: Path, origin: str, run_id: str) -> list[dict]:
        """Dataset inputs as runs/log-inputs takes them: {"dataset": {...}, "tags": [{key, value}]};
        MLflow 3 model inputs go to `links`."""
        out = []
        datasets = folder.parent / "datasets"
        for sub in _dirs(folder / "inputs"):
            link = self.meta(sub / "meta.yaml")
            if link is None:
                continue
            if link.get("source_type") == "MODEL" and link.get("source_id"):
                self.links.append((origin, str(link["source_id"]), run_id, None))
                continue
            if link.get("source_type") != "DATASET":
                self.note(f"{origin}: input {sub.name} ({link.get('source_type')}) is not imported")
                continue
            dataset_file = datasets / str(link.get("source_id")) / "meta.yaml"
            dataset = self.meta(dataset_file) if dataset_file.is_file() else None
            if dataset is None:
                self.note(f"{origin}: input {sub.name} names dataset {link.get('source_id')}, which is not "
                          f"in {datasets}; not imported")
                continue
            fields = {k: str(dataset[k]) for k in _DATASET_FIELDS if dataset.get(k) is not None}
            tags = [{"key": str(k), "value": str(v)} for k, v in (link.get("tags") or {}).items()]
            out.append({"dataset": fields, "tags": tags})
        return out


def location_parts(uri: str) -> Optional[list[str]]:
    """The folder names of a local artifact location (`file:///C:/Users/a%20b/...`,
    `C:\\Users\\...`, `/mnt/...`, `./mlruns/...`; `file://host/share/...` starts with the host),
    or None for a remote one (`s3://`, `mlflow-artifacts:`)."""
    text = uri.replace("\\", "/")
    if not _DRIVE.match(text):
        parsed = urllib.parse.urlparse(text)
        if parsed.scheme not in ("", "file"):
            return None
        text = parsed.netloc + "/" + urllib.parse.unquote(parsed.path)
    return [p for p in text.split("/") if p not in ("", ".")]


def _same(a: list[str], b: list[str]) -> bool:
    """Equal folder names; a Windows path's case does not count."""
    windows = bool(b) and _DRIVE.match(b[0] + "/")
    return [p.casefold() for p in a] == [p.casefold() for p in b] if windows else a == b


def _line_int(text: str) -> int | NumberText:
    """An integer field of a metric line, read as MLflow reads it (int()); one of more digits than
    int() converts stays its text (out of range), anything else not an integer is a ValueError."""
    try:
        return int(text)
    except ValueError:
        exact = integer_text(text)
        if exact is None:
            raise
        return exact


def _has_inf(table: pa.Table) -> bool:
    return table.num_rows > 0 and pc.any(pc.is_inf(table.column("value"))).as_py()


def _metric_fast(data: bytes) -> Optional[pa.Table]:
    """A metric file read by Arrow in one go, or None when any line is unusual."""
    if not data.strip():
        return METRIC_SCHEMA.empty_table()
    try:
        raw = pacsv.read_csv(pa.py_buffer(data), read_options=_READ, parse_options=_PARSE,
                             convert_options=_COLUMNS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    n = raw.num_columns
    if n not in (2, 3, 5):
        return None
    step = raw.column("f2") if n > 2 else pa.repeat(pa.scalar(0, pa.int64()), raw.num_rows)
    table = pa.table([step, raw.column("f0"), raw.column("f1")], schema=METRIC_SCHEMA)
    if n == 5:
        table = table.append_column("dataset_name", raw.column("f3"))
        table = table.append_column("dataset_digest", raw.column("f4"))
    return table
