"""`importer watch`: the daemon as a real process on a temp folder, against the session's real server
(and a real proxy where a far or vanishing server is needed); checked through the REST API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import proxy
import pytest
from conftest import ROOT, params_of, run_importer, tags_of
from test_scan import append_rows, by_name, keras_csv, losses

from importer.local_server import free_port


class Daemon:
    """`python -m importer watch ...` with its JSON log lines in a file, read as they come."""

    def __init__(self, folder: Path, uri: str, experiment: str, state: Path, *extra: str):
        self.log_path = state.parent / f"watch-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "importer", "watch", str(folder), "--tracking-uri", uri,
             "--experiment", experiment, "--state", str(state), "--log-json", *extra],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log_file)

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "text", "line": line})
        return out

    def wait_for(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"the daemon exited ({self.proc.returncode}): {self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.log_path.read_text()}"
            time.sleep(0.1)

    def logged(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events())

    def stop(self, sig=signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        """(exit code, seconds it took) after `sig`."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log_file.close()
        return code, time.monotonic() - started


def until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("observer", [(), ("--polling", "0.3")], ids=["native", "polling"])
def test_a_csv_growing_row_by_row_is_running_then_finished_with_exact_points(uri, experiment, state,
                                                                             tmp_path, view, observer):
    folder = tmp_path / "logs"
    folder.mkdir()
    daemon = Daemon(folder, uri, experiment, state, "--settle", "0.3", "--finish-after", "3", *observer)
    try:
        daemon.wait_for(lambda: daemon.logged("started"), "the start")
        started = [e for e in daemon.events() if e["event"] == "started"][0]
        assert started["observer"] == ("PollingObserver" if observer else "InotifyObserver")
        log = keras_csv(folder / "train.csv", epochs=1)
        for epoch in range(1, 6):
            time.sleep(0.5)  # a trainer writing one epoch at a time
            append_rows(log, start=epoch, count=1)

            def written(n=epoch + 1):
                runs = by_name(view, experiment)
                return "train" in runs and len(losses(view, runs["train"])) == n
            until(written, f"{epoch + 1} points on the server")
            assert by_name(view, experiment)["train"]["info"]["status"] == "RUNNING"
        until(lambda: by_name(view, experiment)["train"]["info"]["status"] == "FINISHED", "FINISHED")
        run = by_name(view, experiment)["train"]
        assert losses(view, run) == [(e, 1 / (e + 1)) for e in range(6)]
        assert int(run["info"]["end_time"]) == int(log.stat().st_mtime * 1000)
        # Growth after that reopens the run.
        append_rows(log, start=6, count=1)
        until(lambda: len(losses(view, by_name(view, experiment)["train"])) == 7, "the 7th point")
        assert by_name(view, experiment)["train"]["info"]["status"] == "RUNNING"
    finally:
        code, seconds = daemon.stop()
    assert code == 0 and seconds < 10
    assert daemon.logged("stopped") == 1


def test_many_files_dropped_at_once_are_each_imported_once_and_a_bad_one_fails_alone(
        uri, experiment, state, tmp_path, view):
    """1,000 files written in quick succession while the daemon watches."""
    folder = tmp_path / "logs"
    folder.mkdir()
    daemon = Daemon(folder, uri, experiment, state, "--settle", "0.5", "--finish-after", "1")
    try:
        daemon.wait_for(lambda: daemon.logged("started"), "the start")
        for i in range(1000):
            keras_csv(folder / f"d{i // 50}" / f"run{i:04d}.csv", epochs=2)
        (folder / "d0" / "broken.csv").write_text("epoch,loss\n0,0.5\n1,x\n")
        until(lambda: len(view.runs(experiment)) == 1000, "1,000 runs", timeout=300)
        daemon.wait_for(lambda: daemon.logged("failed") == 1, "the bad file's failure")
        failed = [e for e in daemon.events() if e["event"] == "failed"][0]
        assert failed["unit"].endswith("broken.csv") and "line 3" in failed["where"] + failed["reason"]
    finally:
        daemon.stop()
    runs = by_name(view, experiment)  # no duplicate
    assert len(runs) == 1000 and all(losses(view, r) == [(0, 1.0), (1, 0.5)] for r in runs.values())
    assert run_importer("status", "--state", str(state)).returncode == 1


def _interrupted_then_restarted(sig, server, experiment, state, tmp_path, view) -> None:
    """Runs landing through a far server; `sig` once the first landed; a restart finishes."""
    folder = tmp_path / "logs"
    for i in range(40):
        keras_csv(folder / f"run{i:02d}.csv", epochs=50)
    far, url = proxy.start(server.url, free_port(), latency_ms=200)
    try:
        daemon = Daemon(folder, url, experiment, state, "--settle", "0", "--finish-after", "0")
        daemon.wait_for(lambda: len(view.runs(experiment)) >= 1, "a first run on the server")
        code, seconds = daemon.stop(sig)
        assert len(view.runs(experiment)) < 40, "interrupted too late to tell anything"
        if sig == signal.SIGTERM:
            assert code == 0 and seconds < 10, daemon.log_path.read_text()
        again = Daemon(folder, url, experiment, state, "--settle", "0", "--finish-after", "0")
        want = [(e, 1 / (e + 1)) for e in range(50)]

        def complete() -> bool:
            runs = view.runs(experiment)
            return len(runs) >= 40 and all(r["info"]["status"] == "FINISHED" for r in runs)
        until(complete, "40 finished runs", timeout=120)
        again.stop()
    finally:
        far.kill()
        far.wait()
    runs = by_name(view, experiment)  # fails on a duplicate
    assert len(runs) == 40
    assert all(losses(view, r) == want for r in runs.values())  # nothing lost, nothing twice
    assert all(r["info"]["status"] == "FINISHED" for r in runs.values())


def test_sigterm_mid_import_exits_cleanly_and_a_restart_makes_no_duplicates(server, experiment, state,
                                                                            tmp_path, view):
    _interrupted_then_restarted(signal.SIGTERM, server, experiment, state, tmp_path, view)


def test_kill_9_mid_import_then_a_restart_loses_and_doubles_nothing(server, experiment, state, tmp_path, view):
    _interrupted_then_restarted(signal.SIGKILL, server, experiment, state, tmp_path, view)


def test_server_down_for_a_while_the_daemon_backs_off_and_catches_up(server, experiment, state, tmp_path, view):
    folder = tmp_path / "logs"
    folder.mkdir()
    port = free_port()
    link, url = proxy.start(server.url, port)
    daemon = Daemon(folder, url, experiment, state, "--settle", "0.2", "--finish-after", "0")
    try:
        daemon.wait_for(lambda: daemon.logged("started"), "the start")
        keras_csv(folder / "before.csv", epochs=2)
        until(lambda: len(view.runs(experiment)) == 1, "the first run")
        link.kill()
        link.wait()
        for i in range(3):
            keras_csv(folder / f"during{i}.csv", epochs=2)
        daemon.wait_for(lambda: daemon.logged("server-unreachable") >= 1, "the outage noticed")
        link, _ = proxy.start(server.url, port)
        def caught_up() -> bool:
            runs = view.runs(experiment)
            return len(runs) == 4 and all(len(losses(view, r)) == 2 for r in runs)
        until(caught_up, "the runs written during the outage", timeout=90)
    finally:
        daemon.stop()
        link.kill()
        link.wait()
    runs = by_name(view, experiment)
    assert sorted(runs) == ["before", "during0", "during1", "during2"]
    assert all(losses(view, r) == [(0, 1.0), (1, 0.5)] for r in runs.values())


def test_once_is_scan_and_a_link_out_of_the_folder_is_not_followed(uri, experiment, state, tmp_path, view):
    outside = keras_csv(tmp_path / "elsewhere" / "secret.csv", epochs=2)
    folder = tmp_path / "logs"
    keras_csv(folder / "mine.csv", epochs=2)
    (folder / "link.csv").symlink_to(outside)
    (folder / "linked-folder").symlink_to(outside.parent)
    once = run_importer("watch", str(folder), "--tracking-uri", uri, "--experiment", experiment,
                        "--state", str(state), "--once", "--finish-after", "0")
    assert once.returncode == 0, once.stderr.decode()
    assert b"units: 1 new" in once.stdout
    assert sorted(by_name(view, experiment)) == ["mine"]


def test_a_native_observer_that_cannot_start_is_said_then_polling_takes_over(tmp_path):
    """The kernel's answer when the inotify watch limit is reached (ENOSPC), raised by the real
    observer's start: the limit itself is not exhausted here, other processes share it."""
    import errno
    import threading

    from watchdog.observers import inotify

    from importer import unattended

    class Exhausted(inotify.InotifyObserver):
        def start(self):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    lines = []
    log = unattended.Log(as_json=True, stream=type("S", (), {"write": lines.append, "flush": lambda self: None})())
    original = unattended.NATIVE_OBSERVER
    unattended.NATIVE_OBSERVER = Exhausted
    try:
        observer = unattended._start_observer([tmp_path], None, threading.Event(), tmp_path / "l.db", log)
    finally:
        unattended.NATIVE_OBSERVER = original
    try:
        assert type(observer).__name__ == "PollingObserver"
        said = json.loads(lines[0])
        assert said["event"] == "observer-failed" and "inotify watch limit" in said["reason"]
        assert "max_user_watches" in said["hint"]
    finally:
        observer.stop()
        observer.join()


def test_a_lightning_folder_and_a_text_log_written_over_time_arrive_as_import_reads_them(
        uri, experiment, state, tmp_path, view):
    """A whole Lightning version folder appearing (hparams first, metrics in two flushes) and a
    text log appended line by line: each one run, with what `importer import` of the finished
    files writes (into another experiment), and finished with the source's end time."""
    folder = tmp_path / "logs"
    folder.mkdir()
    daemon = Daemon(folder, uri, experiment, state, "--settle", "1", "--finish-after", "2")
    try:
        daemon.wait_for(lambda: daemon.logged("started"), "the start")
        source = ROOT / "sample_logs" / "lightning" / "lightning_logs" / "version_0"
        version = folder / "lightning_logs" / "version_0"
        version.mkdir(parents=True)
        (version / "hparams.yaml").write_bytes((source / "hparams.yaml").read_bytes())
        rows = (source / "metrics.csv").read_bytes().splitlines(keepends=True)
        with open(version / "metrics.csv", "wb") as f:
            f.write(b"".join(rows[:8]))
            f.flush()
            time.sleep(0.3)
            f.write(b"".join(rows[8:]))
        with open(folder / "train.log", "wb") as f:
            for line in (ROOT / "sample_logs" / "text" / "resnet18-cifar10.log").read_bytes().splitlines(keepends=True):
                f.write(line)
                f.flush()
                time.sleep(0.05)

        def finished() -> bool:
            runs = view.runs(experiment)
            return len(runs) == 2 and all(r["info"]["status"] == "FINISHED" for r in runs)
        until(finished, "both runs finished")
    finally:
        code, _ = daemon.stop()
    assert code == 0
    reference = f"{experiment}-ref"
    done = run_importer("import", str(folder), "--tracking-uri", uri, "--experiment", reference,
                        "--state", str(tmp_path / "ref.db"))
    assert done.returncode == 0, done.stderr.decode()
    mine, ref = view.by_key(experiment), view.by_key(reference)
    assert sorted(mine) == sorted(ref) and len(mine) == 2
    for key, want in ref.items():
        got = mine[key]
        assert params_of(got) == params_of(want) and tags_of(got).keys() == tags_of(want).keys()
        # Times derived from the run's start (Lightning's file has none) differ between two imports.
        derived = "importer.derived_timestamps" in tags_of(want)
        metrics = sorted(m["key"] for m in want["data"]["metrics"])
        assert sorted(m["key"] for m in got["data"]["metrics"]) == metrics
        for metric in metrics:
            points = [view.history(r["info"]["run_id"], metric) for r in (got, want)]
            if derived:
                points = [[(step, value) for step, _, value in p] for p in points]
            assert points[0] == points[1] and points[0]
        if not derived:  # the text log's own end time
            assert got["info"]["end_time"] == want["info"]["end_time"]


def test_a_tensorboard_file_flushed_in_chunks_is_one_run_with_every_point(uri, experiment, state, tmp_path, view):
    import tensorboardX

    t0 = 1_700_000_000
    run_folder = tmp_path / "logs" / "tb" / "run1"
    run_folder.mkdir(parents=True)
    daemon = Daemon(tmp_path / "logs", uri, experiment, state, "--settle", "0.4", "--finish-after", "2")
    try:
        daemon.wait_for(lambda: daemon.logged("started"), "the start")
        writer = tensorboardX.SummaryWriter(str(run_folder))
        for chunk in range(3):
            for step in range(chunk * 5, chunk * 5 + 5):
                writer.add_scalar("loss", step * 0.5, step, walltime=t0 + step)
            writer.flush()
            time.sleep(1.0)  # a trainer's next epoch
        writer.close()

        def finished() -> bool:
            runs = view.runs(experiment)
            return len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        until(finished, "the run finished")
    finally:
        daemon.stop()
    run = view.runs(experiment)[0]
    assert view.history(run["info"]["run_id"], "loss") == [(s, (t0 + s) * 1000, s * 0.5) for s in range(15)]
    # The source's own end time (its last event's wall time), as `inspect` reads the finished file.
    inspected = run_importer("inspect", str(run_folder), "--json")
    assert int(run["info"]["end_time"]) == json.loads(inspected.stdout)["runs"][0]["end_time"]
