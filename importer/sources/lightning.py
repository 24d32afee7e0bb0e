"""PyTorch Lightning `CSVLogger` folders -> one RunRecord per `version_N` folder.

Layout: `<save_dir>/<name>/version_N/metrics.csv` (+ `hparams.yaml`). Detection: a `version_N`
folder holding `metrics.csv` or `meta_tags.csv`, or only `hparams.yaml` without TensorBoard event
files (those are TensorBoardLogger folders); a folder with such version folders below it; or a
`metrics.csv` inside one. `read` takes any of these (all versions below a
folder, sorted by N).

metrics.csv: Lightning writes one row per `log` call site and step, with train and validation
values on different rows; an empty cell is no point (never 0). Read as delimited_run.DelimitedRun: validated
block by block, its points streamed from the file when the run is written. Steps: the `step` column; `epoch`
is then a metric too. Without a `step` column (test-tube era, PL <= 0.7) `epoch` is the step, and
without either the row index 0..n-1 is (DERIVED_STEPS_TAG). Timestamps: not in the file, left null
(DERIVED_TIMESTAMPS_TAG). test-tube's `created_at` column (local time without a zone) is text, not
a metric, and is not used. A metrics.csv that is empty or a single newline gives a run with no
metrics; a missing metrics.csv gives a run with params only.

Params: as Lightning's `MLFlowLogger.log_hyperparams` writes them (params.lightning_params):
nested mappings flattened with `/`, values as `str()` gives them (`True`, `None`, `(0.9, 0.99)`,
`[2]`), cut to their first 250 characters. `hparams.yaml` is read with params.ObjectLoader (a
SafeLoader: `!!python/object`, `!!python/name` ... never execute; tuples stay tuples). Legacy
test-tube layouts: `meta_tags.csv` (key,value rows) adds params not already in hparams.yaml, and
`meta.experiment` (JSON, test-tube's own file) adds `meta.experiment.<key>` params flattened with
the manifest's rule. Keys the server rejects are mapped with safe_metric_key and noted; metric keys
likewise, with the RENAMED_METRICS_TAG tag. Details: docs/formats/lightning.md.

Every other file of the version folder (`checkpoints/*.ckpt`) is named in a note (folder.RunFolder).

Run: identity `version_N` (the import key hashes the resolved version folder), name `version_N`,
experiment = options.experiment or the name of the folder holding the version folders (the
logger's `name`, often `lightning_logs`).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.csv as pv

from ..errors import Problem
from ..model import RunRecord
from .base import SourceOptions, SourceResult, checked_params, import_key
from .delimited import first_line, split_header
from .delimited_run import DelimitedRun
from .folder import RunFolder
from .params import lightning_params, load_objects

NAME = "lightning"
# The files of a version folder read; any other (checkpoints/*.ckpt) is named in a note.
READ_FILES = ("metrics.csv", "hparams.yaml", "meta_tags.csv", "meta.experiment")
_VERSION = re.compile(r"^version_(\d+)$")
_MARKERS = ("metrics.csv", "meta_tags.csv")


def is_version_folder(path: Path) -> bool:
    """version_N with metrics.csv or meta_tags.csv; or with hparams.yaml alone (a CSVLogger run
    that never flushed metrics) unless TensorBoard event files show a TensorBoardLogger folder.
    Every file in it belongs to that run (the generic table source leaves them alone)."""
    if not (_VERSION.match(path.name) and path.is_dir()):
        return False
    if any((path / m).is_file() for m in _MARKERS):
        return True
    return (path / "hparams.yaml").is_file() and not any(path.glob("events.out.tfevents.*"))


def is_metrics_file(path: Path) -> bool:
    """A Lightning metrics.csv: the one in a version folder (Keras leaves it alone, though its
    header may start with `epoch`)."""
    return path.name == "metrics.csv" and is_version_folder(path.parent)


def _version_dirs(path: Path) -> list[Path]:
    if path.is_file():
        return [path.parent] if is_metrics_file(path) else []
    if is_version_folder(path):
        return [path]
    found = [p for p in path.rglob("version_*") if is_version_folder(p)]
    return sorted(found, key=lambda p: (str(p.parent), int(_VERSION.match(p.name).group(1))))


def detect(path: Path) -> bool:
    """A version_N folder with metrics.csv / hparams.yaml / meta_tags.csv, a folder above such
    folders, or a metrics.csv inside one."""
    return bool(_version_dirs(path)) if path.exists() else False


def unit(file: Path) -> Path:
    """What discovery reads for a metrics.csv `detect` recognised: its version folder."""
    return file.parent


def read(path: Path, options: SourceOptions) -> SourceResult:
    """One run per version folder found at or below `path`."""
    result = SourceResult()
    for folder in _version_dirs(path):
        result.records.append(_read_version(folder, options, result))
    return result


def _params(folder: Path, origin: str, result: SourceResult) -> dict[str, str]:
    raw: dict[str, Any] = {}
    hparams = folder / "hparams.yaml"
    if hparams.is_file():
        doc = load_objects(hparams, result.problems)
        if isinstance(doc, dict):
            raw.update(doc)
        elif doc is not None:
            result.problems.append(Problem(str(hparams), "", "hparams.yaml is not a mapping"))
    tags = folder / "meta_tags.csv"
    if tags.is_file():
        try:
            table = pv.read_csv(tags, convert_options=pv.ConvertOptions(
                column_types={"key": pa.string(), "value": pa.string()}, strings_can_be_null=False))
            if table.column_names[:2] != ["key", "value"]:
                raise ValueError("the header is not 'key,value'")
            for k, v in zip(table.column("key").to_pylist(), table.column("value").to_pylist()):
                raw.setdefault(k, v)  # hparams.yaml wins: it keeps the types
        except (pa.ArrowInvalid, ValueError) as e:
            result.problems.append(Problem(str(tags), "", f"not a key,value table: {e}"))
    params = lightning_params(raw, str(folder), origin, result.problems, result.notes)
    meta = folder / "meta.experiment"
    if meta.is_file():
        try:
            doc = json.loads(meta.read_bytes().decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            params.update(checked_params(doc, str(meta), origin, result.problems, result.notes,
                                         prefix="meta.experiment."))
        except (ValueError, UnicodeDecodeError) as e:
            result.problems.append(Problem(str(meta), "", f"not a JSON object: {e}"))
    return params


def _read_version(folder: Path, options: SourceOptions, result: SourceResult) -> RunRecord:
    resolved = folder.resolve()
    rec = RunRecord(experiment=options.experiment or resolved.parent.name,
                    import_key=import_key(NAME, str(resolved), folder.name),
                    origin=f"{folder}: {folder.name}", name=folder.name)
    rec.params = _params(folder, rec.origin, result)
    file = folder / "metrics.csv"
    if file.is_file():  # streamed from the file when written (delimited_run.DelimitedRun)
        DelimitedRun(file, rec, step_column=_step_column(file), keep_text=("step", "epoch"),
                     text_only=False, text_keys=False).validate(result)
    RunFolder(folder).report({(folder / n).resolve() for n in READ_FILES}, result)
    return rec


def _step_column(file: Path) -> Optional[str]:
    """`step`, else `epoch` (test-tube era), else none (row numbers), as the header names them."""
    line, _ = first_line(file)
    try:
        names = split_header(line, ",")
    except (UnicodeDecodeError, csv.Error):
        return None  # the reader reports the header
    return next((c for c in ("step", "epoch") if c in names), None)
