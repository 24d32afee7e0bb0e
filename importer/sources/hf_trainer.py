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
* There are no times in a state file: timestamps are null (`DERIVED_TIMESTAMPS_TAG`), start/end None,
  unless the run folder holds TensorBoard event files (`report_to=["tensorboard"]`): they are read
  with the state as one run, tags mapped back to log_history keys (`state_key`), and give the
  state's points their wall times; event-only points are added, disagreements noted.
* Every other file of the run folder is named in a note, grouped by folder; hidden folders too.
  The full rules: docs/formats/hf.md.
* Params: `training_args.json` (when someone saved `TrainingArguments.to_dict()`) and `config.json`
  (the model config), as transformers' MLflowCallback logs them (params.transformers_params: the
  arguments win on a shared key, nothing flattened, Python's text of each value); without
  training_args.json, the state's own `train_batch_size`, `num_train_epochs`, `max_steps`,
  `logging_steps`, `eval_steps`, `save_steps` stand in. They are looked for beside the state file
  and in the run folder. `training_args.bin` is a torch pickle: not read
  (never unpickle untrusted files), a note says so.
* Tags: `hf.best_metric`, `hf.best_model_checkpoint`, `hf.best_global_step` when set.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Optional

from ..errors import Problem
from ..model import RunRecord
from .base import SourceOptions, SourceResult, checked_params, import_key
from .folder import RunFolder
from .params import transformers_params
from . import tfevents
from .textlog import STEP_RULE_TAG, SeriesBuilder
from .times import seconds_ms

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
# The whole run folder is this source's: its TensorBoard event files (runs/<date>_<host>/) are read
# with the state, and every other file in it is named in a note. Units found inside it before it
# was claimed (an event folder sorted before `checkpoint-<N>`) are dropped by discovery.
OWNS_FOLDER = True


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


def _params(state: Path, run_dir: Path, doc: dict, origin: str, result: SourceResult) -> dict[str, str]:
    """training_args.json and config.json as MLflowCallback logs them (params.transformers_params);
    without training_args.json, the state's own fields stand in for the arguments."""
    folders = [state.parent] + ([run_dir] if run_dir != state.parent else [])
    loaded: dict[str, Optional[dict]] = {}
    for name in ("training_args.json", "config.json"):
        found = next((f / name for f in folders if (f / name).is_file()), None)
        data = _load_json(found, result) if found else None
        if data is not None and not isinstance(data, dict):
            result.notes.append(f"{found}: not a JSON object; not used as params")
            data = None
        loaded[name] = data
    for f in folders:
        if (f / "training_args.bin").is_file():
            result.notes.append(f"{f / 'training_args.bin'}: a torch pickle; not read (save the "
                                "arguments as training_args.json to import them)")
            break
    params = transformers_params(loaded["training_args.json"], loaded["config.json"], str(state),
                                 origin, result.problems, result.notes)
    if loaded["training_args.json"] is None:
        for k in STATE_PARAM_FIELDS:
            if doc.get(k) is not None:
                params.setdefault(k, str(doc[k]))
    return params


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
    points: list[tuple[str, int, float, int]] = []  # key, step, value, log_history index
    seen: dict[str, set] = {}
    dropped = 0
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
                mark = (step, struct.pack("<d", float(v)))  # bit identity, so NaN equals NaN
                if mark in seen.setdefault(k, set()):
                    dropped += 1
                    continue
                seen[k].add(mark)
                points.append((k, step, float(v), i))
            else:
                skipped.setdefault(k, f"log_history[{i}]")
    for k, where in skipped.items():
        result.notes.append(f"{file}: {where}.{k} and any like it are not numbers; not imported as metrics")
    if dropped:
        result.notes.append(f"{file}: {dropped} exact duplicate points (same key, step and value) dropped")

    layout = _Layout(run_dir) if path.is_dir() else None
    events = _read_events(layout, result) if layout and layout.events else None
    stamps, extra = _merge(points, events, layout, result) if events else ([None] * len(points), [])
    series = SeriesBuilder()
    for (k, step, v, i), ts in zip(points, stamps):
        if why := series.add(k, step, v, ts):
            result.problems.append(Problem(file, f"log_history[{i}].step", why))
    for k, step, v, ts in extra:
        series.add(k, step, v, ts)

    rec = RunRecord(
        experiment=options.experiment or run_dir.parent.name or "Default",
        import_key=import_key(NAME, str(run_dir)),
        origin=f"{file}: log_history",
        name=run_dir.name or None)
    params = _params(state, run_dir, doc, rec.origin, result)
    if events is not None:
        for k, v in events.params.items():  # hparams of the event files, where not already set
            params.setdefault(k, v)
        if events.first_wall is not None:
            rec.start_time, rec.end_time = seconds_ms(events.first_wall), seconds_ms(events.last_wall)
    rec.params = checked_params(params, file, rec.origin, result.problems, result.notes)
    for k in STATE_TAG_FIELDS:
        if doc.get(k) is not None:
            rec.tags[f"hf.{k}"] = str(doc[k])
    rec.tags[STEP_RULE_TAG] = "step = log_history[].step (the global step)"
    series.finish(rec, result, file)
    if layout is not None:
        read_files = {state.resolve()} | set(layout.found_events)
        read_files |= {(f / n).resolve() for f in (state.parent, run_dir)
                       for n in ("training_args.json", "config.json", "training_args.bin")}
        layout.report(read_files, result)
    result.records.append(rec)
    return result


# ---------------------------------------------------------------------------------------------
# The rest of the run folder: TensorBoard event files, and the files not read
# ---------------------------------------------------------------------------------------------

class _Layout(RunFolder):
    """The run folder's files (folder.RunFolder), and its TensorBoard event files."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir)
        # Event file names start with their creation time (events.out.tfevents.<seconds>.<host>):
        # a resumed run's second logging folder comes after the first.
        self.events = sorted((f for f in self.files if tfevents.is_event_file(f) and not f.is_symlink()),
                             key=lambda f: (f.name, str(f)))
        self.found_events = list(self.events)  # `events` keeps those read; the others get a note


def _read_events(layout: _Layout, result: SourceResult) -> Optional["tfevents._Run"]:
    """The run folder's event files as one TensorBoard run. They add to the state: what keeps
    one from being read (a git-LFS pointer, a file corrupt from its start) is a note naming it,
    not a problem that would stop the state's import; an unread file is named as not read."""
    own = SourceResult()
    try:
        run = tfevents.read_events(layout.events, own)
    except ImportError:
        result.notes.append(f"{layout.run_dir}: {len(layout.events)} TensorBoard event files not read "
                            f"(their wall times are lost): reading them needs the `tensorboard` package: "
                            f"{tfevents.INSTALL_HINT}")
        layout.events = []
        return None
    bad = {Path(p.file) for p in own.problems}
    layout.events = [f for f in layout.events if f not in bad]
    result.notes += own.notes + [f"{p.file}: not read{f' ({p.location})' if p.location else ''}: {p.message}"
                                 for p in own.problems]
    if run is not None and run.skipped:
        result.notes.append(f"{layout.run_dir}: event values that are not scalars skipped (transformers "
                            "writes its arguments and model config as text): "
                            + ", ".join(f"{k}: {n}" for k, n in sorted(run.skipped.items())))
    return run


def state_key(tag: str) -> str:
    """The log_history key of a TensorBoard tag written by transformers' TensorBoardCallback,
    which logs `rewrite_logs(logs)`: `eval_X` -> `eval/X`, `test_X` -> `test/X`, any other key
    -> `train/X` (transformers/integrations/integration_utils.py). Undone here; a tag without
    those prefixes (transformers before 4.0 wrote keys as they are, or a tag of one's own) is
    kept as it is."""
    head, sep, rest = tag.partition("/")
    if sep and rest:
        if head == "train":
            return rest
        if head in ("eval", "test"):
            return f"{head}_{rest}"
    return tag


def _f32(v: float) -> bytes:
    """The float32 an event file stores for `v` (`simple_value`), as bits: NaN equals NaN."""
    try:
        return struct.pack("<f", v)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, v))


_DISAGREEMENTS_SHOWN = 5


def _merge(points, events, layout: _Layout, result: SourceResult):
    """(timestamp of each state point, [(key, step, value, timestamp)] of the points only the
    event files hold). A state point takes the wall time of the event of the same key and step
    with the same value (as float32, what an event file stores), else of the first one left at
    that step, and the two values are noted as a disagreement; the state's value is kept."""
    tb: dict[str, dict[int, list]] = {}  # key -> step -> [[timestamp, value, tag, used]]
    for tag, (steps, stamps, values) in events.series.items():
        by_step = tb.setdefault(state_key(tag), {})
        for step, ts, v in zip(steps, stamps, values):
            by_step.setdefault(step, []).append([ts, v, tag, False])
    for by_step in tb.values():
        for cands in by_step.values():
            cands.sort(key=lambda c: (c[0] is None, c[0] or 0))
    stamps: list[Optional[int]] = []
    disagree: dict[str, list[str]] = {}
    timed = 0
    for k, step, v, _ in points:
        cands = tb.get(k, {}).get(step, [])
        mine = _f32(v)
        c = (next((c for c in cands if not c[3] and _f32(c[1]) == mine), None)
             or next((c for c in cands if not c[3]), None))
        if c is None:
            stamps.append(None)
            continue
        c[3] = True
        stamps.append(c[0])
        timed += c[0] is not None
        if _f32(c[1]) != mine:
            disagree.setdefault(k, []).append(f"step {step}: {v!r} vs {c[1]!r} ({c[2]!r})")
    state_values: dict[tuple[str, int], set] = {}
    for k, step, v, _ in points:
        state_values.setdefault((k, step), set()).add(_f32(v))
    extra, extra_keys = [], {}
    for k, by_step in tb.items():
        for step, cands in by_step.items():
            for ts, v, tag, used in cands:
                known = state_values.setdefault((k, step), set())
                if used or _f32(v) in known:
                    continue  # repeats a point (`epoch` of the train and eval logs of one step)
                known.add(_f32(v))
                extra.append((k, step, v, ts))
                extra_keys[k] = tag
    run_dir = layout.run_dir
    files = ", ".join(f.relative_to(run_dir).as_posix() for f in layout.events)
    msg = f"{run_dir}: TensorBoard event files read with the state ({files}): wall times for {timed} of {len(points)} points"
    if extra:
        msg += (f"; {len(extra)} points only the event files hold added, as "
                + ", ".join(f"{k!r}" + (f" (tag {t!r})" if t != k else "") for k, t in sorted(extra_keys.items())))
    result.notes.append(msg)
    for k, where in disagree.items():
        shown = "; ".join(where[:_DISAGREEMENTS_SHOWN]) + (f"; +{len(where) - _DISAGREEMENTS_SHOWN} more"
                                                          if len(where) > _DISAGREEMENTS_SHOWN else "")
        result.notes.append(f"{run_dir}: {k!r} disagrees with the TensorBoard event files at {len(where)} "
                            f"steps (trainer_state.json's value kept; state vs event): {shown}")
    return stamps, extra
