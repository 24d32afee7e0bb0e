"""Generic tables (CSV, TSV, JSON Lines, Parquet) -> one RunRecord per file.

CSV/TSV are read by the delimited reader the Keras, Lightning and YOLO sources share
(delimited.py, delimited_run.py, columns.py): streamed in 4 MB blocks, every cell checked as bytes
first, and read again from the validated bytes as the points are sent. Empty cell = no point;
nan/inf kept; steps from `options.step_column` else the row index (DERIVED_STEPS_TAG); times from
`options.time_column` (epoch s or ms, ISO 8601) else DERIVED_TIMESTAMPS_TAG; rejected keys mapped
with safe_metric_key. A table is what no more specific source claims.

The file types and every rule: docs/formats/tables.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import Problem
from ..model import RunRecord
from . import keras, lightning, yolo
from .base import DERIVED_STEPS_TAG, SourceOptions, SourceResult, import_key
from .columns import (DERIVED_STEPS_TEXT, NULL_CELLS, NUMBER_PATTERN, MetricBuilder, integer_steps,
                      ms_timestamps, row_steps)
from .delimited import DELIMITERS, TableData, complete_end, first_line, split_header
from .delimited_run import DelimitedRun

NAME = "csv"

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}


def _kind(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        return "delimited"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def _claimed_elsewhere(path: Path) -> bool:
    # Files of a Lightning version folder (metrics.csv, meta_tags.csv) belong to that run.
    return lightning.is_version_folder(path.parent) or any(m.detect(path) for m in (keras, yolo))


def detect(path: Path) -> bool:
    """A .csv/.tsv/.jsonl/.ndjson/.parquet file that none of the specific table sources
    (Keras, Lightning, YOLO) claims, and not a file of a Lightning version folder. Folders are never generic tables."""
    if not path.is_file() or _kind(path) is None:
        return False
    if _kind(path) == "delimited":
        line, _ = first_line(path)
        try:
            if len(split_header(line, DELIMITERS[path.suffix.lower()])) < 1:
                return False
        except (UnicodeDecodeError, csv.Error):
            return False
    elif _kind(path) == "parquet":
        with open(path, "rb") as f:
            if f.read(4) != b"PAR1":
                return False
    return not _claimed_elsewhere(path)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
    return [path]


def read(path: Path, options: SourceOptions) -> SourceResult:
    """One run per table file (a folder: every table file in it, not recursive)."""
    result = SourceResult()
    for file in _files(path):
        kind = _kind(file)
        if kind is None:
            result.problems.append(Problem(str(file), "", "not a .csv, .tsv, .jsonl or .parquet file"))
            continue
        if kind == "delimited":
            rec = DelimitedRun(file, _new_record(file, options), step_column=options.step_column,
                               time_column=options.time_column, key_prefix=options.key_prefix,
                               keep_text=_wanted_text(options)).validate(result)
            if rec is not None:
                result.records.append(rec)
            continue
        reader = {"jsonl": _read_jsonl, "parquet": _read_parquet}[kind]
        table = reader(file, options, result)
        if table is not None:
            result.records.append(_record(file, table, options, result))
    return result


def _wanted_text(options: SourceOptions) -> set[str]:
    return {c for c in (options.step_column, options.time_column) if c}


def _from_arrow(file: Path, table: pa.Table, options: SourceOptions) -> TableData:
    """TableData from an Arrow table (JSON Lines, Parquet): nested structs become dotted names;
    numeric and boolean columns are values; string columns are numbers when they all parse."""
    while any(pa.types.is_struct(t) for t in table.schema.types):
        table = table.flatten()
    data = TableData(str(file), header=table.column_names, rows=table.num_rows)
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if name in _wanted_text(options):
            data.text[name] = pc.utf8_trim_whitespace(col.cast(pa.string()))
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
                or pa.types.is_decimal(t):
            data.values[name] = col.cast(pa.float64())
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            trimmed = pc.utf8_trim_whitespace(col)
            number = pc.match_substring_regex(trimmed, NUMBER_PATTERN)
            empty = pc.or_kleene(pc.is_null(trimmed), pc.is_in(trimmed, value_set=pa.array(list(NULL_CELLS))))
            if pc.all(pc.or_kleene(number, empty)).as_py() and pc.any(number).as_py():
                data.values[name] = pc.if_else(number, trimmed, None).cast(pa.float64())
            else:
                data.text_columns.append(name)
        elif not pa.types.is_null(t):
            data.text_columns.append(name)
    return data


def _read_jsonl(file: Path, options: SourceOptions, result: SourceResult) -> Optional[TableData]:
    import pyarrow.json as pj  # loaded only for JSON Lines files, as pyarrow.parquet below

    size = file.stat().st_size
    end = complete_end(file, size) if size else 0
    if end == 0:
        return TableData(str(file))
    buf = pa.memory_map(str(file), "r").read_buffer().slice(0, end)
    try:
        table = pj.read_json(pa.BufferReader(buf), read_options=pj.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as e:
        # pyarrow words it "... in row N" (N counted within its block): pass it on as it is.
        result.problems.append(Problem(str(file), "", f"not valid JSON Lines: {e}"))
        return None
    return _from_arrow(file, table, options)


def _read_parquet(file: Path, options: SourceOptions, result: SourceResult) -> Optional[TableData]:
    import pyarrow.parquet as pq  # loaded only for Parquet files: it takes a while to import

    try:
        pf = pq.ParquetFile(file)
        batches = list(pf.iter_batches(batch_size=1 << 16))
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow)
    except (pa.ArrowInvalid, OSError) as e:
        result.problems.append(Problem(str(file), "", f"not a readable Parquet file: {e}"))
        return None
    return _from_arrow(file, table, options)


def _new_record(file: Path, options: SourceOptions) -> RunRecord:
    resolved = file.resolve()
    return RunRecord(experiment=options.experiment or resolved.parent.name,
                     import_key=import_key(NAME, str(resolved), "file"),
                     origin=f"{file}: file", name=file.stem)


def _record(file: Path, data: TableData, options: SourceOptions, result: SourceResult) -> RunRecord:
    """The run of a table read whole (JSON Lines, Parquet)."""
    rec = _new_record(file, options)
    problems = result.problems
    for column in (options.step_column, options.time_column):  # not metrics: free them now
        if column:
            data.values.pop(column, None)
    if options.step_column:
        if options.step_column not in data.header:
            problems.append(Problem(str(file), "header", f"no step column {options.step_column!r}"))
            return rec
        steps = integer_steps(data.text[options.step_column], str(file), options.step_column, problems)
    else:
        steps = row_steps(data.rows, next(iter(data.values.values()), None))
        if data.rows:
            rec.tags[DERIVED_STEPS_TAG] = DERIVED_STEPS_TEXT
    stamps = None
    if options.time_column:
        if options.time_column not in data.header:
            problems.append(Problem(str(file), "header", f"no time column {options.time_column!r}"))
            return rec
        stamps = ms_timestamps(data.text[options.time_column], str(file), options.time_column,
                               problems, result.notes)
    if steps is None:
        return rec
    metrics = MetricBuilder(str(file), result)
    for name, values in data.values.items():
        if name in (options.step_column, options.time_column) or not name:
            continue
        metrics.add(options.key_prefix + name, steps, values, stamps)
    if data.text_columns:
        result.notes.append(f"{file}: text columns are not metrics: {', '.join(data.text_columns)}")
    metrics.finish(rec)
    return rec

