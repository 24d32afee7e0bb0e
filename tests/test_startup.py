"""A command loads only what it uses: the start of every command is part of its speed
(`bench/bench_migrate.py` times `export` from the process start)."""

import subprocess
import sys


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_command_line_loads_no_part_of_importer_until_a_command_runs():
    loaded = _loaded("import importer.cli")
    assert {m for m in loaded if m.startswith("importer")} == {"importer", "importer.cli", "importer.errors",
                                                               "importer.mlflow_api"}
    assert "httpx._main" not in loaded and "pyarrow" not in loaded


def test_moving_runs_between_servers_loads_no_log_format():
    loaded = _loaded("import importer.moves")
    formats = {m for m in loaded if m.startswith("importer.sources.")} - {"importer.sources.base",
                                                                          "importer.sources.server"}
    assert not formats


def test_the_package_imports_its_names_on_first_use():
    loaded = _loaded("import importer\nassert importer.Selection and importer.ServerError")
    assert "importer.sources.server" in loaded and "importer.pipeline" not in loaded
