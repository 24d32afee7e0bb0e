"""Value rules: what the MLflow server accepts and what it keeps, each written once.

Key characters and lengths, value lengths, int64 steps and times, NaN and +-Infinity (how they
are sent, and what the server gives back), and the canonical text of a param value. Sources check
records against these rules; sinks and `verify` compare with what the server stored through them.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

# Limits the MLflow server enforces (mlflow/utils/validation.py; tests/test_server_rules.py sends
# them to a real server).
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")
_INVALID_NAME_CHAR = re.compile(r"[^/\w.\- :]")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")

# JSON has no NaN nor Infinity: the server takes (and gives back) these strings.
SPECIAL_VALUES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
MAX_DOUBLE = sys.float_info.max  # what the server stores for +-Infinity

_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def key_problem(key: str, what: str) -> Optional[str]:
    """Why the MLflow server would reject `key` as a metric, param or tag name, or None."""
    if not key:
        return f"{what} name is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"{what} name is {len(key)} characters long; the server allows {MAX_KEY_LENGTH}"
    if not _VALID_NAME.match(key):
        bad = "".join(sorted(set(_INVALID_NAME_CHAR.findall(key))))
        return (f"{what} name {key!r} has characters the server rejects ({bad!r}); allowed are "
                "letters, digits, '_', '-', '.', '/', ':' and space")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        return f"{what} name {key!r} is not a plain relative path (the server rejects it)"
    return None


def replace_invalid_key_chars(key: str, by: str = "_") -> str:
    """`key` with every character the server rejects in a name replaced by `by`."""
    return _INVALID_NAME_CHAR.sub(by, key)


def value_problem(value: str, limit: int) -> Optional[str]:
    """Why a param or tag value cannot be written as it is, or None: longer than the server keeps
    (it would cut it silently), or holding a NUL character (PostgreSQL-backed servers refuse the
    write half-way through a run; no log or manifest holds one on purpose)."""
    if len(value) > limit:
        return f"value is {len(value)} characters long; the server allows {limit}"
    if "\0" in value:
        return (f"value holds a NUL character (\\x00) at position {value.index(chr(0))}; "
                "PostgreSQL-backed servers refuse it")
    return None


def to_ms(ts: int | datetime) -> int:
    """Milliseconds since the epoch; an aware datetime is converted exactly (no float rounding)."""
    if isinstance(ts, datetime):
        return (ts - _EPOCH) // _MS
    return ts


def param_string(value: Any) -> str:
    """The canonical string of a param value: strings as they are, anything else as JSON writes it
    (`true`, `null`, `0.1`, `1e-05`, `[]`, `{}`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, NumberText):
        return value.text
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested objects and lists to dotted keys: {"model": {"layers": [{"units": 8}]}} gives
    `model.layers.0.units = "8"`. Empty objects and lists keep their key with value `{}` / `[]`.
    Raises ValueError when two paths flatten to the same key."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        items = (value.items() if isinstance(value, dict)
                 else enumerate(value) if isinstance(value, list) else None)
        if items is None or not value:
            if key in out:
                raise ValueError(f"param {key!r} is given twice once nested keys are flattened")
            out[key] = param_string(value)
            return
        for k, v in items:
            walk(v, f"{key}.{k}" if key else str(k))

    for k, v in params.items():
        walk(v, f"{prefix}{k}")
    return out


class NumberText:
    """A number of a document that converts to no exact Python number, kept as its text: an integer
    of more digits than `int()` converts (sys.get_int_max_str_digits(), 4300 by default) or a
    decimal beyond +-MAX_DOUBLE. A param keeps it as written (param_string); as a step, time or
    value it is out of range (int64_problem, float_problem); no text field takes it."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, NumberText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def number_text(text: str) -> Any:
    """A JSON number's text as a number, or as NumberText when it converts to no exact number
    (json.loads' parse_int and parse_float)."""
    if "." in text or "e" in text or "E" in text:
        f = float(text)
        return f if not math.isinf(f) else NumberText(text)
    limit = sys.get_int_max_str_digits()
    if limit and len(text) - text.startswith("-") > limit:
        return NumberText(text)
    return int(text)


_INTEGER = re.compile(r"[+-]?[0-9]+")


def integer_text(text: str) -> Optional[int | NumberText]:
    """Digits, signed or not, as the exact integer (a float would round 2**63 + 1, and an
    out-of-range message would name another number), or as NumberText when there are more of
    them than int() converts; None for any other text."""
    if not _INTEGER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        return NumberText(text)


def shown(v: Any) -> str:
    """A number for a message: short ones as they are, long ones cut (a million digits stay out)."""
    if isinstance(v, NumberText):
        text = v.text
    elif isinstance(v, (str, float)):
        text = v if isinstance(v, str) else repr(v)
    else:  # an int: str() of a huge one is slow and may raise
        text = str(v) if v.bit_length() < 10000 else None
        if text is None:
            return f"an integer of about {int(v.bit_length() * 0.30103)} digits"
    if len(text) <= 40:
        return text
    digits = sum(c.isdigit() for c in text)
    return f"{text[:12]}... ({digits} digits)"


def int64_problem(v: Any) -> Optional[str]:
    """Why `v` (an int or a NumberText) is no 64-bit integer the server stores, or None."""
    if isinstance(v, NumberText) or not INT64_MIN <= v <= INT64_MAX:
        return f"{shown(v)} is outside the 64-bit integer range the server stores"
    return None


def float_problem(v: Any) -> Optional[str]:
    """Why `v` (an int, a float or a NumberText) is no 64-bit float, or None. A float is always one
    (infinities included: the strings "Infinity", "-Infinity" say them)."""
    if isinstance(v, NumberText):
        pass
    elif isinstance(v, int):
        try:
            float(v)
            return None
        except OverflowError:
            pass
    else:
        return None
    return (f"{shown(v)} is outside the range of a 64-bit float (+-1.8e308); write \"Infinity\" "
            "or \"-Infinity\" for an infinite value")


def metric_value(v: Any) -> float:
    """A number, or one of the strings of SPECIAL_VALUES, as a float (KeyError for other text)."""
    if isinstance(v, str):
        return SPECIAL_VALUES[v]
    return float(v)


def stored_value(v: Any) -> Any:
    """A run's metric value as the server gives it back, for comparing: NaN as the marker "NaN"
    (NaN equals nothing), +-Infinity clamped to +-MAX_DOUBLE."""
    if v == "NaN" or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    v = float(v)
    return math.copysign(MAX_DOUBLE, v) if math.isinf(v) else v


def model_stored_value(value: float) -> float:
    """A logged model's metric value as the server keeps it: the run's rule (stored_value), but NaN
    becomes 0.0 on the model side (the run keeps NaN)."""
    stored = stored_value(value)
    return 0.0 if stored == "NaN" else stored


# Registered models (mlflow/utils/validation.py: _validate_model_name, _validate_model_alias_name,
# _validate_model_alias_name_reserved; the SQL store's name and alias columns are String(256)).
MAX_MODEL_NAME_LENGTH = 256
MAX_ALIAS_LENGTH = 255
MAX_MODEL_TAG_VALUE_LENGTH = 100_000
_ALIAS = re.compile(r"^[\w\-]*$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")


def model_name_problem(name: str) -> Optional[str]:
    """Why the server would refuse `name` as a registered model's name, or None."""
    if not name.strip():
        return "model name is empty"
    if "/" in name or ":" in name:
        return f"model name {name!r} has '/' or ':' (the server refuses both)"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        return f"model name {name!r} is not a plain name (the server refuses names that resolve to {norm!r})"
    if len(name) > MAX_MODEL_NAME_LENGTH:
        return f"model name is {len(name)} characters long; the server allows {MAX_MODEL_NAME_LENGTH}"
    return None


def alias_problem(alias: str) -> Optional[str]:
    """Why the server would refuse `alias` for a model version, or None: empty, characters other
    than letters, digits, '_' and '-', too long, or reserved (`latest`, `v<number>`, any case)."""
    if not alias:
        return "alias is empty"
    if not _ALIAS.match(alias):
        return f"alias {alias!r} may hold only letters, digits, '_' and '-'"
    if len(alias) > MAX_ALIAS_LENGTH:
        return f"alias is {len(alias)} characters long; the server allows {MAX_ALIAS_LENGTH}"
    if alias.lower() == "latest" or _VERSION_ALIAS.match(alias):
        return f"alias {alias!r} is reserved by the server (`latest` and `v<number>` name versions)"
    return None
