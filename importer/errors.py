"""One error tree for importer, split by phase.

    ImporterError
    ├── InputError            bad input: nothing was written (exit code 2)
    │   └── ValidationError   one or more problems, each with file, location, rule
    ├── ServerError           the server answered with an error (HTTP status, MLflow error_code)
    │   ├── ConflictError     a param already holds another value on the destination run
    │   └── RetryableError    429 / 5xx after the retries ran out
    └── ConnectionFailed      unreachable server or refused credentials (exit code 3)

Messages say what to do. No exception ever carries a credential: URLs are printed without userinfo
and headers are never part of a message.
"""

from __future__ import annotations

from dataclasses import dataclass


class ImporterError(Exception):
    """Base of every error importer raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is and which rule it breaks."""

    file: str
    location: str  # a JSON path such as `runs[2].metrics.loss[5].step`, or `line 3 column 7`
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        return f"{where}: {self.message}"


class InputError(ImporterError):
    """The input cannot be used as it is; nothing was written."""


class ValidationError(InputError):
    """All the problems found in the input, each naming file, location and rule."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(count + ":\n" + "\n".join(f"  {p}" for p in problems))


class ServerError(ImporterError):
    """The tracking server refused a request."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None,
                 url: str | None = None):
        self.status = status
        self.error_code = error_code
        self.url = url
        parts = [p for p in (f"HTTP {status}" if status else None, error_code) if p]
        prefix = f"{' '.join(parts)}: " if parts else ""
        super().__init__(f"{prefix}{message}" + (f" ({url})" if url else ""))


class ConflictError(ServerError):
    """A param's new value differs from the one already stored on the run."""


class RetryableError(ServerError):
    """A transient failure (429, 5xx, dropped connection) that outlasted the retries."""


class ConnectionFailed(ImporterError):
    """The server cannot be reached, or refused our credentials."""
