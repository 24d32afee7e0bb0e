"""importer: register ML runs in an MLflow tracking server after the fact, faithfully.

The CLI's verbs are these functions; `importer.cli` is a thin layer over them.
"""

import os as _os
import sys as _sys

if "pyarrow" not in _sys.modules:
    # Arrow's jemalloc (the CSV reader allocates from it) returns freed pages at once instead of
    # after a second: about 20 MB less at the peak of a 10-million-point CSV (bench/bench_parse.py).
    # It must be set before pyarrow loads.
    _os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

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
