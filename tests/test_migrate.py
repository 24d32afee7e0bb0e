"""Between stores: server -> server (`migrate`), server -> bundle -> server (`export`, `import`),
and `verify`, against real `mlflow server` processes (a source and fresh destinations).

Every test ends with `verify`, and `verify` itself is shown to catch differences."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import uuid
import weakref
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from importer import mlflow_api
from importer.local_server import LocalServer

from conftest import View, params_of, run_importer, tags_of

T0 = 1_600_000_000_000  # historical times: 2020-09-13


class Rest:
    """Writes to a server the way a training script's client would, through the REST API."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url + "/api/2.0/mlflow/", timeout=60)

    def post(self, endpoint: str, body: dict) -> dict:
        r = self.http.post(endpoint, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def run(self, exp_id: str, name: str, start: int, parent: str | None = None, **tags) -> str:
        all_tags = {"mlflow.runName": name, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        body = {"experiment_id": exp_id, "start_time": start, "run_name": name, "user_id": "alice",
                "tags": [{"key": k, "value": v} for k, v in all_tags.items()]}
        return self.post("runs/create", body)["run"]["info"]["run_id"]

    def finish(self, run_id: str, status: str, end: int) -> None:
        self.post("runs/update", {"run_id": run_id, "status": status, "end_time": end})

    def artifact(self, run_id: str, path: str, data: bytes) -> None:
        run = self.http.get("runs/get", params={"run_id": run_id}).json()["run"]
        root = run["info"]["artifact_uri"].split(":", 1)[1].lstrip("/")
        r = httpx.put(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}", content=data)
        assert r.status_code == 200, r.text


def populate(url: str, name: str, points: int = 3000) -> dict:
    """One experiment with what a migration must carry: three levels of nesting, FAILED and KILLED
    runs with historical times, NaN and Infinity, a 6000-character param (the most the server
    keeps), artifacts in sub-folders, a deleted run, dataset inputs, and a registered model with
    three versions (the second deleted) and an alias. Returns the source run ids by role."""
    rest = Rest(url)
    exp_id = rest.post("experiments/create", {"name": name, "tags": [
        {"key": "team", "value": "vision"}, {"key": "mlflow.note.content", "value": "What we tried"}]})["experiment_id"]
    ids = {}
    ids["root"] = rest.run(exp_id, "sweep", T0, purpose="search")
    ids["child"] = rest.run(exp_id, "trial-1", T0 + 1000, parent=ids["root"])
    ids["grandchild"] = rest.run(exp_id, "fold-0", T0 + 2000, parent=ids["child"])
    ids["failed"] = rest.run(exp_id, "crashed", T0 + 3000, parent=ids["root"])
    ids["killed"] = rest.run(exp_id, "stopped", T0 + 4000)
    ids["deleted"] = rest.run(exp_id, "thrown-away", T0 + 5000)
    for role, run_id in ids.items():
        rest.post("runs/log-batch", {"run_id": run_id, "params": [
            {"key": "lr", "value": "0.001"}, {"key": "role", "value": role},
            {"key": "config", "value": "x" * 6000}]})
        for start in range(0, points, 1000):
            rest.post("runs/log-batch", {"run_id": run_id, "metrics": [
                {"key": "loss", "value": 1.0 / (s + 1), "timestamp": T0 + s * 10, "step": s}
                for s in range(start, min(points, start + 1000))]})
    rest.post("runs/log-batch", {"run_id": ids["child"], "metrics": [
        {"key": "val/acc", "value": "NaN", "timestamp": T0, "step": 0},
        {"key": "val/acc", "value": "Infinity", "timestamp": T0 + 1, "step": 1},
        {"key": "val/acc", "value": 0.5, "timestamp": T0 + 2, "step": 1},  # two points at one step
    ]})
    rest.post("runs/log-inputs", {"run_id": ids["root"], "datasets": [{
        "dataset": {"name": "train", "digest": "abc123", "source_type": "local",
                    "source": '{"uri": "/data/train"}'},
        "tags": [{"key": "mlflow.data.context", "value": "training"}]}]})
    rest.artifact(ids["root"], "model/MLmodel", b"artifact_path: model\n")
    rest.artifact(ids["root"], "model/data/weights.bin", bytes(range(256)) * 4096)
    rest.artifact(ids["grandchild"], "plots/deep/curve.txt", b"0.1 0.2\n")
    for role, status in (("root", "FINISHED"), ("child", "FINISHED"), ("grandchild", "FINISHED"),
                         ("failed", "FAILED"), ("killed", "KILLED"), ("deleted", "FINISHED")):
        rest.finish(ids[role], status, T0 + 600_000 + len(role))
    rest.post("runs/delete", {"run_id": ids["deleted"]})
    model = f"model-{name}"
    rest.post("registered-models/create", {"name": model, "description": "the model",
                                           "tags": [{"key": "owner", "value": "alice"}]})
    run = rest.http.get("runs/get", params={"run_id": ids["root"]}).json()["run"]
    for i, rid in enumerate((ids["root"], ids["root"], ids["child"])):
        run = rest.http.get("runs/get", params={"run_id": rid}).json()["run"]
        rest.post("model-versions/create", {"name": model, "source": run["info"]["artifact_uri"] + "/model",
                                            "run_id": rid, "description": f"v{i + 1}",
                                            "tags": [{"key": "stage", "value": f"s{i}"}]})
    rest.http.request("DELETE", "model-versions/delete", json={"name": model, "version": "2"}).raise_for_status()
    rest.post("registered-models/alias", {"name": model, "alias": "champion", "version": "3"})
    ids["model"] = model
    return ids


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("source"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def dest(tmp_path):
    """A fresh destination server per test."""
    srv = LocalServer(tmp_path / "dest")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def populated(source):
    name = f"mig-{uuid.uuid4().hex[:8]}"
    return name, populate(source.url, name)


def verify(src: str, dst: str, *extra: str):
    return run_importer("verify", "--from", src, "--to", dst, *extra)


def test_migrate_is_exact_and_a_rerun_copies_nothing(source, dest, populated, tmp_path):
    name, ids = populated
    state = str(tmp_path / "ledger.db")
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--include-deleted", "--state", state)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    v = verify(source.url, dest.url, "--experiment", name, "--include-deleted", "--show-map")
    assert v.returncode == 0, v.stdout.decode()
    out = v.stdout.decode()
    assert "no differences" in out and ids["grandchild"] in out  # the id map is printed

    view = View(dest.url)
    runs = {tags_of(r)["importer.source_run_id"]: r for r in view.runs(name, include_deleted=True)}
    assert len(runs) == 6
    new = {role: runs[ids[role]]["info"]["run_id"] for role in ("root", "child", "grandchild")}
    assert tags_of(runs[ids["grandchild"]])["mlflow.parentRunId"] == new["child"]
    assert tags_of(runs[ids["child"]])["mlflow.parentRunId"] == new["root"]
    assert runs[ids["deleted"]]["info"]["lifecycle_stage"] == "deleted"
    assert runs[ids["killed"]]["info"]["status"] == "KILLED"
    assert runs[ids["failed"]]["info"]["start_time"] == str(T0 + 3000) or int(runs[ids["failed"]]["info"]["start_time"]) == T0 + 3000
    assert params_of(runs[ids["root"]])["config"] == "x" * 6000
    acc = view.history(new["child"], "val/acc")
    assert len(acc) == 3 and any(isinstance(v, str) and v == "NaN" or (isinstance(v, float) and math.isnan(v))
                                 for _, _, v in acc)
    assert runs[ids["root"]]["inputs"]["dataset_inputs"][0]["dataset"]["digest"] == "abc123"
    assert view.artifact(runs[ids["root"]], "model/data/weights.bin") == bytes(range(256)) * 4096
    exp = view.http.get("experiments/get-by-name", params={"experiment_name": name}).json()["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.note.content"] == "What we tried"
    model = view.http.get("registered-models/get", params={"name": ids["model"]}).json()["registered_model"]
    # version 2 was deleted at the source: version 3 keeps its number (and `models:/NAME/3` its meaning)
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "3"}
    v3 = view.http.get("model-versions/get", params={"name": ids["model"], "version": "3"}).json()["model_version"]
    assert v3["run_id"] == new["child"] and v3["description"] == "v3"
    assert view.http.get("model-versions/get", params={"name": ids["model"], "version": "2"}).status_code == 404

    again = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                         "--include-deleted", "--state", state, "--json")
    assert again.returncode == 0, again.stderr.decode()
    summary = json.loads(again.stdout)
    assert summary["runs"] == {"created": 0, "appended": 0, "unchanged": 6, "failed": 0}
    assert summary["points"] == 0
    assert len(view.runs(name, include_deleted=True)) == 6


def test_a_late_copy_of_a_version_is_removed_by_the_next_migrate(source, dest, populated, tmp_path):
    """A killed migrate's model-versions/create may land after the rerun looked for it (the server
    finishes a request whose client died): two copies of source version 3. The lowest numbered
    stays, the late one is deleted, and verify finds both stores alike."""
    name, ids = populated
    state = str(tmp_path / "ledger.db")
    args = ("migrate", "--from", source.url, "--to", dest.url, "--experiment", name, "--state", state)
    assert run_importer(*args).returncode == 0
    rest = Rest(dest.url)
    v3 = rest.http.get("model-versions/get", params={"name": ids["model"], "version": "3"}).json()["model_version"]
    late = rest.post("model-versions/create", {"name": ids["model"], "source": v3["source"], "run_id": v3["run_id"],
                                               "tags": v3["tags"]})["model_version"]
    assert late["version"] == "4"
    again = run_importer(*args)
    assert again.returncode == 0, again.stderr.decode() + again.stdout.decode()
    assert rest.http.get("model-versions/get", params={"name": ids["model"], "version": "4"}).status_code == 404
    assert verify(source.url, dest.url, "--experiment", name).returncode == 0


def test_migrate_without_ledger_nor_deleted_runs_then_growth(source, dest, populated, tmp_path):
    """No ledger at all (a new machine): runs are found by their key tag; a run that grew at the
    source gets only its new points."""
    name, ids = populated
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--state", str(tmp_path / "a.db"))
    assert r.returncode == 0, r.stderr.decode()
    assert len(View(dest.url).runs(name, include_deleted=True)) == 5  # the deleted run stays behind
    assert verify(source.url, dest.url, "--experiment", name).returncode == 0
    Rest(source.url).post("runs/log-batch", {"run_id": ids["killed"], "metrics": [
        {"key": "loss", "value": 0.0001, "timestamp": T0 + 99_999, "step": 5000}]})
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--state", str(tmp_path / "b.db"), "--json")
    summary = json.loads(r.stdout)
    assert summary["runs"]["appended"] == 1 and summary["points"] == 1, summary
    assert verify(source.url, dest.url, "--experiment", name).returncode == 0


def test_export_bundle_import_round_trip(source, dest, populated, tmp_path):
    name, ids = populated
    bundle = tmp_path / "bundle"
    r = run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                     "--include-deleted")
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["counts"]["runs"] == 6 and manifest["counts"]["models"] == 1
    table = pq.read_table(bundle / "runs" / ids["child"] / "metrics.parquet")
    assert table.num_rows == 3003 and set(table.column_names) >= {"key", "step", "timestamp", "value"}
    size = sum(p.stat().st_size for p in bundle.glob("runs/*/metrics.parquet"))
    assert size / manifest["counts"]["points"] <= 20, "bundle metrics must take at most 20 bytes a point"

    again = run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                         "--include-deleted", "--json")
    assert json.loads(again.stdout)["runs"]["unchanged"] == 6

    r = run_importer("import", str(bundle), "--tracking-uri", dest.url, "--include-deleted",
                     "--state", str(tmp_path / "ledger.db"))
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    v = verify(source.url, dest.url, "--experiment", name, "--include-deleted")
    assert v.returncode == 0, v.stdout.decode()


def test_verify_reports_differences(source, dest, populated, tmp_path):
    name, ids = populated
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--state", str(tmp_path / "l.db"))
    assert r.returncode == 0, r.stderr.decode()
    view = View(dest.url)
    moved = {tags_of(r)["importer.source_run_id"]: r["info"]["run_id"] for r in view.runs(name)}
    Rest(dest.url).post("runs/log-batch", {"run_id": moved[ids["killed"]], "metrics": [
        {"key": "loss", "value": 9.0, "timestamp": T0, "step": 77777}], "tags": [{"key": "extra", "value": "1"}]})
    v = verify(source.url, dest.url, "--experiment", name)
    out = v.stdout.decode()
    assert v.returncode == 1
    assert "metric loss" in out and "tag extra" in out and ids["killed"] in out


def test_bundle_with_a_broken_file_is_refused(source, populated, tmp_path):
    name, ids = populated
    bundle = tmp_path / "b"
    assert run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                        "--no-models").returncode == 0
    parquet = bundle / "runs" / ids["root"] / "metrics.parquet"
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    r = run_importer("validate", str(bundle))
    assert r.returncode == 2
    assert "metrics.parquet does not match its hash" in r.stderr.decode()


def test_bundle_naming_a_file_outside_itself_is_refused(source, populated, tmp_path):
    """A bundle's documents name its files; one that names a path out of the bundle (its hashes
    made to match, as anyone editing it can) is refused: nothing outside is read or uploaded."""
    import hashlib

    name, ids = populated
    bundle = tmp_path / "b"
    assert run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                        "--no-models").returncode == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    run_json = bundle / "runs" / ids["grandchild"] / "run.json"
    doc = json.loads(run_json.read_text())
    doc["artifacts"] = [{"path": "../../../../secret.txt", "size": secret.stat().st_size,
                         "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()}]
    run_json.write_text(json.dumps(doc))
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["runs"][ids["grandchild"]]["sha256"] = hashlib.sha256(run_json.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    r = run_importer("validate", str(bundle))
    assert r.returncode == 2
    assert "secret.txt" in r.stderr.decode() and "leads outside" in r.stderr.decode()


def test_bundle_artifact_changed_in_place_fails_its_run_before_any_write(source, dest, populated, tmp_path):
    """An artifact with its size but not its bytes (bit rot, an edit): that run fails, named, with
    nothing of it written; the other runs are imported and the exit code says so."""
    name, ids = populated
    bundle = tmp_path / "b"
    assert run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                        "--no-models").returncode == 0
    curve = bundle / "runs" / ids["grandchild"] / "artifacts" / "plots" / "deep" / "curve.txt"
    data = bytearray(curve.read_bytes())
    data[0] ^= 0x01
    curve.write_bytes(bytes(data))
    r = run_importer("import", str(bundle), "--tracking-uri", dest.url,
                     "--state", str(tmp_path / "l.db"), "--json")
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    summary = json.loads(r.stdout)
    [failed] = [o for o in summary["details"] if o["action"] == "failed"]
    assert failed["import_key"] == f"mlflow-run-{ids['grandchild']}" and "curve.txt" in failed["error"]
    assert "SHA-256" in failed["error"]
    keys = {tags_of(run)["importer.import_key"] for run in View(dest.url).runs(name, include_deleted=True)}
    assert f"mlflow-run-{ids['grandchild']}" not in keys and len(keys) == summary["runs"]["created"] == 4


def test_shards_split_families_disjointly(source, populated, tmp_path):
    name, ids = populated
    seen = []
    for i in (1, 2, 3):
        out = tmp_path / f"s{i}"
        r = run_importer("export", "--from", source.url, "--out", str(out), "--experiment", name,
                         "--include-deleted", "--shard", f"{i}/3", "--no-models")
        assert r.returncode == 0, r.stderr.decode()
        seen.append({p.name for p in (out / "runs").iterdir()})
    everything = set().union(*seen)
    assert len(everything) == sum(map(len, seen)) == 6  # disjoint, complete
    family = {ids["root"], ids["child"], ids["grandchild"], ids["failed"]}
    assert any(family <= s for s in seen)  # nested runs stay together
    bad = run_importer("export", "--from", source.url, "--out", str(tmp_path / "x"), "--shard", "0/3")
    assert bad.returncode == 2 and "I counts from 1" in bad.stderr.decode()


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_mlruns_folder_imports_with_long_params_kept_whole(dest, tmp_path):
    """A file store may hold a param longer than any server keeps (10,000 characters here): the
    param gets the first 6000, the artifact importer/long_params/<key> the whole value."""
    store = FIXTURES / "mlruns" / "project"
    state = str(tmp_path / "ledger.db")
    r = run_importer("import", str(store), "--tracking-uri", dest.url, "--include-deleted",
                     "--state", state, "--json")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    view = View(dest.url)
    runs = {tags_of(run)["importer.source_run_id"]: run
            for run in view.runs("fixture experiment", include_deleted=True)}
    long_run = runs["4f0c2e1d9b8a4c7e9f6a5b3c2d1e0f9a"]
    whole = (store / "mlruns/1/4f0c2e1d9b8a4c7e9f6a5b3c2d1e0f9a/params/long").read_text()
    assert len(whole) == 10_000
    assert params_of(long_run)["long"] == whole[:6000]
    assert tags_of(long_run)["importer.long_params"] == "long"
    assert view.artifact(long_run, "importer/long_params/long").decode() == whole
    again = run_importer("import", str(store), "--tracking-uri", dest.url, "--include-deleted",
                         "--state", state, "--json")
    summary = json.loads(again.stdout)
    assert summary["runs"]["created"] == 0 and summary["runs"]["failed"] == 0, summary
    assert len(view.runs("fixture experiment", include_deleted=True)) == len(runs)


def test_empty_and_deleted_experiments(source, dest, tmp_path):
    """An experiment without runs is created with its tags; one deleted at the source is deleted on
    the destination too, and a rerun (which must write into it) leaves it deleted, unchanged."""
    rest = Rest(source.url)
    empty, gone = f"empty-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    rest.post("experiments/create", {"name": empty, "tags": [{"key": "mlflow.note.content", "value": "nothing yet"}]})
    gone_id = rest.post("experiments/create", {"name": gone})["experiment_id"]
    run_id = rest.run(gone_id, "old", T0)
    rest.post("runs/log-batch", {"run_id": run_id, "metrics": [{"key": "m", "value": 1.5, "timestamp": T0, "step": 0}]})
    rest.finish(run_id, "FINISHED", T0 + 10)
    rest.post("experiments/delete", {"experiment_id": gone_id})
    args = ["migrate", "--from", source.url, "--to", dest.url, "--experiment", empty, "--experiment", gone,
            "--include-deleted", "--state", str(tmp_path / "l.db"), "--json"]
    r = run_importer(*args)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    v = verify(source.url, dest.url, "--experiment", empty, "--experiment", gone, "--include-deleted")
    assert v.returncode == 0, v.stdout.decode()
    view = View(dest.url)
    exp = view.http.get("experiments/get-by-name", params={"experiment_name": gone}).json()["experiment"]
    assert exp["lifecycle_stage"] == "deleted"
    again = run_importer(*args)
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert json.loads(again.stdout)["runs"] == {"created": 0, "appended": 0, "unchanged": 1, "failed": 0}
    assert verify(source.url, dest.url, "--experiment", empty, "--experiment", gone,
                  "--include-deleted").returncode == 0


def _empty_and_deleted(rest: Rest, runs: int) -> tuple[str, str]:
    """An empty experiment with a description, and a deleted one holding `runs` runs."""
    empty, gone = f"empty-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    rest.post("experiments/create", {"name": empty, "tags": [{"key": "mlflow.note.content", "value": "nothing yet"}]})
    gone_id = rest.post("experiments/create", {"name": gone})["experiment_id"]
    for i in range(runs):
        run_id = rest.run(gone_id, f"old-{i}", T0 + i)
        rest.post("runs/log-batch", {"run_id": run_id, "metrics": [{"key": "m", "value": i, "timestamp": T0, "step": 0}]})
        rest.finish(run_id, "FINISHED", T0 + 10)
    rest.post("experiments/delete", {"experiment_id": gone_id})
    return empty, gone


def _lifecycle(url: str, name: str) -> str:
    exp = View(url).http.get("experiments/get-by-name", params={"experiment_name": name}).json()["experiment"]
    return exp["lifecycle_stage"]


def test_deleted_experiment_is_deleted_by_the_last_shard(source, dest, tmp_path):
    """Shards cannot know when the others are done: a deleted experiment stays active until every
    shard has marked it done, then the last one deletes it; a rerun of one shard leaves it deleted."""
    empty, gone = _empty_and_deleted(Rest(source.url), runs=6)
    sel = ["--experiment", empty, "--experiment", gone, "--include-deleted"]

    def shard(i: int):
        r = run_importer("migrate", "--from", source.url, "--to", dest.url, *sel, "--shard", f"{i}/3",
                         "--state", str(tmp_path / f"l{i}.db"), "--json")
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        return json.loads(r.stdout)

    assert any("shards 2, 3 of 3" in n for n in shard(1)["notes"])
    assert _lifecycle(dest.url, gone) == "active"  # shards 2 and 3 may still be writing into it
    shard(2)
    assert _lifecycle(dest.url, gone) == "active"
    shard(3)
    assert _lifecycle(dest.url, gone) == "deleted"
    assert verify(source.url, dest.url, *sel).returncode == 0
    assert shard(2)["runs"]["created"] == 0
    assert _lifecycle(dest.url, gone) == "deleted"
    assert verify(source.url, dest.url, *sel).returncode == 0


def test_bundle_carries_empty_and_deleted_experiments(source, dest, tmp_path):
    """Through a bundle, as through migrate: the empty experiment arrives with its description, the
    deleted one is deleted on the destination (its runs in it), and without --include-deleted the
    deleted experiment's runs are left out."""
    empty, gone = _empty_and_deleted(Rest(source.url), runs=2)
    sel = ["--experiment", empty, "--experiment", gone, "--include-deleted"]
    bundle = tmp_path / "bundle"
    assert run_importer("export", "--from", source.url, "--out", str(bundle), *sel).returncode == 0
    plain = run_importer("import", str(bundle), "--tracking-uri", dest.url, "--json")
    assert plain.returncode == 0, plain.stdout.decode() + plain.stderr.decode()
    assert json.loads(plain.stdout)["runs"]["created"] == 0
    assert View(dest.url).http.get("experiments/get-by-name", params={"experiment_name": gone}).status_code == 404
    args = ["import", str(bundle), "--tracking-uri", dest.url, "--include-deleted",
            "--state", str(tmp_path / "l.db"), "--json"]
    r = run_importer(*args)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert json.loads(r.stdout)["runs"]["created"] == 2
    assert _lifecycle(dest.url, gone) == "deleted"
    assert verify(source.url, dest.url, *sel).returncode == 0
    again = run_importer(*args)
    assert json.loads(again.stdout)["runs"]["unchanged"] == 2
    assert _lifecycle(dest.url, gone) == "deleted"
    assert verify(source.url, dest.url, *sel).returncode == 0


def test_deleted_experiment_never_deletes_the_destinations_own(source, dest, tmp_path):
    """The destination already has an active experiment of that name, with a run of its own: the
    deleted source experiment's runs arrive (deleted), the experiment and its own run stay active."""
    _, gone = _empty_and_deleted(Rest(source.url), runs=1)
    d = Rest(dest.url)
    own = d.run(d.post("experiments/create", {"name": gone})["experiment_id"], "theirs", T0)
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", gone,
                     "--include-deleted", "--state", str(tmp_path / "l.db"), "--json")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert any("left active" in n for n in json.loads(r.stdout)["notes"])
    assert _lifecycle(dest.url, gone) == "active"
    runs = {run["info"]["run_id"]: run["info"]["lifecycle_stage"]
            for run in View(dest.url).runs(gone, include_deleted=True)}
    assert runs.pop(own) == "active" and list(runs.values()) == ["deleted"]


def test_what_is_not_carried_is_named(source, dest, tmp_path, monkeypatch):
    """Traces do not move: migrate and export say so, per experiment (logged models do move)."""
    rest = Rest(source.url)
    name = f"genai-{uuid.uuid4().hex[:8]}"
    exp_id = rest.post("experiments/create", {"name": name})["experiment_id"]
    rest.post("logged-models", {"experiment_id": exp_id, "name": "agent"})
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    import mlflow
    mlflow.set_tracking_uri(source.url)
    mlflow.set_experiment(experiment_id=exp_id)
    with mlflow.start_span("answer") as span:
        span.set_inputs({"question": "?"})
    for args in (["migrate", "--from", source.url, "--to", dest.url, "--state", str(tmp_path / "l.db")],
                 ["export", "--from", source.url, "--out", str(tmp_path / "b")]):
        r = run_importer(*args, "--experiment", name, "--json")
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        notes = json.loads(r.stdout)["notes"]
        assert f"experiment {name!r} holds traces, which are not carried" in notes, notes
        assert "logged models: 1 created" in notes or "bundle holds" in " ".join(notes), notes


def test_one_failing_run_does_not_stop_the_others(source, dest, populated, tmp_path):
    """The destination already holds one of the runs with another value of a param (someone
    edited it): that run fails, named with the reason, the others are moved, and the exit code
    says so."""
    name, ids = populated
    d = Rest(dest.url)
    exp_id = d.post("experiments/create", {"name": name})["experiment_id"]
    clash = d.run(exp_id, "stopped", T0 + 4000, **{"importer.import_key": f"mlflow-run-{ids['killed']}"})
    d.post("runs/log-batch", {"run_id": clash, "params": [{"key": "lr", "value": "0.5"}]})
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--state", str(tmp_path / "l.db"), "--json")
    assert r.returncode == 1
    summary = json.loads(r.stdout)
    assert summary["runs"]["created"] == 4 and summary["runs"]["failed"] == 1
    failed = [o for o in summary["details"] if o["action"] == "failed"]
    assert "lr" in failed[0]["error"] and failed[0]["import_key"] == f"mlflow-run-{ids['killed']}"
    v = verify(source.url, dest.url, "--experiment", name)
    assert v.returncode == 1 and "param lr" in v.stdout.decode()


def test_a_read_history_page_leaves_no_body_behind(source, populated, monkeypatch):
    """A page's body goes with the page, not with the next full run of the cyclic garbage
    collector (httpx's Response and its stream refer to each other): export used to keep about
    every 3 MB page it read, 778 MB at 5 million points."""
    monkeypatch.setattr(mlflow_api, "HISTORY_PAGE", 1000)  # the 3000-point history in 3 pages
    name, ids = populated
    responses = []

    async def read() -> list[int]:
        async with mlflow_api.MlflowApi(source.url) as api:
            api._http.event_hooks["response"].append(lambda r: _remember(responses, r))
            return [len(page) async for page in api.metric_history_pages(ids["root"], "loss")]

    gc.collect()
    gc.disable()  # what a full collection would free must already be free
    try:
        assert asyncio.run(read()) == [1000, 1000, 1000]
        kept = [r() for r in responses if r() is not None and _has_body(r())]
    finally:
        gc.enable()
    assert len(responses) == 5 and kept == []  # bulk's probe and first page, the token check, two pages


async def _remember(responses: list, resp: httpx.Response) -> None:
    responses.append(weakref.ref(resp))


def _has_body(resp: httpx.Response) -> bool:
    try:
        return len(resp.content) > 10_000
    except httpx.ResponseNotRead:
        return False


def test_export_reads_several_metrics_of_a_run_at_once_and_writes_them_in_order(source, tmp_path, monkeypatch):
    """The metrics of one run are read several at once (one long run would otherwise keep a
    single server worker busy), and written metric after metric in name order, so that the
    bundle's bytes do not depend on which answer came first."""
    from importer.sources import bundle as bundle_mod
    from importer import moves
    from importer.sources.server import Selection

    monkeypatch.setattr(mlflow_api, "HISTORY_PAGE", 700)
    rest, name = Rest(source.url), f"wide-{uuid.uuid4().hex[:8]}"
    run_id = rest.run(rest.post("experiments/create", {"name": name})["experiment_id"], "wide", T0)
    want = {}
    for k in range(6):
        key = f"m{k}"
        want[key] = [(s, T0 + s * 7 + k, k + s / 3) for s in range(2000 + 300 * k)]
        for i in range(0, len(want[key]), 1000):
            rest.post("runs/log-batch", {"run_id": run_id, "metrics": [
                {"key": key, "value": v, "timestamp": t, "step": s} for s, t, v in want[key][i:i + 1000]]})
    reading, most = set(), 0
    get_body = mlflow_api.MlflowApi.get_body

    async def observed(self, path, params, retry=True):
        nonlocal most
        reading.add(params["metric_key"])
        most = max(most, len(reading))
        try:
            return await get_body(self, path, params, retry)
        finally:
            reading.discard(params["metric_key"])

    monkeypatch.setattr(mlflow_api.MlflowApi, "get_body", observed)
    out = tmp_path / "bundle"
    assert not moves.export(source.url, out, Selection(experiments=(name,))).failed
    assert most > 1  # several metrics of the one run were being read at the same moment
    parquet = pq.ParquetFile(out / "runs" / run_id / "metrics.parquet")
    order = [parquet.read_row_group(i).column("key").unique().to_pylist() for i in range(parquet.num_row_groups)]
    assert order == [[k] for k in sorted(want)]
    got = bundle_mod.read_metrics(out / "runs" / run_id / "metrics.parquet")
    assert {k: list(zip(t.column("step").to_pylist(), t.column("timestamp").to_pylist(),
                        t.column("value").to_pylist())) for k, t in got.items()} == want


def test_offset_token_is_the_servers_own():
    """The page token importer writes to go on where get-history-bulk stopped is the one MLflow's
    store would hand out (the client checks it against a real token once per server, too)."""
    from mlflow.utils.search_utils import SearchUtils

    for offset in (1, 1000, 25000, 10**9):
        assert mlflow_api.offset_token(offset) == SearchUtils.create_page_token(offset).decode()
        assert SearchUtils.parse_start_offset_from_page_token(mlflow_api.offset_token(offset)) == offset


def test_export_without_get_history_bulk_writes_the_same_bundle(source, populated, tmp_path, monkeypatch):
    """A history's first page is read from get-history-bulk (MLflow's UI endpoint) and the rest
    from get-history at the offset where that answer stops; a server without that endpoint (a
    gateway passing only /api/, MLflow 1.x) is read through get-history alone. Both ways give the
    same bundle, byte for byte, NaN and a history of several pages included."""
    from importer import moves
    from importer.sources.server import Selection
    from test_faults import start_proxy

    monkeypatch.setattr(mlflow_api, "HISTORY_PAGE", 1000)  # the 3000-point history: 3 pages
    name, ids = populated
    bulk_pages = []
    bulk_page = mlflow_api.MlflowApi._bulk_page

    async def counted(self, run_id, key, retry=True, max_results=None):
        doc = await bulk_page(self, run_id, key, retry, max_results)
        bulk_pages.append((key, len(doc["metrics"])))
        return doc

    monkeypatch.setattr(mlflow_api.MlflowApi, "_bulk_page", counted)
    assert not moves.export(source.url, tmp_path / "bulk", Selection(experiments=(name,))).failed
    assert ("loss", 1000) in bulk_pages  # the long history began there and went on by offset
    proxy, proxy_url = start_proxy(source.url, refuse="/ajax-api/")
    try:
        bulk_pages.clear()
        assert not moves.export(proxy_url, tmp_path / "paged", Selection(experiments=(name,))).failed
        refused = httpx.get(f"{proxy_url}/__proxy_stats").json()["refused"]
    finally:
        proxy.terminate()
        proxy.wait()
    assert refused == 1 and bulk_pages == []  # asked once, then never again

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "bundle.json"}  # bundle.json holds its creation time
    assert files(tmp_path / "bulk") == files(tmp_path / "paged")


# -- MLflow 3 logged models -----------------------------------------------------------------------


def populate_logged(url: str, name: str) -> dict:
    """An experiment with an MLflow 3 logged model made by the real client: logged in a training
    run with params, tags and a model type, metrics logged against it on a dataset (so the points
    carry dataset_name/digest) in that run, in an evaluation run and in a second one that is then
    deleted, a metric of the training run from before the model, and a registered version of it.
    Returns ids by role."""
    import mlflow
    import numpy as np

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    mlflow.set_tracking_uri(url)
    exp = mlflow.set_experiment(name)
    ds = mlflow.data.from_numpy(np.arange(10.0).reshape(5, 2), name="train-ds")
    ids = {"experiment_id": exp.experiment_id}
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_metric("seen", 5.0, step=0)  # before the model: log_model links it (no dataset)
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), params={"alpha": "0.5"},
                                       tags={"team": "vision"}, model_type="agent")
        for step, acc in enumerate((0.7, 0.8, 0.9)):
            mlflow.log_metric("acc", acc, step=step, timestamp=T0 + step, model_id=info.model_id, dataset=ds)
        # The server keeps a model's NaN as 0.0 (the run's as NaN); sent back, it must stay NaN.
        mlflow.log_metric("loss", float("nan"), step=3, timestamp=T0 + 3, model_id=info.model_id, dataset=ds)
        ids["train"], ids["model_id"] = run.info.run_id, info.model_id
    with mlflow.start_run(run_name="evaluate") as ev:
        mlflow.log_metric("eval_acc", 0.75, step=0, timestamp=T0 + 10, model_id=info.model_id, dataset=ds)
        ids["eval"] = ev.info.run_id
    with mlflow.start_run(run_name="evaluate-again") as gone:
        mlflow.log_metric("eval_acc", 0.6, step=0, timestamp=T0 + 20, model_id=info.model_id, dataset=ds)
        ids["deleted_eval"] = gone.info.run_id
    mlflow.MlflowClient().delete_run(gone.info.run_id)
    ids["registered"] = f"model-{name}"
    mlflow.register_model(f"models:/{info.model_id}", ids["registered"])
    return ids


@pytest.fixture(scope="module")
def logged(source):
    name = f"lm-{uuid.uuid4().hex[:8]}"
    return name, populate_logged(source.url, name)


def dest_models(url: str, name: str) -> list[dict]:
    """The experiment's logged models on a server, straight from the REST API."""
    view = View(url)
    exp = view.http.get("experiments/get-by-name", params={"experiment_name": name}).json()["experiment"]
    return view.http.post("logged-models/search", json={"experiment_ids": [exp["experiment_id"]]}).json().get("models", [])


def assert_logged_model_arrived(source_url: str, dest_url: str, name: str, ids: dict, deleted: bool) -> None:
    """What the destination holds, read through the REST API, not through importer."""
    [copy] = dest_models(dest_url, name)
    info, data = copy["info"], copy["data"]
    model_id = info["model_id"]
    assert model_id != ids["model_id"] and {t["key"]: t["value"] for t in info["tags"]}["importer.source_model_id"] == ids["model_id"]
    assert (info["name"], info["model_type"], info["status"]) == ("echo", "agent", "LOGGED_MODEL_READY")
    view = View(dest_url)
    runs = {tags_of(r)["importer.source_run_id"]: r["info"]["run_id"] for r in view.runs(name, include_deleted=True)}
    assert info["source_run_id"] == runs[ids["train"]]
    assert {p["key"]: p["value"] for p in data["params"]}.items() >= {"alpha": "0.5", "lr": "0.1"}.items()
    points = sorted((p["key"], p["step"], p["value"], p["run_id"], p.get("dataset_name"), bool(p.get("dataset_digest")))
                    for p in data["metrics"] if p["model_id"] == model_id)
    want = [("acc", s, v, runs[ids["train"]], "train-ds", True) for s, v in enumerate((0.7, 0.8, 0.9))]
    want += [("eval_acc", 0, 0.75, runs[ids["eval"]], "train-ds", True), ("seen", 0, 5.0, runs[ids["train"]], None, False),
             ("loss", 3, 0.0, runs[ids["train"]], "train-ds", True)]
    if deleted:
        want += [("eval_acc", 0, 0.6, runs[ids["deleted_eval"]], "train-ds", True)]
    assert points == sorted(want) and len(data["metrics"]) == len(want)
    # The run side holds each point once: the copy's model points added nothing to its history.
    assert [v for _, _, v in view.history(runs[ids["train"]], "acc")] == [0.7, 0.8, 0.9]
    assert view.history(runs[ids["train"]], "loss") == [(3, T0 + 3, "NaN")]
    if deleted:
        gone = view.http.get("runs/get", params={"run_id": runs[ids["deleted_eval"]]}).json()["run"]
        assert gone["info"]["lifecycle_stage"] == "deleted"
    train = view.http.get("runs/get", params={"run_id": runs[ids["train"]]}).json()["run"]
    assert train["outputs"]["model_outputs"] == [{"model_id": model_id, "step": 0}]
    ev = view.http.get("runs/get", params={"run_id": runs[ids["eval"]]}).json()["run"]
    assert {"model_id": model_id} in ev["inputs"]["model_inputs"]
    root = info["artifact_uri"].split(":", 1)[1].strip("/")
    src_root = f"{ids['experiment_id']}/models/{ids['model_id']}/artifacts"
    for path in ("MLmodel", "python_model.pkl"):
        got = httpx.get(f"{dest_url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}")
        had = httpx.get(f"{source_url}/api/2.0/mlflow-artifacts/artifacts/{src_root}/{path}")
        assert got.status_code == had.status_code == 200 and got.content == had.content
    version = view.http.get("model-versions/get", params={"name": ids["registered"], "version": "1"}).json()["model_version"]
    assert version["source"] == f"models:/{model_id}" and version["run_id"] == runs[ids["train"]]


def test_logged_models_migrate_exact_and_a_rerun_makes_no_second_copy(source, dest, logged, tmp_path):
    name, ids = logged
    args = ["migrate", "--from", source.url, "--to", dest.url, "--experiment", name, "--include-deleted",
            "--state", str(tmp_path / "l.db"), "--json"]
    r = run_importer(*args)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert "logged models: 1 created" in json.loads(r.stdout)["notes"]
    v = verify(source.url, dest.url, "--experiment", name, "--include-deleted")
    assert v.returncode == 0 and "no differences" in v.stdout.decode() and "1 logged models" in v.stdout.decode(), v.stdout.decode()
    assert_logged_model_arrived(source.url, dest.url, name, ids, deleted=True)
    again = run_importer(*args[:-3], "--state", str(tmp_path / "other.db"), "--json")  # no ledger either
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert "logged models: 1 unchanged" in json.loads(again.stdout)["notes"]
    assert len(dest_models(dest.url, name)) == 1
    assert_logged_model_arrived(source.url, dest.url, name, ids, deleted=True)


def test_logged_model_made_by_a_killed_migration_is_completed_not_made_twice(source, dest, logged, tmp_path):
    """What `kill -9` right after the model's create leaves: the copy exists as the create made it
    (name, type, source run, params, tags with the source id) and nothing else of it: no
    artifacts, points nor links, status PENDING. The rerun completes that copy."""
    name, ids = logged
    args = ["migrate", "--from", source.url, "--to", dest.url, "--experiment", name, "--state", str(tmp_path / "l.db")]
    assert run_importer(*args, "--no-models").returncode == 0
    [first] = dest_models(dest.url, name)
    d = Rest(dest.url)
    d.http.delete(f"logged-models/{first['info']['model_id']}").raise_for_status()  # search no longer lists it
    info = first["info"]
    bare = d.post("logged-models", {
        "experiment_id": info["experiment_id"], "name": info["name"], "model_type": info["model_type"],
        "source_run_id": info["source_run_id"], "params": first["data"]["params"],
        "tags": [t for t in info["tags"] if t["key"] != "mlflow.modelVersions"]})["model"]["info"]["model_id"]
    r = run_importer(*args, "--json")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    notes = json.loads(r.stdout)["notes"]
    assert "logged models: 1 completed" in notes, notes
    [copy] = dest_models(dest.url, name)
    assert copy["info"]["model_id"] == bare and copy["info"]["status"] == "LOGGED_MODEL_READY"
    # Without --include-deleted the deleted evaluation run stays behind, and so do its points.
    assert any("not part of this move" in n and ids["deleted_eval"] in n for n in notes), notes
    v = verify(source.url, dest.url, "--experiment", name)
    assert v.returncode == 0 and "no differences" in v.stdout.decode(), v.stdout.decode()


def test_logged_models_through_a_bundle(source, dest, logged, tmp_path):
    name, ids = logged
    bundle = tmp_path / "bundle"
    r = run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name, "--include-deleted")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["counts"]["logged_models"] == 1 and list(manifest["logged_models"]) == [ids["model_id"]]
    doc = json.loads((bundle / "logged_models" / ids["model_id"] / "model.json").read_text())
    assert {a["path"] for a in doc["artifacts"]} >= {"MLmodel", "python_model.pkl"}
    assert len(doc["metrics"]) == 7 and doc["outputs"] == [{"run_id": ids["train"], "step": 0}]
    import hashlib
    for a in doc["artifacts"]:
        data = (bundle / "logged_models" / ids["model_id"] / "artifacts" / a["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == a["sha256"] and len(data) == a["size"]
    again = run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name,
                         "--include-deleted", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["runs"]["unchanged"] == 3
    args = ["import", str(bundle), "--tracking-uri", dest.url, "--include-deleted", "--state", str(tmp_path / "l.db")]
    r = run_importer(*args)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    v = verify(source.url, dest.url, "--experiment", name, "--include-deleted")
    assert v.returncode == 0 and "no differences" in v.stdout.decode(), v.stdout.decode()
    assert_logged_model_arrived(source.url, dest.url, name, ids, deleted=True)
    assert run_importer(*args).returncode == 0
    assert len(dest_models(dest.url, name)) == 1


def test_bundle_logged_model_artifact_changed_in_place_fails_that_model(source, dest, logged, tmp_path):
    name, ids = logged
    bundle = tmp_path / "bundle"
    assert run_importer("export", "--from", source.url, "--out", str(bundle), "--experiment", name).returncode == 0
    mlmodel = bundle / "logged_models" / ids["model_id"] / "artifacts" / "MLmodel"
    data = bytearray(mlmodel.read_bytes())
    data[0] ^= 0x01
    mlmodel.write_bytes(bytes(data))
    r = run_importer("import", str(bundle), "--tracking-uri", dest.url, "--state", str(tmp_path / "l.db"), "--json")
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    [failed] = [o for o in json.loads(r.stdout)["details"] if o["action"] == "failed"]
    assert ids["model_id"] in failed["origin"] and "SHA-256" in failed["error"]
    assert dest_models(dest.url, name) == []


def test_verify_reports_logged_model_differences(source, dest, logged, tmp_path):
    name, ids = logged
    r = run_importer("migrate", "--from", source.url, "--to", dest.url, "--experiment", name,
                     "--state", str(tmp_path / "l.db"))
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert verify(source.url, dest.url, "--experiment", name).returncode == 0
    [copy] = dest_models(dest.url, name)
    model_id = copy["info"]["model_id"]
    d = Rest(dest.url)
    d.http.patch(f"logged-models/{model_id}/tags", json={"tags": [{"key": "team", "value": "audio"}]}).raise_for_status()
    train = copy["info"]["source_run_id"]
    d.post("runs/log-batch", {"run_id": train, "metrics": [
        {"key": "acc", "value": 0.5, "timestamp": T0 + 99, "step": 9, "model_id": model_id}]})
    v = verify(source.url, dest.url, "--experiment", name)
    out = v.stdout.decode()
    assert v.returncode == 1, out
    assert f"logged model {ids['model_id']}" in out and " tags " in out and " metrics " in out, out
