"""Generic tables (CSV, TSV, JSON Lines, Parquet) -> one RunRecord per file; and the table
machinery the Keras, Lightning and YOLO sources share.

Formats, by file suffix (content decides between them only for `detect`):

* `.csv` (comma) and `.tsv` / `.tab` (tab): a header row, then one row per logged point set.
  Streamed with pyarrow's CSV reader in 4 MB blocks (plain reads, at most two blocks ahead), every
  cell as bytes first, so invalid UTF-8 and non-numbers are found and located by us, not by a
  reader exception. Each block becomes float64 columns (and int64 for a step column) at once and
  its text is dropped. A generic file (and a Lightning metrics.csv) is a DelimitedRun: validation
  keeps only the run's facts, and the points are read again from the validated bytes as they are
  sent, so neither `importer validate` nor `importer import` holds the points (peak RSS in
  BENCHMARKS.md, bench/bench_parse.py and bench/bench_csv_import.py). Keras and YOLO files (rows
  are epochs) are read whole: 8 bytes per numeric cell, not the file.
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
import hashlib
import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import yaml

from ..files import sha256_file
from ..errors import InputError, Problem
from ..model import METRIC_SCHEMA, RunRecord
from .base import (DERIVED_STEPS_TAG, Metrics, SeriesFacts, SourceOptions, SourceResult, import_key,
                   safe_metric_key)

NAME = "csv"

SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
NULL_CELLS = ("", "NA", "N/A", "null", "None")
_NUMBER = r"^[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))$"
_INTEGER = r"^[+-]?\d+$"
_HEAD_LIMIT = 1 << 20  # a header line longer than this is not a log header
_TAIL_CHUNK = 1 << 16
_BLOCK = 1 << 22  # bytes the CSV reader parses at a time
_READ_AHEAD = 2  # blocks read ahead of the consumer
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
class Block:
    """One block of a delimited file, converted: float64 `values` and `text` columns (as in
    TableData) of its rows, which are the file's rows first_row .. first_row + rows - 1."""

    first_row: int
    rows: int
    values: dict[str, pa.Array] = field(default_factory=dict)
    text: dict[str, pa.Array] = field(default_factory=dict)


@dataclass
class TableData:
    """A table read from one file. `values` hold float64 (null where the cell is empty or not a
    number); `text` the columns asked for as text: int64 when every cell of the column is an
    integer or empty (8 bytes a row instead of the digits and an offset), else the trimmed cells
    as strings; `integer_steps` and `ms_timestamps` take either. A delimited file's columns are
    chunked alike, one chunk per block read (MetricBuilder keeps that layout)."""

    file: str
    header: list[str] = field(default_factory=list)
    values: dict[str, pa.ChunkedArray] = field(default_factory=dict)
    text: dict[str, pa.ChunkedArray] = field(default_factory=dict)
    rows: int = 0
    header_repeats: list[int] = field(default_factory=list)  # row indices a repeated header preceded
    partial_tail: bool = False
    text_columns: list[str] = field(default_factory=list)  # no numeric cell: not metrics
    notes: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def _block_pool() -> Optional[pa.MemoryPool]:
    """Arrow's jemalloc with dirty pages returned to the system at once, when pyarrow has it.

    Reading a CSV block by block allocates and frees tens of MB per block from several threads
    (the reader reads ahead); glibc's malloc kept most of it (10M points: 500 MB peak for 100 MB
    of data, its arenas and its moving mmap threshold), jemalloc with no decay delay does not."""
    # Arrow starts its jemalloc (when pyarrow loads) with a 1 s decay and a background purging
    # thread; jemalloc_set_decay_ms covers only arenas created later (the reader's threads get
    # those). The arenas made at the start follow JE_ARROW_MALLOC_CONF=dirty_decay_ms:0,
    # muzzy_decay_ms:0 if it is set before pyarrow loads (on one busy core: 240 -> 220 MB peak).
    try:
        pa.jemalloc_set_decay_ms(0)
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError, pa.ArrowException):
        return None


@contextmanager
def _reading_pool():
    """Arrow's default pool is _block_pool() inside; every buffer still goes back to its own pool."""
    pool = _block_pool()
    if pool is None or pool.backend_name == pa.default_memory_pool().backend_name:
        yield
        return
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(before)


class _Paced:
    """The bytes [start, end) of a file for Arrow's streaming CSV reader, read at most
    _READ_AHEAD blocks ahead of the batches consumed.

    Plain reads, not a memory map (a map's pages count in the process's memory once read). The
    reader reads its blocks on a background thread up to 32 ahead (128 MB of 4 MB blocks) when
    the consumer is slower than the disk; here each read waits for a permit, and every consumed
    batch gives one back. A read goes on without a permit only while the consumer is waiting for
    a batch (`waiting`): the reader then needs more blocks to give it one (a long run of blank or
    invalid lines), so it is never stuck. A slow consumer (a run being sent to a server) keeps
    the reader _READ_AHEAD blocks ahead, whatever the file's size."""

    def __init__(self, file: pa.NativeFile, start: int, end: int):
        self._file, self._stream = file, file.get_stream(start, end - start)
        self._permits = threading.Semaphore(_READ_AHEAD)
        self._pos = 0
        self.closed = False
        self.waiting = False  # the consumer waits for the next batch

    def read(self, nbytes: int = -1) -> pa.Buffer:
        while not self._permits.acquire(timeout=0.05) and not (self.waiting or self.closed):
            pass
        buf = self._stream.read_buffer(nbytes)  # Arrow memory, handed over without a copy
        self._pos += buf.size
        return buf

    def consumed(self) -> None:
        self._permits.release()

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._permits.release(_READ_AHEAD)  # a read still waiting goes on (and ends)
            self._file.close()


def _fast_floats(col: pa.Array) -> Optional[pa.Array]:
    """float64 of a block's cells (reader nulls stay null) when Arrow's own parser takes every cell
    as it is or trimmed, and no cell is NaN; else None (the exact, slower path decides: Arrow also
    takes `nan(...)` and rejects empty or `NA` cells once they are padded)."""
    try:
        floats = col.cast(pa.float64())
    except pa.ArrowInvalid:
        try:
            floats = pc.utf8_trim_whitespace(col).cast(pa.float64())
        except pa.ArrowInvalid:
            return None
    if floats.null_count < len(floats) and pc.any(pc.is_nan(floats)).as_py():
        return None
    return floats


def _fast_integers(trimmed: pa.Array) -> Optional[pa.Array]:
    """int64 of a block's trimmed cells when Arrow parses every one as a plain decimal integer."""
    try:
        ints = trimmed.cast(pa.int64())
    except pa.ArrowInvalid:
        return None
    if pc.any(pc.match_substring(trimmed, "x", ignore_case=True)).as_py():  # Arrow reads 0x10
        return None
    return ints


class _CsvReader:
    """Streams one delimited file into a TableData; problems name file, line and column.

    Memory: the file is read in blocks of 4 MB through plain reads; each block's cells become
    float64 (per metric column) and int64 (a step column) at once, and the text is released
    before the next block. What stays is 8 bytes per cell of the numeric columns.
    Speed: Arrow's parser converts a block column directly; the exact rules (the number regex,
    null cells among padding, `nan(...)`) run only on a block column it does not take, and locate
    the first bad cell there."""

    def __init__(self, path: Path, problems: list[Problem], delimiter: str, keep_text: set[str],
                 null_cells: tuple[str, ...], text_only: bool = False):
        self.path, self.file = path, str(path)
        self.text_only = text_only
        self.problems, self.delimiter = problems, delimiter
        self.keep_text, self.null_list = keep_text, list(null_cells)
        self.null_cells = pa.array(self.null_list, pa.string())
        self.skipped: list[int] = []  # pyarrow's 1-based data row numbers of invalid rows
        self.invalid: list[tuple[int, str]] = []
        self.bad: list[_Bad] = []
        self.fatal = False
        self.start = self.end = 0
        self.numeric_names: list[str] = []
        self.text_names: list[str] = []

    def open(self, end: Optional[int] = None) -> Optional[TableData]:
        """The header, and the bytes to read: [self.start, self.end), up to `end` when given (the
        length a validation pass accepted), else up to the last line terminator. None when the
        file cannot be used at all (its problem is recorded)."""
        data = TableData(self.file)
        size = self.path.stat().st_size
        if end is None:
            end = complete_end(self.path, size) if size else 0
        data.partial_tail = end < size
        self.start = self.end = end
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
        self.start = after
        return data

    def read(self) -> Optional[TableData]:
        """The whole file in memory (Keras, Lightning, YOLO): every block's columns kept."""
        data = self.open()
        if data is None or self.end <= self.start:
            return data
        values: dict[str, list[pa.Array]] = {}
        texts: dict[str, list[pa.Array]] = {}
        with _reading_pool():
            for block in self.blocks(data):
                for name, arr in block.values.items():
                    values.setdefault(name, []).append(arr)
                for name, arr in block.text.items():
                    texts.setdefault(name, []).append(arr)
        self.report(data)
        if self.fatal:
            return None
        for name in self.numeric_names:
            data.values[name] = pa.chunked_array(values.get(name, []), pa.float64())
        for name in self.text_names:
            parts = texts.get(name, [])
            if all(pa.types.is_integer(p.type) for p in parts):
                data.text[name] = pa.chunked_array(parts, pa.int64())
            else:
                data.text[name] = pa.chunked_array([p.cast(pa.string()) for p in parts], pa.string())
        return data

    def _repeats(self, names: list[str], columns: list[pa.Array]) -> Optional[pa.Array]:
        """Rows of a block that repeat the header (a second header appended to the file), or None.
        Column 0 alone first: the whole row is compared only where its first cell is the name."""
        repeat = None
        for k, (name, col) in enumerate(zip(names, columns)):
            same = pc.equal(pc.utf8_trim_whitespace(col), name)
            if name in self.null_list:  # the reader made such cells null
                same = pc.or_kleene(same, pc.is_null(col))
            same = pc.fill_null(same, False)
            repeat = same if repeat is None else pc.and_(repeat, same)
            if k == 0 and not pc.any(repeat).as_py():
                return None
        return repeat if repeat is not None and pc.any(repeat).as_py() else None

    def _exact(self, col: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(float64 with null for empty and non-numeric cells, mask of non-numeric non-empty cells)
        by the documented rules, on a block column Arrow's parser did not take."""
        trimmed = pc.utf8_trim_whitespace(col)
        empty = pc.or_kleene(pc.is_null(trimmed), pc.is_in(trimmed, value_set=self.null_cells))
        number = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False)
        bad = pc.and_(pc.invert(empty), pc.invert(number))
        return pc.if_else(number, trimmed, None).cast(pa.float64()), bad

    def blocks(self, data: TableData) -> Iterator[Block]:
        """The bytes [self.start, self.end) block by block, each block's cells converted at once.
        Once every block is read, `data` holds the counts (rows, repeated headers, text columns)
        and self.bad / self.invalid the problems (`report` words them); `fatal` is set when the
        rest of the file cannot be read (not UTF-8)."""
        names = data.header
        self.numeric_names = [n for n in names if n and not (self.text_only and n in self.keep_text)]
        self.text_names = [n for n in names if n in self.keep_text]
        if self.end <= self.start:
            return
        cols = [f"c{i}" for i in range(len(names))]

        def invalid(row) -> str:
            self.skipped.append(row.number)
            self.invalid.append((row.number, f"has {row.actual_columns} cells; the header has "
                                              f"{row.expected_columns}"))
            return "skip"

        stream = _Paced(pa.OSFile(self.file), self.start, self.end)
        reader = pv.open_csv(
            pa.PythonFile(stream, mode="r"),
            read_options=pv.ReadOptions(column_names=cols, use_threads=False, block_size=_BLOCK),
            parse_options=pv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=invalid),
            convert_options=pv.ConvertOptions(column_types={c: pa.binary() for c in cols},
                                              null_values=self.null_list, strings_can_be_null=True,
                                              quoted_strings_can_be_null=False))
        numeric = {n: 0 for n in self.numeric_names}
        first_bad: dict[str, _Bad] = {}
        delivered = kept = 0
        batches = iter(reader)
        try:
            while True:
                stream.waiting = True
                batch = next(batches, None)
                stream.waiting = False
                if batch is None:
                    break
                columns = []
                for i, col in enumerate(batch.columns):
                    try:
                        columns.append(col.cast(pa.string()))  # checks UTF-8, no copy
                    except pa.ArrowInvalid:
                        at = _first_failing(col, _not_utf8)
                        self.bad.append(_Bad(delivered + at, i, "is not UTF-8"))
                        self.fatal = True
                        return
                n_rows = batch.num_rows
                del batch
                repeat = self._repeats(names, columns) if names else None
                rows_kept, repeated = None, 0
                if repeat is not None:
                    keep = pc.invert(repeat)
                    positions = pc.indices_nonzero(repeat).to_pylist()
                    repeated = len(positions)
                    data.header_repeats += [kept + p - k for k, p in enumerate(positions)]
                    rows_kept = pc.indices_nonzero(keep)
                    columns = [c.filter(keep) for c in columns]
                block = Block(first_row=kept, rows=n_rows - repeated)
                for i, name in enumerate(names):
                    col, columns[i] = columns[i], None  # the block's text goes as soon as it is used
                    if not name:
                        continue
                    if name in self.text_names:
                        trimmed = pc.utf8_trim_whitespace(col)
                        ints = _fast_integers(trimmed)
                        block.text[name] = trimmed if ints is None else ints
                    if name not in numeric:
                        continue
                    floats = _fast_floats(col)
                    if floats is None:
                        floats, bad = self._exact(col)
                        if name not in first_bad and pc.any(bad).as_py():
                            at = pc.index(bad, True).as_py()
                            row = at if rows_kept is None else rows_kept[at].as_py()
                            cell = pc.utf8_trim_whitespace(col.slice(at, 1))[0].as_py()
                            first_bad[name] = _Bad(delivered + row, i, f"{cell!r} is not a number")
                    numeric[name] += len(floats) - floats.null_count
                    block.values[name] = floats
                delivered += n_rows
                kept += n_rows - repeated
                yield block
                del block
                stream.consumed()
        finally:
            stream.close()
        data.rows = kept
        for name in self.numeric_names:
            if name in first_bad and numeric[name] == 0:
                data.text_columns.append(name)  # e.g. test-tube's created_at
            elif name in first_bad and name not in self.keep_text:
                self.bad.append(first_bad[name])

    def report(self, data: TableData) -> None:
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
                   keep_text: Iterable[str] = (), null_cells: tuple[str, ...] = NULL_CELLS,
                   text_only: bool = False) -> Optional[TableData]:
    """Read a delimited file with a header into float64 columns (see the module docstring for
    the rules). Returns None when the file cannot be used at all (its problems are recorded).
    `text_only`: the `keep_text` columns get no float64 `values` (they are not metrics; for a
    step column of 10 million rows that is 80 MB less while the file is read)."""
    return _CsvReader(path, problems, delimiter, set(keep_text), null_cells, text_only).read()


# ---------------------------------------------------------------------------------------------
# Columns -> metrics, params, records
# ---------------------------------------------------------------------------------------------


def _one(arr) -> pa.Array:
    """An Array from an Array or ChunkedArray, without a copy when there is one chunk."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def integer_steps(text: pa.ChunkedArray, file: str, column: str, problems: list[Problem],
                  first_row: int = 0) -> Optional[pa.Array | pa.ChunkedArray]:
    """A step column as int64 (null where empty): TableData.text's int64 as it is, else its
    trimmed cells. Integers only; `3.0` is allowed. `first_row`: the file's row index of the
    first cell (a block's), for problems."""
    if pa.types.is_integer(text.type):
        return text.cast(pa.int64())  # chunked as it was read
    arr = _one(text)
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
    whole = pc.fill_null(pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats)), False)
    ok = pc.or_kleene(whole, pc.is_null(arr))  # a cell that is no number at all is not ok either
    if not pc.all(ok).as_py():
        at = pc.index(pc.invert(pc.fill_null(ok, False)), True).as_py()
        problems.append(Problem(file, f"row {first_row + at + 1} column {column!r}",
                                f"step {arr[at].as_py()!r} is not an integer"))
        return None
    return floats.cast(pa.int64())


def ms_timestamps(text: pa.ChunkedArray, file: str, column: str, problems: list[Problem],
                  notes: list[str]) -> Optional[pa.Array | pa.ChunkedArray]:
    """A whole time column as int64 milliseconds since the epoch (rules in the module docstring);
    TableData.text's int64 or its trimmed cells."""
    return TimeColumn(file, column, problems, notes).block(text)


class TimeColumn:
    """A time column read as one or more blocks in file order: int64 milliseconds since the epoch.

    One kind for the whole column: numbers, or ISO 8601 with a UTC offset, or without one (read as
    UTC, noted). Numbers are epoch seconds when every |value| of the column is < 1e11: until the
    last block is read (`scale` unknown) a block is scaled by its own values, so its milliseconds
    are only good for which points have a time; the first pass learns `scale` and `earliest_ms`
    (the earliest time of a row with a point: the run's start), the second is given `scale`."""

    def __init__(self, file: str, column: str, problems: list[Problem], notes: list[str],
                 scale: Optional[float] = None):
        self.file, self.column, self.problems, self.notes = file, column, problems, notes
        self.given_scale = scale
        self.kind: Optional[str] = None  # "number", "iso" or "naive"
        self.largest: Optional[float] = None  # the largest |number|
        self.earliest: Optional[float] = None  # raw: a number, or ms of an ISO time

    @property
    def scale(self) -> float:
        return self.given_scale if self.given_scale is not None else _epoch_scale(self.largest)

    def earliest_ms(self) -> Optional[int]:
        if self.earliest is None:
            return None
        return int(math.floor(self.earliest * self.scale)) if self.kind == "number" else int(self.earliest)

    def _problem(self, row: int, cell: Any, message: str) -> None:
        self.problems.append(Problem(self.file, f"row {row + 1} column {self.column!r}", f"{cell!r} {message}"))

    def block(self, text, first_row: int = 0, with_point: Optional[pa.Array] = None
              ) -> Optional[pa.Array | pa.ChunkedArray]:
        """The block's milliseconds (null where empty), or None after a problem. `with_point`:
        the rows that hold a point (the earliest time is taken among those)."""
        if pa.types.is_integer(text.type):
            kind, raw = "number", text.cast(pa.float64())  # chunked as it was read
        else:
            arr = _one(text)
            arr = pc.if_else(pc.is_in(arr, value_set=pa.array(list(NULL_CELLS))), None, arr)
            if arr.null_count == len(arr):
                return pa.nulls(len(arr), pa.int64())
            number = pc.match_substring_regex(arr, _NUMBER)
            if pc.all(pc.or_kleene(number, pc.is_null(arr))).as_py() is not False:
                kind, raw = "number", arr.cast(pa.float64())
            else:
                kind, raw = None, None
                for unit_type, name in ((pa.timestamp("ns", tz="UTC"), "iso"), (pa.timestamp("ns"), "naive")):
                    try:
                        stamps = arr.cast(unit_type)
                    except pa.ArrowInvalid:
                        continue
                    ms = pc.cast(stamps, pa.timestamp("ms", tz=unit_type.tz), safe=False)  # drops sub-ms
                    kind, raw = name, ms.cast(pa.int64())
                    break
                if kind is None:
                    at = _first_failing(arr, _fails_time)
                    self._problem(first_row + at, arr[at].as_py(), "is neither a number nor an ISO 8601 time")
                    return None
        if self.kind is None:
            self.kind = kind
            if kind == "naive":
                self.notes.append(f"{self.file}: times in column {self.column!r} have no UTC offset; read as UTC")
        elif kind != self.kind:
            at = pc.index(pc.is_valid(raw), True).as_py()
            self._problem(first_row + at, _one(text)[at].as_py(), "is not written like the times before it "
                          "(one kind per column: numbers, or ISO 8601 with a UTC offset, or without)")
            return None
        present = raw if with_point is None else raw.filter(with_point)
        low = pc.min(present).as_py()
        if low is not None:
            self.earliest = low if self.earliest is None else min(low, self.earliest)
        if kind != "number":
            return raw
        big = pc.max(pc.abs(raw)).as_py()
        if big is not None:
            self.largest = big if self.largest is None else max(big, self.largest)
        scale = self.given_scale if self.given_scale is not None else _epoch_scale(big)
        return pc.floor(pc.multiply(raw, scale)).cast(pa.int64())


def _epoch_scale(largest: Optional[float]) -> float:
    """Milliseconds per unit of numeric times whose largest |value| is `largest`: seconds below
    1e11 (the year 5138), milliseconds from there."""
    return 1000.0 if largest is None or largest < 1e11 else 1.0


def _fails_time(arr: pa.Array) -> bool:
    for t in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):
        try:
            arr.cast(t)
            return False
        except pa.ArrowInvalid:
            pass
    return True


def _chunked(arr) -> pa.ChunkedArray:
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _layout(arr: pa.ChunkedArray) -> tuple[int, ...]:
    return tuple(len(c) for c in arr.chunks)


class MetricBuilder(Metrics):
    """Metric columns of one run: empty cells are no point, a value without a step a problem;
    naming and tags as every source (base.Metrics).

    Nothing is copied that need not be. A column without empty cells keeps its values and the
    steps it was given (one array for every such key of the run). Tables keep the values' chunks
    (a CSV block each) and every column of a table is chunked alike: steps given in another
    layout are cut to it once per run (copied, so each chunk has its own buffer: a table's
    batches are then exactly its chunks, and hashing them (RunRecord.fingerprint) reads each
    byte once); missing timestamps are slices of one null array shared by every key."""

    def __init__(self, file: str, result: SourceResult, streamed: bool = False):
        super().__init__(file, result, streamed)
        self._nulls = pa.nulls(0, pa.int64())
        self._cut: dict[tuple, tuple[pa.ChunkedArray, pa.ChunkedArray]] = {}
        self.first_row = 0  # the file's row index of the columns' first cell (a block's), for problems

    def next_block(self, first_row: int) -> None:
        """Streamed: the columns now given are a block starting at row `first_row`."""
        self.first_row = first_row
        self._cut.clear()  # steps cut for an earlier block: let them go

    def _like(self, arr: pa.ChunkedArray, layout: tuple[int, ...]) -> pa.ChunkedArray:
        """`arr` in chunks of the lengths `layout`."""
        if _layout(arr) == layout:
            return arr
        key = (tuple((c.buffers()[-1].address if c.buffers()[-1] else 0, c.offset, len(c))
                     for c in arr.chunks), layout)
        if key not in self._cut:  # the source is kept with its cut: its buffers' addresses stay its own
            parts, at = [], 0
            for n in layout:
                parts.append(pa.concat_arrays(arr.slice(at, n).chunks or [arr.chunk(0).slice(0, 0)]))
                at += n
            self._cut[key] = (arr, pa.chunked_array(parts, arr.type))
        return self._cut[key][1]

    def _null_timestamps(self, layout: tuple[int, ...]) -> pa.ChunkedArray:
        longest = max(layout, default=0)
        if len(self._nulls) < longest:
            self._nulls = pa.nulls(longest, pa.int64())
        return pa.chunked_array([self._nulls.slice(0, n) for n in layout], pa.int64())

    def add(self, key: str, steps, values, timestamps=None) -> None:
        if key in self.refused:
            return
        values = _chunked(values).cast(pa.float64())
        layout = _layout(values)
        steps = self._like(_chunked(steps).cast(pa.int64()), layout)
        if timestamps is not None:
            timestamps = self._like(_chunked(timestamps).cast(pa.int64()), layout)
        has_value = pc.is_valid(values) if values.null_count else None
        if steps.null_count:
            orphan = pc.is_null(steps) if has_value is None else pc.and_(has_value, pc.is_null(steps))
            if pc.any(orphan).as_py():
                at = pc.index(orphan, True).as_py()
                self.result.problems.append(Problem(self.file, f"row {self.first_row + at + 1} column {key!r}",
                                                    "a value in a row without a step"))
                if self.streamed:  # said once, not once per block
                    self.refused.add(key)
                return
        if has_value is not None:  # chunk by chunk: the layout stays alike in every column
            kept = pa.table({"s": steps, "v": values, **({} if timestamps is None else {"t": timestamps})}
                            ).filter(has_value)
            steps, values = kept.column("s"), kept.column("v")
            timestamps = None if timestamps is None else kept.column("t")
        ts = self._null_timestamps(_layout(values)) if timestamps is None else timestamps
        Metrics.add(self, key, pa.table([steps, ts, values], schema=METRIC_SCHEMA), f"column {key!r}")


def row_steps(n: int, like: Optional[pa.ChunkedArray] = None) -> pa.Array | pa.ChunkedArray:
    """0..n-1: the steps of a log that has none of its own; chunked as `like` when given (the
    layout MetricBuilder would otherwise cut them to)."""
    if like is not None and len(like) == n and like.num_chunks > 1:
        parts, at = [], 0
        for chunk in like.chunks:
            parts.append(pc.add(row_steps(len(chunk)), at))
            at += len(chunk)
        return pa.chunked_array(parts, pa.int64())
    if not n:
        return pa.array([], pa.int64())
    ones = pc.fill_null(pa.nulls(n, pa.int64()), 1)  # Arrow has no range kernel; a Python range is slow
    return pc.subtract(pc.cumulative_sum(ones), 1)


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


# ---------------------------------------------------------------------------------------------
# A delimited file as a streamed run: validated first, its points read again as they are sent
# ---------------------------------------------------------------------------------------------


class DelimitedRun:
    """A delimited file as one run (generic CSV/TSV, a Lightning metrics.csv), in two passes over
    the same bytes, so memory does not grow with the file: its points are never all held.

    `validate` reads the file block by block (4 MB), converts every block exactly as it will be
    sent and keeps only the run's facts: problems, tags, per key its points and step range
    (`series`), the earliest time of a point (`min_timestamp`: the sink's start time), the time
    column's scale, the bytes accepted (`end`) and their SHA-256. It sets itself as the record's
    `load`, the way export bundles and servers give their runs:

    * `pages()` reads those bytes again, block by block, and yields (key, METRIC_SCHEMA table)
      of each block: the sink streams them to the server. Bytes appended since are not read (the
      next import appends them); bytes changed since are an error before anything is sent.
    * `await load()` puts every page in `rec.metrics` (the sink's path when it must compare
      with what the server holds, and dry runs).

    Columns: `step_column` / `time_column` are read as text (`keep_text`; with `text_only` they
    are no metric); every other named column is a metric `key_prefix + name`. A column with no
    number in it is text: a metric without points (`text_keys`) or no metric at all."""

    def __init__(self, file: Path, rec: RunRecord, *, step_column: Optional[str] = None,
                 time_column: Optional[str] = None, key_prefix: str = "",
                 keep_text: Iterable[str] = (), text_only: bool = True, text_keys: bool = True):
        self.file, self.rec = file, rec
        self.step_column, self.time_column, self.key_prefix = step_column, time_column, key_prefix
        self.keep_text, self.text_only, self.text_keys = set(keep_text), text_only, text_keys
        self.delimiter = SUFFIXES.get(file.suffix.lower(), ",")
        self.text_columns: set[str] = set()  # not metrics (text_keys False), learnt by validate
        self.end = 0
        self.digest = ""
        self.scale: Optional[float] = None
        self.series: dict[str, SeriesFacts] = {}
        self.min_timestamp: Optional[int] = None

    def _reader(self, problems: list[Problem]) -> _CsvReader:
        return _CsvReader(self.file, problems, self.delimiter, self.keep_text, NULL_CELLS, self.text_only)

    def _convert(self, block: Block, metrics: MetricBuilder, times: Optional[TimeColumn],
                 problems: list[Problem]) -> bool:
        """The block's metric tables into `metrics`; False after a problem with its steps or times."""
        if self.step_column:
            steps = integer_steps(block.text[self.step_column], str(self.file), self.step_column,
                                  problems, block.first_row)
            if steps is None:
                return False
        else:
            steps = pc.add(row_steps(block.rows), block.first_row)
        names = [n for n in block.values if n and n not in (self.step_column, self.time_column)
                 and n not in self.text_columns]
        stamps = None
        if times is not None:
            with_point = None
            for name in names:
                valid = pc.is_valid(block.values[name])
                with_point = valid if with_point is None else pc.or_(with_point, valid)
            if with_point is None:
                with_point = pa.array([False] * block.rows, pa.bool_())
            stamps = times.block(block.text[self.time_column], block.first_row, with_point)
            if stamps is None:
                return False
        metrics.next_block(block.first_row)
        for name in names:
            metrics.add(self.key_prefix + name, steps, block.values[name], stamps)
        return True

    def _columns_present(self, data: TableData, problems: list[Problem]) -> bool:
        for column, what in ((self.step_column, "step"), (self.time_column, "time")):
            if column and column not in data.header:
                problems.append(Problem(str(self.file), "header", f"no {what} column {column!r}"))
                return False
        return True

    def validate(self, result: SourceResult) -> Optional[RunRecord]:
        """The first pass: the run with its tags and facts, or None when the file cannot be read
        at all; problems and notes go to `result`."""
        reader = self._reader(result.problems)
        data = reader.open()
        if data is None:
            return None
        rec = self.rec
        convert = self._columns_present(data, result.problems)
        metrics = MetricBuilder(str(self.file), result, streamed=True)
        times = TimeColumn(str(self.file), self.time_column, result.problems, result.notes) \
            if self.time_column else None
        with _reading_pool():
            for block in reader.blocks(data):
                convert = convert and self._convert(block, metrics, times, result.problems)
                metrics.take()  # only the facts are kept
        reader.report(data)
        if reader.fatal:
            return None
        result.notes += data.notes
        if data.header_repeats:
            result.notes.append(f"{self.file}: {len(data.header_repeats)} repeated header row(s) skipped")
        if not convert:
            return rec
        if not self.step_column and data.rows:
            rec.tags[DERIVED_STEPS_TAG] = DERIVED_STEPS_TEXT
        if data.text_columns:
            result.notes.append(f"{self.file}: text columns are not metrics: {', '.join(data.text_columns)}")
            if not self.text_keys:
                self.text_columns = set(data.text_columns)
                for key in [self.key_prefix + n for n in data.text_columns]:
                    metrics.series.pop(safe_metric_key(key), None)
                    metrics.renamed.pop(key, None)
        metrics.finish(rec)
        if times is not None:
            self.scale, self.min_timestamp = times.scale, times.earliest_ms()
        self.series = metrics.series
        self.end = reader.end
        self.digest = sha256_file(self.file, self.end)
        rec.points_to_load = sum(f.points for f in self.series.values())
        rec.signature = "csv-" + hashlib.sha256(json.dumps(
            [self.digest, self.end, self.step_column, self.time_column, self.key_prefix]).encode()).hexdigest()
        rec.load = self
        return rec

    async def pages(self) -> AsyncIterator[tuple[str, pa.Table]]:
        """The second pass: each block's (key, points) of the bytes the first pass accepted."""
        if not self.end:
            return
        self._check_unchanged()
        problems: list[Problem] = []
        reader = self._reader(problems)
        data = reader.open(self.end)
        metrics = MetricBuilder(str(self.file), SourceResult(problems=problems), streamed=True)
        times = TimeColumn(str(self.file), self.time_column, problems, [], self.scale) \
            if self.time_column else None
        blocks = reader.blocks(data)
        try:
            while True:
                with _reading_pool():  # not held across a yield: other runs are written meanwhile
                    block = next(blocks, None)
                    if block is not None:
                        self._convert(block, metrics, times, problems)
                if problems or reader.bad or reader.invalid:
                    found = "; ".join(map(str, problems)) or "a row or cell it did not have"
                    raise InputError(f"{self.file} changed while it was read: {found}")
                if block is None:
                    break
                for key, table in metrics.take().items():
                    if table.num_rows:
                        yield key, table
        finally:
            blocks.close()
        if {k: f.points for k, f in metrics.series.items()} != {k: f.points for k, f in self.series.items()}:
            raise InputError(f"{self.file} changed while it was read: other points than validated")

    async def __call__(self) -> None:
        parts: dict[str, list[pa.Table]] = {key: [] for key in self.series}
        async for key, table in self.pages():
            parts[key].append(table)
        self.rec.metrics = {key: pa.concat_tables(p) if p else METRIC_SCHEMA.empty_table()
                            for key, p in parts.items()}

    async def artifacts(self) -> list:
        self._check_unchanged()  # the sink asks first, before it creates the run
        return []

    def _check_unchanged(self) -> None:
        """Appending to the file is fine (those bytes are not read); changing what was validated is not."""
        if self.end and sha256_file(self.file, self.end) != self.digest:
            raise InputError(f"{self.file} changed since it was validated (its first {self.end:,} "
                             "bytes are not the same): none of its points were sent; import it again")

