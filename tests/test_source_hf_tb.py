"""A Hugging Face Trainer output folder with `report_to=["tensorboard"]`: trainer_state.json and
runs/<date>_<host>/events.out.tfevents.* read as one run; the other files of the folder named.
The event files are written here with tensorboardX's real writer, the way transformers'
TensorBoardCallback writes them (`rewrite_logs`, add_scalar at the global step, add_text args).
No MLflow server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from importer import pipeline
from importer.sources import discover, hf_trainer

T0 = float(int(time.time()) - 1000)  # before the writer's own file_version event (now)

# log_history of a small run: train logs every 10 steps, an eval at 20, the final summary.
HISTORY = [
    {"loss": 2.5, "grad_norm": 1.5, "learning_rate": 5e-05, "epoch": 0.5, "step": 10},
    {"loss": 2.0, "grad_norm": 1.25, "learning_rate": 4e-05, "epoch": 1.0, "step": 20},
    {"eval_loss": 1.75, "eval_runtime": 3.5, "epoch": 1.0, "step": 20},
    {"train_runtime": 42.0, "train_loss": 2.25, "total_flos": 1234567.0, "epoch": 1.0, "step": 20},
]


def rewrite_logs(d: dict) -> dict:
    """transformers/integrations/integration_utils.py's rewrite_logs, as TensorBoardCallback uses it."""
    out = {}
    for k, v in d.items():
        if k.startswith("eval_"):
            out["eval/" + k[5:]] = v
        elif k.startswith("test_"):
            out["test/" + k[5:]] = v
        else:
            out["train/" + k] = v
    return out


def _write_events(folder: Path, history: list[dict], t0: float = T0, extra: bool = True) -> None:
    tbx = pytest.importorskip("tensorboardX", reason="`tensorboardX` is not installed (a test-only writer)")
    pytest.importorskip("tensorboard", reason="`tensorboard` is not installed")
    w = tbx.SummaryWriter(str(folder))
    w.add_text("args", json.dumps({"learning_rate": 5e-05}), 0, walltime=t0)
    for i, entry in enumerate(history):
        logs = {k: v for k, v in entry.items() if k != "step"}
        for k, v in rewrite_logs(logs).items():
            w.add_scalar(k, v, entry["step"], walltime=t0 + i)
    if extra:  # a series of one's own, written to the same writer: in no trainer_state.json
        w.add_scalar("train/tokens_seen", 1000.0, 10, walltime=t0 + 0.5)
    w.close()


def _output_dir(root: Path, history=HISTORY, events_history=HISTORY, state_at_top=True) -> Path:
    out = root / "bert-out"
    out.mkdir(parents=True)
    state = {"log_history": history, "global_step": 20, "max_steps": 20}
    ckpt = out / "checkpoint-20"
    ckpt.mkdir()
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"):
        (ckpt / name).write_bytes(b"\0")
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    if state_at_top:
        (out / "trainer_state.json").write_text(json.dumps(state))
    (out / "tokenizer.json").write_text("{}")
    (out / "special_tokens_map.json").write_text("{}")
    hidden = out / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "trainer_state-checkpoint.json").write_text(json.dumps(state))
    _write_events(out / "runs" / "Dec04_14-00-00_host", events_history)
    return out


def _one(out: Path):
    inputs = pipeline.read_inputs([out])
    assert [u[0] for u in inputs.units] == ["hf"], inputs.units
    (rec,) = inputs.records
    return rec, inputs


def test_state_key_undoes_rewrite_logs():
    for key in ("loss", "eval_loss", "eval_g0_accuracy", "test_f1", "train_runtime", "epoch"):
        (tag,) = rewrite_logs({key: 1})
        assert hf_trainer.state_key(tag) == key
    assert hf_trainer.state_key("my/own") == "my/own"
    assert hf_trainer.state_key("loss") == "loss"  # transformers before 4.0 wrote keys as they are


def test_events_give_the_state_points_their_wall_times(tmp_path):
    out = _output_dir(tmp_path)
    rec, inputs = _one(out)
    loss = rec.metrics["loss"]
    assert loss.column("step").to_pylist() == [10, 20]
    assert loss.column("value").to_pylist() == [2.5, 2.0]
    assert loss.column("timestamp").to_pylist() == [int(T0 * 1000), int((T0 + 1) * 1000)]
    ev = rec.metrics["eval_loss"]
    assert ev.column("timestamp").to_pylist() == [int((T0 + 2) * 1000)]
    # `epoch` 1.0 at step 20 is in three entries: one point, timed by its first event
    epoch = rec.metrics["epoch"]
    assert list(zip(epoch.column("step").to_pylist(), epoch.column("timestamp").to_pylist())) == [
        (10, int(T0 * 1000)), (20, int((T0 + 1) * 1000))]
    assert rec.start_time == int(T0 * 1000) and rec.end_time >= int((T0 + 3) * 1000)
    assert all(t.column("timestamp").null_count == 0 for t in rec.metrics.values())
    # the TensorBoard-only series is added under its log_history name
    assert rec.metrics["tokens_seen"].column("value").to_pylist() == [1000.0]
    assert not any(k.startswith(("train/", "eval/")) for k in rec.metrics)
    notes = "\n".join(inputs.notes)
    assert "wall times for" in notes and "'tokens_seen' (tag 'train/tokens_seen')" in notes
    assert "disagrees" not in notes


def test_disagreement_is_noted_with_key_step_and_both_values(tmp_path):
    events = json.loads(json.dumps(HISTORY))
    events[1]["loss"] = 3.0  # the event file says 3.0 at step 20, the state 2.0
    out = _output_dir(tmp_path, events_history=events)
    rec, inputs = _one(out)
    assert rec.metrics["loss"].column("value").to_pylist() == [2.5, 2.0]  # the state's kept
    assert rec.metrics["loss"].column("timestamp").null_count == 0
    (note,) = [n for n in inputs.notes if "disagrees" in n]
    assert "'loss'" in note and "step 20: 2.0 vs 3.0" in note and "'train/loss'" in note


def test_events_beyond_the_last_checkpoint_are_added(tmp_path):
    """Only checkpoint-10's state (no top-level one): the events of later steps are added."""
    out = _output_dir(tmp_path, history=HISTORY[:1], state_at_top=False)
    rec, inputs = _one(out)
    assert rec.metrics["loss"].column("step").to_pylist() == [10, 20]
    assert rec.metrics["eval_loss"].column("step").to_pylist() == [20]
    assert rec.metrics["loss"].column("timestamp").null_count == 0


def test_every_other_file_is_named_grouped_by_folder(tmp_path):
    out = _output_dir(tmp_path)
    rec, inputs = _one(out)
    assert inputs.unrecognised == []
    (note,) = [n for n in inputs.notes if "files not read" in n]
    assert "checkpoint-20/ (model.safetensors, optimizer.pt, rng_state.pth, scheduler.pt, trainer_state.json)" in note
    assert "./ (special_tokens_map.json, tokenizer.json)" in note
    assert "events.out" not in note and "runs/" not in note
    (hidden,) = [n for n in inputs.notes if "hidden" in n]
    assert ".ipynb_checkpoints/" in hidden


def test_checkpoints_with_the_same_files_are_one_group(tmp_path):
    out = _output_dir(tmp_path)
    for n in (30, 40, 50, 60, 70, 80):
        c = out / f"checkpoint-{n}"
        c.mkdir()
        for name in ("optimizer.pt", "scheduler.pt"):
            (c / name).write_bytes(b"\0")
    _, inputs = _one(out)
    (note,) = [n for n in inputs.notes if "files not read" in n]
    assert "checkpoint-30/, checkpoint-40/, checkpoint-50/, checkpoint-60/, checkpoint-70/ and 1 more " \
           "folders (each: optimizer.pt, scheduler.pt)" in note


def test_event_folder_found_before_the_checkpoint_is_not_a_run_of_its_own(tmp_path):
    """A logging_dir that sorts before `checkpoint-<N>` is met first by the walk."""
    out = _output_dir(tmp_path, state_at_top=False)
    (out / "runs").rename(out / "a_logs")
    units, unknown = discover([tmp_path])
    assert [(m.NAME, u) for m, u in units] == [("hf", out)]
    rec, _ = _one(out)
    assert rec.metrics["loss"].column("timestamp").null_count == 0


def test_hidden_folder_outside_a_run_is_named(tmp_path):
    out = _output_dir(tmp_path / "runs-root")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "metrics-checkpoint.csv").write_text("step,loss\n1,2\n")
    units, unknown = discover([tmp_path])
    assert [u for _, u in units] == [out]
    assert tmp_path / ".ipynb_checkpoints" in unknown
    assert not any(p.is_relative_to(out) for p in unknown)


def test_an_unreadable_event_file_is_named_and_the_state_still_read(tmp_path):
    """A git-LFS pointer in place of an event file: a note, not a problem stopping the import."""
    out = _output_dir(tmp_path)
    (out / "runs" / "Dec05_09-00-00_host").mkdir()
    pointer = out / "runs" / "Dec05_09-00-00_host" / "events.out.tfevents.1800000000.host"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    rec, inputs = _one(out)
    assert inputs.problems == []
    assert any(n.startswith(f"{pointer}: not read") and "git-LFS" in n for n in inputs.notes)
    assert rec.metrics["loss"].column("timestamp").null_count == 0
    assert not any(str(pointer) in n for n in inputs.notes if "files not read" in n)


def test_text_summaries_are_named(tmp_path):
    _, inputs = _one(_output_dir(tmp_path))
    assert any("not scalars skipped" in n and "text: 1" in n for n in inputs.notes)
