"""The export bundle, format version 1: a portable folder of runs that `importer import` reads.

    bundle.json                        BundleManifest: counts, and each run's folder and hash
    experiments/<experiment_id>.json   BundleExperiment: name, tags (the description is the
                                       tag mlflow.note.content), lifecycle
    runs/<run_id>/run.json             BundleRun: info, params, tags, inputs, the parent's id,
                                       points per metric, artifacts with size and SHA-256,
                                       and the SHA-256 of metrics.parquet
    runs/<run_id>/metrics.parquet      key (dictionary), step, timestamp, value, and the MLflow 3
                                       fields model_id, dataset_name, dataset_digest when present
    runs/<run_id>/artifacts/...        the run's artifacts, byte for byte
    models/<n>.json                    BundleModel: a registered model, versions, aliases, tags
    logged_models/<model_id>/model.json  BundleLoggedModel: an MLflow 3 logged model: info, params,
                                       tags, its metric points (with run, dataset), the runs that
                                       output or took it, artifacts with size and SHA-256
    logged_models/<model_id>/artifacts/...  the model's artifacts, byte for byte

Metrics take about 7 bytes a point: delta-encoded steps and timestamps, byte-stream-split
values, zstd. A run folder is written under a temporary name and renamed when complete, and
`bundle.json` is written last: an interrupted export leaves no half run, and a bundle without
`bundle.json` is refused on import. The JSON Schema is `schemas/bundle.schema.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Literal, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from .errors import InputError
from .model import OPTIONAL_METRIC_FIELDS, RunRecord

FORMAT = "importer-bundle"
MANIFEST = "bundle.json"
_PARTIAL = ".partial"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleArtifact(_Doc):
    path: str = Field(description="Relative posix path inside the run's artifacts.")
    size: int
    sha256: str


class BundleRun(_Doc):
    run_id: str = Field(description="The run's id in the store it was exported from.")
    experiment_id: str
    name: Optional[str] = None
    status: str
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    user: Optional[str] = None
    lifecycle: Literal["active", "deleted"] = "active"
    parent_run_id: Optional[str] = None
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    inputs: list[dict[str, Any]] = Field([], description="Dataset inputs as MLflow's REST API gives them.")
    metrics: dict[str, int] = Field({}, description="Points per metric key in metrics.parquet.")
    metrics_sha256: Optional[str] = None
    artifacts: list[BundleArtifact] = []
    signature: Optional[str] = Field(None, description="Stands for the run's state at export time; "
                                     "a rerun of export rewrites the run when it changed.")


class BundleExperiment(_Doc):
    experiment_id: str
    name: str
    tags: dict[str, str] = {}
    lifecycle: Literal["active", "deleted"] = "active"


class BundleModelVersion(_Doc):
    version: str
    run_id: Optional[str] = Field(None, description="The source run; its artifacts hold the model.")
    model_id: Optional[str] = Field(None, description="The MLflow 3 logged model the version is "
                                    "of (its source is then `models:/<model_id>`).")
    artifact_path: Optional[str] = Field(None, description="The model's folder inside the run's artifacts.")
    source: str = Field(description="The version's source as the exporting server had it.")
    description: Optional[str] = None
    tags: dict[str, str] = {}
    stage: Optional[str] = None
    status: Optional[str] = None


class BundleModel(_Doc):
    name: str
    description: Optional[str] = None
    tags: dict[str, str] = {}
    aliases: dict[str, str] = Field({}, description="alias -> version")
    versions: list[BundleModelVersion] = []


class BundleModelMetric(_Doc):
    key: str
    value: float = Field(description="The server keeps no NaN nor Infinity for logged models.")
    timestamp: int
    step: int = 0
    run_id: str = Field(description="The source run the point was logged in.")
    dataset_name: Optional[str] = None
    dataset_digest: Optional[str] = None


class BundleModelOutput(_Doc):
    run_id: str
    step: int = 0


class BundleLoggedModel(_Doc):
    """An MLflow 3 logged model as `logged-models/{id}` gives it, plus the runs linked to it."""

    model_id: str = Field(description="The model's id in the store it was exported from.")
    experiment_id: str
    name: str
    model_type: Optional[str] = None
    status: str = Field(description="LOGGED_MODEL_READY, LOGGED_MODEL_PENDING, ...")
    status_message: Optional[str] = None
    source_run_id: Optional[str] = None
    creation_timestamp_ms: Optional[int] = None
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    metrics: list[BundleModelMetric] = []
    outputs: list[BundleModelOutput] = Field([], description="Runs that logged the model as their "
                                             "output (run outputs.model_outputs).")
    inputs: list[str] = Field([], description="Runs that took the model as input (inputs.model_inputs).")
    artifacts: list[BundleArtifact] = []
    signature: Optional[str] = Field(None, description="Stands for the model's state at export time.")


class BundleRunEntry(_Doc):
    path: str
    sha256: str = Field(description="SHA-256 of the run's run.json.")
    points: int


class BundleManifest(_Doc):
    format: Literal["importer-bundle"] = FORMAT
    format_version: Literal[1] = 1
    created: int = Field(description="Milliseconds since the epoch.")
    source: str = Field(description="Where the runs came from (a server URL, without credentials).")
    counts: dict[str, int] = Field(description="experiments, runs, points, artifacts, models, "
                                   "logged_models (absent in bundles written before them)")
    runs: dict[str, BundleRunEntry] = {}
    models: list[str] = []
    logged_models: dict[str, str] = Field({}, description="model id -> SHA-256 of its "
                                          "logged_models/<id>/model.json")


def bundle_json_schema() -> dict:
    """The JSON Schemas of a bundle's documents, in one file."""
    defs = {}
    for model in (BundleManifest, BundleExperiment, BundleRun, BundleModel, BundleLoggedModel):
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "importer export bundle, format version 1",
            "description": "bundle.json is a BundleManifest; experiments/*.json BundleExperiment; "
                           "runs/*/run.json BundleRun; models/*.json BundleModel; "
                           "logged_models/*/model.json BundleLoggedModel.",
            "$defs": defs}


def inside(base: Path, rel: str) -> Path:
    """`base / rel`, refused (InputError) unless it lies below `base`: a bundle's documents and a
    server's listings name the paths, and importer reads and writes only inside the folders the
    user named (`../`, an absolute path or a link out of the folder would lead elsewhere)."""
    path = base / rel
    resolved, top = path.resolve(), base.resolve()
    if Path(rel).is_absolute() or resolved == top or not resolved.is_relative_to(top):
        raise InputError(f"the path {rel!r} leads outside {base}")
    return path


def sha256_file(path: Path, end: Optional[int] = None) -> str:
    """SHA-256 of the file, or of its first `end` bytes (all of them if it is shorter)."""
    h, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20 if end is None else min(1 << 20, end - done)):
            h.update(block)
            done += len(block)
    return h.hexdigest()


def _write_json(path: Path, doc: BaseModel) -> str:
    """Write atomically; return the SHA-256 of what was written."""
    data = doc.model_dump_json(indent=1, exclude_none=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


METRICS_SCHEMA = pa.schema([("key", pa.dictionary(pa.int32(), pa.string())), ("step", pa.int64()),
                            ("timestamp", pa.int64()), ("value", pa.float64())]
                           + [(f, pa.string()) for f in OPTIONAL_METRIC_FIELDS])
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


_PAGE = 1 << 16  # points per page read


def iter_metrics(path: Path) -> Iterator[tuple[str, pa.Table]]:
    """metrics.parquet page by page: (key, up to 64Ki points) in the order they were written.

    Read in record batches through a 1 MiB buffer, not row group by row group: a whole row group
    (then up to 1Mi points, ~40 bytes each once read) held by each of the pages an import reads
    ahead took 363 MB at 5M points; this stays flat in the run's size."""
    pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    for batch in pf.iter_batches(batch_size=_PAGE, use_threads=False):
        page = pa.Table.from_batches([batch]).drop_columns(["key"])
        keys = batch.column("key")
        codes = pc.unique(keys.indices).to_pylist()
        if len(codes) == 1:  # as MetricsWriter writes them: one key per row group, no copy
            yield keys.dictionary[codes[0]].as_py(), page
            continue
        for code in codes:
            yield keys.dictionary[code].as_py(), page.filter(pc.equal(keys.indices, code))


def read_metrics(path: Path) -> dict[str, pa.Table]:
    """metrics.parquet back into one table per key (METRIC_SCHEMA plus MLflow 3 fields)."""
    out: dict[str, list[pa.Table]] = {}
    for key, table in iter_metrics(path):
        out.setdefault(key, []).append(table)
    tables = {k: pa.concat_tables(v) for k, v in out.items()}
    unused = [f for f in OPTIONAL_METRIC_FIELDS
              if all(t.column(f).null_count == t.num_rows for t in tables.values())]
    return {k: t.drop_columns(unused) for k, t in tables.items()}


async def _download(source, dest: Path, rel: str) -> BundleArtifact:
    """Stream a file of the source server (sources.server.RemoteArtifact) to `dest`, hashing it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with open(dest, "wb") as f:
        async for block in source.api.download(source.url_path):
            f.write(block)
            h.update(block)
            size += len(block)
    return BundleArtifact(path=rel, size=size, sha256=h.hexdigest())


class BundleWriter:
    """Writes runs into a bundle folder; safe to run again on the same folder (it resumes)."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = root, source
        (root / "runs").mkdir(parents=True, exist_ok=True)
        (root / "experiments").mkdir(exist_ok=True)
        old = root / MANIFEST
        if old.exists():  # a rerun: the manifest is rewritten at the end
            old.unlink()
        for partial in [*(root / "runs").glob("*" + _PARTIAL), *root.glob("logged_models/*" + _PARTIAL)]:
            shutil.rmtree(partial)  # a run or logged model interrupted last time

    def done(self, rec: RunRecord) -> bool:
        """Whether the bundle already holds this run in the state `rec.signature` stands for."""
        path = inside(self.root / "runs", rec.source_run_id) / "run.json"
        if not path.exists() or rec.signature is None:
            return False
        return json.loads(path.read_text()).get("signature") == rec.signature

    def experiment(self, exp: BundleExperiment) -> None:
        _write_json(self.root / "experiments" / f"{exp.experiment_id}.json", exp)

    async def write_run(self, rec: RunRecord, experiment_id: str, parent_run_id: Optional[str],
                        pages: AsyncIterator[tuple[str, pa.Table]]) -> int:
        """Write one run, its metrics from `pages` ((key, points) as they are read) and its
        artifacts from `rec.artifacts`; returns its number of points."""
        final = inside(self.root / "runs", rec.source_run_id)
        tmp = final.with_name(final.name + _PARTIAL)
        tmp.mkdir()
        try:
            return await self._write_run(rec, experiment_id, parent_run_id, pages, tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def _write_run(self, rec, experiment_id, parent_run_id, pages, tmp: Path, final: Path) -> int:
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

    def model(self, model: BundleModel) -> None:
        (self.root / "models").mkdir(exist_ok=True)
        name = hashlib.sha256(model.name.encode()).hexdigest()[:16] + ".json"
        _write_json(self.root / "models" / name, model)

    def logged_model_done(self, doc: BundleLoggedModel) -> bool:
        """Whether the bundle already holds this logged model in the state `doc.signature` stands for."""
        path = inside(self.root / "logged_models", doc.model_id) / "model.json"
        return path.exists() and json.loads(path.read_text()).get("signature") == doc.signature

    async def write_logged_model(self, doc: BundleLoggedModel, files: list) -> None:
        """Write one logged model: `files` are its artifacts (model.ArtifactFile whose source is a
        sources.server.RemoteArtifact), streamed into the folder and hashed on the way."""
        final = inside(self.root / "logged_models", doc.model_id)
        tmp = final.with_name(final.name + _PARTIAL)
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
            if run_json.parent.name.endswith(_PARTIAL):
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
                  if not p.parent.name.endswith(_PARTIAL)}
        manifest = BundleManifest(
            created=int(time.time() * 1000), source=self.source, runs=runs, models=models,
            logged_models=logged,
            counts={"experiments": experiments, "runs": len(runs), "points": points,
                    "artifacts": artifacts, "models": len(models), "logged_models": len(logged)})
        _write_json(self.root / MANIFEST, manifest)
        return manifest
