"""The README documents every command, every option of `import`, and the exit codes."""

import re
from pathlib import Path

import click
import typer.main

from importer.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
COMMANDS = typer.main.get_command(app).commands


def test_every_command_is_documented_and_has_help():
    assert set(COMMANDS) >= {"import", "validate", "find", "schema", "demo"}
    for name, command in COMMANDS.items():
        assert f"importer {name}" in README, f"`importer {name}` is not in the README"
        assert command.help, f"`importer {name}` has no help"


def test_every_import_option_is_documented():
    for param in COMMANDS["import"].params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts), f"{param.opts} not in the README"
            assert param.help


def test_exit_codes_are_documented():
    table = README.split("### Exit codes", 1)[1]
    assert [int(c) for c in re.findall(r"^\| (\d) \|", table, re.M)] == [0, 1, 2, 3]
