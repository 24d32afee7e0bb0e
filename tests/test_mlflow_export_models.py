"""Registered models of mlflow-export-import / mlflow-migration folders, imported into a real
server and read back through its REST API.

The folders are written here in the shapes mlflow-migration 1.2.2 wrote them when run against a
real server (export-model, export-models; checked by hand, not committed): every file
{"system", "info", "mlflow"}; model.json's `registered_model` as the REST API gives it (tags and
aliases as lists) with `versions` as the Python client's ModelVersion (tags as an object, its own
`aliases`, `model_id` null) plus the tool's `_run_artifact_uri` and `_experiment_name`; each
version's run exported beside its model as well as with its experiment (export-models). The
oldest shape (no wrapper, `latest_versions`) is read without a server.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import importer
from importer.sources import mlflow_export
from importer.sources.base import SourceOptions

from conftest import View, run_importer, tags_of

T0 = 1_700_000_000_000
A, B, C = "a1" * 16, "b2" * 16, "c3" * 16  # C: a version's run that is in no folder


def _write(folder: Path, name: str, payload: dict, script: str, info: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"system": {"package_version": "1.2.2", "script": script, "export_file_version": "2",
                      "mlflow_version": "3.17.2", "mlflow_tracking_uri": "http://old:5000"},
           "info": info or {}, "mlflow": payload}
    (folder / name).write_text(json.dumps(doc, indent=2))
    return folder / name


def _run(folder: Path, run_id: str, name: str) -> None:
    """A run as export_run writes it, with a model in its artifacts."""
    _write(folder, "run.json", {
        "info": {"run_id": run_id, "experiment_id": "1", "user_id": "alice", "status": "FINISHED",
                 "start_time": T0, "end_time": T0 + 1000, "lifecycle_stage": "active",
                 "artifact_uri": f"mlflow-artifacts:/1/{run_id}/artifacts", "run_name": name},
        "params": {"lr": "0.1"},
        "metrics": {"loss": [{"value": 0.5, "timestamp": T0 + 10, "step": 0, "model_id": None,
                              "dataset_name": None, "dataset_digest": None, "run_id": None}]},
        "tags": {"mlflow.runName": name, "mlflow.user": "alice"}, "inputs": []}, "export_run.py")
    (folder / "artifacts" / "model").mkdir(parents=True)
    (folder / "artifacts" / "model" / "MLmodel").write_text(f"flavors: {{}}\nrun: {run_id}\n")


def _version(model: str, number: int, run_id: str, experiment: str, source: str = "", stage: str = "None",
             description: str = "", tags: dict | None = None, aliases: tuple = ()) -> dict:
    return {"name": model, "version": str(number), "creation_timestamp": T0, "last_updated_timestamp": T0,
            "description": description, "user_id": "", "current_stage": stage,
            "source": source or f"runs:/{run_id}/model", "run_id": run_id, "run_link": "", "status": "READY",
            "status_message": None, "tags": tags or {}, "aliases": list(aliases), "model_id": None,
            "params": None, "metrics": None, "deployment_job_state": None, "workspace": "default",
            "_run_artifact_uri": f"mlflow-artifacts:/1/{run_id}/artifacts", "_experiment_name": experiment}


def _model(folder: Path, name: str, versions: list[dict], description: str = "", tags: dict | None = None,
           aliases: dict | None = None) -> Path:
    return _write(folder, "model.json", {"registered_model": {
        "name": name, "creation_timestamp": T0, "last_updated_timestamp": T0, "description": description,
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        "aliases": [{"alias": a, "version": v} for a, v in (aliases or {}).items()],
        "versions": versions}}, "export_model.py",
        {"num_src_versions": len(versions), "failed_versions": []})


def export_models(root: Path, experiment: str, name: str) -> Path:
    """export-models: ROOT/experiments/1/ holds runs A and B; ROOT/models/<name>/ the model
    with copies of A and B beside it. Version 2 was deleted at the source, so the versions are
    1 (A, Production, tags, a file-path source), 3 (B, alias `champion`) and 4 (C, alias
    `next`), whose run is in neither place."""
    exps = root / "experiments"
    _write(exps, "experiments.json", {"experiments": [{"id": "1", "name": experiment, "ok_runs": 2}]},
           "export_experiments.py")
    _write(exps / "1", "experiment.json", {"experiment": {"experiment_id": "1", "name": experiment,
                                                          "lifecycle_stage": "active", "tags": {"team": "ml"}},
                                           "runs": [A, B]}, "export_experiment.py")
    models = root / "models"
    _write(models, "models.json", {"models": [name]}, "export_models.py", {"failed_models": []})
    for run_id, run_name in ((A, "first"), (B, "second")):
        _run(exps / "1" / run_id, run_id, run_name)
        _run(models / name / run_id, run_id, run_name)
    _model(models / name, name, [
        _version(name, 1, A, experiment, source=f"/srv/mlruns/1/{A}/artifacts/model", stage="Production",
                 description="the first", tags={"quality": "good"}),
        _version(name, 3, B, experiment, description="the third", aliases=("champion",)),
        _version(name, 4, C, experiment, aliases=("next",))],
        description="wine quality", tags={"owner": "alice"}, aliases={"champion": "3", "next": "4"})
    _write(root, "manifest.json", {}, "export_models.py", {"models": {"num_ok_models": 1}})
    return root


def _import(folder: Path, uri: str, state: Path, *extra: str):
    return run_importer("import", str(folder), "--tracking-uri", uri, "--state", str(state), "--json", *extra)


def _versions(view: View, name: str) -> dict[str, dict]:
    found = view.http.get("model-versions/search", params={"filter": f"name='{name}'"}).json()
    return {v["version"]: v for v in found.get("model_versions", [])}


def test_export_models_folder_lands_as_registered_models(uri, experiment, tmp_path):
    name = f"wine-{uuid.uuid4().hex[:8]}"
    root = export_models(tmp_path / "out", experiment, name)
    r = _import(root, uri, tmp_path / "l.db")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["runs"]["created"] == 2  # each run once, though exported twice
    assert any(f"model {name!r} version 4" in n and C in n for n in summary["notes"]), summary["notes"]

    view = View(uri)
    runs = {tags_of(run)["importer.source_run_id"]: run for run in view.runs(experiment)}
    assert sorted(runs) == sorted([A, B])
    reg = view.http.get("registered-models/get", params={"name": name}).json()["registered_model"]
    assert reg["description"] == "wine quality"
    assert {t["key"]: t["value"] for t in reg["tags"]} == {"owner": "alice"}
    assert reg["aliases"] == [{"alias": "champion", "version": "3"}]  # `next` names the version left out
    versions = _versions(view, name)
    assert sorted(versions) == ["1", "3"]  # 2 was deleted at the source, 4 has no run here
    v1, v3 = versions["1"], versions["3"]
    assert v1["run_id"] == runs[A]["info"]["run_id"] and v3["run_id"] == runs[B]["info"]["run_id"]
    # Each version's model is at the same path in the migrated run's artifacts, whatever the
    # form of its source (a file path, a runs:/ URI).
    assert v1["source"] == runs[A]["info"]["artifact_uri"] + "/model"
    assert v3["source"] == runs[B]["info"]["artifact_uri"] + "/model"
    assert view.artifact(runs[A], "model/MLmodel").decode().endswith(f"run: {A}\n")
    assert (v1["current_stage"], v1["description"]) == ("Production", "the first")
    assert (v3["current_stage"], v3["description"]) == ("None", "the third")
    assert {t["key"]: t["value"] for t in v1["tags"]} == {"quality": "good", "importer.source_version": "1"}

    # Again, without the ledger: no second model, version or run.
    again = _import(root, uri, tmp_path / "other.db")
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert json.loads(again.stdout)["runs"]["created"] == 0
    assert sorted(_versions(view, name)) == ["1", "3"] and len(view.runs(experiment)) == 2
    found = view.http.get("registered-models/search", params={"filter": f"name='{name}'"}).json()
    assert [m["name"] for m in found["registered_models"]] == [name]
    assert view.http.get("registered-models/get", params={"name": name}).json()["registered_model"]["aliases"] == [
        {"alias": "champion", "version": "3"}]


def test_export_model_alone_puts_its_runs_in_their_experiments(uri, experiment, tmp_path):
    """export-model: the versions' runs are only beside model.json; each lands in the experiment
    its version names, and the version points at it."""
    name = f"solo-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    _run(folder / A, A, "only-here")
    _model(folder, name, [_version(name, 1, A, experiment, description="solo")])
    found = importer.read_inputs([folder])
    assert found.units == [("mlflow-export", str(folder), 1)]
    assert [r.experiment for r in found.records] == [experiment]
    r = _import(folder, uri, tmp_path / "l.db")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    [run] = View(uri).runs(experiment)
    [v1] = _versions(View(uri), name).values()
    assert (v1["version"], v1["run_id"], v1["description"]) == ("1", run["info"]["run_id"], "solo")


def test_a_broken_model_fails_alone(uri, experiment, tmp_path):
    """A model.json that is not JSON loses that model, a version without a number that version,
    a listed model without a folder is reported; the runs and the other models import, the
    summary names each file and field, exit 1; validate lists them all, exit 2."""
    name = f"good-{uuid.uuid4().hex[:8]}"
    root = export_models(tmp_path / "out", experiment, name)
    bad, half = f"bad-{uuid.uuid4().hex[:8]}", f"half-{uuid.uuid4().hex[:8]}"
    models = root / "models"
    (models / bad).mkdir()
    cut = '{"system": {"package_version": "1.2.2"}, "mlflow": {"registered_model": {'  # cut short
    (models / bad / "model.json").write_text(cut)
    half_file = _model(models / half, half, [{**_version(half, 1, A, experiment), "version": "one"},
                                             _version(half, 2, B, experiment)])
    _write(models, "models.json", {"models": [name, bad, half, "ghost"]}, "export_models.py")

    result = mlflow_export.read(root, SourceOptions())
    assert not result.problems and len(result.records) == 2  # nothing stops the runs
    where = {(Path(p.file).relative_to(models).as_posix(), p.location) for p in result.skipped}
    assert where == {(f"{bad}/model.json", f"line 1 column {len(cut) + 1}"), ("models.json", "mlflow.models"),
                     (f"{half}/model.json", "mlflow.registered_model.versions[0].version")}

    r = _import(root, uri, tmp_path / "l.db")
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["runs"]["created"] == 2
    failed = {o["origin"]: o["error"] for o in summary["details"] if o["action"] == "failed"}
    assert set(failed) == {str(models / bad / "model.json"), str(models / "models.json"), str(half_file)}
    assert "invalid JSON" in failed[str(models / bad / "model.json")]
    assert failed[str(half_file)].startswith("mlflow.registered_model.versions[0].version: ")
    assert "'ghost'" in failed[str(models / "models.json")]
    view = View(uri)
    assert sorted(_versions(view, name)) == ["1", "3"]
    assert sorted(_versions(view, half)) == ["2"]
    assert view.http.get("registered-models/get", params={"name": bad}).status_code == 404
    text = run_importer("import", str(root), "--tracking-uri", uri, "--state", str(tmp_path / "l.db")).stdout.decode()
    assert f"FAILED {models / bad / 'model.json'}" in text and f"FAILED {half_file}" in text, text
    check = run_importer("validate", str(root))
    err = check.stderr.decode()
    assert check.returncode == 2 and str(models / bad / "model.json") in err and str(half_file) in err, err


def test_the_oldest_model_json(tmp_path):
    """Until December 2022 model.json was the payload itself and, until January 2023, its
    versions were `latest_versions`; runs beside it (export-model) were old runs too."""
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"registered_model": {
        "name": "old-model", "creation_timestamp": T0, "description": "from 2021",
        "tags": [{"key": "k", "value": "v"}],
        "latest_versions": [{"name": "old-model", "version": "1", "current_stage": "Staging",
                             "source": f"dbfs:/databricks/mlflow-tracking/7/{A}/artifacts/sk",
                             "run_id": A, "status": "READY", "tags": {}, "_experiment_name": "/Users/x/exp"},
                            {"name": "old-model", "version": "2", "current_stage": "Deleted_Internal",
                             "source": "s", "run_id": B}]}}))
    (folder / A).mkdir()
    (folder / A / "run.json").write_text(json.dumps({"info": {"run_uuid": A, "run_id": A, "status": 3},
                                                     "params": {}, "metrics": {}, "tags": {}}))
    assert mlflow_export.detect(folder / "model.json")
    found = importer.read_inputs([folder])
    assert found.units == [("mlflow-export", str(folder), 1)] and found.skipped == []
    [rec] = found.records
    assert (rec.source_run_id, rec.experiment) == (A, "/Users/x/exp")
    [model] = found.models
    assert (model.name, model.description, model.tags) == ("old-model", "from 2021", {"k": "v"})
    [v1] = model.versions  # the deleted one is left out
    assert (v1.version, v1.run_id, v1.artifact_path, v1.stage) == ("1", A, "sk", "Staging")


def test_model_files_and_an_export_model_version(tmp_path):
    """model.json and models.json are the tool's only in its shapes; an export-model-version
    folder (model.json without versions beside experiment.json, version.json, run/) gives its
    run and a note, no model."""
    for name in ("model.json", "models.json"):
        (tmp_path / name).write_text(json.dumps({"registered_model": {"name": "x"}} if name == "models.json"
                                                else {"format": "layers-model", "modelTopology": {}}))
        assert not mlflow_export.detect(tmp_path / name)
    folder = tmp_path / "version"
    _write(folder, "model.json", {"registered_model": {"name": "m", "tags": []}}, "export_model_version.py")
    _write(folder, "version.json", {"model_version": _version("m", 1, A, "e")}, "export_model_version.py")
    _write(folder, "experiment.json", {"experiment": {"experiment_id": "1", "name": "e"}}, "export_model_version.py")
    _run(folder / "run", A, "r")
    found = importer.read_inputs([folder])
    assert [r.experiment for r in found.records] == ["e"] and found.models == []
    assert any("version.json" in n and "not imported" in n for n in found.notes)


def test_a_run_beside_its_model_is_a_copy_whatever_its_folder_is_called(tmp_path):
    """The copy beside the model is found by its folder's name (the run id) without reading it;
    one in a folder named otherwise is read and dropped, not reported as a second export."""
    root = export_models(tmp_path / "out", "e", "m")
    (root / "models" / "m" / A).rename(root / "models" / "m" / "renamed")
    result = mlflow_export.read(root, SourceOptions())
    assert not result.problems and not result.skipped
    assert sorted(r.source_run_id for r in result.records) == sorted([A, B])
    assert all("/experiments/" in r.origin for r in result.records)


def test_an_mlflow_3_version_takes_its_logged_model_from_beside_it(tmp_path):
    """Since late 2025 export-model writes the logged model of a `models:/m-...` version to
    MODEL/<model id>/ (logged_model.json + artifacts/): read as a logged model of the experiment
    the version names, and the version is of it."""
    folder = tmp_path / "m3"
    model_id = "m-" + "0f" * 16
    _run(folder / A, A, "trained")
    _model(folder, "m3", [_version("m3", 1, A, "exp3", source=f"models:/{model_id}")])
    _write(folder / model_id, "logged_model.json", {
        "model_id": model_id, "experiment_id": "1", "name": "echo", "status": "READY", "source_run_id": A,
        "params": {"alpha": "0.5"}, "tags": {}, "metrics": []}, "export_logged_model.py")
    (folder / model_id / "artifacts").mkdir()
    (folder / model_id / "artifacts" / "MLmodel").write_text("flavors: {}\n")
    (folder / "version_models").mkdir()
    found = importer.read_inputs([folder])
    [model] = found.models
    [v1] = model.versions
    assert (v1.model_id, v1.run_id, v1.artifact_path) == (model_id, A, None)
    [logged] = found.logged_models
    assert (logged.doc.model_id, logged.doc.source_run_id, logged.experiment) == (model_id, A, "exp3")
    assert [f.dest for f in logged.files] == ["MLmodel"]
    assert [r.experiment for r in found.records] == ["exp3"]
    assert any(n.endswith("version_models not read") for n in found.notes), found.notes
