"""A delimited file as one streamed run: validated first, its points read again as they are sent.

Neither `importer validate` nor `importer import` holds a file's points: the first pass keeps
only the run's facts, the second reads the validated bytes again block by block while the sink
sends them (peak RSS in BENCHMARKS.md, bench/bench_parse.py and bench/bench_csv_import.py).
Used by the generic CSV source (table) and Lightning's metrics.csv (lightning).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import AsyncIterator, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..files import sha256_file
from ..errors import InputError, Problem
from ..model import METRIC_SCHEMA, RunRecord
from .base import DERIVED_STEPS_TAG, SeriesFacts, SourceResult, safe_metric_key
from .columns import DERIVED_STEPS_TEXT, NULL_CELLS, MetricBuilder, TimeColumn, integer_steps, row_steps
from .delimited import DELIMITERS, Block, DelimitedReader, TableData


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
        self.delimiter = DELIMITERS.get(file.suffix.lower(), ",")
        self.text_columns: set[str] = set()  # not metrics (text_keys False), learnt by validate
        self.end = 0
        self.digest = ""
        self.scale: Optional[float] = None
        self.series: dict[str, SeriesFacts] = {}
        self.min_timestamp: Optional[int] = None

    def _reader(self, problems: list[Problem]) -> DelimitedReader:
        return DelimitedReader(self.file, problems, self.delimiter, self.keep_text, NULL_CELLS, self.text_only)

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

