"""Generic tables (CSV, TSV, JSON Lines, Parquet) -> one RunRecord per file; and the table
machinery the Keras, Lightning and YOLO sources share.

Formats, by file suffix (content decides between them only for `detect`):

* `.csv` (comma) and `.tsv` / `.tab` (tab): a header row, then one row per logged point set.
  Read with pyarrow's streaming CSV reader over the memory-mapped file, every cell as bytes first,
  so invalid UTF-8 and non-numbers are found and located by us, not by a reader exception.
* `.jsonl` / `.ndjson`: one JSON object per line (pyarrow.json); nested objects become dotted keys
  (`{"val": {"loss": 1}}` -> `val.loss`). JSON has no NaN: Python's `NaN`/`Infinity` literals are a
  problem, strings "NaN", "nan", "inf", "-Infinity" are numbers.
* `.parquet`: read batch by batch; numeric columns are metrics.

Rules (shared by every table-shaped source):

* Header names are stripped of surrounding spaces (YOLO pads them). Duplicate names are a
  problem naming them; an unnamed column (pandas' index) is ignored with a note.
* Cells: surrounding spaces are ignored; an empty cell (and `NA`, `N/A`, `null`, `None`) is *no
  point* for that metric, never 0. `nan`, `inf`, `-inf`, `Infinity` (any case) are kept as
  float64 NaN/+-inf; decimal strings parse with correct rounding (17 significant digits round-trip).
* A column whose non-empty cells are all non-numeric is text, not a metric (noted); a numeric
  column with some non-numeric cells is a problem at the first such cell (line and column).
* A row that repeats the header is skipped (a second header appended to the file); a row with the
  wrong number of cells is a problem at its line.
* A file still being written: bytes after the last line terminator are not read (that partial
  line is picked up by the next import). Blank lines, and the blank "lines" that CR CR LF endings
  look like, are skipped. Line numbers in problems count LF-terminated lines.
* Steps: `options.step_column` (integers; a value without a step is a problem); without it the
  row index 0..n-1 in file order, and the run gets DERIVED_STEPS_TAG.
* Timestamps: `options.time_column`: numbers are epoch seconds when every |value| < 1e11, else
  epoch milliseconds; strings are ISO 8601 (with an offset; without one they are read as UTC and
  noted). Without a time column, timestamps stay null and the run gets DERIVED_TIMESTAMPS_TAG.
* Keys: `options.key_prefix` + column name; names the server rejects are mapped with
  `base.safe_metric_key`, listed in the RENAMED_METRICS_TAG tag (JSON original -> new) and noted.
* Run: one per file; identity "file"; experiment = options.experiment or the file's folder name;
  name = the file's stem.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import yaml

from ..errors import Problem
from ..model import (RunRecord)
from .base import (DERIVED_STEPS_TAG, Metrics, SourceOptions, SourceResult, import_key, metric_table)

NAME = "csv"

SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
NULL_CELLS = ("", "NA", "N/A", "null", "None")
_NUMBER = r"^[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))$"
_INTEGER = r"^[+-]?\d+$"
_HEAD_LIMIT = 1 << 20  # a header line longer than this is not a log header
_TAIL_CHUNK = 1 << 16
DERIVED_STEPS_TEXT = "steps are row numbers 0..n-1 in file order (the log has no step column)"
DERIVED_TIMESTAMPS_TEXT = "points without a timestamp have the run's start_time"


# ---------------------------------------------------------------------------------------------
# Bytes: the complete part of a file, the header line, line numbers for messages
# ---------------------------------------------------------------------------------------------


def complete_end(path: Path, size: int) -> int:
    """Offset just past the last line terminator (CR or LF): what follows is a line still being
    written. Reads the file backwards in small chunks."""
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            if cut >= 0:
                return start + cut + 1
            pos = start
    return 0


def first_line(path: Path, limit: int = _HEAD_LIMIT) -> tuple[bytes, Optional[int]]:
    """The first non-blank line (without its terminator) and the offset just past its terminator,
    or None for that offset when the line is not terminated yet (or longer than `limit`)."""
    with open(path, "rb") as f:
        head = f.read(limit)
    start = 0
    while start < len(head) and head[start:start + 1] in (b"\r", b"\n"):
        start += 1
    ends = [i for i in (head.find(b"\n", start), head.find(b"\r", start)) if i >= 0]
    if not ends:
        return head[start:], None
    end = min(ends)
    return head[start:end], end + 1


def split_header(line: bytes, delimiter: str) -> list[str]:
    """Header names of one CSV line (quotes honoured), stripped of padding. Raises
    UnicodeDecodeError for bytes that are not UTF-8."""
    text = line.decode("utf-8")
    text = text[1:] if text.startswith("\ufeff") else text
    return [name.strip() for name in next(csv.reader([text], delimiter=delimiter), [])]


def physical_lines(path: Path, wanted: Iterable[int]) -> dict[int, int]:
    """Map 1-based non-blank line numbers (what pyarrow counts) to physical line numbers, counting
    LF-terminated lines (CR-only files: CR-terminated). Only used to word problems."""
    wanted = set(wanted)
    out: dict[int, int] = {}
    if not wanted:
        return out
    with open(path, "rb") as f:
        head = f.read(_TAIL_CHUNK)
        sep = b"\n" if b"\n" in head or b"\r" not in head else b"\r"
        f.seek(0)
        lines = f if sep == b"\n" else iter(f.read().split(b"\r"))
        nonblank = 0
        for physical, raw in enumerate(lines, 1):
            if raw.strip(b"\r\n"):
                nonblank += 1
                if nonblank in wanted:
                    out[nonblank] = physical
                    if len(out) == len(wanted):
                        break
    return out


def _first_failing(arr: pa.Array, fails: Callable[[pa.Array], bool]) -> int:
    """Index of the first element for which `fails(arr[i:i+1])`, by bisection (error path)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(arr.slice(lo, mid - lo)):
            hi = mid
        else:
            lo = mid
    return lo


def _not_utf8(arr: pa.Array) -> bool:
    try:
        arr.cast(pa.string())
        return False
    except pa.ArrowInvalid:
        return True


# ---------------------------------------------------------------------------------------------
# Delimited text -> float64 columns
# ---------------------------------------------------------------------------------------------


@dataclass
class _Bad:
    row: int  # index among delivered rows (0-based)
    column: int
    message: str


@dataclass
class TableData:
    """A table read from one file. `values` hold float64 (null where the cell is empty or not a
    number); `text` the trimmed cells of the columns asked for as text."""

    file: str
    header: list[str] = field(default_factory=list)
    values: dict[str, pa.ChunkedArray] = field(default_factory=dict)
    text: dict[str, pa.ChunkedArray] = field(default_factory=dict)
    rows: int = 0
    header_repeats: list[int] = field(default_factory=list)  # row indices a repeated header preceded
    partial_tail: bool = False
    text_columns: list[str] = field(default_factory=list)  # no numeric cell: not metrics
    notes: list[str] = field(default_factory=list)


class _CsvReader:
    """Streams one delimited file into a TableData; problems name file, line and column."""

    def __init__(self, path: Path, problems: list[Problem], delimiter: str, keep_text: set[str],
                 null_cells: tuple[str, ...]):
        self.path, self.file = path, str(path)
        self.problems, self.delimiter = problems, delimiter
        self.keep_text, self.null_cells = keep_text, pa.array(list(null_cells), pa.string())
        self.skipped: list[int] = []  # pyarrow's 1-based data row numbers of invalid rows
        self.invalid: list[tuple[int, str]] = []
        self.bad: list[_Bad] = []

    def read(self) -> Optional[TableData]:
        data = TableData(self.file)
        size = self.path.stat().st_size
        end = complete_end(self.path, size) if size else 0
        data.partial_tail = end < size
        line, after = first_line(self.path)
        if after is None or after > end:  # no header yet (empty file, or a header being written)
            return data
        try:
            names = split_header(line, self.delimiter)
        except UnicodeDecodeError as e:
            self.problems.append(Problem(self.file, f"line 1 column {e.start + 1}",
                                         f"the header is not UTF-8 (byte 0x{line[e.start]:02x})"))
            return None
        dupes = sorted({n for n in names if n and names.count(n) > 1})
        if dupes:
            self.problems.append(Problem(self.file, "line 1", "the header names these columns more "
                                         f"than once: {', '.join(map(repr, dupes))}"))
            return None
        data.header = names
        for i, n in enumerate(names):
            if not n:
                data.notes.append(f"{self.file}: column {i + 1} has no name; it is ignored")
        fatal = end > after and not self._rows(data, after, end)
        self._report(data)
        return None if fatal else data

    def _rows(self, data: TableData, start: int, end: int) -> bool:
        """Fill `data` from the bytes [start, end); False when the rest cannot be read (not UTF-8)."""
        names = data.header
        cols = [f"c{i}" for i in range(len(names))]

        def invalid(row) -> str:
            self.skipped.append(row.number)
            self.invalid.append((row.number, f"has {row.actual_columns} cells; the header has "
                                              f"{row.expected_columns}"))
            return "skip"

        mapped = pa.memory_map(self.file, "r")
        reader = pv.open_csv(
            pa.BufferReader(mapped.read_buffer().slice(start, end - start)),
            read_options=pv.ReadOptions(column_names=cols, use_threads=False, block_size=1 << 22),
            parse_options=pv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=invalid),
            convert_options=pv.ConvertOptions(column_types={c: pa.binary() for c in cols},
                                              strings_can_be_null=False, quoted_strings_can_be_null=False))
        chunks: dict[str, list[pa.Array]] = {n: [] for n in names if n}
        texts: dict[str, list[pa.Array]] = {n: [] for n in names if n in self.keep_text}
        numeric = {n: 0 for n in chunks}
        first_bad: dict[str, _Bad] = {}
        delivered = kept = 0
        for batch in reader:
            trimmed = []
            for i, col in enumerate(batch.columns):
                if _not_utf8(col):
                    at = _first_failing(col, _not_utf8)
                    self.bad.append(_Bad(delivered + at, i, "is not UTF-8"))
                    return False
                trimmed.append(pc.utf8_trim_whitespace(col.cast(pa.string())))
            # A row that repeats the header: a second header appended to the file.
            repeat = None
            for name, col in zip(names, trimmed):
                same = pc.equal(col, name)
                repeat = same if repeat is None else pc.and_(repeat, same)
            if repeat is not None and pc.any(repeat).as_py():
                keep = pc.invert(repeat)
                positions = pc.indices_nonzero(repeat).to_pylist()
                data.header_repeats += [kept + p - k for k, p in enumerate(positions)]
                rows_kept = pc.indices_nonzero(keep)
                trimmed = [c.filter(keep) for c in trimmed]
            else:
                rows_kept = None
            for i, (name, col) in enumerate(zip(names, trimmed)):
                if not name:
                    continue
                if name in texts:
                    texts[name].append(col)
                empty = pc.is_in(col, value_set=self.null_cells)
                number = pc.match_substring_regex(col, _NUMBER)
                numeric[name] += pc.sum(number).as_py() or 0
                bad = pc.and_(pc.invert(empty), pc.invert(number))
                if name not in first_bad and pc.any(bad).as_py():
                    at = pc.index(bad, True).as_py()
                    row = at if rows_kept is None else rows_kept[at].as_py()
                    first_bad[name] = _Bad(delivered + row, i, f"{col[at].as_py()!r} is not a number")
                chunks[name].append(pc.if_else(number, col, None).cast(pa.float64()))
            delivered += batch.num_rows
            kept += len(trimmed[0]) if trimmed else 0
        data.rows = kept
        for name, parts in chunks.items():
            if name in first_bad and numeric[name] == 0:
                data.text_columns.append(name)  # e.g. test-tube's created_at
            elif name in first_bad and name not in self.keep_text:
                self.bad.append(first_bad[name])
            data.values[name] = pa.chunked_array(parts, pa.float64())
        data.text = {n: pa.chunked_array(parts, pa.string()) for n, parts in texts.items()}
        return True

    def _report(self, data: TableData) -> None:
        """Turn row numbers into physical lines and record the problems."""
        skipped = sorted(self.skipped)

        def data_number(row: int) -> int:  # delivered row index -> pyarrow's 1-based row number
            n = row + 1
            for s in skipped:
                if s <= n:
                    n += 1
            return n

        where = [(n + 1, None, msg) for n, msg in self.invalid]  # +1: the header line
        where += [(data_number(b.row) + 1, b.column, b.message) for b in self.bad]
        lines = physical_lines(self.path, [w[0] for w in where])
        for nonblank, column, message in sorted(where, key=lambda w: w[0]):
            line = lines.get(nonblank, nonblank)
            if column is None:
                self.problems.append(Problem(self.file, f"line {line}", f"the row {message}"))
            else:
                name = data.header[column] if column < len(data.header) else ""
                self.problems.append(Problem(self.file, f"line {line} column {column + 1} ({name!r})",
                                             f"the cell {message}"))


def read_delimited(path: Path, problems: list[Problem], *, delimiter: str = ",",
                   keep_text: Iterable[str] = (), null_cells: tuple[str, ...] = NULL_CELLS
                   ) -> Optional[TableData]:
    """Read a delimited file with a header into float64 columns (see the module docstring for
    the rules). Returns None when the file cannot be used at all (its problems are recorded)."""
    return _CsvReader(path, problems, delimiter, set(keep_text), null_cells).read()


# ---------------------------------------------------------------------------------------------
# Columns -> metrics, params, records
# ---------------------------------------------------------------------------------------------


def integer_steps(text: pa.ChunkedArray, file: str, column: str, problems: list[Problem]
                  ) -> Optional[pa.Array]:
    """A step column's trimmed cells as int64 (null where empty). Integers only; `3.0` is allowed."""
    arr = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    empty = pc.is_in(arr, value_set=pa.array(list(NULL_CELLS)))
    arr = pc.if_else(empty, None, arr)
    is_int = pc.match_substring_regex(arr, _INTEGER)
    if pc.all(pc.or_kleene(is_int, pc.is_null(arr))).as_py() is not False:
        try:
            return arr.cast(pa.int64())
        except pa.ArrowInvalid:
            problems.append(Problem(file, f"column {column!r}", "a step is outside the 64-bit range"))
            return None
    number = pc.match_substring_regex(arr, _NUMBER)
    floats = pc.if_else(number, arr, None).cast(pa.float64())
    whole = pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats))
    ok = pc.or_kleene(whole, pc.is_null(arr))
    if not pc.all(ok).as_py():
        at = pc.index(pc.invert(pc.fill_null(ok, False)), True).as_py()
        problems.append(Problem(file, f"row {at + 1} column {column!r}",
                                f"step {arr[at].as_py()!r} is not an integer"))
        return None
    return floats.cast(pa.int64())


def ms_timestamps(text: pa.ChunkedArray, file: str, column: str, problems: list[Problem],
                  notes: list[str]) -> Optional[pa.Array]:
    """A time column as int64 milliseconds since the epoch (rules in the module docstring)."""
    arr = text.combine_chunks()
    arr = pc.if_else(pc.is_in(arr, value_set=pa.array(list(NULL_CELLS))), None, arr)
    number = pc.match_substring_regex(arr, _NUMBER)
    if pc.all(pc.or_kleene(number, pc.is_null(arr))).as_py() is not False:
        secs = arr.cast(pa.float64())
        big = pc.max(pc.abs(secs)).as_py()
        scale = 1000.0 if big is None or big < 1e11 else 1.0
        return pc.floor(pc.multiply(secs, scale)).cast(pa.int64())
    for unit_type, naive in ((pa.timestamp("ns", tz="UTC"), False), (pa.timestamp("ns"), True)):
        try:
            stamps = arr.cast(unit_type)
        except pa.ArrowInvalid:
            continue
        if naive:
            notes.append(f"{file}: times in column {column!r} have no UTC offset; read as UTC")
        ms = pc.cast(stamps, pa.timestamp("ms", tz=unit_type.tz), safe=False)  # drops sub-ms
        return ms.cast(pa.int64())
    at = _first_failing(arr, lambda a: _fails_time(a))
    problems.append(Problem(file, f"row {at + 1} column {column!r}",
                            f"{arr[at].as_py()!r} is neither a number nor an ISO 8601 time"))
    return None


def _fails_time(arr: pa.Array) -> bool:
    for t in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):
        try:
            arr.cast(t)
            return False
        except pa.ArrowInvalid:
            pass
    return True


class MetricBuilder(Metrics):
    """Metric columns of one run: empty cells are no point, a value without a step a problem;
    naming and tags as every source (base.Metrics)."""

    def add(self, key: str, steps: pa.Array, values: pa.Array,
            timestamps: Optional[pa.Array] = None) -> None:
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        has_value = pc.is_valid(values)
        orphan = pc.and_(has_value, pc.is_null(steps))
        if pc.any(orphan).as_py():
            at = pc.index(orphan, True).as_py()
            self.result.problems.append(Problem(self.file, f"row {at + 1} column {key!r}",
                                                "a value in a row without a step"))
            return
        ts = None if timestamps is None else timestamps.filter(has_value)
        table = metric_table(steps.filter(has_value), values.filter(has_value), ts)
        super().add(key, table, f"column {key!r}")


def row_steps(n: int) -> pa.Array:
    """0..n-1: the steps of a log that has none of its own."""
    return pa.array(range(n), pa.int64()) if n else pa.array([], pa.int64())


# ---------------------------------------------------------------------------------------------
# YAML, safely
# ---------------------------------------------------------------------------------------------


class DataLoader(yaml.SafeLoader):
    """A SafeLoader that reads every document as plain data and never builds Python objects.

    Rule for tags SafeLoader does not know (`!!python/object:...`, `!!python/name:...`,
    `!!python/object/apply:...`, `!local` ...): the node becomes a mapping
    `{"__tag__": "<tag as written, !! form>", **mapping}` for a mapping node,
    `{"__tag__": tag, "value": scalar}` for a scalar and `{"__tag__": tag, "items": [...]}` for a
    sequence. `!!python/tuple` is read as a plain list. `!!binary` stays its base64 text and
    timestamps stay the text written, so every value is JSON-representable. Anchors and aliases are
    resolved by PyYAML (cycles and alias bombs are refused later by `base.checked_params`)."""


def _tag_name(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _construct_unknown(loader: DataLoader, node: yaml.Node) -> Any:
    tag = _tag_name(node.tag)
    if isinstance(node, yaml.MappingNode):
        return {"__tag__": tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        return items if tag == "!!python/tuple" else {"__tag__": tag, "items": items}
    return {"__tag__": tag, "value": loader.construct_scalar(node)}


def _construct_text(loader: DataLoader, node: yaml.Node) -> str:
    return "".join(str(loader.construct_scalar(node)).split()) if node.tag.endswith(":binary") \
        else str(loader.construct_scalar(node))


DataLoader.add_constructor(None, _construct_unknown)
DataLoader.add_constructor("tag:yaml.org,2002:binary", _construct_text)
DataLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_text)


def load_yaml(path: Path, problems: list[Problem]) -> Optional[Any]:
    """One YAML document read with DataLoader; a syntax error or non-UTF-8 text is a problem."""
    try:
        text = path.read_bytes().decode("utf-8")
        return yaml.load(text, Loader=DataLoader)  # noqa: S506 - DataLoader is a SafeLoader
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        problems.append(Problem(str(path), f"line {line}", "the file is not UTF-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problems.append(Problem(str(path), where, f"not valid YAML: {getattr(e, 'problem', e)}"))
    return None


# ---------------------------------------------------------------------------------------------
# The generic source
# ---------------------------------------------------------------------------------------------


def _kind(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return "delimited"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def _claimed_elsewhere(path: Path) -> bool:
    from . import keras, lightning, yolo  # here: they import this module
    # Files of a Lightning version folder (metrics.csv, meta_tags.csv) belong to that run.
    return lightning._is_version_dir(path.parent) or any(m.detect(path) for m in (keras, yolo))


def detect(path: Path) -> bool:
    """A .csv/.tsv/.jsonl/.ndjson/.parquet file that none of the specific table sources
    (Keras, Lightning, YOLO) claims, and not a file of a Lightning version folder. Folders are never generic tables."""
    if not path.is_file() or _kind(path) is None:
        return False
    if _kind(path) == "delimited":
        line, _ = first_line(path)
        try:
            if len(split_header(line, SUFFIXES[path.suffix.lower()])) < 1:
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
        reader = {"delimited": _read_delimited, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind]
        table = reader(file, options, result)
        if table is not None:
            result.records.append(_record(file, table, options, result))
    return result


def _wanted_text(options: SourceOptions) -> set[str]:
    return {c for c in (options.step_column, options.time_column) if c}


def _read_delimited(file: Path, options: SourceOptions, result: SourceResult) -> Optional[TableData]:
    data = read_delimited(file, result.problems, delimiter=SUFFIXES[file.suffix.lower()],
                          keep_text=_wanted_text(options))
    if data is not None:
        result.notes += data.notes
        if data.header_repeats:
            result.notes.append(f"{file}: {len(data.header_repeats)} repeated header row(s) skipped")
    return data


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
            number = pc.match_substring_regex(trimmed, _NUMBER)
            empty = pc.or_kleene(pc.is_null(trimmed), pc.is_in(trimmed, value_set=pa.array(list(NULL_CELLS))))
            if pc.all(pc.or_kleene(number, empty)).as_py() and pc.any(number).as_py():
                data.values[name] = pc.if_else(number, trimmed, None).cast(pa.float64())
            else:
                data.text_columns.append(name)
        elif not pa.types.is_null(t):
            data.text_columns.append(name)
    return data


def _read_jsonl(file: Path, options: SourceOptions, result: SourceResult) -> Optional[TableData]:
    import pyarrow.json as pj

    size = file.stat().st_size
    end = complete_end(file, size) if size else 0
    if end == 0:
        return TableData(str(file), partial_tail=size > 0)
    buf = pa.memory_map(str(file), "r").read_buffer().slice(0, end)
    try:
        table = pj.read_json(pa.BufferReader(buf), read_options=pj.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as e:
        # pyarrow words it "... in row N" (N counted within its block): pass it on as it is.
        result.problems.append(Problem(str(file), "", f"not valid JSON Lines: {e}"))
        return None
    data = _from_arrow(file, table, options)
    data.partial_tail = end < size
    return data


def _read_parquet(file: Path, options: SourceOptions, result: SourceResult) -> Optional[TableData]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
        batches = list(pf.iter_batches(batch_size=1 << 16))
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow)
    except (pa.ArrowInvalid, OSError) as e:
        result.problems.append(Problem(str(file), "", f"not a readable Parquet file: {e}"))
        return None
    return _from_arrow(file, table, options)


def _record(file: Path, data: TableData, options: SourceOptions, result: SourceResult) -> RunRecord:
    resolved = file.resolve()
    rec = RunRecord(experiment=options.experiment or resolved.parent.name,
                    import_key=import_key(NAME, str(resolved), "file"),
                    origin=f"{file}: file", name=file.stem)
    problems = result.problems
    if options.step_column:
        if options.step_column not in data.header:
            problems.append(Problem(str(file), "header", f"no step column {options.step_column!r}"))
            return rec
        steps = integer_steps(data.text[options.step_column], str(file), options.step_column, problems)
    else:
        steps = row_steps(data.rows)
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
