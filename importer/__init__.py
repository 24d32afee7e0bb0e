"""importer: register ML runs in an MLflow tracking server after the fact, faithfully.

The CLI's verbs are these functions; `importer.cli` is a thin layer over them.
"""

from .errors import (ConflictError, ConnectionFailed, ImporterError, InputError, Problem,
                     RetryableError, ServerError, ValidationError)
from .mlflow_api import ClientConfig
from .model import RunRecord
from .moves import Report, export, migrate, verify
from .sources.server import Selection
from .pipeline import (Inputs, Summary, find, import_paths, import_records, inspect, read_inputs,
                       read_records, schema, validate)

__all__ = [
    "ClientConfig", "ConflictError", "ConnectionFailed", "ImporterError", "InputError", "Problem",
    "Report", "RetryableError", "RunRecord", "Selection", "ServerError", "Summary",
    "ValidationError", "export", "find", "import_paths", "import_records", "Inputs", "inspect",
    "migrate", "read_inputs", "read_records", "schema", "validate", "verify",
]
