"""The value rules of importer/model/values.py, checked against a real MLflow server: a key is
refused by key_problem exactly when the server refuses it, and NaN/Infinity come back from the
server as stored_value says."""

from __future__ import annotations

import math

import httpx
import pytest

from importer.model import MAX_DOUBLE, MAX_KEY_LENGTH, key_problem, stored_value

REFUSED = ["val/AR@100", "a,b", "f(x)", "a=b", "../x", "/abs", "a//b", "", "x" * (MAX_KEY_LENGTH + 1)]
ACCEPTED = ["loss", "val/loss", "épsilon", "a b", "a:b", "a-b.c_d", "x" * MAX_KEY_LENGTH]


@pytest.fixture(scope="module")
def run(server):
    """One run to log into, on the session's real server."""
    http = httpx.Client(base_url=server.url + "/api/2.0/mlflow/", timeout=60)
    exp = http.post("experiments/create", json={"name": f"rules-{id(http)}"}).json()["experiment_id"]
    run_id = http.post("runs/create", json={"experiment_id": exp, "start_time": 0}).json()["run"]["info"]["run_id"]
    yield http, run_id
    http.close()


def _server_takes(run, what: str, key: str) -> bool:
    http, run_id = run
    entry = {"metrics": {"key": key, "value": 1.0, "timestamp": 0, "step": 0},
             "params": {"key": key, "value": "1"}, "tags": {"key": key, "value": "1"}}[what]
    r = http.post("runs/log-batch", json={"run_id": run_id, what: [entry]})
    assert r.status_code in (200, 400), r.text  # 400: INVALID_PARAMETER_VALUE, nothing else
    return r.status_code == 200


@pytest.mark.parametrize("what", ["metrics", "params", "tags"])
@pytest.mark.parametrize("key", REFUSED)
def test_key_rules_match_the_server(run, key, what):
    assert key_problem(key, what) is not None
    assert not _server_takes(run, what, key)


@pytest.mark.parametrize("what", ["metrics", "params", "tags"])
@pytest.mark.parametrize("key", ACCEPTED)
def test_keys_the_server_accepts(run, key, what):
    assert key_problem(key, what) is None
    assert _server_takes(run, what, key)


def test_special_values_come_back_as_stored_value_says(run):
    http, run_id = run
    sent = {"nan": "NaN", "pinf": "Infinity", "ninf": "-Infinity", "one": 1.5}
    metrics = [{"key": k, "value": v, "timestamp": 0, "step": 0} for k, v in sent.items()]
    assert http.post("runs/log-batch", json={"run_id": run_id, "metrics": metrics}).status_code == 200
    for key, value in sent.items():
        [point] = http.get("metrics/get-history", params={"run_id": run_id, "metric_key": key}).json()["metrics"]
        assert stored_value(point["value"]) == stored_value(value if isinstance(value, float) else
                                                            {"NaN": math.nan, "Infinity": math.inf,
                                                             "-Infinity": -math.inf}[value])
    assert stored_value(math.inf) == MAX_DOUBLE and stored_value(math.nan) == "NaN"
