"""Parse-only tests of the MLflow file-store source (`mlruns/` folders). No server.

Corpus samples are read in place from ../shared/corpus (never copied) and checked against every
fact of their expected.json. The fixtures under tests/fixtures/mlruns are hand-written stores:
`project/mlruns` holds one run of each layout the source reads, `broken/mlruns` the problems.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from importer import pipeline
from importer.errors import ValidationError
from importer.model import INFINITE_VALUES_TAG, METRIC_SCHEMA, store_import_key
from importer.sources import discover, mlruns
from importer.sources.base import SourceOptions

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SAMPLES = sorted(d for d in (CORPUS / "mlruns").glob("*") if d.is_dir()) if CORPUS.is_dir() else []
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mlruns"
STORE = FIXTURES / "project" / "mlruns"
BROKEN = FIXTURES / "broken" / "mlruns"

A = "4f0c2e1d9b8a4c7e9f6a5b3c2d1e0f9a"  # parent; MLflow 2.x meta, artifacts, a dataset input
B = "7d2b9e4c1a3f4e6d8c0b5a9f7e3d2c1b"  # its child; MLflow 1.x meta (run_uuid only, name '')
C = "c3e5a7b9d1f24680ace13579bdf02468"  # deleted, artifact_uri on a Windows machine
D = "0e1d2c3b4a5948372615f0e1d2c3b4a5"  # artifact_uri on another disk
T = "9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d"  # in an experiment in .trash
N = "1234567890ab4cdef1234567890abcde"  # in the stray store inside the store (mlruns/mlruns)


def _need_corpus():
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (tests read it in place)")


def _read(path: Path, **options):
    result = mlruns.read(path, SourceOptions(**options))
    return result, {r.source_run_id: r for r in result.records}


def _close(a: float, b) -> bool:
    if isinstance(b, str):
        b = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[b]
    return (math.isnan(a) and math.isnan(b)) or a == b


def _same_value(actual: str, expected) -> bool:
    """expected.json summarises long strings as {"__str_len__", "prefix", "sha256"}."""
    if isinstance(expected, dict):
        return (len(actual) == expected["__str_len__"] and actual.startswith(expected["prefix"])
                and hashlib.sha256(actual.encode()).hexdigest() == expected["sha256"])
    return actual == expected


def _check_run(rec, facts: dict, experiment: str):
    assert rec.experiment == experiment
    assert rec.import_key == store_import_key(facts["run_id"])
    assert rec.name == facts["run_name_effective"]
    assert rec.status == facts["status_name"]
    assert (rec.start_time, rec.end_time) == (facts["start_time"], facts.get("end_time"))
    assert rec.lifecycle == facts["lifecycle_stage"]
    assert rec.user == facts["user_id"]
    parent = facts.get("parent_run_id")
    assert rec.parent_key == (store_import_key(parent) if parent else None)
    assert rec.params == facts["params"]  # exactly, every one
    expected_tags = {k: v for k, v in facts["tags"].items() if k != "mlflow.parentRunId"}
    tags = {k: v for k, v in rec.tags.items() if not k.startswith("importer.")}
    assert set(tags) == set(expected_tags)
    for key, value in expected_tags.items():
        assert _same_value(tags[key], value), key
    assert sorted(rec.metrics) == sorted(facts["metric_keys"])
    for key, m in facts["metrics"].items():
        table = rec.metrics[key]
        assert table.schema == METRIC_SCHEMA
        assert table.num_rows == m["points"], key
        steps, values = table.column("step").to_pylist(), table.column("value").to_pylist()
        assert steps[0] == m["first"][0] and _close(values[0], m["first"][1]), key
        assert steps[-1] == m["last"][0] and _close(values[-1], m["last"][1]), key
    if "artifacts_in_run_dir" in facts:
        assert sorted(a.dest for a in rec.artifacts) == sorted(facts["artifacts_in_run_dir"])


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def test_corpus_present_or_skip():
    _need_corpus()
    assert SAMPLES


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda d: d.name)
def test_corpus_sample(sample):
    expected = json.loads((sample / "expected.json").read_text())
    result, runs = _read(sample / "mlruns")
    assert not result.problems
    facts = {rid: (exp["name"], run) for exp in expected["experiments"].values()
             for rid, run in exp["runs"].items()}
    # Each run exactly once, with its own experiment (03 has a stray mlruns/mlruns store inside).
    assert len(result.records) == len(runs) == len(facts)
    assert set(runs) == set(facts)
    for rid, (experiment, run) in facts.items():
        _check_run(runs[rid], run, experiment)
    for exp in expected["experiments"].values():
        for child, parent in exp.get("parent_of", {}).items():
            assert runs[child].parent_key == store_import_key(parent)
    # Their artifact_uri is on the machine that wrote them (file:///C:/...): found in the store
    # itself when the run's artifacts/ folder travelled with it (03), else said, not read (01).
    for rid, (_, run) in facts.items():
        moved = list((sample / "mlruns").glob(f"**/{rid}/artifacts"))
        noted = [n for n in result.notes if rid in n and run["artifact_uri"] in n]
        assert (moved and not noted) or (not moved and "none were found" in noted[0]), rid


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda d: d.name)
def test_corpus_sample_through_discovery(sample):
    """The sample folder (store inside, expected.json beside it) and the store itself: one unit."""
    expected = json.loads((sample / "expected.json").read_text())
    ids = {rid for exp in expected["experiments"].values() for rid in exp["runs"]}
    for path in (sample, sample / "mlruns"):
        inputs = pipeline.read_inputs([path])
        assert [(f, Path(p)) for f, p, _ in inputs.units] == [("mlruns", sample / "mlruns")]
        assert sorted(r.source_run_id for r in inputs.records) == sorted(ids)
        report = pipeline.inspect([path])
        assert not report["problems"] and len(report["runs"]) == len(ids)


def test_whole_corpus_folder_reads_each_run_once():
    _need_corpus()
    inputs = pipeline.read_inputs([CORPUS / "mlruns"])
    ids = [r.source_run_id for r in inputs.records]
    assert len(ids) == len(set(ids)) == sum(
        len(exp["runs"]) for s in SAMPLES
        for exp in json.loads((s / "expected.json").read_text())["experiments"].values())


# ---------------------------------------------------------------------------------------------
# Hand-written stores
# ---------------------------------------------------------------------------------------------


def test_every_run_once_with_its_experiment():
    result, runs = _read(STORE)
    assert not result.problems
    assert len(result.records) == len(runs) == 6
    assert {rid: r.experiment for rid, r in runs.items()} == {
        A: "fixture experiment", B: "fixture experiment", C: "fixture experiment",
        D: "fixture experiment", T: "trashed experiment", N: "inner experiment"}
    assert all(r.import_key == store_import_key(rid) for rid, r in runs.items())
    assert all(r.origin == f"{STORE}: run {rid}" for rid, r in runs.items())


def test_run_fields_both_meta_layouts():
    _, runs = _read(STORE)
    a, b = runs[A], runs[B]
    assert (a.name, a.status, a.start_time, a.end_time, a.user) == (
        "parent run", "FINISHED", 1700000000000, 1700000060000, "alice")
    # MLflow 1.x: only run_uuid, `name: ''`, the name in the tag; still RUNNING, no end time
    assert (b.name, b.status, b.start_time, b.end_time, b.user) == (
        "child run", "RUNNING", 1700000010000, None, "bob")
    assert (runs[C].status, runs[D].status) == ("KILLED", "FAILED")


def test_parent_link_and_tags_kept_as_they_are():
    _, runs = _read(STORE)
    assert runs[B].parent_key == store_import_key(A)
    assert "mlflow.parentRunId" not in runs[B].tags
    assert runs[B].tags == {"mlflow.runName": "child run"}
    assert runs[A].parent_key is None
    assert runs[A].tags["note"] == "line one\r\nline two"  # byte for byte
    assert runs[A].tags["mlflow.source.name"] == "train.py"


def test_params_exact_and_full_length():
    _, runs = _read(STORE)
    params = runs[A].params
    assert params["long"] == "".join("0123456789"[i % 10] for i in range(10_000))
    assert params["spaced"] == "  two leading spaces, a trailing newline\n"
    assert params["lr"] == "0.01"
    assert params["model/depth"] == "12"  # a key with `/` is a sub-folder


def test_metrics_every_point():
    _, runs = _read(STORE)
    m = runs[A].metrics
    assert sorted(m) == ["eval_acc", "odd", "old_acc", "val/loss"]
    assert m["val/loss"].select(["step", "timestamp", "value"]).to_pydict() == {
        "step": [0, 1, 2], "timestamp": [1700000001000, 1700000002000, 1700000003000],
        "value": [0.9, 0.7, 0.5]}
    assert m["old_acc"].to_pydict() == {  # old two-column lines: step 0
        "step": [0, 0], "timestamp": [1700000001000, 1700000002000], "value": [0.1, 0.2]}
    values = m["odd"].column("value").to_pylist()
    assert [math.isnan(v) for v in values] == [True, False, False, True, False, False, False]
    assert values[1:3] == [math.inf, -math.inf] and values[4:] == [math.inf, -math.inf, 0.25]
    assert runs[A].tags[INFINITE_VALUES_TAG] == "odd"
    # MLflow 3 lines carry the dataset; the step is the one logged
    assert m["eval_acc"].to_pydict() == {"step": [3], "timestamp": [1700000004000], "value": [0.8],
                                         "dataset_name": ["eval-set"], "dataset_digest": ["9c8b7a6d"]}
    assert runs[B].metrics["loss"].column("step").to_pylist() == [0, 10]
    for table in m.values():
        assert table.schema.names[:3] == METRIC_SCHEMA.names


def test_artifacts_from_the_run_folder_recursively():
    _, runs = _read(STORE)
    arts = {a.dest: a.source for a in runs[A].artifacts}
    assert sorted(arts) == ["model/weights/w.bin", "readme.txt"]
    run_dir = STORE / "1" / A / "artifacts"
    assert arts["model/weights/w.bin"].read_bytes() == (run_dir / "model/weights/w.bin").read_bytes()
    assert all(p.resolve().is_relative_to(STORE.resolve()) for p in arts.values())


def test_artifact_uri_elsewhere_is_noted_not_read():
    result, runs = _read(STORE)
    windows = [n for n in result.notes if C in n]
    assert windows and "file:///C:/Users/carol/project/mlruns/1/" in windows[0]
    assert "not imported" in windows[0]
    assert any(D in n and "/mnt/elsewhere/artifacts/" in n for n in result.notes)
    # relative ./mlruns/... URIs are this store; a .trash run's stale URI too: nothing to say
    assert not any(rid in n and "artifacts stored at" in n for rid in (A, B, T, N) for n in result.notes)
    assert runs[C].artifacts == runs[D].artifacts == []


def test_deleted_runs_and_trash():
    result, runs = _read(STORE)
    assert runs[C].lifecycle == "deleted"
    assert runs[T].lifecycle == "deleted"  # its experiment is in .trash
    assert {e.name: e.lifecycle for e in result.experiments} == {
        "Default": "active", "fixture experiment": "active", "trashed experiment": "deleted",
        "inner experiment": "active"}
    assert runs[T].params == {"a": "1"}
    assert {runs[r].lifecycle for r in (A, B, D, N)} == {"active"}


def test_experiment_tags_and_dataset_inputs():
    _, runs = _read(STORE)
    assert runs[A].experiment_tags == {"mlflow.note.content": "What this experiment is about.\nSecond line.",
                                       "team": "vision"}
    assert runs[T].experiment_tags == {}
    assert runs[A].inputs == [{
        "dataset": {"name": "train-set", "digest": "3f2a1b0c", "source_type": "s3",
                    "source": '{"uri": "s3://bucket/train.csv"}',
                    "schema": '{"mlflow_colspec": [{"type": "long", "name": "a"}]}',
                    "profile": '{"num_rows": 2}'},
        "tags": [{"key": "mlflow.data.context", "value": "training"}]}]
    assert runs[B].inputs == []


def test_models_are_read_not_runs():
    """The hand-written MLflow 2.x registry and MLflow 3 logged model (the real client's are in
    test_mlruns_models.py)."""
    result, _ = _read(STORE)
    assert not result.skipped
    [logged] = result.logged_models
    assert (logged.doc.model_id, logged.doc.name, logged.doc.status, logged.doc.source_run_id) == (
        "m-0a1b2c3d4e5f", "model", "LOGGED_MODEL_READY", A)
    assert [o.model_dump() for o in logged.doc.outputs] == [{"run_id": A, "step": 0}]
    assert logged.experiment == "fixture experiment" and logged.files == []
    [model] = result.models
    [version] = model.versions
    assert (model.name, model.description, model.aliases) == ("my-model", None, {})
    assert (version.version, version.run_id, version.artifact_path, version.model_id, version.stage,
            version.status) == ("1", A, "model", None, None, "READY")
    assert not any("models" in n.replace(str(STORE), "") for n in result.notes)  # the path may say "models"
    assert not mlruns.detect(STORE / "models" / "my-model" / "meta.yaml")
    assert not mlruns.detect(STORE / "models" / "my-model" / "version-1" / "meta.yaml")
    assert not mlruns.detect(STORE / "1" / "models" / "m-0a1b2c3d4e5f" / "meta.yaml")


def test_experiment_option_overrides():
    _, runs = _read(STORE, experiment="moved")
    assert {r.experiment for r in runs.values()} == {"moved"}


def test_detect_and_unit():
    assert mlruns.detect(STORE / "1" / "meta.yaml")
    assert mlruns.detect(STORE / "1" / A / "meta.yaml")
    assert not mlruns.detect(STORE / "1" / A / "params" / "lr")
    assert not mlruns.detect(STORE / "1" / A / "inputs" / "e0f1a2b3c4d5e6f708192a3b4c5d6e7f" / "meta.yaml")
    assert mlruns.unit(STORE / "1" / "meta.yaml") == STORE
    assert mlruns.unit(STORE / "1" / A / "meta.yaml") == STORE
    assert mlruns.unit(STORE / ".trash" / "7" / "meta.yaml") == STORE
    assert mlruns.unit(STORE / ".trash" / "7" / T / "meta.yaml") == STORE


def test_discovery_from_the_project_or_the_store():
    for path in (STORE.parent, STORE):
        units, unknown = discover([path])
        assert [(m.NAME, u) for m, u in units] == [("mlruns", STORE)] and not unknown
        inputs = pipeline.read_inputs([path])
        assert sorted(r.source_run_id for r in inputs.records) == sorted([A, B, C, D, T, N])
    # Naming an experiment (its folder or its meta.yaml) reads that experiment, not the store.
    assert pipeline.read_inputs([STORE / "1" / "meta.yaml"]).units[0][1] == str(STORE / "1")
    assert [(m.NAME, u) for m, u in discover([STORE / "1"])[0]] == [("mlruns", STORE / "1")]


def test_an_experiment_or_a_run_folder_named_directly():
    _, runs = _read(STORE / "1")
    assert sorted(runs) == sorted([A, B, C, D])
    result, runs = _read(STORE / "1" / B)
    assert list(runs) == [B] and runs[B].experiment == "fixture experiment"
    result, runs = _read(STORE / "1" / A)
    assert len(runs[A].artifacts) == 2
    assert not any("artifacts stored at" in n for n in result.notes)  # ./mlruns/1/<A>/artifacts is here


def test_links_out_of_the_folder_are_not_followed(tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(STORE, store)
    (tmp_path / "secret.txt").write_text("outside")
    arts = store / "1" / A / "artifacts"
    (arts / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (arts / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    (arts / "inside.txt").symlink_to(arts / "readme.txt")
    (store / "1" / D / "artifacts").symlink_to(tmp_path, target_is_directory=True)
    result, runs = _read(store)
    assert sorted(a.dest for a in runs[A].artifacts) == ["inside.txt", "model/weights/w.bin", "readme.txt"]
    assert all(a.source.resolve().is_relative_to(store.resolve()) for a in runs[A].artifacts)
    assert any("leak.txt" in n and "leakdir" in n for n in result.notes)
    assert runs[D].artifacts == []


# ---------------------------------------------------------------------------------------------
# Problems, never exceptions
# ---------------------------------------------------------------------------------------------


def test_problems_name_file_and_line():
    result, _ = _read(BROKEN)
    run = BROKEN / "3" / "5a5a5a5a5a5a4a5a5a5a5a5a5a5a5a5a"
    # Each run's problems lose only that run (issue 15): they are `skipped`, the run is left out.
    by_file = {(p.file, p.location): p.message for p in result.skipped}
    assert not result.problems and not result.records
    assert (str(run / "metrics" / "loss"), "line 2") in by_file
    assert "oops" in by_file[(str(run / "metrics" / "loss"), "line 2")]
    assert "'acc@1'" in by_file[(str(run / "metrics" / "acc@1"), "")]  # reported, not renamed
    broken_meta = str(BROKEN / "3" / "6b6b6b6b6b6b4b6b6b6b6b6b6b6b6b6b" / "meta.yaml")
    assert any(f == broken_meta and "YAML" in m for (f, _), m in by_file.items())
    with pytest.raises(ValidationError) as caught:
        pipeline.validate([BROKEN])
    assert len(caught.value.problems) == len(result.skipped)


def test_garbage_never_raises(tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(STORE, store)
    (store / "1" / A / "metrics" / "odd").write_bytes(b"\xff\xfe 1 2\n1700000001000 0.5 0 extra\n\n")
    (store / "1" / B / "meta.yaml").write_bytes(b"\x00\x01 not yaml: [")
    (store / "1" / C / "meta.yaml").write_text("- a list\n")
    (store / "1" / D / "meta.yaml").write_text(f"run_id: {D}\nexperiment_id: '1'\nstatus: 9\n"
                                               "start_time: soon\n")
    (store / "1" / A / "params" / "bin").write_bytes(b"\xff")
    (store / ".trash" / "7" / "meta.yaml").write_text("experiment_id: '7'\nlifecycle_stage: deleted\n")
    result, runs = _read(store)
    files = {Path(p.file).relative_to(store).as_posix() for p in result.problems + result.skipped}
    assert {f"1/{A}/metrics/odd", f"1/{B}/meta.yaml", f"1/{C}/meta.yaml", f"1/{D}/meta.yaml",
            f"1/{A}/params/bin", ".trash/7/meta.yaml"} <= files
    assert A not in runs and B not in runs and C not in runs and D not in runs and T not in runs
    assert not mlruns.read(tmp_path / "nothing-here", SourceOptions()).records


def test_broken_models_lose_only_themselves(tmp_path):
    """Problems in logged or registered models go to `skipped` (failed outcomes of the import),
    each naming its file; the runs are read as before."""
    store = tmp_path / "mlruns"
    shutil.copytree(STORE, store)
    version = store / "models" / "my-model" / "version-1" / "meta.yaml"
    version.write_text(version.read_text().replace("version: 1", "version: one"))
    (store / "models" / "other").mkdir()
    model = store / "1" / "models" / "m-0a1b2c3d4e5f" / "meta.yaml"
    model.write_text(model.read_text().replace("status: 2", "status: 7"))
    output = store / "1" / A / "outputs" / "m-0a1b2c3d4e5f" / "meta.yaml"
    output.write_text("destination_type: [")
    result, runs = _read(store)
    assert not result.problems and len(runs) == 6
    assert {(Path(p.file).relative_to(store).as_posix(), p.location) for p in result.skipped} == {
        ("models/my-model/version-1/meta.yaml", "version"), ("models/other/meta.yaml", ""),
        ("1/models/m-0a1b2c3d4e5f/meta.yaml", "status"), (f"1/{A}/outputs/m-0a1b2c3d4e5f/meta.yaml", "line 1")}
    assert result.logged_models == [] and [m.versions for m in result.models] == [[]]


def test_a_run_twice_is_read_once(tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(STORE, store)
    shutil.copytree(store / "1" / A, store / "1" / "copy-of-a")
    result, _ = _read(store)
    assert [r.source_run_id for r in result.records].count(A) == 1
    assert any("copy-of-a" in p.file and A in p.message for p in result.problems)


# ---------------------------------------------------------------------------------------------
# A store written by the real MLflow, read back both ways
# ---------------------------------------------------------------------------------------------


def test_a_store_mlflow_writes_reads_as_mlflow_reads_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric, Param, RunTag, ViewType
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    exp = client.create_experiment("real exp", tags={"mlflow.note.content": "about"})
    parent = client.create_run(exp, run_name="parent", start_time=1700000000000)
    pid = parent.info.run_id
    points = [Metric("val/loss", v, 1700000000000 + i, i) for i, v in
              enumerate([1.0, math.nan, math.inf, -math.inf, 0.5])]
    client.log_batch(pid, metrics=points, params=[Param("lr", "0.01"), Param("text", " spaced \n")],
                     tags=[RunTag("team", "vision")])
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "f.txt").write_text("artifact")
    client.log_artifacts(pid, str(tmp_path / "a"))
    client.set_terminated(pid, "FAILED", end_time=1700000009000)
    child = client.create_run(exp, run_name="child", tags={"mlflow.parentRunId": pid})
    client.log_metric(child.info.run_id, "m", 2.0, step=3, timestamp=1700000001000)
    client.delete_run(child.info.run_id)
    gone = client.create_experiment("gone")
    client.create_run(gone, run_name="in trash")
    client.delete_experiment(gone)

    result, runs = _read(tmp_path / "mlruns")
    assert not result.problems
    theirs = [r for e in client.search_experiments(ViewType.ALL)
              for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL)]
    assert sorted(runs) == sorted(r.info.run_id for r in theirs)
    for run in theirs:
        rec = runs[run.info.run_id]
        assert (rec.name, rec.status, rec.start_time, rec.end_time, rec.user, rec.lifecycle) == (
            run.info.run_name, run.info.status, run.info.start_time, run.info.end_time, run.info.user_id,
            "deleted" if run.info.experiment_id == gone else run.info.lifecycle_stage)
        assert rec.params == run.data.params
        tags = dict(run.data.tags)
        parent_id = tags.pop("mlflow.parentRunId", None)
        assert rec.parent_key == (store_import_key(parent_id) if parent_id else None)
        assert {k: v for k, v in rec.tags.items() if not k.startswith("importer.")} == tags
        for key, table in rec.metrics.items():
            history = client.get_metric_history(run.info.run_id, key)
            assert table.num_rows == len(history)
            cols = table.select(["step", "timestamp", "value"]).to_pydict().values()
            for (step, ts, value), m in zip(zip(*cols), history):
                assert (step, ts) == (m.step, m.timestamp) and _close(value, m.value)
    assert runs[pid].experiment_tags["mlflow.note.content"] == "about"
    assert [a.dest for a in runs[pid].artifacts] == ["sub/f.txt"]
    assert not any("artifacts stored at" in n for n in result.notes)
