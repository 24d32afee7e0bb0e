"""Importing manifests into a real `mlflow server`, reading back through its REST API."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import pytest

import importer
from conftest import ROOT, View, params_of, run_importer, tags_of, write_json

MAX_DOUBLE = sys.float_info.max


def study(experiment: str, tmp_path: Path) -> dict:
    (tmp_path / "art" / "sub").mkdir(parents=True, exist_ok=True)
    (tmp_path / "art" / "a.txt").write_text("alpha\n")
    (tmp_path / "art" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 400)  # 100 kB
    return {"format_version": 1, "experiment": experiment, "runs": [{
        "id": "parent", "name": "study", "user": "ana", "source": "tune.py",
        "description": "a **study**", "start_time": "2021-05-01T10:00:00+02:00",
        "end_time": 1619859600000 + 3_600_000,
        "params": {"search": {"trials": 2, "space": ["a", "b"]}, "seed": 7},
        "tags": {"team": "x"},
        "metrics": {"best": 0.9},
        "artifacts": [{"path": "art", "dest": "files"}],
        "runs": [
            {"id": "t0", "name": "trial-0", "status": "FAILED", "start_time": 1619859700000,
             "end_time": 1619859800000, "params": {"lr": 0.1},
             "metrics": {"loss": {"step": [0, 1, 2, 3], "value": [1.5, "NaN", "Infinity", "-Infinity"],
                                  "timestamp": [1619859700001, 1619859700002, 1619859700003, 1619859700004]}}},
            {"id": "t1", "name": "trial-1", "status": "KILLED", "start_time": 1619859900000,
             "params": {"lr": 0.01},
             "metrics": {"loss": [{"step": 10, "value": 0.5, "timestamp": "2021-05-01T09:06:00Z"},
                                  {"step": -1, "value": -0.0}]}},
        ]}]}


def test_round_trip_is_faithful(uri, experiment, state, tmp_path):
    path = write_json(tmp_path / "m.json", study(experiment, tmp_path))
    summary = importer.import_paths([path], uri, state=state)
    assert summary.count("created") == 3 and not summary.failed
    assert summary.points == 1 + 4 + 2 and summary.artifacts == 2

    runs = View(uri).by_key(experiment)
    parent, t0, t1 = runs["parent"], runs["t0"], runs["t1"]
    info = parent["info"]
    assert info["start_time"] == 1619856000000 and info["end_time"] == 1619859600000 + 3_600_000
    assert info["status"] == "FINISHED" and info["run_name"] == "study" and info["user_id"] == "ana"
    tags = tags_of(parent)
    assert tags["mlflow.user"] == "ana" and tags["mlflow.source.name"] == "tune.py"
    assert tags["mlflow.note.content"] == "a **study**" and tags["team"] == "x"
    assert params_of(parent) == {"search.trials": "2", "search.space.0": "a", "search.space.1": "b", "seed": "7"}

    assert t0["info"]["status"] == "FAILED" and t0["info"]["end_time"] == 1619859800000
    assert t1["info"]["status"] == "KILLED"
    assert tags_of(t0)["mlflow.parentRunId"] == info["run_id"] == tags_of(t1)["mlflow.parentRunId"]

    view = View(uri)
    assert view.history(t0["info"]["run_id"], "loss") == [
        (0, 1619859700001, 1.5), (1, 1619859700002, "NaN"),
        (2, 1619859700003, MAX_DOUBLE), (3, 1619859700004, -MAX_DOUBLE)]
    assert tags_of(t0)["importer.infinite_values"] == "loss"  # the truth the server cannot store
    # A point without timestamp gets the run's start time, and the run says so.
    assert view.history(t1["info"]["run_id"], "loss") == [(-1, 1619859900000, -0.0), (10, 1619859960000, 0.5)]
    assert "importer.derived_timestamps" in tags_of(t1)
    assert view.history(info["run_id"], "best") == [(0, 1619856000000, 0.9)]

    assert view.artifact(parent, "files/a.txt") == b"alpha\n"
    stored = view.artifact(parent, "files/sub/b.bin")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(bytes(range(256)) * 400).digest()


@pytest.mark.parametrize("keep_ledger", [True, False], ids=["with-ledger", "ledger-lost"])
def test_second_import_creates_nothing(uri, experiment, state, tmp_path, keep_ledger):
    path = write_json(tmp_path / "m.json", study(experiment, tmp_path))
    importer.import_paths([path], uri, state=state)
    before = View(uri).by_key(experiment)
    again = importer.import_paths([path], uri, state=state if keep_ledger else tmp_path / "other.db")
    assert again.count("unchanged") == 3 and again.points == 0 and again.artifacts == 0
    after = View(uri).by_key(experiment)
    assert {k: r["info"]["run_id"] for k, r in before.items()} == {k: r["info"]["run_id"] for k, r in after.items()}


@pytest.mark.parametrize("keep_ledger", [True, False], ids=["with-ledger", "ledger-lost"])
def test_grown_manifest_appends_only_new_points(uri, experiment, state, tmp_path, keep_ledger):
    doc = {"experiment": experiment, "id": "g", "name": "growing", "start_time": 1000,
           "metrics": {"loss": {"step": list(range(1500)), "value": [i / 7 for i in range(1500)]}}}
    path = write_json(tmp_path / "m.json", doc)
    importer.import_paths([path], uri, state=state)
    doc["metrics"]["loss"]["step"] += list(range(1500, 2600))
    doc["metrics"]["loss"]["value"] += [i / 7 for i in range(1500, 2600)]
    doc["metrics"]["acc"] = {"step": [0, 1], "value": [0.1, 0.2]}
    doc["status"] = "FINISHED"
    write_json(path, doc)
    summary = importer.import_paths([path], uri, state=state if keep_ledger else tmp_path / "other.db")
    assert summary.count("appended") == 1 and summary.points == 1100 + 2
    [run] = View(uri).runs(experiment)
    history = View(uri).history(run["info"]["run_id"], "loss")
    assert history == [(i, 1000, i / 7) for i in range(2600)]


def test_param_conflict_policies(uri, experiment, state, tmp_path):
    doc = {"experiment": experiment, "id": "c", "name": "c", "params": {"lr": 0.1, "depth": 3}}
    path = write_json(tmp_path / "m.json", doc)
    importer.import_paths([path], uri, state=state)
    doc["params"]["lr"] = 0.2
    doc["metrics"] = {"m": 1}
    write_json(path, doc)

    failed = importer.import_paths([path], uri, state=state)
    assert len(failed.failed) == 1 and "lr: stored '0.1', new '0.2'" in failed.failed[0].error
    [run] = View(uri).runs(experiment)
    assert "m" not in {m["key"] for m in run["data"].get("metrics", [])}, "nothing more was written"

    kept = importer.import_paths([path], uri, state=state, on_param_conflict="keep")
    assert not kept.failed and "kept stored params" in kept.outcomes[0].notes[0]
    [run] = View(uri).runs(experiment)
    assert params_of(run)["lr"] == "0.1" and run["data"]["metrics"][0]["key"] == "m"

    renamed = importer.import_paths([path], uri, state=state, on_param_conflict="rename")
    assert not renamed.failed
    [run] = View(uri).runs(experiment)
    alt = "lr.conflict-" + hashlib.sha256(b"0.2").hexdigest()[:8]
    assert params_of(run)[alt] == "0.2" and params_of(run)["lr"] == "0.1"
    # The rename is stable: a rerun finds the same key and logs nothing new.
    again = importer.import_paths([path], uri, state=tmp_path / "fresh.db", on_param_conflict="rename")
    assert again.count("unchanged") == 1


def test_one_failing_run_does_not_stop_the_others(uri, experiment, state, tmp_path):
    doc = {"format_version": 1, "experiment": experiment, "runs": [
        {"id": "orphan", "parent": "0" * 32, "metrics": {"m": 1}},
        {"id": "fine", "metrics": {"m": 2}},
        {"id": "child-of-orphan", "parent": "orphan"}]}
    path = write_json(tmp_path / "m.json", doc)
    res = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state))
    assert res.returncode == 1
    err = res.stdout.decode()
    assert "FAILED" in err and "0" * 32 in err and "does not exist" in err
    assert "its parent run 'orphan' failed" in err
    assert set(View(uri).by_key(experiment)) == {"fine"}


def test_existing_run_as_parent(uri, experiment, state, tmp_path):
    path = write_json(tmp_path / "p.json", {"experiment": experiment, "id": "p", "name": "p"})
    importer.import_paths([path], uri, state=state)
    parent_id = View(uri).by_key(experiment)["p"]["info"]["run_id"]
    child = write_json(tmp_path / "c.json", {"experiment": experiment, "id": "c", "parent": parent_id})
    importer.import_paths([child], uri, state=state)
    assert tags_of(View(uri).by_key(experiment)["c"])["mlflow.parentRunId"] == parent_id


def test_dry_run_writes_nothing(uri, experiment, state, tmp_path):
    path = write_json(tmp_path / "m.json", study(experiment, tmp_path))
    res = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["runs"]["created"] == 3 and out["points"] == 7
    assert View(uri).runs(experiment) == []
    importer.import_paths([path], uri, state=state)
    doc = study(experiment, tmp_path)
    doc["runs"][0]["metrics"]["best"] = {"step": [0, 1], "value": [0.9, 0.95]}
    write_json(path, doc)
    plan = importer.import_paths([path], uri, state=state, dry_run=True)
    assert plan.count("would-append") == 1 and plan.count("unchanged") == 2 and plan.points == 1
    [best] = [m for m in View(uri).by_key(experiment)["parent"]["data"]["metrics"] if m["key"] == "best"]
    assert best["value"] == 0.9


def test_stdin_and_folder_inputs(uri, experiment, state, tmp_path):
    doc = {"experiment": experiment, "id": "s", "metrics": {"m": 1}}
    res = run_importer("import", "-", "--tracking-uri", uri, "--state", str(state), "--quiet",
                       input=json.dumps(doc).encode())
    assert res.returncode == 0, res.stderr
    assert "1 created" in res.stdout.decode() and f"{uri}/#/experiments/" in res.stdout.decode()
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        write_json(folder / f"{i}.json", {"experiment": experiment, "id": f"f{i}"})
    summary = importer.import_paths([folder], uri, state=state)
    assert summary.count("created") == 3 and len(View(uri).runs(experiment)) == 4


def test_find(uri, experiment, state, tmp_path):
    path = write_json(tmp_path / "m.json", {"experiment": experiment, "id": "it's", "tags": {"k": "v"}})
    importer.import_paths([path], uri, state=state)
    [run_id] = [r["info"]["run_id"] for r in View(uri).runs(experiment)]
    found = run_importer("find", "--experiment", experiment, "--tag", "importer.import_key=it's",
                         "--tag", "k=v", env={"MLFLOW_TRACKING_URI": uri})
    assert found.returncode == 0 and found.stdout.decode().split() == [run_id]
    missing = run_importer("find", "--experiment", experiment, "--tag", "k=w", "--tracking-uri", uri)
    assert missing.returncode == 1 and missing.stdout == b""


def test_racing_importers_share_one_experiment(uri, experiment, tmp_path):
    paths = [write_json(tmp_path / f"{i}.json", {"experiment": experiment, "id": f"r{i}"}) for i in range(4)]
    errors = []

    def go(i):
        try:
            importer.import_paths([paths[i]], uri, state=tmp_path / f"l{i}.db")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert set(View(uri).by_key(experiment)) == {"r0", "r1", "r2", "r3"}


def test_unreachable_server_exit_code(tmp_path):
    path = write_json(tmp_path / "m.json", {"experiment": "e", "id": "x"})
    res = run_importer("import", str(path), "--tracking-uri", "http://127.0.0.1:9", "--state", str(tmp_path / "l.db"))
    assert res.returncode == 3 and b"cannot reach" in res.stderr and b"Traceback" not in res.stderr


def test_invalid_input_writes_nothing(uri, experiment, state, tmp_path):
    good = write_json(tmp_path / "good.json", {"experiment": experiment, "id": "ok"})
    bad = write_json(tmp_path / "bad.json", {"experiment": experiment, "id": "bad", "metrics": {"a@b": 1}})
    res = run_importer("import", str(good), str(bad), "--tracking-uri", uri, "--state", str(state))
    assert res.returncode == 2 and b"a@b" in res.stderr
    assert View(uri).runs(experiment) == []


def test_sample_logs_import(uri, state):
    summary = importer.import_paths([ROOT / "sample_logs"], uri, state=state)
    assert not summary.failed
    assert importer.import_paths([ROOT / "sample_logs"], uri, state=state).count("unchanged") == len(summary.outcomes)


def test_large_artifact_is_streamed_and_identical(uri, experiment, state, tmp_path):
    big = tmp_path / "weights.bin"
    with open(big, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    path = write_json(tmp_path / "m.json", {"experiment": experiment, "id": "big",
                                            "artifacts": [{"path": "weights.bin", "dest": "model"}]})
    summary = importer.import_paths([path], uri, state=state)
    assert summary.artifacts == 1 and not summary.failed
    [run] = View(uri).runs(experiment)
    assert hashlib.sha256(View(uri).artifact(run, "model/weights.bin")).digest() == hashlib.sha256(big.read_bytes()).digest()
