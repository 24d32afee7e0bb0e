"""What every log-format source shares: how it reports, how it keys runs, how it names metrics.

A source is a module with

    NAME: str                                  # "keras", "lightning", ... (the --format value)
    def detect(path: Path) -> bool             # by content, cheap: a file or a folder
    def read(path: Path, options: SourceOptions) -> SourceResult

`read` never touches a server. It yields RunRecords (see importer/model/) whose metrics are
METRIC_SCHEMA tables, and Problems for what it cannot use (file, line or row, column, rule).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import Problem
from ..model import (DERIVED_TIMESTAMPS_NOTE, DERIVED_TIMESTAMPS_TAG, INFINITE_VALUES_TAG, MAX_KEY_LENGTH,
                     MAX_PARAM_VALUE_LENGTH, METRIC_SCHEMA, ModelOutput, RunRecord, flatten_params,
                     key_problem, replace_invalid_key_chars, value_problem)

DERIVED_STEPS_TAG = "importer.derived_steps"
RENAMED_METRICS_TAG = "importer.renamed_metrics"


@dataclass
class SourceOptions:
    experiment: Optional[str] = None  # --experiment; a source may derive a default from the path
    step_column: Optional[str] = None  # generic tables
    time_column: Optional[str] = None
    key_prefix: str = ""
    patterns: list[str] = field(default_factory=list)  # text logs: regexes with named groups
    # `mlruns/`: artifact locations moved, as (OLD prefix, NEW folder) (--artifact-root OLD=NEW)
    artifact_roots: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SourceResult:
    records: list[RunRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. renamed metric keys, for the report
    models: list = field(default_factory=list)  # registered models (model.RegisteredModel) to copy
    logged_models: list = field(default_factory=list)  # MLflow 3 (model.LoggedModel)
    # Problems that lose only what they name (a broken logged model, a bad line of its metrics),
    # not the runs: the import writes the rest and reports each as failed.
    skipped: list[Problem] = field(default_factory=list)
    # Experiments of another MLflow store (model.ExperimentRecord): created with their tags
    # even when empty, and deleted again when deleted there.
    experiments: list = field(default_factory=list)
    # Run folders whose files the source did not all read (folder.RunFolder): named in notes by
    # folder.name_unread once the saved models among them are known (sources.model_files).
    unread: list = field(default_factory=list)


class StoreReader:
    """What the readers of another MLflow store's files (`mlruns/`, mlflow-export-import) share:
    problems and notes, and the logged models read (model.LoggedModel by source id) with
    the runs' links to them, given to the models once every run is read (`hand_over`)."""

    def __init__(self, result: SourceResult):
        self.result = result
        self.problems = result.problems  # where `problem` puts them (see `aside`)
        self.logged: dict = {}  # source model id -> model.LoggedModel
        self.links: list[tuple[str, str, str, Optional[int]]] = []  # (origin, model id, run id, step; None: input)

    def problem(self, file, where: str, message: str) -> None:
        self.problems.append(Problem(str(file), where, message))

    def note(self, message: str) -> None:
        self.result.notes.append(message)

    @contextmanager
    def into(self, problems: list[Problem]):
        """Problems met inside go to `problems`."""
        saved, self.problems = self.problems, problems
        try:
            yield problems
        finally:
            self.problems = saved

    def aside(self):
        """Problems met inside lose only the model they belong to, not the runs: they go to
        `result.skipped` (failed outcomes of the import) instead of stopping it."""
        return self.into(self.result.skipped)

    @contextmanager
    def one_run(self):
        """Problems met inside lose only the run being read: they go to `result.skipped`, and the
        caller leaves the run out when the list it is given is not empty. Problems of what the
        run shares with others (its experiment's files) are reported `into` result.problems."""
        with self.into([]) as mine:
            yield mine
        self.result.skipped += mine

    def hand_over(self, keep=lambda model: True) -> None:
        """Give the models the runs' links to them, then to the result (those `keep` takes)."""
        for origin, model_id, run_id, step in self.links:
            m = self.logged.get(model_id)
            if m is None:
                self.note(f"{origin}: its link to logged model {model_id} is not imported (the model "
                          "is not in the folder read, or is deleted)")
            elif step is None:
                m.doc.inputs.append(run_id)
            else:
                m.doc.outputs.append(ModelOutput(run_id=run_id, step=step))
        self.result.logged_models += [m for m in self.logged.values() if keep(m)]


def text_or_none(value) -> Optional[str]:
    """A store's optional text field: None when absent or empty."""
    return None if value is None or value == "" else str(value)


def import_key(fmt: str, source_identity: str, run_identity: str = "") -> str:
    """`<format>-` + 24 hex digits of SHA-256 over the source's identity (its resolved path) and
    the run's identity within it. Not over content: a log that grows keeps its key."""
    digest = hashlib.sha256(f"{fmt}\0{source_identity}\0{run_identity}".encode()).hexdigest()[:24]
    return f"{fmt}-{digest}"


def safe_metric_key(key: str) -> str:
    """The documented mapping for metric names the server rejects: every character outside
    letters, digits, `_ - . / :` and space becomes `_`, repeated and edge slashes are collapsed
    (`val/AR@100` -> `val/AR_100`). Valid names are returned unchanged."""
    if key_problem(key, "metric") is None:
        return key
    mapped = replace_invalid_key_chars(key)
    mapped = "/".join(p for p in mapped.split("/") if p not in ("", ".", "..")) or "_"
    return mapped[:MAX_KEY_LENGTH]


@dataclass
class SeriesFacts:
    """What a series streamed block by block adds up to, kept instead of its points."""

    points: int = 0
    steps: Optional[tuple[int, int]] = None  # (min, max)
    missing_timestamps: bool = False
    infinite: bool = False

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.points += table.num_rows
        lo, hi = pc.min_max(table.column("step")).values()
        lo, hi = lo.as_py(), hi.as_py()
        self.steps = (lo, hi) if self.steps is None else (min(lo, self.steps[0]), max(hi, self.steps[1]))
        self.missing_timestamps = self.missing_timestamps or table.column("timestamp").null_count > 0
        self.infinite = self.infinite or pc.any(pc.is_inf(table.column("value"))).as_py()


class Metrics:
    """A run's metric tables under server-safe keys, and the tags they imply. The one place for:
    renaming keys the server rejects (`safe_metric_key`, tag RENAMED_METRICS_TAG, a note), a key
    given twice after renaming (a problem), DERIVED_TIMESTAMPS_TAG and INFINITE_VALUES_TAG.

    `streamed`: a series comes in several tables (a file's blocks, in order) and only its facts
    (`series`) are kept; `take()` hands over the tables added since the last call."""

    def __init__(self, file: str, result: SourceResult, streamed: bool = False):
        self.file, self.result, self.streamed = file, result, streamed
        self.tables: dict[str, pa.Table] = {}
        self.renamed: dict[str, str] = {}
        self.series: dict[str, SeriesFacts] = {}
        self._given: dict[str, str] = {}  # safe key -> the key it was given as
        self.refused: set[str] = set()  # keys with a problem: their later blocks are ignored

    def add(self, key: str, table: pa.Table, where: str) -> None:
        if key in self.refused:
            return
        safe = safe_metric_key(key)
        if safe in self._given and (not self.streamed or self._given[safe] != key):
            self.result.problems.append(Problem(self.file, where, f"metric key {safe!r} is given twice "
                                                "(after mapping rejected characters)"))
            if self.streamed:  # said once, not once per block
                self.refused.add(key)
            return
        self._given[safe] = key
        if safe != key:
            self.renamed[key] = safe
        if self.streamed:
            self.series.setdefault(safe, SeriesFacts()).add(table)
            if safe in self.tables:
                table = pa.concat_tables([self.tables[safe], table])
        self.tables[safe] = table

    def take(self) -> dict[str, pa.Table]:
        tables, self.tables = self.tables, {}
        return tables

    def finish(self, rec: RunRecord) -> None:
        """The tags (and, unless streamed, the metrics) of the run."""
        if self.streamed:
            missing = any(f.missing_timestamps for f in self.series.values())
            infinite = [k for k, f in self.series.items() if f.infinite]
        else:
            rec.metrics = self.tables
            missing = any(t.column("timestamp").null_count for t in self.tables.values())
            infinite = [k for k, t in self.tables.items() if pc.any(pc.is_inf(t.column("value"))).as_py()]
        if missing:
            rec.tags[DERIVED_TIMESTAMPS_TAG] = DERIVED_TIMESTAMPS_NOTE
        if infinite:  # the server stores +-Infinity as +-1.797e308: keep the truth on the run
            rec.tags[INFINITE_VALUES_TAG] = ",".join(infinite)
        if self.renamed:
            rec.tags[RENAMED_METRICS_TAG] = json.dumps(self.renamed, ensure_ascii=False)
            self.result.notes.append(f"{rec.origin}: metric keys the server rejects were renamed: "
                                     + ", ".join(f"{k!r} -> {v!r}" for k, v in self.renamed.items()))


def metric_table(steps, values, timestamps=None) -> pa.Table:
    """A METRIC_SCHEMA table from three sequences or Arrow arrays (timestamps may hold nulls)."""
    n = len(steps)
    ts = pa.nulls(n, pa.int64()) if timestamps is None else timestamps
    return pa.table([pa.array(steps, pa.int64()), pa.array(ts, pa.int64()),
                     pa.array(values, pa.float64())], schema=METRIC_SCHEMA)


def checked_params(raw: dict[str, Any], file: str, origin: str, problems: list[Problem],
                   notes: list[str], prefix: str = "") -> dict[str, str]:
    """The one rule for params of every log source: flatten `raw` with model.flatten_params
    (a flat dict stays as it is); keys the server rejects are mapped with safe_metric_key
    (noted); values longer than the server keeps (it cuts them silently) are problems."""
    try:
        bounded(raw)
        flat = flatten_params(raw, prefix)
    except (ValueError, RecursionError) as e:
        problems.append(Problem(file, "params", str(e) or "the parameters nest too deeply"))
        return {}
    return server_params(flat, file, origin, problems, notes)


def server_params(flat: dict[str, str], file: str, origin: str, problems: list[Problem],
                  notes: list[str], cut: Optional[int] = None, cut_by: str = "") -> dict[str, str]:
    """Flat params as the server takes them: keys it rejects mapped with safe_metric_key (noted),
    values longer than it keeps (it cuts them silently) problems. With `cut`, longer values are
    first cut to that many characters, as `cut_by` (a framework's logger) cuts them (noted)."""
    out: dict[str, str] = {}
    renamed: dict[str, str] = {}
    shortened: list[str] = []
    for k, v in flat.items():
        new = k if key_problem(k, "param") is None else safe_metric_key(k)
        if new != k:
            renamed[k] = new
        if new in out:
            problems.append(Problem(file, f"params.{k}", f"param {new!r} is given twice"))
            continue
        if cut is not None and len(v) > cut:
            v = v[:cut]
            shortened.append(new)
        if msg := value_problem(v, MAX_PARAM_VALUE_LENGTH):
            problems.append(Problem(file, f"params.{k}", msg))
            continue
        out[new] = v
    if renamed:
        notes.append(f"{origin}: param keys the server rejects were renamed: "
                     + ", ".join(f"{k!r} -> {v!r}" for k, v in renamed.items()))
    if shortened:
        notes.append(f"{origin}: param values cut to their first {cut} characters as "
                     f"{cut_by} cuts them: {', '.join(shortened)}")
    return out


def _containers(node: Any) -> Optional[Any]:
    return node.values() if isinstance(node, dict) else node if isinstance(node, list) else None


def bounded(value: Any, children=_containers, budget: int = 100_000) -> None:
    """Refuse cyclic or alias-exploded parameter trees before flattening them. `children` gives a
    node's children, or None for a leaf."""
    stack, count = [(value, ())], 0
    while stack:
        node, path = stack.pop()
        count += 1
        if count > budget:
            raise ValueError(f"the parameters have more than {budget} entries (YAML aliases?)")
        if (items := children(node)) is not None:
            if id(node) in path:
                raise ValueError("the parameters refer to themselves (a YAML alias cycle)")
            stack.extend((child, path + (id(node),)) for child in items)
