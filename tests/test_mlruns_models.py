"""MLflow 3 logged models and registered models of an `mlruns/` file store: read as MLflow reads
them, then imported into a real server and read back through its REST API.

The store is written by the real MLflow client into a tmp folder (nothing binary is committed):
a training run logs a pyfunc model with params, tags and a type, and metrics against it on a
dataset (NaN too); an evaluation run logs a metric against that model (MLflow links the model to
the run as its input); a second model is made outside any run; a third is deleted; a registered
model has a version of the logged model, a deleted one and one from a `runs:/` URI with a stage,
an alias, tags and descriptions.

The same store's runs and logged models are then written as mlflow-export-import writes an
experiment since late 2025 (`experiment.json`, `runs/<id>/run.json` with the runs' model links,
`logged_models/logged_models.json`, `logged_models/<id>/logged_model.json` + `artifacts/`; no
release of the tool on PyPI has it yet, so the folder is made here from MLflow's own objects,
the way the tool dumps them) and read by that source into the same records."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from importer.sources import mlruns
from importer.sources.base import SourceOptions

from conftest import View, run_importer, tags_of

T0 = 1_600_000_000_000


def make_store(root: Path, experiment: str, registered: str) -> dict:
    """Write the store with the real client; returns ids by role."""
    import mlflow
    import numpy as np

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a new file store otherwise
        mlflow.set_tracking_uri(root.as_uri())
        mlflow.set_registry_uri(root.as_uri())
        try:
            exp = mlflow.set_experiment(experiment)
            ds = mlflow.data.from_numpy(np.arange(10.0).reshape(5, 2), name="train-ds")
            ids = {"experiment_id": exp.experiment_id, "experiment": experiment}
            with mlflow.start_run(run_name="train") as run:
                mlflow.log_param("lr", 0.1)
                info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), params={"alpha": "0.5"},
                                               tags={"team": "vision"}, model_type="agent")
                for step, acc in enumerate((0.7, 0.8, 0.9)):
                    mlflow.log_metric("acc", acc, step=step, timestamp=T0 + step, model_id=info.model_id, dataset=ds)
                mlflow.log_metric("loss", float("nan"), step=3, timestamp=T0 + 3, model_id=info.model_id, dataset=ds)
            with mlflow.start_run(run_name="evaluate") as ev:
                mlflow.log_metric("eval_acc", 0.75, step=0, timestamp=T0 + 10, model_id=info.model_id, dataset=ds)
            bare = mlflow.initialize_logged_model(name="bare", model_type="thing", tags={"k": "v"}, params={"p": "1"})
            client = mlflow.MlflowClient()
            gone = client.create_logged_model(exp.experiment_id, name="gone")
            client.delete_logged_model(gone.model_id)
            client.create_registered_model(registered, tags={"owner": "alice"}, description="the model")
            client.create_model_version(registered, f"models:/{info.model_id}", model_id=info.model_id,
                                        tags={"stage": "prod"})
            client.create_model_version(registered, f"runs:/{run.info.run_id}/echo", run_id=run.info.run_id)
            client.create_model_version(registered, f"runs:/{ev.info.run_id}/echo", run_id=ev.info.run_id,
                                        description="v3")
            client.delete_model_version(registered, "2")
            client.set_registered_model_alias(registered, "champion", "3")
            client.transition_model_version_stage(registered, "3", "Staging")
            ids.update(train=run.info.run_id, eval=ev.info.run_id, model_id=info.model_id,
                       bare=bare.model_id, gone=gone.model_id, registered=registered)
            # What MLflow itself reads back, for the comparison below.
            ids["theirs"] = {m: client.get_logged_model(m) for m in (info.model_id, bare.model_id)}
            return ids
        finally:
            mlflow.set_tracking_uri(before)
            mlflow.set_registry_uri(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("store") / "mlruns"
    suffix = uuid.uuid4().hex[:8]
    return root, make_store(root, f"lm-{suffix}", f"reg-{suffix}")


def _read(root: Path):
    return mlruns.read(root, SourceOptions())


# ---------------------------------------------------------------------------------------------
# Reading (no server)
# ---------------------------------------------------------------------------------------------


def test_logged_models_read_as_mlflow_reads_them(store):
    root, ids = store
    result = _read(root)
    assert not result.problems and not result.skipped
    models = {m.doc.model_id: m for m in result.logged_models}
    assert sorted(models) == sorted([ids["model_id"], ids["bare"]])  # the deleted one is noted
    assert any(ids["gone"] in n and "deleted" in n for n in result.notes)
    status = {"READY": "LOGGED_MODEL_READY", "PENDING": "LOGGED_MODEL_PENDING"}
    for model_id, theirs in ids["theirs"].items():
        doc = models[model_id].doc
        assert models[model_id].experiment == ids["experiment"]
        assert (doc.name, doc.model_type, doc.status, doc.source_run_id, doc.params, doc.tags) == (
            theirs.name, theirs.model_type, status[str(theirs.status)], theirs.source_run_id,
            theirs.params, theirs.tags)
    echo = models[ids["model_id"]]
    assert echo.doc.source_run_id == ids["train"]
    points = sorted((p.key, p.step, p.timestamp, p.value, p.run_id, p.dataset_name) for p in echo.doc.metrics)
    assert points == sorted([("acc", s, T0 + s, v, ids["train"], "train-ds") for s, v in enumerate((0.7, 0.8, 0.9))]
                            + [("loss", 3, T0 + 3, 0.0, ids["train"], "train-ds"),  # NaN, as a server keeps it
                               ("eval_acc", 0, T0 + 10, 0.75, ids["eval"], "train-ds")])
    assert all(p.dataset_digest for p in echo.doc.metrics)
    assert [o.model_dump() for o in echo.doc.outputs] == [{"run_id": ids["train"], "step": 0}]
    assert echo.doc.inputs == [ids["eval"]]
    folder = root / ids["experiment_id"] / "models" / ids["model_id"] / "artifacts"
    assert {a.dest: a.source for a in echo.files} == {p.relative_to(folder).as_posix(): p
                                                      for p in folder.rglob("*") if p.is_file()}
    assert {"MLmodel", "python_model.pkl"} <= {a.dest for a in echo.files}
    assert not any("not imported" in n and ids["model_id"] in n for n in result.notes)


def test_registered_models_read_with_their_versions(store):
    root, ids = store
    [model] = _read(root).models
    assert (model.name, model.description, model.tags, model.aliases) == (
        ids["registered"], "the model", {"owner": "alice"}, {"champion": "3"})
    v1, v3 = model.versions  # version 2 is deleted in the store
    assert (v1.version, v1.run_id, v1.model_id, v1.source, v1.tags, v1.stage) == (
        "1", ids["train"], ids["model_id"], f"models:/{ids['model_id']}", {"stage": "prod"}, None)
    assert (v3.version, v3.run_id, v3.model_id, v3.artifact_path, v3.description, v3.stage) == (
        "3", ids["eval"], None, "echo", "v3", "Staging")


def test_a_run_folder_named_alone_takes_only_its_models(store):
    root, ids = store
    train = _read(root / ids["experiment_id"] / ids["train"])
    assert [m.doc.model_id for m in train.logged_models] == [ids["model_id"]]
    assert not _read(root / ids["experiment_id"] / ids["eval"]).logged_models
    assert not train.models  # registered models are the store root's


# ---------------------------------------------------------------------------------------------
# Into a real server
# ---------------------------------------------------------------------------------------------


def _models(view: View, experiment: str) -> dict[str, dict]:
    """The experiment's logged models on the server by their source id."""
    exp = view.http.get("experiments/get-by-name", params={"experiment_name": experiment}).json()["experiment"]
    found = view.http.post("logged-models/search", json={"experiment_ids": [exp["experiment_id"]]}).json()
    out = {}
    for m in found.get("models", []):
        src = {t["key"]: t["value"] for t in m["info"].get("tags", [])}["importer.source_model_id"]
        assert src not in out, f"a second copy of {src}"
        out[src] = m
    return out


def _import(root: Path, uri: str, state: Path, *extra: str):
    return run_importer("import", str(root), "--tracking-uri", uri, "--state", str(state), "--json", *extra)


def test_store_with_models_imports_exactly_and_a_rerun_adds_nothing(store, uri, tmp_path):
    root, ids = store
    experiment = ids["experiment"]
    r = _import(root, uri, tmp_path / "l.db")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert "logged models: 2 created" in json.loads(r.stdout)["notes"]
    view = View(uri)
    runs = {tags_of(run)["importer.source_run_id"]: run["info"]["run_id"] for run in view.runs(experiment)}
    assert sorted(runs) == sorted([ids["train"], ids["eval"]])
    copies = _models(view, experiment)
    assert sorted(copies) == sorted([ids["model_id"], ids["bare"]])

    echo, theirs = copies[ids["model_id"]], ids["theirs"][ids["model_id"]]
    info, data = echo["info"], echo["data"]
    model_id = info["model_id"]
    assert model_id != ids["model_id"]
    assert (info["name"], info["model_type"], info["status"]) == ("echo", "agent", "LOGGED_MODEL_READY")
    assert info["source_run_id"] == runs[ids["train"]]
    assert {p["key"]: p["value"] for p in data["params"]} == theirs.params
    tags = {t["key"]: t["value"] for t in info["tags"]}
    assert tags.pop("importer.source_model_id") == ids["model_id"]
    # The server tags a model with its registered versions; this store's client did not.
    assert ids["registered"] in tags.pop("mlflow.modelVersions") and tags == theirs.tags
    points = sorted((p["key"], p["step"], p["timestamp"], p["value"], p["run_id"], p["model_id"],
                     p.get("dataset_name"), p.get("dataset_digest")) for p in data["metrics"])
    digest = {p.dataset_digest for p in theirs.metrics} - {None}
    assert len(digest) == 1
    [digest] = digest
    want = [("acc", s, T0 + s, v, runs[ids["train"]]) for s, v in enumerate((0.7, 0.8, 0.9))]
    want += [("loss", 3, T0 + 3, 0.0, runs[ids["train"]]), ("eval_acc", 0, T0 + 10, 0.75, runs[ids["eval"]])]
    assert points == sorted(w + (model_id, "train-ds", digest) for w in want)
    # The runs hold each point once, NaN as NaN: the model's points added nothing to them.
    assert view.history(runs[ids["train"]], "acc") == [(s, T0 + s, v) for s, v in enumerate((0.7, 0.8, 0.9))]
    assert view.history(runs[ids["train"]], "loss") == [(3, T0 + 3, "NaN")]
    train = view.http.get("runs/get", params={"run_id": runs[ids["train"]]}).json()["run"]
    assert train["outputs"]["model_outputs"] == [{"model_id": model_id, "step": 0}]
    ev = view.http.get("runs/get", params={"run_id": runs[ids["eval"]]}).json()["run"]
    assert {"model_id": model_id} in ev["inputs"]["model_inputs"]
    folder = root / ids["experiment_id"] / "models" / ids["model_id"] / "artifacts"
    art_root = info["artifact_uri"].split(":", 1)[1].strip("/")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) >= 2
    for f in files:
        got = httpx.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts/{art_root}/{f.relative_to(folder).as_posix()}")
        assert got.status_code == 200 and got.content == f.read_bytes(), f

    bare = copies[ids["bare"]]["info"]
    assert (bare["name"], bare["model_type"], bare["status"], bare.get("source_run_id") or None) == (
        "bare", "thing", "LOGGED_MODEL_PENDING", None)
    assert {p["key"]: p["value"] for p in copies[ids["bare"]]["data"]["params"]} == {"p": "1"}

    name = ids["registered"]
    reg = view.http.get("registered-models/get", params={"name": name}).json()["registered_model"]
    assert reg.get("description") == "the model" and {t["key"]: t["value"] for t in reg["tags"]} == {"owner": "alice"}
    assert reg["aliases"] == [{"alias": "champion", "version": "3"}]
    v1 = view.http.get("model-versions/get", params={"name": name, "version": "1"}).json()["model_version"]
    assert (v1["source"], v1["run_id"]) == (f"models:/{model_id}", runs[ids["train"]])
    assert {t["key"]: t["value"] for t in v1["tags"]}["stage"] == "prod"
    assert view.http.get("model-versions/get", params={"name": name, "version": "2"}).status_code == 404
    v3 = view.http.get("model-versions/get", params={"name": name, "version": "3"}).json()["model_version"]
    assert (v3["run_id"], v3["current_stage"], v3.get("description")) == (runs[ids["eval"]], "Staging", "v3")
    assert v3["source"] == ev["info"]["artifact_uri"] + "/echo"

    def versions() -> list[dict]:
        return view.http.get("model-versions/search", params={"filter": f"name='{name}'"}).json()["model_versions"]

    assert sorted(v["version"] for v in versions()) == ["1", "3"]

    # Again, without the ledger: nothing new anywhere.
    again = _import(root, uri, tmp_path / "other.db")
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    summary = json.loads(again.stdout)
    assert summary["runs"]["created"] == 0 and "logged models: 2 unchanged" in summary["notes"], summary
    assert sorted(_models(view, experiment)) == sorted(copies)
    assert sorted(v["version"] for v in versions()) == ["1", "3"]
    assert len(view.runs(experiment)) == 2


def test_a_broken_model_fails_alone_and_the_runs_import(store, uri, tmp_path):
    root, ids = store
    copy = tmp_path / "mlruns"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "models")  # the registered model is another test's
    models = copy / ids["experiment_id"] / "models"
    bare_meta = models / ids["bare"] / "meta.yaml"
    bare_meta.write_text("model_id: " + ids["bare"] + "\nname: [not closed\n")
    acc = models / ids["model_id"] / "metrics" / "acc"
    lines = acc.read_text().splitlines()
    acc.write_text("\n".join([lines[0], "1600000000001 oops 1", *lines[2:]]) + "\n")

    result = _read(copy)
    assert not result.problems  # nothing stops the runs
    where = {(p.file, p.location) for p in result.skipped}
    assert (str(acc), "line 2") in where and any(f == str(bare_meta) and loc.startswith("line") for f, loc in where)
    assert len(result.records) == 2

    experiment = f"broken-{uuid.uuid4().hex[:8]}"
    r = _import(copy, uri, tmp_path / "l.db", "--experiment", experiment)
    summary = json.loads(r.stdout)
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    assert summary["runs"]["created"] == 2
    failed = {o["origin"]: o["error"] for o in summary["details"] if o["action"] == "failed"}
    assert set(failed) == {str(bare_meta), str(acc)}
    assert "YAML" in failed[str(bare_meta)] and failed[str(acc)].startswith("line 2: ") and "oops" in failed[str(acc)]
    text = run_importer("import", str(copy), "--tracking-uri", uri, "--state", str(tmp_path / "l.db"),
                        "--experiment", experiment).stdout.decode()
    assert f"FAILED {bare_meta}" in text and f"FAILED {acc}" in text, text
    # The readable model is there, without the bad point.
    copies = _models(View(uri), experiment)
    assert list(copies) == [ids["model_id"]]
    assert sorted(p["step"] for p in copies[ids["model_id"]]["data"]["metrics"] if p["key"] == "acc") == [0, 2]
    inspect = json.loads(run_importer("inspect", str(copy), "--json").stdout)
    assert any(str(bare_meta) in p for p in inspect["problems"])
    check = run_importer("validate", str(copy))  # every problem, those an import gets past too
    assert check.returncode == 2 and str(bare_meta) in check.stderr.decode() and str(acc) in check.stderr.decode()


def test_a_deleted_experiments_model_stays_out_with_it(uri, tmp_path):
    """A model made outside any run goes with its experiment: one deleted in the store (in
    `.trash`) is left out with it, unless --include-deleted."""
    import mlflow

    root = tmp_path / "mlruns"
    name = f"gone-{uuid.uuid4().hex[:8]}"
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(root.as_uri())
        try:
            exp = mlflow.set_experiment(name)
            with mlflow.start_run(run_name="kept"):
                mlflow.log_param("a", "1")
            mlflow.initialize_logged_model(name="orphan", experiment_id=exp.experiment_id)
            mlflow.MlflowClient().delete_experiment(exp.experiment_id)
        finally:
            mlflow.set_tracking_uri(before)
    [model] = _read(root).logged_models
    assert model.doc.name == "orphan" and model.experiment == name
    r = _import(root, uri, tmp_path / "l.db")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert not any("logged models" in n for n in json.loads(r.stdout)["notes"])
    r = _import(root, uri, tmp_path / "l.db", "--include-deleted")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert "logged models: 1 created" in json.loads(r.stdout)["notes"]
    exp = View(uri).http.get("experiments/get-by-name", params={"experiment_name": name}).json()["experiment"]
    assert exp["lifecycle_stage"] == "deleted"


# ---------------------------------------------------------------------------------------------
# The same models in an mlflow-export-import folder
# ---------------------------------------------------------------------------------------------


def _dump(obj) -> dict:
    """An MLflow entity as mlflow-export-import dumps it: its attributes without the leading
    underscore, enums by their value, lists of entities likewise."""
    out = {}
    for k, v in vars(obj).items():
        if isinstance(v, list):
            v = [_dump(x) if hasattr(x, "__dict__") else x for x in v]
        out[k[1:]] = v.value if hasattr(v, "value") else v
    return out


def _write(folder: Path, name: str, mlflow_doc: dict, info: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"system": {"package_version": "1.2.0", "mlflow_version": "3.0.0"}, **({"info": info} if info else {}),
           "mlflow": mlflow_doc}
    (folder / name).write_text(json.dumps(doc, indent=2))


def write_export(root: Path, ids: dict, out: Path) -> None:
    """The store's experiment as an mlflow-export-import experiment export in `out`."""
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(root.as_uri())
        exp = client.get_experiment(ids["experiment_id"])
        models = [ids["model_id"], ids["bare"]]
        _write(out, "experiment.json", {"experiment": {"experiment_id": exp.experiment_id, "name": exp.name,
                                                        "tags": exp.tags, "lifecycle_stage": "active"},
                                        "runs": [ids["train"], ids["eval"]], "logged_models": models})
        for run_id in (ids["train"], ids["eval"]):
            run = client.get_run(run_id)
            _write(out / "runs" / run_id, "run.json", {
                "info": _dump(run.info), "params": run.data.params, "tags": run.data.tags,
                "metrics": {k: [{"value": m.value, "timestamp": m.timestamp, "step": m.step}
                                for m in client.get_metric_history(run_id, k)] for k in run.data.metrics},
                "inputs": {"dataset_inputs": [], "model_inputs": [_dump(m) for m in run.inputs.model_inputs]},
                "outputs": {"model_outputs": [_dump(m) for m in run.outputs.model_outputs]}})
        lm = out / "logged_models"
        _write(lm, "logged_models.json", {"experiments": [{"id": exp.experiment_id, "name": exp.name,
                                                          "logged_models": models}]},
               {"num_total_logged_models": 2, "num_ok_logged_models": 2, "failed_logged_models": []})
        for model_id in models:
            _write(lm / model_id, "logged_model.json", _dump(client.get_logged_model(model_id)))
            arts = root / ids["experiment_id"] / "models" / model_id / "artifacts"
            if arts.is_dir():
                shutil.copytree(arts, lm / model_id / "artifacts")


def test_export_folder_gives_the_same_logged_models(store, tmp_path):
    from importer.sources import mlflow_export

    root, ids = store
    write_export(root, ids, tmp_path / "exp")
    result = mlflow_export.read(tmp_path / "exp", SourceOptions())
    assert not result.problems and not result.skipped
    assert not any("logged model" in n for n in result.notes), result.notes
    theirs = {m.doc.model_id: m for m in _read(root).logged_models}
    ours = {m.doc.model_id: m for m in result.logged_models}
    assert sorted(ours) == sorted(theirs)
    for model_id, m in ours.items():
        a, b = m.doc.model_dump(exclude={"metrics"}), theirs[model_id].doc.model_dump(exclude={"metrics"})
        assert a == b and m.experiment == theirs[model_id].experiment == ids["experiment"]
        # MLflow's client gives a file store's model only its last point per dataset.
        points = {p.model_dump_json() for p in theirs[model_id].doc.metrics}
        assert {p.model_dump_json() for p in m.doc.metrics} <= points
        assert sorted(f.dest for f in m.files) == sorted(f.dest for f in theirs[model_id].files)
    assert ours[ids["model_id"]].doc.metrics


def test_export_folder_models_import_into_a_server(store, uri, tmp_path):
    root, ids = store
    write_export(root, ids, tmp_path / "exp")
    experiment = f"mei-{uuid.uuid4().hex[:8]}"
    r = _import(tmp_path / "exp", uri, tmp_path / "l.db", "--experiment", experiment)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    view = View(uri)
    runs = {tags_of(run)["importer.source_run_id"]: run["info"]["run_id"] for run in view.runs(experiment)}
    copies = _models(view, experiment)
    assert sorted(copies) == sorted([ids["model_id"], ids["bare"]])
    echo = copies[ids["model_id"]]
    model_id = echo["info"]["model_id"]
    assert (echo["info"]["name"], echo["info"]["source_run_id"]) == ("echo", runs[ids["train"]])
    exported = json.loads((tmp_path / "exp/logged_models" / ids["model_id"] / "logged_model.json").read_text())
    want = sorted((p["key"], p["step"], p["timestamp"], runs[p["run_id"]], p["dataset_digest"])
                  for p in exported["mlflow"]["metrics"])
    assert sorted((p["key"], p["step"], p["timestamp"], p["run_id"], p.get("dataset_digest"))
                  for p in echo["data"]["metrics"] if p["model_id"] == model_id) == want
    train = view.http.get("runs/get", params={"run_id": runs[ids["train"]]}).json()["run"]
    assert train["outputs"]["model_outputs"] == [{"model_id": model_id, "step": 0}]
    ev = view.http.get("runs/get", params={"run_id": runs[ids["eval"]]}).json()["run"]
    assert {"model_id": model_id} in ev["inputs"]["model_inputs"]
    art_root = echo["info"]["artifact_uri"].split(":", 1)[1].strip("/")
    mlmodel = tmp_path / "exp/logged_models" / ids["model_id"] / "artifacts" / "MLmodel"
    assert httpx.get(f"{uri}/api/2.0/mlflow-artifacts/artifacts/{art_root}/MLmodel").content == mlmodel.read_bytes()
    again = _import(tmp_path / "exp", uri, tmp_path / "l.db", "--experiment", experiment)
    assert "logged models: 2 unchanged" in json.loads(again.stdout)["notes"]
