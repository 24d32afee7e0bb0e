"""Reading and validating manifests: no server involved."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import importer
from importer.model import derived_key, flatten_params, param_string
from importer.sinks.mlflow import batch_body, metric_entries

from conftest import run_importer, write_json


def problems_of(tmp_path: Path, doc, name="m.json") -> list[str]:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(importer.ValidationError) as info:
        importer.validate([path])
    return [str(p) for p in info.value.problems]


def one_run(**run) -> dict:
    return {"format_version": 1, "experiment": "e", "runs": [{"id": "r", **run}]}


def test_sample_logs_are_valid():
    records = importer.validate([Path(__file__).parent.parent / "sample_logs"])
    assert {r.import_key for r in records} >= {"xgb-study-2023-03", "trial-2", "logreg-baseline-v1"}


def test_truncated_json_names_line_and_column(tmp_path):
    [p] = problems_of(tmp_path, '{"format_version": 1, "runs": [{"id": "a",\n "name": "x"')
    assert p.startswith(f"{tmp_path / 'm.json'}: line 2 column") and "invalid JSON" in p


def test_non_utf8_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"experiment": "\xff\xfe"}')
    with pytest.raises(importer.ValidationError, match="not UTF-8"):
        importer.validate([path])


def test_wrong_types_and_unknown_fields_are_all_listed(tmp_path):
    problems = problems_of(tmp_path, one_run(
        nmae="typo", status="DONE", start_time="yesterday",
        metrics={"loss": [{"step": "one", "value": 1.0}, {"step": 1, "value": True}]}))
    text = "\n".join(problems)
    assert "runs[0].nmae: unknown field 'nmae'" in text
    assert "runs[0].status:" in text
    assert "runs[0].start_time:" in text
    assert "runs[0].metrics.loss[0].step:" in text
    assert "runs[0].metrics.loss[1].value:" in text
    assert len(problems) == 5


def test_bad_metric_key_is_named_with_the_rule(tmp_path):
    [p] = problems_of(tmp_path, one_run(metrics={"val/AR@100": 0.5}))
    assert 'runs[0].metrics["val/AR@100"]' in p and "'@'" in p


def test_steps_beyond_int64(tmp_path):
    [p] = problems_of(tmp_path, one_run(metrics={"loss": {"step": [0, 2**63], "value": [1, 2]}}))
    assert "runs[0].metrics.loss.step[1]" in p and "64-bit" in p


def test_columns_of_different_length(tmp_path):
    [p] = problems_of(tmp_path, one_run(metrics={"loss": {"step": [0, 1], "value": [1]}}))
    assert "same length" in p


def test_duplicate_ids(tmp_path):
    doc = {"format_version": 1, "experiment": "e", "runs": [{"id": "a"}, {"id": "a"}]}
    [p] = problems_of(tmp_path, doc)
    assert "runs[1].id" in p and "already used at runs[0]" in p


def test_parent_cycle(tmp_path):
    doc = {"format_version": 1, "experiment": "e",
           "runs": [{"id": "a", "parent": "b"}, {"id": "b", "parent": "a"}]}
    assert any("parent cycle" in p for p in problems_of(tmp_path, doc))


def test_unknown_parent(tmp_path):
    [p] = problems_of(tmp_path, one_run(parent="nobody"))
    assert "runs[0].parent" in p and "neither" in p


def test_missing_artifact(tmp_path):
    [p] = problems_of(tmp_path, one_run(artifacts=[{"path": "nope.txt"}]))
    assert "runs[0].artifacts[0].path" in p and "does not exist" in p


@pytest.mark.parametrize("path", ["../outside.txt", "sub/../../outside.txt"])
def test_artifact_path_traversal(tmp_path, path):
    (tmp_path / "outside.txt").write_text("secret")
    inner = tmp_path / "project"
    (inner / "sub").mkdir(parents=True)
    [p] = problems_of(inner, one_run(artifacts=[{"path": path}]))
    assert "outside the manifest's folder" in p


def test_absolute_artifact_path(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("x")
    [p] = problems_of(tmp_path, one_run(artifacts=[{"path": str(target)}]))
    assert "absolute" in p


def test_symlink_out_of_the_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    inner = tmp_path / "project"
    (inner / "art").mkdir(parents=True)
    os.symlink(tmp_path / "secret.txt", inner / "art" / "link.txt")
    [p] = problems_of(inner, one_run(artifacts=[{"path": "art"}]))
    assert "links outside" in p


def test_artifact_dest_escape(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    [p] = problems_of(tmp_path, one_run(artifacts=[{"path": "f.txt", "dest": "../up"}]))
    assert "dest" in p


def test_too_long_values_that_the_server_would_cut(tmp_path):
    problems = problems_of(tmp_path, one_run(params={"p": "x" * 6001}, tags={"t": "y" * 8001}))
    assert len(problems) == 2 and all("allows" in p for p in problems)


def test_nul_characters_are_refused_before_anything_is_written(tmp_path):
    """A PostgreSQL-backed server refuses NUL in the params batch, after the run was created."""
    problems = problems_of(tmp_path, one_run(params={"p": "a\x00b"}, tags={"t": "\x00"}))
    assert len(problems) == 2 and all("NUL character" in p for p in problems)
    assert any("params.p" in p and "position 1" in p for p in problems)


def test_reserved_and_field_tags(tmp_path):
    problems = problems_of(tmp_path, one_run(tags={"mlflow.runName": "x", "importer.import_key": "y"}))
    assert any("`name` field" in p for p in problems) and any("reserved" in p for p in problems)


def test_single_run_document_needs_an_experiment(tmp_path):
    [p] = problems_of(tmp_path, {"name": "x"})
    assert "experiment" in p
    path = write_json(tmp_path / "ok.json", {"name": "x"})
    assert importer.validate([path], experiment="fallback")[0].experiment == "fallback"


def test_run_needs_id_or_name(tmp_path):
    [p] = problems_of(tmp_path, {"format_version": 1, "experiment": "e", "runs": [{}]})
    assert "needs an `id`" in p


def test_end_before_start(tmp_path):
    [p] = problems_of(tmp_path, one_run(start_time=2000, end_time=1000))
    assert "end_time is before start_time" in p


def test_record_fields(tmp_path):
    doc = {"format_version": 1, "experiment": "e", "runs": [{
        "id": "p", "name": "parent", "start_time": "2023-03-14T09:00:00+01:00",
        "params": {"model": {"depth": 3, "layers": [{"units": 8}], "drop": None, "on": True, "lr": 1e-5}},
        "metrics": {"acc": 0.5, "loss": {"step": [0, 1], "value": ["NaN", "-Infinity"]}},
        "runs": [{"name": "child", "metrics": {"m": [{"step": 3, "value": 1, "timestamp": 7}]}}]}]}
    parent, child = importer.validate([write_json(tmp_path / "m.json", doc)])
    assert parent.start_time == 1678780800000
    assert parent.params == {"model.depth": "3", "model.layers.0.units": "8", "model.drop": "null",
                             "model.on": "true", "model.lr": "1e-05"}
    loss = parent.metrics["loss"].column("value").to_pylist()
    assert math.isnan(loss[0]) and loss[1] == -math.inf
    assert parent.tags["importer.infinite_values"] == "loss"
    assert "importer.derived_timestamps" in parent.tags
    assert child.parent_key == "p" and child.experiment == "e"
    assert child.import_key == derived_key("e", "child", None)
    assert child.metrics["m"].to_pylist() == [{"step": 3, "timestamp": 7, "value": 1.0}]


def test_derived_key_is_stable_and_scoped():
    assert derived_key("e", "n", 5) == derived_key("e", "n", 5)
    assert derived_key("e", "n", 5) != derived_key("f", "n", 5)


def test_same_key_in_two_manifests(tmp_path):
    a = write_json(tmp_path / "a.json", one_run())
    b = write_json(tmp_path / "b.json", one_run())
    with pytest.raises(importer.ValidationError, match="also in"):
        importer.validate([a, b])


def test_flatten_conflict():
    with pytest.raises(ValueError, match="given twice"):
        flatten_params({"a.b": 1, "a": {"b": 2}})


def test_validate_cli(tmp_path):
    bad = write_json(tmp_path / "bad.json", one_run(metrics={"val/AR@100": 1}))
    res = run_importer("validate", str(bad))
    assert res.returncode == 2
    assert b"val/AR@100" in res.stderr and b"Traceback" not in res.stderr
    good = write_json(tmp_path / "good.json", one_run())
    res = run_importer("validate", "-", input=good.read_bytes())
    assert res.returncode == 0 and b"ok: 1 runs" in res.stdout


# -- properties ---------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                         st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), inner, max_size=3)),
    max_leaves=10)


@given(st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), json_values, max_size=4))
def test_flattened_params_hold_every_leaf(params):
    flat = flatten_params(params)
    for key, value in flat.items():
        node = params
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert value == param_string(node)


@given(st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(0, 2**62),
                          st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=50))
def test_metric_request_body_round_trips(points):
    import pyarrow as pa
    from importer.model import METRIC_SCHEMA
    steps, stamps, values = zip(*points)
    table = pa.table({"step": list(steps), "timestamp": list(stamps), "value": list(values)}, schema=METRIC_SCHEMA)
    body = json.loads(batch_body("r" * 32, [metric_entries("a b/c", table, 0)]))
    assert len(body["metrics"]) == len(points)
    for sent, (step, ts, value) in zip(body["metrics"], points):
        assert sent["key"] == "a b/c" and sent["step"] == step and sent["timestamp"] == ts
        if math.isnan(value):
            assert sent["value"] == "NaN"
        elif math.isinf(value):
            assert sent["value"] == ("Infinity" if value > 0 else "-Infinity")
        else:
            assert float(sent["value"]) == value


# -- the streamed reader (large files) agrees with the loaded one ----------------------------------

STREAM_DOCS = [
    {"format_version": 1, "experiment": "e", "runs": [{
        "id": "p", "name": "x y", "params": {"a": {"b": [1, 2.5, None]}},
        "metrics": {"loss": {"step": list(range(10)), "value": [0.5, "NaN", 1, "Infinity", -2.5, 3, 4, 5, 6, "-Infinity"],
                             "timestamp": [1000 + i if i % 2 else f"2021-01-01T00:00:0{i}+00:00" for i in range(10)]},
                    "val acc": [{"step": 1, "value": 0.25}], "one": 7},
        "runs": [{"id": "c", "metrics": {"m": {"step": [5, 6, 7], "value": [1, 2, 3]}}}]}]},
    {"experiment": "e", "id": "bad", "metrics": {"loss": {"step": [0, 1.5, True, 2**63], "value": ["x", 1, None, 2]}}},
    {"experiment": "e", "id": "len", "metrics": {"loss": {"step": [0, 1, 2], "value": [1, 2]}}},
]


@pytest.mark.parametrize("doc", STREAM_DOCS)
def test_streamed_reader_agrees(tmp_path, monkeypatch, doc):
    from importer.sources import jsondoc
    path = write_json(tmp_path / "m.json", doc)

    def read():
        try:
            return [(r.import_key, r.params, r.tags, {k: t.to_pylist() for k, t in r.metrics.items()}, r.parent_key)
                    for r in importer.validate([path])], []
        except importer.ValidationError as e:
            return [], [str(p) for p in e.problems]

    loaded = read()
    monkeypatch.setattr(jsondoc, "STREAM_ABOVE", 0)
    monkeypatch.setattr(jsondoc, "CHUNK", 3)
    streamed = read()
    assert json.dumps(streamed, default=str) == json.dumps(loaded, default=str)
    assert loaded[0] or loaded[1]


def test_streamed_syntax_error(tmp_path, monkeypatch):
    from importer.sources import jsondoc
    monkeypatch.setattr(jsondoc, "STREAM_ABOVE", 0)
    [p] = problems_of(tmp_path, '{"experiment": "e", "metrics": {"m": {"step": [1, 2')
    assert "invalid JSON" in p


def test_parent_in_another_experiment(tmp_path):
    doc = {"format_version": 1, "runs": [{"id": "p", "experiment": "a"},
                                         {"id": "c", "experiment": "b", "parent": "p"}]}
    [p] = problems_of(tmp_path, doc)
    assert "runs[1]" in p and "share one experiment" in p


def test_manifests_in_a_folder(tmp_path):
    """Manifests are recognised by their first key: one with a typo further in is read and its
    problem reported; JSON that is no manifest is listed as not recognised, not imported."""
    (tmp_path / "ok.json").write_text(json.dumps(one_run()))
    (tmp_path / "other.json").write_text(json.dumps({"dependencies": {}}))
    inputs = importer.read_inputs([tmp_path])
    assert [r.import_key for r in inputs.records] == ["r"]
    assert inputs.unrecognised == [str(tmp_path / "other.json")]
    (tmp_path / "typo.json").write_text(json.dumps({"experiment": "e", "id": "x", "nmae": "y"}))
    with pytest.raises(importer.ValidationError, match="unknown field 'nmae'"):
        importer.validate([tmp_path])
