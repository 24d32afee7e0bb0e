"""The spool: the service's queue on disk. A job is a folder that appears under `jobs/` only once
its manifest and every uploaded file are written and fsynced (built in `incoming/`, then renamed),
so a job either exists whole or not at all. `result.json` marks it finished.

    SPOOL/incoming/<id>/             a post being received (gone after a crash: never answered)
    SPOOL/jobs/<id>/job.json         {"id", "accepted" (ms), "artifacts": "uploads" | "artifacts-from"}
    SPOOL/jobs/<id>/manifest.json
    SPOOL/jobs/<id>/files/<path>     the uploaded artifact parts, by their manifest path
    SPOOL/jobs/<id>/result.json      written (atomically) when the job is done or failed
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..files import inside


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: written beside it, fsynced, renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Incoming:
    """A post being received into `incoming/<id>/`: the manifest and the artifact parts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.id = folder.name
        self.files = folder / "files"
        self.files.mkdir(parents=True)
        self.manifest = folder / "manifest.json"
        self.parts: list[str] = []  # artifact part names, as received

    def part_path(self, name: str) -> Path:
        """Where the part `name` is stored. InputError for a name that leads outside the job's
        files (absolute, `..`, backslashes that another system reads as folders), or given twice."""
        if not name or "\\" in name or "\0" in name or name in self.parts:
            raise InputError(f"artifact part {name!r}: " + ("given twice" if name in self.parts else
                                                           "not a relative path"))
        path = inside(self.files, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parts.append(name)
        return path

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Spool:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        # Posts cut off by a crash were never answered: their clients were told nothing was taken.
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir()

    def receive(self) -> Incoming:
        return Incoming(self.incoming / uuid.uuid4().hex)

    def accept(self, post: Incoming, artifacts: str) -> Path:
        """Make a received post a job: fsync what was written, rename it into `jobs/`, fsync that.
        Returns the job's folder. Only after this may the client be answered."""
        write_durably(post.folder / "job.json", json.dumps(
            {"id": post.id, "accepted": int(time.time() * 1000), "artifacts": artifacts}).encode())
        for folder, _, files in os.walk(post.folder):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(Path(folder))
        job = self.jobs / post.id
        os.rename(post.folder, job)
        fsync_dir(self.jobs)
        return job

    def folder(self, job_id: str) -> Optional[Path]:
        if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
            return None
        job = self.jobs / job_id
        return job if job.is_dir() else None

    def info(self, job_id: str) -> dict:
        return json.loads((self.jobs / job_id / "job.json").read_bytes())

    def result(self, job_id: str) -> Optional[dict]:
        try:
            return json.loads((self.jobs / job_id / "result.json").read_bytes())
        except FileNotFoundError:
            return None

    def finish(self, job_id: str, result: dict) -> None:
        write_durably(self.jobs / job_id / "result.json", json.dumps(result).encode())

    def unfinished(self) -> list[str]:
        """Jobs accepted and not finished, oldest first: what a restart must do."""
        ids = [p.name for p in self.jobs.iterdir() if p.is_dir() and not (p / "result.json").exists()]
        return sorted(ids, key=lambda i: self.info(i)["accepted"])

    def count_finished(self) -> dict[str, int]:
        """done / failed jobs in the spool, by state."""
        counts = {"done": 0, "failed": 0}
        for p in self.jobs.iterdir():
            result = self.result(p.name) if (p / "result.json").exists() else None
            if result:
                counts[result["state"]] += 1
        return counts
