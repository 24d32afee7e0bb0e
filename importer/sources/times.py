"""Times in training logs -> milliseconds since the epoch, each rule written once.

The rules differ by what they read: a date-time printed somewhere in a log line
(`time_in_line`), a whole ISO 8601 field (`iso_ms`), a number of seconds (`seconds_ms`), and a
column of numbers whose largest value tells seconds from milliseconds (`epoch_scale`; the column
itself is converted in columns.TimeColumn). A time without a UTC offset is read as UTC; callers
note or tag that. Manifests have their own, stricter rule (model.Timestamp needs an offset).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Optional

# A date-time as loggers print it: `2021-08-12 19:07:24,634`, also with `/` or `T`, a fraction
# after `,` or `.`, and an optional offset (`Z`, `+02:00`, `+0200`).
LINE_TIME = re.compile(r"(\d{4})[-/](\d\d)[-/](\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[,.](\d{1,9}))?"
                       r"(Z|[+-]\d\d:?\d\d)?")
SECONDS_BELOW = 1e11  # a time column whose numbers are all below this holds seconds (until 5138)


def time_in_line(text: str) -> tuple[Optional[int], bool]:
    """(ms since the epoch, naive?) of the first date-time in `text`, or (None, False).
    A time without offset is read as UTC; the fraction is cut to milliseconds."""
    m = LINE_TIME.search(text)
    if not m:
        return None, False
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError:
        return None, False
    ms = int((frac or "0")[:3].ljust(3, "0"))
    naive = tz is None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[-2:]))
    return int(dt.timestamp()) * 1000 + ms, naive


def iso_ms(text: str) -> Optional[int]:
    """ms since the epoch of a whole ISO 8601 string (`Z` or an offset; none is read as UTC), or
    None when it is not one. Computed from float seconds, as W&B's own readers do."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def seconds_ms(seconds: float) -> Optional[int]:
    """ms since the epoch of a number of seconds since the epoch (truncated), or None when it is
    not finite."""
    return int(seconds * 1000) if math.isfinite(seconds) else None


def epoch_scale(largest: Optional[float]) -> float:
    """Milliseconds per unit of a time column of numbers whose largest |value| is `largest`:
    seconds below SECONDS_BELOW, milliseconds from there."""
    return 1000.0 if largest is None or largest < SECONDS_BELOW else 1.0
