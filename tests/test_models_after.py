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

from conftest import run_importer, write_json
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


def test_lost_answer_to_create_model_version_makes_one_version(sklearn_folder, uri, experiment, state):
    """Every answer to model-versions/create is lost after the server acted: the importer finds the
    version by its tags before trying again, and makes no second one."""
    name = f"lost-{uuid.uuid4().hex[:8]}"
    manifest = _manifest(sklearn_folder, experiment, name)
    proxy, proxy_url = start_proxy(uri, _free_port(), drop_after=1.0,
                                   only="/api/2.0/mlflow/model-versions/create")
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
