"""The HTTP routes of `importer serve` (FastAPI), the token check, and the server's start.

A post is streamed into the spool as it arrives (the --max-body limit is enforced while reading),
read by the manifest source exactly as `importer import` reads a file, and only when it is valid
made a job (fsynced, renamed) and answered. The worker (jobs.py) imports it.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, TypeAdapter
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from .. import pipeline
from ..errors import ImporterError, InputError, Problem
from ..mlflow_api import MlflowApi
from ..model import Manifest, Run
from .jobs import LATENCY_BUCKETS, Jobs, read_manifest
from .spool import Incoming, Spool

DEFAULT_MAX_BODY = 1 << 30  # 1 GiB: a 10-million-point manifest is about 400 MB of JSON
DEFAULT_WAIT = 30.0


@dataclass
class Settings:
    tracking_uri: str
    spool: Path
    state: Optional[Path] = None
    max_body: int = DEFAULT_MAX_BODY
    artifacts_from: Optional[Path] = None
    token: Optional[str] = None
    workers: int = 2


# -- answers (their models make the OpenAPI document) -------------------------------------------

class ProblemOut(BaseModel):
    location: str
    message: str


class ErrorOut(BaseModel):
    detail: str
    problems: list[ProblemOut] = []


class RunOut(BaseModel):
    import_key: str
    experiment: str
    action: str
    run_id: Optional[str] = None
    url: Optional[str] = None
    error: Optional[str] = None


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]
    accepted: int
    finished: Optional[int] = None
    error: Optional[str] = None
    summary: Optional[dict[str, Any]] = None  # as `importer import --json` prints it
    runs: list[RunOut] = []


class ValidationOut(BaseModel):
    ok: bool
    runs: int
    points: int
    artifacts: int
    problems: list[ProblemOut]


class FoundOut(BaseModel):
    run_ids: list[str]


class Refused(Exception):
    """A request answered with an error status and, for bad input, the problems."""

    def __init__(self, status: int, detail: str, problems: list[Problem] = ()):
        self.status, self.detail, self.problems = status, detail, list(problems)


# -- the token -----------------------------------------------------------------------------------

class TokenCheck:
    """Every route but /healthz wants `Authorization: Bearer <token>` when a token is set; 401,
    without detail, otherwise. Compared in constant time."""

    def __init__(self, app, token: Optional[str]):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.expected and scope["path"] != "/healthz":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"www-authenticate", b"Bearer"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


# -- receiving a post ----------------------------------------------------------------------------

async def _limited(request: Request, max_body: int) -> AsyncIterator[bytes]:
    """The body, refused with 413 as soon as it passes `max_body` (a declared length first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise Refused(413, f"the body is larger than the service takes ({max_body} bytes)")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_body:
            raise Refused(413, f"the body is larger than the service takes ({max_body} bytes)")
        yield chunk


class _Parts:
    """Writes each multipart part straight to its file in the post's folder as it arrives."""

    def __init__(self, post: Incoming):
        self.post = post
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.out = None
        self.error: Optional[Refused] = None
        self.manifest_seen = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin, "on_header_field": self._field,
            "on_header_value": self._value, "on_header_end": self._header_end,
            "on_headers_finished": self._open, "on_part_data": self._data, "on_part_end": self._end,
        }

    def _begin(self):
        self.headers = {}

    def _field(self, data, start, end):
        self.field += data[start:end]

    def _value(self, data, start, end):
        self.value += data[start:end]

    def _header_end(self):
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def _open(self):
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "manifest":
            if self.manifest_seen:
                raise Refused(422, "the part `manifest` is given twice")
            self.manifest_seen = True
            path = self.post.manifest
        else:
            try:
                path = self.post.part_path(name)
            except InputError as e:
                raise Refused(422, str(e)) from None
        self.out = open(path, "wb")

    def _data(self, data, start, end):
        self.out.write(data[start:end])

    def _end(self):
        self.out.close()
        self.out = None

    def close(self):
        if self.out:
            self.out.close()


async def _receive(request: Request, post: Incoming, max_body: int) -> None:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind == b"application/json":
        with open(post.manifest, "wb") as f:
            async for chunk in _limited(request, max_body):
                f.write(chunk)
        return
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise Refused(415, "send the manifest as application/json, or as multipart/form-data with a "
                           "part `manifest` and one part per artifact file named by its `path`")
    parts = _Parts(post)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    try:
        async for chunk in _limited(request, max_body):
            parser.write(chunk)
        parser.finalize()
    finally:
        parts.close()
    if not parts.manifest_seen:
        raise Refused(422, "no part named `manifest`")


def _check(post: Incoming, artifacts_from: Optional[Path]) -> tuple[list, str]:
    """Read the received manifest as `importer import` would: (records, where its artifacts are),
    or Refused with every problem. 400 for a body that is no JSON, 422 for a manifest that breaks
    a rule."""
    where = "artifacts-from" if artifacts_from and not post.parts else "uploads"
    base = artifacts_from if where == "artifacts-from" else post.files
    reader = read_manifest(post.manifest, base, "manifest")
    shown = "--artifacts-from" if where == "artifacts-from" else "the uploaded parts"
    problems = [Problem(p.file, p.location, p.message.replace(str(base.resolve()), shown))
                for p in reader.problems]
    if not problems:  # every part must be a file the manifest names: nothing unused is kept
        named = {a.source.resolve() for r in reader.records for a in r.artifacts if isinstance(a.source, Path)}
        problems = [Problem("manifest", f"part {name!r}", "no artifact of the manifest names it")
                    for name in post.parts if (post.files / name).resolve() not in named]
    if problems:
        syntax = any(p.location.startswith(("line ", "byte ")) for p in problems)
        raise Refused(400 if syntax else 422, "the manifest is not valid", problems)
    return reader.records, where


def _problems(problems: list[Problem]) -> list[dict]:
    return [{"location": p.location, "message": p.message} for p in problems]


# -- the app ---------------------------------------------------------------------------------------

BODY = {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ManifestDocument"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["manifest"],
        "properties": {"manifest": {"type": "string", "format": "binary",
                                    "description": "The manifest (JSON)."}},
        "additionalProperties": {"type": "string", "format": "binary",
                                 "description": "One part per artifact file, named by its `path`."}}},
}, "required": True}
ERRORS = {code: {"model": ErrorOut} for code in (400, 413, 415, 422)}


def create_app(settings: Settings, jobs: Optional[Jobs] = None) -> FastAPI:
    """The service's routes. `jobs` None: the app only describes itself (openapi_document)."""
    spool = jobs.spool if jobs else None

    @asynccontextmanager
    async def lifespan(app):
        if jobs:
            jobs.start()
        yield
        if jobs:
            await run_in_threadpool(jobs.stop)

    app = FastAPI(title="importer service", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan, description=(
                      "Registers ML runs in an MLflow tracking server after the fact: post a run "
                      "manifest (format version 1), get the registered runs back."))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"detail": exc.detail, "problems": _problems(exc.problems)},
                            status_code=exc.status)

    async def received(request: Request) -> tuple[Incoming, list, str]:
        post = spool.receive()
        try:
            await _receive(request, post, settings.max_body)
            records, where = await run_in_threadpool(_check, post, settings.artifacts_from)
        except BaseException:
            post.discard()
            raise
        return post, records, where

    @app.post("/v1/runs", status_code=201, response_model=JobOut, openapi_extra={"requestBody": BODY},
              responses={202: {"model": JobOut, "description": "Accepted and spooled; poll Location."},
                         **ERRORS})
    async def post_runs(request: Request, wait: float = Query(DEFAULT_WAIT, ge=0, le=3600)):
        """Register the runs of a manifest. Answered once the manifest and its files are durably in
        the spool: 201 with the result when the job ends within `wait` seconds, else 202."""
        post, records, where = await received(request)
        try:
            job = await run_in_threadpool(spool.accept, post, where)
        except OSError:  # a full disk, say: nothing was accepted
            post.discard()
            raise
        for rec in records:  # read while in incoming/: the files are now in the job's folder
            for a in rec.artifacts:
                if isinstance(a.source, Path) and a.source.is_relative_to(post.folder):
                    a.source = job / a.source.relative_to(post.folder)
        jobs.enqueue(post.id, records)
        finished = jobs.waiter(post.id)  # after: a job already finished resolves it at once
        try:
            await asyncio.wait_for(asyncio.shield(finished), wait)
        except asyncio.TimeoutError:
            pass
        body = _job(post.id)
        if body["state"] in ("done", "failed"):
            return JSONResponse(body, status_code=201)
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{post.id}"})

    def _job(job_id: str) -> Optional[dict]:
        if spool.folder(job_id) is None:
            return None
        info = spool.info(job_id)
        result = spool.result(job_id)
        if result is not None:
            return {**result, "accepted": info["accepted"]}
        return {"id": job_id, "state": jobs.state(job_id) or "queued", "accepted": info["accepted"],
                "finished": None, "error": None, "summary": None, "runs": []}

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
    async def get_job(job_id: str):
        """A job's state and, once it ended, the import summary and its runs."""
        body = _job(job_id)
        if body is None:
            raise Refused(404, f"no job {job_id!r}")
        return JSONResponse(body)

    @app.post("/v1/validate", response_model=ValidationOut, openapi_extra={"requestBody": BODY},
              responses=ERRORS)
    async def validate(request: Request):
        """Check a manifest (and its parts) as `importer validate` does; nothing is written."""
        try:
            post, records, _ = await received(request)
        except Refused as e:
            if e.status not in (400, 422) or not e.problems:
                raise
            return {"ok": False, "runs": 0, "points": 0, "artifacts": 0, "problems": _problems(e.problems)}
        post.discard()
        return {"ok": True, "runs": len(records), "points": sum(r.point_count for r in records),
                "artifacts": sum(len(r.artifacts) for r in records), "problems": []}

    @app.get("/v1/runs", response_model=FoundOut, responses={422: {"model": ErrorOut}})
    async def find(experiment: str, tag: list[str] = Query([], description="k=v; repeatable")):
        """`importer find` over HTTP: the active runs of the experiment holding every tag."""
        if bad := [t for t in tag if "=" not in t]:
            raise Refused(422, f"tag {bad[0]!r}: expected KEY=VALUE")
        try:
            ids = await run_in_threadpool(pipeline.find, experiment, dict(t.split("=", 1) for t in tag),
                                          settings.tracking_uri)
        except ImporterError as e:
            raise Refused(502, str(e)) from None
        return {"run_ids": ids}

    @app.get("/healthz")
    async def healthz():
        """The service answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorOut}})
    async def readyz():
        """The service and its MLflow server answer."""
        try:
            async with MlflowApi(settings.tracking_uri) as api:
                await api.health()
                await api.call("experiments/search", {"max_results": 1})  # credentials accepted
        except ImporterError as e:
            raise Refused(503, str(e)) from None
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format."""
        return PlainTextResponse(await run_in_threadpool(_metrics_text, jobs),
                                 media_type="text/plain; version=0.0.4")

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            manifest = TypeAdapter(Union[Manifest, Run]).json_schema(
                ref_template="#/components/schemas/{model}")
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(manifest.pop("$defs"))
            schemas["ManifestDocument"] = {**manifest, "title": "ManifestDocument", "description": (
                "A manifest, format version 1 (the run-manifest schema): {format_version: 1, "
                "experiment, runs: [RUN, ...]}, or one RUN naming its experiment.")}
            # A service started with a token wants it on every route but /healthz (401 otherwise).
            doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            doc["security"] = [{"bearer": []}]
            doc["paths"]["/healthz"]["get"]["security"] = []
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    return TokenCheck(app, settings.token) if settings.token else app


def _metrics_text(jobs: Jobs) -> str:
    c = jobs.counters
    lines = ["# HELP importer_jobs Jobs by state (done and failed: all in the spool).",
             "# TYPE importer_jobs gauge"]
    lines += [f'importer_jobs{{state="{s}"}} {n}' for s, n in jobs.counts().items()]
    lines += ["# HELP importer_runs_total Runs imported by this process, by outcome.",
              "# TYPE importer_runs_total counter"]
    lines += [f'importer_runs_total{{action="{a}"}} {n}' for a, n in sorted(c.runs.items())]
    lines += ["# TYPE importer_points_written_total counter", f"importer_points_written_total {c.points}",
              "# TYPE importer_artifacts_written_total counter", f"importer_artifacts_written_total {c.artifacts}",
              "# HELP importer_job_failures_total Jobs that ended failed.",
              "# TYPE importer_job_failures_total counter", f"importer_job_failures_total {c.failures}",
              "# HELP importer_job_retries_total Jobs put back because the MLflow server was unreachable.",
              "# TYPE importer_job_retries_total counter", f"importer_job_retries_total {c.retries}",
              "# HELP importer_mlflow_request_seconds The MLflow server's answers to the jobs' requests.",
              "# TYPE importer_mlflow_request_seconds histogram"]
    total = 0
    for bound, n in zip(LATENCY_BUCKETS, c.latency_counts):
        total += n
        lines.append(f'importer_mlflow_request_seconds_bucket{{le="{bound}"}} {total}')
    lines += [f'importer_mlflow_request_seconds_bucket{{le="+Inf"}} {c.latency_count}',
              f"importer_mlflow_request_seconds_sum {c.latency_sum:.6f}",
              f"importer_mlflow_request_seconds_count {c.latency_count}"]
    return "\n".join(lines) + "\n"


def openapi_document() -> dict:
    """The service's OpenAPI document (schemas/service.openapi.json)."""
    return create_app(Settings(tracking_uri="http://127.0.0.1:5000", spool=Path("."))).openapi()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, host: str, port: int, ssl_certfile: Optional[str] = None,
          ssl_keyfile: Optional[str] = None) -> None:
    """Run the service until SIGINT/SIGTERM. InputError: not on loopback without a token."""
    import uvicorn

    if not is_loopback(host) and not settings.token:
        raise InputError(f"--host {host} is not a loopback address: set a token (--token-file or "
                         "IMPORTER_SERVICE_TOKEN) so that only its holders can post")
    if settings.artifacts_from and not settings.artifacts_from.is_dir():
        raise InputError(f"--artifacts-from {settings.artifacts_from}: not a folder")
    jobs = Jobs(Spool(settings.spool), settings.tracking_uri, state=settings.state,
                artifacts_from=settings.artifacts_from.resolve() if settings.artifacts_from else None,
                workers=settings.workers)
    uvicorn.run(create_app(settings, jobs), host=host, port=port, ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile, log_level="info", timeout_graceful_shutdown=30)


if __name__ == "__main__":  # `make schema`: python -m importer.service.app > schemas/service.openapi.json
    import json
    import sys

    sys.stdout.write(json.dumps(openapi_document(), indent=2) + "\n")
