"""A far server: how many round trips one after another a run's first point waits for, through a
real proxy that adds latency and numbers each request's round trip (tests/proxy.py --rounds);
and the experiment's lookup and create made at once, against a real server."""

import asyncio
import json
import urllib.request

import httpx
import pytest

import proxy
from conftest import run_importer, write_json
from importer.errors import ServerError
from importer.local_server import free_port
from importer.mlflow_api import MlflowApi


def one_run(experiment: str, name: str) -> dict:
    return {"format_version": 1, "experiment": experiment,
            "runs": [{"name": name, "params": {"lr": 0.1},
                      "metrics": {"loss": {"step": [0, 1, 2], "value": [1.0, 0.5, 0.25]}}}]}


@pytest.fixture
def far(uri):
    """A proxy adding 300 ms to each request and numbering round trips: (its URL, trips()). The
    numbering holds while the client takes well under 300 ms between an answer and the request
    it leads to, a loaded CI machine too."""
    proc, url = proxy.start(uri, free_port(), latency_ms=300, rounds=True)

    def trips() -> list[tuple[str, str, int]]:
        with urllib.request.urlopen(f"{url}/__proxy_stats", timeout=5) as r:
            return [(m, path.rsplit("/mlflow/", 1)[-1], n) for m, path, n in json.load(r)["trips"]]

    yield url, trips
    proc.terminate()
    proc.wait()


def first_round(trips, endpoint: str) -> int:
    return min(n for _, path, n in trips if path == endpoint)


def test_a_new_experiment_is_asked_for_and_created_in_one_round_trip(far, experiment, tmp_path, state):
    url, trips = far
    done = run_importer("import", str(write_json(tmp_path / "a.json", one_run(experiment, "a"))),
                        "--tracking-uri", url, "--state", str(state))
    assert done.returncode == 0, done.stderr.decode()
    seen = trips()
    # Health, the lookup and the create go together; then the run is created, then the search
    # that settles it among racing importers, and its points go in the fourth round trip.
    assert {path for _, path, n in seen if n == 1} == {"/health", "experiments/get-by-name", "experiments/create"}, seen
    assert first_round(seen, "runs/create") == 2, seen
    assert first_round(seen, "runs/log-batch") == 4, seen


def test_an_experiment_the_ledger_knows_is_looked_up_not_created_again(far, experiment, tmp_path, state):
    url, trips = far
    for name in ("a", "b"):
        done = run_importer("import", str(write_json(tmp_path / f"{name}.json", one_run(experiment, name))),
                            "--tracking-uri", url, "--state", str(state))
        assert done.returncode == 0, done.stderr.decode()
    creates = [n for _, path, n in trips() if path == "experiments/create"]
    assert len(creates) == 1, "the second import asked the server to create an experiment it has"


def test_importers_creating_one_experiment_at_once_agree_on_it(uri, experiment):
    async def each() -> tuple[str, bool]:
        async with MlflowApi(uri) as api:
            return await api.get_or_create_experiment(experiment, {})

    async def all_at_once():
        return await asyncio.gather(*(each() for _ in range(8)))

    answers = asyncio.run(all_at_once())
    assert len({exp_id for exp_id, _ in answers}) == 1, answers
    assert sum(created for _, created in answers) == 1, answers


def test_a_refused_create_says_nothing_when_the_experiment_exists(uri, experiment):
    """A user who may not create experiments imports into one that exists: the create that goes
    beside the lookup is refused, and that is no error. Into one that does not exist, it is."""
    httpx.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": experiment}).raise_for_status()
    proc, url = proxy.start(uri, free_port(), refuse="/api/2.0/mlflow/experiments/create")
    try:
        async def get_or_create(name: str) -> tuple[str, bool]:
            async with MlflowApi(url) as api:
                return await api.get_or_create_experiment(name, {})

        exp_id, created = asyncio.run(get_or_create(experiment))
        assert not created and exp_id
        with pytest.raises(ServerError, match="404"):
            asyncio.run(get_or_create(experiment + "-new"))
    finally:
        proc.terminate()
        proc.wait()


def test_a_deleted_experiment_is_neither_created_nor_written(uri, experiment, tmp_path, state):
    made = httpx.post(f"{uri}/api/2.0/mlflow/experiments/create", json={"name": experiment})
    httpx.post(f"{uri}/api/2.0/mlflow/experiments/delete",
               json={"experiment_id": made.json()["experiment_id"]}).raise_for_status()

    async def get_or_create() -> tuple[str, bool]:
        async with MlflowApi(uri) as api:
            return await api.get_or_create_experiment(experiment, {})

    with pytest.raises(ServerError, match="is deleted on the server"):
        asyncio.run(get_or_create())
    # The import's first experiment is asked for with the server's health: what it meets there
    # (other than an unreachable server or refused credentials) is told by each run, as any other.
    done = run_importer("import", str(write_json(tmp_path / "a.json", one_run(experiment, "a"))),
                        "--tracking-uri", uri, "--state", str(state))
    assert done.returncode == 1, done.stderr.decode()
    assert "FAILED" in done.stdout.decode() and "is deleted on the server" in done.stdout.decode()
