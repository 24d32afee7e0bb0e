"""The command line's own behaviour: --version, the progress line's text, the help texts."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from typer.testing import CliRunner

from importer.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_version_in_process():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"importer {metadata.version('importer')}\n"


def test_version_from_a_real_process():
    out = subprocess.run([sys.executable, "-m", "importer", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"importer {metadata.version('importer')}"
    assert not out.stderr
