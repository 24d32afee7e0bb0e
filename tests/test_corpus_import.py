"""Every real-world log sample under ../shared/corpus goes through `inspect` and `import` into a
real server, and the server ends up holding exactly the points the source read (the per-format
tests check those points against each sample's expected.json)."""

from __future__ import annotations

import asyncio
import json
import math
import uuid

import pytest

import importer
from conftest import CORPUS, View, run_importer

LOG_FORMATS = ["keras", "lightning", "yolo", "hf-trainer", "text-logs", "tfevents", "wandb"]
STORE_FORMATS = ["mlruns", "export-import"]  # other MLflow stores: deleted runs are left out
# The source that must recognise each corpus folder's files, by content, with no --format.
DETECTED = {"keras": "keras", "lightning": "lightning", "yolo": "yolo", "hf-trainer": "hf",
            "text-logs": "text", "tfevents": "tensorboard", "wandb": "wandb", "mlruns": "mlruns",
            "export-import": "mlflow-export"}
SAMPLES = sorted(p for f in LOG_FORMATS + STORE_FORMATS for p in (CORPUS / f).glob("*")
                 if p.is_dir()) if CORPUS.is_dir() else []


def _point(step, ts, value) -> tuple:
    if isinstance(value, str) or math.isnan(value):
        return (step, ts, "NaN")
    return (step, ts, math.copysign(1.7976931348623157e308, value) if math.isinf(value) else value)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared corpus is not at {CORPUS}")
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_sample_imports_exactly(sample, uri, tmp_path):
    report = run_importer("inspect", str(sample), "--json")
    found = json.loads(report.stdout)
    assert report.returncode == (2 if found["problems"] else 0), report.stderr.decode()
    assert found["runs"]
    assert {u["format"] for u in found["units"]} == {DETECTED[sample.parent.name]}, found["units"]
    if found["problems"]:  # export-import/03 has an experiment.json that is not JSON
        assert sample.parent.name in STORE_FORMATS, found["problems"]
        res = run_importer("import", str(sample), "--tracking-uri", uri)
        assert res.returncode == 2 and "line 28 column 53" in res.stderr.decode()
        return

    experiment = f"corpus-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "ledger.db"
    res = run_importer("import", str(sample), "--experiment", experiment, "--state", str(state),
                       "--tracking-uri", uri)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()

    view = View(uri)
    runs = view.by_key(experiment)
    records = [r for r in importer.read_records([sample], experiment) if r.lifecycle == "active"]
    assert set(runs) == {r.import_key for r in records}
    for rec in records:
        run = runs[rec.import_key]
        if rec.load is not None:  # a streamed log holds facts until its points are read
            asyncio.run(rec.load())
        start = int(run["info"]["start_time"])
        for key, table in rec.metrics.items():
            expected = {_point(s, start if t is None else t, v) for s, t, v in
                        zip(table["step"].to_pylist(), table["timestamp"].to_pylist(), table["value"].to_pylist())}
            stored = {_point(*p) for p in view.history(run["info"]["run_id"], key)}
            assert stored == expected, f"{rec.origin} {key}"
        assert run["info"]["status"] == rec.status

    again = run_importer("import", str(sample), "--experiment", experiment, "--state", str(state),
                         "--tracking-uri", uri, "--json")
    assert json.loads(again.stdout)["runs"]["unchanged"] == len(records)
