"""TensorBoard event files (`events.out.tfevents.*`) -> one RunRecord per run folder.

TF1 and TF2 scalars, PyTorch SummaryWriter and tensorboardX, plain, gzip or ZLIB; every point
kept (no EventAccumulator sampling): records read by the TFRecord framing reader below, CRCs
checked, decoded with tensorboard's protobufs. A run is each folder directly holding event files;
step = event step, timestamp = wall time in ms; hparams give params. A truncated or corrupt record
ends a file's reading with a note; a git-LFS pointer is a Problem. The other files of a folder
read whole (`hparams.yaml`, `checkpoints/` of Lightning's TensorBoardLogger) are named in a note.

The variants and rules: docs/formats/tensorboard.md.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Optional

from ..errors import Problem
from ..model import RunRecord, flatten_params
from .base import Metrics, SourceOptions, SourceResult, import_key, metric_table
from .folder import RunFolder
from .times import seconds_ms

NAME = "tensorboard"
INSTALL_HINT = "pip install 'importer[tensorboard]'"
LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
GZIP_MAGIC = b"\x1f\x8b"
_RECORD_OVERHEAD = 16  # TFRecord framing: length (8) + its CRC (4) + data CRC (4)


def is_event_file(path: Path) -> bool:
    """TensorBoard's own test: the file name contains `tfevents`."""
    return "tfevents" in path.name


def detect(path: Path) -> bool:
    """An event file, or a folder with an event file at or below it (symlinks not followed)."""
    if path.is_file():
        return is_event_file(path)
    if path.is_dir():
        for _, _, files in os.walk(path):
            if any("tfevents" in f for f in files):
                return True
    return False


def unit(file: Path) -> Path:
    """What discovery reads for an event file: its folder (a run's event files are merged)."""
    return file.parent


def find_runs(path: Path) -> list[tuple[Path, list[Path]]]:
    """(run folder, its event files in name order) for the named file or folder."""
    if path.is_file():
        return [(path.parent, [path])]
    root = path.resolve()
    runs = []
    for folder, dirs, files in os.walk(root):  # followlinks=False: symlinked folders stay closed
        dirs.sort()
        events = []
        for name in sorted(files):
            f = Path(folder) / name
            if not is_event_file(f):
                continue
            if f.is_symlink() and not _inside(f.resolve(), root):
                continue
            events.append(f)
        if events:
            runs.append((Path(folder), events))
    return runs


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class _Run:
    """Accumulates the points, params and notes of one run while its files are read."""

    def __init__(self):
        self.series: dict[str, tuple[list, list, list]] = {}  # tag -> steps, timestamps, values
        self.metadata: dict = {}  # tag -> SummaryMetadata of its first value
        self.params: dict[str, str] = {}
        self.skipped: Counter = Counter()  # plugin name -> values not read as metrics
        self.first_wall: Optional[float] = None
        self.last_wall: Optional[float] = None
        self.files_read = 0

    def wall(self, t: float) -> None:
        if t > 0:
            self.first_wall = t if self.first_wall is None else min(self.first_wall, t)
            self.last_wall = t if self.last_wall is None else max(self.last_wall, t)


def read(path: Path, options: SourceOptions) -> SourceResult:
    """Every scalar point and the hparams of each run under `path` (see the module docstring)."""
    result = SourceResult()
    try:
        event_pb2, tensor_util = _protos()
    except ImportError:
        result.problems.append(Problem(str(path), "", "reading TensorBoard event files needs the "
                                       f"`tensorboard` package: {INSTALL_HINT}"))
        return result
    if not path.exists():
        result.problems.append(Problem(str(path), "", "no such file or folder"))
        return result
    runs = find_runs(path)
    if not runs:
        result.problems.append(Problem(str(path), "", "no TensorBoard event file "
                                       "(events.out.tfevents.*) at or below this path"))
    named_root = path.resolve() if path.is_dir() else None
    crc = _crc32c()
    for folder, files in runs:
        run = _Run()
        for f in files:
            _read_file(f, run, event_pb2, tensor_util, crc, result)
        if run.files_read == 0:
            continue  # every file was a problem (LFS pointer, unreadable)
        identity = folder.resolve() if named_root is not None else path.resolve()
        result.records.append(_record(identity, folder, named_root, run, options, result))
    if named_root is not None:  # the folder is read whole: its other files are named
        RunFolder(path).report({f.resolve() for _, files in runs for f in files}, result)
    return result


def _protos():
    """tensorboard's Event protobuf and tensor_util (ImportError when it is not installed)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util
    return event_pb2, tensor_util


def read_events(files: list[Path], result: SourceResult) -> Optional[_Run]:
    """The event files `files`, in that order, read as one run (`_Run.series`: tag -> steps,
    timestamps in ms, values; `params` from hparams), with this source's problems and notes. None
    when no file could be read. ImportError when tensorboard is not installed. For another source
    that finds event files inside its own run folder (a Hugging Face Trainer output folder)."""
    event_pb2, tensor_util = _protos()
    run, crc = _Run(), _crc32c()
    for f in files:
        _read_file(f, run, event_pb2, tensor_util, crc, result)
    return run if run.files_read else None


def _crc32c():
    """CRC-32C: google-crc32c's C code when installed (about 30x faster on big files), else the
    pure-Python one tensorboard ships for running without TensorFlow."""
    try:
        import google_crc32c
        return google_crc32c.value
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c
        return crc32c


def _masked(crc: int) -> int:
    """TFRecord's masked CRC (the framing stores this, not the plain CRC)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _Records:
    """The TFRecord framing: u64 length, masked CRC-32C of the length, data, masked CRC-32C of the
    data. Iterating yields each record's data and stops at the first truncated or corrupt one;
    `good_bytes` is then the offset where the unread part starts and `error` says why."""

    def __init__(self, fh, crc, kind: Optional[str] = None):
        self.fh, self.crc, self.kind = fh, crc, kind  # kind: "gzip", "zlib" or None (plain)
        self.good_bytes = 0
        self.error: Optional[str] = None

    def __iter__(self):
        fh, crc = self.fh, self.crc
        while True:
            try:
                header = fh.read(12)
            except (EOFError, OSError, zlib.error) as e:  # a compressed stream cut short or corrupt
                self.error = _stream_error(e, self.kind)
                return
            if not header:
                return
            if len(header) < 12:
                self.error = "truncated record header"
                return
            length, header_crc = struct.unpack("<QI", header)
            if _masked(crc(header[:8])) != header_crc:
                self.error = "record length fails its CRC check"
                return
            try:
                data = fh.read(length)
                footer = fh.read(4)
            except (EOFError, OSError, zlib.error) as e:
                self.error = _stream_error(e, self.kind)
                return
            if len(data) < length or len(footer) < 4:
                self.error = "truncated record"
                return
            if _masked(crc(data)) != struct.unpack("<I", footer)[0]:
                self.error = "record data fails its CRC check"
                return
            self.good_bytes += length + _RECORD_OVERHEAD
            yield data


def _stream_error(e: BaseException, kind: Optional[str]) -> str:
    if isinstance(e, EOFError):
        return f"the {kind} stream ends early (a file still being written, or cut)"
    return f"the {kind} stream is corrupt ({e})"


def _compression(head: bytes, crc) -> Optional[str]:
    """"gzip", "zlib" or None from a file's first bytes. A zlib header (RFC 1950: deflate, and a
    check sum of the first two bytes) could also begin a plain record's length, so it counts only
    when those bytes are not a plain record header with a valid CRC."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if (len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
            and not (len(head) >= 12 and _masked(crc(head[:8])) == struct.unpack("<I", head[8:12])[0])):
        return "zlib"
    return None


class _Inflated:
    """A zlib stream read as a file: `read(n)` gives the next n decompressed bytes (fewer at its
    end); EOFError when the file ends before the stream does."""

    def __init__(self, fh):
        self.fh, self.z = fh, zlib.decompressobj()
        self.buf, self.pos = b"", 0

    def read(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n and not self.z.eof:
            data = self.z.unconsumed_tail or self.fh.read(1 << 16)
            if not data:
                raise EOFError("the file ends inside the zlib stream")
            self.buf = self.buf[self.pos:] + self.z.decompress(data, 1 << 20)  # bounded output
            self.pos = 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def _read_file(f: Path, run: _Run, event_pb2, tensor_util, crc, result: SourceResult) -> None:
    from google.protobuf.message import DecodeError  # protobuf comes with tensorboard

    try:
        fh = open(f, "rb", buffering=1 << 20)
    except OSError as e:
        result.problems.append(Problem(str(f), "", f"cannot read: {e.strerror or e}"))
        return
    with fh:
        head = fh.peek(len(LFS_MAGIC))[:len(LFS_MAGIC)]
        if head == LFS_MAGIC:
            result.problems.append(Problem(str(f), "", "this is a git-LFS pointer file, not the "
                                           "event file itself: fetch the content first "
                                           "(`git lfs pull`)"))
            return
        compressed = _compression(head, crc)
        stream = (gzip.GzipFile(fileobj=fh, mode="rb") if compressed == "gzip"
                  else _Inflated(fh) if compressed == "zlib" else fh)
        records = _Records(stream, crc, compressed)
        count = 0
        try:
            for raw in records:
                count += 1
                try:
                    event = event_pb2.Event.FromString(raw)
                except DecodeError:  # its CRC passed: another kind of TFRecord file
                    records.error = "a record is not a TensorBoard Event protobuf"
                    records.good_bytes -= len(raw) + _RECORD_OVERHEAD
                    count -= 1
                    break
                run.wall(event.wall_time)
                if event.HasField("summary"):  # not file_version, graph_def, session_log, ...
                    for value in event.summary.value:
                        _take_value(value, event, run, tensor_util)
        finally:
            if compressed == "gzip":
                stream.close()
    where = f"byte {{}} of the decompressed {compressed} stream" if compressed else "byte {}"
    if records.error and count == 0:
        result.problems.append(Problem(str(f), where.format(0), f"no readable TFRecord "
                                       f"({records.error}): not a TensorBoard event file"
                                       f"{f' ({compressed}-compressed)' if compressed else ''}, or corrupt "
                                       "from the start"))
        return
    run.files_read += 1
    if records.error:
        result.notes.append(f"{f}: kept the {count} whole records before "
                            f"{where.format(records.good_bytes)}; then {records.error} (a file "
                            "still being written?): the rest of the file was not read")


def _take_value(value, event, run: _Run, tensor_util) -> None:
    tag = value.tag
    if tag not in run.metadata and value.metadata.plugin_data.plugin_name:
        run.metadata[tag] = value.metadata  # TF2 writes it on a tag's first value only
    first = run.metadata.get(tag)
    plugin = first.plugin_data.plugin_name if first is not None else ""
    if plugin == "hparams":  # written with or without a tensor, depending on the writer
        if tag == "_hparams_/session_start_info":
            run.params.update(_hparams(value.metadata.plugin_data.content
                                       or first.plugin_data.content))
        return
    kind = value.WhichOneof("value")
    if kind == "simple_value":  # TF1, PyTorch, tensorboardX
        number: Optional[float] = float(value.simple_value)
    elif kind == "tensor" and plugin == "scalars":  # TF2
        number = _scalar(value.tensor, tensor_util)
        if number is None:
            run.skipped["scalars (not one number)"] += 1
            return
    else:  # histo, image, audio, or tensors of other plugins
        run.skipped[plugin or kind or "(empty)"] += 1
        return
    steps, stamps, values = run.series.setdefault(tag, ([], [], []))
    steps.append(event.step)
    stamps.append(seconds_ms(event.wall_time) if event.wall_time > 0 else None)
    values.append(number)


def _scalar(t, tensor_util) -> Optional[float]:
    """The one number of a scalar tensor, in any encoding (float_val, double_val, tensor_content...)."""
    if len(t.float_val) == 1 and not t.tensor_content and not t.tensor_shape.dim:
        return float(t.float_val[0])  # the common case, without numpy's per-call cost
    try:
        arr = tensor_util.make_ndarray(t)
    except (TypeError, ValueError):
        return None
    if arr.size != 1 or arr.dtype.kind not in "fiub":
        return None
    return float(arr.reshape(-1)[0])


def _hparams(content: bytes) -> dict[str, str]:
    """session_start_info.hparams -> params; integral numbers without `.0`."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out: dict = {}
    for key, v in data.session_start_info.hparams.items():
        kind = v.WhichOneof("kind")
        if kind == "number_value":
            n = v.number_value
            out[key] = int(n) if math.isfinite(n) and n.is_integer() else n
        elif kind == "string_value":
            out[key] = v.string_value
        elif kind == "bool_value":
            out[key] = v.bool_value
        elif kind == "null_value":
            out[key] = None
    return flatten_params(dict(sorted(out.items())))


def _record(identity: Path, folder: Path, named_root: Optional[Path], run: _Run,
            options: SourceOptions, result: SourceResult) -> RunRecord:
    if named_root is not None and folder.resolve() != named_root:
        name = folder.resolve().relative_to(named_root).as_posix()
    else:
        name = folder.name or str(folder)
    experiment = options.experiment or folder.resolve().parent.name or NAME
    rec = RunRecord(experiment=experiment, import_key=import_key(NAME, str(identity), ""),
                    origin=f"{identity}: {name}", name=name, params=run.params)
    if run.first_wall is not None:
        rec.start_time = seconds_ms(run.first_wall)
        rec.end_time = seconds_ms(run.last_wall)

    metrics = Metrics(str(identity), result)
    for tag, (steps, stamps, values) in run.series.items():
        metrics.add(options.key_prefix + tag, metric_table(steps, values, stamps), f"tag {tag!r}")
    metrics.finish(rec)
    if run.skipped:
        result.notes.append(f"{rec.origin}: skipped values that are not scalars: "
                            + ", ".join(f"{k}: {n}" for k, n in sorted(run.skipped.items())))
    return rec
