"""`importer scan` at scale: N small Keras CSV files in folders of 100.

    python bench/bench_scan.py [--files 100000] [--first-files 1000] [--baseline-files 3000]
                               [--before REV]

Prints, all measured in this run on this machine:

1. discovery before and after the change, on the first --baseline-files files (the discovery of
   REV, default the commit before it, is loaded from git; it grows with the square of the files,
   so it is not run on all of them);
2. `importer validate` of the whole tree: discovery and reading of every file, no server (what a
   first scan pays before the server), time and peak RSS;
3. a first `importer scan` of --first-files of them into a real `mlflow server` (SQLite,
   loopback), with its rate in runs/s, beside `importer import` of the same files into another
   experiment: the first scan of the whole tree is limited by the server,
   not by discovery (at that rate 100,000 runs take an hour or so, so it is not run whole);
4. a rescan of the --first-files, nothing changed: nothing read, nothing sent;
5. the rescan of the whole tree, unchanged: the ledger is filled by the bench with the rows a
   first scan leaves (the same unattended.signature and Ledger.save_units), then `importer scan`
   runs as a user runs it. Target: under 10 s and 300 MB for 100,000 files.

Each `importer` is a new process; peak RSS is its own (os.wait4).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from importer.ledger import Ledger  # noqa: E402
from importer.local_server import LocalServer  # noqa: E402
from importer.mlflow_api import safe_url  # noqa: E402
from importer.sources import discover  # noqa: E402
from importer.unattended import _row, signature  # noqa: E402

PER_FOLDER = 100


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"team{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"run{i:06d}.csv").write_text(f"epoch,loss,acc\n0,{1 / (i + 2)},0.1\n1,{1 / (i + 3)},0.2\n")


def importer(*args: str) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, stderr) of `python -m importer ARGS`."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "importer", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - started, usage.ru_maxrss / 1024, proc.returncode, err


def discovery_before(rev: str):
    """`discover` as it was at `rev`, loaded from git into the package's namespace."""
    source = subprocess.check_output(["git", "show", f"{rev}:importer/sources/__init__.py"], cwd=ROOT)
    module = types.ModuleType("importer.sources")
    module.__package__ = "importer.sources"
    exec(compile(source, f"{rev}:importer/sources/__init__.py", "exec"), module.__dict__)
    return module.discover


def seed_ledger(state: Path, tree: Path, uri: str) -> int:
    """The rows a first scan of `tree` leaves in the ledger: every unit imported, with its signature."""
    units, _ = discover([tree])
    ledger = Ledger(state)
    now = time.time()
    rows = []
    for module, unit in units:
        sig, newest = signature(unit)
        rows.append(_row(safe_url(uri).rstrip("/"), "", unit, module, sig, newest, "imported", now, runs=1))
    ledger.save_units(rows)
    ledger.close()
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--first-files", type=int, default=1000)
    ap.add_argument("--baseline-files", type=int, default=3000)
    ap.add_argument("--before", default="1d412b3", help="the git revision whose discovery is the baseline "
                    "(default: the last one before discovery was made linear)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree, small, base = tmp / "tree", tmp / "small", tmp / "base"
        t = time.monotonic()
        make_tree(tree, args.files)
        make_tree(small, min(args.first_files, args.files))
        make_tree(base, min(args.baseline_files, args.files))
        print(f"{args.files:,} files in {args.files // PER_FOLDER:,} folders written in {time.monotonic() - t:.1f} s")

        old = discovery_before(args.before)
        t = time.monotonic()
        found = len(old([base])[0])
        before = time.monotonic() - t
        t = time.monotonic()
        assert len(discover([base])[0]) == found
        after = time.monotonic() - t
        print(f"discovery of {found:,} files: {before:.2f} s before ({args.before}), {after:.2f} s now")

        seconds, rss, code, err = importer("validate", str(tree))
        print(f"importer validate of {args.files:,} files: {seconds:.1f} s, peak RSS {rss:.0f} MB (exit {code})")

        server = LocalServer(tmp / "mlflow").start()
        try:
            state = tmp / "small.db"
            scan = ("scan", str(small), "--tracking-uri", server.url, "--state", str(state),
                    "--experiment", "bench-scan", "--quiet", "--finish-after", "0")
            seconds, rss, code, err = importer(*scan)
            n = min(args.first_files, args.files)
            print(f"first scan of {n:,} files into the server: {seconds:.1f} s, {n / seconds:.0f} runs/s, "
                  f"peak RSS {rss:.0f} MB (exit {code}){' ' + err[-300:] if code else ''}")
            seconds, rss, code, err = importer("import", str(small), "--tracking-uri", server.url, "--state",
                                               str(tmp / "import.db"), "--experiment", "bench-import", "--quiet")
            print(f"importer import of the same {n:,} files (the reference): {seconds:.1f} s, "
                  f"{n / seconds:.0f} runs/s, peak RSS {rss:.0f} MB (exit {code})")
            seconds, rss, code, err = importer(*scan)
            print(f"rescan of those {n:,} files, unchanged: {seconds:.2f} s, peak RSS {rss:.0f} MB (exit {code})")

            state = tmp / "tree.db"
            t = time.monotonic()
            seeded = seed_ledger(state, tree, server.url)
            print(f"ledger filled with the {seeded:,} units a first scan leaves, in {time.monotonic() - t:.1f} s")
            seconds, rss, code, err = importer("scan", str(tree), "--tracking-uri", server.url, "--state",
                                               str(state), "--quiet")
            verdict = "ok" if seconds < 10 and rss < 300 else "OVER TARGET"
            print(f"rescan of {args.files:,} files, unchanged: {seconds:.2f} s, peak RSS {rss:.0f} MB "
                  f"(exit {code}; target < 10 s and < 300 MB: {verdict})")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
