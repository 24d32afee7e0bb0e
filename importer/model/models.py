"""MLflow models as records: MLflow 3 logged models, registered models and their versions, and
the rules for reading them from any store.

The pydantic classes are also the documents of an export bundle (model/bundle.py), so a logged
model read from a server, an `mlruns/` folder, an mlflow-export-import folder or a bundle is the
same record, written by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from .records import ArtifactFile

# Tags importer writes on the models it copies, to find them again on a rerun.
SOURCE_MODEL_TAG = "importer.source_model_id"
SOURCE_VERSION_TAG = "importer.source_version"
PLACEHOLDER_TAG = "importer.placeholder"  # a version made only to use up a number, then deleted
# Set by the server on a logged model when a registered version of it is made (and then rewritten
# with that version alone), so set again once the registered models are in.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
# The current_stage MLflow's stores give a deleted model version (a file store keeps its folder).
DELETED_VERSION = "Deleted_Internal"
# A logged model's status as the REST API names it, from what a store wrote: MLflow's number (a
# file store's meta.yaml) or its enum's value (mlflow-export-import's logged_model.json).
STATUSES = {0: "LOGGED_MODEL_STATUS_UNSPECIFIED", 1: "LOGGED_MODEL_PENDING", 2: "LOGGED_MODEL_READY",
            3: "LOGGED_MODEL_UPLOAD_FAILED"}
_ENUM = {"UNSPECIFIED": 0, "PENDING": 1, "READY": 2, "FAILED": 3}


class Document(BaseModel):
    """A record that is also a JSON document of the bundle: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class FileDigest(Document):
    path: str = Field(description="Relative posix path inside the run's (or model's) artifacts.")
    size: int
    sha256: str


class ModelVersion(Document):
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


class RegisteredModel(Document):
    name: str
    description: Optional[str] = None
    tags: dict[str, str] = {}
    aliases: dict[str, str] = Field({}, description="alias -> version")
    versions: list[ModelVersion] = []


class ModelMetric(Document):
    key: str
    value: float = Field(description="The server keeps no NaN nor Infinity for logged models.")
    timestamp: int
    step: int = 0
    run_id: str = Field(description="The source run the point was logged in.")
    dataset_name: Optional[str] = None
    dataset_digest: Optional[str] = None


class ModelOutput(Document):
    run_id: str
    step: int = 0


class LoggedModelRecord(Document):
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
    metrics: list[ModelMetric] = []
    outputs: list[ModelOutput] = Field([], description="Runs that logged the model as their "
                                       "output (run outputs.model_outputs).")
    inputs: list[str] = Field([], description="Runs that took the model as input (inputs.model_inputs).")
    artifacts: list[FileDigest] = []
    signature: Optional[str] = Field(None, description="Stands for the model's state at export time.")


@dataclass
class LoggedModel:
    """One logged model to write: its record, the experiment (by name) it goes to, and its
    artifacts (files on a server, streamed, or, from a bundle, local files with their SHA-256)."""

    doc: LoggedModelRecord
    experiment: str
    files: list[ArtifactFile] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # bundle: path -> SHA-256 in model.json


def status_name(value) -> Optional[str]:
    """The REST name of a stored status (see STATUSES), or None when it is none of them."""
    if isinstance(value, str) and value in STATUSES.values():
        return value
    number = _ENUM.get(value) if isinstance(value, str) else value
    return STATUSES.get(number) if type(number) is int else None


def logged_model_id(version: dict) -> Optional[str]:
    """The MLflow 3 logged model a version is of: its `model_id`, else its source
    `models:/m-...` (the REST answer of MLflow 3.17 leaves the field out)."""
    if version.get("model_id"):
        return version["model_id"]
    rest = version.get("source", "").removeprefix("models:/")
    return rest if rest.startswith("m-") and "/" not in rest and rest != version.get("source") else None


def artifact_path(source: str, run_id: Optional[str]) -> Optional[str]:
    """Where in its run's artifacts a version's model lives, from the version's source URI."""
    if not run_id:
        return None
    if source.startswith(f"runs:/{run_id}/"):
        return source[len(f"runs:/{run_id}/"):]
    marker = f"/{run_id}/artifacts/"
    return source.split(marker, 1)[1] if marker in source else None


def goes_with(doc: LoggedModelRecord, run_ids: set[str], in_shard=lambda model_id: True) -> bool:
    """Whether a logged model is part of a move of the runs `run_ids`: a model goes with its
    source run; one without a source run goes with its experiment (with a shard, with the shard
    its id hashes to: `in_shard`)."""
    if doc.source_run_id:
        return doc.source_run_id in run_ids
    return in_shard(doc.model_id)


# Should a race ever have made two copies of one model or version, every reader keeps the same
# one, the first made: the writer completes it, `verify` reports the others.

def first_logged_model(copies: list[dict]) -> dict:
    """Of a logged model's copies (as the REST API gives them), the first made."""
    return min(copies, key=lambda m: (int(m["info"].get("creation_timestamp_ms") or 0), m["info"]["model_id"]))


def first_version(copies: list) -> Any:
    """Of a model version's copies (REST dicts or ModelVersion records), the lowest numbered."""
    return min(copies, key=lambda v: int(v["version"] if isinstance(v, dict) else v.version))


def model_point(p: dict | ModelMetric, run_id: str) -> tuple:
    """A logged model's metric point as a tuple, to compare a source's point with its copy."""
    get = p.get if isinstance(p, dict) else lambda k, d=None: getattr(p, k, d)
    return (get("key"), int(get("step") or 0), int(get("timestamp")), float(get("value")), run_id,
            get("dataset_name"), get("dataset_digest"))
