"""Points a source changed after they were sent (issue 14), and the ledger's progress for every key
compared: against a real `mlflow server`, read back through its REST API."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

import importer
from conftest import ROOT, View, run_importer, write_json

MAX_DOUBLE = sys.float_info.max
T0 = 1_700_000_000_000


def manifest(experiment: str, loss: list, *, stamps: bool = True) -> dict:
    """One run: `loss` at steps 0.., with a timestamp per point (or none: derived from the start
    time), and an `acc` series that never changes."""
    doc = {"experiment": experiment, "id": "edited", "name": "edited", "start_time": T0,
           "metrics": {"loss": {"step": list(range(len(loss))), "value": loss},
                       "acc": {"step": [0, 1, 2], "value": [0.1, "NaN", "Infinity"],
                               "timestamp": [T0 + 1, T0 + 2, T0 + 3]}}}
    if stamps:
        doc["metrics"]["loss"]["timestamp"] = [T0 + 10 * i for i in range(len(loss))]
    return doc


def stamp(i: int, stamps: bool) -> int:
    return T0 + 10 * i if stamps else T0


def history(view: View, experiment: str, key: str) -> list[tuple]:
    [run] = view.runs(experiment)
    return view.history(run["info"]["run_id"], key)


@pytest.mark.parametrize("stamps", [True, False], ids=["timestamps", "derived-timestamps"])
@pytest.mark.parametrize("keep_ledger", [True, False], ids=["with-ledger", "ledger-lost"])
def test_changed_point_is_reported_then_appended_on_request(uri, view, experiment, tmp_path, keep_ledger, stamps):
    state = tmp_path / "ledger.db"
    loss = [1.0, 0.5, "NaN", "-Infinity", 0.25]
    path = write_json(tmp_path / "m.json", manifest(experiment, loss, stamps=stamps))
    first = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--json")
    assert first.returncode == 0, first.stderr
    if not keep_ledger:
        for f in tmp_path.glob("ledger.db*"):
            f.unlink()

    loss[1] = 0.4  # step 1 corrected at the source, and the log grew by one point
    loss.append(0.125)
    write_json(path, manifest(experiment, loss, stamps=stamps))
    left = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--json")
    assert left.returncode == 1, left.stdout + left.stderr
    summary = json.loads(left.stdout)
    [detail] = summary["details"]
    assert detail["action"] == "changed" and detail["changed"] == {"loss": 1}
    assert summary["runs"]["changed"] == 1 and summary["points"] == 1  # only the new step 5
    [run] = view.runs(experiment)
    assert detail["run_id"] == run["info"]["run_id"]
    expected = [(0, stamp(0, stamps), 1.0), (1, stamp(1, stamps), 0.5), (2, stamp(2, stamps), "NaN"),
                (3, stamp(3, stamps), -MAX_DOUBLE), (4, stamp(4, stamps), 0.25), (5, stamp(5, stamps), 0.125)]
    assert history(view, experiment, "loss") == expected  # the stored value stays
    text = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state))
    assert text.returncode == 1  # said again on every import until the user chooses
    out = text.stdout.decode()
    assert "loss: 1 point" in out and run["info"]["run_id"] in out and "--on-metric-change append" in out

    appended = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--json",
                            "--on-metric-change", "append")
    assert appended.returncode == 0, appended.stdout + appended.stderr
    [detail] = json.loads(appended.stdout)["details"]
    assert detail["action"] == "appended" and detail["points"] == 1 and detail["changed"] == {"loss": 1}
    assert history(view, experiment, "loss") == sorted(expected + [(1, stamp(1, stamps), 0.4)])
    assert history(view, experiment, "acc") == [(0, T0 + 1, 0.1), (1, T0 + 2, "NaN"), (2, T0 + 3, MAX_DOUBLE)]

    again = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--json")
    assert again.returncode == 0, again.stdout + again.stderr  # every source point is on the server
    assert json.loads(again.stdout)["details"][0]["action"] == "unchanged"


def test_unknown_metric_change_policy_writes_nothing(uri, view, experiment, tmp_path):
    path = write_json(tmp_path / "m.json", manifest(experiment, [1.0]))
    with pytest.raises(importer.InputError, match="--on-metric-change 'drop'"):
        importer.import_paths([path], uri, state=tmp_path / "l.db", on_metric_change="drop")
    cli = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(tmp_path / "l.db"),
                       "--on-metric-change", "drop")
    assert cli.returncode == 2 and b"--on-metric-change" in cli.stderr
    assert view.runs(experiment) == []


def test_fresh_ledger_records_every_key_compared(uri, view, experiment, tmp_path):
    """A re-import with a new ledger compares every series with the server; a later growth of one
    key then sends only that key's new points, not the other keys again."""
    doc = {"experiment": experiment, "id": "wide", "name": "wide", "start_time": T0,
           "metrics": {k: {"step": list(range(1200)), "value": [i / 3 for i in range(1200)]}
                       for k in ("a", "b", "c")}}
    path = write_json(tmp_path / "m.json", doc)
    assert importer.import_paths([path], uri, state=tmp_path / "first.db").points == 3600
    fresh = tmp_path / "fresh.db"
    compared = importer.import_paths([path], uri, state=fresh)
    assert compared.count("unchanged") == 1 and compared.points == 0

    doc["metrics"]["b"]["step"] += [1200, 1201]
    doc["metrics"]["b"]["value"] += [9.0, 9.5]
    write_json(path, doc)
    grown = importer.import_paths([path], uri, state=fresh)
    assert grown.count("appended") == 1 and grown.points == 2, grown.text()
    assert len(history(view, experiment, "b")) == 1202 and len(history(view, experiment, "a")) == 1200


def _csv(path, rows: range, edited: dict[int, float] = {}) -> None:
    with open(path, "w") as f:
        f.write("step,wall,loss,acc\n")
        f.writelines(f"{i},{1718000000 + i},{edited.get(i, 1 / (i + 1))!r},{i / 7!r}\n" for i in rows)


def test_streamed_log_with_a_changed_point(uri, view, experiment, tmp_path, monkeypatch):
    """A CSV log is streamed from the file; a value changed among the rows already sent is found
    while the file is read (the ledger's digest of them), before any later point of its series
    is sent, and the run is compared with the server."""
    from importer.sources import delimited
    from importer.sources.base import SourceOptions

    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 14)  # many blocks: the change is mid-stream
    options = SourceOptions(step_column="step", time_column="wall", experiment=experiment)
    state, path = tmp_path / "ledger.db", tmp_path / "log.csv"
    _csv(path, range(3000))
    assert importer.import_paths([path], uri, state=state, options=options).points == 6000

    _csv(path, range(3100), edited={2000: 0.5})
    left = importer.import_paths([path], uri, state=state, options=options)
    [out] = left.outcomes
    assert out.action == "changed" and out.changed == {"loss": 1} and left.points == 200, left.text()
    loss = dict(((s, v) for s, _, v in history(view, experiment, "loss")))
    assert len(loss) == 3100 and loss[2000] == 1 / 2001

    appended = importer.import_paths([path], uri, state=state, options=options, on_metric_change="append")
    assert appended.outcomes[0].action == "appended" and appended.points == 1
    assert [v for s, _, v in history(view, experiment, "loss") if s == 2000] == sorted([0.5, 1 / 2001])


@pytest.mark.parametrize("trial", range(2))
def test_kill_9_between_changes_then_rerun_reports_exactly(uri, view, experiment, tmp_path, trial):
    """Imports killed at random moments, before and after the source changed a point already
    sent and grew: the rerun sends every new point and reports a run as changed exactly when the
    value stored at that point is not the source's."""
    from test_faults import family, import_args, import_killed

    doc = family(experiment, tmp_path, runs=3, keys=3, steps=3000)
    path = write_json(tmp_path / "m.json", doc)
    rng = random.Random(trial)
    args = import_args(path, uri, tmp_path / "ledger.db")
    import_killed(args, rng.uniform(1.0, 4.0))  # the first import, unfinished
    for child in doc["runs"][0]["runs"]:
        child["metrics"]["k0"]["value"][1] = -1.0
        for cols in child["metrics"].values():
            cols["step"] += list(range(3000, 3500))
            cols["timestamp"] += [1600000000000 + s * 1000 for s in range(3000, 3500)]
            cols["value"] += [s / 3 for s in range(3000, 3500)]
    write_json(path, doc)
    import_killed(args, rng.uniform(1.0, 4.0))  # the changed source, unfinished

    res = subprocess.run(args + ["--json"], cwd=ROOT, capture_output=True)
    summary = json.loads(res.stdout)
    outcomes = {d["import_key"]: d for d in summary["details"]}
    runs = view.by_key(experiment)
    for child in doc["runs"][0]["runs"]:
        run_id = runs[child["id"]]["info"]["run_id"]
        for key, cols in child["metrics"].items():
            stored = view.history(run_id, key)
            assert [p for p in stored if p[0] >= 3000] == sorted(zip(cols["step"], cols["timestamp"], cols["value"]))[3000:]
            assert len(stored) == 3500, (child["id"], key)  # one value per step: nothing appended
        [(_, _, at_1)] = [p for p in view.history(run_id, "k0") if p[0] == 1]
        expected = {"k0": 1} if at_1 != -1.0 else {}
        assert outcomes[child["id"]]["changed"] == expected, (child["id"], at_1)
    assert res.returncode == (1 if summary["runs"].get("changed") else 0), res.stderr
