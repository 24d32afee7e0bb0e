"""Cells of a table -> typed Arrow columns, and typed columns -> metric tables.

The cell rules every table-shaped source shares: surrounding spaces are ignored; NULL_CELLS are
no point; numbers as NUMBER_PATTERN (with `nan`, `inf`); steps are integers; a time column is
numbers (epoch seconds or milliseconds, times.epoch_scale) or ISO 8601. MetricBuilder turns a
run's columns into METRIC_SCHEMA tables without copying what need not be copied.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import Problem
from ..model import METRIC_SCHEMA
from ..model.values import NumberText, int64_problem, shown
from .base import Metrics, SourceResult
from .times import epoch_scale

NULL_CELLS = ("", "NA", "N/A", "null", "None")
NUMBER_PATTERN = r"^[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))$"
INTEGER_PATTERN = r"^[+-]?\d+$"
DERIVED_STEPS_TEXT = "steps are row numbers 0..n-1 in file order (the log has no step column)"


# ---------------------------------------------------------------------------------------------
# Cells -> float64 and int64
# ---------------------------------------------------------------------------------------------


def first_failing(arr: pa.Array, fails: Callable[[pa.Array], bool]) -> int:
    """Index of the first element for which `fails(arr[i:i+1])`, by bisection (error path)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(arr.slice(lo, mid - lo)):
            hi = mid
        else:
            lo = mid
    return lo


def not_utf8(arr: pa.Array) -> bool:
    """Whether some cell of a binary column is not UTF-8."""
    try:
        arr.cast(pa.string())
        return False
    except pa.ArrowInvalid:
        return True


# `pool`: the memory pool the results are allocated from (delimited.block_pool for a reader's
# blocks); None is Arrow's default pool.


def fast_floats(col: pa.Array, pool: Optional[pa.MemoryPool] = None) -> Optional[pa.Array]:
    """float64 of a block's cells (reader nulls stay null) when Arrow's own parser takes every cell
    as it is or trimmed, and no cell is NaN; else None (the exact, slower path decides: Arrow also
    takes `nan(...)` and rejects empty or `NA` cells once they are padded)."""
    try:
        floats = col.cast(pa.float64(), memory_pool=pool)
    except pa.ArrowInvalid:
        try:
            floats = pc.utf8_trim_whitespace(col, memory_pool=pool).cast(pa.float64(), memory_pool=pool)
        except pa.ArrowInvalid:
            return None
    if floats.null_count < len(floats) and pc.any(pc.is_nan(floats, memory_pool=pool)).as_py():
        return None
    return floats


def fast_integers(trimmed: pa.Array, pool: Optional[pa.MemoryPool] = None) -> Optional[pa.Array]:
    """int64 of a block's trimmed cells when Arrow parses every one as a plain decimal integer."""
    try:
        ints = trimmed.cast(pa.int64(), memory_pool=pool)
    except pa.ArrowInvalid:
        return None
    hex_like = pc.match_substring(trimmed, "x", ignore_case=True, memory_pool=pool)
    if pc.any(hex_like).as_py():  # Arrow reads 0x10
        return None
    return ints


def exact_floats(col: pa.Array, null_cells: pa.Array, pool: Optional[pa.MemoryPool] = None
                 ) -> tuple[pa.Array, pa.Array]:
    """(float64 with null for empty and non-numeric cells, mask of non-numeric non-empty cells)
    by the documented rules, for a column Arrow's parser did not take (fast_floats)."""
    trimmed = pc.utf8_trim_whitespace(col, memory_pool=pool)
    empty = pc.or_kleene(pc.is_null(trimmed), pc.is_in(trimmed, value_set=null_cells), memory_pool=pool)
    number = pc.fill_null(pc.match_substring_regex(trimmed, NUMBER_PATTERN, memory_pool=pool), False)
    bad = pc.and_(pc.invert(empty), pc.invert(number), memory_pool=pool)
    return pc.if_else(number, trimmed, None, memory_pool=pool).cast(pa.float64(), memory_pool=pool), bad


# ---------------------------------------------------------------------------------------------
# Steps and times
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
    def out_of_range(arr: pa.Array, at: int) -> None:
        problems.append(Problem(file, f"row {first_row + at + 1} column {column!r}",
                                f"step {int64_problem(_cell_number(arr[at].as_py()))}"))

    if pa.types.is_integer(text.type):
        try:
            return text.cast(pa.int64())  # chunked as it was read
        except pa.ArrowInvalid:  # uint64 beyond int64
            arr = _one(text)
            out_of_range(arr, first_failing(arr, _fails_int64))
            return None
    arr = _one(text)
    empty = pc.is_in(arr, value_set=pa.array(list(NULL_CELLS)))
    arr = pc.if_else(empty, None, arr)
    is_int = pc.match_substring_regex(arr, INTEGER_PATTERN)
    if pc.all(pc.or_kleene(is_int, pc.is_null(arr))).as_py() is not False:
        try:
            return arr.cast(pa.int64())
        except pa.ArrowInvalid:
            out_of_range(arr, first_failing(arr, _fails_int64))
            return None
    number = pc.match_substring_regex(arr, NUMBER_PATTERN)
    floats = pc.if_else(number, arr, None).cast(pa.float64())
    whole = pc.fill_null(pc.and_(pc.is_finite(floats), pc.equal(pc.floor(floats), floats)), False)
    ok = pc.or_kleene(whole, pc.is_null(arr))  # a cell that is no number at all is not ok either
    if not pc.all(ok).as_py():
        at = pc.index(pc.invert(pc.fill_null(ok, False)), True).as_py()
        problems.append(Problem(file, f"row {first_row + at + 1} column {column!r}",
                                f"step {shown(arr[at].as_py())!r} is not an integer"))
        return None
    inside = _int64_floats(floats)
    if not pc.all(pc.or_kleene(inside, pc.is_null(floats))).as_py():
        out_of_range(arr, pc.index(pc.fill_null(pc.invert(inside), False), True).as_py())
        return None
    return floats.cast(pa.int64())


def _fails_int64(arr: pa.Array) -> bool:
    try:
        arr.cast(pa.int64())
        return False
    except pa.ArrowInvalid:
        return True


def _int64_floats(floats) -> pa.Array:
    """Which floats are finite and convert to int64 (null stays null). 2**63 is the first float
    above INT64_MAX; -2**63 is INT64_MIN itself."""
    return pc.and_kleene(pc.greater_equal(floats, -2.0 ** 63), pc.less(floats, 2.0 ** 63))


def _cell_number(cell: Any) -> Any:
    """A cell out of range as what int64_problem names: its text (a NumberText), or an int."""
    return cell if isinstance(cell, int) else NumberText(str(cell).strip())


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
        return self.given_scale if self.given_scale is not None else epoch_scale(self.largest)

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
            kind, raw = "number", text.cast(pa.float64(), safe=False)  # chunked as read; > 2**53 rounds
        else:
            arr = _one(text)
            arr = pc.if_else(pc.is_in(arr, value_set=pa.array(list(NULL_CELLS))), None, arr)
            if arr.null_count == len(arr):
                return pa.nulls(len(arr), pa.int64())
            number = pc.match_substring_regex(arr, NUMBER_PATTERN)
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
                    at = first_failing(arr, _fails_time)
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
        scale = self.given_scale if self.given_scale is not None else epoch_scale(big)
        ms = pc.floor(pc.multiply(raw, scale))
        inside = _int64_floats(ms)  # NaN compares false: it is outside too
        if not pc.all(pc.or_kleene(inside, pc.is_null(ms))).as_py():
            at = pc.index(pc.fill_null(pc.invert(inside), False), True).as_py()
            cell = _one(text)[at].as_py()
            self.problems.append(Problem(
                self.file, f"row {first_row + at + 1} column {self.column!r}",
                f"{shown(cell)!r} is no time: a number of seconds or milliseconds since the epoch "
                "must be finite and within the 64-bit range of milliseconds the server stores"))
            return None
        return ms.cast(pa.int64())


def _fails_time(arr: pa.Array) -> bool:
    for t in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):
        try:
            arr.cast(t)
            return False
        except pa.ArrowInvalid:
            pass
    return True


# ---------------------------------------------------------------------------------------------
# Columns -> metric tables
# ---------------------------------------------------------------------------------------------


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
