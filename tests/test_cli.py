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


# -- the progress line ---------------------------------------------------------------------------

def test_progress_text():
    from importer.cli import progress_text

    cases = [
        ((56_000, 300_000, None), "56,000/300,000 metric points (19%)"),  # nothing measured yet
        ((56_000, 300_000, 12_400.0), "56,000/300,000 metric points (19%), 12,400 points/s, 20 s left"),
        ((300_000, 300_000, 12_400.0), "300,000/300,000 metric points (100%), 12,400 points/s"),
        ((56_000, 0, None), "56,000 metric points"),  # the total unknown: runs read from a server
        ((56_000, 0, 9_000.4), "56,000 metric points, 9,000 points/s"),
        ((0, 5_000_000, 10_000.0), "0/5,000,000 metric points (0%), 10,000 points/s, 8 min 20 s left"),
        ((0, 100_000_000, 10_000.0), "0/100,000,000 metric points (0%), 10,000 points/s, 2 h 46 min left"),
        ((10, 20, 0.0), "10/20 metric points (50%), 0 points/s"),  # stalled: no time left to promise
    ]
    for args, text in cases:
        assert progress_text(*args) == text


def test_progress_line_waits_a_second_for_a_rate_and_is_cleared():
    import io

    from importer.cli import _Bar

    now = [0.0]
    out = io.StringIO()
    bar = _Bar(stream=out, clock=lambda: now[0])
    bar(1000, 100_000)  # the first batch: no rate from a burst
    assert out.getvalue() == "\r  1,000/100,000 metric points (1%)"
    now[0] = 0.1
    bar(2000, 100_000)  # too soon to redraw
    assert out.getvalue().count("\r") == 1
    now[0] = 2.0
    bar(11_000, 100_000)
    line = out.getvalue().rsplit("\r", 1)[1]
    assert line == "  11,000/100,000 metric points (11%), 5,000 points/s, 18 s left"
    bar.close()
    assert out.getvalue().endswith("\r" + " " * len(line) + "\r")


# -- the help texts ------------------------------------------------------------------------------

def _helps():
    """Every command's --help as a user sees it, at 100 columns, with the click command it shows."""
    import typer.main

    group = typer.main.get_command(app)
    runner = CliRunner()
    yield group, runner.invoke(app, ["--help"], env={"COLUMNS": "100"}, terminal_width=100).output
    for name, command in group.commands.items():
        yield command, runner.invoke(app, [name, "--help"], env={"COLUMNS": "100"}, terminal_width=100).output


def test_help_shows_no_type_names():
    import re

    for command, text in _helps():
        assert "Usage:" in text, text
        # typer's own type labels, such as <bool>, <str>, <list[str]> or <int range>
        assert not re.findall(r"<[a-z][\w\[\] ]*>", text), (command.name, text)


def test_help_texts_are_sentences():
    import click

    for command, _ in _helps():
        for paragraph in command.help.strip().split("\n\n"):
            paragraph = "\n".join(line.strip() for line in paragraph.splitlines())
            assert "\n" not in paragraph and paragraph.endswith("."), (command.name, paragraph)
        for param in command.params:
            if isinstance(param, click.Option) or param.help:
                assert param.help and "\n" not in param.help and param.help.endswith("."), (command.name, param.opts)


def test_usage_errors_exit_2():
    runner = CliRunner()
    assert runner.invoke(app, ["import", "x", "--in-flight", "0"]).exit_code == 2
    assert runner.invoke(app, ["import", "x", "--on-param-conflict", "merge"]).exit_code == 2
    assert runner.invoke(app, ["find", "--experiment", "e", "--tag", "novalue"]).exit_code == 2
    assert runner.invoke(app, ["nonsense"]).exit_code == 2


def test_a_command_called_in_this_process_leaves_it_as_it_was(tmp_path):
    """The program tunes its own process (pandas hidden, Arrow's allocator); `app` called in a
    host's process (here the test's) must not: a later `import pandas` still works."""
    import sys

    import pyarrow as pa

    pool, hooks = pa.default_memory_pool().backend_name, list(sys.meta_path)
    manifest = tmp_path / "m.json"
    manifest.write_text('{"format_version": 1, "experiment": "e", "runs": [{"name": "r"}]}')
    assert CliRunner().invoke(app, ["validate", str(manifest)]).exit_code == 0
    assert list(sys.meta_path) == hooks and pa.default_memory_pool().backend_name == pool


def test_validate_json_lists_problems_with_file_location_and_message(tmp_path):
    """`importer validate --json`: the shape the service's POST /v1/validate answers, plus the file."""
    import json

    good = tmp_path / "good.json"
    good.write_text('{"format_version": 1, "experiment": "e", "runs": [{"id": "r", '
                    '"metrics": {"loss": [{"step": 0, "value": 1.5}, {"step": 1, "value": 1.25}]}}]}')
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "experiment": "e", "runs": [{"id": "r", "metricz": {}}]}')
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(good), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {
        "ok": True, "runs": 1, "points": 2, "artifacts": 0, "problems": [], "notes": [], "unrecognised": []}
    refused = runner.invoke(app, ["validate", str(bad), "--json"])
    assert refused.exit_code == 2
    (problem,) = json.loads(refused.stdout)["problems"]
    assert problem == {"file": str(bad), "location": "runs[0].metricz",
                       "message": "unknown field 'metricz' (check the spelling)"}
