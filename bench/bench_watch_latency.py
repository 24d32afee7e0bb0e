"""The daemon's latency: from a file's last write to its points being on the server.

    python bench/bench_watch_latency.py [--files 200] [--settle 1] [--every 0.25] [--polling SECONDS]

Starts one `mlflow server` (SQLite, loopback) and `importer watch` on an empty folder (a new
process, --log-json), then writes --files small Keras CSV files, one every --every seconds, as
trainers finishing one after another. A file's latency is the time of the daemon's `imported` log
line for it minus the file's modification time: the line is written once the pass that imported it
returned, so after its points landed (an upper bound). Prints median and p95 beside the settle
time, which is the floor: a unit is imported only once quiet that long.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median, quantiles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from importer.local_server import LocalServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--polling", type=float, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "logs"
        folder.mkdir()
        server = LocalServer(tmp / "mlflow").start()
        log_path = tmp / "watch.log"
        extra = ["--polling", str(args.polling)] if args.polling else []
        with open(log_path, "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "importer", "watch", str(folder), "--tracking-uri", server.url,
                 "--state", str(tmp / "ledger.db"), "--settle", str(args.settle), "--finish-after", "0",
                 "--log-json", *extra], cwd=ROOT, stderr=log)
        try:
            while b'"started"' not in log_path.read_bytes():
                time.sleep(0.1)
            written = {}
            for i in range(args.files):
                path = folder / f"run{i:04d}.csv"
                path.write_text(f"epoch,loss\n0,{1 / (i + 2)}\n1,{1 / (i + 3)}\n")
                written[str(path)] = path.stat().st_mtime
                time.sleep(args.every)
            deadline = time.monotonic() + 120 + args.files
            while True:
                events = [json.loads(line) for line in log_path.read_text().splitlines()]
                done = {e["unit"]: e["time"] for e in events if e["event"] == "imported"}
                if len(done) >= args.files or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
            server.stop()
    latency = sorted(datetime.fromisoformat(done[p].replace("Z", "+00:00")).timestamp() - mtime
                     for p, mtime in written.items() if p in done)
    observer = f"polling every {args.polling:g} s" if args.polling else "native observer"
    print(f"{len(latency)} of {args.files} files imported ({observer}, one written every {args.every:g} s)")
    if len(latency) >= 2:
        print(f"latency from last write to points on the server: median {median(latency):.2f} s, "
              f"p95 {quantiles(latency, n=20)[-1]:.2f} s, max {latency[-1]:.2f} s; --settle {args.settle:g} s")


if __name__ == "__main__":
    main()
