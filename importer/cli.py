"""The `importer` command: a thin typer layer over the package's functions.

Exit codes: 0 all done; 1 some runs failed; 2 invalid input or usage, nothing written;
3 server unreachable or credentials refused.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes packages importer never uses look absent to the command's own process, where a
    dependency would import them only because they are installed. Library users keep them."""

    def __init__(self, *names: str):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            # A spec whose loading fails: `import pandas` raises ImportError as if it were absent,
            # while importlib.util.find_spec("pandas") still answers (wandb's import asks it).
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"importer's command line does not load {spec.name}", name=spec.name)

    def exec_module(self, module):  # never reached: create_module raises
        raise ModuleNotFoundError(name=module.__name__)


if "httpx" not in sys.modules:
    # httpx's own command line, which its package imports when it can: rich, click and pygments,
    # 35 ms of every start.
    sys.meta_path.insert(0, _Absent("httpx._main"))

from .errors import ConnectionFailed, ImporterError, InputError  # noqa: E402
from .mlflow_api import ClientConfig, side_env  # noqa: E402

# The commands import what they use when they run (`export` reads no log format), so that the
# start of every command costs a tenth of a second, not half a second.

EXIT_OK, EXIT_RUNS_FAILED, EXIT_INPUT, EXIT_SERVER = 0, 1, 2, 3

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Register ML runs in an MLflow tracking server after the fact.")
_state = {"debug": False}

TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True,
    help="The MLflow server, e.g. http://127.0.0.1:5000.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug
    if "pandas" not in sys.modules:
        # pyarrow (at its first array) and sqlite-utils import pandas whenever it is installed,
        # as it is next to mlflow: about 40 MB and 0.3 s for every command.
        sys.meta_path.insert(0, _Absent("pandas"))
    # The two changes to this process below are made here, in the command's own process, and not
    # by the package: a library does not change its host's environment or allocator.
    # Arrow's jemalloc (the CSV reader allocates from it) returns freed pages at once instead of
    # after a second: about 20 MB less at the peak of a 10-million-point CSV (bench/bench_parse.py).
    # It is read when pyarrow loads, which no command has done yet.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
    # Arrow's default pool here (mimalloc) kept ~33 MB more at the peak of a 5-million-point
    # import than the system allocator, at the same speed (bench/).
    import pyarrow as pa

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
        if total:
            sys.stderr.write(f"\r  {done:,}/{total:,} metric points ({100 * done / total:.0f}%)")
        else:  # runs read from a server: their size is known only as each is read
            sys.stderr.write(f"\r  {done:,} metric points")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")


Paths = Annotated[list[str], typer.Argument(
    help="Manifests, log files or folders (walked; every recognised run is read); - reads a manifest from stdin.")]
Experiment = Annotated[Optional[str], typer.Option(help="Experiment for runs whose input names none.")]
Format = Annotated[Optional[str], typer.Option(
    "--format", help="Read every path as this format instead of detecting it: manifest, bundle, "
    "mlruns, mlflow-export, keras, lightning, yolo, csv, hf, text, tensorboard, wandb.")]
Pattern = Annotated[Optional[list[str]], typer.Option(
    "--pattern", help="Text logs: a regex with named groups (step, epoch, time; any other group is a metric). Repeatable.")]
StepColumn = Annotated[Optional[str], typer.Option(help="Generic tables: the column holding the step.")]
TimeColumn = Annotated[Optional[str], typer.Option(help="Generic tables: the column holding the time.")]
KeyPrefix = Annotated[str, typer.Option(help="Generic tables: a prefix for every metric key.")]


def _options(pattern, step_column, time_column, key_prefix, artifact_root=()):
    from .sources.base import SourceOptions

    if bad := [m for m in artifact_root or () if "=" not in m]:
        raise _fail(InputError(f"--artifact-root {bad[0]!r}: expected OLD=NEW"))
    return SourceOptions(step_column=step_column, time_column=time_column, key_prefix=key_prefix,
                         patterns=list(pattern or []),
                         artifact_roots=[tuple(m.split("=", 1)) for m in artifact_root or ()])


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
    on_metric_change: Annotated[str, typer.Option(help="When the source changed metric points already sent: leave (report them, exit 1) or append (log the new values as new points).")] = "leave",
    in_flight: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at most.")] = ClientConfig.max_in_flight,
    as_json: Annotated[bool, typer.Option("--json", help="Write the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    include_deleted: Annotated[bool, typer.Option("--include-deleted", help="mlruns folders, bundles and exports: also import deleted runs (deleted again on the destination).")] = False,
    artifact_root: Annotated[Optional[list[str]], typer.Option("--artifact-root", help="mlruns folders: OLD=NEW, artifacts stored under OLD (e.g. file:///C:/Users/me/project) are read from the folder NEW. Repeatable.")] = None,
) -> None:
    """Register the runs of manifests, training logs, mlruns/ folders and export bundles in an
    MLflow server."""
    from . import pipeline

    if on_param_conflict not in ("error", "keep", "rename"):
        typer.echo("error: --on-param-conflict must be error, keep or rename", err=True)
        raise typer.Exit(EXIT_INPUT)
    bar = _Bar() if (sys.stderr.isatty() and not quiet and not as_json) else None
    try:
        summary = pipeline.import_paths(
            paths, tracking_uri, experiment=experiment, fmt=fmt,
            options=_options(pattern, step_column, time_column, key_prefix, artifact_root), state=state,
            dry_run=dry_run, on_param_conflict=on_param_conflict, on_metric_change=on_metric_change,
            include_deleted=include_deleted,
            config=ClientConfig(max_in_flight=in_flight), progress=bar)
    except ImporterError as e:
        raise _fail(e)
    finally:
        if bar:
            bar.close()
    _finish(summary, as_json)


def _finish(summary, as_json: bool) -> None:
    from . import pipeline

    typer.echo(pipeline.summary_json(summary) if as_json else summary.text())
    if any(o.unreachable for o in summary.failed):
        raise typer.Exit(EXIT_SERVER)
    raise typer.Exit(EXIT_RUNS_FAILED if summary.failed or summary.changed else EXIT_OK)


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
    from . import pipeline

    try:
        inputs = pipeline.read_inputs(paths, experiment, fmt=fmt, everything=True,
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
    from . import pipeline

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
    from . import pipeline

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


# -- between stores ------------------------------------------------------------------------------

From = Annotated[str, typer.Option("--from", help="The source MLflow server (MLFLOW_TRACKING_URI is not used).")]
To = Annotated[str, typer.Option("--to", help="The destination MLflow server (MLFLOW_TRACKING_URI is not used).")]
Experiments = Annotated[Optional[list[str]], typer.Option(
    "--experiment", help="An experiment to take, by name; repeatable. Default: all experiments.")]
IncludeDeleted = Annotated[bool, typer.Option(
    "--include-deleted", help="Also deleted runs and experiments (deleted again on the destination).")]
Shard = Annotated[Optional[str], typer.Option(
    help="I/N: take only the runs whose root run hashes to shard I of N (1 <= I <= N).")]
NoModels = Annotated[bool, typer.Option("--no-models", help="Leave registered models out.")]
InFlight = Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at most, per server.")]


def _cred(side: str, what: str):
    return Annotated[Optional[str], typer.Option(
        f"--{side}-{what}-env", metavar="VAR",
        help=f"Name of the environment variable holding the {side} server's {what}.")]


FromToken, FromUsername, FromPassword = (_cred("from", w) for w in ("token", "username", "password"))
ToToken, ToUsername, ToPassword = (_cred("to", w) for w in ("token", "username", "password"))


def _selection(experiment, include_deleted, since=None, shard=None):
    from .sources.server import Selection, parse_shard

    since_ms = None
    if since:
        from datetime import datetime, timezone
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise _fail(InputError(f"--since {since!r}: expected a date such as 2024-05-01")) from None
        since_ms = int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    return Selection(tuple(experiment or ()), include_deleted, since_ms, parse_shard(shard))


@app.command()
def export(
    source: From,
    out: Annotated[Path, typer.Option("--out", help="The bundle folder (created; a rerun resumes it).")],
    experiment: Experiments = None,
    since: Annotated[Optional[str], typer.Option(help="Only runs started or ended on or after this date (ISO 8601).")] = None,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    as_json: Annotated[bool, typer.Option("--json", help="Write the summary as JSON on stdout.")] = False,
) -> None:
    """Write runs of a server (metrics, params, tags, artifacts, registered models) into a bundle
    folder that `importer import BUNDLE` reads."""
    from . import moves

    try:
        summary = moves.export(source, out, _selection(experiment, include_deleted, since, shard),
                               models=not no_models, config=ClientConfig(max_in_flight=in_flight),
                               env=side_env(from_token_env, from_username_env, from_password_env))
    except ImporterError as e:
        raise _fail(e)
    _finish(summary, as_json)


@app.command()
def migrate(
    source: From,
    dest: To,
    experiment: Experiments = None,
    all_: Annotated[bool, typer.Option("--all", help="Every experiment (the default when no --experiment is given).")] = False,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    state: Annotated[Optional[Path], typer.Option(help="Ledger file (default: ~/.local/state/importer/ledger.db).")] = None,
    on_param_conflict: Annotated[str, typer.Option(help="When a param differs from the stored value: error, keep or rename.")] = "error",
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    to_token_env: ToToken = None,
    to_username_env: ToUsername = None,
    to_password_env: ToPassword = None,
    as_json: Annotated[bool, typer.Option("--json", help="Write the summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Copy experiments, runs and registered models from one server to another. Run it again
    later to copy only what is new or grew."""
    from . import moves

    if all_ and experiment:
        raise _fail(InputError("--all and --experiment exclude each other"))
    bar = _Bar() if (sys.stderr.isatty() and not quiet and not as_json) else None
    try:
        summary = moves.migrate(
            source, dest, _selection(experiment, include_deleted, shard=shard), state=state,
            on_param_conflict=on_param_conflict, models=not no_models,
            config=ClientConfig(max_in_flight=in_flight),
            source_env=side_env(from_token_env, from_username_env, from_password_env),
            dest_env=side_env(to_token_env, to_username_env, to_password_env), progress=bar)
    except ImporterError as e:
        raise _fail(e)
    finally:
        if bar:
            bar.close()
    _finish(summary, as_json)


@app.command()
def verify(
    source: From,
    dest: To,
    experiment: Experiments = None,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    show_map: Annotated[bool, typer.Option("--show-map", help="Print the id map: source run -> destination run.")] = False,
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    to_token_env: ToToken = None,
    to_username_env: ToUsername = None,
    to_password_env: ToPassword = None,
) -> None:
    """Compare source and destination run by run: params, tags, times, status, every metric
    point, artifacts by size and hash, registered models. Exits 1 on any difference."""
    from .verification import verify as verify_stores

    try:
        report = verify_stores(
            source, dest, _selection(experiment, include_deleted, shard=shard), models=not no_models,
            config=ClientConfig(max_in_flight=in_flight),
            source_env=side_env(from_token_env, from_username_env, from_password_env),
            dest_env=side_env(to_token_env, to_username_env, to_password_env))
    except ImporterError as e:
        raise _fail(e)
    typer.echo(report.text(show_map))
    raise typer.Exit(EXIT_RUNS_FAILED if report.differences else EXIT_OK)


@app.command()
def schema(bundle: Annotated[bool, typer.Option("--bundle", help="The export bundle's schema instead.")] = False) -> None:
    """Print the run-manifest JSON Schema (or the export bundle's)."""
    if bundle:
        from .model.bundle import bundle_json_schema
        typer.echo(json.dumps(bundle_json_schema(), indent=2))
    else:
        from . import pipeline
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

    from . import pipeline
    from .local_server import LocalServer

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
