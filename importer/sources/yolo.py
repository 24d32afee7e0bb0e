"""Ultralytics / YOLO training results -> one RunRecord per run folder.

Variants:

* `results.csv` (YOLOv5 >= v6.0 and Ultralytics YOLOv8+): a header whose names (and values) are
  left-padded with spaces: `epoch, train/box_loss, ..., metrics/mAP50(B), ..., lr/pg0` (v8) or
  `epoch, train/box_loss, train/obj_loss, ..., metrics/mAP_0.5:0.95, ..., x/lr0` (v5). Padding is
  stripped. Detected by content: the first column is `epoch` and another column starts with
  `train/`, `val/`, `metrics/`, `lr/` or `x/lr`.
* `results.txt` (YOLOv5 < v6.0, YOLOv7; no header, whitespace-separated, 15 columns per row).
  Positional layout, named as YOLOv5 v6 names the same quantities:

      0  epoch/total   e.g. `12/54` -> step 12 (the total is not kept; opt.yaml has `epochs`)
      1  gpu_mem       e.g. `12.8G` -> metric `train/gpu_mem` in GB (the G suffix dropped)
      2  train/box_loss          3  train/obj_loss         4  train/cls_loss
      5  train/total_loss        6  train/instances (targets in the last batch)
      7  train/img_size          8  metrics/precision      9  metrics/recall
      10 metrics/mAP_0.5        11 metrics/mAP_0.5:0.95   12 val/box_loss
      13 val/obj_loss           14 val/cls_loss

  (ultralytics/yolov3 wrote the same 15-column shape with mAP@0.5 and F1 in columns 10 and 11;
  it is read with the names above.) Detected by name `results.txt` and a first line of 15 fields
  starting with `<int>/<int>`.

Rules: the `epoch` column (or the epoch part of `epoch/total`) is the step, as written (v5/v8.0
count from 0, later Ultralytics from 1); epochs are not split into runs (a resumed run continues
its epochs; a new `--resume`-less run is a new folder). Timestamps are not in the files: null,
with DERIVED_TIMESTAMPS_TAG (a v8.3+ `time` column is kept as a metric: seconds since start).
Empty cells are no points; `nan`/`inf` are kept. Keys the server rejects (`metrics/mAP50(B)`)
are mapped with safe_metric_key (`metrics/mAP50_B_`), listed in RENAMED_METRICS_TAG and noted.
A partial last line is not read. Params: `args.yaml` (v8) or `opt.yaml` (v5/v7) flattened with
model.flatten_params, strings kept as written (Windows paths too); when `opt.yaml`'s `hyp` is a
path rather than the dict itself, `hyp.yaml` beside it is added as `hyp.<key>`.

Run: the folder holding the results file; identity `run` (the import key hashes the resolved
results file); name = folder name (`exp2`, `train`); experiment = options.experiment or the
name of the folder above it (`train` for runs/train/exp, `detect` for runs/detect/train).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from ..errors import Problem
from ..model import RunRecord
from .base import SourceOptions, SourceResult, checked_params, import_key
from .table import (_NUMBER, MetricBuilder, _first_failing, _not_utf8,
                    complete_end, first_line, integer_steps, load_yaml, physical_lines,
                    read_delimited, split_header)

NAME = "yolo"
TXT_COLUMNS = ["epoch/total", "train/gpu_mem", "train/box_loss", "train/obj_loss",
               "train/cls_loss", "train/total_loss", "train/instances", "train/img_size",
               "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
               "val/box_loss", "val/obj_loss", "val/cls_loss"]
_YOLO_PREFIXES = ("train/", "val/", "metrics/", "lr/", "x/lr")
_EPOCH_TOTAL = re.compile(rb"^\s*\d+/\d+\s")


def _csv_is_yolo(path: Path) -> bool:
    line, _ = first_line(path, 1 << 16)
    try:
        names = split_header(line, ",")
    except (UnicodeDecodeError, ValueError):
        return False
    return len(names) >= 2 and names[0] == "epoch" and any(n.startswith(_YOLO_PREFIXES) for n in names[1:])


def _txt_is_yolo(path: Path) -> bool:
    line, _ = first_line(path, 1 << 16)
    return bool(_EPOCH_TOTAL.match(line)) and len(line.split()) == len(TXT_COLUMNS)


def _detect_file(path: Path) -> bool:
    if path.name == "results.txt":
        return _txt_is_yolo(path)
    return path.suffix.lower() == ".csv" and _csv_is_yolo(path)


def _results_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if _detect_file(path) else []
    found = [p for name in ("results.csv", "results.txt") for p in path.rglob(name)]
    found = [p for p in found if p.is_file() and _detect_file(p)]
    # One file per run folder: results.csv wins over an older results.txt beside it.
    by_folder: dict[Path, Path] = {}
    for p in sorted(found, key=lambda p: (p.parent, p.suffix != ".csv")):
        by_folder.setdefault(p.parent, p)
    return sorted(by_folder.values())


def detect(path: Path) -> bool:
    """A YOLO results.csv / results.txt (by content), or a folder holding one at any depth."""
    return path.exists() and bool(_results_files(path))


def read(path: Path, options: SourceOptions) -> SourceResult:
    """One run per results file at or below `path`."""
    result = SourceResult()
    files = _results_files(path) if path.is_dir() else [path]
    for file in files:
        rec = _record(file, options, result)
        if rec is not None:
            result.records.append(rec)
    return result


def _params(folder: Path, origin: str, result: SourceResult) -> dict[str, str]:
    for name in ("args.yaml", "opt.yaml"):
        if (folder / name).is_file():
            doc = load_yaml(folder / name, result.problems)
            break
    else:
        return {}
    if not isinstance(doc, dict):
        if doc is not None:
            result.problems.append(Problem(str(folder / name), "", f"{name} is not a mapping"))
        return {}
    params = checked_params(doc, str(folder / name), origin, result.problems, result.notes)
    hyp = folder / "hyp.yaml"
    if name == "opt.yaml" and not isinstance(doc.get("hyp"), dict) and hyp.is_file():
        extra = load_yaml(hyp, result.problems)
        if isinstance(extra, dict):
            params.update(checked_params(extra, str(hyp), origin, result.problems, result.notes,
                                         prefix="hyp."))
    return params


def _record(file: Path, options: SourceOptions, result: SourceResult) -> Optional[RunRecord]:
    folder = file.parent
    resolved = file.resolve()
    rec = RunRecord(experiment=options.experiment or resolved.parent.parent.name,
                    import_key=import_key(NAME, str(resolved), "run"),
                    origin=f"{file}: run", name=resolved.parent.name)
    rec.params = _params(folder, rec.origin, result)
    metrics = MetricBuilder(str(file), result)
    if file.suffix.lower() == ".txt":
        columns = _read_txt(file, result.problems)
        if columns is None:
            return rec
        steps = columns.pop("epoch/total")
    else:
        data = read_delimited(file, result.problems, keep_text=["epoch"])
        if data is None:
            return rec
        result.notes += data.notes
        if data.text_columns:
            result.notes.append(f"{file}: text columns are not metrics: {', '.join(data.text_columns)}")
        steps = pa.array([], pa.int64())
        if data.rows:
            steps = integer_steps(data.text["epoch"], str(file), "epoch", result.problems)
            if steps is None:
                return rec
        columns = {k: v for k, v in data.values.items() if k != "epoch" and k not in data.text_columns}
    for key, values in columns.items():
        metrics.add(key, steps, values)
    metrics.finish(rec)
    return rec


def _read_txt(file: Path, problems: list[Problem]) -> Optional[dict[str, pa.Array]]:
    """The 15 positional columns of a headerless results.txt: `epoch/total` as int64 steps,
    the rest float64. Rows with another field count, or cells that are not numbers, are problems."""
    size = file.stat().st_size
    end = complete_end(file, size) if size else 0
    if end == 0:
        return {name: pa.array([], pa.int64() if i == 0 else pa.float64())
                for i, name in enumerate(TXT_COLUMNS)}
    buf = pa.memory_map(str(file), "r").read_buffer().slice(0, end)
    # One column holding whole lines: no delimiter or quote character occurs in these files.
    table = pv.read_csv(pa.BufferReader(buf),
                        read_options=pv.ReadOptions(column_names=["line"], use_threads=False),
                        parse_options=pv.ParseOptions(delimiter="\x1f", quote_char=False),
                        convert_options=pv.ConvertOptions(column_types={"line": pa.binary()}))
    lines = table.column("line").combine_chunks()
    bad: list[tuple[int, str]] = []  # (0-based non-blank line, message)
    if _not_utf8(lines):
        at = _first_failing(lines, _not_utf8)
        bad.append((at, "the line is not UTF-8"))
    else:
        fields = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines.cast(pa.string())))
        wrong = pc.not_equal(pc.list_value_length(fields), len(TXT_COLUMNS))
        if pc.any(wrong).as_py():
            at = pc.index(wrong, True).as_py()
            bad.append((at, f"the line has {len(fields[at])} fields; results.txt rows have "
                            f"{len(TXT_COLUMNS)}"))
        else:
            columns = {}
            for i, name in enumerate(TXT_COLUMNS):
                cells = pc.list_element(fields, i)
                if i == 0:
                    ok = pc.match_substring_regex(cells, r"^\d+/\d+$")
                    cells = pc.list_element(pc.split_pattern(cells, "/"), 0)
                else:
                    if i == 1:
                        cells = pc.replace_substring_regex(cells, "[Gg]$", "")
                    ok = pc.match_substring_regex(cells, _NUMBER)
                if not pc.all(ok).as_py():
                    at = pc.index(pc.invert(ok), True).as_py()
                    bad.append((at, f"column {i + 1} ({name!r}): {fields[at][i].as_py()!r} is "
                                    "not a number"))
                    continue
                columns[name] = cells.cast(pa.int64() if i == 0 else pa.float64())
            if not bad:
                return columns
    where = physical_lines(file, [b[0] + 1 for b in bad])
    for row, message in bad:
        problems.append(Problem(str(file), f"line {where.get(row + 1, row + 1)}", message))
    return None
