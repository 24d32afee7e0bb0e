"""Parse-only tests of the table-shaped sources (keras, lightning, yolo, csv). No server.

Corpus samples are read in place from ../shared/corpus (never copied); their expected.json holds
facts computed independently. Where our mapping differs from the raw facts the test says the rule.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from importer.model import DERIVED_TIMESTAMPS_TAG, METRIC_SCHEMA, flatten_params
from importer.sources import columns, delimited, keras, lightning, table, yolo
from importer.sources.base import (DERIVED_STEPS_TAG, RENAMED_METRICS_TAG, SourceOptions,
                                   safe_metric_key)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MODULES = {"keras": keras, "lightning": lightning, "yolo": yolo}
SAMPLES = [(fmt, d) for fmt in MODULES for d in sorted((CORPUS / fmt).glob("*"))
           if (CORPUS / fmt).is_dir() and d.is_dir()]


def _need_corpus():
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (tests read it in place)")


def _expected(sample: Path) -> dict:
    return json.loads((sample / "expected.json").read_text())


def _close(a, b) -> bool:
    if isinstance(b, str):
        b = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[b]
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-15)


def _check_metrics(rec, expected_metrics: dict, rename=lambda k: k, extra=()):
    """Keys, points per key, first/last [step, value] against expected.json facts; `extra` are
    keys our mapping adds."""
    assert set(rec.metrics) == {rename(k) for k in expected_metrics} | set(extra)
    for key, facts in expected_metrics.items():
        t = rec.metrics[rename(key)]
        assert t.schema == METRIC_SCHEMA
        assert t.num_rows == facts["points"], key
        steps, values = t.column("step").to_pylist(), t.column("value").to_pylist()
        assert steps[0] == facts["first"][0] and _close(values[0], facts["first"][1]), key
        assert steps[-1] == facts["last"][0] and _close(values[-1], facts["last"][1]), key


def _flat_expected(params: dict) -> dict:
    """expected.json summarises big nested dicts as {"__type__": ...} and tagged YAML nodes as
    {"__tag__": full tag URI} (our rule writes the `!!` form and keeps the node's content, checked
    separately): compare the rest."""
    return flatten_params({k: v for k, v in params.items()
                           if not (isinstance(v, dict) and ("__type__" in v or "__tag__" in v))})


def _live_expected(params: dict, sep: str = "/") -> dict:
    """Issue 14: the texts the framework's MLflow integration writes (importer/sources/params.py):
    Lightning's _flatten_dict with "/" then str(); with sep=None, Ultralytics' str() per top-level
    key. Summarised entries skipped as in _flat_expected."""
    kept = {k: v for k, v in params.items()
            if not (isinstance(v, dict) and ("__type__" in v or "__tag__" in v))}
    if sep is None:
        return {k: str(v) for k, v in kept.items()}

    def walk(d, parent):
        for k, v in d.items():
            key = f"{parent}{sep}{k}" if parent else str(k)
            yield from walk(v, key) if isinstance(v, dict) else [(key, str(v))]
    return dict(walk(kept, ""))


def _subset(params: dict, expected: dict):
    for k, v in expected.items():
        assert params.get(k) == v, k


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def test_corpus_present_or_skip():
    _need_corpus()
    assert SAMPLES


@pytest.mark.parametrize("sample", [d for f, d in SAMPLES if f == "keras"], ids=lambda d: d.name)
def test_keras_corpus(sample):
    _need_corpus()
    for name, facts in _expected(sample)["files"].items():
        file = sample / name
        assert keras.detect(file)
        result = keras.read(file, SourceOptions())
        assert result.problems == []
        restarts = facts.get("step_restarts", 0)
        # Rule: append=True restarts (epoch not increasing) become runs segment-1..segment-k.
        assert len(result.records) == restarts + 1
        assert [r.origin.rsplit(": ", 1)[1] for r in result.records] == \
            [f"segment-{k}" for k in range(1, restarts + 2)]
        assert len({r.import_key for r in result.records}) == len(result.records)
        for rec in result.records:
            assert rec.tags[DERIVED_TIMESTAMPS_TAG]
            assert set(rec.metrics) == set(facts["metric_keys"])
        # Facts of the whole file: first point in segment 1, last in the last segment, total count.
        for key, m in facts["metrics"].items():
            first, last = result.records[0].metrics[key], result.records[-1].metrics[key]
            assert sum(r.metrics[key].num_rows for r in result.records) == m["points"]
            assert [first["step"][0].as_py(), first["value"][0].as_py()] == m["first"]
            assert [last["step"][-1].as_py(), last["value"][-1].as_py()] == m["last"]  # exact
        if restarts == 0:
            _check_metrics(result.records[0], facts["metrics"])


def test_keras_restart_segments_detail():
    _need_corpus()
    file = CORPUS / "keras/01-braintumor-appended-restarts/training_log.csv"
    recs = keras.read(file, SourceOptions()).records
    assert [r.metrics["loss"].num_rows for r in recs] == [5, 4, 10, 5]
    assert [r.name for r in recs] == ["training_log", "training_log (run 2)", "training_log (run 3)",
                                      "training_log (run 4)"]
    assert recs[0].experiment == "01-braintumor-appended-restarts"


def test_keras_17_digit_floats_round_trip():
    _need_corpus()
    file = CORPUS / "keras/03-keras2-2017-crlf-acc-multifile/intro_training.log"
    rec = keras.read(file, SourceOptions()).records[0]
    assert rec.metrics["acc"]["value"][0].as_py() == float("0.0048420820953009791")


@pytest.mark.parametrize("sample", [d for f, d in SAMPLES if f == "lightning"], ids=lambda d: d.name)
def test_lightning_corpus(sample):
    _need_corpus()
    exp = _expected(sample)
    assert lightning.detect(sample)
    result = _loaded(lightning.read(sample, SourceOptions()))
    assert result.problems == []
    by_name = {r.name: r for r in result.records}
    assert set(by_name) == {Path(v).name for v in exp["versions"]}
    for version, facts in exp["versions"].items():
        rec = by_name[Path(version).name]
        assert lightning.detect(sample / version)
        m = facts["metrics.csv"]
        # Rule: with a `step` column, `epoch` is a metric (expected.json lists it); without one,
        # `epoch` is the step and not a metric (expected.json: metric_keys [] for test-tube).
        _check_metrics(rec, m["metrics"])
        if "hparams.yaml" in facts:
            _subset(rec.params, _live_expected(facts["hparams.yaml"]["hparams"]))
            # Rule: a `!!python/object` is its state, flattened as _flatten_dict flattens a
            # dataclass; nothing is executed.
            assert rec.params["output_transformer/method"] == "standard"
            assert "categorical_groups" not in rec.params  # {} gives no key (_flatten_dict)
        if "meta_tags.csv" in facts:
            _subset(rec.params, facts["meta_tags.csv"])
            assert rec.params["meta.experiment.version"] == str(facts["meta.experiment"]["version"])


def test_lightning_single_newline_metrics_is_a_run_without_metrics():
    _need_corpus()
    folder = CORPUS / "lightning/01-dsanet-testtube-legacy/lightning_logs/version_0"
    result = _loaded(lightning.read(folder, SourceOptions()))
    assert result.problems == [] and len(result.records) == 1
    assert result.records[0].metrics == {} and result.records[0].params["n_head"] == "8"


_TXT_NAMES = dict(zip(
    ["gpu_mem", "train/box", "train/obj", "train/cls", "train/total", "targets", "img_size", "P", "R",
     "mAP@.5", "mAP@.5:.95", "val/box", "val/obj", "val/cls"], yolo.TXT_COLUMNS[1:]))


@pytest.mark.parametrize("sample", [d for f, d in SAMPLES if f == "yolo"], ids=lambda d: d.name)
def test_yolo_corpus(sample):
    _need_corpus()
    exp = _expected(sample)
    assert yolo.detect(sample)
    result = yolo.read(sample, SourceOptions())
    assert result.problems == []
    by_name = {r.name: r for r in result.records}
    assert set(by_name) == {Path(v).name for v in exp["runs"]}
    for run, facts in exp["runs"].items():
        rec = by_name[Path(run).name]
        if "results.csv" in facts:
            assert yolo.detect(sample / run / "results.csv")
            # Rule: keys the server rejects are mapped with safe_metric_key and tagged.
            _check_metrics(rec, facts["results.csv"]["metrics"], safe_metric_key)
            renamed = {k: safe_metric_key(k) for k in facts["results.csv"]["metric_keys"]
                       if safe_metric_key(k) != k}
            if renamed:
                assert json.loads(rec.tags[RENAMED_METRICS_TAG]) == renamed
                assert any("renamed" in n for n in result.notes)
        else:
            # Rule: results.txt columns get YOLOv5-v6 names (module docstring); gpu_mem ('12.8G',
            # not numeric in expected.json) is kept as metric train/gpu_mem in GB.
            _check_metrics(rec, facts["results.txt"]["metrics"], lambda k: _TXT_NAMES[k],
                           extra=["train/gpu_mem"])
            assert rec.metrics["train/gpu_mem"]["value"][0].as_py() == 12.8
        for yaml_name in ("args.yaml", "opt.yaml"):
            if yaml_name in facts:
                _subset(rec.params, _live_expected(facts[yaml_name]["params"], None)
                        if yaml_name == "args.yaml" else _flat_expected(facts[yaml_name]["params"]))


def test_yolo_windows_paths_kept():
    _need_corpus()
    rec = yolo.read(CORPUS / "yolo/01-yolov8-padded-header", SourceOptions()).records[0]
    assert rec.params["data"] == "C:\\Users\\Adrian\\yolo-test-env-1\\dataset\\data.yaml"
    assert rec.experiment == "detect" and rec.name == "train"


def test_no_cross_detection():
    _need_corpus()
    all_mods = {**MODULES, "csv": table}
    for fmt, sample in SAMPLES:
        for path in [sample, *sample.rglob("*")]:
            for other, mod in all_mods.items():
                if other != fmt:
                    assert not mod.detect(path), (other, path)
    # Nor do they claim other formats' corpus samples (TensorBoard Lightning folders, mlruns ...).
    for folder in CORPUS.iterdir():
        if folder.is_dir() and folder.name not in MODULES:
            for path in folder.rglob("*"):
                for mod in all_mods.values():
                    assert not mod.detect(path), (mod.NAME, path)


# ---------------------------------------------------------------------------------------------
# Own fixtures
# ---------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_cr_cr_lf_and_partial_last_line(tmp_path):
    f = _write(tmp_path, "run/train.log",
               b"epoch,loss,val_loss\r\r\n0,1.5,1.6\r\r\n1,1.2,1.3\r\r\n2,0.9")
    assert keras.detect(f)
    result = keras.read(f, SourceOptions())
    assert result.problems == []
    rec = result.records[0]
    assert rec.metrics["loss"]["step"].to_pylist() == [0, 1]  # `2,0.9` is still being written
    assert rec.experiment == "run"


def test_empty_cells_and_na_are_no_points(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss,val_loss\n0,1.0,\n1,0.9,NA\n2,0.8,0.7\n")
    rec = keras.read(f, SourceOptions()).records[0]
    assert rec.metrics["val_loss"].to_pylist() == [{"step": 2, "timestamp": None, "value": 0.7}]
    assert rec.metrics["loss"].num_rows == 3


def test_nan_and_inf_strings(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss\n0,nan\n1,inf\n2,-inf\n3,NaN\n4,Infinity\n")
    rec = keras.read(f, SourceOptions()).records[0]
    v = rec.metrics["loss"]["value"].to_pylist()
    assert math.isnan(v[0]) and v[1] == math.inf and v[2] == -math.inf and math.isnan(v[3])
    assert v[4] == math.inf
    assert rec.tags["importer.infinite_values"] == "loss"


def test_duplicate_header_columns_are_a_problem(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss,loss\n0,1,2\n")
    result = keras.read(f, SourceOptions())
    assert result.records == []
    assert len(result.problems) == 1 and "'loss'" in result.problems[0].message
    assert result.problems[0].location == "line 1"


def test_non_utf8_cell_is_a_problem_with_line_and_column(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss\r\n0,1.0\r\n1,0.5\xff\r\n")
    result = keras.read(f, SourceOptions())
    assert result.records == []
    (p,) = result.problems
    assert p.file == str(f) and p.location == "line 3 column 2 ('loss')" and "UTF-8" in p.message


def test_garbage_and_truncated_rows_are_problems(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss,acc\n0,1.0,0.1\n\n1,abc,0.2\n2,0.5\n3,0.4,0.3\n")
    result = keras.read(f, SourceOptions())
    where = {p.location: p.message for p in result.problems}
    assert where["line 5"].startswith("the row has 2 cells")
    assert "'abc' is not a number" in where["line 4 column 2 ('loss')"]


def test_header_only_and_empty_files(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss\n")
    result = keras.read(f, SourceOptions())
    assert result.problems == [] and len(result.records) == 1 and result.records[0].metrics == {}
    g = _write(tmp_path, "v/lightning_logs/version_0/metrics.csv", b"")
    result = _loaded(lightning.read(g.parent, SourceOptions()))
    assert result.problems == [] and result.records[0].metrics == {}


def test_keras_repeated_header_starts_a_segment(tmp_path):
    f = _write(tmp_path, "log.csv", b"epoch,loss\n0,1\n1,0.5\nepoch,loss\n2,0.4\n")
    recs = keras.read(f, SourceOptions()).records
    assert [r.metrics["loss"].num_rows for r in recs] == [2, 1]


def test_a_metrics_csv_is_lightnings_exactly_where_lightning_reads_it(tmp_path):
    """One rule (lightning.is_metrics_file) for Keras and Lightning: a metrics.csv in a version_N
    folder is Lightning's (test-tube's header starts with `epoch` and has no `step`), whatever
    else is beside it; elsewhere a Keras-shaped metrics.csv is Keras's, so no file is refused by
    both and read as neither."""
    header = b"epoch,loss\n0,0.5\n1,0.4\n"
    ours = _write(tmp_path, "logs/version_0/metrics.csv", header)
    assert lightning.detect(ours) and not keras.detect(ours) and not table.detect(ours)
    for folder in ("version_x", "run"):  # hparams.yaml beside it does not make it Lightning's
        other = _write(tmp_path, f"logs/{folder}/metrics.csv", header)
        _write(tmp_path, f"logs/{folder}/hparams.yaml", b"lr: 0.1\n")
        assert keras.detect(other) and not lightning.detect(other) and not table.detect(other)


def test_lightning_sparse_rows_and_yaml_tags(tmp_path):
    v = tmp_path / "my_model" / "version_3"
    _write(v, "metrics.csv", b"epoch,step,train_loss,val_loss\n0,9,0.5,\n0,9,,0.6\n1,19,0.4,\n")
    _write(v, "hparams.yaml", b"lr: 0.1\nobj: !!python/object/apply:os.system ['echo hi']\n"
                              b"when: 2020-01-01\nblob: !!binary aGk=\nshape: !!python/tuple [1, 2]\n"
                              b"base: &a {x: 1}\nother: *a\nbad key?: 1\n")
    assert lightning.detect(tmp_path) and lightning.detect(v) and lightning.detect(v / "metrics.csv")
    result = _loaded(lightning.read(tmp_path, SourceOptions()))
    assert result.problems == []
    rec = result.records[0]
    assert rec.name == "version_3" and rec.experiment == "my_model"
    assert rec.metrics["val_loss"].to_pylist() == [{"step": 9, "timestamp": None, "value": 0.6}]
    assert rec.metrics["epoch"]["value"].to_pylist() == [0.0, 0.0, 1.0]
    p = rec.params
    # Issue 14: str() of what yaml.dump wrote, as MLFlowLogger logs it (sources/params.py)
    assert p["obj"] == "!!python/object/apply:os.system ['echo hi']"
    assert p["when"] == "2020-01-01" and p["blob"] == "b'hi'" and p["shape"] == "(1, 2)"
    assert p["other/x"] == "1" and p["bad key_"] == "1"
    assert any("param keys" in n for n in result.notes)


def test_yolo_results_txt_partial_and_bad_lines(tmp_path):
    row = "      {e}/9     1.2G    0.05    0.02       0    0.07      12     640     0.5     0.4     0.3     0.1    0.04    0.01       0\n"
    f = _write(tmp_path, "runs/train/exp/results.txt",
               (row.format(e=0) + row.format(e=1) + row.format(e=2)[:40]).encode())
    assert yolo.detect(f) and not keras.detect(f) and not table.detect(f)
    rec = yolo.read(f, SourceOptions()).records[0]
    assert rec.metrics["metrics/mAP_0.5"]["step"].to_pylist() == [0, 1]
    g = _write(tmp_path, "runs/train/exp2/results.txt", (row.format(e=0) + "  1/9 broken\n").encode())
    (p,) = yolo.read(g, SourceOptions()).problems
    assert p.location == "line 2" and "fields" in p.message


def _loaded(result):
    """A source's result with its streamed runs' points loaded (`rec.load`, as the sink does to
    compare with the server; a run with problems is never written, so never loaded)."""
    for rec in result.records:
        if rec.load is not None and not result.problems:
            asyncio.run(rec.load())
    return result


def _read_table(path, options):
    return _loaded(table.read(path, options))


def _csv_options(**kw):
    return SourceOptions(experiment="exp", **kw)


def test_generic_csv_step_time_prefix(tmp_path):
    f = _write(tmp_path, "m.csv", b"it,wall,loss,val/AR@100\n10,1718000000.5,1.0,\n20,1718000001,0.5,0.3\n")
    assert table.detect(f)
    result = _read_table(f, _csv_options(step_column="it", time_column="wall", key_prefix="p/"))
    assert result.problems == []
    rec = result.records[0]
    assert rec.experiment == "exp" and rec.name == "m"
    assert rec.metrics["p/loss"].to_pylist() == [
        {"step": 10, "timestamp": 1718000000500, "value": 1.0},
        {"step": 20, "timestamp": 1718000001000, "value": 0.5}]
    assert json.loads(rec.tags[RENAMED_METRICS_TAG]) == {"p/val/AR@100": "p/val/AR_100"}
    assert DERIVED_TIMESTAMPS_TAG not in rec.tags and DERIVED_STEPS_TAG not in rec.tags


def test_generic_csv_iso_times_and_derived_steps(tmp_path):
    f = _write(tmp_path, "m.csv", b"time,loss\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:01.5+00:00,2\n")
    rec = _read_table(f, _csv_options(time_column="time")).records[0]
    assert rec.metrics["loss"]["step"].to_pylist() == [0, 1]
    assert rec.metrics["loss"]["timestamp"].to_pylist() == [1704067200000, 1704067201500]
    assert rec.tags[DERIVED_STEPS_TAG]


def test_tsv(tmp_path):
    f = _write(tmp_path, "m.tsv", b"step\tloss\tacc\n0\t1.0\t\n1\t0.5\t0.9\n")
    rec = _read_table(f, _csv_options(step_column="step")).records[0]
    assert rec.metrics["acc"].num_rows == 1 and rec.metrics["loss"].num_rows == 2
    assert rec.tags[DERIVED_TIMESTAMPS_TAG]


def test_json_lines(tmp_path):
    f = _write(tmp_path, "m.jsonl", b'{"step": 0, "loss": 1.0, "val": {"acc": "nan"}}\n'
                                    b'{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    rec = _read_table(f, _csv_options(step_column="step")).records[0]
    assert rec.metrics["loss"]["step"].to_pylist() == [0, 1]
    assert math.isnan(rec.metrics["val.acc"]["value"][0].as_py())


def test_parquet(tmp_path):
    f = tmp_path / "m.parquet"
    pq.write_table(pa.table({"step": [0, 5, 10], "loss": [1.0, None, 0.25], "tag": ["a", "b", "c"]}), f)
    assert table.detect(f)
    result = _read_table(f, _csv_options(step_column="step"))
    rec = result.records[0]
    assert rec.metrics["loss"].to_pylist() == [{"step": 0, "timestamp": None, "value": 1.0},
                                               {"step": 10, "timestamp": None, "value": 0.25}]
    assert "tag" not in rec.metrics and any("text columns" in n for n in result.notes)


def test_generic_csv_missing_step_column_is_a_problem(tmp_path):
    f = _write(tmp_path, "m.csv", b"a,b\n1,2\n")
    (p,) = _read_table(f, _csv_options(step_column="step")).problems
    assert "step" in p.message


def test_sample_logs_read_cleanly():
    root = Path(__file__).resolve().parents[1] / "sample_logs"
    cases = [(keras, root / "keras"), (lightning, root / "lightning"), (yolo, root / "yolo"),
             (table, root / "csv" / "metrics.csv")]
    for mod, path in cases:
        assert mod.detect(path), path
        opts = SourceOptions(step_column="step", time_column="time") if mod is table else SourceOptions()
        result = _loaded(mod.read(path, opts))
        assert result.problems == [] and result.records and result.records[0].metrics, path


# ---------------------------------------------------------------------------------------------
# The streaming CSV reader: blocks, exact locations, what is held in memory
# ---------------------------------------------------------------------------------------------


def test_csv_blocks_keep_exact_lines_and_rules(tmp_path, monkeypatch):
    """Many small blocks: problems in late blocks still name the physical line and column; a
    repeated header, blank lines and padded / NA cells are handled in whichever block they fall."""
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 10)
    lines = ["step,loss,acc"]
    for i in range(3000):
        if i == 1000:
            lines.append("")  # blank line: not a row, but counted in line numbers
        if i == 1500:
            lines.append("step,loss,acc")  # a second header appended
        loss = {700: "  NA ", 900: '""', 2500: "nan(1)", 2600: "abc"}.get(i, f"  {i / 10} ")
        lines.append(f"{i},{loss},{'' if i % 2 else i}")
    lines.insert(2201, "7,8")  # a row with too few cells
    f = _write(tmp_path, "m.csv", ("\n".join(lines) + "\n").encode())
    result = _read_table(f, _csv_options(step_column="step"))
    where = {p.location: p.message for p in result.problems}
    # line = 1 (header) + row index + 1, +1 after the blank line, +1 after the second header,
    # +1 after the short row
    assert where == {
        "line 2202": "the row has 2 cells; the header has 3",
        f"line {2500 + 5} column 2 ('loss')": "the cell 'nan(1)' is not a number",
    }
    assert result.records  # the run is read; the problems stop an import


def test_csv_blocks_values_and_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 10)
    rows = [f"{i * 10},{'' if i == 3 else i / 4},{' NA ' if i % 3 else 1e300}\n" for i in range(2000)]
    f = _write(tmp_path, "m.csv", b"it,loss,big\n" + "".join(rows).encode() + b"it,loss,big\n" + rows[0].encode())
    result = _read_table(f, _csv_options(step_column="it"))
    assert result.problems == []
    loss = result.records[0].metrics["loss"]
    assert loss.num_rows == 2000  # 2000 rows + 1 after the repeated header, minus the empty cell
    assert loss["step"].to_pylist()[:4] == [0, 10, 20, 40] and loss["value"][3].as_py() == 1.0
    assert result.records[0].metrics["big"].num_rows == 668
    assert any("repeated header" in n for n in result.notes)


def test_csv_dense_columns_share_arrays(tmp_path):
    """Columns without empty cells keep the steps array and one null-timestamp array: no copy per key."""
    f = _write(tmp_path, "m.csv", b"step,a,b,c\n" + b"".join(b"%d,%d,1.5,%s\n" % (i, i, b"" if i == 2 else b"2")
                                                             for i in range(10)))
    data = delimited.read_delimited(f, [], keep_text=["step"])
    assert data.text["step"].type == pa.int64()  # integers are kept as int64, not as text
    rec = _read_table(f, _csv_options(step_column="step")).records[0]
    a, b, c = (rec.metrics[k] for k in "abc")

    def step_buf(t):
        return t["step"].chunk(0).buffers()[1].address

    def ts_buf(t):
        return t["timestamp"].chunk(0).buffers()[1].address

    assert step_buf(a) == step_buf(b) and ts_buf(a) == ts_buf(b) == ts_buf(c)
    assert c.num_rows == 9 and c["timestamp"].null_count == 9 and rec.tags[DERIVED_TIMESTAMPS_TAG]


def test_metric_tables_are_chunked_alike():
    """Every column of a table has the values' chunks (so its batches are its chunks and nothing is
    hashed twice); steps in another layout are cut once per run; sparse columns keep the layout."""
    from importer.sources.base import SourceResult
    builder = columns.MetricBuilder("f", SourceResult())
    steps = pa.array(range(10), pa.int64())  # one chunk, as row_steps gives
    dense = pa.chunked_array([[1.0] * 4, [2.0] * 6])
    sparse = pa.chunked_array([[1.0, None, 3.0, None], [None] * 5 + [6.0]])
    builder.add("a", steps, dense)
    builder.add("b", steps, dense)
    builder.add("c", steps, sparse)
    a, b, c = (builder.tables[k] for k in "abc")
    for t in (a, b, c):
        assert t.schema == METRIC_SCHEMA
        layouts = {tuple(len(x) for x in col.chunks) for col in t.columns}
        assert len(layouts) == 1 and len(t.to_batches()) == t.column("value").num_chunks
    assert [len(x) for x in a["step"].chunks] == [4, 6]
    assert a["step"].chunk(1).buffers()[1].address == b["step"].chunk(1).buffers()[1].address
    assert a["step"].chunk(1).buffers()[1].size == 6 * 8  # a chunk of its own, not a slice
    assert c.to_pylist() == [{"step": s, "timestamp": None, "value": v} for s, v in [(0, 1.0), (2, 3.0), (9, 6.0)]]
    assert [len(x) for x in c["value"].chunks] == [2, 1]


def test_csv_step_and_time_cells_exact(tmp_path):
    # Arrow's integer parser reads `0x10` as 16: not a step by our rule; `+5` and `7.0` are.
    f = _write(tmp_path, "m.csv", b"step,loss\n+5,1\n7.0,2\n0x10,3\n")
    (p,) = _read_table(f, _csv_options(step_column="step")).problems
    assert p.location == "row 3 column 'step'" and "'0x10' is not an integer" in p.message
    g = _write(tmp_path, "t.csv", b"step,t,loss\n1,1718000000,1\n2,,2\n3,1718000002,3\n")
    rec = _read_table(g, _csv_options(step_column="step", time_column="t")).records[0]
    assert rec.metrics["loss"]["timestamp"].to_pylist() == [1718000000000, None, 1718000002000]
    assert rec.metrics["loss"]["step"].to_pylist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# YOLO results.txt layouts: lines written with the writers' own format strings
# ---------------------------------------------------------------------------------------------

def _v3_2019_04(e, t):  # ultralytics/yolov3 train.py 2019-04-05 .. 07-15; t: time (s) or img_size
    s = ("%8s%12s" + "%10.3g" * 7) % ("%g/%g" % (e, 2), "%g/%g" % (99, 99), 0.1, 0.2, 0.3, 0.4, 1.0, 12, t)
    return s + "%11.3g" * 5 % (0.5, 0.4, 0.3 + e / 10, 0.44, 2.5)


YOLO_TXT = {
    # YOLOv5 v1.0-v5.0 and YOLOv7 (train.py): ('%10s' * 2 + '%10.4g' * 6) % (...) + '%10.4g' * 7 % results
    "yolov5": (lambda e: ("%10s" * 2 + "%10.4g" * 6) % ("%g/%g" % (e, 2), "%.3gG" % 3.58, 0.04567, 0.02, 0.01,
                                                       0.07567, 19, 640)
               + "%10.4g" * 7 % (0.6123, 0.5, 0.4 + e / 10, 0.2512, 0.03, 0.02, 0.01),
               {"metrics/mAP_0.5:0.95": 0.2512, "train/box_loss": 0.04567, "train/gpu_mem": 3.58}),
    # yolov3 2019-08-24 .. 2020-11-25: the same shape with '%10.3g', and F1 where YOLOv5 has mAP_0.5:0.95
    "yolov3-2019-08-24": (lambda e: ("%10s" * 2 + "%10.3g" * 6) % ("%g/%g" % (e, 2), "%.3gG" % 3.58, 4.567, 2.0,
                                                                  1.0, 7.567, 19, 416)
                          + "%10.3g" * 7 % (0.6123, 0.5, 0.4 + e / 10, 0.55, 3.0, 2.0, 1.0),
                          {"metrics/F1": 0.55, "train/GIoU_loss": 4.57, "val/GIoU_loss": 3.0}),
    "yolov3-2019-08-04": (lambda e: ("%10s" * 2 + "%10.3g" * 7) % ("%g/%g" % (e, 2), "%.3gG" % 3.58, 4.5, 1.0, 2.0,
                                                                  1.0, 8.5, 19, 416)
                          + "%10.3g" * 7 % (0.6, 0.5, 0.4 + e / 10, 0.55, 3.0, 2.0, 1.0),
                          {"train/wh_loss": 1.0, "metrics/F1": 0.55, "val/cls_loss": 1.0}),
    "yolov3-2019-07-16": (lambda e: ("%10s" * 2 + "%10.3g" * 7) % ("%g/%g" % (e, 2), "%.3gG" % 3.58, 4.5, 1.0, 2.0,
                                                                  1.0, 8.5, 19, 416)
                          + "%11.3g" * 5 % (0.6, 0.5, 0.4 + e / 10, 0.55, 7.5),
                          {"train/GIoU_loss": 4.5, "val/total_loss": 7.5, "train/img_size": 416}),
    "yolov3-2019-04-05": (lambda e: _v3_2019_04(e, 416), {"train/xy_loss": 0.1, "train/img_size": 416,
                                                          "metrics/F1": 0.44, "val/total_loss": 2.5}),
    "yolov3-2019-02-19": (lambda e: ("%8s%12s" + "%10.3g" * 7) % ("%g/%g" % (e, 2), "%g/%g" % (99, 99), 0.1, 0.2, 0.3,
                                                                 0.4, 1.0, 12, 0.52)
                          + "%11.3g" * 3 % (0.5, 0.4, 0.3 + e / 10),
                          {"train/time": 0.52, "metrics/precision": 0.5}),
    "yolov3-2018-11-22": (lambda e: ("%8s%12s" + "%10.3g" * 14) % ("%g/%g" % (e, 2), "%g/%g" % (99, 99), 0.1, 0.2, 0.3,
                                                                  0.4, 0.5, 0.6, 2.1, 0.7, 0.6, 30, 20, 5, 10, 0.3)
                          + "%11.3g" * 3 % (0.3 + e / 10, 0.5, 0.4),
                          {"train/x_loss": 0.1, "train/FN": 10, "train/precision": 0.7, "metrics/precision": 0.5}),
    "yolov3-2018-11-14": (lambda e: ("%11s%11s" + "%11.3g" * 14) % ("%g/%g" % (e, 2), "%g/%g" % (99, 99), 0.1, 0.2,
                                                                   0.3, 0.4, 0.5, 0.6, 2.1, 0.7, 0.6, 30, 20, 5, 10, 0.3)
                          + "%11.3g" % (0.3 + e / 10),
                          {"train/conf_loss": 0.5, "train/time": 0.3}),
    "yolov3-2018-08-26": (lambda e: ("%10s%10s" + "%10.3g" * 14) % ("%g/%g" % (e, 2), "%g/%g" % (99, 99), 0.1, 0.2,
                                                                   0.3, 0.4, 0.5, 0.6, 2.1, 0.7, 0.6, 30, 20, 5, 10, 0.3),
                          {"train/h_loss": 0.4, "train/instances": 30}),
}


@pytest.mark.parametrize("layout", list(YOLO_TXT))
def test_yolo_results_txt_layouts(tmp_path, layout):
    line, facts = YOLO_TXT[layout]
    f = _write(tmp_path, f"runs/train/{layout}/results.txt", "".join(line(e) + "\n" for e in range(3)).encode())
    assert yolo.detect(f) and not keras.detect(f) and not table.detect(f)
    result = yolo.read(f, SourceOptions())
    assert result.problems == []
    rec = result.records[0]
    assert rec.tags[yolo.LAYOUT_TAG] == layout
    names = dict([*yolo.TXT_LAYOUTS.values(), yolo.TXT_YOLOV3_2019_08])[layout]
    assert set(rec.metrics) == set(names) - {"epoch/total", "batch/last"}
    for key, value in facts.items():
        assert rec.metrics[key]["value"].to_pylist() == [value] * 3, key
        assert rec.metrics[key]["step"].to_pylist() == [0, 1, 2]
    if layout != "yolov3-2018-08-26":  # the only layout without a test mAP
        mAP = [round(v, 2) for v in rec.metrics["metrics/mAP_0.5"]["value"].to_pylist()]
        assert mAP in ([0.4, 0.5, 0.6], [0.3, 0.4, 0.5])


def test_yolo_results_txt_time_column_before_image_sizes(tmp_path):
    f = _write(tmp_path, "runs/train/exp/results.txt", "".join(_v3_2019_04(e, 0.52) + "\n" for e in range(2)).encode())
    rec = yolo.read(f, SourceOptions()).records[0]
    assert rec.metrics["train/time"]["value"].to_pylist() == [0.52, 0.52] and "train/img_size" not in rec.metrics


def test_yolo_results_txt_bad_rows(tmp_path):
    line = YOLO_TXT["yolov3-2019-07-16"][0]
    rows = [line(0), line(1), line(2).replace("0.55", "0.5x")]
    f = _write(tmp_path, "runs/train/a/results.txt", "\n".join(rows).encode() + b"\n")
    (p,) = yolo.read(f, SourceOptions()).problems
    assert p.location == "line 3" and p.message == "column 13 ('metrics/F1'): '0.5x' is not a number"
    g = _write(tmp_path, "runs/train/b/results.txt", (line(0) + "\n\n" + YOLO_TXT["yolov5"][0](1) + "\n").encode())
    (p,) = yolo.read(g, SourceOptions()).problems
    assert p.location == "line 3" and "15 fields" in p.message and "first line" in p.message
    h = _write(tmp_path, "runs/train/c/results.txt", b"  0/9  1.2G  0.1  0.2  0.3  0.4\n")
    assert not yolo.detect(h)
    (p,) = yolo.read(h, SourceOptions()).problems  # named with --format yolo
    assert p.location == "line 1" and p.message.startswith("the line has 6 fields")
    k = _write(tmp_path, "runs/train/d/results.txt", (YOLO_TXT["yolov3-2018-08-26"][0](0).replace("99/99", "99-99")
                                                       + "\n").encode())
    (p,) = yolo.read(k, SourceOptions()).problems  # 16 fields, field 2 not batch/last: the 2019-08 layout
    assert p.location == "line 1" and "column 2 ('train/gpu_mem'): '99-99' is not a number" == p.message


def test_csv_time_scale_is_decided_on_the_whole_column(tmp_path, monkeypatch):
    """Numbers are seconds only when every one in the column is < 1e11: a streamed file learns it
    in the validation pass, so early blocks are not read as seconds because a late one has ms."""
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 10)
    rows = ["0,0.5,\n"] + [f"{i},{i * 1.5},{i}\n" for i in range(1, 1000)] + ["1000,1718000000000,5\n"]
    f = _write(tmp_path, "m.csv", b"step,t,loss\n" + "".join(rows).encode())
    result = table.read(f, _csv_options(step_column="step", time_column="t"))
    (rec,) = result.records
    assert result.problems == [] and rec.load.min_timestamp == 1  # row 0 has no point
    assert rec.load.series["loss"].points == 1000 and rec.load.series["loss"].steps == (1, 1000)
    _loaded(result)
    stamps = rec.metrics["loss"]["timestamp"].to_pylist()
    assert stamps[:3] == [1, 3, 4] and stamps[-1] == 1718000000000 and rec.metrics["loss"].num_rows == 1000


def test_csv_time_column_of_two_kinds_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 10)
    """Numbers in early blocks, ISO times in later ones: one problem (as when read whole), at the
    block where the kind changes."""
    rows = [f"{i},{1718000000 + i},{i}\n" for i in range(500)]
    rows += [f"{i},2024-06-10T06:13:{i % 60:02d}Z,1\n" for i in range(500, 1000)]
    f = _write(tmp_path, "m.csv", b"step,t,loss\n" + "".join(rows).encode())
    (p,) = table.read(f, _csv_options(step_column="step", time_column="t")).problems
    row = int(p.location.split()[1])
    assert p.location.endswith("column 't'") and 450 < row <= 501, p
    assert "is neither a number nor an ISO 8601 time" in p.message or "is not written like" in p.message


def test_csv_reader_leaves_arrows_default_pool_alone(tmp_path, monkeypatch):
    """The reader's own pool is passed to Arrow, never made the process's default."""
    swaps = []
    monkeypatch.setattr(pa, "set_memory_pool", swaps.append)
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 12)
    f = _write(tmp_path, "m.csv", b"step,a\n" + b"".join(b"%d,%d.5\n" % (i, i) for i in range(2000)))
    (rec,) = _loaded(table.read(f, _csv_options(step_column="step"))).records
    assert rec.metrics["a"].num_rows == 2000
    assert delimited.read_delimited(f, [], keep_text=["step"]).rows == 2000
    assert swaps == []


def test_csv_reader_stays_a_few_blocks_ahead_of_a_slow_consumer(tmp_path, monkeypatch):
    """A streamed run's pages are taken as fast as a server takes them: the reader must not read
    the rest of the file ahead meanwhile (Arrow's reader would go 32 blocks ahead)."""
    monkeypatch.setattr(delimited, "BLOCK_BYTES", 1 << 14)
    leads = []

    class Counted(delimited.PacedStream):
        reads = consumed_ = 0

        def read(self, nbytes=-1):
            buf = super().read(nbytes)
            if buf.size:
                self.reads += 1
                leads.append(self.reads - self.consumed_)
            return buf

        def consumed(self):
            self.consumed_ += 1
            super().consumed()

    monkeypatch.setattr(delimited, "PacedStream", Counted)
    f = _write(tmp_path, "m.csv", b"step,a,b\n" + b"".join(b"%d,%d.5,%d\n" % (i, i, -i) for i in range(20_000)))
    (rec,) = table.read(f, _csv_options(step_column="step")).records

    async def slowly():
        n = 0
        async for _, t in rec.load.pages():
            n += t.num_rows
            time.sleep(0.15)  # slower than a moment the reader might wait
        return n

    leads.clear()
    assert asyncio.run(slowly()) == 40_000
    assert len(leads) > 15 and max(leads) <= delimited.READ_AHEAD + 2, max(leads)
