"""Parse-only throughput and memory of the log sources, against common readers in the same run.

    python bench/bench_parse.py [--rows 1000000] [--scalars 1000000]

1. A generated CSV of --rows rows x 10 metric columns (10 million points by default): importer's
   generic CSV source (`importer validate --format csv --step-column step`, a new process: peak RSS
   and points/s) against `pandas.read_csv` of the same file (points/s).
2. A TensorBoard event file of --scalars scalars written with tensorboardX: importer's TensorBoard
   source against tbparse's SummaryReader (when installed: `pip install tbparse`).

Targets (issue 4): >= 2 million CSV points/s parse-only on one core; peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import import measure  # noqa: E402


def write_csv(path: Path, rows: int) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    columns = {"step": pa.array(np.arange(rows, dtype=np.int64))}
    for k in range(10):
        columns[f"metric_{k}"] = pa.array(rng.random(rows))
    pacsv.write_csv(pa.table(columns), path)
    return rows * 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scalars", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="importer-parse-") as tmp:
        folder = Path(tmp)
        csv = folder / "metrics.csv"
        points = write_csv(csv, args.rows)
        print(f"CSV: {points:,} points, {csv.stat().st_size / 2**20:,.0f} MB", flush=True)
        seconds, rss, _ = measure([sys.executable, "-m", "importer", "validate", str(csv), "--format", "csv",
                                   "--step-column", "step", "--experiment", "bench"])
        print(f"importer (validate, new process)  {points / seconds:12,.0f} points/s  {seconds:6.1f} s  "
              f"peak RSS {rss / 2**20:,.0f} MB", flush=True)
        seconds, rss, _ = measure([sys.executable, "-c", f"import pandas; pandas.read_csv({str(csv)!r})"])
        print(f"pandas.read_csv (new process)     {points / seconds:12,.0f} points/s  {seconds:6.1f} s  "
              f"peak RSS {rss / 2**20:,.0f} MB", flush=True)

        if args.scalars:
            from tensorboardX import SummaryWriter
            run = folder / "tb" / "run"
            writer = SummaryWriter(str(run))
            for i in range(args.scalars):
                writer.add_scalar(f"m{i % 10}", i * 0.5, i // 10)
            writer.close()
            print(f"\nTensorBoard: {args.scalars:,} scalars", flush=True)
            seconds, rss, _ = measure([sys.executable, "-m", "importer", "validate", str(run),
                                       "--format", "tensorboard", "--experiment", "bench"])
            print(f"importer (validate, new process)  {args.scalars / seconds:12,.0f} points/s  {seconds:6.1f} s  "
                  f"peak RSS {rss / 2**20:,.0f} MB", flush=True)
            try:
                import tbparse  # noqa: F401
            except ImportError:
                print("tbparse is not installed (pip install tbparse): no comparison")
                return
            seconds, rss, _ = measure([sys.executable, "-c", "import tbparse; "
                                       f"print(len(tbparse.SummaryReader({str(run)!r}).scalars))"])
            print(f"tbparse SummaryReader             {args.scalars / seconds:12,.0f} points/s  {seconds:6.1f} s  "
                  f"peak RSS {rss / 2**20:,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
