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

# Each name is imported on first use, so that a command loads only what it needs (`export` no
# source format, `--help` none of it): a full import costs 0.35 s of every command's start.
_WHERE = {
    "ConflictError": "errors", "ConnectionFailed": "errors", "ImporterError": "errors",
    "InputError": "errors", "Problem": "errors", "RetryableError": "errors", "ServerError": "errors",
    "ValidationError": "errors", "ClientConfig": "mlflow_api", "RunRecord": "model",
    "Report": "moves", "export": "moves", "migrate": "moves", "verify": "moves",
    "Selection": "sources.server", "Inputs": "pipeline", "Summary": "pipeline", "find": "pipeline",
    "import_paths": "pipeline", "import_records": "pipeline", "inspect": "pipeline",
    "read_inputs": "pipeline", "read_records": "pipeline", "schema": "pipeline", "validate": "pipeline",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'importer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
