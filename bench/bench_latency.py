"""Import throughput against a far server: through a real proxy process adding latency, beside the
local figure, each against the raw replay measured in the same run on the same server.

    python bench/bench_latency.py [--latency 0,50,200] [--turns 2] [--flavor default]
                                  [--runs 10 --keys 10 --steps 1000] [--import-in-flight 16]
                                  [--busy 1] [--compare OTHER_CHECKOUT]

Starts one `mlflow server` (SQLite, loopback) and, per latency L > 0, one `tests/proxy.py
--latency-ms L` in front of it (each request waits L/2 before it is forwarded and L/2 before it is
answered: one round trip of a link with L ms of latency); L = 0 is the server itself. Then, each
into a fresh experiment:

1. the raw replay once at each of --replay-in-flight (2, 4, 8, 16, 32) per latency, to find its
   best concurrency there;
2. --turns times, latencies in turn: `importer import` of the manifest as a user runs it (a new
   process, default settings unless --import-in-flight), then the replay at its best concurrency.

The raw replay writes what the import writes (its experiment, runs/create with the tags, params
in a log-batch, the metric log-batches, 2 artifacts, runs/update) with request bodies built before
the clock starts and every phase spread over N requests in flight (the runs' creates, then the batches, then the
artifacts and updates): none of the import's lookups and checks, and no process start. The ratio
is import / replay points/s, by bests and by means of the turns. --busy N keeps N other processes
spinning on the CPU from the first replay to the end: a busy machine, the same for both.
"""

from __future__ import annotations

import argparse
import compileall
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
from statistics import mean

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_import import API, ROOT, build_manifest, create_experiment  # noqa: E402

from importer.local_server import LocalServer, free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import proxy  # noqa: E402  (tests/proxy.py: the fault tests' proxy, here a far link)

def start_proxy(upstream: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    return proxy.start(upstream, free_port(), max_seconds=7200, latency_ms=latency_ms)


def _refused(resp: httpx.Response) -> None:
    """Raise on an error answer, with what the server said."""
    if resp.is_error:
        resp.read()
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:500]}")


def replay(url: str, runs: list[dict], folder: Path, in_flight: int) -> float:
    """The runs through plain REST calls, N in flight in every phase; returns seconds, from the
    creation of its experiment on (the import creates its own too)."""
    setup = httpx.Client(base_url=url, timeout=300)
    start = time.perf_counter()
    exp = create_experiment(setup, f"raw-{uuid.uuid4().hex[:8]}")
    built = time.perf_counter()
    batches: list[tuple[int, str]] = []  # (run index, log-batch body without its run id)
    for i, run in enumerate(runs):
        points = [{"key": k, "value": v, "timestamp": t, "step": s}
                  for k, cols in run["metrics"].items()
                  for s, v, t in zip(cols["step"], cols["value"], cols["timestamp"])]
        for j in range(0, len(points), 1000):
            batches.append((i, json.dumps({"metrics": points[j:j + 1000]})[1:]))
    artifacts = {"model.bin": (folder / "art" / "model.bin").read_bytes(),
                 "config.json": (folder / "art" / "config.json").read_bytes()}
    clients = [httpx.Client(base_url=url, timeout=300, event_hooks={"response": [_refused]})
               for _ in range(in_flight)]
    run_ids: list[str] = [""] * len(runs)
    roots: list[str] = [""] * len(runs)

    def create(i: int, http: httpx.Client) -> None:
        run = runs[i]
        info = http.post(API + "runs/create", json={
            "experiment_id": exp, "start_time": run["start_time"], "run_name": run["name"],
            "tags": [{"key": k, "value": v} for k, v in run["tags"].items()]}).json()["run"]["info"]
        run_ids[i], roots[i] = info["run_id"], info["artifact_uri"].split(":", 1)[1].lstrip("/")
        http.post(API + "runs/log-batch", json={"run_id": run_ids[i], "params": [
            {"key": k, "value": str(v)} for k, v in run["params"].items()]})

    def log(item: tuple[int, str], http: httpx.Client) -> None:
        i, body = item
        http.post(API + "runs/log-batch", content=f'{{"run_id":"{run_ids[i]}",{body}'.encode(),
                  headers={"Content-Type": "application/json"})

    def finish(i: int, http: httpx.Client) -> None:
        for name, data in artifacts.items():
            http.put(f"/api/2.0/mlflow-artifacts/artifacts/{roots[i]}/{name}", content=data)
        http.post(API + "runs/update", json={"run_id": run_ids[i], "status": "FINISHED",
                                             "end_time": runs[i]["end_time"]})

    def spread(work, items) -> None:
        todo: queue.Queue = queue.Queue()
        for item in items:
            todo.put(item)
        errors: list[BaseException] = []

        def worker(http: httpx.Client) -> None:
            while not errors:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    work(item, http)
                except BaseException as e:
                    errors.append(e)
        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        [t.start() for t in threads]
        [t.join() for t in threads]
        if errors:
            raise errors[0]

    start += time.perf_counter() - built  # building the bodies is not counted
    spread(create, range(len(runs)))
    spread(log, batches)
    spread(finish, range(len(runs)))
    seconds = time.perf_counter() - start
    for c in clients + [setup]:
        c.close()
    return seconds


def timed(args: list, cwd: Path) -> float:
    """Seconds a command takes in a new process, run in `cwd` (a checkout of importer)."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, env={**os.environ, "PYTHONPATH": str(cwd)})
    if done.returncode:
        raise SystemExit(f"{args} failed ({done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()}")
    return time.perf_counter() - start


class Load:
    """The machine's load while something is measured: CPU of every process, 1-minute load average."""

    def __enter__(self) -> "Load":
        psutil.cpu_percent(interval=None)
        self.load = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        self.cpu = psutil.cpu_percent(interval=None)
        self.load = max(self.load, os.getloadavg()[0])

    def __str__(self) -> str:
        return f"machine CPU {self.cpu:3.0f}%, load {self.load:4.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="default", choices=["default", "gunicorn"],
                    help="how the server is run (default: as `mlflow server` starts it)")
    ap.add_argument("--latency", default="0,50,200", help="ms per request added by the proxy; 0: none")
    ap.add_argument("--turns", type=int, default=2, help="import, replay: this many times per latency")
    ap.add_argument("--replay-in-flight", default="2,4,8,16,32")
    ap.add_argument("--import-in-flight", type=int, default=None,
                    help="pass --in-flight to the import (default: its own default)")
    ap.add_argument("--busy", type=int, default=0, help="processes kept spinning meanwhile (a busy machine)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="another checkout of importer (say, before a change), measured too in every turn")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    latencies = [float(x) for x in args.latency.split(",")]
    candidates = [int(x) for x in args.replay_in_flight.split(",")]
    points = args.runs * args.keys * args.steps
    trees = {"import": ROOT, **({"compared": args.compare.resolve()} if args.compare else {})}
    for tree in trees.values():
        compileall.compile_dir(tree / "importer", quiet=1)  # as an installed copy runs
    began, load_before = time.monotonic(), os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="importer-latency-") as tmp:
        folder = Path(tmp)
        server = LocalServer(folder / "server", flavor=args.flavor, workers=4 if args.flavor == "default" else 2)
        print(f"starting mlflow server ({args.flavor}) ...", flush=True)
        server.start()
        proxies: list[subprocess.Popen] = []  # and the --busy spinners
        try:
            # The server's start-up work (its job runner) ends within a minute; other jobs on a
            # busy machine may never let the CPU fall below 25%, so do not wait for more.
            psutil.cpu_percent(interval=None)
            for _ in range(20):
                if psutil.cpu_percent(interval=3) < 25:
                    break
            urls = {}
            for lat in latencies:
                if lat:
                    proc, urls[lat] = start_proxy(server.url, lat)
                    proxies.append(proc)
                else:
                    urls[lat] = server.url
            proxies += [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
            print(f"{args.runs} runs x {args.keys} keys x {args.steps} steps = {points:,} points, 20 params, "
                  f"5 tags, 2 artifacts each; load average before {load_before[0]:.1f} {load_before[1]:.1f}"
                  + (f"; {args.busy} other processes spinning" if args.busy else "") + "\n", flush=True)
            count = 0

            def new_manifest() -> tuple[Path, list[dict]]:
                nonlocal count
                count += 1
                return build_manifest(folder, f"bench-latency-{count}", args.runs, args.keys, args.steps)

            _, runs = new_manifest()
            best_n: dict[float, int] = {}
            for lat in latencies:
                rates = {}
                for n in candidates:
                    try:
                        with Load() as load:
                            rates[n] = points / replay(urls[lat], runs, folder, n)
                    except RuntimeError as e:  # the raw replay does not retry: a concurrency too high
                        if "QueuePool limit" not in str(e):  # for the server is no candidate
                            raise
                        print(f"{lat:5.0f} ms  replay {n:2d} in flight            server out of database "
                              "connections (400 QueuePool limit): left out", flush=True)
                        continue
                    print(f"{lat:5.0f} ms  replay {n:2d} in flight            {rates[n]:8,.0f} points/s   {load}",
                          flush=True)
                best_n[lat] = max(rates, key=rates.get)
            rates_of = {name: {lat: [] for lat in latencies} for name in trees}
            imports = rates_of["import"]
            replays: dict[float, list[float]] = {lat: [] for lat in latencies}
            flags = ["--in-flight", str(args.import_in_flight)] if args.import_in_flight else []
            for turn in range(1, args.turns + 1):
                for lat in latencies:
                    for name, tree in trees.items():
                        manifest, _ = new_manifest()
                        with Load() as load:
                            seconds = timed([sys.executable, "-m", "importer", "import", str(manifest),
                                             "--tracking-uri", urls[lat], "--state",
                                             str(folder / f"ledger-{count}.db"), "--quiet", *flags], tree)
                        rates_of[name][lat].append(points / seconds)
                        print(f"{lat:5.0f} ms  {name:8s} (turn {turn})            {points / seconds:8,.0f} "
                              f"points/s   {load}", flush=True)
                    with Load() as load:
                        replays[lat].append(points / replay(urls[lat], runs, folder, best_n[lat]))
                    print(f"{lat:5.0f} ms  replay {best_n[lat]:2d} in flight (turn {turn}) {replays[lat][-1]:8,.0f} "
                          f"points/s   {load}", flush=True)

            print(f"\nimporter import{' --in-flight ' + str(args.import_in_flight) if flags else ' (defaults)'} "
                  "/ raw replay at its best concurrency, same server, same run:")
            for lat in latencies:
                where = "local (no proxy)" if not lat else f"{lat:.0f} ms per request"
                turns = ", ".join(f"{i / r:.2f}x" for i, r in zip(imports[lat], replays[lat]))
                print(f"  {where:20s} by bests {max(imports[lat]) / max(replays[lat]):5.2f}x   by means "
                      f"{mean(imports[lat]) / mean(replays[lat]):5.2f}x   turns {turns}   "
                      f"(import {max(imports[lat]):,.0f}, replay {max(replays[lat]):,.0f} points/s at "
                      f"{best_n[lat]} in flight)")
                if args.compare:
                    old = rates_of["compared"][lat]
                    print(f"  {'':20s} compared checkout: by bests {max(old) / max(replays[lat]):5.2f}x   "
                          f"by means {mean(old) / mean(replays[lat]):5.2f}x   turns "
                          + ", ".join(f"{i / r:.2f}x" for i, r in zip(old, replays[lat])))
            after = os.getloadavg()
            print(f"target >= 0.9x; load average before {load_before[0]:.1f}, after {after[0]:.1f}; "
                  f"{time.monotonic() - began:.0f} s in all")
        finally:
            for proc in proxies:
                proc.terminate()
                proc.wait()
            server.stop()


if __name__ == "__main__":
    main()
