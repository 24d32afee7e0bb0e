"""Issue 14: text logs must not merge or drop values. Generic key/value lines (the `logging` and
`kv` dialects): a leading step marker is the step, multi-word names keep their words, and a line
that cannot be mapped without guessing is a problem naming file and line (docs/formats/text.md).

Fixtures: tests/fixtures/text/<nn-layout>/ hold one log per layout (written for this project) and
an expected.json of the facts the importer must read from it (keys, points, first/last, problems)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from importer.sources import textlog
from importer.sources.base import DERIVED_STEPS_TAG, SourceOptions

TEXT = Path(__file__).resolve().parent / "fixtures" / "text"
LAYOUTS = sorted(p.name for p in TEXT.iterdir() if (p / "expected.json").is_file())


def read(path: Path):
    return textlog.read(path, SourceOptions())


def pts(table) -> list[tuple[int, float]]:
    return list(zip(table.column("step").to_pylist(), table.column("value").to_pylist()))


def same(a: float, b) -> bool:
    b = {"NaN": math.nan, "Infinity": math.inf}.get(b, b) if isinstance(b, str) else b
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_fixture_reads_its_facts(layout):
    facts = json.loads((TEXT / layout / "expected.json").read_text())
    path = TEXT / layout / facts["file"]
    assert textlog.detect(path)
    result = read(path)
    assert [f"{p.location}: {p.message}" for p in result.problems] == facts["problems"]
    assert all(p.file == str(path) and p.location.startswith("line ") for p in result.problems)
    (rec,) = result.records
    assert rec.tags[textlog.FORMAT_TAG] == facts["dialect"]
    assert DERIVED_STEPS_TAG not in rec.tags
    assert sorted(rec.metrics) == sorted(facts["metrics"])
    for key, f in facts["metrics"].items():
        got = pts(rec.metrics[key])
        assert len(got) == f["points"], key
        for (step, value), (want_step, want_value) in ((got[0], f["first"]), (got[-1], f["last"])):
            assert step == want_step and same(value, want_value), key


def test_train_and_val_pairs_keep_both_values_and_epoch_steps(tmp_path):
    """`Epoch N: Train Loss=a, Val Loss=b` (500 lines): two keys, steps = the epoch numbers."""
    path = tmp_path / "train.log"
    path.write_text("".join(f"2023-05-15 22:50:17,398 INFO:Epoch {e}: Train Loss={e / 1000}, "
                            f"Val Loss={e / 100}, Val Acc=0.1\n" for e in range(1, 501)))
    result = read(path)
    assert result.problems == []
    (rec,) = result.records
    assert sorted(rec.metrics) == ["train_loss", "val_acc", "val_loss"]
    assert pts(rec.metrics["train_loss"])[:2] == [(1, 0.001), (2, 0.002)]
    assert pts(rec.metrics["val_loss"])[-1] == (500, 5.0)
    assert rec.metrics["val_loss"].num_rows == 500
    assert "Epoch N" in rec.tags[textlog.STEP_RULE_TAG] and DERIVED_STEPS_TAG not in rec.tags


def test_keras_style_single_line_epochs():
    (rec,) = read(TEXT / "02-keras-oneline" / "fit.log").records
    assert pts(rec.metrics["loss"]) == [(1, 0.1), (2, 0.08), (3, 0.07)]
    assert pts(rec.metrics["val_loss"]) == [(1, 0.21), (2, 0.19), (3, 0.2)]
    assert rec.tags[textlog.FORMAT_TAG] == "kv"


def test_step_pipe_layout_with_space_separated_multiword_names():
    (rec,) = read(TEXT / "03-step-pipes" / "train.log").records
    assert sorted(rec.metrics) == ["grad_norm", "lr", "train_loss"]
    assert pts(rec.metrics["lr"])[:3] == [(1, 1e-4), (2, 1e-4), (3, 9.5e-5)]


def test_two_values_for_one_key_are_a_problem_not_a_choice():
    result = read(TEXT / "05-logging-two-values" / "train.log")
    (problem,) = result.problems
    assert problem.location == "line 1" and "`Loss`" in problem.message
    (rec,) = result.records
    assert "Loss" not in rec.metrics and pts(rec.metrics["train_loss"]) == [(2, 0.0601)]


def test_epoch_marker_with_a_step_field(tmp_path):
    """The finer step wins; the epoch is kept as the metric `epoch`."""
    path = tmp_path / "mixed.log"
    path.write_text("2023-01-01 10:00:00 INFO Epoch 2: step=300 loss=0.5\n"
                    "2023-01-01 10:00:01 INFO Epoch 2: step=400 loss=0.4\n")
    (rec,) = read(path).records
    assert pts(rec.metrics["loss"]) == [(300, 0.5), (400, 0.4)]
    assert pts(rec.metrics["epoch"]) == [(300, 2.0), (400, 2.0)]


def test_falling_marker_step_starts_a_new_run(tmp_path):
    path = tmp_path / "two.log"
    path.write_text("step 1 | loss 0.9\nstep 2 | loss 0.8\nstep 1 | loss 0.95\n")
    first, second = read(path).records
    assert pts(first.metrics["loss"]) == [(1, 0.9), (2, 0.8)] and pts(second.metrics["loss"]) == [(1, 0.95)]


def test_prose_is_not_a_layout(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("Epoch 1 finished\nthe step 3 of the recipe\n")
    assert not textlog.detect(path)
