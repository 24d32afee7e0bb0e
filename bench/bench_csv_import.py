"""Peak RSS of a whole `importer import` of generated CSVs of two sizes, against `importer validate`
of the same files in the same run (the parse-only baseline).

    python bench/bench_csv_import.py [--points 2000000 10000000] [--columns 10]

Each file is --columns metric columns and a step column (rows = points / columns: 1M rows x 10
columns for 10 million points). Starts one `mlflow server` (gunicorn flavour, SQLite, loopback);
each import is a new process (`importer import FILE --format csv --step-column step`) into a fresh
experiment with a fresh ledger, run to the end; the points on the server are then counted through
REST (unless --no-count).
Prints both peaks and their ratio: the points are streamed from the file to the server, so the
peak should not grow with the number of points (target <= 300 MB, issue 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import import measure  # noqa: E402
from bench_parse import write_csv  # noqa: E402
from importer.local_server import LocalServer  # noqa: E402

API = "/api/2.0/mlflow/"


def points_on_server(url: str, experiment: str) -> int:
    """Every point of every metric of the experiment's runs, read back page by page."""
    http = httpx.Client(base_url=url, timeout=300)
    exp_id = http.get(API + "experiments/get-by-name", params={"experiment_name": experiment}
                      ).raise_for_status().json()["experiment"]["experiment_id"]
    runs = http.post(API + "runs/search", json={"experiment_ids": [exp_id]}).raise_for_status().json()["runs"]
    total = 0
    for run in runs:
        for key in {m["key"] for m in run["data"].get("metrics", [])}:
            token = None
            while True:
                params = {"run_id": run["info"]["run_id"], "metric_key": key, "max_results": 25000}
                if token:
                    params["page_token"] = token
                page = http.get(API + "metrics/get-history", params=params).raise_for_status().json()
                total += len(page.get("metrics", []))
                token = page.get("next_page_token")
                if not token:
                    break
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[2_000_000, 10_000_000])
    ap.add_argument("--columns", type=int, default=10, help="metric columns besides the step")
    ap.add_argument("--no-count", action="store_true",
                    help="do not count the points on the server (10M points: 10+ minutes of REST paging)")
    args = ap.parse_args()
    peaks = []
    with tempfile.TemporaryDirectory(prefix="importer-csv-import-") as tmp, \
            LocalServer(Path(tmp) / "server", flavor="gunicorn") as server:
        for points in args.points:
            rows = points // args.columns
            csv = Path(tmp) / f"metrics-{points}.csv"
            points = write_csv(csv, rows, args.columns)
            print(f"CSV: {points:,} points ({rows:,} rows x {args.columns} metric columns), "
                  f"{csv.stat().st_size / 2**20:,.0f} MB", flush=True)
            common = [str(csv), "--format", "csv", "--step-column", "step", "--experiment", f"bench-{points}"]
            seconds, validate_rss, _ = measure([sys.executable, "-m", "importer", "validate", *common])
            print(f"  importer validate: {seconds:7.1f} s  peak RSS {validate_rss / 2**20:,.0f} MB", flush=True)
            seconds, import_rss, out = measure([sys.executable, "-m", "importer", "import", *common,
                                                "--tracking-uri", server.url, "--json", "--quiet",
                                                "--state", str(Path(tmp) / f"ledger-{points}.db")])
            sent = json.loads(out)["points"] if out.strip().startswith("{") else None
            print(f"  importer import:   {seconds:7.1f} s  peak RSS {import_rss / 2**20:,.0f} MB  "
                  f"({points / seconds:,.0f} points/s; {sent} sent)", flush=True)
            stored = points if args.no_count else points_on_server(server.url, f"bench-{points}")
            print(f"  points on the server: {'not counted' if args.no_count else f'{stored:,}'}", flush=True)
            if stored != points:
                raise SystemExit(f"the server holds {stored:,} points, not {points:,}")
            peaks.append((points, validate_rss, import_rss))
            csv.unlink()
    if len(peaks) >= 2:
        (small, v_small, i_small), (big, v_big, i_big) = min(peaks), max(peaks)
        print(f"\nimport peak RSS, {big:,} vs {small:,} points: {i_big / 2**20:,.0f} / "
              f"{i_small / 2**20:,.0f} MB = {i_big / i_small:.2f}x; validate (baseline): "
              f"{v_big / 2**20:,.0f} / {v_small / 2**20:,.0f} MB = {v_big / v_small:.2f}x")


if __name__ == "__main__":
    main()
