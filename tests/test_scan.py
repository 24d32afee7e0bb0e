"""`importer scan` and `importer status`: real processes against the session's real server.

A scan reads only units that are new or changed since the last one (their signature in the
ledger), imports them through the import pipeline, and holds an OS lock on the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import proxy
from conftest import ROOT, run_importer

from importer.ledger import Ledger
from importer.local_server import free_port

LOCKED = 75


def keras_csv(path: Path, epochs: int, start: int = 0) -> Path:
    """A Keras CSVLogger file with `epochs` rows (loss = 1 / (epoch + 1))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{e},{1 / (e + 1)}\n" for e in range(start, start + epochs))
    path.write_text("epoch,loss\n" + rows)
    return path


def append_rows(path: Path, start: int, count: int) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{e},{1 / (e + 1)}\n" for e in range(start, start + count)))


def scan(folder: Path, uri: str, experiment: str, state: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_importer("scan", str(folder), "--tracking-uri", uri, "--experiment", experiment,
                        "--state", str(state), "--json", *extra)


def losses(view, run: dict) -> list[tuple[int, float]]:
    return [(step, value) for step, _, value in view.history(run["info"]["run_id"], "loss")]


def by_name(view, experiment: str) -> dict[str, dict]:
    runs = view.by_key(experiment)  # fails on a duplicate run
    return {r["info"]["run_name"]: r for r in runs.values()}


def test_scan_imports_new_and_grown_files_once_and_leaves_unchanged_ones_unread(uri, experiment, state,
                                                                               tmp_path, view):
    root = tmp_path / "logs"
    for i in range(3):
        keras_csv(root / f"team{i % 2}" / f"run{i}.csv", epochs=2)
    first = scan(root, uri, experiment, state, "--finish-after", "0")
    assert first.returncode == 0, first.stderr.decode()
    report = json.loads(first.stdout)
    assert report["units"]["new"] == 3 and report["runs"]["created"] == 3
    runs = by_name(view, experiment)
    assert sorted(runs) == ["run0", "run1", "run2"]
    assert losses(view, runs["run1"]) == [(0, 1.0), (1, 0.5)]
    assert {r["info"]["status"] for r in runs.values()} == {"FINISHED"}

    again = json.loads(scan(root, uri, experiment, state, "--finish-after", "0").stdout)
    assert again["units"]["unchanged"] == 3
    # Nothing read again: no run in the summary at all, not even as `unchanged`.
    assert again["details"] == [] and again["points"] == 0

    append_rows(root / "team1" / "run1.csv", start=2, count=2)
    grown = json.loads(scan(root, uri, experiment, state, "--finish-after", "0").stdout)
    assert (grown["units"]["changed"], grown["units"]["unchanged"]) == (1, 2)
    assert (grown["runs"]["appended"], grown["points"]) == (1, 2)
    runs = by_name(view, experiment)
    assert losses(view, runs["run1"]) == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]
    assert losses(view, runs["run0"]) == [(0, 1.0), (1, 0.5)]


def test_a_fresh_log_is_running_until_quiet_for_finish_after(uri, experiment, state, tmp_path, view):
    log = keras_csv(tmp_path / "logs" / "fresh.csv", epochs=3)
    assert scan(tmp_path / "logs", uri, experiment, state).returncode == 0  # default: 30 min
    run = by_name(view, experiment)["fresh"]
    assert run["info"]["status"] == "RUNNING" and not run["info"].get("end_time")
    # Quiet for longer than --finish-after now: finished, ended at the file's modification time
    # (a Keras log has no times of its own).
    time.sleep(1.1)
    report = json.loads(scan(tmp_path / "logs", uri, experiment, state, "--finish-after", "1").stdout)
    assert report["units"]["finished"] == 1
    run = by_name(view, experiment)["fresh"]
    assert run["info"]["status"] == "FINISHED"
    assert int(run["info"]["end_time"]) == int(log.stat().st_mtime * 1000)
    assert len(losses(view, run)) == 3


def test_a_bad_file_fails_alone_is_listed_by_status_and_retried_once_changed(uri, experiment, state,
                                                                             tmp_path, view):
    root = tmp_path / "logs"
    keras_csv(root / "good.csv", epochs=2)
    bad = root / "bad.csv"
    bad.write_text("epoch,loss\n0,0.9\n1,not-a-number\n")
    first = scan(root, uri, experiment, state, "--finish-after", "0")
    assert first.returncode == 1
    report = json.loads(first.stdout)
    assert report["units"]["failed"] == 1 and report["runs"]["created"] == 1
    assert sorted(by_name(view, experiment)) == ["good"]

    status = run_importer("status", "--state", str(state), "--json")
    assert status.returncode == 1
    failed = json.loads(status.stdout)["failed"]
    assert [f["path"] for f in failed] == [str(bad)]
    assert "bad.csv" in failed[0]["file"] and "line 3" in failed[0]["where"] + failed[0]["reason"]
    text = run_importer("status", "--state", str(state))
    assert b"FAILED" in text.stdout and b"bad.csv" in text.stdout

    # Unchanged: not read again, and the scan itself has nothing failed.
    again = scan(root, uri, experiment, state, "--finish-after", "0")
    assert again.returncode == 0 and json.loads(again.stdout)["units"]["failed_before"] == 1

    bad.write_text("epoch,loss\n0,0.9\n1,0.8\n")
    fixed = scan(root, uri, experiment, state, "--finish-after", "0")
    assert fixed.returncode == 0, fixed.stdout.decode()
    assert losses(view, by_name(view, experiment)["bad"]) == [(0, 0.9), (1, 0.8)]
    assert run_importer("status", "--state", str(state)).returncode == 0


def test_a_second_scan_exits_with_the_lock_code_and_a_killed_scans_lock_does_not_block(
        server, experiment, state, tmp_path, view):
    root = tmp_path / "logs"
    for i in range(20):
        keras_csv(root / f"run{i:02d}.csv", epochs=3)
    # A far server (300 ms a round trip) keeps the first scan busy long enough to be caught.
    far, url = proxy.start(server.url, free_port(), latency_ms=300)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        slow = subprocess.Popen([sys.executable, "-m", "importer", "scan", str(root), "--tracking-uri", url,
                                 "--experiment", experiment, "--state", str(state), "--quiet"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lock = Path(str(state) + ".lock")
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(slow.pid)):
            assert time.monotonic() < deadline and slow.poll() is None, "the first scan never took the lock"
            time.sleep(0.05)
        second = scan(root, server.url, experiment, state)
        assert second.returncode == LOCKED
        assert f"pid {slow.pid}" in second.stderr.decode() and b"try again" in second.stderr
        slow.send_signal(signal.SIGKILL)
        slow.wait(timeout=10)
    finally:
        far.kill()
        far.wait()
    after = scan(root, server.url, experiment, state, "--finish-after", "0")
    assert after.returncode == 0, after.stderr.decode()
    runs = by_name(view, experiment)  # no duplicate, whatever the killed scan had written
    assert len(runs) == 20 and all(len(losses(view, r)) == 3 for r in runs.values())


def test_status_of_an_empty_ledger_and_scan_of_a_missing_folder(uri, state, tmp_path):
    none = run_importer("status", "--state", str(state))
    assert none.returncode == 0 and b"none yet" in none.stdout and not state.exists()  # read only
    Ledger(state).close()
    ok = run_importer("status", "--state", str(state))
    assert ok.returncode == 0 and b"0 imported" in ok.stdout
    missing = run_importer("scan", str(tmp_path / "nope"), "--tracking-uri", uri, "--state", str(state))
    assert missing.returncode == 2 and b"no such file or folder" in missing.stderr


def test_scan_writes_what_import_writes(uri, tmp_path, view):
    """sample_logs/ (every format, a manifest naming a CSV as its artifact, stores): scanned, then
    imported with another ledger, which finds every run as the scan left it."""
    scanned = run_importer("scan", "sample_logs", "--tracking-uri", uri, "--state", str(tmp_path / "scan.db"),
                           "--finish-after", "0", "--json")
    assert scanned.returncode == 0, scanned.stdout.decode()[-2000:] + scanned.stderr.decode()
    report = json.loads(scanned.stdout)
    imported = run_importer("import", "sample_logs", "--tracking-uri", uri, "--state", str(tmp_path / "import.db"),
                            "--json")
    assert imported.returncode == 0, imported.stderr.decode()
    again = json.loads(imported.stdout)
    # The artifact CSV is no run of its own: the same runs, by import key, and nothing to write.
    assert sorted((o["experiment"], o["import_key"]) for o in report["details"]) == \
        sorted((o["experiment"], o["import_key"]) for o in again["details"])
    assert (again["runs"]["created"], again["runs"]["appended"], again["points"]) == (0, 0, 0)
    assert report["unrecognised"] == again["unrecognised"]


def test_a_store_with_models_is_scanned_as_import_reads_it_and_not_again(uri, tmp_path):
    """An mlruns/ store (experiments, runs, registered models) is one unit, written by the import
    verb whole; an import with another ledger then finds nothing to write."""
    import shutil

    store = tmp_path / "project"
    shutil.copytree(ROOT / "tests" / "fixtures" / "mlruns" / "project", store, symlinks=True)
    args = ("--tracking-uri", uri, "--json")
    scanned = run_importer("scan", str(store), "--state", str(tmp_path / "scan.db"), "--finish-after", "0", *args)
    assert scanned.returncode == 0, scanned.stderr.decode()
    report = json.loads(scanned.stdout)
    imported = json.loads(run_importer("import", str(store), "--state", str(tmp_path / "import.db"), *args).stdout)
    assert report["details"] and sorted(o["import_key"] for o in report["details"]) == \
        sorted(o["import_key"] for o in imported["details"])
    assert (imported["runs"]["created"], imported["runs"]["appended"], imported["points"]) == (0, 0, 0)
    again = json.loads(run_importer("scan", str(store), "--state", str(tmp_path / "scan.db"), *args).stdout)
    assert again["details"] == [] and again["units"]["unchanged"] >= 1
