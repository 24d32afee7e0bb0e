"""Load a JSON manifest with its metric columns as Arrow arrays, in bounded memory.

A columnar metric (`{"step": [...], "value": [...], "timestamp": [...]}`) is the form for long
histories, so its arrays never become Python lists for the whole series: a file up to
`STREAM_ABOVE` bytes is read with the stdlib (exact line/column for syntax errors) and its columns
converted; a larger one is streamed with ijson and each column is converted in chunks of `CHUNK`
items. Both paths share `column_array`, so they accept and reject exactly the same values.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any, Optional

import pyarrow as pa
from pydantic import AwareDatetime, TypeAdapter
from pydantic import ValidationError as PydanticError

from ..errors import Problem
from ..model import INT64_MAX, INT64_MIN, SPECIAL_VALUES, Column, to_ms
from ..model.values import NumberText, float_problem, int64_problem, number_text, shown

STREAM_ABOVE = 32 * 2**20
CHUNK = 65536
COLUMN_TYPES = {"step": pa.int64(), "value": pa.float64(), "timestamp": pa.int64()}
_ISO = TypeAdapter(AwareDatetime)
# Where float() or int() would not give a number exactly: an exponent of 3 digits or more (1e400
# is infinite to float()), or 309 digits in a row (a float beyond 1.8e308; an integer int() may
# refuse to convert, the lowest limit Python allows being 640 digits). A string may match too:
# reading is then only slower. Two searches: one pattern of both takes ten times as long.
_MAY_BE_INEXACT = (re.compile(rb"[eE][+-]?[0-9]{3}"), re.compile(rb"[^0-9][0-9]{309}"))


def _item(kind: str, v: Any) -> tuple[Any, Optional[str]]:
    """One column item converted, or the reason it is refused (the manifest's rules)."""
    if isinstance(v, NumberText):
        return None, float_problem(v) if kind == "value" else int64_problem(v)
    if kind == "value":
        if type(v) in (int, float):
            if error := float_problem(v):
                return None, error
            return float(v), None
        if isinstance(v, str) and v in SPECIAL_VALUES:
            return SPECIAL_VALUES[v], None
        return None, f'must be a number or one of "NaN", "Infinity", "-Infinity", got {v!r}'
    if type(v) is int:
        return (v, None) if INT64_MIN <= v <= INT64_MAX else (None, int64_problem(v))
    if kind == "timestamp" and isinstance(v, str):
        try:
            return to_ms(_ISO.validate_python(v)), None
        except PydanticError:
            pass
    what = "an integer" if kind == "step" else "milliseconds since the epoch (an integer) or ISO 8601 with a UTC offset"
    return None, f"must be {what}, got {v!r}"


def column_array(kind: str, items: list, start: int, where: str, problems: list[Problem],
                 file: str) -> pa.Array:
    """Convert a list of column items to Arrow; bad items become problems at `where[index]`."""
    # Fast path: plain numbers of the right Python type (pyarrow alone would accept 1.5 as a step).
    if kind == "value" and all(type(v) in (int, float) for v in items):
        try:  # an int beyond int64 is refused by Arrow, even where a float holds it
            return pa.array(items, pa.float64())
        except (OverflowError, pa.ArrowInvalid):
            pass
    if kind != "value" and all(type(v) is int for v in items):
        try:
            return pa.array(items, pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            pass
    out = []
    for i, v in enumerate(items):
        converted, error = _item(kind, v)
        if error:
            if len(problems) < 100:  # a broken column of millions should not print millions
                problems.append(Problem(file, f"{where}[{start + i}]", error))
        out.append(converted)
    return pa.array(out, COLUMN_TYPES[kind])


def _runs_columns(node: Any, where: str, problems: list[Problem], file: str) -> None:
    """Replace the column lists of every run below `node` (a run or the manifest) by Columns."""
    if not isinstance(node, dict):
        return
    metrics = node.get("metrics")
    if isinstance(metrics, dict):
        for key, metric in metrics.items():
            if not isinstance(metric, dict):
                continue
            for kind in COLUMN_TYPES:
                if isinstance(metric.get(kind), list):
                    at = _join(where, "metrics", key, kind)
                    metric[kind] = Column(column_array(kind, metric[kind], 0, at, problems, file))
    runs = node.get("runs")
    if isinstance(runs, list):
        for i, child in enumerate(runs):
            _runs_columns(child, f"{_join(where, 'runs')}[{i}]", problems, file)


def _join(where: str, *parts: str) -> str:
    for part in parts:
        part = part if part.isidentifier() else json.dumps(part)
        where = f"{where}.{part}" if not part.startswith('"') else f"{where}[{part}]"
    return where.lstrip(".")


def load(stream: IO[bytes], size: Optional[int], file: str, problems: list[Problem]) -> Any:
    """The document, with metric columns as `Column`s; syntax errors become problems (and None)."""
    if size is not None and size > STREAM_ABOVE:
        return _stream(stream, file, problems)
    try:
        # Numbers Python converts to no exact number (too many digits, beyond +-1.8e308) stay
        # their text, and are named where they stand. That care costs a Python call per number
        # (most of the reading time), so it is taken only when the text may hold such a number.
        data = stream.read()
        inexact = (not json.detect_encoding(data).startswith("utf-8")  # the patterns are UTF-8's
                   or any(pattern.search(data) for pattern in _MAY_BE_INEXACT))
        exact = {"parse_int": number_text, "parse_float": number_text} if inexact else {}
        doc = json.loads(data, **exact)
    except UnicodeDecodeError as e:
        problems.append(Problem(file, f"byte {e.start}", "the file is not UTF-8 text"))
        return None
    except json.JSONDecodeError as e:
        problems.append(Problem(file, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}"))
        return None
    except ValueError:  # a document that is one number of thousands of digits, and no object
        problems.append(Problem(file, "", "the document is a number too long to read, not a JSON object"))
        return None
    _runs_columns(doc, "", problems, file)
    return doc


class _ColumnBuilder:
    """Collects one streamed column in chunks, so only CHUNK Python objects live at a time."""

    def __init__(self, kind: str, where: str, problems: list[Problem], file: str):
        self.kind, self.where, self.problems, self.file = kind, where, problems, file
        self.items: list = []
        self.chunks: list[pa.Array] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count + len(self.items)

    def append(self, value: Any) -> None:
        self.items.append(value)
        if len(self.items) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        self.chunks.append(column_array(self.kind, self.items, self.count, self.where, self.problems, self.file))
        self.count += len(self.items)
        self.items = []

    def finish(self) -> Column:
        self._flush()
        return Column(pa.chunked_array(self.chunks, COLUMN_TYPES[self.kind]))  # no copy


def _stream(stream: IO[bytes], file: str, problems: list[Problem]) -> Any:
    """Build the document from ijson events; run-metric columns go to _ColumnBuilders. The C
    parser refuses integers beyond 64 bits as a syntax error; such a file is read again with
    ijson's Python parser, so the number is named like in a small file."""
    import ijson

    before = len(problems)
    try:
        return _build(ijson.parse(stream, use_float=True), file, problems)
    except ijson.JSONError as e:
        if "integer overflow" not in str(e):
            _syntax_problem(e, file, problems)
            return None
    del problems[before:]
    stream.seek(0)
    try:
        return _build(ijson.get_backend("python").parse(stream, use_float=True), file, problems)
    except ijson.JSONError as e:
        _syntax_problem(e, file, problems)
        return None


_REFUSED_NUMBER = re.compile(r"Unexpected symbol '(-?[0-9][0-9.eE+-]*)' at")


def _syntax_problem(e: Exception, file: str, problems: list[Problem]) -> None:
    """ijson's error as a problem; a number it refused (beyond +-1.8e308; an integer of more digits
    than int() converts, which its Python parser calls an unexpected symbol) is named where it
    stands, like the stdlib path names it (its later numbers are not read)."""
    first = str(e).splitlines()[0]
    where = getattr(e, "where", "")
    if m := _REFUSED_NUMBER.match(first):
        message = f"{shown(NumberText(m.group(1)))} is outside every number range the server stores"
    elif "overflow" in first:
        message = ("a number is outside the range of a 64-bit float (+-1.8e308); write \"Infinity\" "
                   "or \"-Infinity\" for an infinite value")
    else:
        where, message = "", f"invalid JSON: {first[:200]}"
    problems.append(Problem(file, where, message))


def _build(events, file: str, problems: list[Problem]) -> Any:

    # Stack entries: [container, pending key, role, path]. Roles: run (the root or an item of a
    # run's `runs`), runs, metrics, metric (a columnar metric), other.
    stack: list[list] = []
    root: Any = None

    def add(value: Any) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        top = stack[-1]
        if isinstance(top[0], dict):
            top[0][top[1]] = value
        else:
            top[0].append(value)

    def child(role_of_parent: str, key: Optional[str]) -> str:
        """The role of a container opening under the top of the stack."""
        if role_of_parent == "run" and key == "metrics":
            return "metrics"
        if role_of_parent == "run" and key == "runs":
            return "runs"
        if role_of_parent == "runs":
            return "run"
        if role_of_parent == "metrics":
            return "metric"
        return "other"

    def path_of(top: list) -> str:
        container, key, _, where = top
        return _join(where, key) if isinstance(container, dict) else f"{where}[{len(container)}]"

    try:
        for _, event, value in events:
            top = stack[-1] if stack else None
            if event == "map_key":
                top[1] = value
            elif event in ("start_map", "start_array"):
                role = "run" if top is None else child(top[2], top[1] if isinstance(top[0], dict) else None)
                where = "" if top is None else path_of(top)
                if (event == "start_array" and role == "other" and top[2] == "metric"
                        and top[1] in COLUMN_TYPES):
                    stack.append([_ColumnBuilder(top[1], where, problems, file), None, "column", where])
                    continue
                container: Any = {} if event == "start_map" else []
                add(container)
                stack.append([container, None, role, where])
            elif event in ("end_map", "end_array"):
                done = stack.pop()
                if done[2] == "column":
                    add(done[0].finish())
            elif top is not None and top[2] == "column":
                top[0].append(value)
            else:
                add(value)
    except UnicodeDecodeError:
        problems.append(Problem(file, "", "the file is not UTF-8 text"))
        return None
    except Exception as e:  # where the parser stopped: the next item of the open container
        if stack:
            e.where = path_of(stack[-1])
        raise
    return root
