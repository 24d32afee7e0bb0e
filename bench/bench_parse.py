"""Parse-only throughput and memory of the log sources, against common readers in the same run.

    python bench/bench_parse.py [--rows 1000000] [--columns 10] [--scalars 1000000]

1. A generated CSV of --rows rows x --columns metric columns (10 million points by default):
   importer's generic CSV source (`importer validate --format csv --step-column step`, a new
   process: peak RSS, points/s of wall time and of the process's CPU time, start-up included)
   against `pandas.read_csv` of the same file. `--rows 10000000 --columns 1` is the other shape
   of 10 million points (one step per point: the most memory per point).
2. A TensorBoard event file of --scalars scalars written with tensorboardX: importer's TensorBoard
   source against tbparse's SummaryReader (when installed: `pip install tbparse`).

Targets (issue 4): >= 2 million CSV points/s parse-only on one core; peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_import import measure  # noqa: E402


def cpu_measure(args: list) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS bytes) of a command in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, rss, _ = measure(args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, rss


def line(what: str, points: int, seconds: float, cpu: float, rss: int) -> str:
    return (f"{what:<34}{points / seconds:12,.0f} points/s  {seconds:6.1f} s  "
            f"CPU {cpu:5.1f} s ({points / cpu:11,.0f} points/CPU-s)  peak RSS {rss / 2**20:,.0f} MB")


def write_csv(path: Path, rows: int, columns: int = 10) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    table = {"step": pa.array(np.arange(rows, dtype=np.int64))}
    for k in range(columns):
        table[f"metric_{k}"] = pa.array(rng.random(rows))
    pacsv.write_csv(pa.table(table), path)
    return rows * columns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--columns", type=int, default=10, help="metric columns besides the step")
    ap.add_argument("--scalars", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="importer-parse-") as tmp:
        folder = Path(tmp)
        csv = folder / "metrics.csv"
        points = write_csv(csv, args.rows, args.columns)
        print(f"CSV: {points:,} points ({args.rows:,} rows x {args.columns} metric columns), "
              f"{csv.stat().st_size / 2**20:,.0f} MB", flush=True)
        seconds, cpu, rss = cpu_measure([sys.executable, "-m", "importer", "validate", str(csv), "--format",
                                         "csv", "--step-column", "step", "--experiment", "bench"])
        print(line("importer (validate, new process)", points, seconds, cpu, rss), flush=True)
        seconds, cpu, rss = cpu_measure([sys.executable, "-c", f"import pandas; pandas.read_csv({str(csv)!r})"])
        print(line("pandas.read_csv (new process)", points, seconds, cpu, rss), flush=True)

        if args.scalars:
            from tensorboardX import SummaryWriter
            run = folder / "tb" / "run"
            writer = SummaryWriter(str(run))
            for i in range(args.scalars):
                writer.add_scalar(f"m{i % 10}", i * 0.5, i // 10)
            writer.close()
            print(f"\nTensorBoard: {args.scalars:,} scalars", flush=True)
            seconds, cpu, rss = cpu_measure([sys.executable, "-m", "importer", "validate", str(run),
                                             "--format", "tensorboard", "--experiment", "bench"])
            print(line("importer (validate, new process)", args.scalars, seconds, cpu, rss), flush=True)
            try:
                import tbparse  # noqa: F401
            except ImportError:
                print("tbparse is not installed (pip install tbparse): no comparison")
                return
            seconds, cpu, rss = cpu_measure([sys.executable, "-c", "import tbparse; "
                                             f"print(len(tbparse.SummaryReader({str(run)!r}).scalars))"])
            print(line("tbparse SummaryReader", args.scalars, seconds, cpu, rss), flush=True)


if __name__ == "__main__":
    main()
