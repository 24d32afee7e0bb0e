"""The `importer` command: a thin typer layer over the package's functions.

Exit codes: 0 all done; 1 some runs failed; 2 invalid input or usage, nothing written;
3 server unreachable or credentials refused; 75 (scan, watch) another scan or watch holds the lock.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import shutil
import sys
import time
import traceback
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


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

from .errors import ConnectionFailed, ImporterError, InputError, ValidationError  # noqa: E402
from .mlflow_api import ClientConfig, side_env  # noqa: E402

# The commands import what they use when they run (`export` reads no log format), so that the
# start of every command costs a tenth of a second, not half a second.

EXIT_OK, EXIT_RUNS_FAILED, EXIT_INPUT, EXIT_SERVER = 0, 1, 2, 3

def _no_type(ctx) -> None:
    return None


class _Help:
    """typer prints each parameter's Python type beside it in --help (`--dry-run <bool>`,
    `PATH <list[str]>`) where no metavar is declared. A flag takes no value, and an argument's
    metavar names it already, so for those the help shows no type; every option with a value
    declares its metavar (URL, NAME, N)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) or getattr(param, "is_flag", False):
                param.display_type_rich = _no_type
        return params


class _Group(_Help, TyperGroup):
    pass


class _Command(_Help, TyperCommand):
    pass


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Register ML runs in an MLflow tracking server after the fact.")
_state = {"debug": False, "own_process": False}

TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True, metavar="URL",
    help="The MLflow server, for example http://127.0.0.1:5000.")]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("importer")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"importer {_version()}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    _state["debug"] = debug
    if _state["own_process"]:  # here, not in run(): `--help` and `--version` load no pyarrow
        _set_allocator()


def run() -> None:
    """The `importer` program (its console script and `python -m importer`): the commands, in a
    process tuned for them. The tuning is here, not in `app` nor the package: a library, or a test
    calling `app` in its own process, must not have its host's modules, environment or allocator
    changed."""
    _state["own_process"] = True
    if "pandas" not in sys.modules:
        # pyarrow (at its first array) and sqlite-utils import pandas whenever it is installed,
        # as it is next to mlflow: about 40 MB and 0.3 s for every command.
        sys.meta_path.insert(0, _Absent("pandas"))
    # Arrow's jemalloc (the CSV reader allocates from it) returns freed pages at once instead of
    # after a second: about 20 MB less at the peak of a 10-million-point CSV (bench/bench_parse.py).
    # It is read when pyarrow loads, which no command has done yet; arenas made later (the CSV
    # reader's threads get those) follow jemalloc_set_decay_ms.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
    app(prog_name="importer")


def _set_allocator() -> None:
    # Arrow's default pool here (mimalloc) kept ~33 MB more at the peak of a 5-million-point
    # import than the system allocator, at the same speed (bench/).
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    try:
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, AttributeError, pa.ArrowException):  # a pyarrow without jemalloc
        pass


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


def _duration(seconds: float) -> str:
    """20 s, 4 min 05 s, 2 h 05 min: as precise as a person reading a progress line needs."""
    s = max(1, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress_text(done: int, total: int, rate: float | None) -> str:
    """The progress line: points done (of the total, when it is known), the rate and the time left.

    `rate` is points per second, or None while too little time has passed to measure it."""
    if total:
        text = f"{done:,}/{total:,} metric points ({100 * done / total:.0f}%)"
    else:  # runs read from a server: their size is known only as each is read
        text = f"{done:,} metric points"
    if rate is not None:
        text += f", {rate:,.0f} points/s"
        if total and done < total and rate > 0:
            text += f", {_duration((total - done) / rate)} left"
    return text


class _Bar:
    """A one-line progress display on stderr, for terminals only.

    The rate is measured over the last WINDOW seconds, and shown once at least a second has
    passed: the first batches land in a burst that says nothing about the speed to come."""

    WINDOW, MIN_SPAN, EVERY = 10.0, 1.0, 0.2

    def __init__(self, stream=None, clock=None) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock or time.monotonic
        self.samples: deque[tuple[float, int]] = deque()  # (time, points done)
        self.width = 0  # of the line on screen, to clear it
        self.drawn_at = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.WINDOW:
            self.samples.popleft()
        if now - self.drawn_at < self.EVERY and done != total:
            return  # a redraw per batch would cost more than it tells
        self.drawn_at = now
        since, done_then = self.samples[0]
        rate = (done - done_then) / (now - since) if now - since >= self.MIN_SPAN else None
        text = "  " + progress_text(done, total, rate)
        text = text[:shutil.get_terminal_size().columns - 1]  # a wrapped line cannot be redrawn
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(text))

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


Paths = Annotated[list[str], typer.Argument(
    metavar="PATH", help="Manifests, log files or folders (a folder is walked and every run recognised in it "
    "is read); - reads a manifest from standard input.")]
Experiment = Annotated[Optional[str], typer.Option(
    metavar="NAME", help="The experiment for runs whose input names none.")]
Format = Annotated[Optional[str], typer.Option(
    "--format", metavar="FORMAT", help="Read every path as this format instead of detecting it: manifest, "
    "bundle, mlruns, mlflow-export, keras, lightning, yolo, csv, hf, text, tensorboard or wandb.")]
Pattern = Annotated[Optional[list[str]], typer.Option(
    "--pattern", metavar="REGEX", help="Text logs: a regular expression with named groups (step, epoch and "
    "time; any other group is a metric); repeatable.")]
StepColumn = Annotated[Optional[str], typer.Option(
    metavar="COLUMN", help="Generic tables: the column that holds the step.")]
TimeColumn = Annotated[Optional[str], typer.Option(
    metavar="COLUMN", help="Generic tables: the column that holds the time.")]
KeyPrefix = Annotated[str, typer.Option(metavar="PREFIX", help="Generic tables: a prefix for every metric key.")]
State = Annotated[Optional[Path], typer.Option(
    metavar="FILE", help="The ledger file; by default $XDG_STATE_HOME/importer/ledger.db, else "
    "~/.local/state/importer/ledger.db.")]
ParamConflict = Annotated[str, typer.Option(
    metavar="error|keep|rename", help="What to do when a param differs from the value stored on the run.")]
AsJson = Annotated[bool, typer.Option("--json", help="Write the summary as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Show no progress line.")]


def _options(pattern, step_column, time_column, key_prefix, artifact_root=()):
    from .sources.base import SourceOptions

    if bad := [m for m in artifact_root or () if "=" not in m]:
        raise _fail(InputError(f"--artifact-root {bad[0]!r}: expected OLD=NEW"))
    return SourceOptions(step_column=step_column, time_column=time_column, key_prefix=key_prefix,
                         patterns=list(pattern or []),
                         artifact_roots=[tuple(m.split("=", 1)) for m in artifact_root or ()])


@app.command("import", cls=_Command)
def import_(
    paths: Paths,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = None,
    fmt: Format = None,
    pattern: Pattern = None,
    step_column: StepColumn = None,
    time_column: TimeColumn = None,
    key_prefix: KeyPrefix = "",
    state: State = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be created, appended or left unchanged, and write nothing.")] = False,
    on_param_conflict: ParamConflict = "error",
    on_metric_change: Annotated[str, typer.Option(
        metavar="POLICY", help="When the source changed metric points already sent: leave (report them, exit 1) "
        "or append (log the new values as new points).")] = "leave",
    in_flight: Annotated[int, typer.Option(
        min=1, max=64, metavar="N", help="Requests in flight at once, per server, for a server nearby; a far server gets more, by its measured round trip (up to 4 times as many).")] = ClientConfig.max_in_flight,
    as_json: AsJson = False,
    quiet: Quiet = False,
    include_deleted: Annotated[bool, typer.Option(
        "--include-deleted", help="mlruns/ folders, bundles and exports: also import the runs deleted there "
        "(they are deleted again on the destination).")] = False,
    artifact_root: Annotated[Optional[list[str]], typer.Option(
        "--artifact-root", metavar="OLD=NEW", help="mlruns/ folders: read the artifacts stored under OLD (such as "
        "file:///C:/Users/me/project) from the folder NEW; repeatable.")] = None,
    register_model: Annotated[Optional[str], typer.Option(
        "--register-model", metavar="NAME", help="Training folders (Hugging Face, Lightning, YOLO, Keras): upload "
        "each run's saved model under model/ and register it as a version of NAME.")] = None,
) -> None:
    """Register the runs of manifests, training logs, mlruns/ folders and export bundles in an MLflow server."""
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
            include_deleted=include_deleted, register_model=register_model,
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
    raise _exit_for(summary)


def _exit_for(summary) -> typer.Exit:
    """The exit code of a summary: 3 when the server could not be reached, 1 when a run failed or
    was left changed, else 0."""
    if any(o.unreachable for o in summary.failed):
        return typer.Exit(EXIT_SERVER)
    return typer.Exit(EXIT_RUNS_FAILED if summary.failed or summary.changed else EXIT_OK)


@app.command(cls=_Command)
def validate(
    paths: Paths,
    experiment: Experiment = None,
    fmt: Format = None,
    pattern: Pattern = None,
    step_column: StepColumn = None,
    time_column: TimeColumn = None,
    key_prefix: KeyPrefix = "",
    as_json: Annotated[bool, typer.Option("--json", help="Write the result as JSON on stdout: ok, runs, "
                                          "points, artifacts, problems (file, location, message), notes.")] = False,
) -> None:
    """Check inputs without a server, and list every problem with its file, location and rule."""
    from . import pipeline

    try:
        inputs = pipeline.read_inputs(paths, experiment, fmt=fmt, everything=True,
                                      options=_options(pattern, step_column, time_column, key_prefix))
    except ValidationError as e:
        if not as_json:
            raise _fail(e)
        typer.echo(json.dumps({"ok": False, "runs": 0, "points": 0, "artifacts": 0,
                               "problems": [asdict(p) for p in e.problems], "notes": [], "unrecognised": []}))
        raise typer.Exit(EXIT_INPUT)
    except ImporterError as e:
        raise _fail(e)
    records = inputs.records
    points = sum(r.point_count for r in records)
    if as_json:
        typer.echo(json.dumps({"ok": True, "runs": len(records), "points": points,
                               "artifacts": sum(len(r.artifacts) for r in records), "problems": [],
                               "notes": inputs.notes, "unrecognised": [str(p) for p in inputs.unrecognised]}))
        return
    typer.echo(f"ok: {len(records)} runs, {points:,} metric points, "
               f"{sum(len(r.artifacts) for r in records)} artifact files")
    for note in inputs.notes:
        typer.echo(f"  note: {note}")
    for path in inputs.unrecognised:
        typer.echo(f"  not recognised: {path}")


@app.command(cls=_Command)
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
    """Show what importer finds in each PATH, without a server.

    Per run: its format, params, metric keys with their points and step range, and its problems."""
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


@app.command(cls=_Command)
def find(
    experiment: Annotated[str, typer.Option(metavar="NAME", help="The experiment's name.")],
    tag: Annotated[list[str], typer.Option(
        metavar="KEY=VALUE", help="A tag the run must have; repeat it to require several.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Tell whether a run is already registered: print its run ids and exit 0, or exit 1."""
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

From = Annotated[str, typer.Option(
    "--from", metavar="URL", help="The source MLflow server (MLFLOW_TRACKING_URI is not used).")]
To = Annotated[str, typer.Option(
    "--to", metavar="URL", help="The destination MLflow server (MLFLOW_TRACKING_URI is not used).")]
Experiments = Annotated[Optional[list[str]], typer.Option(
    "--experiment", metavar="NAME", help="An experiment to take, by name; repeatable. By default, all of them.")]
IncludeDeleted = Annotated[bool, typer.Option(
    "--include-deleted", help="Also take deleted runs and experiments (they are deleted again on the destination).")]
Shard = Annotated[Optional[str], typer.Option(
    metavar="I/N", help="Take only the runs whose root run hashes to shard I of N (1 <= I <= N).")]
NoModels = Annotated[bool, typer.Option("--no-models", help="Leave registered models out.")]
InFlight = Annotated[int, typer.Option(
    min=1, max=64, metavar="N", help="Requests in flight at once, per server, for a server nearby; a far server gets more, by its measured round trip (up to 4 times as many).")]


def _cred(side: str, what: str):
    server = {"from": "source", "to": "destination"}[side]
    return Annotated[Optional[str], typer.Option(
        f"--{side}-{what}-env", metavar="VAR",
        help=f"The name of the environment variable that holds the {server} server's {what}.")]


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


@app.command(cls=_Command)
def export(
    source: From,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="The bundle folder; it is created, and a rerun resumes it.")],
    experiment: Experiments = None,
    since: Annotated[Optional[str], typer.Option(
        metavar="DATE", help="Only the runs started or ended on or after this date (ISO 8601, such as 2024-05-01).")] = None,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    as_json: AsJson = False,
) -> None:
    """Write the runs of a server into a bundle folder, which `importer import BUNDLE` reads.

    Metrics, params, tags, artifacts and registered models go in; a rerun resumes the bundle."""
    from . import moves

    try:
        summary = moves.export(source, out, _selection(experiment, include_deleted, since, shard),
                               models=not no_models, config=ClientConfig(max_in_flight=in_flight),
                               env=side_env(from_token_env, from_username_env, from_password_env))
    except ImporterError as e:
        raise _fail(e)
    _finish(summary, as_json)


@app.command(cls=_Command)
def migrate(
    source: From,
    dest: To,
    experiment: Experiments = None,
    all_: Annotated[bool, typer.Option(
        "--all", help="Take every experiment (the default when no --experiment is given).")] = False,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    state: State = None,
    on_param_conflict: ParamConflict = "error",
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    to_token_env: ToToken = None,
    to_username_env: ToUsername = None,
    to_password_env: ToPassword = None,
    as_json: AsJson = False,
    quiet: Quiet = False,
) -> None:
    """Copy experiments, runs and registered models from one server to another.

    Run it again later to copy only what is new or grew."""
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


@app.command(cls=_Command)
def verify(
    source: From,
    dest: To,
    experiment: Experiments = None,
    include_deleted: IncludeDeleted = False,
    shard: Shard = None,
    no_models: NoModels = False,
    show_map: Annotated[bool, typer.Option(
        "--show-map", help="Print the id map: each source run and its destination run.")] = False,
    in_flight: InFlight = ClientConfig.max_in_flight,
    from_token_env: FromToken = None,
    from_username_env: FromUsername = None,
    from_password_env: FromPassword = None,
    to_token_env: ToToken = None,
    to_username_env: ToUsername = None,
    to_password_env: ToPassword = None,
) -> None:
    """Compare source and destination run by run, and exit 1 on any difference.

    Params, tags, times, status, every metric point, artifacts (by size and hash) and registered models are compared."""
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


@app.command(cls=_Command)
def schema(bundle: Annotated[bool, typer.Option("--bundle", help="Print the export bundle's schema instead.")] = False) -> None:
    """Print the JSON Schema of the run manifest, or of the export bundle."""
    if bundle:
        from .model.bundle import bundle_json_schema
        typer.echo(json.dumps(bundle_json_schema(), indent=2))
    else:
        from . import pipeline
        typer.echo(json.dumps(pipeline.schema(), indent=2))


# -- unattended: scan, status, watch (logic in importer/unattended.py) ----------------------------

Folders = Annotated[list[str], typer.Argument(metavar="DIR", help="The folders to follow (walked; links are not followed).")]
FinishAfter = Annotated[float, typer.Option(
    metavar="SECONDS", help="A unit whose files changed less than this long ago is a run still training: "
    "RUNNING; once quiet this long, FINISHED with its end time.")]


def _locked(e: Exception) -> typer.Exit:
    from .unattended import EXIT_LOCKED

    typer.echo(f"error: {e}", err=True)
    return typer.Exit(EXIT_LOCKED)


@app.command(cls=_Command)
def scan(
    paths: Folders,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = None,
    state: State = None,
    finish_after: FinishAfter = 1800.0,
    as_json: AsJson = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed.")] = False,
) -> None:
    """Import what is new or changed in the folders since the last scan, then exit (for cron).

    Exit codes as import's, and 75 when another scan or watch holds the ledger's lock."""
    from . import unattended

    try:
        result = unattended.scan(paths, tracking_uri, experiment=experiment, state=state,
                                 finish_after=finish_after)
    except unattended.LockHeld as e:
        raise _locked(e)
    except ImporterError as e:
        raise _fail(e)
    summary = result.summary
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif not quiet or summary.failed or summary.changed:
        typer.echo(result.text())
    raise _exit_for(summary)


@app.command(cls=_Command)
def status(
    state: State = None,
    as_json: Annotated[bool, typer.Option("--json", help="Write the report as JSON on stdout.")] = False,
) -> None:
    """Show what scan and watch know: units imported, growing, failed (with the reason), settling.

    Exit 1 when a unit failed."""
    from . import unattended

    try:
        report = unattended.status(state)
    except ImporterError as e:
        raise _fail(e)
    typer.echo(json.dumps(report, indent=2) if as_json else unattended.status_text(report))
    raise typer.Exit(EXIT_RUNS_FAILED if report["failed"] else EXIT_OK)


@app.command(cls=_Command)
def watch(
    paths: Folders,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = None,
    state: State = None,
    settle: Annotated[float, typer.Option(
        metavar="SECONDS", help="Import a file or run folder once it has been quiet this long.")] = 5.0,
    finish_after: FinishAfter = 1800.0,
    polling: Annotated[Optional[float], typer.Option(
        is_flag=False, flag_value=5.0, metavar="[SECONDS]", help="Poll the folders (every 5 s, or SECONDS) "
        "instead of the system's file events: for network file systems.")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines on stderr.")] = False,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit: the same as `importer scan`.")] = False,
) -> None:
    """Follow folders and import each run as it is written, until SIGTERM or SIGINT.

    Catches up at start, imports a unit once quiet for --settle seconds, appends what grows."""
    from . import unattended

    if once:
        scan(paths, tracking_uri, experiment, state, finish_after, as_json=False, quiet=False)
    try:
        unattended.watch(paths, tracking_uri, experiment=experiment, state=state, settle=settle,
                         finish_after=finish_after, polling=polling, log=unattended.Log(log_json))
    except unattended.LockHeld as e:
        raise _locked(e)
    except ImporterError as e:
        raise _fail(e)
    raise typer.Exit(EXIT_OK)


# -- the registration service: `serve` and its client `submit` (importer/service/) ------------------

TokenFile = Annotated[Optional[Path], typer.Option(
    metavar="FILE", help="A file holding the service's token; else $IMPORTER_SERVICE_TOKEN.")]


def _service_token(token_file: Optional[Path]) -> Optional[str]:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise _fail(InputError(f"--token-file {token_file}: {e.strerror}"))
        if not token:
            raise _fail(InputError(f"--token-file {token_file} is empty"))
        return token
    return os.environ.get("IMPORTER_SERVICE_TOKEN") or None


@app.command(cls=_Command)
def serve(
    tracking_uri: TrackingUri = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="The address to listen on; any but loopback "
                                      "needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="The port to listen on.")] = 8080,
    spool: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Where posted manifests and files wait for their import; by default "
        "$XDG_STATE_HOME/importer/spool, else ~/.local/state/importer/spool.")] = None,
    state: State = None,
    max_body: Annotated[int, typer.Option(metavar="BYTES", min=1, help="The largest body taken; "
                                          "larger ones are refused with 413.")] = 1 << 30,
    artifacts_from: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Let manifests posted without parts name artifact files inside DIR.")] = None,
    token_file: TokenFile = None,
    ssl_certfile: Annotated[Optional[str], typer.Option(metavar="FILE", help="Serve HTTPS with this certificate.")] = None,
    ssl_keyfile: Annotated[Optional[str], typer.Option(metavar="FILE", help="The certificate's key.")] = None,
) -> None:
    """Run the registration service: an HTTP API that registers posted run manifests (needs importer[service])."""
    try:
        from .service.app import Settings, serve as run_service
    except ImportError as e:
        typer.echo(f"error: `importer serve` needs the service extra ({e.name} is missing): "
                   "pip install 'importer[service]'", err=True)
        raise typer.Exit(EXIT_INPUT)
    from . import pipeline
    from .ledger import default_path

    try:
        uri = pipeline.tracking_uri_or_env(tracking_uri)
    except InputError as e:
        raise _fail(e)
    settings = Settings(tracking_uri=uri, spool=spool or default_path().parent / "spool", state=state,
                        max_body=max_body, artifacts_from=artifacts_from, token=_service_token(token_file))
    try:
        run_service(settings, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    except ImporterError as e:
        raise _fail(e)


@app.command(cls=_Command)
def submit(
    paths: Paths,
    service: Annotated[str, typer.Option(metavar="URL", help="The service, for example http://127.0.0.1:8080.")],
    token_file: TokenFile = None,
    experiment: Experiment = None,
    fmt: Format = None,
    as_json: AsJson = False,
) -> None:
    """Read any input importer reads and register its runs through an `importer serve` service."""
    from .service.client import submit as submit_paths

    try:
        result = submit_paths(paths, service, _service_token(token_file), experiment=experiment, fmt=fmt)
    except ImporterError as e:
        raise _fail(e)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())
    if result.unreachable:
        raise typer.Exit(EXIT_SERVER)
    raise typer.Exit(EXIT_RUNS_FAILED if result.failed else EXIT_OK)


@app.command(cls=_Command)
def demo(
    paths: Annotated[Optional[list[str]], typer.Argument(
        metavar="PATH", help="What to import; by default sample_logs/.")] = None,
    state: Annotated[Path, typer.Option(
        metavar="DIR", help="The folder for the local server's data and the ledger.")] = Path(".importer-demo"),
    port: Annotated[int, typer.Option(metavar="PORT", help="The port of the local server.")] = 5000,
) -> None:
    """Import sample_logs/ into a local MLflow server, started unless one answers on --port.

    The server (SQLite, its data in --state) keeps running."""
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
