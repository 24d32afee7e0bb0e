"""Several importers writing the same runs at once (the daemon, the service, sharded moves): real
processes against the session's real server, read back through its REST API."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, View, tags_of, write_json

PROCESSES = 8
T0 = 1_650_000_000_000


def manifest(experiment: str) -> dict:
    """Two parents with two children each and four runs of their own: 10 runs, 2 series of 40
    points each, 800 points."""
    def series(seed: int, n: int = 40) -> dict:
        return {f"m{k}": {"step": list(range(n)), "value": [(s * (k + 2) + seed) / 7 for s in range(n)],
                          "timestamp": [T0 + seed * 10_000 + s for s in range(n)]} for k in range(2)}

    parents = [{"id": f"root-{p}", "name": f"root-{p}", "start_time": T0, "params": {"kind": "sweep"},
                "metrics": series(10 * p),
                "runs": [{"id": f"child-{p}{i}", "name": f"child-{i}", "start_time": T0 + i, "params": {"i": i},
                          "metrics": series(10 * p + i + 1)} for i in range(2)]} for p in range(2)]
    solos = [{"id": f"solo-{i}", "name": f"solo-{i}", "start_time": T0 + 5, "params": {"kind": "solo"},
              "metrics": series(30 + i)} for i in range(4)]
    return {"format_version": 1, "experiment": experiment, "runs": parents + solos}


# `python -m importer ARGS` that loads its modules first, then waits for a start time: the
# processes begin their imports within milliseconds of each other, as workers of a running
# daemon would, not spread over the second or two a Python process takes to start.
LAUNCH = """
import runpy, sys, time
import importer.cli, importer.pipeline, importer.sources.manifest
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.argv = ["importer", *sys.argv[2:]]
runpy.run_module("importer", run_name="__main__")
"""


def race(path: Path, uri: str, ledgers: list[Path]) -> list[subprocess.CompletedProcess]:
    """One `importer import` per ledger, all starting at the same moment; wait for all."""
    start = time.time() + 2.5  # 8 processes load their modules in about 2 s on 2 cores
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCH, str(start), "--debug", "import", str(path),
                               "--tracking-uri", uri, "--state", str(ledger), "--quiet"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for ledger in ledgers]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def tally(view: View, doc: dict) -> dict:
    """What the server holds for the manifest: active runs per key, and per run and series the
    points missing and the points held more than once."""
    runs = view.runs(doc["experiment"])
    per_key = Counter(tags_of(r).get("importer.import_key") for r in runs)
    flat = {r["id"]: r for top in doc["runs"] for r in [top, *top.get("runs", [])]}
    missing = duplicated = 0
    for run in runs:
        want = flat[tags_of(run)["importer.import_key"]]
        for key, cols in want["metrics"].items():
            held = Counter(view.history(run["info"]["run_id"], key))
            expected = Counter(zip(cols["step"], cols["timestamp"], cols["value"]))
            missing += sum((expected - held).values())
            duplicated += sum((held - expected).values())
    return {"per_key": per_key, "missing": missing, "extra": duplicated, "runs": runs}


@pytest.mark.parametrize("trial", range(20))
def test_eight_importers_at_once_make_one_run_per_key(uri, experiment, tmp_path, trial):
    """Odd trials: every process has its own ledger; even ones: all share one."""
    doc = manifest(experiment)
    path = write_json(tmp_path / "m.json", doc)
    shared = trial % 2 == 0
    ledgers = [tmp_path / ("ledger.db" if shared else f"ledger-{i}.db") for i in range(PROCESSES)]
    done = race(path, uri, ledgers)
    for res in done:
        assert res.returncode == 0, (res.stdout + res.stderr).decode()

    view = View(uri)
    seen = tally(view, doc)
    keys = [r["id"] for top in doc["runs"] for r in [top, *top.get("runs", [])]]
    assert seen["per_key"] == Counter(keys), seen["per_key"]  # one active run per key
    assert (seen["missing"], seen["extra"]) == (0, 0)
    by_key = {tags_of(r)["importer.import_key"]: r for r in seen["runs"]}
    for p in range(2):  # children point at the run their parent kept
        root_id = by_key[f"root-{p}"]["info"]["run_id"]
        assert [tags_of(by_key[f"child-{p}{i}"]).get("mlflow.parentRunId") for i in range(2)] == [root_id] * 2
    # A run that lost is in the trash, and holds no point: nothing was written before it knew.
    for run in view.runs(experiment, include_deleted=True):
        if run["info"]["lifecycle_stage"] == "deleted":
            assert not run["data"].get("metrics") and not run["data"].get("params"), run["info"]["run_id"]
