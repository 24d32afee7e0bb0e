"""Faults while moving runs between servers: `kill -9` at random moments during `migrate`, `export`
and the `import` of a bundle, then a rerun, then `verify`; and a real fault-injecting proxy
(tests/proxy.py: 503s, connections dropped before forwarding and after the server acted) between
importer and the destination.

After each trial the destination must equal the source exactly (`verify` exits 0), hold each source
run exactly once (counted by the tag `importer.source_run_id`, deleted runs included) and each
registered-model version exactly once (by its tag `importer.source_version`), counted here
independently of `verify`.

The kill moments come from seeded random generators, between 0.2 s and the duration of a clean
run measured at the start of the module (a kill that comes after the process ended is no crash:
the trial starts over). The last tests lose half the answers to registered-model writes; models are
written one request at a time, so the seeded proxy loses the same answers on every run.

Servers: one source and one destination per module (a start costs several seconds on the 2-core
machine). Each trial starts from a destination without the experiment: the previous trial's
experiment and registered model are renamed out of the way (`clear`). Importer finds runs and
versions only inside the experiment and model of that name, so this is a fresh destination for it.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

import importer
from importer import moves
from importer.sinks import registry
from importer.sources import server as server_source
from importer.mlflow_api import MlflowApi
from importer.local_server import LocalServer
from importer.sources.server import Selection

from conftest import ROOT, View, run_importer, tags_of
from test_faults import start_proxy
from test_migrate import Rest, dest_models, populate, populate_logged

POINTS = 2500  # per run: 6 runs, 15k points; a clean migration took 4-8 s on the 2-core machine
ROLES = ("root", "child", "grandchild", "failed", "killed", "deleted")


# -- servers and the clean reference --------------------------------------------------------------


def _start_all(*servers: LocalServer) -> None:
    """Start servers side by side (most of a start is waiting on imports and the health check)."""
    errors: list[BaseException] = []

    def start(s: LocalServer) -> None:
        try:
            s.start()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    src = LocalServer(tmp_path_factory.mktemp("fault-source"))
    dst = LocalServer(tmp_path_factory.mktemp("fault-dest"))
    _start_all(src, dst)
    yield src, dst
    src.stop()
    dst.stop()


@pytest.fixture(scope="module")
def world(servers, tmp_path_factory):
    """The populated source, what it holds (counted straight from the server), and one clean
    export, import and migration: the references for the trials and their durations."""
    src, dst = servers
    name = f"mfault-{uuid.uuid4().hex[:8]}"
    ids = populate(src.url, name, points=POINTS)
    counts = source_counts(src.url, name)
    work = tmp_path_factory.mktemp("clean")

    bundle = work / "bundle"
    export_s = timed(run_ok, "export", "--from", src.url, "--out", str(bundle), "--experiment", name,
                     "--include-deleted")
    clear(dst.url, name)
    import_s = timed(run_ok, "import", str(bundle), "--tracking-uri", dst.url, "--include-deleted",
                     "--state", str(work / "import.db"), "--quiet")
    clear(dst.url, name)
    migrate_s = timed(run_ok, "migrate", "--from", src.url, "--to", dst.url, "--experiment", name,
                      "--include-deleted", "--state", str(work / "migrate.db"), "--quiet")
    clear(dst.url, name)
    print(f"\nclean durations: export {export_s:.1f} s, import {import_s:.1f} s, migrate {migrate_s:.1f} s")
    return {"name": name, "ids": ids, "counts": counts, "bundle": bundle,
            "manifest": json.loads((bundle / "bundle.json").read_text()),
            "seconds": {"export": export_s, "import": import_s, "migrate": migrate_s}}


@pytest.fixture
def dest(servers, world):
    """The destination, without the experiment (nor its model) before and after the test."""
    _, dst = servers
    clear(dst.url, world["name"])
    yield dst
    clear(dst.url, world["name"])


def clear(url: str, name: str, experiment: bool = True) -> None:
    """Rename the experiment `name` and the model `model-<name>` out of the way, if present."""
    rest = Rest(url)
    suffix = uuid.uuid4().hex[:8]
    r = rest.http.get("experiments/get-by-name", params={"experiment_name": name})
    if experiment and r.status_code == 200:
        exp_id = r.json()["experiment"]["experiment_id"]
        rest.post("experiments/update", {"experiment_id": exp_id, "new_name": f"{name}-old-{suffix}"})
    model = f"model-{name}"
    if rest.http.get("registered-models/get", params={"name": model}).status_code == 200:
        rest.post("registered-models/rename", {"name": model, "new_name": f"{model}-old-{suffix}"})


def source_counts(url: str, name: str) -> dict:
    """Runs, points, artifacts and models of the experiment, read from the server itself."""
    view = View(url)
    runs = view.runs(name, include_deleted=True)
    points = artifacts = 0
    for run in runs:
        run_id = run["info"]["run_id"]
        for key in {m["key"] for m in run["data"].get("metrics", [])}:
            points += len(view.history(run_id, key))
        folders = [""]
        while folders:
            listing = view.http.get("artifacts/list", params={"run_id": run_id, "path": folders.pop()}).json()
            for f in listing.get("files", []):
                if f.get("is_dir"):
                    folders.append(f["path"])
                else:
                    artifacts += 1
    models = view.http.get("registered-models/search", params={"max_results": 1000}).json()
    return {"experiments": 1, "runs": len(runs), "points": points, "artifacts": artifacts,
            "models": sum(m["name"] == f"model-{name}" for m in models.get("registered_models", [])),
            "logged_models": len(dest_models(url, name))}


# -- helpers --------------------------------------------------------------------------------------


def run_ok(*args: str) -> subprocess.CompletedProcess:
    r = run_importer(*args)
    assert r.returncode == 0, f"importer {args[0]} exited {r.returncode}:\n{r.stdout.decode()}\n{r.stderr.decode()}"
    return r


def timed(fn, *args) -> float:
    started = time.monotonic()
    fn(*args)
    return time.monotonic() - started


def crash(args: list[str], rng: random.Random, clean_seconds: float, kills: int) -> list[bool]:
    """Start `python -m importer ARGS` `kills` times, each SIGKILLed at a random moment between
    0.2 s and the clean run's duration. Returns, per kill, whether it hit a running process."""
    hit = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "importer", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, max(0.3, clean_seconds)))
        hit.append(proc.poll() is None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return hit


def crashes(args: list[str], rng: random.Random, clean_seconds: float, start_over) -> list[bool]:
    """One or two kills at random moments. The machine's load varies, so the first run may end
    before its kill: then that was no crash, and the trial starts over (`start_over()` removes what
    it wrote) with a moment drawn from a shorter span."""
    for _ in range(4):
        hit = crash(args, rng, clean_seconds, kills=rng.choice((1, 2)))
        print(f"\n{args[0]}: kills within {clean_seconds:.1f} s hit a running process: {hit}")
        if hit[0]:
            return hit
        start_over()
        clean_seconds *= 0.6
    pytest.fail(f"importer {args[0]} always finished before its kill")


def forget(ledger: Path) -> None:
    """Delete a ledger (SQLite in WAL mode: three files)."""
    for f in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
        f.unlink(missing_ok=True)


def assert_verified(src: str, dst: str, name: str) -> None:
    v = run_importer("verify", "--from", src, "--to", dst, "--experiment", name, "--include-deleted")
    out = v.stdout.decode()
    assert v.returncode == 0, f"verify exited {v.returncode}:\n{out}\n{v.stderr.decode()}"
    assert "no differences" in out, out


def assert_no_duplicates(url: str, world: dict) -> None:
    """Each source run exactly once (deleted runs included, and no run without the tag), each
    model version exactly once."""
    view = View(url)
    runs = view.runs(world["name"], include_deleted=True)
    by_source = Counter(tags_of(r).get("importer.source_run_id") for r in runs)
    assert by_source == Counter({world["ids"][role]: 1 for role in ROLES}), by_source
    model = world["ids"]["model"]
    found = view.http.get("model-versions/search", params={"filter": f"name='{model}'", "max_results": 1000})
    versions = found.json().get("model_versions", [])
    by_version = Counter({t["key"]: t["value"] for t in v.get("tags", [])}.get("importer.source_version")
                         for v in versions)
    assert by_version == Counter({"1": 1, "3": 1}), [(v["version"], v.get("tags")) for v in versions]
    assert sorted(v["version"] for v in versions) == ["1", "3"]  # numbers kept, placeholders gone


def assert_rerun_changes_nothing(*args: str) -> None:
    summary = json.loads(run_ok(*args, "--json").stdout)
    assert summary["runs"] == {"created": 0, "appended": 0, "unchanged": 6, "failed": 0}, summary
    assert summary["points"] == 0, summary


# -- kill -9 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", range(3))
def test_migrate_killed_then_rerun_is_exact(servers, world, dest, tmp_path, trial):
    src, _ = servers
    name = world["name"]
    ledger = tmp_path / "ledger.db"
    args = ["migrate", "--from", src.url, "--to", dest.url, "--experiment", name, "--include-deleted",
            "--state", str(ledger), "--quiet"]
    crashes(args, random.Random(1000 + trial), world["seconds"]["migrate"],
            lambda: (clear(dest.url, name), forget(ledger)))
    if trial == 2:
        forget(ledger)  # the ledger is lost too: the destination's tags must be enough
    run_ok(*args)
    assert_verified(src.url, dest.url, name)
    assert_no_duplicates(dest.url, world)
    assert_rerun_changes_nothing(*args)


@pytest.mark.parametrize("trial", range(2))
def test_export_killed_then_rerun_gives_the_clean_bundle(servers, world, dest, tmp_path, trial):
    src, _ = servers
    name = world["name"]
    bundle = tmp_path / "bundle"
    args = ["export", "--from", src.url, "--out", str(bundle), "--experiment", name, "--include-deleted"]
    crashes(args, random.Random(2000 + trial), world["seconds"]["export"], lambda: shutil.rmtree(bundle, ignore_errors=True))
    run_ok(*args)

    assert not list(bundle.rglob("*.partial")), list(bundle.rglob("*.partial"))
    assert not list(bundle.rglob("*.tmp")), list(bundle.rglob("*.tmp"))
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["counts"] == world["counts"]
    assert {p.name for p in (bundle / "runs").iterdir()} == {world["ids"][r] for r in ROLES}
    # byte for byte the clean export's runs: each run.json (which holds metrics.parquet's hash)
    assert manifest["runs"] == world["manifest"]["runs"]
    assert manifest["models"] == world["manifest"]["models"]

    run_ok("import", str(bundle), "--tracking-uri", dest.url, "--include-deleted",
           "--state", str(tmp_path / "ledger.db"), "--quiet")
    assert_verified(src.url, dest.url, name)
    assert_no_duplicates(dest.url, world)


@pytest.mark.parametrize("trial", range(2))
def test_import_of_a_bundle_killed_then_rerun_is_exact(servers, world, dest, tmp_path, trial):
    src, _ = servers
    name = world["name"]
    ledger = tmp_path / "ledger.db"
    args = ["import", str(world["bundle"]), "--tracking-uri", dest.url, "--include-deleted",
            "--state", str(ledger), "--quiet"]
    crashes(args, random.Random(3000 + trial), world["seconds"]["import"],
            lambda: (clear(dest.url, name), forget(ledger)))
    run_ok(*args)
    assert_verified(src.url, dest.url, name)
    assert_no_duplicates(dest.url, world)
    assert_rerun_changes_nothing(*args)


@pytest.fixture(scope="module")
def logged_world(servers, tmp_path_factory):
    """A source experiment holding an MLflow 3 logged model (test_migrate.populate_logged), and the
    duration of its clean migration."""
    src, dst = servers
    name = f"mlogged-{uuid.uuid4().hex[:8]}"
    ids = populate_logged(src.url, name)
    work = tmp_path_factory.mktemp("logged")
    seconds = timed(run_ok, "migrate", "--from", src.url, "--to", dst.url, "--experiment", name,
                    "--include-deleted", "--state", str(work / "clean.db"), "--quiet")
    clear(dst.url, name)
    return {"name": name, "ids": ids, "seconds": seconds}


@pytest.mark.parametrize("trial", range(2))
def test_migrate_with_a_logged_model_killed_then_rerun_is_exact(servers, logged_world, tmp_path, trial):
    """The logged model is written once, whatever moment the kill hit (the model step comes after
    the runs, its create carries the source id tag), and the rerun leaves it exactly the source's."""
    src, dst = servers
    name, ids = logged_world["name"], logged_world["ids"]
    ledger = tmp_path / "ledger.db"
    args = ["migrate", "--from", src.url, "--to", dst.url, "--experiment", name, "--include-deleted",
            "--state", str(ledger), "--quiet"]
    clear(dst.url, name)
    try:
        crashes(args, random.Random(4000 + trial), logged_world["seconds"],
                lambda: (clear(dst.url, name), forget(ledger)))
        run_ok(*args)
        assert_verified(src.url, dst.url, name)
        [copy] = dest_models(dst.url, name)
        tags = {t["key"]: t["value"] for t in copy["info"]["tags"]}
        assert tags["importer.source_model_id"] == ids["model_id"]
        runs = View(dst.url).runs(name, include_deleted=True)
        assert Counter(tags_of(r)["importer.source_run_id"] for r in runs) == Counter(
            {ids[r]: 1 for r in ("train", "eval", "deleted_eval")})
        lifecycle = {tags_of(r)["importer.source_run_id"]: r["info"]["lifecycle_stage"] for r in runs}
        assert lifecycle[ids["deleted_eval"]] == "deleted"
    finally:
        clear(dst.url, name)


# -- a faulty network between importer and the destination ----------------------------------------


def test_migrate_through_a_faulty_proxy_is_exact(servers, world, dest, tmp_path):
    src, _ = servers
    name = world["name"]
    ledger = tmp_path / "ledger.db"
    proxy, proxy_url = start_proxy(dest.url, seed=7, fail=0.1, drop_before=0.05, drop_after=0.1,
                                   delay_ms=20)
    try:
        r = run_importer("migrate", "--from", src.url, "--to", proxy_url, "--experiment", name,
                         "--include-deleted", "--state", str(ledger), "--json")
        stats = httpx.get(f"{proxy_url}/__proxy_stats").json()
    finally:
        proxy.terminate()
        proxy.wait()
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert stats["fail"] and stats["drop_before"] and stats["drop_after"], stats
    summary = json.loads(r.stdout)
    assert summary["runs"]["created"] == 6 and summary["retried"] > 0, summary
    assert_verified(src.url, dest.url, name)  # the real destination, not the proxy
    assert_no_duplicates(dest.url, world)
    # The ledger knows the proxy's URL only: straight to the destination, runs are found by their
    # tags and compared with the server; nothing is sent again.
    summary = json.loads(run_ok("migrate", "--from", src.url, "--to", dest.url, "--experiment", name,
                                "--include-deleted", "--state", str(ledger), "--json").stdout)
    assert summary["runs"]["created"] == 0 and summary["runs"]["failed"] == 0, summary
    assert summary["points"] == 0 and summary["artifacts"] == 0, summary
    assert_no_duplicates(dest.url, world)


@pytest.fixture(scope="module")
def small(servers, tmp_path_factory):
    """A second, small source experiment, migrated without its registered model."""
    src, dst = servers
    name = f"msmall-{uuid.uuid4().hex[:8]}"
    ids = populate(src.url, name, points=10)
    summary = moves.migrate(src.url, dst.url, Selection((name,), include_deleted=True), models=False,
                            state=tmp_path_factory.mktemp("small") / "ledger.db")
    assert not summary.failed, [(o.origin, o.error) for o in summary.failed]
    return {"name": name, "ids": ids, "outcomes": summary.outcomes}


async def _source_models(url: str, run_ids: set[str]) -> list:
    async with MlflowApi(url) as api:
        return await server_source.registered_models(api, run_ids)


async def _copy_models(url: str, models: list, outcomes: list) -> None:
    async with MlflowApi(url, importer.ClientConfig(backoff_base=0.05, retries=14)) as api:
        await registry.copy_models(api, models, outcomes)


@pytest.mark.parametrize("seed", (1, 2, 3))
def test_lost_answers_to_registered_model_writes(servers, small, seed):
    """Half of the destination's answers are lost after it acted, so writes are repeated; the
    non-idempotent ones (registered-models/create, model-versions/create) must neither fail the
    migration nor leave a second copy. Models are written one request at a time, so the seeded
    proxy loses the same answers on every run of this test."""
    src, dst = servers
    model = small["ids"]["model"]
    clear(dst.url, model.removeprefix("model-"), experiment=False)
    models = asyncio.run(_source_models(src.url, {small["ids"][r] for r in ROLES}))
    assert [m.name for m in models] == [model]
    outcomes = list(small["outcomes"])
    proxy, proxy_url = start_proxy(dst.url, seed=seed, drop_after=0.5)
    try:
        asyncio.run(_copy_models(proxy_url, models, outcomes))
        stats = httpx.get(f"{proxy_url}/__proxy_stats").json()
    finally:
        proxy.terminate()
        proxy.wait()
    assert stats["drop_after"], stats
    assert not [o for o in outcomes if o.action == "failed"], [o.error for o in outcomes if o.action == "failed"]
    assert_no_duplicates(dst.url, small)
    assert_verified(src.url, dst.url, small["name"])
