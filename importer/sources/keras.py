"""Keras `CSVLogger` files -> one RunRecord per training segment.

Format: a comma-separated header whose first column is `epoch`, then one row per epoch with the
`logs` dict of that epoch (`loss`, `accuracy` or the Keras 1/2 `acc`, `val_*`, `lr` /
`learning_rate`, ...). Files are often named `*.log` or `*.csv`; detection is by content:
the first header cell is exactly `epoch` (no padding), no column name holds `/`, there is no
`step` column, and the file is not a Lightning `metrics.csv` (those belong to `lightning`).

Variants handled:

* LF, CRLF and CR CR LF line endings (Windows text-mode double translation; the blank rows naive
  readers see are skipped). A partial last line (no terminator yet) is not read.
* `NA` cells: CSVLogger writes them for a key missing from an epoch's logs (e.g. `val_*` on
  epochs without validation): like an empty cell, no point.
* Old key names (`acc`, `val_acc`, `lr`) are kept as they are; no renaming between Keras versions.
* `append=True` across several `fit()` calls: the epoch restarts (an epoch not greater than the one
  before it) or a header line is written again. Each segment is its own run: run identity
  `segment-<k>` (k = 1, 2, ... in file order), so a segment keeps its import key when the file
  grows. Run name: the file stem for segment 1, `<stem> (run k)` for k >= 2.

Rules: steps are the `epoch` column (integers); timestamps are not in the file, so they stay null
and DERIVED_TIMESTAMPS_TAG is set; values are float64 with NaN/+-inf kept; experiment =
options.experiment or the name of the file's folder. A folder given to `read` means every
Keras file directly inside it (sorted by name). Params: none (the file holds only the epochs'
logs; docs/formats/keras.md says what MLflow's Keras autolog would have logged).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import Problem
from ..model import RunRecord
from . import lightning
from .base import SourceOptions, SourceResult, import_key
from .columns import MetricBuilder, integer_steps
from .delimited import first_line, read_delimited, split_header

NAME = "keras"
NULL_CELLS = ("", "NA")


def detect(path: Path) -> bool:
    """A file whose header starts with an unpadded `epoch` and has metric columns (see the
    module docstring), or a folder holding such a file."""
    if path.is_dir():
        return any(_detect_file(p) for p in sorted(path.iterdir()) if p.is_file())
    return path.is_file() and _detect_file(path)


def _detect_file(path: Path) -> bool:
    if lightning.is_metrics_file(path):
        return False
    line, _ = first_line(path, 1 << 16)
    if not line.startswith(b"epoch,"):
        return False
    try:
        names = split_header(line, ",")
    except (UnicodeDecodeError, ValueError):
        return False
    return len(names) >= 2 and "step" not in names and not any("/" in n for n in names)


def read(path: Path, options: SourceOptions) -> SourceResult:
    """Runs of one Keras CSVLogger file, or of every Keras file in a folder."""
    result = SourceResult()
    files = sorted(p for p in path.iterdir() if p.is_file() and _detect_file(p)) \
        if path.is_dir() else [path]
    for file in files:
        _read_file(file, options, result)
    return result


def _segments(steps: pa.Array, header_repeats: list[int]) -> list[tuple[int, int]]:
    """[start, end) row ranges: a new segment where the epoch does not increase or a header
    was written again."""
    n = len(steps)
    starts = {0}
    if n > 1:
        prev, cur = steps.slice(0, n - 1), steps.slice(1)
        restart = pc.fill_null(pc.less_equal(cur, prev), False)
        starts |= {i + 1 for i in pc.indices_nonzero(restart).to_pylist()}
    starts |= {r for r in header_repeats if 0 < r < n}
    bounds = sorted(starts) + [n]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]


def _read_file(file: Path, options: SourceOptions, result: SourceResult) -> None:
    data = read_delimited(file, result.problems, keep_text=["epoch"], null_cells=NULL_CELLS)
    if data is None:
        return
    result.notes += data.notes
    if data.header and data.header[0] != "epoch":
        result.problems.append(Problem(str(file), "line 1", "a Keras CSVLogger header starts with "
                                       f"'epoch', not {data.header[0]!r}"))
        return
    steps = pa.array([], pa.int64())
    if data.rows:
        steps = integer_steps(data.text["epoch"], str(file), "epoch", result.problems)
        if steps is None:
            return
    if data.text_columns:
        result.notes.append(f"{file}: text columns are not metrics: {', '.join(data.text_columns)}")
    resolved = file.resolve()
    experiment = options.experiment or resolved.parent.name
    for k, (a, b) in enumerate(_segments(steps, data.header_repeats), 1):
        ident = f"segment-{k}"
        rec = RunRecord(experiment=experiment, import_key=import_key(NAME, str(resolved), ident),
                        origin=f"{file}: {ident}", name=file.stem if k == 1 else f"{file.stem} (run {k})")
        metrics = MetricBuilder(str(file), result)
        for name, values in data.values.items():
            if name != "epoch" and name not in data.text_columns:
                metrics.add(name, steps.slice(a, b - a), values.slice(a, b - a))
        metrics.finish(rec)
        result.records.append(rec)
