"""RunRecords -> run manifests (format version 1) and the artifact files they name: what
`importer submit` posts. Every value is kept exactly: params as their strings, tags, every metric
point with its step and timestamp (values as JSON numbers, which round-trip a float64, or "NaN",
"Infinity", "-Infinity"), artifacts byte for byte. What a manifest cannot say is named in a note.
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

from ..model import (DERIVED_TIMESTAMPS_TAG, FIELD_TAGS, INFINITE_VALUES_TAG, OPTIONAL_METRIC_FIELDS,
                     RunRecord)

# Tags the manifest reader sets again itself when the points call for them.
_REMADE_TAGS = {DERIVED_TIMESTAMPS_TAG, INFINITE_VALUES_TAG}


def _value(v: float) -> Any:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _metric(table) -> Any:
    steps = table.column("step").to_pylist()
    values = [_value(v) for v in table.column("value").to_pylist()]
    stamps = table.column("timestamp")
    if stamps.null_count == 0:
        return {"step": steps, "value": values, "timestamp": stamps.to_pylist()}
    if stamps.null_count == len(stamps):
        return {"step": steps, "value": values}
    return [{"step": s, "value": v, **({"timestamp": t} if t is not None else {})}
            for s, v, t in zip(steps, values, stamps.to_pylist())]


def run_document(rec: RunRecord, prefix: str) -> tuple[dict, list[tuple[str, Any]], list[str]]:
    """One run of a manifest, the artifact parts it names ((part name, a Path or bytes)), and
    notes on what it could not carry. Part names start with `prefix`, so that the runs of one
    manifest never name the same part."""
    notes: list[str] = []
    run: dict[str, Any] = {"id": rec.import_key, "experiment": rec.experiment, "status": rec.status}
    for name in ("name", "description", "user", "source", "start_time", "end_time"):
        if getattr(rec, name) is not None:
            run[name] = getattr(rec, name)
    if rec.parent_key is not None or rec.parent_run_id is not None:
        run["parent"] = rec.parent_key if rec.parent_key is not None else rec.parent_run_id
    run["params"] = dict(rec.params)
    tags = {}
    for k, v in rec.tags.items():
        field = FIELD_TAGS.get(k)
        if k in _REMADE_TAGS or (field and (field == "parent" or getattr(rec, field) == v)):
            continue
        if field or k.startswith("importer."):
            notes.append(f"tag {k}={v!r} cannot be set through a manifest; left out")
            continue
        tags[k] = v
    run["tags"] = tags
    run["metrics"] = {}
    for key, table in rec.metrics.items():
        run["metrics"][key] = _metric(table)
        extra = [f for f in OPTIONAL_METRIC_FIELDS if f in table.column_names and table.column(f).null_count < len(table)]
        if extra:
            notes.append(f"metric {key}: its {', '.join(extra)} cannot be said in a manifest; left out")
    parts: list[tuple[str, Any]] = []
    run["artifacts"] = []
    for a in rec.artifacts:
        if not isinstance(a.source, (bytes, str)) and not hasattr(a.source, "open"):
            notes.append(f"artifact {a.dest}: not a local file; left out")
            continue
        name = f"{prefix}/{a.dest}"
        parts.append((name, a.source))
        folder = posixpath.dirname(a.dest)
        run["artifacts"].append({"path": name, **({"dest": folder} if folder else {})})
    for what, there in (("its dataset inputs", rec.inputs), ("its experiment's tags", rec.experiment_tags),
                        ("that it is deleted", rec.lifecycle == "deleted")):
        if there:
            notes.append(f"{what} cannot be said in a manifest; left out")
    return run, parts, notes


def manifests(records: list[RunRecord]) -> list[list[RunRecord]]:
    """The records grouped into manifests: a run with its parent in this import goes into the
    parent's manifest (a manifest names parents by `id`), every other run into its own."""
    by_key = {(r.experiment, r.import_key): r for r in records}
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        root = rec
        seen = set()
        while root.parent_key is not None and (root.experiment, root.parent_key) in by_key \
                and root.import_key not in seen:
            seen.add(root.import_key)
            root = by_key[(root.experiment, root.parent_key)]
        groups.setdefault((root.experiment, root.import_key), []).append(rec)
    return list(groups.values())


def manifest_document(records: list[RunRecord]) -> tuple[dict, list[tuple[str, Any]], list[str]]:
    """One manifest of `records` (a group of `manifests`), its parts, and notes."""
    runs, parts, notes = [], [], []
    keys = {r.import_key for r in records}
    for i, rec in enumerate(records):
        run, its_parts, its_notes = run_document(rec, f"run{i}")
        if rec.parent_key is not None and rec.parent_key not in keys:
            del run["parent"]  # found only by the pipeline's search of the server, not by a manifest
            its_notes.append(f"its parent run {rec.parent_key!r} is not part of this submit: sent "
                             "without a parent")
        runs.append(run)
        parts += its_parts
        notes += [f"{rec.origin}: {n}" for n in its_notes]
    return {"format_version": 1, "runs": runs}, parts, notes
