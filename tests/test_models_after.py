"""Models registered after the fact: a manifest run's `models`, and `import --register-model NAME`
for training folders. Against the real test server; the lost answer through the real proxy."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import View, run_importer, tags_of, write_json
from importer.local_server import LocalServer
from proxy import start as start_proxy


def _versions(uri: str, name: str) -> list[dict]:
    r = httpx.get(f"{uri}/api/2.0/mlflow/model-versions/search",
                  params={"filter": f"name='{name}'", "max_results": 1000}, timeout=30)
    r.raise_for_status()
    return r.json().get("model_versions", [])


def _model(uri: str, name: str) -> dict:
    r = httpx.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": name}, timeout=30)
    r.raise_for_status()
    return r.json()["registered_model"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sklearn_folder(tmp_path_factory) -> Path:
    """A folder holding a tiny scikit-learn model saved by MLflow itself (MLmodel, model.pkl, ...)."""
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    folder = tmp_path_factory.mktemp("sk")
    x = np.arange(10, dtype=float).reshape(-1, 1)
    mlflow.sklearn.save_model(LinearRegression().fit(x, 2 * x[:, 0] + 1), folder / "model")
    return folder


def _manifest(folder: Path, experiment: str, name: str, runs=None) -> Path:
    runs = runs or [{"id": "tuned-1", "name": "tuned", "artifacts": [{"path": "model", "dest": "model"}],
                     "models": [{"path": "model", "name": name, "aliases": ["champion"],
                                 "tags": {"stage": "candidate"}, "description": "linear, 1 feature"}]}]
    return write_json(folder / f"runs-{uuid.uuid4().hex[:6]}.json",
                      {"format_version": 1, "experiment": experiment, "runs": runs})


def _import(path: Path, uri: str, state: Path, *extra: str) -> dict:
    res = run_importer("import", str(path), "--tracking-uri", uri, "--state", str(state), "--json", *extra)
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()
    return json.loads(res.stdout)


def test_manifest_model_loads_back_and_rerun_creates_nothing(sklearn_folder, uri, experiment, state,
                                                            view, monkeypatch):
    import mlflow.pyfunc

    name = f"lin-{uuid.uuid4().hex[:8]}"
    manifest = _manifest(sklearn_folder, experiment, name)
    first = _import(manifest, uri, state)
    [entry] = first["model_versions"]
    assert (entry["name"], entry["version"], entry["action"]) == (name, "1", "created")
    assert entry["url"] == f"{uri}/#/models/{name}/versions/1"
    [run] = view.runs(experiment)
    [version] = _versions(uri, name)
    assert version["run_id"] == run["info"]["run_id"]  # the UI links the version to its run
    assert version["source"] == run["info"]["artifact_uri"] + "/model"
    assert version["description"] == "linear, 1 feature"
    assert {t["key"]: t["value"] for t in version["tags"]}["stage"] == "candidate"
    assert {a["alias"]: a["version"] for a in _model(uri, name)["aliases"]} == {"champion": "1"}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert loaded.predict(np.array([[3.0]])) == pytest.approx([7.0])
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(np.array([[0.0]])) == pytest.approx([1.0])

    again = _import(manifest, uri, state)  # same ledger: the run is unchanged
    assert [(v["version"], v["action"]) for v in again["model_versions"]] == [("1", "found")]
    fresh = _import(manifest, uri, state.with_name("other.db"))  # no ledger: found by tags
    assert [(v["version"], v["action"]) for v in fresh["model_versions"]] == [("1", "found")]
    assert len(_versions(uri, name)) == 1


@pytest.mark.parametrize("endpoint", ("model-versions/create", "registered-models/create"))
def test_lost_answer_to_create_makes_one_version(sklearn_folder, uri, experiment, state, endpoint):
    """Every answer to the create is lost after the server acted: the importer finds what it made
    (the version by its tags, the model by its name) before trying again, and makes no second."""
    name = f"lost-{uuid.uuid4().hex[:8]}"
    manifest = _manifest(sklearn_folder, experiment, name)
    proxy, proxy_url = start_proxy(uri, _free_port(), drop_after=1.0, only=f"/api/2.0/mlflow/{endpoint}")
    try:
        summary = _import(manifest, proxy_url, state)
        stats = httpx.get(f"{proxy_url}/__proxy_stats").json()
    finally:
        proxy.terminate()
        proxy.wait()
    assert stats["drop_after"] == 1, stats
    assert [(v["version"], v["action"]) for v in summary["model_versions"]] == [("1", "created")]
    assert len(_versions(uri, name)) == 1


def _validate(path: Path) -> tuple[int, str]:
    res = run_importer("validate", str(path))
    return res.returncode, res.stderr.decode() + res.stdout.decode()


def test_validate_refuses_bad_models(sklearn_folder, experiment):
    art = [{"path": "model", "dest": "model"}]
    runs = [
        {"id": "a", "artifacts": art, "models": [{"path": "model", "name": "m", "aliases": ["champion", "latest"]}]},
        {"id": "b", "artifacts": art, "models": [{"path": "weights", "name": "m"}]},
        {"id": "c", "artifacts": art, "models": [{"path": "model/MLmodel", "name": "a:b", "aliases": ["V7"]}]},
        {"id": "d", "artifacts": art, "models": [{"path": "model", "name": "m", "aliases": ["champion"]}]},
    ]
    code, out = _validate(_manifest(sklearn_folder, experiment, "m", runs))
    assert code == 2, out
    for expected in ("runs[0].models[0].aliases[1]: alias 'latest' is reserved",
                     "runs[1].models[0].path: 'weights' is not among the run's artifacts",
                     "runs[2].models[0].name: model name 'a:b'",
                     "runs[2].models[0].aliases[0]: alias 'V7' is reserved",
                     "runs[3].models[0].aliases[0]: alias 'champion' of model 'm' is already claimed "
                     "at runs[0].models[0].aliases[0]"):
        assert expected in out, out
    # A file inside the folder is a path among the artifacts too.
    ok = [{"id": "a", "artifacts": art, "models": [{"path": "model/MLmodel", "name": "m"}]}]
    code, out = _validate(_manifest(sklearn_folder, experiment, "m", ok))
    assert code == 0, out


def _hf_folder(root: Path) -> Path:
    """A Trainer output folder with a saved model (fake weights: nothing loads them here)."""
    out = root / "hf-out"
    out.mkdir(parents=True)
    state = {"global_step": 2, "log_history": [{"step": 1, "epoch": 0.5, "loss": 0.9},
                                               {"step": 2, "epoch": 1.0, "loss": 0.7}]}
    (out / "trainer_state.json").write_text(json.dumps(state))
    (out / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (out / "model.safetensors").write_bytes(b"\x00weights\x01" * 100)
    (out / "tokenizer.json").write_text("{}")
    (out / "optimizer.pt").write_bytes(b"not the model")
    return out


def _yolo_run(root: Path, name: str, weights: bytes) -> Path:
    run = root / name
    (run / "weights").mkdir(parents=True)
    (run / "results.csv").write_text("epoch,train/box_loss,metrics/mAP50(B)\n1,0.5,0.1\n2,0.4,0.2\n")
    (run / "weights" / "best.pt").write_bytes(weights)
    (run / "weights" / "last.pt").write_bytes(b"last")
    return run


def test_hf_folder_with_register_model(tmp_path, uri, experiment, state, view):
    out = _hf_folder(tmp_path)
    name = f"hf-{uuid.uuid4().hex[:8]}"
    plain = _import(out, uri, state, "--experiment", experiment, "--dry-run")
    assert any("model files seen, not uploaded: config.json, model.safetensors, tokenizer.json" in n
               for n in plain["notes"]), plain["notes"]
    dry = _import(out, uri, state, "--experiment", experiment, "--register-model", name, "--dry-run")
    assert [(v["name"], v["action"], v["path"]) for v in dry["model_versions"]] == [(name, "would-create", "model")]
    refused = run_importer("import", str(out), "--tracking-uri", uri, "--register-model", "latest/x")
    assert refused.returncode == 2 and "--register-model: model name 'latest/x'" in refused.stderr.decode()
    summary = _import(out, uri, state, "--experiment", experiment, "--register-model", name)
    assert [(v["name"], v["version"], v["action"]) for v in summary["model_versions"]] == [(name, "1", "created")]
    [run] = view.runs(experiment)
    assert view.artifact(run, "model/model.safetensors") == b"\x00weights\x01" * 100
    assert view.artifact(run, "model/tokenizer.json") == b"{}"
    with pytest.raises(httpx.HTTPStatusError):
        view.artifact(run, "model/optimizer.pt")
    [version] = _versions(uri, name)
    assert version["run_id"] == run["info"]["run_id"]
    assert version["source"] == run["info"]["artifact_uri"] + "/model"


def test_yolo_runs_each_get_a_version_and_verify_carries_them(tmp_path, uri, experiment, state, view):
    root = tmp_path / experiment
    _yolo_run(root, "train", b"best-1")
    _yolo_run(root, "train2", b"best-2")
    name = f"yolo-{uuid.uuid4().hex[:8]}"
    summary = _import(root, uri, state, "--register-model", name)
    assert sorted(v["version"] for v in summary["model_versions"]) == ["1", "2"]
    by_run = {v["run_id"]: v["version"] for v in _versions(uri, name)}
    runs = {r["info"]["run_name"]: r for r in view.runs(experiment)}
    assert set(by_run) == {r["info"]["run_id"] for r in runs.values()}
    assert view.artifact(runs["train2"], "model/best.pt") == b"best-2"
    again = _import(root, uri, state, "--register-model", name)
    assert sorted(v["action"] for v in again["model_versions"]) == ["found", "found"]
    assert len(_versions(uri, name)) == 2
    # Moved to another server, the versions go with their runs, and verify finds both stores alike.
    dest = LocalServer(tmp_path / "dest")
    dest.start()
    try:
        moved = run_importer("migrate", "--from", uri, "--to", dest.url, "--experiment", experiment,
                             "--state", str(tmp_path / "migrate.db"))
        assert moved.returncode == 0, moved.stderr.decode() + moved.stdout.decode()
        assert sorted(v["run_id"] is not None for v in _versions(dest.url, name)) == [True, True]
        checked = run_importer("verify", "--from", uri, "--to", dest.url, "--experiment", experiment)
        # Registered models are compared (version, run, source path), and the runs' import keys:
        # a move gives a run `mlflow-run-<id>` and keeps the key it was imported with in
        # importer.first_import_key.
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
        for run in View(dest.url).runs(experiment):
            tags = tags_of(run)
            assert tags["importer.first_import_key"].startswith("yolo-"), tags
            assert tags["importer.import_key"] == "mlflow-run-" + tags["importer.source_run_id"]
        # ... and a version missing on the destination would be told.
        httpx.request("DELETE", f"{dest.url}/api/2.0/mlflow/model-versions/delete",
                      json={"name": name, "version": "2"}, timeout=30).raise_for_status()
        checked = run_importer("verify", "--from", uri, "--to", dest.url, "--experiment", experiment)
        assert f"model {name}" in checked.stdout.decode(), checked.stdout.decode()
    finally:
        dest.stop()


def _read(path: Path, register: str | None):
    from importer.pipeline import read_inputs
    return read_inputs([path], "exp", register_model=register)


def test_lightning_and_keras_model_files(tmp_path):
    """Which file is the model, without a server: Lightning's best checkpoint, not last.ckpt;
    Keras's file of the log's name; nothing uploaded without --register-model."""
    version = tmp_path / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "metrics.csv").write_text("epoch,step,train_loss\n0,9,0.5\n1,19,0.4\n")
    (version / "checkpoints" / "epoch=1-step=20.ckpt").write_bytes(b"best")
    (version / "checkpoints" / "last.ckpt").write_bytes(b"last")
    keras_dir = tmp_path / "keras"
    keras_dir.mkdir()
    (keras_dir / "train.csv").write_text("epoch,loss\n0,0.5\n1,0.4\n0,0.6\n1,0.3\n")  # two fit() calls
    (keras_dir / "train.keras").write_bytes(b"keras")
    (keras_dir / "other.h5").write_bytes(b"h5")

    plain = _read(tmp_path, None)
    assert not [a for r in plain.records for a in r.artifacts] and not [m for r in plain.records for m in r.models]
    assert any("model files seen, not uploaded: checkpoints/epoch=1-step=20.ckpt" in n for n in plain.notes), plain.notes
    # The model is named in a note, not listed as unrecognised; a file that is no run's model is.
    assert str(keras_dir / "train.keras") not in plain.unrecognised
    assert str(keras_dir / "other.h5") in plain.unrecognised

    inputs = _read(tmp_path, "clf")
    models = {r.name: ([a.dest for a in r.artifacts], [(m.name, m.path) for m in r.models]) for r in inputs.records}
    assert models["version_0"] == (["model/epoch=1-step=20.ckpt"], [("clf", "model")])
    assert models["train (run 2)"] == (["model/train.keras"], [("clf", "model")])
    assert models["train"] == ([], [])  # the file is the last fit()'s
    assert str(keras_dir / "train.keras") not in inputs.unrecognised


def test_hf_without_a_final_save_takes_the_best_checkpoint(tmp_path):
    out = tmp_path / "hf-out"
    for n in (5, 10):
        ckpt = out / f"checkpoint-{n}"
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
        (ckpt / "model.safetensors").write_bytes(f"w{n}".encode())
        (ckpt / "optimizer.pt").write_bytes(b"opt")
    state = {"global_step": 10, "best_model_checkpoint": "/elsewhere/hf-out/checkpoint-5",
             "log_history": [{"step": 5, "loss": 0.9}, {"step": 10, "loss": 0.8}]}
    (out / "trainer_state.json").write_text(json.dumps(state))
    [rec] = _read(out, "hf-model").records
    assert sorted(str(a.source.relative_to(out)) for a in rec.artifacts) == [
        "checkpoint-5/config.json", "checkpoint-5/model.safetensors"]
    (out / "trainer_state.json").write_text(json.dumps({**state, "best_model_checkpoint": None}))
    inputs = _read(out, "hf-model")
    assert [a.source.parent.name for a in inputs.records[0].artifacts] == ["checkpoint-10"] * 2
    assert any("checkpoint-10/ is taken (the newest checkpoint)" in n for n in inputs.notes), inputs.notes


def test_dry_run_lists_the_versions_it_would_register_and_writes_none(sklearn_folder, uri, experiment, state):
    name = f"dry-{uuid.uuid4().hex[:8]}"
    manifest = _manifest(sklearn_folder, experiment, name)
    before = _import(manifest, uri, state, "--dry-run")
    assert [(v["name"], v["version"], v["action"], v["import_key"], v["path"]) for v in before["model_versions"]] \
        == [(name, None, "would-create", "tuned-1", "model")]
    text = run_importer("import", str(manifest), "--tracking-uri", uri, "--state", str(state), "--dry-run")
    assert f"model {name!r}: would register a version from 'model' of run 'tuned-1'" in text.stdout.decode()
    assert httpx.get(f"{uri}/api/2.0/mlflow/registered-models/get", params={"name": name}).status_code == 404
    _import(manifest, uri, state)
    after = _import(manifest, uri, state, "--dry-run")
    assert [(v["name"], v["version"], v["action"]) for v in after["model_versions"]] == [(name, "1", "found")]
    assert len(_versions(uri, name)) == 1


def test_import_records_registers_too(sklearn_folder, uri, experiment, state):
    """The library's import_records (records read elsewhere, as a service does) registers them."""
    import importer

    name = f"rec-{uuid.uuid4().hex[:8]}"
    records = importer.read_inputs([_manifest(sklearn_folder, experiment, name)]).records
    summary = importer.import_records(records, uri, state=state)
    assert [(v["name"], v["action"]) for v in summary.model_versions] == [(name, "created")]
    assert f"model {name!r} version 1 (created): {uri}/#/models/{name}/versions/1" in summary.text()


@pytest.mark.parametrize("trial", range(2))
def test_importers_at_once_register_one_version(sklearn_folder, uri, experiment, tmp_path, trial):
    """Four importers (own ledgers) import the same run with a model at the same moment: one
    version stays, and each importer reports that one."""
    from test_races import race

    name = f"race-{uuid.uuid4().hex[:8]}"
    manifest = _manifest(sklearn_folder, experiment, name)
    results = race(manifest, uri, [tmp_path / f"ledger-{i}.db" for i in range(4)])
    failed = [(r.returncode, r.stdout.decode()[-2000:], r.stderr.decode()[-2000:]) for r in results if r.returncode]
    assert not failed, "\n".join(map(str, failed))
    versions = _versions(uri, name)
    assert len(versions) == 1, versions
    assert {a["alias"]: a["version"] for a in _model(uri, name)["aliases"]} == {"champion": versions[0]["version"]}
