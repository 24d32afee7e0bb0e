"""The registration service against `importer import` of the same manifests, in the same run, on
the same server.

    python bench/bench_service.py [--small 20] [--large-points 1000000]

Starts its own `mlflow server` (SQLite, loopback) and `importer serve`, and measures, each
contender into a fresh experiment:

1. small manifests (1 run, 1 metric, 100 points each): posted one after another by one client,
   each answered 201 when its run is written (?wait); posted by 4 clients at once; against one
   `importer import` process per manifest (as a training box would run it per run) and one
   `importer import` of all of them at once;
2. one large manifest (1 run, --large-points points): posted, against `importer import` of the
   file, --rounds times each, in turns; the service's peak RSS during the post (sampled every
   20 ms) against the import's.

Prints manifests/s, points/s and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import import measure  # noqa: E402
from importer.local_server import LocalServer, free_port  # noqa: E402


def manifest(experiment: str, key: str, points: int) -> bytes:
    t0 = 1_600_000_000_000
    return json.dumps({"format_version": 1, "experiment": experiment, "runs": [{
        "id": key, "name": key, "start_time": t0, "params": {"lr": 0.001, "layers": 4},
        "metrics": {"loss": {"step": list(range(points)), "value": [1 / (s + 1) for s in range(points)],
                             "timestamp": [t0 + s * 10 for s in range(points)]}}}]}).encode()


class Peak:
    """The peak RSS of a process, sampled every 20 ms while in a `with` block."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def post(http: httpx.Client, body: bytes) -> dict:
    answer = http.post("/v1/runs", params={"wait": 3600}, content=body,
                       headers={"content-type": "application/json"})
    if answer.status_code != 201 or answer.json()["state"] != "done":
        raise SystemExit(f"the service answered {answer.status_code}: {answer.text[:500]}")
    return answer.json()


def import_files(url: str, files: list[Path], state: Path) -> float:
    seconds, _, _ = measure([sys.executable, "-m", "importer", "import", *map(str, files),
                             "--tracking-uri", url, "--state", str(state), "--quiet"])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=20, help="small manifests per contender")
    ap.add_argument("--large-points", type=int, default=1_000_000, help="0 skips the large manifest")
    ap.add_argument("--rounds", type=int, default=2, help="of the large manifest, each contender")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = LocalServer(tmp / "mlflow").start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env["PYTHONPATH"] = str(ROOT)
        service = subprocess.Popen([sys.executable, "-m", "importer", "serve", "--tracking-uri", server.url,
                                    "--port", str(port), "--spool", str(tmp / "spool"),
                                    "--state", str(tmp / "service-ledger.db")],
                                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/healthz").raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the service did not start")
                    time.sleep(0.1)
            post(http, manifest("warm-up", "w", 10))  # the first import loads the sources
            print(f"MLflow {server.url}, service on port {port}; {args.small} small manifests of 100 points")

            n, results = args.small, {}
            bodies = [manifest("svc-seq", f"r{i}", 100) for i in range(n)]
            start = time.perf_counter()
            for body in bodies:
                post(http, body)
            results["service, 1 client"] = time.perf_counter() - start

            bodies = [manifest("svc-par", f"r{i}", 100) for i in range(n)]
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda b: post(http, b), bodies))
            results["service, 4 clients"] = time.perf_counter() - start

            files = []
            for i in range(n):
                files.append(tmp / f"each-{i}.json")
                files[-1].write_bytes(manifest("import-each", f"r{i}", 100))
            start = time.perf_counter()
            for f in files:
                import_files(server.url, [f], tmp / "ledger-each.db")
            results["importer import, a process each"] = time.perf_counter() - start

            files = []
            for i in range(n):
                files.append(tmp / f"all-{i}.json")
                files[-1].write_bytes(manifest("import-all", f"r{i}", 100))
            results["importer import, all in one"] = import_files(server.url, files, tmp / "ledger-all.db")

            base = results["importer import, a process each"]
            for name, seconds in results.items():
                print(f"  {name:34s} {seconds:7.2f} s  {n / seconds:7.1f} manifests/s  "
                      f"{n * 100 / seconds:9,.0f} points/s  {base / seconds:5.2f}x a process each")

            if args.large_points:
                p = args.large_points
                print(f"one manifest of {p:,} points ({len(manifest('x', 'big', p)) / 2**20:,.0f} MB of JSON), "
                      f"{args.rounds} rounds in turns (the machine's load swings): the best of each")
                svc, imp = [], []
                for r in range(args.rounds):
                    def by_service():
                        body = manifest(f"svc-large-{r}", "big", p)
                        with Peak(service.pid) as peak:
                            start = time.perf_counter()
                            post(http, body)
                            svc.append((time.perf_counter() - start, peak.peak))

                    def by_import():
                        big = tmp / f"big-{r}.json"
                        big.write_bytes(manifest(f"import-large-{r}", "big", p))
                        seconds, rss, _ = measure([sys.executable, "-m", "importer", "import", str(big),
                                                   "--tracking-uri", server.url, "--state",
                                                   str(tmp / "ledger-big.db"), "--quiet"])
                        imp.append((seconds, rss))

                    for contender in ((by_service, by_import) if r % 2 == 0 else (by_import, by_service)):
                        contender()
                for name, figures in (("service", svc), ("importer import", imp)):
                    print(f"  {name:34s} " + ", ".join(f"{s:6.1f} s" for s, _ in figures)
                          + f"  best {p / min(s for s, _ in figures):9,.0f} points/s"
                          f"  peak RSS {max(m for _, m in figures) / 2**20:,.0f} MB"
                          + (" (the whole service process)" if name == "service" else ""))
                print(f"  service / import: {min(s for s, _ in imp) / min(s for s, _ in svc):.2f}x the speed, "
                      f"{max(m for _, m in svc) / max(m for _, m in imp):.2f}x the peak memory")
        finally:
            service.terminate()
            service.wait(60)
            server.stop()


if __name__ == "__main__":
    main()
