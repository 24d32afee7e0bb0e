"""Hugging Face Trainer output -> one RunRecord (`--format hf`).

Input: a `trainer_state.json` file, or a Trainer output folder. In a folder the state file is
`trainer_state.json` if present, else `last-checkpoint/trainer_state.json`, else the
`checkpoint-<N>/trainer_state.json` with the largest N: every checkpoint's state holds the whole
`log_history` up to it, so the newest one supersedes the older ones (a note names the file read).

Rules:

* The run's folder is the one holding the state file, or the parent of a `checkpoint-<N>` /
  `last-checkpoint` folder. Import key = import_key("hf", resolved run folder): re-reading a later
  checkpoint of the same run updates the same run. experiment = options.experiment, else the name
  of the run folder's parent; name = the run folder's name.
* Metrics: every numeric key of every `log_history` entry except `step`, at step = the entry's
  `step` (the global step). Train entries (`loss`, `learning_rate`, `grad_norm`), eval entries
  (`eval_*`, also several eval sets such as `eval_g0_*` in separate entries at one step) and the
  final summary entry (`train_runtime`, `total_flos`, `train_loss`, ...) are all metrics at their
  step. `epoch` is kept as a metric. Values are float64; NaN and +-Infinity (Python's json writes
  `NaN`, `Infinity`) are kept. Non-numeric values are left out with a note.
* Repeated steps (a resumed run, train and eval entries at one step): every point is kept, except a
  point equal to an earlier one of the same key (same step and value), which is an exact duplicate
  and dropped (`epoch` repeats at every eval entry). The count goes to the notes.
* There are no times in a state file: timestamps are null (`DERIVED_TIMESTAMPS_TAG`), start/end None.
* Params: `training_args.json` (when someone saved `TrainingArguments.to_dict()`) and `config.json`
  (the model config), flattened with model.flatten_params, config winning on a shared key as in
  transformers' MLflowCallback; then the state's own `train_batch_size`, `num_train_epochs`,
  `max_steps`, `logging_steps`, `eval_steps`, `save_steps` where not already set. They are looked
  for beside the state file and in the run folder. `training_args.bin` is a torch pickle: not read
  (never unpickle untrusted files), a note says so.
* Tags: `hf.best_metric`, `hf.best_model_checkpoint`, `hf.best_global_step` when set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from ..errors import Problem
from ..model import RunRecord, flatten_params
from .base import SourceOptions, SourceResult, checked_params, import_key
from .textlog import STEP_RULE_TAG, SeriesBuilder

NAME = "hf"

STATE_FILE = "trainer_state.json"
MAX_JSON_BYTES = 256 * 2**20  # a state file or config larger than this is a problem, not a load
STATE_PARAM_FIELDS = ("train_batch_size", "num_train_epochs", "max_steps", "logging_steps",
                      "eval_steps", "save_steps")
STATE_TAG_FIELDS = ("best_metric", "best_model_checkpoint", "best_global_step")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _state_file(folder: Path) -> Optional[Path]:
    """The newest trainer_state.json of a Trainer output folder, or None."""
    top = folder / STATE_FILE
    if top.is_file():
        return top
    last = folder / "last-checkpoint" / STATE_FILE
    if last.is_file():
        return last
    best: tuple[int, Optional[Path]] = (-1, None)
    try:
        children = list(folder.iterdir())
    except OSError:
        return None
    for child in children:
        m = _CHECKPOINT.match(child.name)
        if m and (child / STATE_FILE).is_file() and int(m.group(1)) > best[0]:
            best = (int(m.group(1)), child / STATE_FILE)
    return best[1]


def _run_folder(state: Path) -> Path:
    folder = state.parent
    if _CHECKPOINT.match(folder.name) or folder.name == "last-checkpoint":
        return folder.parent
    return folder


def unit(file: Path) -> Path:
    """What discovery reads for a state file `detect` recognised: its run folder."""
    return _run_folder(file)


# A checkpoint folder is part of its run: naming one (or its state file) reads the run folder
# above it (its newest state), the one source whose unit may lie above the folder named.
UNIT_ABOVE_NAMED = True


def detect(path: Path) -> bool:
    """A Trainer output folder, or a JSON file whose head has `log_history`."""
    if path.is_dir():
        return _state_file(path) is not None
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"log_history"' in head


def _load_json(path: Path, result: SourceResult) -> Any:
    """A JSON document, or None with a problem naming the file (and line/column for bad JSON)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            result.problems.append(Problem(str(path), "", f"{size} bytes; larger than the "
                                           f"{MAX_JSON_BYTES} bytes this source loads"))
            return None
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as e:
        result.problems.append(Problem(str(path), f"byte {e.start}", "not UTF-8 text"))
    except json.JSONDecodeError as e:
        result.problems.append(Problem(str(path), f"line {e.lineno} column {e.colno}",
                                       f"not valid JSON ({e.msg}); truncated or still being written?"))
    except (OSError, RecursionError) as e:
        result.problems.append(Problem(str(path), "", f"cannot be read: {e}"))
    return None


def _params(state: Path, run_dir: Path, doc: dict, result: SourceResult) -> dict[str, str]:
    folders = [state.parent] + ([run_dir] if run_dir != state.parent else [])
    merged: dict[str, str] = {}
    for name in ("training_args.json", "config.json"):  # config wins, as in MLflowCallback
        found = next((f / name for f in folders if (f / name).is_file()), None)
        if found is None:
            continue
        data = _load_json(found, result)
        if isinstance(data, dict):
            try:
                merged.update(flatten_params(data))
            except ValueError as e:
                result.notes.append(f"{found}: not used as params ({e})")
        elif data is not None:
            result.notes.append(f"{found}: not a JSON object; not used as params")
    for f in folders:
        if (f / "training_args.bin").is_file():
            result.notes.append(f"{f / 'training_args.bin'}: a torch pickle; not read (save the "
                                "arguments as training_args.json to import them)")
            break
    for k in STATE_PARAM_FIELDS:
        if doc.get(k) is not None:
            merged.setdefault(k, flatten_params({k: doc[k]})[k])
    return merged


def read(path: Path, options: SourceOptions) -> SourceResult:
    """Read a trainer_state.json (or a Trainer output folder) into one RunRecord."""
    result = SourceResult()
    state = _state_file(path) if path.is_dir() else path
    if state is None:
        result.problems.append(Problem(str(path), "", f"no {STATE_FILE} in this folder or its checkpoints"))
        return result
    if state != path:
        result.notes.append(f"{path}: read {state}")
    file = str(state)
    doc = _load_json(state, result)
    if doc is None:
        return result
    history = doc.get("log_history") if isinstance(doc, dict) else None
    if not isinstance(history, list):
        result.problems.append(Problem(file, "log_history", "missing or not a list; not a trainer_state.json"))
        return result

    run_dir = _run_folder(state.resolve())
    series = SeriesBuilder(dedupe=True)
    skipped: dict[str, str] = {}
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            result.problems.append(Problem(file, f"log_history[{i}]", "not an object"))
            continue
        step = entry.get("step")
        if type(step) is not int:
            result.problems.append(Problem(file, f"log_history[{i}].step", f"must be an integer, got {step!r}"))
            continue
        for k, v in entry.items():
            if k == "step":
                continue
            if type(v) in (int, float):
                if why := series.add(k, step, float(v)):
                    result.problems.append(Problem(file, f"log_history[{i}].step", why))
                    break
            else:
                skipped.setdefault(k, f"log_history[{i}]")
    for k, where in skipped.items():
        result.notes.append(f"{file}: {where}.{k} and any like it are not numbers; not imported as metrics")
    if series.dropped:
        result.notes.append(f"{file}: {series.dropped} exact duplicate points (same key, step and value) dropped")

    rec = RunRecord(
        experiment=options.experiment or run_dir.parent.name or "Default",
        import_key=import_key(NAME, str(run_dir)),
        origin=f"{file}: log_history",
        name=run_dir.name or None)
    rec.params = checked_params(_params(state, run_dir, doc, result), file, rec.origin, result.problems,
                                result.notes)
    for k in STATE_TAG_FIELDS:
        if doc.get(k) is not None:
            rec.tags[f"hf.{k}"] = str(doc[k])
    rec.tags[STEP_RULE_TAG] = "step = log_history[].step (the global step)"
    series.finish(rec, result, file)
    result.records.append(rec)
    return result
