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


def test_every_relative_link_in_the_docs_leads_to_a_file():
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").rglob("*.md"))]
    assert len(pages) > 3
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target} does not exist"


def test_every_command_in_the_readme_examples_exists():
    examples = "\n".join(re.findall(r"^```\w*\n(.*?)^```$", README, re.M | re.S))
    names = re.findall(r"^importer ([a-z-]+)", examples, re.M)
    assert "import" in names
    for name in names:
        assert name in COMMANDS or name == "--version", name
