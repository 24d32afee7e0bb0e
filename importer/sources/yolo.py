"""Ultralytics / YOLO training results -> one RunRecord per run folder.

`results.csv` (YOLOv5 >= v6.0, Ultralytics YOLOv8+; padded headers, stripped) and the headerless
`results.txt` of YOLOv5 < v6.0, YOLOv7 and every ultralytics/yolov3 layout since 2018, told apart
by field count, a `batch/last` column and printed precision (LAYOUT_TAG records the layout read).
Step = epoch as written; no timestamps (DERIVED_TIMESTAMPS_TAG); rejected keys mapped with
safe_metric_key; params from `args.yaml` (Ultralytics: `str(value)` per top-level key, as its MLflow
callback logs them, params.ultralytics_params) or `opt.yaml` (+ `hyp.yaml`; YOLOv5/v7 have no MLflow
logger: the manifest's flattening). Run = the results file's
folder; experiment = the folder above it.

Every other file of the run folder (weights/, plots) is named in a note (folder.RunFolder).

The layouts table, the ambiguous cases and their rules: docs/formats/yolo.md.
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
from .columns import NUMBER_PATTERN, MetricBuilder, first_failing, integer_steps, not_utf8
from .folder import RunFolder
from .delimited import complete_end, first_line, physical_lines, read_delimited, split_header
from .params import ultralytics_params
from .yamlfile import load_yaml

NAME = "yolo"
# The params files of a run folder; with the results file, the files read. Any other (weights/,
# plots) is named in a note.
PARAM_FILES = ("args.yaml", "opt.yaml", "hyp.yaml")
LAYOUT_TAG = "importer.results_layout"
TXT_COLUMNS = ["epoch/total", "train/gpu_mem", "train/box_loss", "train/obj_loss",
               "train/cls_loss", "train/total_loss", "train/instances", "train/img_size",
               "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
               "val/box_loss", "val/obj_loss", "val/cls_loss"]  # YOLOv5 < v6.0, YOLOv7
_EPOCH, _BATCH, _GPU = "epoch/total", "batch/last", "train/gpu_mem"
_YOLOV3_2018 = [_EPOCH, _BATCH, "train/x_loss", "train/y_loss", "train/w_loss", "train/h_loss",
                "train/conf_loss", "train/cls_loss", "train/total_loss", "train/precision",
                "train/recall", "train/instances", "train/TP", "train/FP", "train/FN", "train/time"]
_YOLOV3_2019_04 = [_EPOCH, _BATCH, "train/xy_loss", "train/wh_loss", "train/obj_loss", "train/cls_loss",
                   "train/total_loss", "train/instances", "train/img_size"]
_YOLOV3_2019_07 = [_EPOCH, _GPU, "train/GIoU_loss", "train/wh_loss", "train/obj_loss", "train/cls_loss",
                   "train/total_loss", "train/instances", "train/img_size", "metrics/precision",
                   "metrics/recall", "metrics/mAP_0.5", "metrics/F1"]
# (field count, field 2 is batch/last) -> (layout name, column names); see the module docstring.
TXT_LAYOUTS: dict[tuple[int, bool], tuple[str, list[str]]] = {
    (15, False): ("yolov5", TXT_COLUMNS),
    (16, False): ("yolov3-2019-08-04", _YOLOV3_2019_07 + ["val/GIoU_loss", "val/obj_loss", "val/cls_loss"]),
    (14, False): ("yolov3-2019-07-16", _YOLOV3_2019_07 + ["val/total_loss"]),
    (14, True): ("yolov3-2019-04-05", _YOLOV3_2019_04 + ["metrics/precision", "metrics/recall",
                                                         "metrics/mAP_0.5", "metrics/F1", "val/total_loss"]),
    (12, True): ("yolov3-2019-02-19", _YOLOV3_2019_04[:8] + ["train/time", "metrics/precision",
                                                             "metrics/recall", "metrics/mAP_0.5"]),
    (19, True): ("yolov3-2018-11-22", _YOLOV3_2018 + ["metrics/mAP_0.5", "metrics/precision", "metrics/recall"]),
    (17, True): ("yolov3-2018-11-14", _YOLOV3_2018 + ["metrics/mAP_0.5"]),
    (16, True): ("yolov3-2018-08-26", _YOLOV3_2018),
}
# 15 fields written with %10.3g: yolov3 2019-08-24 .. 2020-11-25 (F1 where YOLOv5 has mAP_0.5:0.95).
TXT_YOLOV3_2019_08 = ("yolov3-2019-08-24", [_EPOCH, _GPU, "train/GIoU_loss", "train/obj_loss", "train/cls_loss",
                                            "train/total_loss", "train/instances", "train/img_size",
                                            "metrics/precision", "metrics/recall", "metrics/mAP_0.5",
                                            "metrics/F1", "val/GIoU_loss", "val/obj_loss", "val/cls_loss"])
_TXT_FIELDS = {n for n, _ in TXT_LAYOUTS}
_YOLO_PREFIXES = ("train/", "val/", "metrics/", "lr/", "x/lr")
_EPOCH_TOTAL = re.compile(rb"^\s*\d+/\d+\s")
_FRACTION = re.compile(r"^\d+/\d+$")


def _csv_is_yolo(path: Path) -> bool:
    line, _ = first_line(path, 1 << 16)
    try:
        names = split_header(line, ",")
    except (UnicodeDecodeError, ValueError):
        return False
    return len(names) >= 2 and names[0] == "epoch" and any(n.startswith(_YOLO_PREFIXES) for n in names[1:])


def _txt_is_yolo(path: Path) -> bool:
    line, _ = first_line(path, 1 << 16)
    return bool(_EPOCH_TOTAL.match(line)) and len(line.split()) in _TXT_FIELDS


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


def unit(file: Path) -> Path:
    """What discovery reads for a results file `detect` recognised: its run folder (it also holds
    args.yaml, weights and plots)."""
    return file.parent


def read(path: Path, options: SourceOptions) -> SourceResult:
    """One run per results file at or below `path`."""
    result = SourceResult()
    files = _results_files(path) if path.is_dir() else [path]
    for file in files:
        rec = _record(file, options, result)
        if rec is not None:
            result.records.append(rec)
        RunFolder(file.parent).report({(file.parent / n).resolve() for n in (file.name, *PARAM_FILES)},
                                      result)
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
    if name == "args.yaml":  # Ultralytics: as its MLflow callback logs trainer.args (params.py)
        return ultralytics_params(doc, str(folder / name), origin, result.problems, result.notes)
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
        read = _read_txt(file, result.problems)
        if read is None:
            return rec
        layout, columns = read
        if layout:
            rec.tags[LAYOUT_TAG] = layout
        steps = columns.pop(_EPOCH)
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


def _significant_digits(cell: str) -> int:
    """Digits %g printed for a number: `0.04567` -> 4, `640` -> 3, `1.02e+03` -> 3."""
    mantissa = cell.lstrip("+-").lower().split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa) if mantissa.isdigit() else 0


def _read_txt(file: Path, problems: list[Problem]) -> Optional[tuple[str, dict[str, pa.Array]]]:
    """(layout name, columns) of a headerless results.txt: `epoch/total` as int64 steps, the
    metrics float64 (layouts in the module docstring). A row with another field count than the
    first, or a cell that is not a number, is a problem naming the line and the column."""
    size = file.stat().st_size
    end = complete_end(file, size) if size else 0
    if end == 0:
        return "", {name: pa.array([], pa.int64() if i == 0 else pa.float64())
                    for i, name in enumerate(TXT_COLUMNS)}
    buf = pa.memory_map(str(file), "r").read_buffer().slice(0, end)
    # One column holding whole lines: no delimiter or quote character occurs in these files.
    table = pv.read_csv(pa.BufferReader(buf),
                        read_options=pv.ReadOptions(column_names=["line"], use_threads=False),
                        parse_options=pv.ParseOptions(delimiter="\x1f", quote_char=False),
                        convert_options=pv.ConvertOptions(column_types={"line": pa.binary()}))
    lines = table.column("line").combine_chunks()
    bad: list[tuple[int, str]] = []  # (0-based non-blank line, message)
    if not_utf8(lines):
        at = first_failing(lines, not_utf8)
        bad.append((at, "the line is not UTF-8"))
    else:
        fields = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines.cast(pa.string())))
        first = fields[0].as_py()
        n = len(first)
        key = (n, len(first) > 1 and bool(_FRACTION.match(first[1])))
        wrong = pc.not_equal(pc.list_value_length(fields), n)
        if key not in TXT_LAYOUTS:
            bad.append((0, f"the line has {n} fields; results.txt rows have "
                           f"{', '.join(map(str, sorted(_TXT_FIELDS)))} (see importer/sources/yolo.py)"))
        elif pc.any(wrong).as_py():
            at = pc.index(wrong, True).as_py()
            bad.append((at, f"the line has {len(fields[at])} fields; the first line of this "
                            f"results.txt has {n}"))
        else:
            layout, names = TXT_LAYOUTS[key]
            if n == 15 and not _four_digits(fields):
                layout, names = TXT_YOLOV3_2019_08
            columns = {}
            for i, name in enumerate(names):
                cells = pc.list_element(fields, i)
                if name in (_EPOCH, _BATCH):
                    ok = pc.match_substring_regex(cells, r"^\d+/\d+$")
                    cells = pc.list_element(pc.split_pattern(cells, "/"), 0)
                else:
                    if name == _GPU:
                        cells = pc.replace_substring_regex(cells, "[Gg]$", "")
                    ok = pc.match_substring_regex(cells, NUMBER_PATTERN)
                if not pc.all(ok).as_py():
                    at = pc.index(pc.invert(ok), True).as_py()
                    what = "not <int>/<int>" if name in (_EPOCH, _BATCH) else "not a number"
                    bad.append((at, f"column {i + 1} ({name!r}): {fields[at][i].as_py()!r} is {what}"))
                    continue
                if name != _BATCH:
                    columns[name] = cells.cast(pa.int64() if name == _EPOCH else pa.float64())
            if not bad:
                size_col = columns.get("train/img_size")
                if key == (14, True) and size_col is not None and not _image_sizes(size_col):
                    columns["train/time"] = columns.pop("train/img_size")  # before 2019-06-30
                return layout, columns
    where = physical_lines(file, [b[0] + 1 for b in bad])
    for row, message in bad:
        problems.append(Problem(str(file), f"line {where.get(row + 1, row + 1)}", message))
    return None


def _four_digits(fields: pa.ListArray) -> bool:
    """Whether a 15-field results.txt was written with %10.4g (YOLOv5, YOLOv7, yolov3 from
    2020-11-26): some value among the metric columns shows 4 significant digits."""
    for row in fields.to_pylist():
        if any(_significant_digits(c) >= 4 for c in row[2:]):
            return True
    return False


def _image_sizes(values: pa.Array) -> bool:
    """Every value a positive multiple of 32 (an image size, not the seconds of a batch)."""
    ok = pc.and_(pc.greater(values, 0), pc.equal(pc.multiply(pc.floor(pc.divide(values, 32)), 32), values))
    return bool(pc.all(pc.fill_null(ok, False)).as_py())
