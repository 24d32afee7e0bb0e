"""Generic CSV runs streamed from the file to a real `mlflow server`: validation first, then the
same bytes read again as they are sent (importer/sources/delimited_run.py)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import importer
from importer import pipeline
from importer.errors import ValidationError
from importer.sources import delimited, delimited_run
from importer.sources.base import SourceOptions
from conftest import CORPUS, ROOT, View, tags_of

KEYS = ("loss", "acc", "lr")


def _row(i: int) -> str:
    """step, wall (seconds), loss (NaN now and then), acc (sparse), lr (an infinity once)."""
    loss = "nan" if i % 997 == 5 else f"{1 / (i + 1):.17g}"
    acc = "" if i % 3 else f"{i / 7:.6f}"
    lr = "inf" if i == 17 else f"{0.1 * 0.999 ** i:.12g}"
    return f"{i * 2},{1718000000 + i * 0.25},{loss},{acc},{lr}\n"


def _expected(rows: range) -> dict[str, list[tuple]]:
    """What the server must hold per key: (step, timestamp ms, value as the server returns it)."""
    out: dict[str, list[tuple]] = {k: [] for k in KEYS}
    for i in rows:
        step, wall, *cells = _row(i).strip().split(",")
        ms = math.floor(float(wall) * 1000)
        for key, cell in zip(KEYS, cells):
            if cell == "":
                continue
            out[key].append((int(step), ms, _server_value(float(cell))))
    return {k: sorted(v) for k, v in out.items()}


def _write(path: Path, rows: range, header: bool = True) -> Path:
    with open(path, "a") as f:
        if header:
            f.write("step,wall,loss,acc,lr\n")
        f.writelines(_row(i) for i in rows)
    return path


def _options() -> SourceOptions:
    return SourceOptions(step_column="step", time_column="wall")


def _stored(view: View, experiment: str) -> tuple[dict, dict[str, list[tuple]]]:
    (run,) = view.runs(experiment)
    return run, {k: view.history(run["info"]["run_id"], k) for k in KEYS}


@pytest.fixture
def small_blocks(monkeypatch):
    """64 kB blocks: a file of a few MB is read in many blocks, as a big one is in 4 MB blocks."""
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 16)


@pytest.fixture
def never_whole(monkeypatch):
    """Fail the test if a run's points are all loaded at once (the sink's comparison path)."""
    def whole(self):
        raise AssertionError("the run was loaded whole instead of streamed")
    monkeypatch.setattr(delimited_run.DelimitedRun, "__call__", whole)
    return monkeypatch


def test_bad_cell_late_in_a_big_file_writes_nothing(uri, experiment, state, tmp_path, small_blocks):
    f = _write(tmp_path / "m.csv", range(60_000))
    lines = f.read_bytes().split(b"\n")
    cells = _row(58_000).strip().split(",")
    cells[3] = "oops"  # row 58,000 (line 58,002), column 4
    lines[58_001] = ",".join(cells).encode()
    f.write_bytes(b"\n".join(lines))
    with pytest.raises(ValidationError) as e:
        importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    (p,) = e.value.problems
    assert p.location == "line 58002 column 4 ('acc')" and "is not a number" in p.message, p
    assert View(uri).runs(experiment) == []  # not even the experiment's runs: nothing was written


def test_streamed_import_then_rerun_is_exact(uri, experiment, state, tmp_path, small_blocks, never_whole):
    f = _write(tmp_path / "m.csv", range(20_000))
    expected = _expected(range(20_000))
    summary = importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    assert summary.count("created") == 1 and not summary.failed
    assert summary.points == sum(map(len, expected.values()))
    view = View(uri)
    run, stored = _stored(view, experiment)
    assert stored == expected
    assert run["info"]["start_time"] == 1718000000000  # the earliest time of a point
    tags = tags_of(run)
    assert tags["importer.infinite_values"] == "lr" and "importer.derived_timestamps" not in tags
    assert "importer.derived_steps" not in tags

    again = importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    assert again.count("unchanged") == 1 and again.points == 0
    never_whole.undo()  # the ledger lost: the run is compared with the server's copy (loaded whole)
    lost = importer.import_paths([f], uri, experiment=experiment, options=_options(), state=tmp_path / "new.db")
    assert lost.count("unchanged") == 1 and lost.points == 0
    assert _stored(view, experiment)[1] == expected


def test_growth_between_validation_and_writing_sends_the_validated_bytes(
        uri, experiment, state, tmp_path, small_blocks, never_whole):
    f = _write(tmp_path / "m.csv", range(5_000))
    with open(f, "a") as out:
        out.write("10000,1718001250,0.5")  # a line still being written: not a point
    inputs = pipeline.read_inputs([f], experiment, options=_options())
    with open(f, "a") as out:  # the writer goes on between the validation pass and the writing pass
        out.write(",,0.01\n")
    _write(f, range(5_001, 6_000), header=False)
    summary = pipeline.import_records(inputs.records, uri, state=state)
    assert not summary.failed and summary.points == sum(map(len, _expected(range(5_000)).values()))
    view = View(uri)
    assert _stored(view, experiment)[1] == _expected(range(5_000))

    grown = importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    assert grown.count("appended") == 1
    _, stored = _stored(view, experiment)  # one run: the new points appended to it
    want = _expected([*range(5_000), *range(5_001, 6_000)])
    want["loss"] = sorted(want["loss"] + [(10000, 1718001250000, 0.5)])
    want["lr"] = sorted(want["lr"] + [(10000, 1718001250000, 0.01)])
    assert stored == want


def test_a_file_changed_after_validation_sends_nothing(uri, experiment, state, tmp_path):
    f = _write(tmp_path / "m.csv", range(100))
    inputs = pipeline.read_inputs([f], experiment, options=_options())
    f.write_bytes(f.read_bytes().replace(b"\n4,", b"\n5,", 1))  # same length, other content
    summary = pipeline.import_records(inputs.records, uri, state=state)
    (failed,) = summary.failed
    assert "changed since it was validated" in failed.error
    assert View(uri).runs(experiment) == []


def test_inspect_and_dry_run_report_points_and_steps(uri, experiment, tmp_path, small_blocks, never_whole):
    f = _write(tmp_path / "m.csv", range(10_000))
    expected = _expected(range(10_000))
    report = pipeline.inspect([f], experiment, options=_options())
    (run,) = report["runs"]
    assert run["metrics"] == {k: {"points": len(v), "steps": [v[0][0], v[-1][0]]} for k, v in expected.items()}
    never_whole.undo()  # a dry run compares with the server: it loads the run
    dry = importer.import_paths([f], uri, experiment=experiment, options=_options(), dry_run=True)
    assert dry.count("would-create") == 1 and dry.points == sum(map(len, expected.values()))
    assert View(uri).runs(experiment) == []


def test_kill_9_then_rerun_equals_one_clean_run(uri, experiment, tmp_path):
    f = _write(tmp_path / "m.csv", range(15_000))
    state = tmp_path / "ledger.db"
    args = [sys.executable, "-m", "importer", "import", str(f), "--format", "csv", "--step-column", "step",
            "--time-column", "wall", "--experiment", experiment, "--tracking-uri", uri,
            "--state", str(state), "--quiet"]
    rng = random.Random(7)
    for _ in range(2):  # two crashes at random moments, then a clean finish
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    res = subprocess.run(args, cwd=ROOT, capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _stored(View(uri), experiment)[1] == _expected(range(15_000))
    again = subprocess.run(args + ["--json"], cwd=ROOT, capture_output=True)
    assert json.loads(again.stdout)["runs"]["unchanged"] == 1


LIGHTNING = sorted(p for p in (CORPUS / "lightning").glob("*") if p.is_dir()) if CORPUS.is_dir() else []


@pytest.mark.skipif(not LIGHTNING, reason=f"the shared corpus is not at {CORPUS}")
@pytest.mark.parametrize("sample", LIGHTNING, ids=lambda p: p.name)
def test_lightning_corpus_streams_exactly(sample, uri, experiment, state, never_whole):
    """Lightning metrics.csv files are streamed too; the server holds exactly what loading the
    same records whole gives (tests/test_source_tables.py checks those against expected.json)."""
    summary = importer.import_paths([sample], uri, experiment=experiment, state=state)
    assert not summary.failed, [o.error for o in summary.failed]
    never_whole.undo()
    records = importer.read_records([sample], experiment)
    view = View(uri)
    runs = view.by_key(experiment)
    assert set(runs) == {r.import_key for r in records}
    assert summary.points == sum(r.point_count for r in records)
    for rec in records:
        if rec.load is not None:
            asyncio.run(rec.load())
        run = runs[rec.import_key]
        start = int(run["info"]["start_time"])
        for key, t in rec.metrics.items():
            want = sorted((s, start if ts is None else ts, _server_value(v)) for s, ts, v in
                          zip(t["step"].to_pylist(), t["timestamp"].to_pylist(), t["value"].to_pylist()))
            assert view.history(run["info"]["run_id"], key) == want, f"{rec.origin} {key}"


def _server_value(v: float):
    return "NaN" if math.isnan(v) else (math.copysign(sys.float_info.max, v) if math.isinf(v) else v)


def test_a_log_rewritten_shorter_is_compared_with_the_server(uri, experiment, state, tmp_path):
    """Fewer points than the ledger counts as sent: not a grown log, so not streamed on the
    ledger's word; the points the server lacks are found by comparing and sent."""
    f = _write(tmp_path / "m.csv", range(100))
    importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    f.unlink()
    _write(f, range(100, 150))
    summary = importer.import_paths([f], uri, experiment=experiment, options=_options(), state=state)
    assert summary.count("appended") == 1 and not summary.failed
    want = {k: sorted(a + b) for (k, a), b in zip(_expected(range(100)).items(), _expected(range(100, 150)).values())}
    assert _stored(View(uri), experiment)[1] == want
