"""Export bundles (their layout: model/bundle.py) -> RunRecords, every file checked against its
hash first.

A run's metrics are read from its metrics.parquet only when the run is written (`RunRecord.load`)
and let go after, so importing a bundle takes the memory of its largest run, not of the bundle.
Its artifacts are checked against their SHA-256 then too, before anything of the run is written
(hashing them up front would read every artifact of the bundle again on each rerun). A logged
model's artifacts likewise, when it is written (sinks/logged_models.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic

from ..errors import InputError, Problem
from ..files import inside, sha256_file
from ..model import (OPTIONAL_METRIC_FIELDS, ArtifactFile, ExperimentRecord, LoggedModel,
                     LoggedModelRecord, RegisteredModel, RunRecord, store_import_key)
from ..model.bundle import FORMAT, MANIFEST, BundleExperiment, BundleManifest, BundleRun
from .base import SourceOptions, SourceResult

NAME = "bundle"


def detect(path: Path) -> bool:
    if path.name != MANIFEST or not path.is_file():
        return False
    with open(path, "rb") as f:
        return FORMAT.encode() in f.read(200)


def unit(file: Path) -> Path:
    return file.parent


def read(path: Path, options: SourceOptions) -> SourceResult:
    root = path.parent if path.is_file() else path
    result = SourceResult()
    manifest_file = root / MANIFEST
    if not manifest_file.exists():
        result.problems.append(Problem(str(root), MANIFEST, "no bundle.json: not a bundle, or its "
                                       "export did not finish (run export again to complete it)"))
        return result
    try:
        manifest = BundleManifest.model_validate_json(manifest_file.read_bytes())
        experiments = {e.experiment_id: e for e in (
            BundleExperiment.model_validate_json(p.read_bytes()) for p in (root / "experiments").glob("*.json"))}
        result.models = [RegisteredModel.model_validate_json(inside(root, m).read_bytes()) for m in manifest.models]
    except (OSError, InputError, pydantic.ValidationError) as e:
        result.problems.append(Problem(str(manifest_file), "", f"unreadable bundle: {e}"))
        return result
    if options.experiment is None:  # else every run goes to the one experiment named
        result.experiments = [ExperimentRecord(e.name, e.tags, e.lifecycle) for e in experiments.values()]
    for run_id, entry in manifest.runs.items():
        where = f"{entry.path}/run.json"
        try:
            folder = inside(root, entry.path)
            if sha256_file(folder / "run.json") != entry.sha256:
                raise ValueError("run.json does not match its hash in bundle.json")
            doc = BundleRun.model_validate_json((folder / "run.json").read_bytes())
            if doc.metrics and sha256_file(folder / "metrics.parquet") != doc.metrics_sha256:
                raise ValueError("metrics.parquet does not match its hash in run.json")
            if doc.metrics and pq.ParquetFile(folder / "metrics.parquet").metadata.num_rows != sum(doc.metrics.values()):
                raise ValueError("metrics.parquet does not hold the points run.json counts")
            artifacts, digests = [], {}
            for a in doc.artifacts:
                file = inside(folder / "artifacts", a.path)
                if not file.is_file() or file.stat().st_size != a.size:
                    raise ValueError(f"artifact {a.path!r} is missing or has another size")
                artifacts.append(ArtifactFile(file, a.path))
                digests[a.path] = a.sha256
            exp = experiments[doc.experiment_id]
        except (OSError, ValueError, KeyError, InputError, pydantic.ValidationError) as e:
            msg = f"experiment {e} is not in the bundle" if isinstance(e, KeyError) else str(e)
            result.skipped.append(Problem(str(root), where, msg))  # that run fails alone; the others go on
            continue
        rec = RunRecord(
            experiment=options.experiment or exp.name, import_key=store_import_key(run_id),
            origin=f"{root}: {entry.path}", name=doc.name, start_time=doc.start_time,
            end_time=doc.end_time, status=doc.status, user=doc.user, params=doc.params,
            tags=doc.tags, artifacts=artifacts, source_run_id=run_id,
            parent_key=store_import_key(doc.parent_run_id) if doc.parent_run_id else None,
            lifecycle=doc.lifecycle, experiment_tags=exp.tags, inputs=doc.inputs,
            signature=entry.sha256, points_to_load=sum(doc.metrics.values()))
        rec.load = _Loader(rec, folder / "metrics.parquet", artifacts, digests)
        result.records.append(rec)
    for model_id, sha in manifest.logged_models.items():
        try:
            result.logged_models.append(_logged_model(root, model_id, sha, experiments, options))
        except (OSError, ValueError, KeyError, InputError, pydantic.ValidationError) as e:
            msg = f"experiment {e} is not in the bundle" if isinstance(e, KeyError) else str(e)
            result.skipped.append(Problem(str(root), f"logged_models/{model_id}/model.json", msg))
    return result


def _logged_model(root: Path, model_id: str, sha: str, experiments: dict, options: SourceOptions) -> LoggedModel:
    """A logged model of the bundle; its artifacts are checked against their SHA-256 when it is
    written, as a run's are."""
    folder = inside(root / "logged_models", model_id)
    if sha256_file(folder / "model.json") != sha:
        raise ValueError("model.json does not match its hash in bundle.json")
    doc = LoggedModelRecord.model_validate_json((folder / "model.json").read_bytes())
    files = []
    for a in doc.artifacts:
        file = inside(folder / "artifacts", a.path)
        if not file.is_file() or file.stat().st_size != a.size:
            raise ValueError(f"artifact {a.path!r} is missing or has another size")
        files.append(ArtifactFile(file, a.path))
    return LoggedModel(doc, options.experiment or experiments[doc.experiment_id].name, files,
                       {a.path: a.sha256 for a in doc.artifacts})


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


@dataclass
class _Loader:
    """A bundle run's metrics, read when it is written: whole (`await load()`), or page by page
    (`pages()`, up to 64Ki points each: the writer streams them)."""

    rec: RunRecord
    parquet: Path
    files: list[ArtifactFile]
    digests: dict[str, str]  # artifact path -> its SHA-256 in run.json

    async def __call__(self) -> None:
        self.rec.artifacts = await self.artifacts()
        self.rec.metrics = read_metrics(self.parquet) if self.rec.points_to_load else {}

    async def artifacts(self) -> list[ArtifactFile]:
        for art in self.files:
            if sha256_file(art.source) != self.digests[art.dest]:
                raise InputError(f"{art.source}: does not match its SHA-256 in run.json (changed or "
                                 "corrupt); nothing of this run was written")
        return list(self.files)

    async def pages(self):
        if self.rec.points_to_load:
            for key, table in iter_metrics(self.parquet):
                yield key, table
