"""Parse-only tests of the Hugging Face Trainer and text-log sources (no MLflow server).

The real-log corpus is read in place from ../shared/corpus; its expected.json files are facts about
the files, so where the importer maps them (composite steps -> one integer, split runs, dropped
exact duplicates) the test says the rule and checks the mapping.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from importer.model import DERIVED_TIMESTAMPS_TAG, INFINITE_VALUES_TAG, METRIC_SCHEMA, key_problem
from importer.sources import hf_trainer, textlog
from importer.sources.base import (DERIVED_STEPS_TAG, RENAMED_METRICS_TAG, SourceOptions,
                                   import_key)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "logs"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_logs"


def corpus(sub: str) -> Path:
    folder = CORPUS / sub
    if not folder.is_dir():
        pytest.skip(f"the shared real-log corpus is not here ({folder}); these tests read it in place")
    return folder


def expected_of(sample: Path) -> dict:
    return json.loads((sample / "expected.json").read_text())


def pts(table) -> list[tuple[int, float]]:
    return list(zip(table.column("step").to_pylist(), table.column("value").to_pylist()))


def close(a: float, b) -> bool:
    if isinstance(b, str):
        b = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[b]
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=0)


def check_series(points: list[tuple[int, float]], facts: dict, step_of=lambda s: s) -> None:
    """Points per key, first and last [step, value] against expected.json (steps mapped by `step_of`)."""
    assert len(points) == facts["points"]
    for got, (step, value) in ((points[0], facts["first"]), (points[-1], facts["last"])):
        assert got[0] == step_of(step)
        assert close(got[1], value)


def read_clean(mod, path: Path, **opts):
    result = mod.read(path, SourceOptions(**opts))
    assert result.problems == []
    for rec in result.records:
        for key, table in rec.metrics.items():
            assert table.schema == METRIC_SCHEMA
            assert key_problem(key, "metric") is None
    return result


# ---------------------------------------------------------------------------------------------
# Corpus: Hugging Face Trainer
# ---------------------------------------------------------------------------------------------

HF_SAMPLES = ["01-whisper-ja-resumed", "03-multi-evalset-no-summary"]


@pytest.mark.parametrize("name", HF_SAMPLES)
def test_hf_corpus(name):
    sample = corpus("hf-trainer") / name
    for rel, facts in expected_of(sample)["files"].items():
        if not rel.endswith("trainer_state.json"):
            continue
        path = sample / rel
        assert hf_trainer.detect(path) and not textlog.detect(path)
        result = read_clean(hf_trainer, path)
        (rec,) = result.records
        # Rule: every log_history key is a metric at the entry's step, `epoch` included.
        assert sorted(rec.metrics) == sorted(facts["metric_keys"] + ["epoch"])
        for key, kf in facts["metrics"].items():
            check_series(pts(rec.metrics[key]), kf)
        # Rule: `epoch` repeats at every eval entry of a step; an exact duplicate point (same step
        # and value) is dropped, so epoch keeps one point per distinct (step, value).
        history = json.loads(path.read_text())["log_history"]
        distinct = list(dict.fromkeys((e["step"], e["epoch"]) for e in history if "epoch" in e))
        assert pts(rec.metrics["epoch"]) == distinct
        assert len(history) == facts["epoch_series"]["points"]
        assert distinct[0] == tuple(facts["epoch_series"]["first"])
        assert distinct[-1] == tuple(facts["epoch_series"]["last"])
        top = facts["top_level"]
        for k in ("max_steps", "num_train_epochs", "train_batch_size"):
            if k in top:
                assert rec.params[k] == str(top[k])
        assert rec.tags[DERIVED_TIMESTAMPS_TAG]
        assert rec.start_time is None and rec.end_time is None


def test_hf_corpus_folder_reads_the_final_state():
    sample = corpus("hf-trainer") / "01-whisper-ja-resumed"
    assert hf_trainer.detect(sample)
    result = read_clean(hf_trainer, sample)
    (rec,) = result.records
    assert rec.origin.startswith(str(sample / "trainer_state.json"))
    assert "train_runtime" in rec.metrics  # the summary entry only the final state has
    assert rec.params["d_model"] == "1280"  # from config.json beside it
    assert rec.import_key == import_key("hf", str(sample.resolve()))
    # The checkpoint copy of the same run keys to the same run (its run folder is the parent).
    (ckpt,) = read_clean(hf_trainer, sample / "last-checkpoint" / "trainer_state.json").records
    assert ckpt.import_key == rec.import_key


# ---------------------------------------------------------------------------------------------
# Corpus: text logs
# ---------------------------------------------------------------------------------------------

def mmdet_iters(log: Path) -> int:
    """N of the first `Epoch [e][i/N]` in an mmdet text log."""
    m = re.search(r"Epoch \[\d+\]\[\d+/(\d+)\]", log.read_text())
    return int(m.group(1))


def test_text_corpus_mmdet():
    sample = corpus("text-logs") / "01-mmdet2-aborted-runs"
    for rel, facts in expected_of(sample)["files"].items():
        path = sample / rel
        assert textlog.detect(path) and not hf_trainer.detect(path)
        result = read_clean(textlog, path)
        if not facts["metrics"]:
            # Aborted launches with no metric line: no run, and a note says why.
            assert result.records == []
            assert any("no metric lines" in n for n in result.notes)
            continue
        (rec,) = result.records
        assert sorted(rec.metrics) == facts["metric_keys"]
        # Rule: [epoch, iter] -> (epoch - 1) * N + iter, N = iters per epoch from `[iter/N]`
        # (the .log.json takes N from its sibling .log).
        n = mmdet_iters(path.with_name(path.name.removesuffix(".json")))
        for key, kf in facts["metrics"].items():
            check_series(pts(rec.metrics[key]), kf, step_of=lambda s: (s[0] - 1) * n + s[1])
        assert "(epoch - 1) * N + iter" in rec.tags[textlog.STEP_RULE_TAG]
        if path.suffix == ".log":
            # Line times (naive) are read as UTC: 2021-08-12 19:07:24,634.
            assert rec.metrics["train/loss"].column("timestamp")[0].as_py() == 1628795244634
            assert rec.tags[textlog.NAIVE_TIMES_TAG]
            assert rec.start_time == 1628795196460  # the first line's time
        else:
            assert rec.metrics["train/loss"].column("timestamp").null_count == 1
            assert rec.params == {"exp_name": "faster_rcnn_r50_fpn_1x_coco.py"}


def test_text_corpus_fairseq():
    sample = corpus("text-logs") / "03-fairseq-hydra-wav2vec2"
    path = sample / "hydra_train.log"
    facts = expected_of(sample)["files"]["hydra_train.log"]
    assert textlog.detect(path) and not hf_trainer.detect(path)
    (rec,) = read_clean(textlog, path).records
    assert sorted(rec.metrics) == sorted(facts["metric_keys"])
    for key, kf in facts["metrics"].items():
        check_series(pts(rec.metrics[key]), kf)  # steps are num_updates, as in the facts
    assert rec.params["common.log_interval"] == "200"  # the hydra config dump
    assert rec.tags[textlog.FORMAT_TAG] == "fairseq"


def test_text_corpus_keras_phases():
    sample = corpus("text-logs") / "05-keras1-console-multiphase-earlystop"
    for rel, facts in expected_of(sample)["files"].items():
        path = sample / rel
        assert textlog.detect(path) and not hf_trainer.detect(path)
        result = read_clean(textlog, path)
        # Rule: every `Epoch 1/N` starts another fit() call = another run (segment index);
        # [phase, epoch] -> run number phase - 1, step = epoch as printed.
        assert len(result.records) == facts["training_phases"]
        keys = sorted({k for rec in result.records for k in rec.metrics})
        assert keys == facts["metric_keys"]
        for key, kf in facts["metrics"].items():
            series = [(i + 1, s, v) for i, rec in enumerate(result.records) if key in rec.metrics
                      for s, v in pts(rec.metrics[key])]
            assert len(series) == kf["points"]
            for (phase, step, value), (raw, fv) in ((series[0], kf["first"]), (series[-1], kf["last"])):
                assert [phase, step] == raw and close(value, fv)
        assert [r.import_key for r in result.records] == [
            import_key("text", str(path.resolve()), str(i)) for i in range(len(result.records))]


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

TEXT_FIXTURES = ["mmdet_run.log", "mmdet_run.log.json", "fairseq_hydra.log", "fairseq_simple.log",
                 "fairseq_legacy_simple.log", "keras_console.txt", "llmc.log", "llmc_main.log",
                 "python_logging.log", "no_steps.log"]


@pytest.mark.parametrize("name", TEXT_FIXTURES)
def test_detect_text_fixtures(name):
    assert textlog.detect(FIXTURES / name)
    assert not hf_trainer.detect(FIXTURES / name)


def test_detect_hf_and_csv():
    assert hf_trainer.detect(FIXTURES / "hf_run") and hf_trainer.detect(FIXTURES / "hf_run" / "trainer_state.json")
    assert not textlog.detect(FIXTURES / "hf_run" / "trainer_state.json")
    assert not textlog.detect(FIXTURES / "metrics.csv") and not hf_trainer.detect(FIXTURES / "metrics.csv")
    assert not textlog.detect(FIXTURES / "custom.log")  # only with a user pattern
    assert not hf_trainer.detect(FIXTURES)


# ---------------------------------------------------------------------------------------------
# Built-in text dialects
# ---------------------------------------------------------------------------------------------

def test_mmdet_text_two_launches_val_and_rename():
    result = read_clean(textlog, FIXTURES / "mmdet_run.log")
    # The first launch has no metric line: it and the second banner share segment 0.
    (rec,) = result.records
    assert rec.name == "mmdet_run.log" and rec.experiment == "logs"
    assert pts(rec.metrics["train/loss"]) == [(50, 1.5276), (100, 1.2001), (150, 1.05)]
    assert pts(rec.metrics["val/bbox_mAP"]) == [(100, 0.123)]  # val at epoch * N
    assert "val/bbox_mAP_copypaste" not in rec.metrics and "train/eta" not in rec.metrics
    assert "val/bbox_AR_100" in rec.metrics
    assert json.loads(rec.tags[RENAMED_METRICS_TAG]) == {"val/bbox_AR@100": "val/bbox_AR_100"}
    assert any("renamed" in n for n in result.notes)
    assert rec.start_time == 1683021600100 and rec.end_time == 1683021750000


def test_mmdet_json_with_sibling_iters():
    (rec,) = read_clean(textlog, FIXTURES / "mmdet_run.log.json").records
    assert pts(rec.metrics["train/loss"]) == [(50, 1.52762), (100, 1.2001), (150, 1.05)]
    assert pts(rec.metrics["val/bbox_mAP"]) == [(100, 0.123)]
    assert rec.params == {"seed": "42", "exp_name": "faster_rcnn_demo.py"}
    assert rec.tags[DERIVED_TIMESTAMPS_TAG]


def test_mmdet_json_without_sibling_uses_fallback(tmp_path):
    path = tmp_path / "alone.log.json"
    path.write_bytes((FIXTURES / "mmdet_run.log.json").read_bytes())
    (rec,) = read_clean(textlog, path).records
    n = textlog.MMDET_FALLBACK_ITERS
    assert pts(rec.metrics["train/loss"])[2] == (n + 50, 1.05)


def test_fairseq_fixture():
    (rec,) = read_clean(textlog, FIXTURES / "fairseq_hydra.log").records
    assert pts(rec.metrics["train_inner/loss"]) == [(200, 9.276), (400, 6.961)]
    assert math.isnan(rec.metrics["train_inner/gnorm"].column("value")[1].as_py())
    assert pts(rec.metrics["valid/valid_loss"]) == [(479, 6.389)]
    assert "train_inner/epoch" not in rec.metrics
    assert rec.params["optimization.lr.0"] == "0.0005"


def test_fairseq_simple_format():
    """--log-format simple (fairseq >= 0.10, Python logging): num_updates is the step; keys as the
    json format names the same stats (print() lines prefixed with their logger: valid/valid_loss)."""
    path = FIXTURES / "fairseq_simple.log"
    assert textlog.sniff(path.read_bytes()) == "fairseq"
    (rec,) = read_clean(textlog, path).records
    assert pts(rec.metrics["train_inner/loss"]) == [(100, 9.817), (200, 8.912), (1200, 7.61)]
    assert rec.metrics["train_inner/loss"].column("timestamp").to_pylist()[0] == 1614679930000
    assert pts(rec.metrics["train_inner/num_updates"])[-1] == (1200, 1200.0)  # kept, as in json
    assert pts(rec.metrics["valid/valid_loss"]) == [(1124, 7.996)]
    assert pts(rec.metrics["valid/valid_ppl"]) == [(1124, 137.17)]
    assert pts(rec.metrics["train/train_loss"]) == [(1124, 9.016)]
    assert pts(rec.metrics["train/train_wall"]) == [(1124, 560.0)]
    assert not any("epoch" in k for k in rec.metrics)
    assert rec.start_time == 1614679872000 and rec.tags[textlog.FORMAT_TAG] == "fairseq"
    assert rec.tags[textlog.STEP_RULE_TAG] == textlog.STEP_RULES["fairseq"]


def test_fairseq_legacy_simple_stdout():
    """fairseq <= 0.9 printed the same lines to stdout with a leading `| `, no time, no logger; each
    `Namespace(...)` args dump starts a new run."""
    first, second = read_clean(textlog, FIXTURES / "fairseq_legacy_simple.log").records
    assert pts(first.metrics["train_inner/loss"]) == [(100, 12.917), (200, 11.5)]
    assert pts(first.metrics["train/train_loss"]) == [(1101, 10.203)]
    assert pts(first.metrics["valid/valid_loss"]) == [(1101, 8.996)]
    assert first.tags[DERIVED_TIMESTAMPS_TAG] and first.start_time is None
    assert pts(second.metrics["train_inner/loss"]) == [(100, 12.802), (200, 11.4)]
    assert second.name == "fairseq_legacy_simple.log #1"


def test_fairseq_simple_hydra_envelope_and_bad_fields(tmp_path):
    path = tmp_path / "hydra_train.log"
    path.write_text(
        "[2022-04-08 18:41:01,160][fairseq_cli.train][INFO] - Start iterating over samples\n"
        "[2022-04-08 18:48:05,372][train_inner][INFO] - epoch 001:    200 / 481 loss=9.276, "
        "num_updates=200, lr=3.125e-06\n"
        "[2022-04-08 18:49:05,372][train_inner][INFO] - epoch 001:    300 / 481 loss=9.1, "
        "nll_loss=8.x, num_updates=300\n"
        "[2022-04-08 18:58:04,035][valid][INFO] - epoch 001 | valid on 'valid' subset | loss 6.389 | "
        "accuracy | num_updates 479\n"
        "[2022-04-08 18:58:05,000][fairseq_cli.train][INFO] - epoch 1 done\n")
    result = textlog.read(path, SourceOptions())
    assert [(p.location, p.message) for p in result.problems] == [
        ("line 3", "fairseq train_inner record, field 2 ('nll_loss=8.x'): not a `key=value` / "
                   "`key value` pair with a number"),
        ("line 4", "fairseq valid record, field 2 ('accuracy'): not a `key=value` / `key value` pair "
                   "with a number")]
    (rec,) = result.records
    assert pts(rec.metrics["train_inner/loss"]) == [(200, 9.276), (300, 9.1)]
    assert pts(rec.metrics["valid/valid_loss"]) == [(479, 6.389)]


def test_keras_console_progress_and_phases():
    result = read_clean(textlog, FIXTURES / "keras_console.txt")
    first, second = result.records
    assert pts(first.metrics["loss"]) == [(1, 1.2), (2, 0.8), (3, 0.6)]  # the ETA state is progress
    assert pts(first.metrics["val_accuracy"]) == [(1, 0.65), (2, 0.7), (3, 0.69)]
    assert first.params == {"epochs": "3"}
    assert pts(second.metrics["accuracy"]) == [(1, 0.82), (2, 0.84)]
    assert second.name == "keras_console.txt #1" and second.origin.endswith("segment 1")


def test_llmc():
    (rec,) = read_clean(textlog, FIXTURES / "llmc.log").records
    assert pts(rec.metrics["train_loss"])[0] == (1, 11.010298)
    assert pts(rec.metrics["lr"])[-1] == (4, 2.4e-05)
    assert pts(rec.metrics["val_loss"]) == [(0, 11.007), (2, 10.25)]
    assert pts(rec.metrics["tok_per_s"])[0] == (1, 229.0)
    (main,) = read_clean(textlog, FIXTURES / "llmc_main.log").records
    assert pts(main.metrics["trl"]) == [(0, 11.0103), (1, 10.3855), (2, 9.87)]
    assert pts(main.metrics["tel"]) == [(0, 10.9921), (2, 9.9)]


def test_python_logging_nan_inf_restart_and_rename():
    result = read_clean(textlog, FIXTURES / "python_logging.log")
    first, second = result.records  # step 10 after step 30: a restarted run
    loss = pts(first.metrics["loss"])
    assert loss[:2] == [(10, 0.9), (20, 0.8)] and loss[2][0] == 30 and math.isnan(loss[2][1])
    assert pts(first.metrics["grad_norm"]) == [(30, math.inf)]
    assert first.tags[INFINITE_VALUES_TAG] == "grad_norm"
    assert pts(first.metrics["epoch"]) == [(10, 0.0), (20, 0.0), (30, 1.0)]  # epoch stays a metric
    assert pts(first.metrics["val/AR_100"]) == [(30, 0.55)]
    assert first.metrics["loss"].column("timestamp").to_pylist()[0] == 1614859201123
    assert first.start_time == 1614859200000  # the first line, even without metrics
    assert pts(second.metrics["loss"]) == [(10, 0.95)]
    assert DERIVED_STEPS_TAG not in first.tags


def test_logging_fields_around_the_level_are_not_metrics():
    """A format's source position (`trainer.py:123`) and thread (`MainThread:140234`) look like
    `key: number` pairs; they are the logger's, not the run's."""
    (rec,) = read_clean(textlog, FIXTURES / "logging_fields.log").records
    assert sorted(rec.metrics) == ["acc", "loss"]
    loss = pts(rec.metrics["loss"])
    assert [s for s, _ in loss] == [10, 20, 30, 40, 50] and math.isnan(loss[3][1])
    assert pts(rec.metrics["acc"]) == [(50, 0.25)]  # a level name inside the message cuts nothing


def test_logging_without_steps_derives_them():
    (rec,) = read_clean(textlog, FIXTURES / "no_steps.log").records
    assert pts(rec.metrics["acc"]) == [(0, 0.7), (1, 0.75), (2, 0.8)]
    assert rec.tags[DERIVED_STEPS_TAG] and rec.tags[DERIVED_TIMESTAMPS_TAG]
    assert rec.start_time is None and rec.end_time is None


# ---------------------------------------------------------------------------------------------
# User patterns
# ---------------------------------------------------------------------------------------------

def test_user_pattern():
    pattern = r"it (?P<step>\d+) \| L (?P<loss>\S+) \| A (?P<acc>[\d.]+)% \| at (?P<time>[\d.]+)"
    (rec,) = read_clean(textlog, FIXTURES / "custom.log", patterns=[pattern]).records
    loss = pts(rec.metrics["loss"])
    assert loss[:2] == [(100, 0.5), (200, 0.4)] and math.isnan(loss[2][1])
    assert rec.metrics["acc"].column("timestamp").to_pylist() == [1614859201500, 1614859261500, 1614859321500]
    assert rec.tags[textlog.FORMAT_TAG] == "pattern"


def test_user_pattern_without_step_derives():
    (rec,) = read_clean(textlog, FIXTURES / "custom.log", patterns=[r"L (?P<loss>[\d.]+)"]).records
    assert pts(rec.metrics["loss"]) == [(0, 0.5), (1, 0.4)]
    assert rec.tags[DERIVED_STEPS_TAG]


@pytest.mark.parametrize("pattern,why", [(r"it (?P<step>\d+", "does not compile"),
                                         (r"it (?P<step>\d+)", "no metric group")])
def test_bad_user_pattern(pattern, why):
    result = textlog.read(FIXTURES / "custom.log", SourceOptions(patterns=[pattern]))
    (problem,) = result.problems
    assert problem.location == f"pattern {pattern!r}" and why in problem.message
    assert result.records == []


# ---------------------------------------------------------------------------------------------
# Damaged and growing files
# ---------------------------------------------------------------------------------------------

LOG_LINE = "2021-03-04 12:00:0{i},000 - t - INFO - step={i} loss=0.{i}\n"


def test_partial_last_line_is_left_for_later(tmp_path):
    path = tmp_path / "growing.log"
    path.write_text(LOG_LINE.format(i=1) + LOG_LINE.format(i=2) + "2021-03-04 12:00:03,000 - t - INFO - step=3 lo")
    result = read_clean(textlog, path)
    (rec,) = result.records
    assert pts(rec.metrics["loss"]) == [(1, 0.1), (2, 0.2)]
    assert any("line 3 has no line terminator" in n for n in result.notes)
    with path.open("a") as f:
        f.write("ss=0.3\n")
    (again,) = read_clean(textlog, path).records
    assert pts(again.metrics["loss"])[-1] == (3, 0.3) and again.import_key == rec.import_key


def test_non_utf8_line_is_a_problem(tmp_path):
    path = tmp_path / "latin1.log"
    path.write_bytes(LOG_LINE.format(i=1).encode() + "2021-03-04 12:00:02,000 - t - INFO - café step=2\n".encode("latin-1")
                     + LOG_LINE.format(i=3).encode())
    result = textlog.read(path, SourceOptions())
    (problem,) = result.problems
    assert problem.file == str(path) and problem.location == "line 2" and "UTF-8" in problem.message
    assert pts(result.records[0].metrics["loss"]) == [(1, 0.1), (3, 0.3)]


def test_long_single_line_is_a_problem(tmp_path):
    path = tmp_path / "long.log"
    with path.open("wb") as f:
        f.write(LOG_LINE.format(i=1).encode())
        f.write(b"2021-03-04 12:00:02,000 - t - INFO - x=" + b"9" * (10 * 2**20) + b"\n")
        f.write(LOG_LINE.format(i=3).encode())
    result = textlog.read(path, SourceOptions())
    (problem,) = result.problems
    assert problem.location == "line 2" and "longer than" in problem.message
    assert pts(result.records[0].metrics["loss"]) == [(1, 0.1), (3, 0.3)]


def test_binary_garbage(tmp_path):
    path = tmp_path / "garbage.log"
    path.write_bytes(bytes(range(256)) * 64)
    assert not textlog.detect(path) and not hf_trainer.detect(path)
    result = textlog.read(path, SourceOptions())
    assert result.records == [] and result.problems and result.problems[0].file == str(path)
    # Binary after a good start: the line is named and reading stops there.
    mixed = tmp_path / "mixed.log"
    mixed.write_bytes(LOG_LINE.format(i=1).encode() + b"\x00\x01\x02garbage\n" + LOG_LINE.format(i=3).encode())
    result = textlog.read(mixed, SourceOptions())
    assert [p.location for p in result.problems] == ["line 2"] and "binary" in result.problems[0].message


def test_hf_truncated_and_bad_entries(tmp_path):
    state = (FIXTURES / "hf_run" / "trainer_state.json").read_text()
    path = tmp_path / "trainer_state.json"
    path.write_text(state[: len(state) // 2])
    (problem,) = hf_trainer.read(path, SourceOptions()).problems
    assert problem.file == str(path) and problem.location.startswith("line ")
    path.write_bytes(b"\xff\xfe garbage")
    assert hf_trainer.read(path, SourceOptions()).problems
    path.write_text('{"log_history": [{"loss": 1.0, "step": "x"}]}')
    (problem,) = hf_trainer.read(path, SourceOptions()).problems
    assert problem.location == "log_history[0].step"


# ---------------------------------------------------------------------------------------------
# Hugging Face fixtures
# ---------------------------------------------------------------------------------------------

def test_hf_eval_sets_resume_params():
    result = read_clean(hf_trainer, FIXTURES / "hf_run")
    (rec,) = result.records
    assert rec.name == "hf_run" and rec.experiment == "logs"
    assert pts(rec.metrics["eval_squad_f1"]) == [(0, 0.4), (2, 0.55), (4, 0.61)]
    assert pts(rec.metrics["eval_news_loss"]) == [(0, 2.9), (2, 2.1), (4, 1.9)]
    # A repeated step with other values (a resumed run) keeps both points, in file order.
    assert pts(rec.metrics["loss"]) == [(1, 2.2), (2, 1.9), (2, 1.8), (3, 1.5), (4, 1.3)]
    grad = pts(rec.metrics["grad_norm"])
    assert math.isnan(grad[1][1]) and grad[3] == (3, math.inf)
    assert rec.tags[INFINITE_VALUES_TAG] == "grad_norm"
    assert pts(rec.metrics["epoch"]) == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]
    assert pts(rec.metrics["train_runtime"]) == [(4, 12.5)]  # summary keys at the last step
    assert "eval_squad_report" not in rec.metrics
    assert any("eval_squad_report" in n for n in result.notes)
    assert any("training_args.bin" in n for n in result.notes)
    # Params as transformers' MLflowCallback logs them: {**config, **args} (the arguments win),
    # nothing flattened, str() of each value; the state's fields only stand in for missing arguments.
    assert rec.params["dropout"] == "0.3" and rec.params["learning_rate"] == "5e-05"
    assert any("dropout" in n and "arguments' value" in n for n in result.notes)
    assert rec.params["architectures"] == "['DistilBertForQuestionAnswering']"
    assert rec.params["id2label"] == "{0: 'LABEL_0'}"  # int keys, as PretrainedConfig holds them
    assert rec.params["num_train_epochs"] == "2.0" and "train_batch_size" not in rec.params
    assert rec.params["report_to"] == "[]"
    assert rec.tags["hf.best_metric"] == "0.61"


def test_hf_checkpoint_folder_takes_the_newest():
    result = read_clean(hf_trainer, FIXTURES / "hf_ckpt")
    (rec,) = result.records
    assert rec.origin.startswith(str(FIXTURES / "hf_ckpt" / "checkpoint-10"))
    assert rec.metrics["loss"].num_rows == 10
    assert rec.import_key == import_key("hf", str((FIXTURES / "hf_ckpt").resolve()))
    assert rec.name == "hf_ckpt"


# ---------------------------------------------------------------------------------------------
# The project's own samples
# ---------------------------------------------------------------------------------------------

def test_samples_read_cleanly():
    hf = SAMPLES / "hf"
    runs = [p for p in hf.iterdir() if hf_trainer.detect(p)]
    assert runs
    for run in runs:
        assert read_clean(hf_trainer, run).records
    texts = [p for p in (SAMPLES / "text").iterdir() if p.is_file()]
    assert texts
    for path in texts:
        assert textlog.detect(path) and read_clean(textlog, path).records
