"""Parse-only tests of the TensorBoard and W&B sources: the shared corpus (read in place, compared
with its expected.json) and fixtures made here (event files written by tensorboardX, a git-LFS
pointer, truncated files, W&B folders with symlinks, a crashed run). No MLflow server."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

import importer
from importer.sources import tfevents, wandb
from importer.sources.base import RENAMED_METRICS_TAG, SourceOptions

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tb_wandb"


def _corpus(kind: str) -> list[Path]:
    folder = CORPUS / kind
    if not folder.is_dir():
        pytest.skip(f"shared corpus folder {folder} is absent")
    return sorted(p for p in folder.iterdir() if (p / "expected.json").is_file())


def _needs(module: str):
    pytest.importorskip(module, reason=f"`{module}` is not installed (pip install "
                        f"'importer[{'wandb' if module.startswith('wandb') else 'tensorboard'}]')")


def _points(table) -> list[tuple[int, float]]:
    return list(zip(table.column("step").to_pylist(), table.column("value").to_pylist()))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# TensorBoard: corpus
# ---------------------------------------------------------------------------------------------

def _tb_samples():
    folder = CORPUS / "tfevents"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ["(corpus absent)"]


@pytest.mark.parametrize("sample", _tb_samples())
def test_tfevents_corpus(sample):
    """One run per folder holding event files; its files merged in name order. So the expected
    per-file scalars are merged the same way: points add up, first/last come from the first/last
    file holding the tag. No corpus tag needs renaming (`:` is allowed), so keys equal tags."""
    _needs("tensorboard")
    path = next((p for p in _corpus("tfevents") if p.name == sample), None)
    assert path is not None
    expected = json.loads((path / "expected.json").read_text())
    assert tfevents.detect(path)
    result = tfevents.read(path, SourceOptions())
    assert result.problems == []
    assert all("truncated" not in n for n in result.notes)

    by_folder: dict[str, list[tuple[str, dict]]] = {}
    for rel, info in sorted(expected["files"].items()):
        by_folder.setdefault(str(Path(rel).parent), []).append((rel, info))
    records = {r.name: r for r in result.records}
    assert sorted(records) == sorted(by_folder)
    for folder, files in by_folder.items():
        rec = records[folder]
        want: dict[str, dict] = {}
        for _, info in files:
            for tag, s in info["scalars"].items():
                w = want.setdefault(tag, {"points": 0, "first": s["first"]})
                w["points"] += s["points"]
                w["last"] = s["last"]
        assert sorted(rec.metrics) == sorted(want)
        for tag, w in want.items():
            pts = _points(rec.metrics[tag])
            assert len(pts) == w["points"], tag
            for got, exp in ((pts[0], w["first"]), (pts[-1], w["last"])):
                assert got[0] == exp[0] and _same(got[1], exp[1]), (tag, got, exp)
        assert rec.start_time == int(min(i["wall_time_first"] for _, i in files) * 1000)
        assert rec.end_time == int(max(i["wall_time_last"] for _, i in files) * 1000)
        assert rec.experiment == Path(path / folder).parent.name
        assert all(t.column("timestamp").null_count == 0 for t in rec.metrics.values())


def test_tfevents_corpus_hparams_become_params():
    """Lightning's hparams plugin data (session_start_info) matches its hparams.yaml."""
    _needs("tensorboard")
    yaml = pytest.importorskip("yaml")
    samples = [p for p in _corpus("tfevents") if p.name.startswith("05-")]
    if not samples:
        pytest.skip("corpus sample tfevents/05-* is absent")
    result = tfevents.read(samples[0], SourceOptions())
    for rec in result.records:
        hp = yaml.safe_load((samples[0] / rec.name / "hparams.yaml").read_text())
        assert sorted(rec.params) == sorted(hp)
        assert rec.params["batch_size"] == "256" and rec.params["lr"] == "0.001"
        assert rec.params["data_path"] == hp["data_path"]


# ---------------------------------------------------------------------------------------------
# TensorBoard: fixtures written with a real writer
# ---------------------------------------------------------------------------------------------

def _write_events(folder: Path) -> None:
    """simple_value points, TF2-style tensor scalars (float_val, and double tensor_content, with
    the `scalars` metadata on the first value only), NaN/Infinity, a tag the server rejects
    (written as a raw Summary: tensorboardX would clean it), a histogram and hparams."""
    pytest.importorskip("tensorboardX", reason="`tensorboardX` is not installed (a test-only "
                        "writer: pip install tensorboardX)")
    import struct

    import numpy as np
    from tensorboardX import SummaryWriter
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboardX.proto.tensor_pb2 import TensorProto
    from tensorboardX.summary import hparams

    scalars_meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    w = SummaryWriter(str(folder))
    fw = w._get_file_writer()
    for s in hparams({"lr": 0.5, "layers": 3, "opt": "adam", "nesterov": True}, {"acc": 0}):
        fw.add_summary(s, 0)
    for step in range(5):
        w.add_scalar("old/loss", 1.0 / (step + 1), step)
        f32 = Summary.Value(tag="tf2/float", tensor=TensorProto(dtype=1, float_val=[step * 0.5]))
        f64 = Summary.Value(tag="tf2/double", tensor=TensorProto(
            dtype=2, tensor_content=struct.pack("<d", step + 0.125)))
        if step == 0:
            f32.metadata.CopyFrom(scalars_meta)
            f64.metadata.CopyFrom(scalars_meta)
        odd = Summary.Value(tag="val/AR@100", simple_value=step / 10)
        fw.add_summary(Summary(value=[f32, f64, odd]), step)
    w.add_scalar("special", float("nan"), 0)
    w.add_scalar("special", float("inf"), 1)
    w.add_scalar("special", float("-inf"), 2)
    w.add_histogram("weights", np.arange(10.0), 0)
    w.close()


def test_tfevents_written_by_tensorboardx(tmp_path):
    _needs("tensorboard")
    _write_events(tmp_path / "logs" / "run-a")
    assert tfevents.detect(tmp_path / "logs")
    result = tfevents.read(tmp_path / "logs", SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert rec.name == "run-a" and rec.experiment == "logs"
    assert rec.params == {"layers": "3", "lr": "0.5", "nesterov": "true", "opt": "adam"}
    assert _points(rec.metrics["old/loss"]) == [(s, pytest.approx(1 / (s + 1))) for s in range(5)]
    assert _points(rec.metrics["tf2/float"]) == [(s, s * 0.5) for s in range(5)]
    assert _points(rec.metrics["tf2/double"]) == [(s, s + 0.125) for s in range(5)]
    special = [v for _, v in _points(rec.metrics["special"])]
    assert math.isnan(special[0]) and special[1:] == [math.inf, -math.inf]
    # The rename rule: base.safe_metric_key, recorded in a tag and a note.
    assert "val/AR_100" in rec.metrics and "val/AR@100" not in rec.metrics
    assert json.loads(rec.tags[RENAMED_METRICS_TAG]) == {"val/AR@100": "val/AR_100"}
    assert any("val/AR@100" in n for n in result.notes)
    assert any("histo" in n for n in result.notes)  # the histogram is skipped, and said so
    ts = rec.metrics["old/loss"].column("timestamp").to_pylist()
    assert rec.start_time <= ts[0] <= ts[-1] <= rec.end_time


def test_tfevents_one_file_and_import_key(tmp_path):
    _needs("tensorboard")
    _write_events(tmp_path / "run")
    [f] = list((tmp_path / "run").iterdir())
    by_file = tfevents.read(f, SourceOptions(experiment="exp")).records[0]
    by_folder = tfevents.read(tmp_path / "run", SourceOptions()).records[0]
    assert by_file.experiment == "exp" and by_file.metrics.keys() == by_folder.metrics.keys()
    assert by_folder.import_key == tfevents.read(tmp_path, SourceOptions()).records[0].import_key


def test_tfevents_truncated_file_keeps_what_came_before(tmp_path):
    _needs("tensorboard")
    _write_events(tmp_path / "run")
    [f] = list((tmp_path / "run").iterdir())
    whole = tfevents.read(tmp_path / "run", SourceOptions()).records[0]
    data = f.read_bytes()
    f.write_bytes(data[:-7])  # the last record loses its tail, as in a file still being written
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert any("truncated" in n and "not read" in n for n in result.notes)
    assert rec.point_count in (whole.point_count, whole.point_count - 1)
    assert rec.metrics["old/loss"].num_rows == 5

    f.write_bytes(data[:200] + b"\xff" * 20 + data[220:])  # a corrupt record in the middle
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.problems == [] and any("CRC" in n or "truncated" in n for n in result.notes)


def test_tfevents_lfs_pointer_is_a_problem():
    _needs("tensorboard")
    path = FIXTURES / "lfs-pointer"
    assert tfevents.detect(path)
    result = tfevents.read(path, SourceOptions())
    assert result.records == []
    [p] = result.problems
    assert "git-LFS pointer" in p.message and "git lfs pull" in p.message


def test_tfevents_not_an_event_file(tmp_path):
    _needs("tensorboard")
    (tmp_path / "events.out.tfevents.1.x").write_bytes(b"hello, this is not a record at all")
    result = tfevents.read(tmp_path, SourceOptions())
    assert result.records == [] and "no readable TFRecord" in result.problems[0].message
    assert not tfevents.detect(FIXTURES / "wandb-jsonl")


def _gzipped(f: Path, name: str) -> Path:
    import gzip

    out = f.with_name(name)
    out.write_bytes(gzip.compress(f.read_bytes()))
    f.unlink()
    return out


def test_tfevents_gzip_fixture():
    """A gzip-compressed event file (tensorboardX's writer, then gzip: make_gzip_sample.py)."""
    _needs("tensorboard")
    path = FIXTURES / "gzip"
    assert tfevents.detect(path)
    result = tfevents.read(path, SourceOptions())
    assert result.problems == [] and result.notes == []
    [rec] = result.records
    assert _points(rec.metrics["train/loss"]) == [(s, pytest.approx(1 / (s + 1))) for s in range(4)]
    assert rec.metrics["lr"].column("timestamp").to_pylist() == [1700000000500 + 1000 * s for s in range(4)]
    assert rec.start_time == 1700000000000


@pytest.mark.parametrize("name", ["events.out.tfevents.1.host.gz", "events.out.tfevents.1.host"])
def test_tfevents_gzip_read_transparently(tmp_path, name):
    """By content, whatever the name: the same run as the uncompressed file."""
    _needs("tensorboard")
    _write_events(tmp_path / "run")
    [f] = list((tmp_path / "run").iterdir())
    whole = tfevents.read(tmp_path / "run", SourceOptions())
    _gzipped(f, name)
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.problems == []
    [rec], [plain] = result.records, whole.records
    assert rec.params == plain.params and rec.metrics.keys() == plain.metrics.keys()
    for key, table in plain.metrics.items():
        assert str(rec.metrics[key].to_pylist()) == str(table.to_pylist()), key  # NaN too
    assert (rec.start_time, rec.end_time) == (plain.start_time, plain.end_time)


def test_tfevents_gzip_cut_or_corrupt(tmp_path):
    _needs("tensorboard")
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    for step in range(3000):  # enough for several deflate blocks
        w.add_scalar("loss", 1.0 / (step + 1), step)
    w.close()
    [f] = list((tmp_path / "run").iterdir())
    whole = tfevents.read(tmp_path / "run", SourceOptions()).records[0]
    gz = _gzipped(f, f.name + ".gz")
    data = gz.read_bytes()
    gz.write_bytes(data[:len(data) // 2])  # a gzip stream still being written
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert 0 < rec.point_count < whole.point_count
    [note] = [n for n in result.notes if "gzip" in n]
    assert note.startswith(f"{gz}: kept the ") and "of the decompressed gzip stream" in note
    assert "ends early" in note

    gz.write_bytes(data[:10] + b"\x00garbage" * 20)  # a gzip header, then no deflate data
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.records == []
    [p] = result.problems
    assert p.file == str(gz) and p.location == "byte 0 of the decompressed gzip stream"
    assert "gzip stream is corrupt" in p.message and "(gzip-compressed)" in p.message


def test_tfevents_zlib_records(tmp_path):
    """TensorFlow's TFRecordWriter with compression "ZLIB" writes one zlib stream over the file:
    read like the plain file; cut short, the records before the cut are kept."""
    _needs("tensorboard")
    import zlib
    from tensorboardX import SummaryWriter

    w = SummaryWriter(str(tmp_path / "run"))
    for step in range(3000):
        w.add_scalar("loss", 1.0 / (step + 1), step)
        w.add_scalar("nan", math.nan, step)
    w.close()
    [f] = list((tmp_path / "run").iterdir())
    [plain] = tfevents.read(tmp_path / "run", SourceOptions()).records
    data = zlib.compress(f.read_bytes())
    f.write_bytes(data)
    result = tfevents.read(tmp_path / "run", SourceOptions())
    assert result.problems == [] and result.notes == []
    [rec] = result.records
    for key, table in plain.metrics.items():
        assert str(rec.metrics[key].to_pylist()) == str(table.to_pylist()), key
    assert rec.point_count == 6000 and (rec.start_time, rec.end_time) == (plain.start_time, plain.end_time)

    f.write_bytes(data[:len(data) // 2])
    result = tfevents.read(tmp_path / "run", SourceOptions())
    [rec] = result.records
    assert 0 < rec.point_count < 6000
    [note] = result.notes
    assert "of the decompressed zlib stream" in note and "zlib stream ends early" in note


def test_tfevents_missing_package_names_the_extra(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    result = tfevents.read(FIXTURES / "lfs-pointer", SourceOptions())
    assert "pip install 'importer[tensorboard]'" in result.problems[0].message


def test_tensorboard_sample_logs():
    _needs("tensorboard")
    path = Path(__file__).resolve().parents[1] / "sample_logs" / "tensorboard"
    result = tfevents.read(path, SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert {k: t.num_rows for k, t in rec.metrics.items()} == {
        "train/loss": 20, "val/accuracy": 20, "lr": 20}
    assert rec.params == {"batch_size": "32", "lr": "0.01", "optimizer": "sgd"}


def test_wandb_sample_found_by_walking_under_the_command_line():
    """A folder as wandb 0.31 writes it offline (the history only in the .wandb log, W&B's debug
    logs beside it, a latest-run link), walked with no --format, in the CLI's own process (which
    keeps pandas out: wandb's import must still work there)."""
    _needs("wandb")
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "sample_logs" / "wandb"
    res = subprocess.run([sys.executable, "-m", "importer", "inspect", str(path), "--json"],
                         capture_output=True, check=True)
    report = json.loads(res.stdout)
    assert [u["format"] for u in report["units"]] == ["wandb"] and report["unrecognised"] == []
    [run] = report["runs"]
    assert (run["name"], run["experiment"], run["params"]) == ("mnist-mlp", "sample-wandb", 5)
    assert {k: m["points"] for k, m in run["metrics"].items()} == {
        "train/loss": 20, "train/acc": 20, "val/loss": 4, "best_val_loss": 1}
    assert not any("not read" in n for n in report["notes"]), report["notes"]


def test_links_in_a_walked_folder_are_listed_not_read(tmp_path):
    """A link may lead out of the folder named, or to a file read anyway: listed, never read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("epoch,loss\n0,1.0\n")
    named = tmp_path / "named"
    named.mkdir()
    (named / "a.csv").write_text("epoch,loss\n0,0.5\n1,0.4\n")
    (named / "b.csv").symlink_to(named / "a.csv")
    (named / "c.csv").symlink_to(outside / "secret.csv")
    found = importer.read_inputs([named])
    assert [r.origin.split(":")[0] for r in found.records] == [str(named / "a.csv")]
    assert sorted(found.unrecognised) == [str(named / "b.csv"), str(named / "c.csv")]


# ---------------------------------------------------------------------------------------------
# W&B: corpus
# ---------------------------------------------------------------------------------------------

def _wandb_samples():
    folder = CORPUS / "wandb"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ["(corpus absent)"]


@pytest.mark.parametrize("sample", _wandb_samples())
def test_wandb_corpus(sample):
    """expected.json holds the final summary, not the history. The rules checked: metric keys are
    the numeric summary keys without W&B's own `_` keys; with a .wandb log each key has one point
    per step 0.._step and the last point equals the summary; without one (03-*: the log was not
    stored upstream) each key is one point at the summary's `_step`. Params are config values."""
    path = next((p for p in _corpus("wandb") if p.name == sample), None)
    assert path is not None
    expected = json.loads((path / "expected.json").read_text())
    has_log = any(r["binary_wandb_files"] for r in expected["runs"].values())
    if has_log:
        _needs("wandb")
    assert wandb.detect(path) and not tfevents.detect(path)
    result = wandb.read(path, SourceOptions())
    assert result.problems == []
    records = {r.tags["wandb.run_id"]: r for r in result.records}
    assert sorted(records) == sorted(r["run_id"] for r in expected["runs"].values())
    for rel, exp in expected["runs"].items():
        rec = records[exp["run_id"]]
        assert rec.params == {k: json.dumps(v) if not isinstance(v, str) else v
                              for k, v in exp["config"].items()}
        summary = {k: v for k, v in exp["summary_numeric"].items() if not k.startswith("_")}
        assert sorted(rec.metrics) == sorted(summary)
        last_step = int(exp["summary_numeric"].get("_step", 0))
        for key, value in summary.items():
            pts = _points(rec.metrics[key])
            assert pts[-1][0] == last_step and _same(pts[-1][1], value), key
            assert len(pts) == (last_step + 1 if exp["binary_wandb_files"] else 1), key
        started = exp["metadata"]["startedAt"].replace("Z", "+00:00")
        from datetime import datetime, timezone
        t = datetime.fromisoformat(started)
        t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        assert rec.start_time == int(t.timestamp() * 1000)
        assert rec.origin.endswith(f": {exp['run_id']}") and rel in rec.origin


def test_wandb_corpus_crashed_run_from_log():
    """01-*: the run died at start (exit code 1 in the log): a run with params, status FAILED."""
    _needs("wandb")
    samples = [p for p in _corpus("wandb") if p.name.startswith("01-")]
    if not samples:
        pytest.skip("corpus sample wandb/01-* is absent")
    [rec] = wandb.read(samples[0], SourceOptions()).records
    assert rec.status == "FAILED" and rec.metrics == {} and rec.experiment == "U-Net"
    assert rec.params["learning_rate"] == "1e-05"


def test_wandb_truncated_log(tmp_path):
    """A .wandb log cut mid-record (a crash while writing): the records before it are kept."""
    _needs("wandb")
    logs = sorted((CORPUS / "wandb").glob("05-*/wandb/run-*/*.wandb"))
    if not logs:
        pytest.skip("corpus sample wandb/05-* is absent")
    run = tmp_path / "wandb" / logs[0].parent.name
    run.mkdir(parents=True)
    data = logs[0].read_bytes()
    (run / logs[0].name).write_bytes(data[:len(data) * 2 // 3])
    result = wandb.read(tmp_path, SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert any("not read" in n for n in result.notes)
    assert 0 < rec.metrics["loss"].num_rows < 8 and rec.status == "FAILED"


# ---------------------------------------------------------------------------------------------
# W&B: fixtures
# ---------------------------------------------------------------------------------------------

def test_wandb_symlinks_are_not_followed(tmp_path):
    """A dangling latest-run, a run-like link to a run outside the named folder and a dangling
    file link inside a run: none is followed, and the real run is read once."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "wandb-crashed", root)
    outside = tmp_path / "elsewhere" / "run-20260101_000000-outside1"
    shutil.copytree(FIXTURES / "wandb-crashed" / "wandb" / "run-20260101_120000-crash001", outside)
    wb = root / "wandb"
    os.symlink("run-20990101_000000-gone0000", wb / "latest-run")  # dangling
    os.symlink(outside, wb / "run-20260101_000000-outside1")
    run = wb / "run-20260101_120000-crash001"
    os.symlink("/nonexistent/wandb/core-debug.log", run / "files" / "output.log")
    (run / "files" / "wandb-summary.json").unlink()
    os.symlink(outside / "files" / "wandb-summary.json", run / "files" / "wandb-summary.json")

    assert wandb.detect(root)
    result = wandb.read(root, SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert rec.tags["wandb.run_id"] == "crash001"
    assert any("not followed" in n for n in result.notes)  # the summary link leads outside


def test_wandb_crashed_at_start_without_log():
    """No history, a summary with only W&B's own keys: still a run, with params and times."""
    path = FIXTURES / "wandb-crashed"
    result = wandb.read(path, SourceOptions())
    assert result.problems == []
    [rec] = result.records
    assert rec.metrics == {} and rec.name == "crash001"
    assert rec.params == {"lr": "0.001", "model.dropout": "0.1", "model.layers.0": "64",
                          "model.layers.1": "32"}
    assert rec.experiment == "wandb-crashed"  # no project known: the folder holding wandb/
    assert rec.start_time == 1767268800500 and rec.end_time == 1767268802500  # + runtime 2 s
    assert rec.user == "tester" and rec.source == "train.py"
    assert any("no readable history" in n for n in result.notes)


def test_wandb_history_jsonl():
    """wandb-history.jsonl: `_step`/`_timestamp`, nested keys flattened with `.`, NaN/Infinity
    kept, media and strings and booleans skipped and counted, a rejected key renamed, and a
    summary-only key as one point at the summary's step."""
    path = FIXTURES / "wandb-jsonl" / "wandb" / "offline-run-20260102_090000-jsonl002"
    assert wandb.detect(path)
    result = wandb.read(path, SourceOptions(experiment="e"))
    assert result.problems == []
    [rec] = result.records
    assert rec.experiment == "e" and rec.params == {"epochs": "3"}
    assert sorted(rec.metrics) == ["AR_100", "best_acc", "loss", "val.acc", "val.top5"]
    loss = _points(rec.metrics["loss"])
    assert [s for s, _ in loss] == [0, 1, 2]
    assert loss[0][1] == 1.5 and math.isnan(loss[1][1]) and loss[2][1] == math.inf
    assert _points(rec.metrics["AR_100"])[-1][1] == -math.inf
    assert rec.metrics["loss"].column("timestamp").to_pylist() == [
        1767344400000, 1767344401250, 1767344402500]
    assert _points(rec.metrics["best_acc"]) == [(2, 0.7)]
    assert json.loads(rec.tags[RENAMED_METRICS_TAG]) == {"AR@100": "AR_100"}
    skipped = next(n for n in result.notes if "skipped non-numeric" in n)
    assert "image-file: 1" in skipped and "str: 1" in skipped and "bool: 1" in skipped
    assert rec.start_time == 1767344400000 and rec.end_time == 1767344402500


def test_wandb_not_a_run_folder(tmp_path):
    assert not wandb.detect(tmp_path)
    assert wandb.read(tmp_path, SourceOptions()).problems
