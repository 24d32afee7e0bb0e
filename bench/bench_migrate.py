"""Export, import and migrate throughput, memory and bundle size, against baselines measured in the
same run on the same servers.

    python bench/bench_migrate.py [--flavor gunicorn|default] [--big] [--skip-common] [--export-only]
                                  [--repeat N]
    python bench/bench_migrate.py --direct 1000000 --direct 5000000

Starts a source `mlflow server` (SQLite, loopback) and three fresh destinations, fills the source
through plain REST calls with two workloads:

    A  20 runs x 10 keys x 1000 steps (200,000 points), 20 params, 5 tags, 2 artifacts each
       (bench_import.py's workload, same values)
    B  one run of 500,000 points (5 keys x 100,000 steps), 20 params, 5 tags, 2 artifacts, with
       values and times as a training loop logs them (noisy doubles, 200-400 ms apart)
    C  (--big only) one run of 5,000,000 points like B, for the memory target; importer only
       (--big-points 1000000,2000000,5000000: one such run per size, to show memory stays flat)

and measures per workload, each command in a new process (wall time, peak RSS of the process and
its children, sampled every 20 ms):

1. `importer export --experiment NAME` into a new bundle; bytes per point of metrics.parquet;
2. the export baseline: a raw REST read of every history (runs/search, then metrics/get-history
   paged with max_results 25000, each page parsed with json.loads), and the same with each first
   page from the UI's get-history-bulk as importer reads, at 2, 4 and 8 requests in flight
   (--in-flight); the best is "the read limit";
3. mlflow-migration's `export-experiment` (its own Python 3.12 virtualenv, see --common-venv):
   time, peak RSS, bytes per point of its JSON;
4. `importer import BUNDLE` into a fresh destination;
5. `importer migrate` server to server into another fresh destination;
6. the import baseline: bench_import.py's raw `log-batch` replay of the same runs (bodies built
   before the clock starts), once at 2, 4 and 8 in flight into its own destination to find its best
   concurrency, then at that concurrency in turns with step 4, into the same destination, as many
   times as the import is measured; its best there is "the write limit";
7. mlflow-migration's `import-experiment` of its export into a fresh experiment.

--export-only measures 1 to 3 only (and, for C, only the export).
Every copy is checked (not timed): the bundle's and the importer's summaries must count every
run and point, and mlflow-migration's export and import are counted on disk and on the server.
Each row also shows the share of the machine's CPU that other processes used meanwhile; before
each measurement the benchmark waits (up to --quiet-wait s) for them to be quiet.
Targets: import >= 0.9x the write limit, export >= 3x mlflow-migration's export, <= 300 MB for
5M points, metrics.parquet <= 20 bytes a point.

`--direct POINTS` (repeatable) measures only `importer import` of a bundle of one run like C
written straight to disk by BundleSink (no source to fill, no export): the import's peak RSS at
1M or 5M points without the quarter of an hour that filling and exporting 5M points takes.
`--repeat N` measures every contender N times, in turns (best of each; the replay's sweep of
concurrencies runs once). Before any clock starts, each server has answered the kind of request
measured (a raw read of the source, a small replay into each destination): a fresh server's first
answers are slower.
"""

from __future__ import annotations

import argparse
import compileall
import glob
import itertools
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import import API, raw_replay, wait_idle  # noqa: E402
from importer.mlflow_api import offset_token  # noqa: E402
from importer.local_server import LocalServer  # noqa: E402

COMMON_SPEC = "mlflow-migration==1.2.2"
T0 = 1_600_000_000_000


# ---------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------


def make_runs(folder: Path, runs: int, keys: int, steps: int, noisy: bool = False) -> list[dict]:
    """bench_import.build_manifest's runs (same params, tags, values, times), without the
    manifest file; the two artifacts are written to folder/art as raw_replay expects.

    `noisy`: values and times as a training loop logs them instead of straight lines: a decaying
    loss with 10% Gaussian noise (full-precision doubles) and 200 to 400 ms between points. They
    compress as real histories do, so the bytes per point on disk are not flattered."""
    (folder / "art").mkdir(parents=True, exist_ok=True)
    if not (folder / "art" / "model.bin").exists():
        (folder / "art" / "model.bin").write_bytes(os.urandom(20_000))
        (folder / "art" / "config.json").write_text(json.dumps({"layers": [64, 64]}))
    out = []
    for r in range(runs):
        start = T0 + r * 10_000_000
        metrics = {}
        for k in range(keys):
            if noisy:
                rng = random.Random(r * 1000 + k)
                values = [k + (1 + 0.1 * rng.gauss(0, 1)) / (1 + s / 1000) for s in range(steps)]
                times, t = [], start
                for _ in range(steps):
                    t += rng.randint(200, 400)
                    times.append(t)
            else:
                values = [(s * 0.001 + k + r) / 3 for s in range(steps)]
                times = [start + s * 1000 for s in range(steps)]
            metrics[f"m{k}"] = {"step": list(range(steps)), "value": values, "timestamp": times}
        out.append({
            "id": f"run-{r}", "name": f"run-{r}", "start_time": start,
            "end_time": max(c["timestamp"][-1] for c in metrics.values()) + 1000 if steps else start,
            "params": {f"p{i}": i * 0.5 + r for i in range(20)},
            "tags": {f"t{i}": f"v{i}" for i in range(5)},
            "metrics": metrics,
        })
    return out


def fill(url: str, name: str, runs: list[dict], folder: Path, in_flight: int = 4) -> None:
    """Write the runs into experiment `name` through plain REST calls, as a training script's
    client would (params, tags, every point, two artifacts, end time and status)."""
    http = httpx.Client(base_url=url, timeout=300)
    exp = http.post(API + "experiments/create", json={"name": name}).raise_for_status().json()["experiment_id"]
    work: queue.Queue = queue.Queue()
    run_ids = []
    for run in runs:
        r = http.post(API + "runs/create", json={
            "experiment_id": exp, "start_time": run["start_time"], "run_name": run["name"], "user_id": "bench",
            "tags": [{"key": k, "value": v} for k, v in run["tags"].items()]}).raise_for_status().json()["run"]
        run_id = r["info"]["run_id"]
        run_ids.append(run_id)
        http.post(API + "runs/log-batch", json={"run_id": run_id, "params": [
            {"key": k, "value": str(v)} for k, v in run["params"].items()]}).raise_for_status()
        root = r["info"]["artifact_uri"].split(":", 1)[1].lstrip("/")
        for fname in ("model.bin", "config.json"):
            http.put(f"/api/2.0/mlflow-artifacts/artifacts/{root}/{fname}",
                     content=(folder / "art" / fname).read_bytes()).raise_for_status()
        for key, cols in run["metrics"].items():
            n = len(cols["step"])
            for j in range(0, n, 1000):
                work.put((run_id, key, cols, j, min(n, j + 1000)))

    def worker() -> None:
        client = httpx.Client(base_url=url, timeout=300)
        while True:
            try:
                run_id, key, cols, a, b = work.get_nowait()
            except queue.Empty:
                return
            points = [{"key": key, "value": v, "timestamp": t, "step": s} for s, v, t in
                      zip(cols["step"][a:b], cols["value"][a:b], cols["timestamp"][a:b])]
            client.post(API + "runs/log-batch", json={"run_id": run_id, "metrics": points}).raise_for_status()

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for run, run_id in zip(runs, run_ids):
        http.post(API + "runs/update", json={"run_id": run_id, "status": "FINISHED",
                                             "end_time": run["end_time"]}).raise_for_status()


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    seconds: float
    peak: int  # bytes, the process and its children
    returncode: int
    stdout: str
    stderr: str


def measure(args: list, env: Optional[dict] = None, cwd: Path = ROOT) -> Result:
    """bench_import.measure with children counted and the failure returned rather than raised."""
    start = time.perf_counter()
    proc = psutil.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        env={**os.environ, **(env or {})})
    peak = 0
    # Drain the pipes in threads: a chatty tool would otherwise block on a full pipe.
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stdout, out), daemon=True),
               threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stderr, err), daemon=True)]
    [t.start() for t in readers]
    try:
        while proc.poll() is None:
            try:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
    finally:
        if proc.poll() is None:  # interrupted: the command must not outlive the benchmark
            for p in proc.children(recursive=True) + [proc]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
    seconds = time.perf_counter() - start
    [t.join() for t in readers]
    return Result(seconds, peak, proc.returncode, b"".join(out).decode(errors="replace"),
                  b"".join(err).decode(errors="replace"))


def importer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "importer", *args]


def check(what: str, r: Result) -> None:
    if r.returncode != 0:
        raise SystemExit(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def list_runs(http: httpx.Client, exp_name: str) -> list[tuple[str, list[str]]]:
    """(run id, metric keys) of every active run of an experiment."""
    r = http.get(API + "experiments/get-by-name", params={"experiment_name": exp_name})
    if r.status_code != 200:
        return []
    exp_id = r.json()["experiment"]["experiment_id"]
    out, token = [], None
    while True:
        body = {"experiment_ids": [exp_id], "max_results": 1000}
        if token:
            body["page_token"] = token
        page = http.post(API + "runs/search", json=body).raise_for_status().json()
        for run in page.get("runs", []):
            out.append((run["info"]["run_id"], sorted({m["key"] for m in run["data"].get("metrics", [])})))
        token = page.get("next_page_token")
        if not token:
            return out


def raw_read(url: str, exp_name: str, in_flight: int, bulk: bool = False) -> tuple[float, int]:
    """Every metric history of an experiment through plain REST calls: runs/search, then
    metrics/get-history paged (max_results 25000), each page parsed. With `bulk`, as importer
    reads: each history's first page from the UI's get-history-bulk, the rest from get-history
    at offset 25000. Returns (seconds, points)."""
    clients = [httpx.Client(base_url=url, timeout=300) for _ in range(in_flight)]
    start = time.perf_counter()
    work: queue.Queue = queue.Queue()
    for run_id, keys in list_runs(clients[0], exp_name):
        for key in keys:
            work.put((run_id, key))
    counts = []

    def worker(client: httpx.Client) -> None:
        n = 0
        while True:
            try:
                run_id, key = work.get_nowait()
            except queue.Empty:
                counts.append(n)
                return
            params = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if bulk:
                page = json.loads(client.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk", params=params)
                                  .raise_for_status().content)
                n += len(page["metrics"])
                if len(page["metrics"]) < 25000:
                    continue
                params["page_token"] = offset_token(25000)
            while True:
                page = json.loads(client.get(API + "metrics/get-history", params=params).raise_for_status().content)
                n += len(page.get("metrics", []))
                params["page_token"] = page.get("next_page_token")
                if not params["page_token"]:
                    break

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.perf_counter() - start, sum(counts)


def count_points(url: str, exp_name: str) -> tuple[int, int]:
    """(runs, points) of an experiment on a server; checks a copy."""
    http = httpx.Client(base_url=url, timeout=300)
    runs = len(list_runs(http, exp_name))
    return runs, raw_read(url, exp_name, 4)[1]


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


class OtherLoad:
    """CPU time used by processes that are not this benchmark's (its servers and commands are its
    descendants), sampled every second: the machine has 2 cores, so anything else running takes
    throughput from the servers and the figures are low by about that share."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds
        self.ours: dict[tuple[int, float], bool] = {}
        self.other = 0.0
        self.stop_ = threading.Event()
        self.sample()
        self.other = 0.0  # what ran before counts from now
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        for p in psutil.process_iter():
            try:
                key = (p.pid, p.create_time())
                if key not in self.ours:
                    self.ours[key] = p.pid == self.me or any(a.pid == self.me for a in p.parents())
                if self.ours[key]:
                    continue
                t = sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
            self.other += t - self.seen.get(key, 0.0)
            self.seen[key] = t

    def loop(self) -> None:
        while not self.stop_.wait(1.0):
            self.sample()

    def wait_quiet(self, below: float, timeout: float) -> float:
        """Wait until other processes used less than `below` of the machine for 2 s, at most
        `timeout` seconds; returns the seconds waited."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            m = self.mark()
            time.sleep(2.0)
            if self.fraction(m) < below:
                break
        return time.perf_counter() - start

    def mark(self) -> tuple[float, float]:
        return time.perf_counter(), self.other

    def fraction(self, since: tuple[float, float]) -> float:
        self.sample()
        return (self.other - since[1]) / ((time.perf_counter() - since[0]) * psutil.cpu_count())

    def share(self, since: tuple[float, float]) -> str:
        wall, cpu = time.perf_counter() - since[0], self.other - since[1]
        return (f"other processes on the machine used {cpu:,.0f} CPU seconds meanwhile "
                f"({cpu / (wall * psutil.cpu_count()):.0%} of its {psutil.cpu_count()} cores)")


# ---------------------------------------------------------------------------------------------
# mlflow-migration, in its own virtualenv
# ---------------------------------------------------------------------------------------------


def find_python312() -> Optional[str]:
    """A Python 3.12 that runs (a pyenv shim on PATH may exist and refuse to)."""
    candidates = [shutil.which("python3.12")] + sorted(
        glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def common_tool(venv: Path, spec: str, mlflow_version: str) -> tuple[Optional[Path], str]:
    """(bin folder, description) of mlflow-migration installed in `venv` with the mlflow-skinny of
    the servers' version, installing it when missing; (None, why) when that cannot be done."""
    probe = ("import importlib.metadata as m; "
             "print(m.version('mlflow-migration'), m.version('mlflow-skinny'))")
    want = spec.split("==")[1] if "==" in spec else None

    def installed() -> Optional[str]:
        py = venv / "bin" / "python"
        if not py.exists():
            return None
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        tool, skinny = r.stdout.split()
        if (want and tool != want) or skinny != mlflow_version:
            return None
        return f"mlflow-migration {tool}, mlflow-skinny {skinny}, {venv}"

    if (have := installed()):
        return venv / "bin", have
    python = find_python312()
    if python is None:
        return None, ("no Python 3.12 found (python3.12 on PATH or ~/.pyenv/versions/3.12*); "
                      "mlflow-migration requires Python >= 3.12")
    print(f"installing {spec} with mlflow-skinny=={mlflow_version} into {venv} ...", flush=True)
    if not (venv / "bin" / "python").exists():
        r = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"python3.12 -m venv failed: {r.stderr.strip()[-500:]}"
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec,
                        f"mlflow-skinny[databricks]=={mlflow_version}"], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if not ln.startswith("WARNING")]
        return None, f"pip install {spec} failed: " + " / ".join(lines[-5:])
    return (venv / "bin", installed()) if installed() else (None, "installed, but the version probe failed")


def count_common_export(out: Path) -> tuple[int, int]:
    """(runs, points) in an mlflow-migration experiment export (run.json: mlflow.metrics)."""
    runs = points = 0
    for run_json in out.glob("*/run.json"):
        doc = json.loads(run_json.read_bytes())
        runs += 1
        points += sum(len(v) for v in doc["mlflow"]["metrics"].values())
    return runs, points


def common_failure(r: Result) -> str:
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["(no output)"])[-1][-300:]


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    seconds: float
    points: int
    peak: Optional[int] = None
    note: str = ""
    other: Optional[float] = None  # share of the machine's CPU other processes used meanwhile

    @property
    def rate(self) -> float:
        return self.points / self.seconds


@dataclass
class Figures:
    name: str
    points: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    best: dict[str, Row] = field(default_factory=dict)  # role -> row
    load: Optional[OtherLoad] = None
    quiet_wait: float = 0.0
    since: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        """Call before each measurement: waits (up to --quiet-wait s) for the rest of the machine
        to be quiet; add() notes how busy it was meanwhile."""
        if self.quiet_wait:
            waited = self.load.wait_quiet(0.10, self.quiet_wait)
            if waited >= self.quiet_wait:
                print(f"  (other processes still busy after {waited:.0f} s; measuring anyway)", flush=True)
        self.since = self.load.mark()

    def add(self, role: Optional[str], row: Row) -> Row:
        row.other = self.load.fraction(self.since)
        self.rows.append(row)
        if role and (role not in self.best or row.rate > self.best[role].rate):
            self.best[role] = row
        mb = f"{row.peak / 2**20:7,.0f} MB" if row.peak is not None else " " * 10
        print(f"  {row.what:58} {row.rate:9,.0f} points/s {row.seconds:6.1f} s {mb}  others {row.other:4.0%}  "
              f"{row.note}", flush=True)
        return row


def ratio(a: Optional[Row], b: Optional[Row]) -> str:
    return f"{a.rate / b.rate:5.2f}x" if a and b else "  n/a"


def bench_workload(name: str, title: str, runs: list[dict], folder: Path, source: LocalServer,
                   dests: dict[str, LocalServer], args, tool_bin: Optional[Path], tool_why: str,
                   load: OtherLoad, importer_only: bool = False) -> Figures:
    since = load.mark()
    points = sum(len(c["step"]) for r in runs for c in r["metrics"].values())
    fig = Figures(name, points, load=load, quiet_wait=args.quiet_wait)
    exp = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    print(f"\n== {name}: {title} = {points:,} points ==", flush=True)
    start = time.perf_counter()
    fill(source.url, exp, runs, folder)
    print(f"  (source filled through REST in {time.perf_counter() - start:.1f} s)", flush=True)
    wait_idle(1.0)
    work = folder / name
    work.mkdir()

    # -- export -------------------------------------------------------------------------------
    # Every server has answered the kind of request measured before any clock starts (a fresh
    # server's first answers are slower), and each repetition measures every contender once, one
    # after the other, so that a drift of the machine touches them all alike.
    if not importer_only:
        raw_read(source.url, exp, args.in_flight[0])
    bundle = work / "bundle"
    for rep in range(args.repeat):
        out = bundle if rep == 0 else work / f"bundle-{rep}"
        fig.start()
        r = measure(importer_cmd("export", "--from", source.url, "--out", str(out), "--experiment", exp, "--json"))
        check("importer export", r)
        got = json.loads((out / "bundle.json").read_text())["counts"]["points"]
        assert got == points, f"the bundle holds {got} points, not {points}"
        parquet = folder_bytes(out, "runs/*/metrics.parquet")
        meta = folder_bytes(out, "**/*.json")
        if rep == 0:
            fig.notes.append(f"bundle: metrics.parquet {parquet / points:.2f} bytes/point ({parquet / 2**20:,.1f} MB), "
                             f"with the JSON documents {(parquet + meta) / points:.2f} (target <= 20)")
            fig.parquet_bpp = parquet / points
        else:
            shutil.rmtree(out)
        fig.add("export", Row("importer export" + _nth(rep, args.repeat), r.seconds, points, r.peak,
                              f"{parquet / points:.2f} B/point"))
        if importer_only:
            continue
        for n, bulk in itertools.product(args.in_flight, (False, True)):
            fig.start()
            seconds, got = raw_read(source.url, exp, n, bulk)
            assert got == points, f"raw read found {got} points, not {points}"
            way = "get-history-bulk first" if bulk else "get-history"
            fig.add("read", Row(f"raw {way} read, {n} in flight{_nth(rep, args.repeat)}", seconds, points))
        if tool_bin is None:
            if rep == 0:
                fig.notes.append(f"mlflow-migration: not measured: {tool_why}")
            continue
        out = work / ("common-export" if rep == 0 else f"common-export-{rep}")
        fig.start()
        r = measure([str(tool_bin / "mlflow-migration-export-experiment"), "--experiment", exp,
                     "--output-dir", str(out)], env={"MLFLOW_TRACKING_URI": source.url}, cwd=work)
        n_runs, got = count_common_export(out) if out.exists() else (0, 0)
        if r.returncode != 0 or n_runs != len(runs) or got != points:
            fig.notes.append(f"mlflow-migration export-experiment failed (exit {r.returncode}, "
                             f"{n_runs} runs, {got:,} points): {common_failure(r)}")
            print(f"  mlflow-migration export-experiment FAILED: {fig.notes[-1]}", flush=True)
            continue
        size = folder_bytes(out, "**/*.json")
        fig.add("common-export", Row("mlflow-migration export-experiment" + _nth(rep, args.repeat), r.seconds,
                                     points, r.peak, f"{size / points:.0f} B/point (JSON)"))
        if rep == 0:
            fig.common_bpp = size / points
            fig.notes.append(f"mlflow-migration export: its JSON {size / points:.0f} bytes/point "
                             f"({size / 2**20:,.1f} MB)")
        else:
            shutil.rmtree(out)

    if args.export_only:
        shutil.rmtree(work)
        return fig

    # -- import, migrate ----------------------------------------------------------------------
    first = runs[0]  # a few points of it warm each destination, as above
    warm = [{**first, "metrics": {k: {c: v[:100] for c, v in cols.items()} for k, cols in first["metrics"].items()}}]
    for role in ("import", "migrate") + (() if importer_only else ("raw",)):
        raw_replay(dests[role].url, warm, folder, args.in_flight[0], args.flavor == "gunicorn")
    keepalive = args.flavor == "gunicorn"
    kind = "kept-alive" if keepalive else "fresh conn"
    best_n = None
    if not importer_only:
        # The write limit's concurrency: one replay at each into the raw destination ...
        sweep = {}
        for n in args.in_flight:
            fig.start()
            sweep[n] = raw_replay(dests["raw"].url, runs, folder, n, keepalive)
            fig.add(None, Row(f"raw log-batch replay, {n} in flight, {kind} (sweep)", sweep[n], points))
        best_n = min(sweep, key=sweep.get)
    for rep in range(args.repeat):
        # ... then the replay at that concurrency as often as the import, in turns with it on the
        # same destination: both meet the same server with its database grown alike (a SQLite
        # store slows as it fills), and the best of each is a best of as many trials.
        def import_once() -> None:
            fig.start()
            again = ["--experiment", f"{exp}-again-{rep}"] if rep else []  # new runs, all points sent
            r = measure(importer_cmd("import", str(bundle), "--tracking-uri", dests["import"].url, *again,
                                     "--state", str(work / f"ledger-import-{rep}.db"), "--quiet", "--json"))
            check("importer import", r)
            summary = json.loads(r.stdout)
            assert summary["runs"]["created"] == len(runs) and summary["points"] == points, summary
            fig.add("import", Row("importer import BUNDLE" + _nth(rep, args.repeat), r.seconds, points, r.peak))

        def replay_once() -> None:
            fig.start()
            seconds = raw_replay(dests["import"].url, runs, folder, best_n, keepalive)
            fig.add("replay", Row(f"raw log-batch replay, {best_n} in flight, {kind}{_nth(rep, args.repeat)}",
                                  seconds, points))

        turns = [import_once] + ([] if importer_only else [replay_once])
        for once in turns[::-1] if rep % 2 else turns:
            once()
        if rep == 0:
            fig.start()
            r = measure(importer_cmd("migrate", "--from", source.url, "--to", dests["migrate"].url, "--experiment",
                                     exp, "--state", str(work / "ledger-migrate.db"), "--quiet", "--json"))
            check("importer migrate", r)
            summary = json.loads(r.stdout)
            assert summary["runs"]["created"] == len(runs) and summary["points"] == points, summary
            fig.add("migrate", Row("importer migrate (server to server)", r.seconds, points, r.peak))
    if not importer_only and tool_bin is not None and "common-export" in fig.best:
        dest_exp = f"common-{exp}"
        fig.start()
        r = measure([str(tool_bin / "mlflow-migration-import-experiment"), "--experiment-name", dest_exp,
                     "--input-dir", str(work / "common-export")],
                    env={"MLFLOW_TRACKING_URI": dests["raw"].url}, cwd=work)
        copied = count_points(dests["raw"].url, dest_exp)
        if r.returncode != 0 or copied != (len(runs), points):
            fig.notes.append(f"mlflow-migration import-experiment failed (exit {r.returncode}, copied "
                             f"{copied[0]} runs, {copied[1]:,} points): {common_failure(r)}")
            print(f"  mlflow-migration import-experiment FAILED: {fig.notes[-1]}", flush=True)
        else:
            fig.add("common-import", Row("mlflow-migration import-experiment", r.seconds, points, r.peak))
    shutil.rmtree(work)  # bundles and exports of a big run are large
    fig.notes.append(load.share(since))
    print(f"  ({fig.notes[-1]})", flush=True)
    return fig


def write_bundle(folder: Path, points: int, keys: int = 5) -> Path:
    """A bundle of one run of `points` (`keys` keys, values and times as make_runs(noisy=True)
    gives them, 25,000-point pages), written by BundleSink as `importer export` writes it, but
    without filling a server first: minutes instead of a quarter of an hour at 5M points."""
    import asyncio
    import numpy as np
    import pyarrow as pa
    from importer.model.bundle import BundleExperiment
    from importer.sinks.bundle import BundleSink
    from importer.model import RunRecord

    steps = points // keys
    writer = BundleSink(folder, "bench_migrate --direct")
    writer.experiment(BundleExperiment(experiment_id="1", name=f"bench-direct-{uuid.uuid4().hex[:6]}"))
    rec = RunRecord(experiment="", import_key="", origin="", name="big", start_time=T0, status="FINISHED",
                    params={f"p{i}": str(i * 0.5) for i in range(20)}, tags={f"t{i}": f"v{i}" for i in range(5)},
                    source_run_id=uuid.uuid4().hex, signature="direct")

    async def pages():
        rng = np.random.default_rng(0)
        for k in range(keys):
            t = T0
            for a in range(0, steps, 25_000):
                s = np.arange(a, min(steps, a + 25_000), dtype=np.int64)
                times = t + np.cumsum(rng.integers(200, 401, len(s)))
                t = int(times[-1])
                values = k + (1 + 0.1 * rng.standard_normal(len(s))) / (1 + s / 1000)
                yield f"m{k}", pa.table({"step": s, "timestamp": times, "value": values})

    asyncio.run(writer.write(rec, "1", None, pages()))
    writer.finish()
    return folder


def bench_direct_import(points: int, folder: Path, dest: LocalServer, load: OtherLoad, args) -> Figures:
    """`importer import` of a bundle written by write_bundle: the memory of the import alone."""
    fig = Figures("C (direct)", points, load=load, quiet_wait=args.quiet_wait)
    print(f"\n== C (direct): one run, 5 keys, {points:,} points, bundle written without a server ==", flush=True)
    bundle = write_bundle(folder / "direct-bundle", points)
    fig.start()
    r = measure(importer_cmd("import", str(bundle), "--tracking-uri", dest.url,
                             "--state", str(folder / "ledger-direct.db"), "--quiet", "--json"))
    check("importer import", r)
    summary = json.loads(r.stdout)
    assert summary["runs"]["created"] == 1 and summary["points"] == points, summary
    fig.add("import", Row("importer import BUNDLE", r.seconds, points, r.peak))
    shutil.rmtree(bundle)
    return fig


def _nth(rep: int, repeat: int) -> str:
    return f" ({rep + 1} of {repeat})" if repeat > 1 else ""


def report(figs: list[Figures]) -> None:
    print("\n== ratios (same run, same servers) ==")
    for fig in figs:
        b = fig.best
        print(f"\n{fig.name} ({fig.points:,} points):")
        if "read" in b:
            print(f"  read limit   {b['read'].rate:10,.0f} points/s  ({b['read'].what})")
        if "replay" in b:
            print(f"  write limit  {b['replay'].rate:10,.0f} points/s  ({b['replay'].what})")
        lines = [("export / read limit", "export", "read", ""),
                 ("export / mlflow-migration export", "export", "common-export", "(target >= 3)"),
                 ("import / write limit", "import", "replay", "(target >= 0.9)"),
                 ("migrate / write limit", "migrate", "replay", ""),
                 ("import / mlflow-migration import", "import", "common-import", ""),
                 ("migrate / (mlflow-migration export + import)", "migrate", None, "")]
        if "read" in b and "replay" in b:
            # A reference for migrate, whose two servers share the machine's cores: reading every
            # point at the read limit, then writing it at the write limit, without overlap.
            both = 1 / (1 / b["read"].rate + 1 / b["replay"].rate)
            b["read+write"] = Row("read limit then write limit", fig.points / both, fig.points)
            print(f"  read then write  {both:6,.0f} points/s  1 / (1/read limit + 1/write limit): the two without overlap")
            lines.insert(4, ("migrate / read then write", "migrate", "read+write", ""))
        for label, a, c, target in lines:
            if a not in b:
                continue
            if c is None:
                if "common-export" in b and "common-import" in b:
                    both = b["common-export"].seconds + b["common-import"].seconds
                    print(f"  {label:46} {b[a].rate / (fig.points / both):5.2f}x")
                continue
            if c in b:
                print(f"  {label:46} {ratio(b[a], b[c])}  {target}")
        peaks = {k: r.peak for k, r in b.items() if r.peak is not None}
        if peaks:
            print("  peak RSS: " + ", ".join(f"{k} {v / 2**20:,.0f} MB" for k, v in peaks.items()))
        for note in fig.notes:
            print(f"  {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="gunicorn", choices=["default", "gunicorn"],
                    help="how the servers are run (default: gunicorn, as the tests and bench_import "
                         "--flavor gunicorn run them)")
    ap.add_argument("--in-flight", default="2,4,8",
                    help="concurrencies of the raw read and replay baselines (default 2,4,8; 1 in flight "
                         "was always the slowest, at half the best, and costs minutes: add it with 1,2,4,8)")
    ap.add_argument("--big", action="store_true",
                    help="also one run of 5M points (importer only, for the 300 MB target; ~15 min more)")
    ap.add_argument("--big-points", default="5000000",
                    help="points of workload C; a comma list (1000000,2000000,5000000) measures one "
                         "run of each size, to compare the peaks of memory")
    ap.add_argument("--export-only", action="store_true",
                    help="measure only the export side: importer export, the raw read, mlflow-migration's export")
    ap.add_argument("--direct", type=int, action="append", metavar="POINTS",
                    help="(repeatable) only `importer import` of a bundle of one run of POINTS points "
                         "written straight to disk, with no source server to fill: its peak RSS")
    ap.add_argument("--only", choices=["A", "B", "C"], action="append",
                    help="run only these workloads (repeatable)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's steps (a quick try: 0.05)")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each measurement, wait up to this many seconds until other processes "
                         "use < 10%% of the machine (0: never wait)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure every contender this many times, in turns (export, raw reads, "
                         "mlflow-migration's export; import, raw replays), the best of each counting")
    ap.add_argument("--skip-common", action="store_true", help="do not measure mlflow-migration")
    ap.add_argument("--common-venv", type=Path, default=Path("/tmp/mlflow-migration-venv"),
                    help="virtualenv for mlflow-migration (Python 3.12; created when missing)")
    ap.add_argument("--common-spec", default=COMMON_SPEC)
    args = ap.parse_args()
    args.in_flight = [int(x) for x in args.in_flight.split(",")]
    # importer is measured as an installed copy runs, with its modules compiled: an editable
    # checkout under PYTHONDONTWRITEBYTECODE=1 would compile them at every start (about 0.1 s).
    compileall.compile_dir(ROOT / "importer", quiet=1)
    from importlib.metadata import version
    mlflow_version = version("mlflow")

    tool_bin, tool_why = None, "--skip-common"
    if not args.skip_common:
        tool_bin, tool_why = common_tool(args.common_venv, args.common_spec, mlflow_version)
        print(f"common tool: {tool_why}", flush=True)

    workloads = [] if args.direct and not args.only else args.only or (["A", "B"] + (["C"] if args.big else []))
    with tempfile.TemporaryDirectory(prefix="importer-bench-migrate-") as tmp:
        folder = Path(tmp)
        workers = 4 if args.flavor == "default" else 2
        roles = ("source",) if args.export_only else ("source", "import", "migrate", "raw")
        servers = {role: LocalServer(folder / role, flavor=args.flavor, workers=workers) for role in roles}
        print(f"starting {len(roles)} mlflow {mlflow_version} servers ({args.flavor}, {workers} workers): "
              f"{', '.join(roles)} ...", flush=True)
        starters = [threading.Thread(target=s.start) for s in servers.values()]
        try:
            [t.start() for t in starters]
            [t.join() for t in starters]
            for s in servers.values():
                if s.process is None or s.process.poll() is not None:
                    raise SystemExit(f"a server did not start; see {s.folder / 'server.log'}")
            wait_idle()
            load = OtherLoad()
            dests = {k: v for k, v in servers.items() if k != "source"}
            figs = []
            started = time.perf_counter()
            if "A" in workloads:
                figs.append(bench_workload("A", "20 runs x 10 keys x 1000 steps, 20 params, 5 tags, 2 artifacts each",
                                           make_runs(folder, 20, 10, int(1000 * args.scale)), folder, servers["source"], dests,
                                           args, tool_bin, tool_why, load))
            if "B" in workloads:
                figs.append(bench_workload("B", "one run, 5 keys x 100,000 steps, 20 params, 5 tags, 2 artifacts",
                                           make_runs(folder, 1, 5, int(100_000 * args.scale), noisy=True), folder, servers["source"], dests,
                                           args, tool_bin, tool_why, load))
            sizes = [int(x) for x in args.big_points.split(",")]
            for size in sizes if "C" in workloads else []:
                steps = int(size * args.scale) // 5
                name = "C" if len(sizes) == 1 else f"C{steps * 5:_}"
                figs.append(bench_workload(name, f"one run, 5 keys x {steps:,} steps (importer only)",
                                           make_runs(folder, 1, 5, steps, noisy=True), folder, servers["source"], dests,
                                           args, tool_bin, tool_why, load, importer_only=True))
            for n in args.direct or []:
                figs.append(bench_direct_import(n, folder, servers["import"], load, args))
            report(figs)
            peaks = [(f.points, f.best["export"].peak) for f in figs if f.name.startswith("C")]
            if len(peaks) > 1:
                print("\npeak RSS of export by run size: "
                      + ", ".join(f"{n:,} points {peak / 2**20:,.0f} MB" for n, peak in peaks))
            print(f"\n(measured in {time.perf_counter() - started:.0f} s)")
        finally:
            for s in servers.values():
                s.stop()


if __name__ == "__main__":
    main()
