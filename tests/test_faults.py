"""Faults between importer and the server come from a real proxy process; crashes from kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import importer
from importer.local_server import LocalServer, free_port
from conftest import ROOT, View, run_importer, tags_of, write_json
import proxy

def start_proxy(upstream: str, **faults) -> tuple[subprocess.Popen, str]:
    return proxy.start(upstream, free_port(), **faults)


def family(experiment: str, tmp_path: Path, runs: int = 5, keys: int = 3, steps: int = 2000) -> dict:
    """A parent with children, several metric keys, NaN, and an artifact each."""
    (tmp_path / "files").mkdir(exist_ok=True)
    children = []
    for r in range(runs):
        (tmp_path / "files" / f"r{r}.bin").write_bytes(os.urandom(50_000 + r))
        metrics = {f"k{k}": {"step": list(range(steps)),
                             "value": [("NaN" if s % 997 == 5 else (s * (k + 1) + r) / 3) for s in range(steps)],
                             "timestamp": [1600000000000 + s * 1000 for s in range(steps)]}
                   for k in range(keys)}
        children.append({"id": f"child-{r}", "name": f"child-{r}", "status": ["FINISHED", "FAILED", "KILLED"][r % 3],
                         "start_time": 1600000000000 + r, "end_time": 1600003000000 + r,
                         "params": {"r": r, "cfg": {"depth": r + 1}}, "metrics": metrics,
                         "artifacts": [{"path": f"files/r{r}.bin"}]})
    return {"format_version": 1, "experiment": experiment, "runs": [
        {"id": "root", "name": "root", "start_time": 1599999999000, "end_time": 1600009999000,
         "params": {"kind": "family"}, "runs": children}]}


def assert_exactly_imported(uri: str, doc: dict, tmp_path: Path) -> None:
    """The server holds exactly the manifest: one run per key, every point once, status, parents,
    byte-identical artifacts."""
    view = View(uri)
    runs = view.by_key(doc["experiment"])
    root = doc["runs"][0]
    assert set(runs) == {"root"} | {c["id"] for c in root["runs"]}
    assert runs["root"]["info"]["status"] == "FINISHED"
    root_id = runs["root"]["info"]["run_id"]
    for child in root["runs"]:
        run = runs[child["id"]]
        assert run["info"]["status"] == child["status"]
        assert run["info"]["end_time"] == child["end_time"]
        assert tags_of(run)["mlflow.parentRunId"] == root_id
        for key, cols in child["metrics"].items():
            expected = sorted(zip(cols["step"], cols["timestamp"], cols["value"]))
            assert view.history(run["info"]["run_id"], key) == expected, f"{child['id']}/{key}"
        name = Path(child["artifacts"][0]["path"]).name
        assert view.artifact(run, name) == (tmp_path / "files" / name).read_bytes()


@pytest.mark.parametrize("faults", [
    {"seed": 3, "fail": 0.1, "drop_before": 0.05, "drop_after": 0.1, "delay_ms": 30},
    # MLflow's SQL store out of database connections answers 400, an overload retried as a 503
    {"seed": 5, "out_of_connections": 0.3, "only": "/api/2.0/mlflow/runs/log-batch"},
], ids=["failures-and-drops", "out-of-database-connections"])
def test_import_through_a_faulty_proxy_is_exact(uri, experiment, state, tmp_path, faults):
    doc = family(experiment, tmp_path)
    path = write_json(tmp_path / "m.json", doc)
    proxy, proxy_url = start_proxy(uri, **faults)
    try:
        summary = importer.import_paths([path], proxy_url, state=state,
                                        config=importer.ClientConfig(backoff_base=0.05, retries=12))
        stats = httpx.get(f"{proxy_url}/__proxy_stats").json()
    finally:
        proxy.terminate()
        proxy.wait()
    assert not summary.failed, [o.error for o in summary.failed]
    injected = [k for k in ("fail", "out_of_connections", "drop_before", "drop_after") if faults.get(k)]
    assert all(stats[k] for k in injected), stats
    assert_exactly_imported(uri, doc, tmp_path)


def test_lost_answer_to_run_creation_makes_no_duplicate(uri, experiment, state, tmp_path):
    """Every answer is lost half the time, so runs/create often succeeds unheard."""
    doc = {"format_version": 1, "experiment": experiment,
           "runs": [{"id": f"r{i}", "metrics": {"m": i}} for i in range(8)]}
    path = write_json(tmp_path / "m.json", doc)
    proxy, proxy_url = start_proxy(uri, seed=11, drop_after=0.5)
    try:
        summary = importer.import_paths([path], proxy_url, state=state,
                                        config=importer.ClientConfig(backoff_base=0.05, retries=12))
    finally:
        proxy.terminate()
        proxy.wait()
    assert not summary.failed, [o.error for o in summary.failed]
    assert set(View(uri).by_key(experiment)) == {f"r{i}" for i in range(8)}  # by_key fails on duplicates


def import_args(path: Path, uri: str, state: Path) -> list[str]:
    return [sys.executable, "-m", "importer", "import", str(path), "--tracking-uri", uri,
            "--state", str(state), "--quiet"]


def import_killed(args: list[str], after: float) -> None:
    """Run `args` (import_args), and kill it with SIGKILL `after` seconds on."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("trial", range(4))
def test_kill_9_then_rerun_equals_one_clean_run(uri, experiment, tmp_path, trial):
    doc = family(experiment, tmp_path, runs=5, keys=3, steps=3000)
    path = write_json(tmp_path / "m.json", doc)
    state = tmp_path / "ledger.db"
    rng = random.Random(trial)
    args = import_args(path, uri, state)
    for kill in range(2):  # two crashes in a row at random moments, then a clean finish
        import_killed(args, rng.uniform(0.8, 5.0))
    if trial == 3:
        state.unlink()  # the ledger is lost too: the server's import-key tags must be enough
    res = subprocess.run(args, cwd=ROOT, capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_exactly_imported(uri, doc, tmp_path)
    again = subprocess.run(args + ["--json"], cwd=ROOT, capture_output=True)
    assert json.loads(again.stdout)["runs"]["unchanged"] == 6


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("auth"), admin_password="s3cret-Passw0rd-xyz")
    srv.start()
    yield srv
    srv.stop()


def test_basic_auth_and_secrets_never_printed(auth_server, tmp_path):
    path = write_json(tmp_path / "m.json", {"experiment": "auth", "id": "a", "metrics": {"m": 1}})
    ok = run_importer("import", str(path), "--tracking-uri", auth_server.url, "--state", str(tmp_path / "l.db"),
                      env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "s3cret-Passw0rd-xyz"})
    assert ok.returncode == 0, ok.stderr
    assert b"s3cret" not in ok.stdout + ok.stderr

    wrong = run_importer("--debug", "import", str(path), "--tracking-uri", auth_server.url,
                         "--state", str(tmp_path / "l2.db"),
                         env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong-pw-123456",
                              "MLFLOW_TRACKING_TOKEN": "tok-abcdef-987654"})
    assert wrong.returncode == 3 and b"refused our credentials" in wrong.stderr
    out = wrong.stdout + wrong.stderr
    assert b"wrong-pw-123456" not in out and b"tok-abcdef-987654" not in out

    in_url = auth_server.url.replace("http://", "http://admin:s3cret-Passw0rd-xyz@")
    res = run_importer("--debug", "import", str(path), "--tracking-uri", in_url, "--state", str(tmp_path / "l3.db"))
    assert res.returncode == 0 and b"s3cret" not in res.stdout + res.stderr
