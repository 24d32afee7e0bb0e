"""Issue 14: params of a log source written as that framework's MLflow integration writes them.

Fixtures (tests/fixtures/framework_params/) were written the way the frameworks write them:
hparams.yaml with `yaml.dump(hparams)` (Lightning's `save_hparams_to_yaml`,
lightning/pytorch/core/saving.py: sorted keys, tuples tagged `!!python/tuple`, objects tagged
`!!python/object:`), args.yaml with `yaml.safe_dump(vars(args), sort_keys=False)` (Ultralytics'
`yaml_save`, ultralytics/utils/__init__.py). The hparams were

    {"lr": 1e-05, "use_bias": True, "dropout": None, "betas": (0.9, 0.99), "milestones": [2],
     "sched": {"gamma": 0.5, "name": "step"}, "layers": [{"units": 8}], "empty": {},
     "opt": argparse.Namespace(momentum=0.9, nesterov=False), "warm": Sched(0.1, "linear") (a
     dataclass), "single": (2,), "big": 1e20, "a/b": 1, "a": {"b": 2}, "name": "yes", "seed": 42}
"""

from __future__ import annotations

from pathlib import Path

from importer.sources import lightning, yolo
from importer.sources.base import SourceOptions

FIXTURES = Path(__file__).parent / "fixtures" / "framework_params"


def test_lightning_params_as_mlflow_logger_writes_them():
    result = lightning.read(FIXTURES / "lightning_logs" / "version_0", SourceOptions())
    assert result.problems == []
    p = result.records[0].params
    # Expected texts: lightning/pytorch/loggers/mlflow.py MLFlowLogger.log_hyperparams:
    # `_flatten_dict(_convert_params(params))` (lightning/fabric/utilities/logger.py, delimiter "/",
    # dataclasses via asdict, Namespaces via vars, an empty mapping gives no key) then
    # `Param(key=k, value=str(v)[:limit])`: so Python's str() of each value.
    assert p == {
        "lr": "1e-05",  # str(1e-05)
        "use_bias": "True", "dropout": "None",  # str(True), str(None); not JSON's true/null
        "betas": "(0.9, 0.99)", "single": "(2,)",  # tuples are not flattened: str(tuple)
        "milestones": "[2]", "layers": "[{'units': 8}]",  # lists neither: str(list)
        "sched/gamma": "0.5", "sched/name": "step",  # nested dicts: "/" separator
        "opt/momentum": "0.9", "opt/nesterov": "False",  # argparse.Namespace: vars() flattened
        "warm/gamma": "0.1", "warm/name": "linear",  # dataclass: asdict() flattened
        "big": "1e+20", "name": "yes", "seed": "42",
        # `a/b` and `a: {b}` flatten to one key; _flatten_dict keeps the later one. yaml.dump sorted
        # the keys, so the file's later one (`a/b: 1`) is kept and a note says so.
        "a/b": "1",
    }
    assert "empty" not in p  # _flatten_dict of {} adds nothing
    assert any("given twice" in n and "a/b" in n for n in result.notes)


def test_lightning_long_value_cut_like_mlflow_logger(tmp_path):
    """MLFlowLogger.log_hyperparams (lightning/pytorch/loggers/mlflow.py) logs
    `Param(key=k, value=str(v)[:250])`: the first 250 characters are kept, with a note, not
    refused (the base rule refused values over 6000 and kept shorter ones whole)."""
    v = tmp_path / "lightning_logs" / "version_0"
    v.mkdir(parents=True)
    (v / "hparams.yaml").write_text(f"notes: {'x' * 7000}\nids: [{', '.join(['1'] * 300)}]\n"
                                    f"ok: {'y' * 250}\n")
    result = lightning.read(v, SourceOptions())
    assert result.problems == []
    p = result.records[0].params
    assert p["notes"] == "x" * 250
    assert p["ids"] == ("[" + ", ".join(["1"] * 300) + "]")[:250]
    assert p["ok"] == "y" * 250
    assert any("first 250 characters" in n and "notes, ids" in n for n in result.notes)


def test_lightning_yaml_tags_never_executed(tmp_path):
    """Python tags are data (nothing runs); numpy scalars and pathlib paths give the text str()
    gave live; other objects keep their tag and content as text."""
    v = tmp_path / "lightning_logs" / "version_0"
    v.mkdir(parents=True)
    (v / "hparams.yaml").write_text(
        "cmd: !!python/object/apply:os.system ['echo hi']\n"
        "root: !!python/object/apply:pathlib.PosixPath ['/', data, x]\n"
        "n: !!python/object/apply:numpy.core.multiarray.scalar\n"
        "- !!python/object/apply:numpy.dtype\n  args: [i8, false, true]\n"
        "  state: !!python/tuple [3, <, null, null, null, -1, -1, 0]\n"
        "- !!binary |\n  GAAAAAAAAAA=\n")
    p = lightning.read(v, SourceOptions()).records[0].params
    assert p["cmd"] == "!!python/object/apply:os.system ['echo hi']"
    assert p["root"] == "/data/x" and p["n"] == "24"


def test_ultralytics_args_as_mlflow_callback_writes_them():
    result = yolo.read(FIXTURES / "runs" / "detect" / "train", SourceOptions())
    assert result.problems == []
    p = result.records[0].params
    # Expected texts: ultralytics/utils/callbacks/mlflow.py on_pretrain_routine_end:
    # `mlflow.log_params(dict(trainer.args))`; mlflow.log_params sends `str(value)` per key,
    # top-level keys only (nothing flattened).
    assert p == {
        "task": "detect", "mode": "train", "model": "yolov8n.pt", "epochs": "3", "batch": "16",
        "imgsz": "[640, 480]", "classes": "[0, 2]",  # str(list), not imgsz.0 / imgsz.1
        "save": "True", "device": "None",  # not true / null
        "lr0": "0.01", "lrf": "1e-05", "weight_decay": "0.0005", "warmup_epochs": "3.0",
        "optimizer": "auto", "name": "train", "save_dir": "runs/detect/train",
    }


def test_transformers_params_as_mlflow_callback_writes_them(tmp_path):
    """Expected texts: transformers/integrations/integration_utils.py MLflowCallback.setup logs
    `{**model.config.to_dict(), **args.to_dict()}` unflattened through mlflow.log_params, which
    sends str(value); values over MLflow's MAX_PARAM_VAL_LENGTH are left out."""
    import json

    from importer.sources import hf_trainer

    run = tmp_path / "out"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(
        {"global_step": 2, "log_history": [{"loss": 1.0, "step": 1}], "train_batch_size": 8}))
    (run / "training_args.json").write_text(json.dumps({  # TrainingArguments.to_dict(), saved as JSON
        "learning_rate": 5e-05, "use_cpu": False, "hub_token": "<HUB_TOKEN>", "seed": 42,
        "report_to": ["mlflow"], "dropout": 0.3, "warmup_ratio": 0.0, "fsdp_config": {"min_num_params": 0},
        "run_name": None, "long": "x" * 6001}))
    (run / "config.json").write_text(json.dumps({  # PretrainedConfig.to_json_file (use_diff)
        "architectures": ["BertForSequenceClassification"], "use_cache": False,
        "classifier_dropout": None, "dropout": 0.1, "id2label": {"0": "NEG", "1": "POS"},
        "label2id": {"NEG": 0, "POS": 1}}))
    result = hf_trainer.read(run, SourceOptions())
    assert result.problems == []
    assert result.records[0].params == {
        "architectures": "['BertForSequenceClassification']", "use_cache": "False",
        "classifier_dropout": "None", "id2label": "{0: 'NEG', 1: 'POS'}",
        "label2id": "{'NEG': 0, 'POS': 1}",
        "dropout": "0.3",  # the arguments' value: {**config, **args}
        "learning_rate": "5e-05", "use_cpu": "False", "hub_token": "<HUB_TOKEN>", "seed": "42",
        "report_to": "['mlflow']", "warmup_ratio": "0.0", "fsdp_config": "{'min_num_params': 0}",
        "run_name": "None",
        # "long" is left out (over 6000 characters), and the state's train_batch_size does not
        # stand in: the arguments are there.
    }
    assert any("long" in n and "left out" in n for n in result.notes)
    assert any("dropout" in n for n in result.notes)
