"""importer: register ML runs in an MLflow tracking server after the fact, faithfully.

The CLI's verbs are these functions; `importer.cli` is a thin layer over them.

    import_paths, validate, inspect, find, schema     log files, manifests and stores -> a server
    export, migrate, verify                           between servers, and to a bundle
    RunRecord and the other records                   what sources produce and sinks write
    ImporterError and its subclasses                  the error tree (importer/errors.py)
"""

from typing import TYPE_CHECKING

__all__ = [
    # reading inputs, and writing them to a server
    "import_paths", "import_records", "validate", "inspect", "find", "schema", "read_inputs",
    "read_records", "Inputs", "Summary",
    # between stores
    "export", "migrate", "verify", "Report", "Selection", "ClientConfig",
    # records
    "RunRecord", "ArtifactFile", "ExperimentRecord", "LoggedModel", "LoggedModelRecord",
    "RegisteredModel", "ModelVersion",
    # errors
    "ImporterError", "InputError", "ValidationError", "Problem", "ServerError", "ConflictError",
    "ConnectionFailed", "RetryableError",
]

if TYPE_CHECKING:  # what type checkers and readers see; at run time each name loads on first use
    from .errors import (ConflictError, ConnectionFailed, ImporterError, InputError, Problem,
                         RetryableError, ServerError, ValidationError)
    from .mlflow_api import ClientConfig
    from .model import (ArtifactFile, ExperimentRecord, LoggedModel, LoggedModelRecord, ModelVersion,
                        RegisteredModel, RunRecord)
    from .moves import export, migrate
    from .pipeline import (Inputs, Summary, find, import_paths, import_records, inspect, read_inputs,
                           read_records, schema, validate)
    from .sources.server import Selection
    from .verification import Report, verify

# The same names by module, for __getattr__: a command loads only what it needs (`export` no log
# format, `--help` none of it); importing everything costs 0.35 s of every command's start.
_HOMES = {
    "errors": ("ConflictError", "ConnectionFailed", "ImporterError", "InputError", "Problem",
               "RetryableError", "ServerError", "ValidationError"),
    "mlflow_api": ("ClientConfig",),
    "model": ("ArtifactFile", "ExperimentRecord", "LoggedModel", "LoggedModelRecord", "ModelVersion",
              "RegisteredModel", "RunRecord"),
    "moves": ("export", "migrate"),
    "pipeline": ("Inputs", "Summary", "find", "import_paths", "import_records", "inspect", "read_inputs",
                 "read_records", "schema", "validate"),
    "sources.server": ("Selection",),
    "verification": ("Report", "verify"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'importer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
