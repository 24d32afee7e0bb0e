"""Issue 14: every file under a run folder a source claims is read or named in a note; hidden
folders are left out and named. The folders are copies of sample_logs/ with the files the
frameworks write beside their logs (checkpoints, weights, plots, console output)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from importer.pipeline import read_inputs

SAMPLES = Path(__file__).resolve().parents[1] / "sample_logs"


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(SAMPLES / name, tmp_path / name, symlinks=True))


def _not_read(notes: list[str]) -> str:
    (note,) = [n for n in notes if "files not read" in n]
    return note


def _add(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def _model_note(notes: list[str]) -> str:
    (note,) = [n for n in notes if "model files seen, not uploaded" in n]
    return note


def test_lightning_version_folder_names_its_checkpoints(tmp_path):
    version = _copy("lightning", tmp_path) / "lightning_logs" / "version_0"
    # LightningCLI's config.yaml, ModelCheckpoint's checkpoint, an editor's autosave
    _add(version, "config.yaml", "checkpoints/epoch=1-step=20.ckpt", ".ipynb_checkpoints/metrics-checkpoint.csv")
    inputs = read_inputs([tmp_path / "lightning"])
    assert len(inputs.records) == 1 and not inputs.unrecognised
    note = _not_read(inputs.notes)
    assert "1 files not read" in note and "./ (config.yaml)" in note
    assert "checkpoints/epoch=1-step=20.ckpt" in _model_note(inputs.notes)  # named there, not twice
    assert "metrics.csv" not in note.replace("metrics-checkpoint.csv", "") and ".ckpt" not in note
    assert any(".ipynb_checkpoints/" in n and "hidden folders" in n for n in inputs.notes)


def test_yolo_run_folder_names_weights_and_plots(tmp_path):
    train = _copy("yolo", tmp_path) / "runs" / "detect" / "train"
    _add(train, "weights/best.pt", "weights/last.pt", "confusion_matrix.png")
    inputs = read_inputs([tmp_path / "yolo"])
    assert len(inputs.records) == 1
    note = _not_read(inputs.notes)
    assert "./ (confusion_matrix.png)" in note and "weights/ (last.pt)" in note
    assert "weights/best.pt" in _model_note(inputs.notes)
    assert "results.csv" not in note and "args.yaml" not in note


def test_uploaded_model_files_are_not_named_as_not_read(tmp_path):
    train = _copy("yolo", tmp_path) / "runs" / "detect" / "train"
    _add(train, "weights/best.pt", "weights/last.pt")
    inputs = read_inputs([tmp_path / "yolo"], register_model="detector")
    (rec,) = inputs.records
    assert [a.dest for a in rec.artifacts] == ["model/best.pt"]
    assert "best.pt" not in _not_read(inputs.notes)
    assert not any("model files seen" in n for n in inputs.notes)


def test_tensorboard_folder_names_what_is_not_an_event_file(tmp_path):
    pytest.importorskip("tensorboard", reason="reading event files needs the tensorboard extra")
    run = _copy("tensorboard", tmp_path) / "demo" / "run-1"
    _add(run, "hparams.yaml", "checkpoints/last.ckpt")
    inputs = read_inputs([tmp_path / "tensorboard"])
    assert len(inputs.records) == 1
    note = _not_read(inputs.notes)
    assert "hparams.yaml" in note and "checkpoints/ (last.ckpt)" in note and "tfevents" not in note


def test_wandb_run_folder_names_console_output_and_media(tmp_path):
    pytest.importorskip("wandb", reason="reading .wandb logs needs the wandb extra")
    root = _copy("wandb", tmp_path)
    run = next((root / "wandb").glob("offline-run-*"))
    _add(run, "files/output.log", "files/media/images/sample_0.png")
    inputs = read_inputs([root])
    assert len(inputs.records) == 1
    note = _not_read(inputs.notes)
    assert "files/ (output.log)" in note and "files/media/images/ (sample_0.png)" in note
    assert ".wandb" not in note
