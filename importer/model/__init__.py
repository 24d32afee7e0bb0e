"""The record layer: what sources produce and sinks take, and every rule about values.

    records.py   RunRecord, ArtifactFile, ExperimentRecord; the tags importer writes; import keys
    models.py    logged models (MLflow 3), registered models and their versions
    values.py    what the server accepts and keeps: key and value limits, NaN/Infinity, int64
    manifest.py  the run manifest a user writes (its JSON Schema is generated from it)
    bundle.py    the documents of an export bundle

It imports neither sources nor sinks, nor HTTP: both sides import it.
"""

from .manifest import Artifact, ModelEntry, Column, Columns, Manifest, Point, Run, manifest_json_schema
from .models import (DELETED_VERSION, MODEL_VERSIONS_TAG, PLACEHOLDER_TAG, SOURCE_MODEL_TAG,
                     SOURCE_VERSION_TAG, STATUSES, FileDigest, LoggedModel, LoggedModelRecord,
                     ModelMetric, ModelOutput, ModelVersion, RegisteredModel, artifact_path,
                     first_logged_model, first_version, goes_with, logged_model_id, model_point,
                     status_name)
from .records import (DERIVED_TIMESTAMPS_NOTE, DERIVED_TIMESTAMPS_TAG, EXPERIMENT_KIND_TAG,
                      FIELD_TAGS, IMPORT_KEY_TAG, INFINITE_VALUES_TAG, LONG_PARAMS_DIR,
                      LONG_PARAMS_TAG, METRIC_SCHEMA, MODEL_PATH_TAG, MODEL_RUN_KEY_TAG, OPTIONAL_METRIC_FIELDS, PENDING_TAG,
                      SOURCE_RUN_ID_TAG, ArtifactFile, ExperimentRecord, ModelToRegister, RunRecord, derived_key,
                      is_pending, oldest_run, spill_long_params, store_import_key, store_run_id)
from .values import (INT64_MAX, INT64_MIN, MAX_DOUBLE, MAX_KEY_LENGTH, MAX_MODEL_TAG_VALUE_LENGTH,
                     MAX_PARAM_VALUE_LENGTH, alias_problem, model_name_problem,
                     MAX_TAG_VALUE_LENGTH, RUN_ID, SPECIAL_VALUES, flatten_params, key_problem,
                     metric_value, model_stored_value, param_string, replace_invalid_key_chars,
                     stored_value, to_ms, value_problem)

__all__ = [
    "Artifact", "ModelEntry", "Column", "Columns", "Manifest", "Point", "Run", "manifest_json_schema",
    "DELETED_VERSION", "MODEL_VERSIONS_TAG", "PLACEHOLDER_TAG", "SOURCE_MODEL_TAG",
    "SOURCE_VERSION_TAG", "STATUSES", "FileDigest", "LoggedModel", "LoggedModelRecord",
    "ModelMetric", "ModelOutput", "ModelVersion", "RegisteredModel", "artifact_path",
    "first_logged_model", "first_version", "goes_with", "logged_model_id", "model_point", "status_name",
    "DERIVED_TIMESTAMPS_NOTE", "DERIVED_TIMESTAMPS_TAG", "EXPERIMENT_KIND_TAG", "FIELD_TAGS",
    "IMPORT_KEY_TAG", "INFINITE_VALUES_TAG", "LONG_PARAMS_DIR", "LONG_PARAMS_TAG", "METRIC_SCHEMA",
    "MODEL_PATH_TAG", "MODEL_RUN_KEY_TAG",
    "OPTIONAL_METRIC_FIELDS", "PENDING_TAG", "SOURCE_RUN_ID_TAG", "ArtifactFile", "ExperimentRecord",
    "ModelToRegister", "RunRecord", "derived_key", "is_pending", "oldest_run", "spill_long_params", "store_import_key",
    "store_run_id",
    "INT64_MAX", "INT64_MIN", "MAX_DOUBLE", "MAX_KEY_LENGTH", "MAX_MODEL_TAG_VALUE_LENGTH",
    "MAX_PARAM_VALUE_LENGTH", "alias_problem", "model_name_problem",
    "MAX_TAG_VALUE_LENGTH", "RUN_ID", "SPECIAL_VALUES", "flatten_params", "key_problem",
    "metric_value", "model_stored_value", "param_string", "replace_invalid_key_chars",
    "stored_value", "to_ms", "value_problem",
]
