"""Weights & Biases run folders (`wandb/run-*/`, `wandb/offline-run-*/`) -> one RunRecord per run.

History from the `run-<id>.wandb` log (LevelDB-log framing read here, records decoded with the
`wandb` package's protobufs), else `wandb-history.jsonl`, else the summary only (noted). `_step`
and `_timestamp` give step and time; `_` keys skipped; params from `config.yaml`; status from the
exit record. Links never followed out of the named folder. Every other file of the run folder
(output.log, media, requirements.txt) is named in a note (folder.RunFolder).

Finding runs, the fields read and the mapping: docs/formats/wandb.md.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import Problem
from ..model import (RunRecord, flatten_params)
from .base import Metrics, SourceOptions, SourceResult, import_key, metric_table
from .folder import RunFolder
from .times import iso_ms, seconds_ms

NAME = "wandb"
INSTALL_HINT = "pip install 'importer[wandb]'"
RUN_DIR = re.compile(r"^(offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9]+)$")

# The .wandb framing: a 7-byte file header, then LevelDB-log chunks in 32 KiB blocks.
_FILE_HEADER = b":W&B"
_BLOCK = 32768
_CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


def is_run_folder(path: Path) -> bool:
    """A real folder named like a W&B run folder, or holding a .wandb log or W&B's files/."""
    if path.is_symlink() or not path.is_dir():
        return False
    if RUN_DIR.match(path.name):
        return True
    files = path / "files"
    return any(path.glob("run-*.wandb")) or (files / "wandb-metadata.json").is_file() or (
        files / "wandb-summary.json").is_file()


def find_runs(path: Path) -> list[Path]:
    """The run folders the named folder is or holds (directly, or in its `wandb/` folder)."""
    root = path.resolve()  # the named path itself may be a link the user chose, e.g. latest-run
    if is_run_folder(root):
        return [root]
    found = []
    for parent in (root, root / "wandb"):
        if parent.is_symlink() or not parent.is_dir():
            continue
        found += [p for p in sorted(parent.iterdir()) if RUN_DIR.match(p.name) and is_run_folder(p)]
    return found


def run_folder_of(file: Path) -> Optional[Path]:
    """The W&B run folder a file lies in (directly, or in files/, logs/, files/media/...), or None."""
    for folder in list(file.parents)[:4]:
        if RUN_DIR.match(folder.name) and is_run_folder(folder):
            return folder
    return None


def _is_debug_log(file: Path) -> bool:
    """W&B's own logs beside the run folders: wandb/debug.log, debug-internal.log, debug-cli.*.log."""
    return file.name.startswith("debug") and file.suffix == ".log" and bool(find_runs(file.parent))


def detect(path: Path) -> bool:
    """A W&B run folder or a folder holding run folders (directly or in `wandb/`); or, as folder
    discovery offers them, a file inside a run folder or one of W&B's debug logs beside them (else
    those logs would be read as text logs)."""
    if path.is_dir():
        return bool(find_runs(path))
    return path.is_file() and (run_folder_of(path) is not None or _is_debug_log(path))


def unit(file: Path) -> Path:
    """What discovery reads for a file `detect` recognised: its run folder, or the folder holding
    the run folders."""
    return run_folder_of(file) or file.parent


def read(path: Path, options: SourceOptions) -> SourceResult:
    """One RunRecord per W&B run folder at `path` (see the module docstring)."""
    result = SourceResult()
    if not path.is_dir():
        result.problems.append(Problem(str(path), "", "not a folder: name a W&B run folder or the "
                                       "folder that holds them"))
        return result
    runs = find_runs(path)
    if not runs:
        result.problems.append(Problem(str(path), "", "no W&B run folder (run-*/ or "
                                       "offline-run-*/) here or in its wandb/ folder"))
    for run_dir in runs:
        _RunReader(run_dir, path.resolve(), options, result).read()
    return result


def _flatten(value: Any, key: str, out: dict) -> None:
    """Nested dicts -> dotted keys; media objects (dicts with `_type`) stay whole."""
    if isinstance(value, dict) and "_type" not in value:
        for k, v in value.items():
            _flatten(v, f"{key}.{k}", out)
    else:
        out[key] = value


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("_type", "object"))
    return type(value).__name__


def _ms(seconds: Any) -> Optional[int]:
    n = _number(seconds)
    return None if n is None else seconds_ms(n)


class _RunReader:
    """Reads one run folder into a RunRecord, adding problems and notes to `result`."""

    def __init__(self, run_dir: Path, root: Path, options: SourceOptions, result: SourceResult):
        self.dir, self.root, self.options, self.result = run_dir, root, options, result
        m = RUN_DIR.match(run_dir.name)
        self.run_id = m.group("id") if m else run_dir.name
        self.series: dict[str, tuple[list, list, list]] = {}  # key -> steps, timestamps, values
        self.skipped: Counter = Counter()
        self.summary: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.info: dict[str, Any] = {}  # from the log's run record
        self.last_ts: Optional[int] = None
        self.rows = 0
        self.exit_code: Optional[int] = None
        self.runtime: Optional[float] = None
        self.log_read = False
        self._meta: Optional[dict] = None
        self.read_files: set[Path] = set()  # the others are named in a note (folder.RunFolder)

    def file(self, rel: str) -> Optional[Path]:
        """A regular file of the run, not through a link leading outside the named folder."""
        p = self.dir / rel
        self.read_files.add(p.resolve())
        if p.is_symlink():
            target = p.resolve()
            if not (target == self.root or self.root in target.parents) or not target.is_file():
                self.result.notes.append(f"{p}: symlink to {target} not followed (outside "
                                         f"{self.root}, or dangling)")
                return None
            return target
        return p if p.is_file() else None

    # -- sources of data -----------------------------------------------------------------------

    def read(self) -> None:
        logs = sorted(p for p in self.dir.glob("*.wandb") if self.file(p.name))
        if logs:
            try:
                from wandb.proto import wandb_internal_pb2
            except ImportError:
                self.result.notes.append(f"{self.dir}: {logs[0].name} not read: it needs the "
                                         f"`wandb` package ({INSTALL_HINT})")
            else:
                for log in logs:
                    self.read_log(log, wandb_internal_pb2)
        if not self.log_read:
            history = self.file("files/wandb-history.jsonl")
            if history is not None:
                self.read_history_jsonl(history)
            else:
                self.result.notes.append(f"{self.dir}: no readable history (.wandb log or "
                                         "wandb-history.jsonl): metrics are the summary's final "
                                         "values, one point each")
        summary = self.file("files/wandb-summary.json")
        if summary is not None:
            try:
                doc = json.loads(summary.read_text(encoding="utf-8"))
                self.summary = doc if isinstance(doc, dict) else {}
            except (ValueError, OSError) as e:
                self.result.problems.append(Problem(str(summary), "", f"not readable JSON: {e}"))
        self.read_config()
        self.result.records.append(self.record())
        RunFolder(self.dir).report(self.read_files, self.result)

    def read_log(self, log: Path, pb) -> None:
        with open(log, "rb") as fh:
            data = fh.read()
        if data[:4] != _FILE_HEADER:
            self.result.problems.append(Problem(str(log), "byte 0", "not a W&B transaction log "
                                                "(no :W&B header)"))
            return
        self.log_read = True
        records = _LogRecords(data)
        for raw in records:
            try:
                rec = pb.Record.FromString(raw)
            except Exception as e:  # protobuf's DecodeError: a record this wandb cannot read
                self.result.notes.append(f"{log}: a record is not decodable ({e}); skipped")
                continue
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row = {}
                for item in rec.history.item:
                    row[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
                step = rec.history.step.num if rec.history.HasField("step") else None
                self.add_row(row, step)
            elif kind == "summary":
                for item in rec.summary.update:
                    self.summary[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in rec.config.update:
                    self.config[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "run":
                r = rec.run
                self.info = {"project": r.project, "entity": r.entity, "name": r.display_name,
                             "notes": r.notes, "group": r.run_group, "job_type": r.job_type,
                             "tags": list(r.tags), "run_id": r.run_id,
                             "start": (r.start_time.seconds * 1000 + r.start_time.nanos // 10**6
                                       if r.HasField("start_time") else None)}
                for item in r.config.update:
                    self.config[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
            elif kind == "exit":
                self.exit_code = rec.exit.exit_code
                self.runtime = rec.exit.runtime
        if records.error:
            self.result.notes.append(f"{log}: read up to byte {records.good_bytes}, then "
                                     f"{records.error} (the run crashed while writing?): the rest "
                                     "was not read")

    def read_history_jsonl(self, path: Path) -> None:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    self.result.notes.append(f"{path}: line {i} is not JSON (a torn last "
                                             "write?); skipped")
                    continue
                if isinstance(row, dict):
                    self.add_row(row, None)

    def add_row(self, row: dict, record_step: Optional[int]) -> None:
        step = row.get("_step")
        step = int(step) if _number(step) is not None else (
            record_step if record_step is not None else self.rows)
        ts = _ms(row.get("_timestamp"))
        if ts is not None:
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.rows += 1
        flat: dict = {}
        for k, v in row.items():
            if not k.startswith("_"):
                _flatten(v, k, flat)
        for k, v in flat.items():
            n = _number(v)
            if n is None:
                self.skipped[_kind(v)] += 1
                continue
            steps, stamps, values = self.series.setdefault(k, ([], [], []))
            steps.append(step)
            stamps.append(ts)
            values.append(n)

    def read_config(self) -> None:
        path = self.file("files/config.yaml")
        if path is not None:
            try:
                import yaml
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except ImportError:
                self.result.notes.append(f"{path}: not read, it needs PyYAML ({INSTALL_HINT})")
                doc = None
            except Exception as e:  # yaml.YAMLError and decoding errors
                self.result.problems.append(Problem(str(path), "", f"not readable YAML: {e}"))
                doc = None
            if isinstance(doc, dict):
                # W&B writes {key: {desc, value}} (0.27 drops `desc`); the `value` is the param.
                self.config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
                               for k, v in doc.items()}
        self.config.pop("wandb_version", None)

    # -- the record ----------------------------------------------------------------------------

    def start_time(self) -> Optional[int]:
        meta = self.metadata()
        started = meta.get("startedAt")
        if isinstance(started, str) and (ms := iso_ms(started)) is not None:  # W&B writes UTC
            return ms
        if self.info.get("start"):
            return self.info["start"]
        internal = self.config.get("_wandb")
        return _ms(internal.get("start_time")) if isinstance(internal, dict) else None

    def metadata(self) -> dict:
        if self._meta is None:
            self._meta = {}
            path = self.file("files/wandb-metadata.json")
            if path is not None:
                try:
                    doc = json.loads(path.read_text(encoding="utf-8"))
                    self._meta = doc if isinstance(doc, dict) else {}
                except (ValueError, OSError) as e:
                    self.result.problems.append(Problem(str(path), "", f"not readable JSON: {e}"))
        return self._meta

    def record(self) -> RunRecord:
        meta = self.metadata()
        run_id = self.info.get("run_id") or self.run_id
        holder = self.dir.parent.parent if self.dir.parent.name == "wandb" else self.dir.parent
        experiment = self.options.experiment or self.info.get("project") or holder.name or NAME
        rec = RunRecord(experiment=experiment,
                        import_key=import_key(NAME, str(self.dir), run_id),
                        origin=f"{self.dir}: {run_id}", name=self.info.get("name") or run_id,
                        description=self.info.get("notes") or None,
                        source=meta.get("program") if isinstance(meta.get("program"), str) else None,
                        user=meta.get("username") or self.info.get("entity") or None)
        try:
            rec.params = flatten_params({k: v for k, v in self.config.items() if k != "_wandb"})
        except ValueError as e:
            self.result.problems.append(Problem(str(self.dir), "config", str(e)))
        rec.tags["wandb.run_id"] = run_id
        for key in ("project", "entity", "group", "job_type"):
            if self.info.get(key):
                rec.tags[f"wandb.{key}"] = self.info[key]
        if self.info.get("tags"):
            rec.tags["wandb.tags"] = ", ".join(self.info["tags"])
        git = meta.get("git")
        if isinstance(git, dict) and isinstance(git.get("commit"), str):
            rec.tags["mlflow.source.git.commit"] = git["commit"]

        self.add_summary_points()
        rec.start_time = self.start_time()
        runtime = self.runtime if self.runtime else _number(
            (self.summary.get("_wandb") or {}).get("runtime")
            if isinstance(self.summary.get("_wandb"), dict) else None)
        if self.last_ts is not None:
            rec.end_time = self.last_ts
        elif rec.start_time is not None and runtime is not None:
            rec.end_time = rec.start_time + int(runtime * 1000)
        if rec.start_time is not None and rec.end_time is not None and rec.end_time < rec.start_time:
            rec.end_time = rec.start_time
        if self.log_read:
            rec.status = "FINISHED" if self.exit_code == 0 else "FAILED"
            if self.exit_code is None:
                self.result.notes.append(f"{rec.origin}: the log has no exit record (crashed, "
                                         "killed or still running): status FAILED")
        self.add_metrics(rec)
        return rec

    def add_summary_points(self) -> None:
        """Numeric summary keys no history row has: one point at the summary's step and time."""
        flat: dict = {}
        for k, v in self.summary.items():
            if not k.startswith("_"):
                _flatten(v, k, flat)
        step = self.summary.get("_step")
        step = int(step) if _number(step) is not None else 0
        ts = _ms(self.summary.get("_timestamp"))
        if ts is not None:
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        for k, v in flat.items():
            n = _number(v)
            if k in self.series:
                continue
            if n is None:
                if self.rows == 0:  # else the history rows already counted it
                    self.skipped[_kind(v)] += 1
                continue
            self.series[k] = ([step], [ts], [n])

    def add_metrics(self, rec: RunRecord) -> None:
        metrics = Metrics(str(self.dir), self.result)
        for key, (steps, stamps, values) in self.series.items():
            metrics.add(self.options.key_prefix + key, metric_table(steps, values, stamps), f"metric {key!r}")
        metrics.finish(rec)
        if self.skipped:
            self.result.notes.append(f"{rec.origin}: skipped non-numeric values: "
                                     + ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items())))


class _LogRecords:
    """The records of a .wandb log. Iterating yields each record's bytes and stops at the first
    truncated or corrupt chunk; `good_bytes` is then where the unread part starts, `error` why."""

    def __init__(self, data: bytes):
        self.data = data
        self.good_bytes = 7  # the file header: ":W&B", magic 0xBEE1, version
        self.error: Optional[str] = None

    def __iter__(self) -> Iterator[bytes]:
        data, pos, parts = self.data, 7, []
        while pos < len(data):
            left = _BLOCK - pos % _BLOCK
            if left < _CHUNK_HEADER:  # a block's tail too short for a header is zero padding
                pos += left
                continue
            if pos + _CHUNK_HEADER > len(data):
                self.error = "a truncated chunk header"
                return
            crc, length, kind = struct.unpack_from("<IHB", data, pos)
            body = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
            if kind not in _TYPE_CRC or len(body) < length:
                self.error = "a truncated chunk" if len(body) < length else "an unknown chunk type"
                return
            if zlib.crc32(body, _TYPE_CRC[kind]) & 0xFFFFFFFF != crc:
                self.error = "a chunk failing its CRC check"
                return
            pos += _CHUNK_HEADER + length
            if kind == _FULL:
                parts = []
                self.good_bytes = pos
                yield body
            elif kind == _FIRST:
                parts = [body]
            elif kind == _MIDDLE:
                parts.append(body)
            else:  # _LAST
                parts.append(body)
                self.good_bytes = pos
                yield b"".join(parts)
                parts = []
        if parts:
            self.error = "a record whose last chunk is missing"
