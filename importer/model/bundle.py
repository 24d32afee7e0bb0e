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
    models/<n>.json                    RegisteredModel: a registered model, versions, aliases, tags
    logged_models/<model_id>/model.json  LoggedModelRecord: an MLflow 3 logged model: info, params,
                                       tags, its metric points (with run, dataset), the runs that
                                       output or took it, artifacts with size and SHA-256
    logged_models/<model_id>/artifacts/...  the model's artifacts, byte for byte

Metrics take about 7 bytes a point: delta-encoded steps and timestamps, byte-stream-split
values, zstd. A run folder is written under a temporary name and renamed when complete, and
`bundle.json` is written last: an interrupted export leaves no half run, and a bundle without
`bundle.json` is refused on import. The JSON Schema is `schemas/bundle.schema.json`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import pyarrow as pa
from pydantic import Field

from .models import Document, FileDigest, LoggedModelRecord, RegisteredModel
from .records import OPTIONAL_METRIC_FIELDS

FORMAT = "importer-bundle"
MANIFEST = "bundle.json"
PARTIAL = ".partial"  # a run or logged model folder being written; renamed when complete


class BundleRun(Document):
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
    artifacts: list[FileDigest] = []
    signature: Optional[str] = Field(None, description="Stands for the run's state at export time; "
                                     "a rerun of export rewrites the run when it changed.")


class BundleExperiment(Document):
    experiment_id: str
    name: str
    tags: dict[str, str] = {}
    lifecycle: Literal["active", "deleted"] = "active"


class BundleRunEntry(Document):
    path: str
    sha256: str = Field(description="SHA-256 of the run's run.json.")
    points: int


class BundleManifest(Document):
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
    for model in (BundleManifest, BundleExperiment, BundleRun, RegisteredModel, LoggedModelRecord):
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "importer export bundle, format version 1",
            "description": "bundle.json is a BundleManifest; experiments/*.json BundleExperiment; "
                           "runs/*/run.json BundleRun; models/*.json RegisteredModel; "
                           "logged_models/*/model.json LoggedModelRecord.",
            "$defs": defs}


METRICS_SCHEMA = pa.schema([("key", pa.dictionary(pa.int32(), pa.string())), ("step", pa.int64()),
                            ("timestamp", pa.int64()), ("value", pa.float64())]
                           + [(f, pa.string()) for f in OPTIONAL_METRIC_FIELDS])
