"""Issue 15, "a run that fails, fails alone", against a real server: a store run that is listed but
missing, or cannot be read, is a FAILED line naming its file and the others are imported (exit 1;
`validate` exits 2); an error in any run's step ends as that run's outcome and the summary is
printed; options are checked before the first write. Every store is written here, in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from importer.local_server import LocalServer

from conftest import View, run_importer, tags_of, write_json

T0 = 1_700_000_000_000


def _ids(n: int) -> list[str]:
    return [f"{i:x}" * 32 for i in range(10, 10 + n)]


def _export_run(folder: Path, run_id: str, name: str) -> None:
    """A run folder as mlflow-export-import 1.2 writes it."""
    folder.mkdir(parents=True)
    write_json(folder / "run.json", {"system": {"package_version": "1.2.0"}, "mlflow": {
        "info": {"run_id": run_id, "run_name": name, "status": "FINISHED", "start_time": T0,
                 "end_time": T0 + 1000, "lifecycle_stage": "active"},
        "params": {"lr": "0.1"}, "tags": {"mlflow.runName": name},
        "metrics": {"loss": [{"value": 0.5, "timestamp": T0, "step": 0}]}}})


def _meta_run(folder: Path, run_id: str, name: str, extra: str = "") -> None:
    """A run of an `mlruns/` file store."""
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "loss").write_text(f"{T0} 0.5 0\n{T0 + 1} 0.25 1\n")
    (folder / "meta.yaml").write_text(
        f"run_id: {run_id}\nrun_uuid: {run_id}\nrun_name: {name}\nexperiment_id: '1'\nstatus: 3\n"
        f"start_time: {T0}\nend_time: {T0 + 1000}\nlifecycle_stage: active\nuser_id: carol\n{extra}")


def _meta_experiment(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    (folder / "meta.yaml").write_text(f"experiment_id: '{folder.name}'\nname: {name}\nlifecycle_stage: active\n")


def test_partial_export_folder_imports_the_others(uri, experiment, state, tmp_path):
    """experiment.json lists three runs, one folder is missing: the two are imported."""
    ids = _ids(3)
    exp = tmp_path / "exp"
    for rid, name in zip(ids[:2], ("one", "two")):
        _export_run(exp / "runs" / rid, rid, name)
    write_json(exp / "experiment.json", {"system": {"package_version": "1.2.0"},
                                         "mlflow": {"experiment": {"experiment_id": "7", "name": experiment},
                                                    "runs": ids}})
    v = run_importer("validate", str(exp))
    assert v.returncode == 2 and f"run {ids[2]} is listed, but its folder is missing" in v.stderr.decode()
    r = run_importer("import", str(exp), "--tracking-uri", uri, "--state", str(state))
    out = r.stdout.decode()
    assert r.returncode == 1, out + r.stderr.decode()
    assert f"FAILED {exp / 'experiment.json'}" in out and f"run {ids[2]} is listed" in out
    assert "2 created" in out and "1 failed" in out
    assert sorted(tags_of(run)["mlflow.runName"] for run in View(uri).runs(experiment)) == ["one", "two"]


def test_unreadable_mlruns_run_fails_alone(uri, experiment, state, tmp_path):
    good, bad = _ids(2)
    store = tmp_path / "mlruns"
    _meta_experiment(store / "1", experiment)
    _meta_run(store / "1" / good, good, "good")
    _meta_run(store / "1" / bad, bad, "bad")
    (store / "1" / bad / "meta.yaml").write_text("run_id: [unclosed\n")
    v = run_importer("validate", str(store))
    assert v.returncode == 2 and str(store / "1" / bad / "meta.yaml") in v.stderr.decode()
    r = run_importer("import", str(store), "--tracking-uri", uri, "--state", str(state))
    out = r.stdout.decode()
    assert r.returncode == 1, out + r.stderr.decode()
    assert f"FAILED {store / '1' / bad / 'meta.yaml'}" in out and "not valid YAML" in out
    [run] = View(uri).runs(experiment)
    assert tags_of(run)["importer.source_run_id"] == good


def test_bundle_missing_a_run_folder_imports_the_others(uri, experiment, state, tmp_path):
    write_json(tmp_path / "m.json", {"format_version": 1, "experiment": experiment, "runs": [
        {"id": f"r{i}", "name": f"run-{i}", "start_time": T0, "metrics": {"loss": 0.5}} for i in range(3)]})
    assert run_importer("import", str(tmp_path / "m.json"), "--tracking-uri", uri,
                        "--state", str(state)).returncode == 0
    bundle = tmp_path / "bundle"
    e = run_importer("export", "--from", uri, "--out", str(bundle), "--experiment", experiment)
    assert e.returncode == 0, e.stderr.decode()
    gone = sorted((bundle / "runs").iterdir())[0]
    shutil.rmtree(gone)
    assert run_importer("validate", str(bundle)).returncode == 2
    r = run_importer("import", str(bundle), "--tracking-uri", uri, "--state", str(state),
                     "--experiment", experiment + "-moved")
    out = r.stdout.decode()
    assert r.returncode == 1, out + r.stderr.decode()
    assert f"runs/{gone.name}/run.json" in out and "FAILED" in out and "2 created" in out
    assert len(View(uri).runs(experiment + "-moved")) == 2


def test_a_failure_before_writing_a_run_is_that_runs_outcome(uri, experiment, state, tmp_path):
    """A child run whose parent is not in the folder is looked up in its experiment before its
    writing starts; that experiment is deleted on the server, so the lookup fails. That run
    fails; the other experiment's run is imported, and the summary is printed."""
    child, parent, other = _ids(3)
    store = tmp_path / "mlruns"
    _meta_experiment(store / "1", experiment + "-gone")
    _meta_run(store / "1" / child, child, "child")
    (store / "1" / child / "tags").mkdir()
    (store / "1" / child / "tags" / "mlflow.parentRunId").write_text(parent)
    _meta_experiment(store / "2", experiment)
    _meta_run(store / "2" / other, other, "other")
    api = httpx.Client(base_url=uri + "/api/2.0/mlflow/", timeout=60)
    exp_id = api.post("experiments/create", json={"name": experiment + "-gone"}).json()["experiment_id"]
    api.post("experiments/delete", json={"experiment_id": exp_id}).raise_for_status()
    r = run_importer("import", str(store), "--tracking-uri", uri, "--state", str(state), "--json")
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["runs"] == {"created": 1, "appended": 0, "unchanged": 0, "failed": 1}
    [failed] = [o for o in summary["details"] if o["action"] == "failed"]
    assert child in failed["origin"] and "is deleted on the server" in failed["error"]
    [run] = View(uri).runs(experiment)
    assert tags_of(run)["importer.source_run_id"] == other


@pytest.fixture
def empty_server(tmp_path):
    srv = LocalServer(tmp_path / "dest")
    srv.start()
    yield srv
    srv.stop()


def test_migrate_with_a_bad_option_writes_nothing(uri, experiment, state, tmp_path, empty_server):
    write_json(tmp_path / "m.json", {"format_version": 1, "experiment": experiment,
                                     "runs": [{"name": "r", "start_time": T0, "metrics": {"loss": 0.5}}]})
    assert run_importer("import", str(tmp_path / "m.json"), "--tracking-uri", uri,
                        "--state", str(state)).returncode == 0
    r = run_importer("migrate", "--from", uri, "--to", empty_server.url, "--experiment", experiment,
                     "--on-param-conflict", "bogus", "--state", str(tmp_path / "l.db"))
    err = r.stderr.decode()
    assert r.returncode == 2 and "--on-param-conflict 'bogus'" in err and "Traceback" not in err, err
    names = [e["name"] for e in httpx.post(empty_server.url + "/api/2.0/mlflow/experiments/search",
                                           json={"max_results": 100}).json()["experiments"]]
    assert names == ["Default"]
