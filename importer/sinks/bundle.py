"""The export bundle as a sink: writes runs, experiments, logged and registered models into a
bundle folder (its layout: model/bundle.py), resumably.

A run or logged model is written under a temporary name and renamed when complete, and
`bundle.json` is written last, from what the folder holds: an interrupted export leaves no half
run, and a rerun skips what is already there in the same state (`signature`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import AsyncIterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from ..files import inside, sha256_file
from ..model import RunRecord
from ..model.bundle import (MANIFEST, METRICS_SCHEMA, PARTIAL, BundleExperiment, BundleManifest,
                            BundleRun, BundleRunEntry)
from ..model.models import FileDigest, LoggedModelRecord, RegisteredModel


def _write_json(path: Path, doc: BaseModel) -> str:
    """Write atomically; return the SHA-256 of what was written."""
    data = doc.model_dump_json(indent=1, exclude_none=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


# Points of one key per row group. Each run being exported holds one in memory (~30 MB at 1Mi),
# and 8 runs are exported at once; 256Ki points compress as well (6.46 bytes/point for 1M points
# of a random walk at 1Mi, 256Ki and 64Ki alike) and are written faster.
_ROW_GROUP = 1 << 18


class MetricsWriter:
    """metrics.parquet written as pages arrive: memory holds one row group (at most 256Ki points
    of one key), whatever the size of the run. Columns a page lacks are null (free on disk)."""

    def __init__(self, path: Path):
        self.path = path
        self.counts: dict[str, int] = {}
        self._writer: Optional[pq.ParquetWriter] = None
        self._key: Optional[str] = None
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, key: str, table: pa.Table) -> None:
        if key != self._key or self._rows >= _ROW_GROUP:
            self._flush()
            self._key = key
        self.counts[key] = self.counts.get(key, 0) + table.num_rows
        self._pending.append(table)
        self._rows += table.num_rows

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, METRICS_SCHEMA, compression="zstd", use_dictionary=["key"],
                column_encoding={"step": "DELTA_BINARY_PACKED", "timestamp": "DELTA_BINARY_PACKED",
                                 "value": "BYTE_STREAM_SPLIT"})
        n = self._rows
        cols = [pa.DictionaryArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), n), pa.array([self._key]))]
        for field in list(METRICS_SCHEMA)[1:]:
            # Arrays, not ChunkedArrays: pa.chunked_array converts a ChunkedArray point by point.
            chunks = [chunk for t in self._pending for chunk in
                      (t.column(field.name).cast(field.type).chunks if field.name in t.column_names
                       else [pa.nulls(t.num_rows, field.type)])]
            cols.append(pa.chunked_array(chunks, field.type))
        self._writer.write_table(pa.table(cols, schema=METRICS_SCHEMA))
        self._pending, self._rows = [], 0

    def close(self) -> dict[str, int]:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        return self.counts


async def _download(source, dest: Path, rel: str) -> FileDigest:
    """Stream a file of the source server (a file on a server: `api` and `url_path`) to `dest`, hashing it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with open(dest, "wb") as f:
        async for block in source.api.download(source.url_path):
            f.write(block)
            h.update(block)
            size += len(block)
    return FileDigest(path=rel, size=size, sha256=h.hexdigest())


class BundleSink:
    """Writes runs into a bundle folder; safe to run again on the same folder (it resumes)."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = root, source
        (root / "runs").mkdir(parents=True, exist_ok=True)
        (root / "experiments").mkdir(exist_ok=True)
        old = root / MANIFEST
        if old.exists():  # a rerun: the manifest is rewritten at the end
            old.unlink()
        for partial in [*(root / "runs").glob("*" + PARTIAL), *root.glob("logged_models/*" + PARTIAL)]:
            shutil.rmtree(partial)  # a run or logged model interrupted last time

    def done(self, rec: RunRecord) -> bool:
        """Whether the bundle already holds this run in the state `rec.signature` stands for."""
        path = inside(self.root / "runs", rec.source_run_id) / "run.json"
        if not path.exists() or rec.signature is None:
            return False
        return json.loads(path.read_text()).get("signature") == rec.signature

    def experiment(self, exp: BundleExperiment) -> None:
        _write_json(self.root / "experiments" / f"{exp.experiment_id}.json", exp)

    async def write(self, rec: RunRecord, experiment_id: str, parent_run_id: Optional[str],
                        pages: AsyncIterator[tuple[str, pa.Table]]) -> int:
        """Write one run, its metrics from `pages` ((key, points) as they are read) and its
        artifacts from `rec.artifacts`; returns its number of points."""
        final = inside(self.root / "runs", rec.source_run_id)
        tmp = final.with_name(final.name + PARTIAL)
        tmp.mkdir()
        try:
            return await self._write(rec, experiment_id, parent_run_id, pages, tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def _write(self, rec, experiment_id, parent_run_id, pages, tmp: Path, final: Path) -> int:
        metrics = MetricsWriter(tmp / "metrics.parquet")
        async for key, table in pages:
            metrics.add(key, table)
        counts = metrics.close()
        artifacts = [await _download(art.source, inside(tmp / "artifacts", art.dest), art.dest)
                     for art in rec.artifacts]
        doc = BundleRun(
            run_id=rec.source_run_id, experiment_id=experiment_id, name=rec.name, status=rec.status,
            start_time=rec.start_time, end_time=rec.end_time, user=rec.user, lifecycle=rec.lifecycle,
            parent_run_id=parent_run_id, params=rec.params, tags=rec.tags, inputs=rec.inputs,
            metrics=counts, artifacts=artifacts, signature=rec.signature,
            metrics_sha256=sha256_file(tmp / "metrics.parquet") if counts else None)
        _write_json(tmp / "run.json", doc)
        if final.exists():  # the run changed since the last export
            shutil.rmtree(final)
        os.replace(tmp, final)
        return sum(counts.values())

    def write_model(self, model: RegisteredModel) -> None:
        (self.root / "models").mkdir(exist_ok=True)
        name = hashlib.sha256(model.name.encode()).hexdigest()[:16] + ".json"
        _write_json(self.root / "models" / name, model)

    def logged_model_done(self, doc: LoggedModelRecord) -> bool:
        """Whether the bundle already holds this logged model in the state `doc.signature` stands for."""
        path = inside(self.root / "logged_models", doc.model_id) / "model.json"
        return path.exists() and json.loads(path.read_text()).get("signature") == doc.signature

    async def write_logged_model(self, doc: LoggedModelRecord, files: list) -> None:
        """Write one logged model: `files` are its artifacts (ArtifactFile whose source is a file on
        the source server), streamed into the folder and hashed on the way."""
        final = inside(self.root / "logged_models", doc.model_id)
        tmp = final.with_name(final.name + PARTIAL)
        tmp.mkdir(parents=True)
        try:
            doc.artifacts = [await _download(f.source, inside(tmp / "artifacts", f.dest), f.dest) for f in files]
            _write_json(tmp / "model.json", doc)
            if final.exists():  # the model changed since the last export
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def finish(self) -> BundleManifest:
        """Write bundle.json from what the folder holds (runs of earlier, resumed exports too)."""
        runs, points, artifacts = {}, 0, 0
        for run_json in sorted((self.root / "runs").glob("*/run.json")):
            if run_json.parent.name.endswith(PARTIAL):
                continue
            doc = BundleRun.model_validate_json(run_json.read_bytes())
            n = sum(doc.metrics.values())
            runs[doc.run_id] = BundleRunEntry(path=f"runs/{run_json.parent.name}",
                                              sha256=sha256_file(run_json), points=n)
            points += n
            artifacts += len(doc.artifacts)
        experiments = len(list((self.root / "experiments").glob("*.json")))
        models = sorted(f"models/{p.name}" for p in (self.root / "models").glob("*.json"))
        logged = {p.parent.name: sha256_file(p) for p in sorted(self.root.glob("logged_models/*/model.json"))
                  if not p.parent.name.endswith(PARTIAL)}
        manifest = BundleManifest(
            created=int(time.time() * 1000), source=self.source, runs=runs, models=models,
            logged_models=logged,
            counts={"experiments": experiments, "runs": len(runs), "points": points,
                    "artifacts": artifacts, "models": len(models), "logged_models": len(logged)})
        _write_json(self.root / MANIFEST, manifest)
        return manifest
