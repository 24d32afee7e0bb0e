"""Numbers at and beyond every range (issue 14): a manifest, CSV or mlruns number that fits no
int64 or float64 is a problem naming file, location and field, never a traceback; a number in
range is read as written. No server."""

from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import importer
from importer.model import INT64_MAX, INT64_MIN
from importer.sources import jsondoc, mlruns, table
from importer.sources.base import SourceOptions
from importer.sources.manifest import ManifestReader

from conftest import run_importer

RUN = "0e1d2c3b4a5948372615f0e1d2c3b4a5"
FEW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _manifest(path: Path, metrics: str) -> Path:
    path.write_text('{"format_version": 1, "experiment": "e", "runs": [{"id": "r", "metrics": '
                    + metrics + "}]}")
    return path


def _store(root: Path, lines: str) -> Path:
    """An mlruns store of one run whose metric `loss` holds `lines`."""
    exp = root / "mlruns" / "1"
    (exp / RUN / "metrics").mkdir(parents=True)
    (exp / "meta.yaml").write_text("artifact_location: ./mlruns/1\ncreation_time: 1700000000000\n"
                                   "experiment_id: '1'\nlast_update_time: 1700000000000\n"
                                   "lifecycle_stage: active\nname: fx\n")
    (exp / RUN / "meta.yaml").write_text(
        f"artifact_uri: ./mlruns/1/{RUN}/artifacts\nend_time: null\nexperiment_id: '1'\n"
        f"lifecycle_stage: active\nname: x\nrun_id: {RUN}\nrun_uuid: {RUN}\nsource_type: 4\n"
        "start_time: 1700000010000\nstatus: 3\nuser_id: bob\n")
    (exp / RUN / "metrics" / "loss").write_text(lines)
    return root / "mlruns"


def _refused(proc, file: Path, *where: str) -> str:
    """The CLI's refusal: exit 2, a problem naming `file` and each of `where`, no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Error:" not in err.replace("error:", ""), err[-2000:]
    line = next(l for l in err.splitlines() if str(file) in l)
    for part in where:
        assert part in line, line
    return line


# ---------------------------------------------------------------------------------------------
# The five inputs of the issue, each through `importer validate` as a user runs it
# ---------------------------------------------------------------------------------------------


def test_manifest_integer_beyond_a_float(tmp_path):
    f = _manifest(tmp_path / "m.json", '{"loss": [{"step": 1, "value": 1' + "0" * 320 + "}]}")
    line = _refused(run_importer("validate", str(f)), f, "runs[0].metrics.loss[0].value")
    assert "64-bit float" in line


def test_manifest_column_value_beyond_2_64(tmp_path):
    f = _manifest(tmp_path / "m.json", '{"loss": {"step": [1, 2], "value": [1, %d]}}' % (2**64 + 1))
    # in range for a float: read as the nearest one
    (rec,) = importer.validate([f])
    assert rec.metrics["loss"]["value"].to_pylist() == [1.0, float(2**64 + 1)]
    g = _manifest(tmp_path / "g.json", '{"loss": {"step": [1, %d], "value": [1, 2]}}' % (2**64 + 1))
    _refused(run_importer("validate", str(g)), g, "runs[0].metrics.loss.step[1]", "64-bit integer")


@pytest.mark.parametrize("metrics, where", [
    ('{"loss": {"step": [1], "value": [%s]}}', "runs[0].metrics.loss.value[0]"),
    ('{"loss": {"step": [%s], "value": [1]}}', "runs[0].metrics.loss.step[0]"),
    ('{"loss": [{"step": 1, "value": %s}]}', "runs[0].metrics.loss[0].value"),
    ('{"loss": [{"step": 1, "value": 1, "timestamp": %s}]}', "runs[0].metrics.loss[0].timestamp"),
    ('{"loss": %s}', "runs[0].metrics.loss"),
])
def test_manifest_number_of_4400_digits(tmp_path, metrics, where):
    f = _manifest(tmp_path / "m.json", metrics % ("7" * 4400))
    with pytest.raises(importer.ValidationError) as e:
        importer.validate([f])
    (p,) = e.value.problems
    assert (p.file, p.location) == (str(f), where) and "4400 digits" in p.message, p
    assert len(p.message) < 200  # the number is cut, not printed


def test_manifest_number_of_4400_digits_cli(tmp_path):
    f = _manifest(tmp_path / "m.json", '{"loss": {"step": [1], "value": [%s]}}' % ("1" * 4400))
    _refused(run_importer("validate", str(f)), f, "runs[0].metrics.loss.value[0]", "4400 digits")


def test_long_number_param_is_kept_as_written(tmp_path):
    f = tmp_path / "m.json"
    f.write_text('{"experiment": "e", "id": "r", "params": {"n": %s, "x": 1e400}}' % ("9" * 4400))
    (rec,) = importer.validate([f])
    assert rec.params == {"n": "9" * 4400, "x": "1e400"}


@pytest.mark.parametrize("cell", ["nan", "inf", "-inf", "1e30", "-1e30", "9.3e18"])
def test_csv_time_column_not_a_time(tmp_path, cell):
    f = tmp_path / "m.csv"
    f.write_text(f"step,t,loss\n1,1700000000,0.5\n2,{cell},0.4\n")
    with pytest.raises(importer.ValidationError) as e:
        importer.validate([f], "e", options=SourceOptions(step_column="step", time_column="t"))
    (p,) = e.value.problems
    assert (p.file, p.location) == (str(f), "row 2 column 't'") and repr(cell) in p.message, p


def test_csv_time_column_nan_cli(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("step,t,loss\n1,nan,0.5\n")
    _refused(run_importer("validate", str(f), "--experiment", "e", "--step-column", "step",
                          "--time-column", "t"), f, "row 1 column 't'", "'nan'")


@pytest.mark.parametrize("cell", ["1e30", "9223372036854775808", "-9223372036854775809", "9" * 4400])
def test_csv_step_beyond_int64(tmp_path, cell):
    f = tmp_path / "m.csv"
    f.write_text(f"step,loss\n1,0.5\n{cell},0.4\n")
    with pytest.raises(importer.ValidationError) as e:
        importer.validate([f], "e", options=SourceOptions(step_column="step"))
    (p,) = e.value.problems
    assert (p.file, p.location) == (str(f), "row 2 column 'step'") and "64-bit" in p.message, p


def test_mlruns_step_beyond_int64_cli(tmp_path):
    store = _store(tmp_path, "1700000010000 0.5 1\n1700000011000 0.25 99999999999999999999\n")
    f = store / "1" / RUN / "metrics" / "loss"
    _refused(run_importer("validate", str(store)), f, "line 2", "step", "64-bit integer")


@pytest.mark.parametrize("line, field", [
    ("1700000010000 0.5 -9223372036854775809", "step"),
    ("99999999999999999999 0.5 1", "timestamp"),
    ("1700000010000 0.5 " + "1" * 4400, "step"),
])
def test_mlruns_fields_beyond_int64(tmp_path, line, field):
    store = _store(tmp_path, line + "\n")
    result = mlruns.read(store, SourceOptions())
    (p,) = result.problems + result.skipped  # the run is skipped, the rest of the store imported
    assert p.location == "line 1" and p.message.startswith(field) and "64-bit" in p.message, p


# ---------------------------------------------------------------------------------------------
# Properties: any number text in any numeric field is read as written or refused by a Problem
# ---------------------------------------------------------------------------------------------

_INT_EDGES = [0, 1, -1, 2**53 + 1, INT64_MAX, INT64_MIN, INT64_MAX + 1, INT64_MIN - 1, 2**64,
              2**64 + 1, 10**308, 2**1024, -(2**1024), 10**400]
INT_TEXTS = st.one_of(
    st.integers().map(str),
    st.sampled_from(_INT_EDGES).map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=4290, max_value=4400).map(lambda n: "9" * n),
)
FLOAT_TEXTS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e400", "-1e400", "1e-400", "-0.0", "1.7976931348623157e308",
                     "1.7976931348623159e308", "4.9e-324", "2e-324", "0." + "1" * 5000, "1" * 5000 + ".5"]),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-99, 99), st.integers(-500, 500)),
)
NUMBER_TEXTS = st.one_of(INT_TEXTS, FLOAT_TEXTS)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None


def _as_int(text: str):
    """The int of an integer text, or None when it is beyond int() (too many digits)."""
    return int(text) if len(text.lstrip("-")) <= sys.get_int_max_str_digits() else None


def _expected_int64(text: str):
    """What a step or time field must hold, or None for a refusal."""
    if not _is_int(text):
        return None
    n = _as_int(text)
    return n if n is not None and INT64_MIN <= n <= INT64_MAX else None


def _expected_float(text: str):
    if _is_int(text):
        n = _as_int(text)
        try:
            return None if n is None else float(n)
        except OverflowError:
            return None
    f = float(text)
    return None if math.isinf(f) else f


FIELDS = ("step", "value", "timestamp")


def _read_manifest(text: str, streamed: bool) -> ManifestReader:
    data = text.encode()
    size = jsondoc.STREAM_ABOVE + 1 if streamed else len(data)
    return ManifestReader(io.BytesIO(data), size, "m.json", Path("."), None)


@FEW
@given(step=NUMBER_TEXTS, value=NUMBER_TEXTS, stamp=NUMBER_TEXTS, shape=st.sampled_from(["points", "columns"]),
       streamed=st.booleans())
def test_manifest_numbers_property(step, value, stamp, shape, streamed):
    if shape == "points":
        metric = f'[{{"step": {step}, "value": {value}, "timestamp": {stamp}}}]'
    else:
        metric = f'{{"step": [0, {step}], "value": [0, {value}], "timestamp": [0, {stamp}]}}'
    text = '{"format_version": 1, "experiment": "e", "runs": [{"id": "r", "metrics": {"m": %s}}]}' % metric
    reader = _read_manifest(text, streamed)  # nothing but problems
    want = (_expected_int64(step), _expected_float(value), _expected_int64(stamp))
    if None in want:
        assert reader.problems  # (records count only when there are none)
        # (the streamed reader stops at the first number its parser refuses)
        for p in reader.problems:
            assert p.file == "m.json" and p.location.split(".")[-1].split("[")[0] in FIELDS, p
        return
    assert reader.problems == []
    (rec,) = reader.records
    got = rec.metrics["m"].to_pylist()[-1]
    assert (got["step"], got["value"], got["timestamp"]) == want


@FEW
@given(value=NUMBER_TEXTS, streamed=st.booleans())
def test_manifest_scalar_property(value, streamed):
    reader = _read_manifest('{"experiment": "e", "id": "r", "metrics": {"m": %s}}' % value, streamed)
    want = _expected_float(value)
    if want is None:
        assert reader.problems  # (records count only when there are none)
        assert [p.location for p in reader.problems] == ["metrics.m"]
        return
    assert reader.problems == []
    assert reader.records[0].metrics["m"]["value"].to_pylist() == [want]


CELLS = st.one_of(NUMBER_TEXTS, st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", " 1 ", "3.0",
                                                 "1e3", "", "NA", "x", "0x10", "1.5"]))


@FEW
@given(steps=st.lists(CELLS, min_size=1, max_size=4), stamps=st.lists(CELLS, min_size=1, max_size=4),
       values=st.lists(CELLS, min_size=1, max_size=4))
@example(steps=["0", "0"], stamps=["0", "0"], values=["0", "1"])  # one step, two values: both kept
def test_csv_numbers_property(tmp_path_factory, steps, stamps, values):
    n = min(len(steps), len(stamps), len(values))
    f = tmp_path_factory.mktemp("csv") / "m.csv"
    f.write_text("step,t,v\n" + "".join(f"{steps[i]},{stamps[i]},{values[i]}\n" for i in range(n)))
    result = table.read(f, SourceOptions(experiment="e", step_column="step", time_column="t"))
    for rec in result.records:
        if rec.load is not None and not result.problems:
            import asyncio
            asyncio.run(rec.load())
    for p in result.problems:
        assert p.file == str(f) and p.location, p
    if result.problems:
        return
    (rec,) = result.records
    got = rec.metrics["v"].to_pylist() if "v" in rec.metrics else []
    for point in got:  # every point read is a row's, its step and value as written
        written = [_float_of(values[i]) for i in range(n) if _step_of(steps[i]) == point["step"]]
        assert any(point["value"] == want or (math.isnan(want) and math.isnan(point["value"]))
                   for want in written if want is not None), (point, written)


def _float_of(cell: str):
    try:
        return float(cell)
    except ValueError:
        return None


def _step_of(cell: str):
    try:
        return int(float(cell)) if not _is_int(cell.strip()) else int(cell)
    except (ValueError, OverflowError):
        return None


@FEW
@given(stamp=NUMBER_TEXTS, value=st.one_of(NUMBER_TEXTS, st.sampled_from(["nan", "inf", "-inf"])),
       step=NUMBER_TEXTS)
def test_mlruns_metric_line_property(tmp_path_factory, stamp, value, step):
    store = _store(tmp_path_factory.mktemp("mlr"), f"1 1.0 0\n{stamp} {value} {step}\n")
    result = mlruns.read(store, SourceOptions())
    problems = result.problems + result.skipped
    want_step, want_stamp = _expected_int64(step), _expected_int64(stamp)
    if want_step is None or want_stamp is None:
        assert problems and all(p.location == "line 2" for p in problems), problems
        return
    assert problems == []
    (rec,) = result.records
    got = rec.metrics["loss"].to_pylist()[-1]
    want_value = float(value)
    assert (got["step"], got["timestamp"]) == (want_step, want_stamp)
    assert got["value"] == want_value or (math.isnan(want_value) and math.isnan(got["value"]))


@pytest.mark.parametrize("line, where", [
    (f"1700000010000 0.5 9223372036854775808 {RUN}", "step 9223372036854775808 is outside"),
    (f"-9223372036854775809 0.5 1 {RUN}", "timestamp -9223372036854775809 is outside"),
])
def test_mlruns_logged_model_metric_beyond_int64(tmp_path, line, where):
    """A logged model's metric line out of range is a problem naming the line, not a server 400."""
    store = _store(tmp_path, "1700000010000 0.5 1\n")
    model = store / "1" / "models" / "m-0123456789abcdef0123456789abcdef"
    (model / "metrics").mkdir(parents=True)
    (model / "meta.yaml").write_text("model_id: m-0123456789abcdef0123456789abcdef\nexperiment_id: '1'\n"
                                     "name: m\ncreation_timestamp: 1700000010000\nstatus: 2\n")
    (model / "metrics" / "acc").write_text(f"1700000010000 0.9 1 {RUN}\n{line}\n")
    result = mlruns.read(store, SourceOptions())
    (p,) = result.problems + result.skipped  # the point is left out, the rest of the store read
    assert p.file == str(model / "metrics" / "acc") and p.location == "line 2" and where in p.message, p
    (logged,) = result.logged_models
    assert [(m.step, m.value) for m in logged.doc.metrics] == [(1, 0.9)]


def test_text_log_pattern_step_beyond_int64_is_named_as_written(tmp_path):
    """A step read by --pattern is the integer written, not a float's rounding of it (which would
    name 9223372036854775808 for 9223372036854775809)."""
    from importer.sources import textlog

    f = tmp_path / "train.log"
    f.write_text("step 9223372036854775809 loss 1.0\nstep 3 loss 2.0\nstep 4.0 loss 1.5\n")
    result = textlog.read(f, SourceOptions(patterns=[r"step (?P<step>\S+) loss (?P<loss>\S+)"]))
    (p,) = result.problems
    assert p.location == "line 1" and "step 9223372036854775809 is outside" in p.message, p


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
@pytest.mark.parametrize("number", ["1e999", "-1E+400", "1" + "0" * 309 + ".5", "9" * 5000])
def test_a_number_beyond_float_is_named_in_any_encoding(encoding, number):
    """A document is read fast when no number in it can be inexact: one that is must still be
    found, whatever the encoding."""
    text = '{"format_version": 1, "experiment": "e", "runs": [{"id": "r", "metrics": {"m": {"step": [0, 1], ' \
           '"value": [0.5, %s]}}}]}' % number
    data = text.encode(encoding)
    reader = ManifestReader(io.BytesIO(data), len(data), "m.json", Path("."), None)
    assert [p.location for p in reader.problems] == ["runs[0].metrics.m.value[1]"], reader.problems
