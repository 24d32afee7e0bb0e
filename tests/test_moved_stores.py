"""Issue 15, "stores that moved": an `mlruns/` folder copied from another machine keeps that
machine's artifact locations; the artifacts are found where they travelled (beside the store, by
the longest end of the location from the run id's folder on), or where `--artifact-root OLD=NEW`
says. Against a real server; every store is written here, in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

from importer.sources import mlruns
from importer.sources.base import SourceOptions

from conftest import View, run_importer, tags_of

T0 = 1_700_000_000_000
WEIGHTS = bytes(range(256)) * 40


def _run(store: Path, run_id: str, artifact_uri: str) -> None:
    folder = store / "1" / run_id
    (folder / "metrics").mkdir(parents=True)
    (folder / "metrics" / "loss").write_text(f"{T0} 0.5 0\n")
    (folder / "meta.yaml").write_text(
        f"artifact_uri: {artifact_uri}\nrun_id: {run_id}\nrun_uuid: {run_id}\nrun_name: r-{run_id[:4]}\n"
        f"experiment_id: '1'\nstatus: 3\nstart_time: {T0}\nend_time: {T0 + 1000}\n"
        "lifecycle_stage: active\nuser_id: carol\n")


def _store(root: Path, experiment: str) -> Path:
    store = root / "mlruns"
    (store / "1").mkdir(parents=True)
    (store / "1" / "meta.yaml").write_text(
        f"experiment_id: '1'\nname: {experiment}\nlifecycle_stage: active\n"
        "artifact_location: file:///C:/Users/carol/project/mlflow_artifacts\n")
    return store


def _artifacts(folder: Path) -> None:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(WEIGHTS)
    (folder / "readme.txt").write_text("moved along\n")


def _files(view: View, run: dict) -> dict[str, bytes]:
    return {p: view.artifact(run, p) for p in ("model/weights.bin", "readme.txt")}


def test_artifacts_beside_a_copied_store_are_found(uri, experiment, state, tmp_path):
    found, lost = "a1" * 16, "b2" * 16
    project = tmp_path / "project"
    store = _store(project, experiment)
    for rid in (found, lost):
        _run(store, rid, f"file:///C:/Users/carol/project/mlflow_artifacts/{rid}/artifacts")
    _artifacts(project / "mlflow_artifacts" / found / "artifacts")
    r = run_importer("import", str(project), "--tracking-uri", uri, "--state", str(state), "--json")
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["unrecognised"] == [] and summary["artifacts"] == 2
    [took] = [n for n in summary["notes"] if found in n]
    assert "2 files read from" in took and str(project / "mlflow_artifacts" / found / "artifacts") in took
    [none] = [n for n in summary["notes"] if lost in n]
    assert "none were found" in none
    view = View(uri)
    runs = {tags_of(run)["importer.source_run_id"]: run for run in view.runs(experiment)}
    assert _files(view, runs[found]) == {"model/weights.bin": WEIGHTS, "readme.txt": b"moved along\n"}


def test_artifact_root_maps_a_windows_location(uri, experiment, state, tmp_path):
    rid = "c3" * 16
    store = _store(tmp_path / "copy", experiment)
    _run(store, rid, f"C:\\Users\\Carol\\Elsewhere\\{rid}\\artifacts")  # backslashes, no scheme
    _artifacts(tmp_path / "disk" / rid / "artifacts")
    r = run_importer("import", str(store), "--tracking-uri", uri, "--state", str(state),
                     "--artifact-root", "file:///c:/users/carol/elsewhere=" + str(tmp_path / "disk"))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert f"2 files read from {tmp_path / 'disk' / rid / 'artifacts'}" in out
    view = View(uri)
    [run] = view.runs(experiment)
    assert _files(view, run) == {"model/weights.bin": WEIGHTS, "readme.txt": b"moved along\n"}
    bad = run_importer("import", str(store), "--tracking-uri", uri, "--artifact-root", "C:/x")
    assert bad.returncode == 2 and "OLD=NEW" in bad.stderr.decode()


def test_the_search_follows_no_link_out(tmp_path):
    """Beside the store, a link to a folder elsewhere holding the run's artifacts is not taken;
    a link out inside the found folder is not followed."""
    rid, other = "d4" * 16, "e5" * 16
    project = tmp_path / "project"
    store = _store(project, "x")
    _run(store, rid, f"file:///C:/p/mlflow_artifacts/{rid}/artifacts")
    _run(store, other, f"file:///C:/p/mlflow_artifacts/{other}/artifacts")
    _artifacts(tmp_path / "outside" / rid / "artifacts")
    (tmp_path / "secret.txt").write_text("not yours")
    (project / "mlflow_artifacts").mkdir()
    (project / "mlflow_artifacts" / rid).symlink_to(tmp_path / "outside" / rid, target_is_directory=True)
    _artifacts(project / "mlflow_artifacts" / other / "artifacts")
    (project / "mlflow_artifacts" / other / "artifacts" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    result = mlruns.read(store, SourceOptions())
    runs = {r.source_run_id: r for r in result.records}
    assert runs[rid].artifacts == []
    assert sorted(a.dest for a in runs[other].artifacts) == ["model/weights.bin", "readme.txt"]
    assert any(other in n and "leak.txt" in n and "not followed" in n for n in result.notes)
