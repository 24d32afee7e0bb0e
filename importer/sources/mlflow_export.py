"""(being written) mlflow-export source."""

from __future__ import annotations

from pathlib import Path

from .base import SourceOptions, SourceResult

NAME = "mlflow-export"


def detect(path: Path) -> bool:
    return False


def unit(file: Path) -> Path:
    """The folder (or file) read as one unit for a file `detect` recognised."""
    return file


def read(path: Path, options: SourceOptions) -> SourceResult:
    raise NotImplementedError
