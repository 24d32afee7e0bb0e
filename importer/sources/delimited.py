"""Delimited text files (CSV, TSV) with a header -> float64 columns, block by block.

The bytes: only the complete part of a file still being written is read (up to its last line
terminator); its first line is the header; line numbers in problems count LF-terminated lines.
The reading: Arrow's streaming CSV reader in BLOCK_BYTES blocks through plain reads, at most
READ_AHEAD blocks ahead of the consumer; every cell as bytes first, so invalid UTF-8 and
non-numbers are found and located here, not by a reader exception; each block's cells become
float64 (and int64 for step columns) at once and its text is dropped. Blocks are allocated from
block_pool(), passed to each Arrow call; the process's default pool is left as it is.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ..errors import Problem
from .columns import NULL_CELLS, exact_floats, fast_floats, fast_integers, first_failing, not_utf8

DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}  # by file suffix
BLOCK_BYTES = 1 << 22  # bytes the CSV reader parses at a time
READ_AHEAD = 2  # blocks read ahead of the consumer
_HEAD_LIMIT = 1 << 20  # a header line longer than this is not a log header
_TAIL_CHUNK = 1 << 16


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


# ---------------------------------------------------------------------------------------------
# What a reader gives: blocks, and the table of a file
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
    text_columns: list[str] = field(default_factory=list)  # no numeric cell: not metrics
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading: memory, pacing, the reader
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def block_pool() -> pa.MemoryPool:
    """The pool a reader allocates its blocks from, passed to every Arrow call that reads or
    converts them (Arrow's default pool, the host's, is never changed): Arrow's jemalloc when
    pyarrow has it, else the default pool.

    Reading a CSV block by block allocates and frees tens of MB per block from several threads
    (the reader reads ahead); glibc's malloc kept most of it (10M points: 500 MB peak for 100 MB
    of data, its arenas and its moving mmap threshold), jemalloc with no decay delay does not."""
    # How fast jemalloc returns pages is the host's to set: the command line sets it at start
    # (JE_ARROW_MALLOC_CONF and jemalloc_set_decay_ms, importer/cli.py).
    try:
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError, pa.ArrowException):
        return pa.default_memory_pool()


class PacedStream:
    """The bytes [start, end) of a file for Arrow's streaming CSV reader, read at most
    READ_AHEAD blocks ahead of the batches consumed.

    Plain reads, not a memory map (a map's pages count in the process's memory once read). The
    reader reads its blocks on a background thread up to 32 ahead (128 MB of 4 MB blocks) when
    the consumer is slower than the disk; here each read waits for a permit, and every consumed
    batch gives one back. A read goes on without a permit only while the consumer is waiting for
    a batch (`waiting`): the reader then needs more blocks to give it one (a long run of blank or
    invalid lines), so it is never stuck. A slow consumer (a run being sent to a server) keeps
    the reader READ_AHEAD blocks ahead, whatever the file's size."""

    def __init__(self, file: pa.NativeFile, start: int, end: int):
        self._file, self._stream = file, file.get_stream(start, end - start)
        self._permits = threading.Semaphore(READ_AHEAD)
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
            self._permits.release(READ_AHEAD)  # a read still waiting goes on (and ends)
            self._file.close()


class DelimitedReader:
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
        self.pool = block_pool()

    def open(self, end: Optional[int] = None) -> Optional[TableData]:
        """The header, and the bytes to read: [self.start, self.end), up to `end` when given (the
        length a validation pass accepted), else up to the last line terminator. None when the
        file cannot be used at all (its problem is recorded)."""
        data = TableData(self.file)
        size = self.path.stat().st_size
        if end is None:
            end = complete_end(self.path, size) if size else 0
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
                strings = [p.cast(pa.string(), memory_pool=self.pool) for p in parts]
                data.text[name] = pa.chunked_array(strings, pa.string())
        return data

    def _repeats(self, names: list[str], columns: list[pa.Array]) -> Optional[pa.Array]:
        """Rows of a block that repeat the header (a second header appended to the file), or None.
        Column 0 alone first: the whole row is compared only where its first cell is the name."""
        repeat, pool = None, self.pool
        for k, (name, col) in enumerate(zip(names, columns)):
            same = pc.equal(pc.utf8_trim_whitespace(col, memory_pool=pool), name, memory_pool=pool)
            if name in self.null_list:  # the reader made such cells null
                same = pc.or_kleene(same, pc.is_null(col, memory_pool=pool), memory_pool=pool)
            same = pc.coalesce(same, False, memory_pool=pool)  # fill_null takes no pool
            repeat = same if repeat is None else pc.and_(repeat, same, memory_pool=pool)
            if k == 0 and not pc.any(repeat).as_py():
                return None
        return repeat if repeat is not None and pc.any(repeat).as_py() else None

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

        pool = self.pool
        stream = PacedStream(pa.OSFile(self.file, memory_pool=pool), self.start, self.end)
        reader = pv.open_csv(
            pa.PythonFile(stream, mode="r"),
            read_options=pv.ReadOptions(column_names=cols, use_threads=False, block_size=BLOCK_BYTES),
            parse_options=pv.ParseOptions(delimiter=self.delimiter, invalid_row_handler=invalid),
            convert_options=pv.ConvertOptions(column_types={c: pa.binary() for c in cols},
                                              null_values=self.null_list, strings_can_be_null=True,
                                              quoted_strings_can_be_null=False),
            memory_pool=pool)
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
                        columns.append(col.cast(pa.string(), memory_pool=pool))  # checks UTF-8, no copy
                    except pa.ArrowInvalid:
                        at = first_failing(col, not_utf8)
                        self.bad.append(_Bad(delivered + at, i, "is not UTF-8"))
                        self.fatal = True
                        return
                n_rows = batch.num_rows
                del batch
                repeat = self._repeats(names, columns) if names else None
                rows_kept, repeated = None, 0
                if repeat is not None:
                    keep = pc.invert(repeat, memory_pool=pool)
                    positions = pc.indices_nonzero(repeat).to_pylist()
                    repeated = len(positions)
                    data.header_repeats += [kept + p - k for k, p in enumerate(positions)]
                    rows_kept = pc.indices_nonzero(keep)
                    columns = [pc.filter(c, keep, memory_pool=pool) for c in columns]
                block = Block(first_row=kept, rows=n_rows - repeated)
                for i, name in enumerate(names):
                    col, columns[i] = columns[i], None  # the block's text goes as soon as it is used
                    if not name:
                        continue
                    if name in self.text_names:
                        trimmed = pc.utf8_trim_whitespace(col, memory_pool=pool)
                        ints = fast_integers(trimmed, pool)
                        block.text[name] = trimmed if ints is None else ints
                    if name not in numeric:
                        continue
                    floats = fast_floats(col, pool)
                    if floats is None:
                        floats, bad = exact_floats(col, self.null_cells, pool)
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
    """Read a delimited file with a header into float64 columns (the cell rules in columns.py,
    the table rules in table.py's docstring). Returns None when the file cannot be used at all
    (its problems are recorded). `text_only`: the `keep_text` columns get no float64 `values`
    (they are not metrics; for a step column of 10 million rows that is 80 MB less while the
    file is read)."""
    return DelimitedReader(path, problems, delimiter, set(keep_text), null_cells, text_only).read()
