"""Parse-only tests of the mlflow-export-import source (no MLflow server).

The corpus samples (the tool's own sample exports) are read in place from ../shared/corpus; their
expected.json holds facts computed independently. The fixtures under fixtures/mlflow_export are
written for these tests in the shapes the tool writes: a single-run export, an experiment export
(runs/<id>/ layout) with a nested child and a deleted run, a pre-1.2 experiment (manifest.json,
payload at the top, the oldest run with last values only), a bulk export-all root with a registered
model, and an experiment with one corrupt run.json. Registered models imported into a server:
tests/test_mlflow_export_models.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import importer
from importer import sources
from importer.model import (DERIVED_TIMESTAMPS_TAG, INFINITE_VALUES_TAG, METRIC_SCHEMA,
                            store_import_key)
from importer.model import ExperimentRecord
from importer.sources import mlflow_export
from importer.sources.base import SourceOptions

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SAMPLES = sorted(d for d in (CORPUS / "export-import").glob("*") if d.is_dir()) if CORPUS.is_dir() else []
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mlflow_export"


def _need_corpus():
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (tests read it in place)")


def _close(a: float, b) -> bool:
    if isinstance(b, str):
        b = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[b]
    return (math.isnan(a) and math.isnan(b)) or a == b


def _by_key(records) -> dict:
    return {r.source_run_id: r for r in records}


def _points(table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in ("step", "timestamp", "value"))))


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def test_corpus_present_or_skip():
    _need_corpus()
    assert SAMPLES


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda d: d.name)
def test_corpus_sample(sample):
    """Every fact of expected.json, read directly and through folder discovery."""
    _need_corpus()
    expected = json.loads((sample / "expected.json").read_text())
    direct = mlflow_export.read(sample, SourceOptions())
    found = importer.read_inputs([sample], strict=False)
    assert {u[0] for u in found.units} == {"mlflow-export"}
    assert found.unrecognised == [str(sample / "expected.json")]
    for result in (direct, found):
        runs = _by_key(result.records)
        assert len(runs) == len(expected["runs"])
        for rel, facts in expected["runs"].items():
            rec = runs[facts["run_id"]]
            assert Path(rec.origin).resolve() == (sample / rel).resolve()
            assert rec.import_key == store_import_key(facts["run_id"])
            assert (rec.status, rec.start_time, rec.end_time) == (facts["status"], facts["start_time"], facts["end_time"])
            assert rec.lifecycle == facts["lifecycle_stage"] and rec.name == facts["run_name"]
            parent = facts["parent_run_id"]
            assert rec.parent_key == (store_import_key(parent) if parent else None)
            assert rec.params == facts["params"]
            assert set(rec.tags) == set(facts["tag_keys"]) - {"mlflow.parentRunId"}
            assert bool(rec.inputs) == facts["inputs_present"]
            assert set(rec.metrics) == set(facts["metrics"])
            for key, m in facts["metrics"].items():
                table = rec.metrics[key]
                assert table.schema == METRIC_SCHEMA and table.num_rows == m["points"]
                steps, values = table.column("step").to_pylist(), table.column("value").to_pylist()
                assert steps[0] == m["first"][0] and _close(values[0], m["first"][1])
                assert steps[-1] == m["last"][0] and _close(values[-1], m["last"][1])
        # Experiment names: from experiment.json where it is readable.
        for rel, exp in expected["experiments"].items():
            if exp["kind"] == "experiment.json" and "json_error" not in exp:
                for run_id in exp["runs_listed"]:
                    folder = (sample / rel).parent / "runs" / run_id
                    [rec] = [r for r in result.records if Path(r.origin).parent.resolve() == folder.resolve()]
                    assert rec.experiment == exp["name"]


def test_corpus_invalid_experiment_json():
    """03's experiments/2/experiment.json has a raw control character: one problem naming the file,
    line and column (as expected.json gives them); its runs are still read, named from their
    `mlflow_export_import.metadata.experiment_name` tag, and the other experiment is intact."""
    _need_corpus()
    sample = CORPUS / "export-import" / "03-oss-bulk-runs-layout"
    facts = json.loads((sample / "expected.json").read_text())["experiments"]["experiments/2/experiment.json"]
    result = mlflow_export.read(sample / "experiments", SourceOptions())
    [p] = result.problems
    assert Path(p.file) == sample / "experiments" / "2" / "experiment.json"
    assert p.location == "line 28 column 53" and p.location in facts["json_error"]
    assert "invalid JSON: Invalid control character" in p.message
    runs = _by_key(result.records)
    assert {r.experiment for r in runs.values()} == {"sklearn_wine", "sklearn_iris"}
    assert runs["5397ae67ee0c49139bf64834b4d27fab"].experiment == "sklearn_iris"
    assert runs["5397ae67ee0c49139bf64834b4d27fab"].experiment_tags == {}
    assert runs["a83cebbccbca41299360c695c5ea72f3"].experiment_tags == {
        "experiment_created": "2022-12-15 02:17:43", "version_mlflow": "2.0.1"}
    with pytest.raises(importer.ValidationError, match="line 28 column 53"):
        importer.read_inputs([sample])  # an import stops until the file is fixed


def test_corpus_run_folder_alone():
    """A run folder named on its own is one unit and still finds its experiment two levels up;
    the run id comes from run.json, not the folder name (they differ in 03's experiment 1)."""
    _need_corpus()
    folder = CORPUS / "export-import/03-oss-bulk-runs-layout/experiments/1/runs/d057cae15f27465988e72c6212e1f226"
    found = importer.read_inputs([folder])
    assert found.units == [("mlflow-export", str(folder), 1)]
    [rec] = found.records
    assert rec.source_run_id == "a83cebbccbca41299360c695c5ea72f3" and rec.experiment == "sklearn_wine"
    assert rec.experiment_tags["version_mlflow"] == "2.0.1"


def test_corpus_source_tags_kept():
    """`--import-source-tags` exports carry the tool's `mlflow_exim.*` tags: kept as they are,
    on runs and experiments; the experiment's own fields are not turned into tags by us."""
    _need_corpus()
    folder = CORPUS / "export-import/02-oss-single-v1.2/experiments/src_tags"
    [rec] = mlflow_export.read(folder, SourceOptions()).records
    assert rec.tags["mlflow_exim.run_info.user_id"] == "andre"
    assert rec.user == "andre"  # the mlflow.user tag; info.user_id says "unknown"
    assert rec.experiment_tags["mlflow_exim.field.name"] == "sklearn_wine"


def test_no_cross_detection():
    """The export source claims nothing of the other corpus samples and fixtures, and no other
    source claims a file of an export."""
    roots = [FIXTURES.parent, FIXTURES.parents[2] / "sample_logs"] + ([CORPUS] if CORPUS.is_dir() else [])
    for root in roots:
        for path in root.rglob("*"):
            mine = FIXTURES in path.parents or "export-import" in path.parts
            if path.is_file() and not mine:
                assert not mlflow_export.detect(path), path
            if path.is_file() and mine and path.name in ("run.json", "experiment.json", "manifest.json",
                                                          "experiments.json", "model.json", "models.json"):
                assert sources.recognise(path) is mlflow_export, path


# ---------------------------------------------------------------------------------------------
# Own fixtures
# ---------------------------------------------------------------------------------------------


def test_single_run_export():
    result = mlflow_export.read(FIXTURES / "single_run", SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert rec.origin == str(FIXTURES / "single_run" / "run.json")
    assert rec.experiment == "single_run"  # no experiment file, no tag: the folder's name
    assert (rec.name, rec.status, rec.user, rec.lifecycle) == ("single", "FAILED", "alice", "active")
    assert (rec.start_time, rec.end_time) == (1700000000000, 1700000060000)
    assert rec.import_key == store_import_key("5a1e" * 8) and rec.source_run_id == "5a1e" * 8
    assert rec.description == "a run exported on its own" and rec.source is None
    assert rec.tags["mlflow.source.type"] == "LOCAL" and rec.parent_key is None
    # A param far over the server's 6000 characters is kept whole: the sink decides.
    assert len(rec.params["long_config"]) == 10000 and rec.params["lr"] == "0.01"
    # NaN and +-Infinity as floats, every point in order.
    loss = _points(rec.metrics["loss"])
    assert [p[:2] for p in loss] == [(0, 1700000001000), (1, 1700000002000), (2, 1700000003000)]
    assert loss[0][2] == 1.5 and math.isnan(loss[1][2]) and loss[2][2] == 0.5
    assert [p[2] for p in _points(rec.metrics["val/acc"])] == [math.inf, -math.inf]
    assert rec.tags[INFINITE_VALUES_TAG] == "val/acc"
    # MLflow 3 point fields become string columns after the three of METRIC_SCHEMA.
    f1 = rec.metrics["eval_f1"]
    assert f1.column_names == ["step", "timestamp", "value", "model_id", "dataset_name", "dataset_digest"]
    assert f1.column("model_id").to_pylist() == ["m-123", None]
    assert f1.column("dataset_digest").to_pylist() == ["d1g3st", None]
    assert rec.metrics["loss"].schema == METRIC_SCHEMA
    assert rec.inputs == [{"dataset": {"name": "iris", "digest": "d1g3st", "source_type": "local",
                                       "source": "{\"uri\": \"/data/iris.csv\"}"},
                           "tags": [{"key": "mlflow.data.context", "value": "training"}]}]
    # Artifacts: every file below artifacts/, sub-folders included, byte-identical sources.
    assert sorted(a.dest for a in rec.artifacts) == ["model/MLmodel", "plots/curves/loss.txt"]
    art = {a.dest: a.source for a in rec.artifacts}
    assert art["plots/curves/loss.txt"] == FIXTURES / "single_run/artifacts/plots/curves/loss.txt"


def test_experiment_override():
    [rec] = mlflow_export.read(FIXTURES / "single_run" / "run.json", SourceOptions(experiment="X")).records
    assert rec.experiment == "X"
    found = importer.read_inputs([FIXTURES / "experiment"], "Y")
    assert {r.experiment for r in found.records} == {"Y"}
    assert found.experiments == []  # the source's experiment is not recreated beside Y


def test_experiment_export_with_nested_and_deleted_runs():
    found = importer.read_inputs([FIXTURES / "experiment"])
    assert found.units == [("mlflow-export", str(FIXTURES / "experiment"), 3)]
    parent, child, deleted = "f" * 32, "1" * 32, "d" * 32
    # Parents before children, though the child's folder sorts first.
    assert [r.source_run_id for r in found.records] == [parent, child, deleted]
    runs = _by_key(found.records)
    assert {r.experiment for r in runs.values()} == {"nested-exp"}
    assert runs[child].parent_key == store_import_key(parent)
    assert "mlflow.parentRunId" not in runs[child].tags
    assert runs[parent].parent_key is None
    assert runs[child].experiment_tags == {"mlflow.note.content": "parent and child", "team": "vision"}
    assert [p[2] for p in _points(runs[child].metrics["loss"])] == [1.0, 0.9, 0.8, 0.7, 0.6]
    assert (runs[deleted].lifecycle, runs[deleted].status) == ("deleted", "KILLED")
    assert found.notes == [] and found.problems == []
    assert found.experiments == [ExperimentRecord("nested-exp", runs[child].experiment_tags, "active")]


def test_child_without_its_parent_is_noted():
    folder = FIXTURES / "experiment" / "runs" / ("1" * 32)
    result = mlflow_export.read(folder, SourceOptions())
    [rec] = result.records
    assert rec.parent_key == store_import_key("f" * 32) and rec.experiment == "nested-exp"
    assert any("parent run" in n and "not in this export" in n for n in result.notes)


def test_pre_1_2_experiment_export():
    """EXP/manifest.json and EXP/<run id>/run.json with the payload at the top. The manifest source
    would take manifest.json for one of its own (first key `experiment`): sources.order() puts
    this source first, and its detection never takes a manifest importer could read."""
    found = importer.read_inputs([FIXTURES / "old_experiment"])
    assert found.units == [("mlflow-export", str(FIXTURES / "old_experiment"), 2)]
    runs = _by_key(found.records)
    new, old = runs["0a" * 16], runs["0b" * 16]
    assert {new.experiment, old.experiment} == {"old-exp"} and new.experiment_tags == {"owner": "bob"}
    assert new.name == "old-run" and old.name is None and old.user == "bob"
    assert _points(new.metrics["acc"]) == [(0, 1630000010000, 0.5), (1, 1630000020000, 0.7)]
    # Before March 2022 only the last value was exported: one point at step 0 and the run's
    # start time (the timestamp is left to the documented rule).
    assert _points(old.metrics["acc"]) == [(0, None, 0.25)]
    assert DERIVED_TIMESTAMPS_TAG in old.tags and DERIVED_TIMESTAMPS_TAG not in new.tags
    assert any("failed for 1 run" in n and "0c" * 16 in n for n in found.notes)


def test_bulk_export_is_one_unit_with_its_models():
    found = importer.read_inputs([FIXTURES], strict=False)  # every fixture folder, each export once
    units = {Path(u[1]).name: u for u in found.units if u[0] == "mlflow-export"}
    assert units["bulk"][2] == 1 and len(found.units) == 5
    [rec] = [r for r in found.records if r.source_run_id == "b" * 32]
    assert rec.experiment == "bulk-exp"
    [model] = found.models  # bulk/models/clf/model.json: a model without versions
    assert (model.name, model.versions, model.tags) == ("clf", [], {})
    assert not any(str(FIXTURES / "bulk") in n for n in found.notes)
    # The corrupt fixture's broken run fails alone (issue 15): the only problem, `skipped`.
    assert [Path(p.file).parent.parent.parent.name for p in found.skipped] == ["corrupt"]
    assert found.problems == [] and found.unrecognised == []


def test_bulk_listing_names_the_experiment(tmp_path):
    """Without a readable experiment.json, the bulk listing names the experiment by its id."""
    shutil.copytree(FIXTURES / "bulk", tmp_path / "bulk")
    (tmp_path / "bulk/experiments/12/experiment.json").unlink()
    [rec] = mlflow_export.read(tmp_path / "bulk", SourceOptions()).records
    assert rec.experiment == "bulk-exp"


def test_corrupt_run_json_is_a_problem_and_the_rest_is_read():
    folder = FIXTURES / "corrupt"
    result = mlflow_export.read(folder, SourceOptions())
    [p] = result.skipped  # that run fails alone (issue 15)
    assert result.problems == []
    assert p.file == str(folder / "runs" / ("7" * 32) / "run.json")
    assert p.location.startswith("line ") and "column" in p.location and "invalid JSON" in p.message
    assert [r.name for r in result.records] == ["good"]
    with pytest.raises(importer.ValidationError, match="7{32}/run.json: line"):
        importer.validate([folder])


def _write_run(folder: Path, run: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"system": {"package_version": "1.2.0"}, "mlflow": run}
    (folder / "run.json").write_text(json.dumps(doc))
    return folder


def test_bad_fields_are_problems(tmp_path):
    folder = _write_run(tmp_path / "r", {
        "info": {"run_id": "a" * 32, "status": "DONE", "start_time": "yesterday", "lifecycle_stage": "active"},
        "metrics": {"bad key?": [{"value": 1, "step": 0, "timestamp": 1}],
                    "ok": [{"value": "high", "step": 0, "timestamp": 1}],
                    "big": [{"value": 1, "step": 2**64, "timestamp": 1}]},
        "params": {"": "empty key"}})
    result = mlflow_export.read(folder, SourceOptions())
    assert result.records == [] and result.problems == []  # the run fails alone (issue 15)
    where = {p.location: p.message for p in result.skipped}
    assert "not one of" in where["mlflow.info.status"]
    assert "milliseconds" in where["mlflow.info.start_time"]
    assert "characters the server rejects" in where['mlflow.metrics["bad key?"]']
    assert "a point must be" in where["mlflow.metrics.ok[0]"]
    assert "64-bit" in where["mlflow.metrics.big"]
    assert "empty" in where['mlflow.params[""]']
    no_info = _write_run(tmp_path / "n", {"params": {}})
    [p] = mlflow_export.read(no_info, SourceOptions()).skipped
    assert p.location == "mlflow.info" and "required" in p.message


def test_listed_run_missing_is_a_problem(tmp_path):
    shutil.copytree(FIXTURES / "experiment", tmp_path / "exp")
    shutil.rmtree(tmp_path / "exp" / "runs" / ("d" * 32))
    result = mlflow_export.read(tmp_path / "exp", SourceOptions())
    [p] = result.skipped  # loses only that run (issue 15)
    assert result.problems == []
    assert p.location == "mlflow.runs" and "d" * 32 in p.message and "missing" in p.message
    assert len(result.records) == 2


def test_links_are_not_followed_out_of_artifacts(tmp_path):
    folder = _write_run(tmp_path / "r", {"info": {"run_id": "c" * 32}})
    (tmp_path / "secret.txt").write_text("outside")
    (folder / "artifacts" / "sub").mkdir(parents=True)
    (folder / "artifacts" / "sub" / "in.txt").write_text("inside")
    (folder / "artifacts" / "alias.txt").symlink_to(folder / "artifacts" / "sub" / "in.txt")
    (folder / "artifacts" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "artifacts" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    result = mlflow_export.read(folder, SourceOptions())
    assert result.records == []  # the run fails alone (issue 15), naming each link
    assert sorted(p.location for p in result.skipped) == ["artifacts/dirlink", "artifacts/leak.txt"]
    (folder / "artifacts" / "leak.txt").unlink()
    (folder / "artifacts" / "dirlink").unlink()
    [rec] = mlflow_export.read(folder, SourceOptions()).records
    assert sorted(a.dest for a in rec.artifacts) == ["alias.txt", "sub/in.txt"]


def test_detect_leaves_importer_manifests_alone(tmp_path):
    """Importer's own manifests: `format_version` first, or a run object with `experiment` as a
    string, `metrics`/`params` and no `info`, even when named like the tool's files."""
    docs = [{"format_version": 1, "runs": []},
            {"experiment": "e", "id": "r", "metrics": {"loss": 1}},
            {"metrics": {"loss": [{"step": 0, "value": 1}]}, "params": {"a": 1}, "experiment": "e"}]
    for name in ("run.json", "experiment.json", "experiments.json", "manifest.json", "model.json", "models.json"):
        for doc in docs:
            path = tmp_path / name
            path.write_text(json.dumps(doc, indent=2))
            assert not mlflow_export.detect(path), (name, doc)
            assert sources.recognise(path) is not mlflow_export
    (tmp_path / "run.json").write_text(json.dumps({"system": {}, "mlflow": {}}))
    assert mlflow_export.detect(tmp_path / "run.json")
    assert not mlflow_export.detect(tmp_path)  # a folder
