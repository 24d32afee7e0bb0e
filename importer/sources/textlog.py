"""Plain-text training logs -> RunRecords (`--format text`).

Dialects sniffed from the first 64 KB, in order: mmdet-json, mmdet (OpenMMLab/mmengine), fairseq
(json and simple formats, hydra or plain envelopes, <= 0.9 stdout), keras console, llmc, Python
logging with key=value, generic `kv` records (step marker + delimited pairs, kvline.py); user
patterns (`options.patterns`) replace them all. Each dialect has its step rule (STEP_RULE_TAG)
and key naming; line times become timestamps (naive ones as UTC, NAIVE_TIMES_TAG); a launch
banner or a falling step starts a new run (identity = segment index). A partial last line waits;
over-long, non-UTF-8 and NUL lines are Problems.

The dialects, step and key rules: docs/formats/text.md.
"""

from __future__ import annotations

import ast
import json
import math
import re
import struct
from array import array
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import Problem
from ..model import INT64_MIN, METRIC_SCHEMA, RunRecord, flatten_params
from ..model.values import NumberText, int64_problem, integer_text
from . import kvline
from .base import DERIVED_STEPS_TAG, Metrics, SourceOptions, SourceResult, checked_params, import_key
from .times import LINE_TIME, seconds_ms, time_in_line

NAME = "text"

STEP_RULE_TAG = "importer.step_rule"
NAIVE_TIMES_TAG = "importer.naive_times"
FORMAT_TAG = "importer.log_dialect"
HEAD_BYTES = 64 * 1024
MAX_LINE = 1 << 20  # longer lines are a problem, never buffered whole
MAX_PROBLEMS = 20  # per file; then one summary problem
MMDET_FALLBACK_ITERS = 1_000_000
_NO_TS = INT64_MIN  # sentinel for "no timestamp" in the int64 column buffers

_NUM = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"

STEP_RULES = {
    "mmdet": "step = (epoch - 1) * N + iter (train), epoch * N (val); N = iters per epoch from [iter/N], "
             f"else {MMDET_FALLBACK_ITERS}; Iter [i] lines: step = i",
    "mmdet-json": "step = (epoch - 1) * N + iter (train), epoch * N (val); N = iters per epoch from the "
                  f"sibling .log's [iter/N], else {MMDET_FALLBACK_ITERS}",
    "fairseq": "step = num_updates (or <prefix>_num_updates); records without it take the last step",
    "keras": "step = the printed epoch number (1-based) of 'Epoch k/N'",
    "llmc": "step = k of 'step k/n' as printed (s:k in main.log); 'val loss' takes the last step",
    "logging": "step = the line's step/global_step/iter/iteration/it/update/num_updates field; "
               "else 0..n-1 in line order",
    "logging+marker": "step = the line's step/global_step/iter/iteration/it/update/num_updates field, "
                      "else N of a leading 'Epoch N', 'Epoch N/M', 'step N', 'iter N' or 'it N'; "
                      "else 0..n-1 in line order",
    "kv": "step = N of the line's leading 'Epoch N', 'Epoch N/M', 'step N', 'iter N' or 'it N' "
          "(a step/global_step/iter/... field wins over 'Epoch N', which is then the metric 'epoch')",
    "pattern": "step = the named group 'step', else 'epoch', else 0..n-1 in line order",
}


# ---------------------------------------------------------------------------------------------
# Shared by the log sources: metric series in bounded Python overhead
# ---------------------------------------------------------------------------------------------

class SeriesBuilder:
    """Points per metric key in file order, kept in compact int64/float64 buffers.

    With `dedupe`, a point equal to an earlier point of the same key (same step and same value bits)
    is dropped and counted in `dropped`."""

    def __init__(self, dedupe: bool = False):
        self._cols: dict[str, tuple[array, array, array]] = {}
        self._seen: Optional[dict[str, set]] = {} if dedupe else None
        self.points = 0
        self.dropped = 0

    def add(self, key: str, step: int, value: float, ts: Optional[int] = None) -> Optional[str]:
        """Add one point; returns why it was refused (step out of range), else None."""
        if why := int64_problem(step):
            return f"step {why}"
        if self._seen is not None:
            mark = (step, struct.pack("<d", value))  # bit identity, so NaN equals NaN
            seen = self._seen.setdefault(key, set())
            if mark in seen:
                self.dropped += 1
                return None
            seen.add(mark)
        cols = self._cols.get(key)
        if cols is None:
            cols = self._cols[key] = (array("q"), array("d"), array("q"))
        cols[0].append(step)
        cols[1].append(value)
        cols[2].append(_NO_TS if ts is None else ts)
        self.points += 1
        return None

    def finish(self, record: RunRecord, result: SourceResult, file: str) -> None:
        """Fill `record.metrics` (server-safe keys) and its tags for renamed keys, derived
        timestamps and infinite values; notes go to `result`."""
        metrics = Metrics(file, result)
        for key, (steps, values, stamps) in self._cols.items():
            n = len(steps)
            ts = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(stamps)])
            ts = pc.if_else(pc.equal(ts, _NO_TS), pa.scalar(None, pa.int64()), ts)
            vals = pa.Array.from_buffers(pa.float64(), n, [None, pa.py_buffer(values)])
            table = pa.table([pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(steps)]), ts, vals],
                             schema=METRIC_SCHEMA)
            metrics.add(key, table, record.origin)
        metrics.finish(record)


def _step_number(text: str) -> Optional[int | NumberText]:
    """A step as written: digits as the exact integer (a float would round 2**63 + 1, and the
    out-of-range message would name another number), or a whole decimal (`3.0`, `1e3`)."""
    text = text.strip()
    exact = integer_text(text)
    if exact is not None:
        return exact
    v = _number(text)
    return int(v) if v is not None and math.isfinite(v) and v.is_integer() else None


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Reading lines safely
# ---------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, index: int, first_line: int):
        self.index = index
        self.first_line = first_line
        self.series = SeriesBuilder()
        self.params: dict[str, str] = {}
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self.derived = 0  # next derived step
        self.last_step: Optional[int] = None
        self.naive = False
        self.marker = False  # a step came from a leading step marker (kvline.MARKER)


class _Reader:
    """Collects runs (segments) and problems while a dialect parser walks the lines."""

    def __init__(self, path: Path, result: SourceResult):
        self.path = path
        self.file = str(path)
        self.result = result
        self.runs = [_Run(0, 1)]
        self.problem_count = 0
        self.lineno = 0
        self.dialect = ""

    @property
    def run(self) -> _Run:
        return self.runs[-1]

    def problem(self, lineno: Optional[int], message: str) -> None:
        self.problem_count += 1
        if self.problem_count <= MAX_PROBLEMS:
            self.result.problems.append(Problem(self.file, f"line {lineno}" if lineno else "", message))

    def banner(self) -> None:
        """A launch marker: a new run starts if the current one already has points."""
        if self.run.series.points:
            self.runs.append(_Run(len(self.runs), self.lineno))

    def time(self, text: str) -> Optional[int]:
        """The time of a line (ms), also widening the run's start/end."""
        ts, naive = time_in_line(text)
        if ts is not None:
            run = self.run
            run.naive = run.naive or naive
            run.start = ts if run.start is None else min(run.start, ts)
            run.end = ts if run.end is None else max(run.end, ts)
        return ts

    def derived_step(self) -> int:
        step = self.run.derived
        self.run.derived += 1
        return step

    def point(self, key: str, step: int, value: float, ts: Optional[int]) -> None:
        why = self.run.series.add(key, step, value, ts)
        if why:
            self.problem(self.lineno, why)
        else:
            self.run.last_step = step

    def points(self, metrics: dict[str, float], step: Optional[int], ts: Optional[int]) -> None:
        """One record's metrics; a None step is derived (0..n-1 in line order)."""
        if not metrics:
            return
        if step is None:
            step = self.derived_step()
        for k, v in metrics.items():
            self.point(k, step, v, ts)

    def lines(self, stream) -> Iterator[str]:
        """Complete, decoded lines (without terminator); `self.lineno` is the current line."""
        while True:
            raw = stream.readline(MAX_LINE + 1)
            if not raw:
                return
            self.lineno += 1
            if not raw.endswith(b"\n"):
                if len(raw) > MAX_LINE:
                    while (chunk := stream.readline(MAX_LINE)) and not chunk.endswith(b"\n"):
                        pass  # skip the rest of the long line in bounded pieces
                    self.problem(self.lineno, f"line is longer than {MAX_LINE} bytes; not read")
                    continue
                self.result.notes.append(f"{self.file}: line {self.lineno} has no line terminator "
                                         "(file still being written?); it is read once complete")
                return
            if b"\0" in raw:
                self.problem(self.lineno, "binary data (NUL bytes); the rest of the file is not read")
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.problem(self.lineno, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                             f"{e.start + 1}); line not read")
                continue
            if self.lineno == 1:
                text = text.lstrip("\ufeff")
            yield text.rstrip("\r\n")


# ---------------------------------------------------------------------------------------------
# Dialects
# ---------------------------------------------------------------------------------------------

_MM_LINE = re.compile(r"^(\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d(?:,\d{3})?) - ([\w.]+) - [A-Z]+ - (.*)$")
_MM_EPOCH = re.compile(r"^Epoch(?:\((\w+)\))?\s*\[\s*(\d+)\s*\]\s*\[\s*(\d+)\s*(?:/\s*(\d+)\s*)?\]\s*(.*)$")
_MM_ITER = re.compile(r"^Iter(?:\((\w+)\))?\s*\[\s*(\d+)\s*(?:/\s*(\d+)\s*)?\]\s*(.*)$")
_MM_PAIR = re.compile(r"(?:^|[,\s])([A-Za-z_][\w./@-]*): (" + _NUM + r")(?=,|\s|$)")
_MM_SKIP = {"eta", "epoch", "iter", "mode"}


def _mm_metrics(rest: str, mode: str) -> dict[str, float]:
    out = {}
    for k, v in _MM_PAIR.findall(rest):
        if k not in _MM_SKIP and not k.endswith("_copypaste"):
            out.setdefault(f"{mode}/{k}", float(v))
    return out


def _mm_step(mode: str, epoch: int, it: int, n: Optional[int]) -> int:
    n = n or MMDET_FALLBACK_ITERS
    return epoch * n if mode != "train" else (epoch - 1) * n + it


def _parse_mmdet(rd: _Reader, lines: Iterator[str]) -> None:
    iters: Optional[int] = None
    last_train: Optional[int] = None
    for line in lines:
        m = _MM_LINE.match(line)
        if not m:
            continue
        msg = m.group(3)
        if msg.startswith("Environment info:"):
            rd.banner()
            if rd.run.series.points == 0:
                iters = last_train = None
        ts = rd.time(m.group(1))
        if e := _MM_EPOCH.match(msg):
            mode = e.group(1) or "train"
            if e.group(4):
                iters = int(e.group(4))
            step = _mm_step(mode, int(e.group(2)), int(e.group(3)), iters)
            rest = e.group(5)
        elif i := _MM_ITER.match(msg):
            mode = i.group(1) or "train"
            step = int(i.group(2)) if mode == "train" else (last_train or 0)
            rest = i.group(4)
        else:
            continue
        if mode == "train":
            last_train = step
        rd.points(_mm_metrics(rest, mode), step, ts)


def _sibling_iters(path: Path) -> Optional[int]:
    """Iterations per epoch from the `.log` next to a `.log.json` (its first `[iter/N]`)."""
    if not path.name.endswith(".json"):
        return None
    sibling = path.with_name(path.name[:-5])
    if not sibling.is_file():
        return None
    with sibling.open("rb") as f:
        while raw := f.readline(MAX_LINE):
            line = _MM_LINE.match(raw.decode("utf-8", "replace").rstrip("\r\n"))
            m = _MM_EPOCH.match(line.group(3)) if line else None
            if m and m.group(4):
                return int(m.group(4))
    return None


def _parse_mmdet_json(rd: _Reader, lines: Iterator[str]) -> None:
    iters = _sibling_iters(rd.path)
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            rd.problem(rd.lineno, f"not a JSON object ({e})")
            continue
        if not isinstance(rec, dict):
            rd.problem(rd.lineno, "not a JSON object")
            continue
        if "mode" not in rec:
            rd.banner()
            for k in ("seed", "exp_name"):
                if k in rec and rec[k] is not None:
                    rd.run.params[k] = str(rec[k])
            continue
        mode = str(rec["mode"])
        epoch, it = rec.get("epoch"), rec.get("iter")
        if type(epoch) is int and type(it) is int:
            step = _mm_step(mode, epoch, it, iters)
        elif type(it) is int:
            step = it
        else:
            rd.problem(rd.lineno, "a record without integer `epoch`/`iter`")
            continue
        metrics = {f"{mode}/{k}": float(v) for k, v in rec.items()
                   if k not in _MM_SKIP and type(v) in (int, float)}
        rd.points(metrics, step, None)


_FS_HYDRA = re.compile(r"^\[([^\]]+)\]\[([^\]]+)\]\[[A-Z]+\] - (.*)$")
_FS_PLAIN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| [A-Z]+ \| ([\w.]+) \| (.*)$")
# --log-format simple: log() and print() lines (fairseq/logging/progress_bar.py SimpleProgressBar);
# fairseq <= 0.9 printed them to stdout with a leading `| ` and no logger.
_FS_LEGACY = re.compile(r"^\| (epoch \d{3,}(?::\s+\d+ / \d+ [A-Za-z_]\w*=| \| (?:valid on '|[A-Za-z_]\w* [-+.\w]))"
                        r".*)$")
_FS_SIMPLE_LOG = re.compile(r"^epoch (\d+):\s+(\d+) / (\d+) (.*)$")
_FS_SIMPLE_PRINT = re.compile(r"^epoch (\d+) \| (.*)$")
_FS_SUBSET = re.compile(r"^valid on '([^']*)' subset$")


def _parse_fairseq(rd: _Reader, lines: Iterator[str]) -> None:
    for line in lines:
        m = _FS_HYDRA.match(line) or _FS_PLAIN.match(line)
        if m:
            stamp, logger, msg = m.group(1), m.group(2), m.group(3)
        elif legacy := _FS_LEGACY.match(line):
            stamp, logger, msg = None, None, legacy.group(1)
        else:
            if line.startswith("Namespace("):  # fairseq <= 0.9 printed its args first
                rd.banner()
            continue
        if msg.startswith("{'_name'") or msg.startswith("Namespace("):
            rd.banner()
            if msg.startswith("{"):
                _fairseq_params(rd, msg)
        ts = rd.time(stamp) if stamp else None
        if msg.startswith("epoch "):
            _fairseq_simple(rd, logger, msg, ts)
            continue
        if not msg.startswith("{\""):
            continue
        try:
            rec = json.loads(msg)
        except ValueError as e:
            rd.problem(rd.lineno, f"the {logger} record is not valid JSON ({e})")
            continue
        step = None
        metrics = {}
        for k, v in rec.items():
            value = _number(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
            if k == "num_updates" or k.endswith("_num_updates"):
                if value is not None and value.is_integer():
                    step = int(value)
            if value is not None and k != "epoch":
                metrics[f"{logger}/{k}"] = value
        if step is None:
            step = rd.run.last_step if rd.run.last_step is not None else 0
        rd.points(metrics, step, ts)


def _fairseq_simple(rd: _Reader, logger: Optional[str], msg: str, ts: Optional[int]) -> None:
    """One `--log-format simple` line: `epoch 001:  100 / 1124 k=v, k=v` (log) or
    `epoch 001 | [valid on 'x' subset | ]k v | k v` (print). Keys as the json format names them."""
    if m := _FS_SIMPLE_LOG.match(msg):
        tag, prefix = logger or "train_inner", ""
        fields = [(f, *f.partition("=")[::2]) for f in m.group(4).split(", ") if f.strip()]
    elif m := _FS_SIMPLE_PRINT.match(msg):
        parts = m.group(2).split(" | ")
        subset = _FS_SUBSET.match(parts[0].strip())
        if subset:
            parts = parts[1:]
        tag = logger or (subset.group(1) if subset else "train")
        prefix = tag + "_"
        fields = [(f, *f.strip().partition(" ")[::2]) for f in parts if f.strip()]
    else:
        return  # another message that starts with "epoch" (e.g. "epoch 1 done")
    step = None
    metrics: dict[str, float] = {}
    for n, (field, key, raw) in enumerate(fields, 1):
        key, raw = key.strip(), raw.strip()
        value = _number(raw)
        if not key or value is None:
            rd.problem(rd.lineno, f"fairseq {tag} record, field {n} ({field.strip()[:60]!r}): "
                                  "not a `key=value` / `key value` pair with a number")
            continue
        if key == "num_updates" and value.is_integer():
            step = int(value)
        metrics[f"{tag}/{prefix}{key}"] = value
    if step is None:
        step = rd.run.last_step if rd.run.last_step is not None else 0
    rd.points(metrics, step, ts)


def _fairseq_params(rd: _Reader, msg: str) -> None:
    """The hydra config dump (a Python dict repr) as flattened params."""
    try:
        cfg = ast.literal_eval(msg)
        flat = flatten_params(cfg) if isinstance(cfg, dict) else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        rd.result.notes.append(f"{rd.file}: line {rd.lineno}: config dump not read as params ({e})")
        return
    rd.run.params.update(flat)


_KERAS_EPOCH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s*$")
_KERAS_TRAIN_ON = re.compile(r"^Train on (\d+) samples(?:, validate on (\d+) samples)?")
_KERAS_PAIR = re.compile(r"(?:^|\s-\s)([A-Za-z_][\w./@-]*): (" + _NUM + r")(?=\s|$)")


def _parse_keras(rd: _Reader, lines: Iterator[str]) -> None:
    epoch: Optional[int] = None
    pending: dict[str, float] = {}
    pending_params: dict[str, str] = {}

    def flush() -> None:
        if pending and epoch is not None:
            rd.points(dict(pending), epoch, None)
        pending.clear()

    for line in lines:
        # Progress bars: keep only the final state after carriage returns / backspaces.
        line = line.rsplit("\r", 1)[-1]
        if "\b" in line:
            line = re.split(r"\x08+", line)[-1]
        if m := _KERAS_TRAIN_ON.match(line):
            pending_params = {"train_samples": m.group(1)}
            if m.group(2):
                pending_params["validation_samples"] = m.group(2)
            continue
        if m := _KERAS_EPOCH.match(line):
            flush()
            k = int(m.group(1))
            if epoch is None or k <= epoch:  # Epoch 1/N again: another fit() call
                rd.banner()
                rd.run.params.update({"epochs": m.group(2), **pending_params})
                pending_params = {}
            epoch = k
            continue
        if "ETA:" in line or epoch is None:
            continue
        pairs = _KERAS_PAIR.findall(line)
        if pairs:
            pending.clear()  # the last result line of an epoch wins
            pending.update((k, float(v)) for k, v in pairs)
    flush()


_LLMC_STEP = re.compile(r"^step\s+(\d+)\s*/\s*(\d+)\s*\|(.*)$")
_LLMC_NAME_VALUE = re.compile(r"^\(?\s*([A-Za-z][A-Za-z _]*?)\s+(" + _NUM + r")")
_LLMC_VALUE_UNIT = re.compile(r"^\(?\s*(" + _NUM + r")\s*(%?\s*[A-Za-z][\w/ ]*?)\s*\)?\s*$")
_LLMC_VAL = re.compile(r"^val loss\s+(" + _NUM + r")")
_LLMC_MAIN = re.compile(r"^s:(\d+)((?:\s+[A-Za-z_]\w*:" + _NUM + r")+)\s*$")


def _llmc_fields(rest: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for field in rest.split("|"):
        if m := _LLMC_NAME_VALUE.match(field):
            out.setdefault(m.group(1).strip().replace(" ", "_"), float(m.group(2)))
        elif m := _LLMC_VALUE_UNIT.match(field):
            unit = m.group(2).replace("%", "pct ").replace("/", "_per_").split()
            out.setdefault("_".join(unit), float(m.group(1)))
    return out


def _parse_llmc(rd: _Reader, lines: Iterator[str]) -> None:
    for line in lines:
        if m := _LLMC_STEP.match(line):
            step, metrics = int(m.group(1)), _llmc_fields(m.group(3))
        elif m := _LLMC_MAIN.match(line):
            step = int(m.group(1))
            metrics = {k: float(v) for k, v in (p.split(":", 1) for p in m.group(2).split())}
        elif m := _LLMC_VAL.match(line):
            rd.points({"val_loss": float(m.group(1))}, rd.run.last_step or 0, None)
            continue
        else:
            continue
        if rd.run.last_step is not None and step < rd.run.last_step:
            rd.banner()
        rd.points(metrics, step, None)


_LOG_PREFIX = re.compile(r"^\[?(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?(?:Z|[+-]\d\d:?\d\d)?)\]?"
                         r"|^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]*:")
_LOG_PAIR = re.compile(r"(?<![\w./@-])([A-Za-z_][\w./@-]*)\s*(?:=\s*|:\s*)(" + _NUM + r")(?![\w.:/])")
_STEP_KEYS = ("step", "global_step", "iter", "iteration", "it", "update", "num_updates")
# The message starts after the level name where the format prints one (`- INFO -`, `[INFO] -`);
# what a format prints around it are the logger's own fields, not metrics: a source position
# (`%(filename)s:%(lineno)d`, `trainer.py:123`) or a thread (`%(threadName)s:%(thread)d`).
_LOG_LEVEL = re.compile(r"(?<![\w])(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?![\w])[\]\s:|-]*")
_LOGGER_FIELD = re.compile(r"[\w.-]+\.py|MainThread|Thread-\d+(?:\s*\(\w+\))?")


def _log_message(line: str, need_prefix: bool) -> Optional[tuple[str, Optional[str]]]:
    """(message, time text) of a line: after the time / `INFO:name:` prefix and the level name."""
    m = _LOG_PREFIX.match(line)
    if not m:
        return None if need_prefix else (line, None)
    message = line[m.end():]
    level = _LOG_LEVEL.search(message)
    if level and all(_LOGGER_FIELD.fullmatch(k) for k, _ in _LOG_PAIR.findall(message[:level.start()])):
        message = message[level.end():]  # not a "step=5 WARNING ..." message
    return message, m.group(1)


def _logger_field(name: str) -> bool:
    return _LOGGER_FIELD.fullmatch(name) is not None


def _parse_logging(rd: _Reader, lines: Iterator[str], kv: bool = False) -> None:
    """The `logging` dialect (prefixed lines, every line with pairs is a record) and the `kv`
    dialect (`kv`: a prefix is optional, only lines that start with a step marker are records)."""
    for line in lines:
        got = _log_message(line, need_prefix=not kv)
        if got is None:
            continue
        message, stamp = got
        rec = kvline.parse(message, skip=_logger_field)
        for issue in rec.issues:
            rd.problem(rd.lineno, issue)
        if kv and rec.marker is None:
            rec.metrics.clear()  # not a record of this layout; its time still widens the run
        step = rec.step
        if rec.metrics and step is not None and rd.run.last_step is not None and step < rd.run.last_step:
            rd.banner()
        if rec.metrics and rec.marker is not None:
            rd.run.marker = True
        ts = rd.time(stamp) if stamp else None  # every line's time widens the run
        rd.points(rec.metrics, step, ts)


def _parse_kv(rd: _Reader, lines: Iterator[str]) -> None:
    _parse_logging(rd, lines, kv=True)


def _kv_record(line: str) -> bool:
    """A line of the `kv` layout: (time/level prefix,) a step marker and at least one pair."""
    message = _log_message(line, need_prefix=False)[0]
    return kvline.MARKER.match(message) is not None and bool(kvline.parse(message, skip=_logger_field).metrics)


def _compile_patterns(patterns: list[str], file: str, result: SourceResult) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            rx = re.compile(p)
        except re.error as e:
            result.problems.append(Problem(file, f"pattern {p!r}", f"does not compile: {e}"))
            continue
        if not set(rx.groupindex) - {"step", "epoch", "time"}:
            result.problems.append(Problem(file, f"pattern {p!r}", "has no metric group: name at least "
                                           "one group other than step, epoch, time, e.g. (?P<loss>\\S+)"))
            continue
        out.append(rx)
    return out


def _pattern_parser(patterns: list[re.Pattern]) -> Callable[[_Reader, Iterator[str]], None]:
    def parse(rd: _Reader, lines: Iterator[str]) -> None:
        for line in lines:
            for rx in patterns:
                m = rx.search(line)
                if not m:
                    continue
                groups = m.groupdict()
                step = None
                raw_step = groups.pop("step", None) or groups.pop("epoch", None)
                if raw_step is not None:
                    step = _step_number(raw_step)
                    if step is None:
                        rd.problem(rd.lineno, f"pattern {rx.pattern!r}: step {raw_step!r} is not an integer")
                        continue
                groups.pop("step", None)
                raw_time = groups.pop("time", None)
                ts = None
                if raw_time is not None:
                    ts = rd.time(raw_time)
                    if ts is None and (secs := _number(raw_time)) is not None:
                        ts = seconds_ms(secs)  # seconds since the epoch
                elif (lead := LINE_TIME.match(line)) is not None:
                    ts = rd.time(lead.group(0))
                metrics = {}
                for k, raw in groups.items():
                    if raw is None:
                        continue
                    v = _number(raw)
                    if v is None:
                        rd.problem(rd.lineno, f"pattern {rx.pattern!r}: group {k!r} matched {raw[:40]!r}, "
                                   "not a number")
                        continue
                    metrics[k] = v
                if step is not None and rd.run.last_step is not None and step < rd.run.last_step:
                    rd.banner()
                rd.points(metrics, step, ts)
    return parse


_PARSERS = {"mmdet": _parse_mmdet, "mmdet-json": _parse_mmdet_json, "fairseq": _parse_fairseq,
            "keras": _parse_keras, "llmc": _parse_llmc, "logging": _parse_logging, "kv": _parse_kv}


# ---------------------------------------------------------------------------------------------
# Sniffing
# ---------------------------------------------------------------------------------------------

def _head(path: Path) -> Optional[bytes]:
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES)
    except OSError:
        return None


def sniff(head: bytes) -> Optional[str]:
    """The dialect of a log from its first bytes, or None."""
    nul = head.find(b"\0")
    text = (head if nul < 0 else head[:nul]).decode("utf-8", "replace")  # judge the text before binary
    lines = text.splitlines()[:2000]
    first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0]
    if first.startswith('{"') and ('"env_info"' in first or '"mode": ' in first or
                                    any(ln.startswith('{"mode": ') for ln in lines)):
        return "mmdet-json"
    if any(_MM_LINE.match(ln) and " - mm" in ln[:40] for ln in lines):
        return "mmdet"
    if any(_FS_HYDRA.match(ln) or _FS_PLAIN.match(ln) for ln in lines) and (
            "fairseq" in text or "[train_inner]" in text or "| train_inner |" in text):
        return "fairseq"
    if any(_FS_LEGACY.match(ln) for ln in lines):
        return "fairseq"
    if any(_KERAS_EPOCH.match(ln) for ln in lines):
        return "keras"
    if any(_LLMC_STEP.match(ln) or _LLMC_MAIN.match(ln) for ln in lines):
        return "llmc"
    for ln in lines:
        m = _LOG_PREFIX.match(ln)
        if m and _LOG_PAIR.search(ln[m.end():]):
            return "logging"
    if any(_kv_record(ln) for ln in lines):
        return "kv"
    return None


def detect(path: Path) -> bool:
    """True for a file whose first 64 KB look like one of the built-in log dialects."""
    if not path.is_file():
        return False
    head = _head(path)
    return head is not None and sniff(head) is not None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read(path: Path, options: SourceOptions) -> SourceResult:
    """Read one text log: one RunRecord per segment with points, problems with line numbers."""
    result = SourceResult()
    file = str(path)
    if options.patterns:
        compiled = _compile_patterns(options.patterns, file, result)
        if result.problems:
            return result
        dialect, parser = "pattern", _pattern_parser(compiled)
    else:
        head = _head(path)
        if head is None:
            result.problems.append(Problem(file, "", "cannot be read"))
            return result
        dialect = sniff(head)
        if dialect is None:
            nul = head.find(b"\0")
            if nul >= 0:
                line = head.count(b"\n", 0, nul) + 1
                where, what = f"line {line}", "binary data (NUL bytes)"
            else:
                where, what = "", "no known log format in the first 64 KB"
            result.problems.append(Problem(file, where, f"{what}: not a text log this source knows; "
                                           "pass --pattern with a regex with named groups"))
            return result
        parser = _PARSERS[dialect]

    rd = _Reader(path, result)
    rd.dialect = dialect
    try:
        with path.open("rb") as stream:
            parser(rd, rd.lines(stream))
    except OSError as e:
        result.problems.append(Problem(file, f"line {rd.lineno}", f"read failed: {e}"))
        return result
    if rd.problem_count > MAX_PROBLEMS:
        result.problems.append(Problem(file, "", f"{rd.problem_count - MAX_PROBLEMS} more problems not shown"))

    resolved = str(path.resolve())
    experiment = options.experiment or path.resolve().parent.name or "Default"
    for run in rd.runs:
        if not run.series.points:
            result.notes.append(f"{file}: segment {run.index} (from line {run.first_line}) has no "
                                "metric lines; no run is created for it")
            continue
        rec = RunRecord(
            experiment=experiment, import_key=import_key(NAME, resolved, str(run.index)),
            origin=f"{file}: segment {run.index}",
            name=path.name if run.index == 0 else f"{path.name} #{run.index}",
            start_time=run.start, end_time=run.end)
        rec.params = checked_params(run.params, str(path), rec.origin, result.problems, result.notes)
        rec.tags[FORMAT_TAG] = dialect
        rec.tags[STEP_RULE_TAG] = STEP_RULES["logging+marker" if dialect == "logging" and run.marker else dialect]
        if run.derived:
            rec.tags[DERIVED_STEPS_TAG] = "lines without a step have steps 0..n-1 in line order"
        if run.naive:
            rec.tags[NAIVE_TIMES_TAG] = "times without a UTC offset are read as UTC"
        run.series.finish(rec, result, file)
        result.records.append(rec)
    return result
