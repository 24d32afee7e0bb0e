"""The time rules of importer/sources/times.py, one table each. No server."""

import math
from datetime import datetime, timezone

import pytest

from importer.sources import times

T0 = int(datetime(2021, 8, 12, 19, 7, 24, tzinfo=timezone.utc).timestamp()) * 1000  # 1628795244000


@pytest.mark.parametrize("line, expected", [
    ("2021-08-12 19:07:24,634 - INFO - loss 0.5", (T0 + 634, True)),
    ("[2021/08/12 19:07:24] epoch 1", (T0, True)),
    ("at 2021-08-12T19:07:24.123456789Z done", (T0 + 123, False)),  # cut to ms, not rounded
    ("2021-08-12T21:07:24+02:00", (T0, False)),
    ("2021-08-12 14:37:24.5-0430", (T0 + 500, False)),
    ("2021-02-30 10:00:00 not a day", (None, False)),
    ("no time here", (None, False)),
])
def test_time_in_line(line, expected):
    assert times.time_in_line(line) == expected


@pytest.mark.parametrize("text, expected", [
    ("2021-08-12T19:07:24Z", T0),
    ("2021-08-12T19:07:24", T0),  # no offset: UTC
    ("2021-08-12T21:07:24+02:00", T0),
    ("2021-08-12T19:07:24.250000", T0 + 250),
    ("yesterday", None),
    ("", None),
])
def test_iso_ms(text, expected):
    assert times.iso_ms(text) == expected


@pytest.mark.parametrize("seconds, expected", [
    (1628795244.634, 1628795244634), (0.0, 0), (1.9999, 1999), (-1.5, -1500),
    (math.inf, None), (-math.inf, None), (math.nan, None),
])
def test_seconds_ms(seconds, expected):
    assert times.seconds_ms(seconds) == expected


@pytest.mark.parametrize("largest, ms_per_unit", [
    (None, 1000.0), (1.7e9, 1000.0), (99_999_999_999, 1000.0),  # seconds until the year 5138
    (1e11, 1.0), (1.7e12, 1.0),  # milliseconds
])
def test_epoch_scale(largest, ms_per_unit):
    assert times.epoch_scale(largest) == ms_per_unit
