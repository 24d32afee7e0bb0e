"""`importer serve` as a real process against the session's real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ROOT, params_of, run_importer
from importer.local_server import free_port
from service_process import Service, wait_for_job
import proxy

OPENAPI = ROOT / "schemas" / "service.openapi.json"


def manifest(experiment: str, key: str = "run-a", points: int = 50, **run) -> dict:
    return {"format_version": 1, "experiment": experiment, "runs": [{
        "id": key, "name": key, "start_time": 1700000000000, "params": {"lr": 0.01, "opt": {"name": "adam"}},
        "tags": {"team": "vision"},
        "metrics": {"loss": {"step": list(range(points)), "value": [1 / (s + 1) for s in range(points)],
                             "timestamp": [1700000000000 + s for s in range(points)]}},
        **run}]}


@pytest.fixture
def service(uri, tmp_path):
    with Service(uri, tmp_path) as svc:
        yield svc


def spooled_jobs(svc: Service) -> list[str]:
    return sorted(p.name for p in (svc.spool / "jobs").iterdir())


def test_posts_from_8_clients_at_once(service, experiment, view):
    def post(i: int) -> httpx.Response:
        with service.client() as http:
            return http.post("/v1/runs", params={"wait": 120}, json=manifest(experiment, f"run-{i}", points=200 + i))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    runs = view.by_key(experiment)
    assert sorted(runs) == sorted(f"run-{i}" for i in range(8))
    for a in answers:
        job = a.json()
        assert job["state"] == "done" and job["summary"]["runs"]["created"] == 1
        [run] = job["runs"]
        assert run["run_id"] == runs[run["import_key"]]["info"]["run_id"]
        assert run["url"].endswith(f"/runs/{run['run_id']}")
        assert len(view.history(run["run_id"], "loss")) == 200 + int(run["import_key"].split("-")[1])
    assert params_of(runs["run-3"]) == {"lr": "0.01", "opt.name": "adam"}


def test_the_same_manifest_posted_concurrently_makes_one_run(service, experiment, view):
    doc = manifest(experiment, points=1000)

    def post(_) -> httpx.Response:
        with service.client() as http:
            return http.post("/v1/runs", params={"wait": 120}, json=doc)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    ids = {a.json()["runs"][0]["run_id"] for a in answers}
    runs = view.by_key(experiment)  # fails on a duplicate
    assert list(runs) == ["run-a"] and ids == {runs["run-a"]["info"]["run_id"]}
    assert len(view.history(runs["run-a"]["info"]["run_id"], "loss")) == 1000
    # Once more, later: nothing new.
    with service.client() as http:
        again = http.post("/v1/runs", json=doc).json()
    assert again["runs"][0]["action"] == "unchanged" and again["runs"][0]["run_id"] in ids
    # Grown: the new points are appended to the same run.
    with service.client() as http:
        grown = http.post("/v1/runs", json=manifest(experiment, points=1500)).json()
    assert grown["runs"][0]["action"] == "appended" and grown["summary"]["points"] == 500
    assert len(view.history(grown["runs"][0]["run_id"], "loss")) == 1500 and len(view.runs(experiment)) == 1


def test_multipart_artifacts_arrive_byte_identical(service, experiment, view):
    blob, text = os.urandom(300_000), "line 1\nline 2\n".encode()
    doc = manifest(experiment, artifacts=[{"path": "model/weights.bin"}, {"path": "plots", "dest": "figures"}])
    with service.client() as http:
        answer = http.post("/v1/runs", files=[
            ("manifest", ("manifest.json", json.dumps(doc), "application/json")),
            ("model/weights.bin", ("weights.bin", blob)),
            ("plots/a.txt", ("a.txt", text)), ("plots/deeper/b.txt", ("b.txt", text * 3))])
    assert answer.status_code == 201, answer.text
    run = view.by_key(experiment)["run-a"]
    assert view.artifact(run, "weights.bin") == blob
    assert view.artifact(run, "figures/a.txt") == text
    assert view.artifact(run, "figures/deeper/b.txt") == text * 3
    assert answer.json()["summary"]["artifacts"] == 3


def test_bad_posts_are_refused_and_leave_nothing(uri, tmp_path, experiment, view):
    with Service(uri, tmp_path, "--max-body", "100000") as svc, svc.client() as http:
        bad_json = http.post("/v1/runs", content=b'{"format_version": 1,', headers={"content-type": "application/json"})
        assert bad_json.status_code == 400 and "invalid JSON" in bad_json.text
        doc = manifest(experiment)
        doc["runs"][0]["lerning_rate"] = 1
        unknown = http.post("/v1/runs", json=doc)
        assert unknown.status_code == 422
        assert unknown.json()["problems"] == [{"location": "runs[0].lerning_rate",
                                               "message": "unknown field 'lerning_rate' (check the spelling)"}]
        huge = http.post("/v1/runs", json=manifest(experiment, points=20_000))
        assert huge.status_code == 413
        # No declared length: refused while reading, not after.
        def chunks():
            for _ in range(40):
                yield b" " * 10_000
        streamed = http.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        for path in ("../escape.txt", "/etc/passwd", "a/../../escape.txt"):
            traversal = http.post("/v1/runs", files=[
                ("manifest", ("m.json", json.dumps(manifest(experiment, artifacts=[{"path": path}])))),
                (path, ("x", b"data"))])
            assert traversal.status_code == 422, (path, traversal.text)
        named_only = http.post("/v1/runs", json=manifest(experiment, artifacts=[{"path": "../../etc/hostname"}]))
        assert named_only.status_code == 422 and "outside" in named_only.text
        not_uploaded = http.post("/v1/runs", json=manifest(experiment, artifacts=[{"path": "a.bin"}]))
        assert not_uploaded.status_code == 422 and "uploaded parts" in not_uploaded.text
        unused = http.post("/v1/runs", files=[("manifest", ("m.json", json.dumps(manifest(experiment)))),
                                              ("extra.bin", ("x", b"data"))])
        assert unused.status_code == 422
        validated = http.post("/v1/validate", json=doc).json()
        assert validated["ok"] is False and validated["problems"][0]["location"] == "runs[0].lerning_rate"
        assert http.post("/v1/validate", json=manifest(experiment)).json()["ok"] is True
    assert spooled_jobs(svc) == [] and list((svc.spool / "incoming").iterdir()) == []
    assert view.runs(experiment) == []


def test_artifacts_from_a_named_folder_only(uri, tmp_path, experiment, view):
    shared = tmp_path / "shared"
    (shared / "out").mkdir(parents=True)
    (shared / "out" / "model.bin").write_bytes(b"weights")
    (tmp_path / "secret.txt").write_text("not for the service")
    (shared / "out" / "link.txt").symlink_to(tmp_path / "secret.txt")
    with Service(uri, tmp_path, "--artifacts-from", str(shared)) as svc, svc.client() as http:
        ok = http.post("/v1/runs", json=manifest(experiment, artifacts=[{"path": "out/model.bin"}]))
        assert ok.status_code == 201, ok.text
        outside = http.post("/v1/runs", json=manifest(experiment, "run-b", artifacts=[{"path": "../secret.txt"}]))
        assert outside.status_code == 422
        linked = http.post("/v1/runs", json=manifest(experiment, "run-c", artifacts=[{"path": "out/link.txt"}]))
        assert linked.status_code == 422 and "outside" in linked.text
        folder = http.post("/v1/runs", json=manifest(experiment, "run-d", artifacts=[{"path": "out"}]))
        assert folder.status_code == 422  # the folder holds the link
    assert list(view.by_key(experiment)) == ["run-a"]
    assert view.artifact(view.by_key(experiment)["run-a"], "model.bin") == b"weights"


def test_a_token_is_required_off_loopback(uri, tmp_path, experiment):
    refused = run_importer("serve", "--tracking-uri", uri, "--host", "0.0.0.0", "--port", str(free_port()),
                           "--spool", str(tmp_path / "s0"), timeout=60)
    assert refused.returncode == 2 and b"token" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    svc = Service(uri, tmp_path, "--token-file", str(token_file), host="0.0.0.0")
    with svc:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token-value"}):
            for method, path in (("POST", "/v1/runs"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                                 ("GET", "/v1/jobs/0123")):
                answer = httpx.request(method, svc.url + path, headers=headers, json=manifest(experiment))
                assert answer.status_code == 401 and answer.content == b"", (headers, path)
        assert httpx.get(svc.url + "/healthz").status_code == 200
        good = httpx.post(svc.url + "/v1/runs", json=manifest(experiment), timeout=60,
                          headers={"Authorization": "Bearer s3cret-token-value"})
        assert good.status_code == 201
    assert spooled_jobs(svc) == [good.json()["id"]]
    assert b"s3cret" not in svc.log.read_bytes()


def test_kill_9_after_202_then_restart_finishes_the_job_once(uri, tmp_path, experiment, view):
    slow, slow_url = proxy.start(uri, free_port(), latency_ms=300)
    try:
        svc = Service(slow_url, tmp_path).start()
        try:
            with svc.client() as http:
                answer = http.post("/v1/runs", params={"wait": 0}, json=manifest(experiment, points=3000))
                assert answer.status_code == 202
                job_id = answer.json()["id"]
                assert answer.headers["location"] == f"/v1/jobs/{job_id}"
                assert wait_for_job(http, job_id, states=("running",))["state"] == "running"
        finally:
            svc.kill()
    finally:
        slow.kill()
        slow.wait()
    assert not (svc.spool / "jobs" / job_id / "result.json").exists()
    restarted = Service(uri, tmp_path, port=svc.port)
    with restarted, restarted.client() as http:
        job = wait_for_job(http, job_id)
        assert job["state"] == "done", job
    runs = view.by_key(experiment)  # one run, no duplicate
    assert list(runs) == ["run-a"] and job["runs"][0]["run_id"] == runs["run-a"]["info"]["run_id"]
    assert len(view.history(job["runs"][0]["run_id"], "loss")) == 3000


def test_tls_with_a_certificate_of_its_own(uri, tmp_path, experiment, view):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    with Service(uri, tmp_path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)) as svc:
        assert svc.url.startswith("https://")
        with httpx.Client(base_url=svc.url, verify=False, timeout=60) as http:
            assert http.post("/v1/runs", json=manifest(experiment)).status_code == 201
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the port
            httpx.get(svc.url.replace("https", "http") + "/healthz", timeout=5).raise_for_status()
    assert list(view.by_key(experiment)) == ["run-a"]


def test_find_health_readiness_and_metrics(service, experiment):
    with service.client() as http:
        job = http.post("/v1/runs", json=manifest(experiment, points=10)).json()
        found = http.get("/v1/runs", params={"experiment": experiment, "tag": "team=vision"}).json()
        assert found == {"run_ids": [job["runs"][0]["run_id"]]}
        assert http.get("/v1/runs", params={"experiment": experiment, "tag": "team=nlp"}).json() == {"run_ids": []}
        assert http.get("/readyz").status_code == 200
        text = http.get("/metrics").text
        assert 'importer_jobs{state="done"} 1' in text and "importer_points_written_total 10" in text
        assert 'importer_runs_total{action="created"} 1' in text
        requests = int(text.split("importer_mlflow_request_seconds_count ")[1].split()[0])
        assert requests >= 5 and f'importer_mlflow_request_seconds_bucket{{le="+Inf"}} {requests}' in text
        assert http.get("/v1/jobs/" + "0" * 32).status_code == 404


def test_readyz_tells_when_the_mlflow_server_is_away(tmp_path):
    with Service(f"http://127.0.0.1:{free_port()}", tmp_path) as svc, svc.client() as http:
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200


def test_checked_in_openapi_matches_the_models(service):
    from importer.service.app import openapi_document

    doc = openapi_document()
    assert json.loads(OPENAPI.read_text()) == doc, (
        "schemas/service.openapi.json is stale: regenerate it with `make schema` "
        "(python -m importer.service.app > schemas/service.openapi.json)")
    with service.client() as http:
        assert http.get("/openapi.json").json() == doc
    assert doc["components"]["schemas"]["Run"]["additionalProperties"] is False


def test_without_the_extra_serve_says_how_to_install_it_and_the_rest_works(tmp_path, uri):
    hidden = tmp_path / "hidden"
    (hidden / "fastapi").mkdir(parents=True)
    (hidden / "fastapi" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n")
    env = {"PYTHONPATH": f"{hidden}{os.pathsep}{ROOT}"}
    served = run_importer("serve", "--tracking-uri", uri, "--spool", str(tmp_path / "s"), env=env)
    assert served.returncode == 2 and b"pip install 'importer[service]'" in served.stderr
    doc = tmp_path / "m.json"
    doc.write_text(json.dumps(manifest("e")))
    assert run_importer("validate", str(doc), env=env).returncode == 0
