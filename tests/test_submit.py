"""`importer submit`: inputs turned into manifests (sinks/manifest.py) and posted to a real
`importer serve` in front of the session's real MLflow server."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import orjson
import pyarrow as pa

from conftest import params_of, run_importer, tags_of, write_json
from importer.local_server import free_port
from importer.model import ArtifactFile, METRIC_SCHEMA, RunRecord
from importer.sinks.manifest import manifest_document, manifests
from importer.sources.manifest import ManifestReader
from service_process import Service

METRICS_CSV = """epoch,step,train_loss_step,train_loss_epoch,val_loss,val_acc
0,49,0.764377,,,
0,99,0.647031,,,
0,149,0.5477,,,
0,149,,,0.8,0.6
0,149,,0.65,,
1,199,nan,,,
1,249,0.333333333333333314829616256247,,,
1,299,1e-30,,,
1,299,,,0.7,0.75
1,299,,0.4,,
"""
HPARAMS = "lr: 0.001\nbatch_size: 32\nmodel:\n  hidden: 128\n  layers: [2, 2]\nname: resnet\n"


def lightning_folder(root: Path) -> Path:
    version = root / "lightning_logs" / "version_0"
    version.mkdir(parents=True)
    (version / "metrics.csv").write_text(METRICS_CSV)
    (version / "hparams.yaml").write_text(HPARAMS)
    return root / "lightning_logs"


def test_submit_of_a_lightning_folder_equals_import_of_it(uri, tmp_path, view, experiment):
    folder = lightning_folder(tmp_path / "logs")
    submitted, imported = experiment + "-submit", experiment + "-import"
    with Service(uri, tmp_path / "svc") as svc:
        res = run_importer("submit", str(folder), "--service", svc.url, "--experiment", submitted)
        assert res.returncode == 0, res.stderr
    res_import = run_importer("import", str(folder), "--tracking-uri", uri, "--experiment", imported,
                              "--state", str(tmp_path / "ledger.db"))
    assert res_import.returncode == 0, res_import.stderr
    [a] = view.runs(submitted)
    [b] = view.runs(imported)
    assert a["info"]["run_id"] in res.stdout.decode()
    assert params_of(a) == params_of(b) and params_of(a)["model/layers"] == "[2, 2]"
    assert tags_of(a) == tags_of(b)
    keys = {m["key"] for m in b["data"]["metrics"]}
    assert keys == {m["key"] for m in a["data"]["metrics"]} and "val_acc" in keys
    for key in keys:
        # Lightning writes no times: both runs' points have their run's start time (the moment it
        # was written), so the two differ in time only, by the seconds between the two imports.
        mine, theirs = view.history(a["info"]["run_id"], key), view.history(b["info"]["run_id"], key)
        assert [(s, repr(v)) for s, _, v in mine] == [(s, repr(v)) for s, _, v in theirs], key
        assert {t for _, t, _ in mine} == {int(a["info"]["start_time"])}


def test_submit_of_a_manifest_keeps_children_artifacts_and_times(uri, tmp_path, view, experiment):
    (tmp_path / "files").mkdir()
    blob = os.urandom(100_000)
    (tmp_path / "files" / "model.bin").write_bytes(blob)
    doc = write_json(tmp_path / "runs.json", {"format_version": 1, "experiment": experiment, "runs": [{
        "id": "parent", "name": "sweep", "start_time": 1600000000000, "end_time": 1600000100000,
        "status": "FAILED", "description": "a sweep", "params": {"grid": {"lr": [0.1, 0.01]}},
        "runs": [{"id": "child", "name": "trial-1", "start_time": 1600000000500,
                  "metrics": {"loss": [{"step": -3, "value": "NaN", "timestamp": 1600000000600},
                                       {"step": 2 ** 62, "value": "-Infinity"}]},
                  "artifacts": [{"path": "files/model.bin", "dest": "weights"}]}]}]})
    with Service(uri, tmp_path / "svc") as svc:
        res = run_importer("submit", str(doc), "--service", svc.url, "--json")
    assert res.returncode == 0, res.stderr
    runs = view.by_key(experiment)
    parent, child = runs["parent"], runs["child"]
    assert tags_of(child)["mlflow.parentRunId"] == parent["info"]["run_id"]
    assert parent["info"]["status"] == "FAILED" and int(parent["info"]["end_time"]) == 1600000100000
    assert tags_of(parent)["mlflow.note.content"] == "a sweep"
    assert view.artifact(child, "weights/model.bin") == blob
    history = view.history(child["info"]["run_id"], "loss")
    assert [(s, t) for s, t, _ in history] == [(-3, 1600000000600), (2 ** 62, 1600000000500)]
    assert math.isnan(history[0][2]) if isinstance(history[0][2], float) else history[0][2] == "NaN"
    assert {r["import_key"] for r in json.loads(res.stdout)["runs"]} == {"parent", "child"}


def test_submit_exit_codes(uri, tmp_path, experiment):
    doc = write_json(tmp_path / "m.json", {"format_version": 1, "experiment": experiment,
                                           "runs": [{"id": "a", "metrics": {"x": 1}}]})
    away = run_importer("submit", str(doc), "--service", f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 3 and b"cannot reach the service" in away.stderr
    bad = write_json(tmp_path / "bad.json", {"format_version": 1, "experiment": experiment,
                                             "runs": [{"id": "a", "metrics": {"x": "high"}}]})
    assert run_importer("submit", str(bad), "--service", "http://127.0.0.1:1").returncode == 2
    (tmp_path / "token").write_text("right")
    with Service(uri, tmp_path, token="right") as svc:
        (tmp_path / "wrong").write_text("wrong")
        refused = run_importer("submit", str(doc), "--service", svc.url, "--token-file", str(tmp_path / "wrong"))
        assert refused.returncode == 3 and b"refused the token" in refused.stderr and b"wrong" not in refused.stderr
        ok = run_importer("submit", str(doc), "--service", svc.url, "--token-file", str(tmp_path / "token"))
        assert ok.returncode == 0, ok.stderr


def test_records_become_manifests_that_read_back_exactly(tmp_path):
    """No server: record -> manifest -> the manifest source gives the same record back."""
    def table(steps, stamps, values):
        return pa.table({"step": pa.array(steps, pa.int64()), "timestamp": pa.array(stamps, pa.int64()),
                         "value": pa.array(values, pa.float64())}, schema=METRIC_SCHEMA)

    values = [0.1 + 0.2, float("nan"), float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308, -0.0, 3.0]
    steps = [-(2 ** 63), -1, 0, 1, 7, 2 ** 40, 2 ** 63 - 1, 3]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.txt").write_bytes(b"\x00\xffbytes")
    parent = RunRecord(experiment="e", import_key="p", origin="t", name="p", start_time=1000, end_time=2000,
                       status="KILLED", user="ana", description="d", source="train.py",
                       params={"model/layers": "[2, 2]", "lr": "0.001", "s": " spaced "},
                       tags={"team": "x", "mlflow.runName": "p", "importer.infinite_values": "all"},
                       metrics={"all": table(steps, [5 * i for i in range(8)], values),
                                "none": table([0, 1], [None, None], [1.0, 2.0]),
                                "some": table([0, 1, 2], [10, None, 30], [1.5, 2.5, 3.5])},
                       artifacts=[ArtifactFile(tmp_path / "in" / "f.txt", "deep/er/f.txt"),
                                  ArtifactFile(b"long value", "importer/long_params/x")])
    child = RunRecord(experiment="e", import_key="c", origin="t", name="c", parent_key="p",
                      tags={"importer.source_run_id": "abc"})
    [group] = manifests([parent, child])
    doc, parts, notes = manifest_document(group)
    files = tmp_path / "parts"
    for name, source in parts:
        (files / name).parent.mkdir(parents=True, exist_ok=True)
        (files / name).write_bytes(source if isinstance(source, bytes) else Path(source).read_bytes())
    body = orjson.dumps(doc)
    reader = ManifestReader(io.BytesIO(body), len(body), "m.json", files)
    assert reader.problems == []
    back = {r.import_key: r for r in reader.records}
    p = back["p"]
    for field in ("name", "start_time", "end_time", "status", "user", "description", "source", "params"):
        assert getattr(p, field) == getattr(parent, field), field
    # the reader sets these two again from the points (a manifest may not name importer.* tags)
    assert p.tags == {"team": "x", "importer.infinite_values": "all",
                      "importer.derived_timestamps": "points without a timestamp have the run's start_time"}
    for key, t in parent.metrics.items():
        got = p.metrics[key]
        assert got.column("step").to_pylist() == t.column("step").to_pylist()
        assert got.column("timestamp").to_pylist() == t.column("timestamp").to_pylist()
        assert [repr(v) for v in got.column("value").to_pylist()] == [repr(v) for v in t.column("value").to_pylist()]
    assert {(a.dest, Path(a.source).read_bytes()) for a in p.artifacts} == {
        ("deep/er/f.txt", b"\x00\xffbytes"), ("importer/long_params/x", b"long value")}
    assert back["c"].parent_key == "p"
    assert notes == ["t: tag importer.source_run_id='abc' cannot be set through a manifest; left out"]
