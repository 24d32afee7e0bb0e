"""The `importer` command: a thin typer layer over the package's functions.

Exit codes: 0 all done; 1 some runs failed; 2 invalid input or usage, nothing written;
3 server unreachable or credentials refused.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import pyarrow as pa
import typer

from . import pipeline
from .errors import ConnectionFailed, ImporterError, InputError
from .mlflow_api import ClientConfig
from .sources.base import SourceOptions

EXIT_OK, EXIT_RUNS_FAILED, EXIT_INPUT, EXIT_SERVER = 0, 1, 2, 3

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Register ML runs in an MLflow tracking server after the fact.")
_state = {"debug": False}

TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
    help="The MLflow server, e.g. http://127.0.0.1:5000.")]


class _NoPandas(importlib.abc.MetaPathFinder):
    """importer never uses pandas, but pyarrow (at its first array) and sqlite-utils import it
    whenever it is installed, as it is next to mlflow: about 40 MB and 0.3 s for every command.
    Only the command line makes pandas look absent, for its own process; library users keep it."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError("importer's command line does not load pandas", name=name)
        return None


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    # Arrow's default pool here (mimalloc) kept ~33 MB more at the peak of a 5-million-point
    # import than the system allocator, at the same speed (bench/).
    pa.set_memory_pool(pa.system_memory_pool())


def _fail(exc: BaseException) -> typer.Exit:
    """One line (or the list of problems) on stderr, and the documented exit code."""
    if _state["debug"]:
        traceback.print_exception(exc)
    typer.echo(f"error: {exc}", err=True)
    if isinstance(exc, ConnectionFailed):
        return typer.Exit(EXIT_SERVER)
    if isinstance(exc, InputError):
        return typer.Exit(EXIT_INPUT)
    return typer.Exit(EXIT_RUNS_FAILED)


class _Bar:
    """A one-line progress display on stderr, for terminals only."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done / total if total else 100
        sys.stderr.write(f"\r  {done:,}/{total:,} metric points ({pct:.0f}%)")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")


Paths = Annotated[list[str], typer.Argument(
    help="Manifests, log files or folders (walked; every recognised run is read); - reads a manifest from stdin.")]
Experiment = Annotated[Optional[str], typer.Option(help="Experiment for runs whose input names none.")]
Format = Annotated[Optional[str], typer.Option(
    "--format", help="Read every path as this format instead of detecting it: "
    "manifest, keras, lightning, yolo, csv, hf, text, tensorboard, wandb.")]
Pattern = Annotated[Optional[list[str]], typer.Option(
    "--pattern", help="Text logs: a regex with named groups (step, epoch, time; any other group is a metric). Repeatable.")]
StepColumn = Annotated[Optional[str], typer.Option(help="Generic tables: the column holding the step.")]
TimeColumn = Annotated[Optional[str], typer.Option(help="Generic tables: the column holding the time.")]
KeyPrefix = Annotated[str, typer.Option(help="Generic tables: a prefix for every metric key.")]


def _options(pattern, step_column, time_column, key_prefix) -> SourceOptions:
    return SourceOptions(step_column=step_column, time_column=time_column, key_prefix=key_prefix,
                         patterns=list(pattern or []))


@app.command("import")
def import_(
    paths: Paths,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = None,
    fmt: Format = None,
    pattern: Pattern = None,
    step_column: StepColumn = None,
    time_column: TimeColumn = None,
    key_prefix: KeyPrefix = "",
    state: Annotated[Optional[Path], typer.Option(help="Ledger file (default: ~/.local/state/importer/ledger.db).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be created, appended or skipped; write nothing.")] = False,
    on_param_conflict: Annotated[str, typer.Option(help="When a param differs from the stored value: error, keep or rename.")] = "error",
    in_flight: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at most.")] = ClientConfig.max_in_flight,
    as_json: Annotated[bool, typer.Option("--json", help="Write the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Register the runs of manifests and training logs in an MLflow server."""
    if on_param_conflict not in ("error", "keep", "rename"):
        typer.echo("error: --on-param-conflict must be error, keep or rename", err=True)
        raise typer.Exit(EXIT_INPUT)
    bar = _Bar() if (sys.stderr.isatty() and not quiet and not as_json) else None
    try:
        summary = pipeline.import_paths(
            paths, tracking_uri, experiment=experiment, fmt=fmt,
            options=_options(pattern, step_column, time_column, key_prefix), state=state,
            dry_run=dry_run, on_param_conflict=on_param_conflict,
            config=ClientConfig(max_in_flight=in_flight), progress=bar)
    except ImporterError as e:
        raise _fail(e)
    finally:
        if bar:
            bar.close()
    typer.echo(pipeline.summary_json(summary) if as_json else summary.text())
    if any(o.unreachable for o in summary.failed):
        raise typer.Exit(EXIT_SERVER)
    raise typer.Exit(EXIT_RUNS_FAILED if summary.failed else EXIT_OK)


@app.command()
def validate(
    paths: Paths,
    experiment: Experiment = None,
    fmt: Format = None,
    pattern: Pattern = None,
    step_column: StepColumn = None,
    time_column: TimeColumn = None,
    key_prefix: KeyPrefix = "",
) -> None:
    """Check inputs without a server: every problem with file, location and rule."""
    try:
        inputs = pipeline.read_inputs(paths, experiment, fmt=fmt,
                                      options=_options(pattern, step_column, time_column, key_prefix))
    except ImporterError as e:
        raise _fail(e)
    records = inputs.records
    points = sum(r.point_count for r in records)
    typer.echo(f"ok: {len(records)} runs, {points:,} metric points, "
               f"{sum(len(r.artifacts) for r in records)} artifact files")
    for note in inputs.notes:
        typer.echo(f"  note: {note}")
    for path in inputs.unrecognised:
        typer.echo(f"  not recognised: {path}")


@app.command()
def inspect(
    paths: Paths,
    experiment: Experiment = None,
    fmt: Format = None,
    pattern: Pattern = None,
    step_column: StepColumn = None,
    time_column: TimeColumn = None,
    key_prefix: KeyPrefix = "",
    as_json: Annotated[bool, typer.Option("--json", help="Write the report as JSON on stdout.")] = False,
) -> None:
    """What importer sees in PATH, without a server: format, runs, params, metric keys, points
    and step range per key, problems."""
    try:
        report = pipeline.inspect(paths, experiment, fmt=fmt,
                                  options=_options(pattern, step_column, time_column, key_prefix))
    except ImporterError as e:
        raise _fail(e)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(pipeline.inspect_text(report))
    raise typer.Exit(EXIT_INPUT if report["problems"] else EXIT_OK)


@app.command()
def find(
    experiment: Annotated[str, typer.Option(help="Experiment name.")],
    tag: Annotated[list[str], typer.Option(help="KEY=VALUE; repeat to require several.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Is this run already registered? Prints the run ids and exits 0, or exits 1."""
    tags = {}
    for item in tag:
        if "=" not in item:
            typer.echo(f"error: --tag {item!r} is not KEY=VALUE", err=True)
            raise typer.Exit(EXIT_INPUT)
        k, v = item.split("=", 1)
        tags[k] = v
    try:
        ids = pipeline.find(experiment, tags, tracking_uri)
    except ImporterError as e:
        raise _fail(e)
    for run_id in ids:
        typer.echo(run_id)
    raise typer.Exit(EXIT_OK if ids else EXIT_RUNS_FAILED)


@app.command()
def schema() -> None:
    """Print the run-manifest JSON Schema."""
    typer.echo(json.dumps(pipeline.schema(), indent=2))


@app.command()
def demo(
    paths: Annotated[Optional[list[str]], typer.Argument(help="What to import (default: sample_logs/).")] = None,
    state: Annotated[Path, typer.Option(help="Folder for the local server's data and the ledger.")] = Path(".importer-demo"),
    port: Annotated[int, typer.Option(help="Port of the local server.")] = 5000,
) -> None:
    """Start a local MLflow server (SQLite, in STATE) unless one already answers on PORT, import
    sample_logs/ into it, and leave it running."""
    import httpx

    from .server import LocalServer

    url, pid = f"http://127.0.0.1:{port}", None
    try:
        try:
            running = httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            running = False
        if running:
            typer.echo(f"Using the MLflow server already running at {url}")
        else:
            typer.echo(f"Starting an MLflow server at {url} (data in {state / 'server'}) ...")
            server = LocalServer(state / "server", port=port).start()
            pid = server.process.pid
        summary = pipeline.import_paths(paths or ["sample_logs"], url, state=state / "ledger.db")
    except ImporterError as e:
        raise _fail(e)
    typer.echo(summary.text())
    typer.echo(f"\nOpen the MLflow UI at {url}")
    if pid:
        typer.echo(f"The server keeps running (pid {pid}); stop it with: kill {pid}")
    raise typer.Exit(EXIT_RUNS_FAILED if summary.failed else EXIT_OK)
