"""Shared fixtures: one real `mlflow server` per test session, and a way to read back what it holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples, so that a landing never depends on
# a lucky draw; a developer's run draws new ones (and finds new cases).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from importer.local_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No test sees the developer's own MLflow settings, nor the tracking and registry URIs an
    earlier test gave the mlflow package (they outlive the servers they name, and win over
    MLFLOW_TRACKING_URI)."""
    for var in list(os.environ):
        if var.startswith("MLFLOW_TRACKING_") or var == "MLFLOW_REGISTRY_URI":
            monkeypatch.delenv(var)
    yield
    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as registry
        import mlflow.tracking._tracking_service.utils as tracking

        tracking._tracking_uri = registry._registry_uri = None
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set_*_uri write them too
            os.environ.pop(var, None)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("mlflow"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def uri(server) -> str:
    return server.url


@pytest.fixture
def experiment() -> str:
    """A fresh experiment name per test, so tests never see each other's runs."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "ledger.db"


class View:
    """Reads what the server holds, straight through the REST API (not through importer)."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url + "/api/2.0/mlflow/", timeout=60)
        self.url = url

    def runs(self, experiment: str, include_deleted: bool = False) -> list[dict]:
        r = self.http.get("experiments/get-by-name", params={"experiment_name": experiment})
        if r.status_code == 404:
            return []
        exp_id = r.json()["experiment"]["experiment_id"]
        out, token = [], None
        while True:
            body = {"experiment_ids": [exp_id], "max_results": 1000,
                    "run_view_type": "ALL" if include_deleted else "ACTIVE_ONLY"}
            if token:
                body["page_token"] = token
            page = self.http.post("runs/search", json=body).json()
            out += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def by_key(self, experiment: str) -> dict[str, dict]:
        """import key -> run; fails if a key is on two runs (a duplicate)."""
        out: dict[str, dict] = {}
        for run in self.runs(experiment):
            key = tags_of(run).get("importer.import_key")
            assert key not in out, f"duplicate run for import key {key!r}"
            out[key] = run
        return out

    def history(self, run_id: str, key: str) -> list[tuple]:
        r = self.http.get("metrics/get-history", params={"run_id": run_id, "metric_key": key,
                                                         "max_results": 25000})
        points = r.json().get("metrics", [])
        return sorted((int(p["step"]), int(p["timestamp"]), p["value"]) for p in points)

    def artifact(self, run: dict, path: str) -> bytes:
        root = run["info"]["artifact_uri"].split(":", 1)[1].lstrip("/")
        r = httpx.get(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}", timeout=60)
        r.raise_for_status()
        return r.content


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params_of(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


@pytest.fixture
def view(uri) -> View:
    return View(uri)


def run_importer(*args: str, env: dict | None = None, input: bytes | None = None,
                 cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m importer ARGS` as a real process, as a user runs it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "importer", *args], capture_output=True,
                          input=input, env=full_env, cwd=cwd or ROOT, timeout=timeout)


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path
