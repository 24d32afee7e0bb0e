"""Import throughput and memory, against baselines measured in the same run on the same server.

    python bench/bench_import.py [--flavor default|gunicorn] [--runs 20] [--big-points 5000000]

Starts its own `mlflow server` (SQLite, loopback), builds 20 runs x 10 metric keys x 1000 steps with
20 params, 5 tags and 2 small artifacts each, and measures, each into a fresh experiment:

1. `importer import` of that manifest, as a user runs it (a new process: start-up, parse, send),
   twice, the better counting;
2. a raw `runs/log-batch` replay of the same runs, bodies built before the clock starts, with 1, 2,
   4 and 8 requests in flight on kept-alive connections, and again on fresh connections; the best is
   "the limit";
3. `MlflowClient.log_batch`, one run at a time (how the common migration tool writes);
4. the importer's peak RSS importing one run of --big-points points (0 skips it).

Prints points/s and the ratios. Targets: >= 0.9x the limit, >= 2.5x the client loop, <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from importer.local_server import LocalServer  # noqa: E402

API = "/api/2.0/mlflow/"


def build_manifest(folder: Path, experiment: str, runs: int, keys: int, steps: int) -> tuple[Path, list[dict]]:
    (folder / "art").mkdir(parents=True, exist_ok=True)
    (folder / "art" / "model.bin").write_bytes(os.urandom(20_000))
    (folder / "art" / "config.json").write_text(json.dumps({"layers": [64, 64]}))
    t0 = 1_600_000_000_000
    out = []
    for r in range(runs):
        out.append({
            "id": f"run-{r}", "name": f"run-{r}", "start_time": t0 + r * 10_000_000,
            "end_time": t0 + r * 10_000_000 + steps * 1000,
            "params": {f"p{i}": i * 0.5 + r for i in range(20)},
            "tags": {f"t{i}": f"v{i}" for i in range(5)},
            "metrics": {f"m{k}": {"step": list(range(steps)),
                                  "value": [(s * 0.001 + k + r) / 3 for s in range(steps)],
                                  "timestamp": [t0 + r * 10_000_000 + s * 1000 for s in range(steps)]}
                        for k in range(keys)},
            "artifacts": [{"path": "art/model.bin"}, {"path": "art/config.json"}],
        })
    path = folder / f"{experiment}.json"
    path.write_text(json.dumps({"format_version": 1, "experiment": experiment, "runs": out}))
    return path, out


def create_experiment(http: httpx.Client, name: str) -> str:
    return http.post(API + "experiments/create", json={"name": name}).raise_for_status().json()["experiment_id"]


def raw_replay(url: str, runs: list[dict], folder: Path, in_flight: int, keepalive: bool) -> float:
    """The same runs through plain REST calls; returns seconds for the whole job."""
    http = httpx.Client(base_url=url, timeout=300)
    exp = create_experiment(http, f"raw-{uuid.uuid4().hex[:8]}")
    bodies: list[tuple[int, bytes]] = []  # (run index, log-batch body); run ids filled in below
    for i, run in enumerate(runs):
        points = [{"key": k, "value": v, "timestamp": t, "step": s}
                  for k, cols in run["metrics"].items()
                  for s, v, t in zip(cols["step"], cols["value"], cols["timestamp"])]
        for j in range(0, len(points), 1000):
            bodies.append((i, json.dumps({"metrics": points[j:j + 1000]})[1:]))  # without the leading '{'
    artifacts = [(folder / "art" / "model.bin").read_bytes(), (folder / "art" / "config.json").read_bytes()]
    limits = httpx.Limits(max_keepalive_connections=in_flight if keepalive else 0)
    clients = [httpx.Client(base_url=url, timeout=300, limits=limits) for _ in range(in_flight)]

    start = time.perf_counter()
    run_ids, art_uris = [], []
    for run in runs:
        r = http.post(API + "runs/create", json={
            "experiment_id": exp, "start_time": run["start_time"], "run_name": run["name"],
            "tags": [{"key": k, "value": v} for k, v in run["tags"].items()]}).raise_for_status().json()["run"]
        run_ids.append(r["info"]["run_id"])
        art_uris.append(r["info"]["artifact_uri"].split(":", 1)[1].lstrip("/"))
        http.post(API + "runs/log-batch", json={"run_id": run_ids[-1], "params": [
            {"key": k, "value": str(v)} for k, v in run["params"].items()]}).raise_for_status()
    work: queue.Queue = queue.Queue()
    for i, body in bodies:
        work.put(f'{{"run_id":"{run_ids[i]}",{body}'.encode())

    def worker(client: httpx.Client) -> None:
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            client.post(API + "runs/log-batch", content=body,
                        headers={"Content-Type": "application/json"}).raise_for_status()

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for run, run_id, root in zip(runs, run_ids, art_uris):
        for name, data in zip(("model.bin", "config.json"), artifacts):
            http.put(f"/api/2.0/mlflow-artifacts/artifacts/{root}/{name}", content=data).raise_for_status()
        http.post(API + "runs/update", json={"run_id": run_id, "status": "FINISHED",
                                             "end_time": run["end_time"]}).raise_for_status()
    return time.perf_counter() - start


def client_loop(url: str, runs: list[dict], folder: Path) -> float:
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run" line per run
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.create_experiment(f"client-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    for run in runs:
        r = client.create_run(exp, start_time=run["start_time"], run_name=run["name"], tags=run["tags"])
        metrics = [Metric(k, v, t, s) for k, cols in run["metrics"].items()
                   for s, v, t in zip(cols["step"], cols["value"], cols["timestamp"])]
        client.log_batch(r.info.run_id, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in run["params"].items()],
                         tags=[RunTag(k, v) for k, v in run["tags"].items()])
        client.log_artifact(r.info.run_id, str(folder / "art" / "model.bin"))
        client.log_artifact(r.info.run_id, str(folder / "art" / "config.json"))
        client.set_terminated(r.info.run_id, "FINISHED", end_time=run["end_time"])
    return time.perf_counter() - start


def measure(args: list) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of a command in a new process."""
    start = time.perf_counter()
    proc = psutil.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    return seconds, peak, out.decode()


def run_importer(url: str, manifest: Path, state: Path) -> tuple[float, int, str]:
    """`python -m importer import` as a user runs it."""
    return measure([sys.executable, "-m", "importer", "import", str(manifest), "--tracking-uri", url,
                    "--state", str(state), "--quiet"])


def stall(url: str, n: int = 40) -> None:
    """Median latency of one-point log-batch requests, one at a time, on one kept-alive connection
    and on a fresh connection each: the keep-alive stall, if the server has it."""
    http = httpx.Client(base_url=url, timeout=60)
    run_id = http.post(API + "runs/create", json={"experiment_id": create_experiment(http, f"stall-{uuid.uuid4().hex[:8]}")}).json()["run"]["info"]["run_id"]
    for keepalive in (True, False):
        client = httpx.Client(base_url=url, timeout=60,
                              limits=httpx.Limits(max_keepalive_connections=1 if keepalive else 0))
        times = []
        for i in range(n):
            start = time.perf_counter()
            client.post(API + "runs/log-batch", json={"run_id": run_id, "metrics": [
                {"key": "m", "value": i, "timestamp": i, "step": i}]}).raise_for_status()
            times.append(time.perf_counter() - start)
        kind = "kept-alive" if keepalive else "fresh conn"
        print(f"one-point log-batch, 1 at a time, {kind}: median {sorted(times)[n // 2] * 1000:5.1f} ms", flush=True)


def wait_idle(seconds: float = 3.0) -> None:
    """Let the server's start-up work finish before timing anything."""
    psutil.cpu_percent(interval=None)
    for _ in range(60):
        if psutil.cpu_percent(interval=seconds) < 25:
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="default", choices=["default", "gunicorn"],
                    help="how the server is run (default: as `mlflow server` starts it)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--big-points", type=int, default=5_000_000)
    ap.add_argument("--skip-client", action="store_true", help="skip the MlflowClient loop")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="importer-bench-") as tmp:
        folder = Path(tmp)
        server = LocalServer(folder / "server", flavor=args.flavor, workers=4 if args.flavor == "default" else 2)
        print(f"starting mlflow server ({args.flavor}) ...", flush=True)
        server.start()
        try:
            wait_idle()
            url = server.url
            points = args.runs * args.keys * args.steps
            print(f"{args.runs} runs x {args.keys} keys x {args.steps} steps = {points:,} points, "
                  f"20 params, 5 tags, 2 artifacts each\n", flush=True)

            # Measured twice into fresh experiments, as the limit below is the best of eight.
            imp = 0.0
            for attempt in (1, 2):
                manifest, runs = build_manifest(folder, f"bench-importer-{attempt}", args.runs, args.keys, args.steps)
                seconds, rss, _ = run_importer(url, manifest, folder / "ledger.db")
                imp = max(imp, points / seconds)
                print(f"importer import (#{attempt})    {points / seconds:9,.0f} points/s   {seconds:6.1f} s   "
                      f"peak RSS {rss / 2**20:,.0f} MB", flush=True)

            stall(url)
            best = 0.0
            for keepalive in (True, False):
                for n in (1, 2, 4, 8):
                    s = raw_replay(url, runs, folder, n, keepalive)
                    best = max(best, points / s)
                    kind = "kept-alive" if keepalive else "fresh conn"
                    print(f"raw replay {n} in flight, {kind}  {points / s:9,.0f} points/s   {s:6.1f} s", flush=True)

            if not args.skip_client:
                s = client_loop(url, runs, folder)
                loop = points / s
                print(f"MlflowClient.log_batch loop {loop:9,.0f} points/s   {s:6.1f} s", flush=True)

            print(f"\nimporter / raw limit   {imp / best:5.2f}x   (target >= 0.9)")
            if not args.skip_client:
                print(f"importer / client loop {imp / loop:5.2f}x   (target >= 2.5)")

            if args.big_points:
                steps = args.big_points // 5
                doc = {"experiment": "bench-big", "id": "big", "name": "big", "start_time": 1_600_000_000_000,
                       "metrics": {f"k{k}": {"step": list(range(steps)), "value": [s / 7 for s in range(steps)],
                                             "timestamp": [1_600_000_000_000 + s for s in range(steps)]}
                                   for k in range(5)}}
                big = folder / "big.json"
                with open(big, "w") as f:
                    json.dump(doc, f)
                del doc
                print(f"\none run of {steps * 5:,} points ({big.stat().st_size / 2**20:,.0f} MB manifest) ...", flush=True)
                seconds, rss, _ = run_importer(url, big, folder / "ledger-big.db")
                print(f"importer import          {steps * 5 / seconds:9,.0f} points/s   {seconds:6.1f} s   "
                      f"peak RSS {rss / 2**20:,.0f} MB   (target <= 300 MB)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
