"""A typed async client for the MLflow REST endpoints importer uses: auth, limits, retries, errors.

Credentials come from MLflow's own variables and are only ever put into request headers; `safe_url`
is what any message shows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson

from .errors import ConnectionFailed, ImporterError, InputError, RetryableError, ServerError

API = "/api/2.0/mlflow/"
UI_API = "/ajax-api/2.0/mlflow/"  # what MLflow's own web UI calls (get-history-bulk)
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts/"

# The server's log-batch limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100  # the server also caps a request at 1000 entries in all: we never mix
HISTORY_PAGE = 25000  # metrics/get-history page size (the server's own maximum)

_RETRY_STATUS = {429, 500, 502, 503, 504}
ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}  # renamed between MLflow versions
NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_NOT_ASKED = object()  # a lookup not made yet (None being its answer "there is none")


@dataclass(frozen=True)
class ClientConfig:
    """How importer talks to a server. A 1000-point log-batch on a loaded server can take several
    seconds, so the read timeout is generous; the connect timeout is not."""

    max_in_flight: int = 8
    # A far server answers each request a round trip later, so the same number in flight carries
    # fewer points per second (bench/bench_latency.py). Measured on the first requests, every
    # LATENCY_STEP of round trip adds max_in_flight more, up to latency_scale times max_in_flight
    # (8 on loopback, 16 at 50 ms, 32 from 150 ms); 1 keeps max_in_flight whatever the latency.
    latency_scale: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 8  # attempts after the first, with exponential backoff and jitter
    backoff_base: float = 0.25
    backoff_max: float = 15.0
    # A kept-alive connection to the default (uvicorn) server stalls about 40 ms per request
    # (Nagle meeting delayed ACKs); a fresh connection does not. With several requests in flight
    # the stall is hidden and kept-alive connections were faster (bench/, README), so they are
    # the default; False opens a fresh connection per request.
    keepalive: bool = True
    # Called with the seconds of every answer the server gives (the service's /metrics).
    observe: Optional[Callable[[float], None]] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Refused at once, not halfway through writing (0 in flight would send no metric at all).
        if not (self.max_in_flight >= 1 and self.latency_scale >= 1 and self.retries >= 0
                and self.connect_timeout > 0 and self.read_timeout > 0
                and 0 <= self.backoff_base <= self.backoff_max):
            raise InputError(f"invalid client configuration {self}: max_in_flight and latency_scale "
                             "must be at least 1, retries at least 0, timeouts above 0, "
                             "0 <= backoff_base <= backoff_max")


DEFAULT_CONFIG = ClientConfig()
LATENCY_STEP = 0.05  # seconds of round trip per max_in_flight more requests in flight
_PROBES = 2  # answers whose round trip is measured: the least of them is taken as the link's


def in_flight_for(config: ClientConfig, round_trip: float) -> int:
    """Requests in flight for a link whose round trip is `round_trip` seconds: the server's
    throughput needs about throughput x round trip of them (Little's law), so max_in_flight more
    per LATENCY_STEP, at most latency_scale times max_in_flight."""
    steps = min(config.latency_scale, 1 + math.floor(round_trip / LATENCY_STEP))
    return config.max_in_flight * max(1, steps)


class _Slots:
    """At most `limit` requests in flight. Waiting requests go in by class, then in arrival order:
    every other request before metric batches (`bulk`). A run's other requests are steps that
    follow one another (create, settle, params, artifacts, end state), each a round trip; queued
    behind the batches of all runs, each step would wait for a whole queue, and on a far server
    those waits add up to seconds per run. The limit can grow (`grow`), never shrink."""

    def __init__(self, limit: int):
        self.limit = limit
        self.busy = 0
        self._waiting: list = []  # heap of (bulk, arrival, future)
        self._arrival = itertools.count()

    async def acquire(self, bulk: bool = False) -> None:
        if self.busy < self.limit and not self._waiting:
            self.busy += 1
            return
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (bulk, next(self._arrival), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # let in, then cancelled: give the slot back
                self.release()
            raise

    def release(self) -> None:
        self.busy -= 1
        self._let_in()

    def grow(self, limit: int) -> None:
        self.limit = max(self.limit, limit)
        self._let_in()

    def _let_in(self) -> None:
        while self.busy < self.limit and self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.cancelled():  # its waiter was cancelled: skip it
                self.busy += 1
                turn.set_result(None)

    def slot(self, bulk: bool = False) -> "_Slot":
        return _Slot(self, bulk)


class _Slot:
    def __init__(self, slots: _Slots, bulk: bool):
        self.slots, self.bulk = slots, bulk

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.bulk)

    async def __aexit__(self, *exc) -> None:
        self.slots.release()


def side_env(token_env: Optional[str] = None, username_env: Optional[str] = None,
             password_env: Optional[str] = None) -> dict[str, str]:
    """The credentials of one side (--from-token-env VAR and friends): MLflow's variable names
    with values taken from the variables the user named. MLflow's own variables are not used for
    a side, so one server's secret never goes to the other."""
    env = {}
    for target, var in (("MLFLOW_TRACKING_TOKEN", token_env), ("MLFLOW_TRACKING_USERNAME", username_env),
                        ("MLFLOW_TRACKING_PASSWORD", password_env)):
        if var:
            if var not in os.environ:
                raise InputError(f"environment variable {var} is not set")
            env[target] = os.environ[var]
    for var in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        if var in os.environ:
            env[var] = os.environ[var]
    return env


def safe_url(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def tag_filter(key: str, value: str) -> str:
    """A runs/search filter matching tag `key` == `value`. Characters that need quoting in the
    filter language become LIKE's one-character wildcard, so callers must compare exactly after."""
    if any(c in value for c in "'\\\""):
        pattern = "".join("_" if c in "'\\\"" else c for c in value)
        return f"tags.`{key}` LIKE '{pattern}'"
    return f"tags.`{key}` = '{value}'"


def _loads(body: bytes) -> Any:
    """JSON at orjson's speed (a history page parses 2.5x faster than with json.loads)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # NaN or Infinity as bare words, which only json accepts
        return json.loads(body)


def offset_token(offset: int) -> str:
    """A get-history page token starting at `offset`, as MLflow's SearchUtils.create_page_token
    writes it."""
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def pairs(items: Optional[list[dict]]) -> dict[str, str]:
    """The REST API's [{"key": k, "value": v}, ...] (tags, params) as a dict."""
    return {i["key"]: i.get("value", "") for i in items or []}


def _out_of_connections(resp: httpx.Response) -> bool:
    """The server's SQL store had no database connection free for the request within 30 s
    (SQLAlchemy's QueuePool), which it answers with 400 BAD_REQUEST, though it is an overload
    like a 503: seen at 32 requests in flight on a busy 2-core machine."""
    return resp.status_code == 400 and b"QueuePool limit" in resp.content


def aliases(model: dict) -> dict[str, str]:
    """A registered model's aliases as the REST API gives them, as {alias: version}."""
    return {a["alias"]: a["version"] for a in model.get("aliases") or []}


def optional_int(v: Any) -> Optional[int]:
    """A REST API's int64 field (sent as a string), or None when absent."""
    return None if v in (None, "") else int(v)


class MlflowApi:
    """One tracking server. Use as `async with MlflowApi(uri) as api:`."""

    def __init__(self, tracking_uri: str, config: ClientConfig = DEFAULT_CONFIG,
                 env: Optional[dict[str, str]] = None):
        env = os.environ if env is None else env
        parts = urlsplit(tracking_uri)
        if parts.scheme not in ("http", "https"):
            raise ConnectionFailed(
                f"tracking URI {safe_url(tracking_uri)!r} is not an http(s) URL; importer writes "
                "through the REST API of an `mlflow server` (set --tracking-uri or MLFLOW_TRACKING_URI)")
        self.url = safe_url(tracking_uri).rstrip("/")
        self.config = config
        auth: Optional[httpx.Auth] = None
        headers = {"User-Agent": "importer"}
        if parts.username:  # user:password@host in the URI
            auth = httpx.BasicAuth(parts.username, parts.password or "")
        if env.get("MLFLOW_TRACKING_USERNAME"):
            auth = httpx.BasicAuth(env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
        if env.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        verify: Any = True
        if parts.scheme == "http":  # no TLS to verify (redirects are not followed): loading the
            verify = False          # certificate store would cost 20-30 ms of every start
        elif env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true", "yes"):
            verify = False
        elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        most = config.max_in_flight * config.latency_scale  # the pool must not be the limit
        limits = httpx.Limits(max_connections=most * 2, max_keepalive_connections=most if config.keepalive else 0)
        self._http = httpx.AsyncClient(
            base_url=self.url, auth=auth, headers=headers, verify=verify, limits=limits,
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout))
        self._slots = _Slots(config.max_in_flight)
        self.round_trip: Optional[float] = None  # the link's, once _PROBES answers have come
        self._round_trips: list[float] = []
        self._bulk: Optional[bool] = None  # whether get-history-bulk may be used: see metric_history_pages
        self._bulk_probe = asyncio.Lock()
        self._offsets: Optional[bool] = None  # whether page tokens are offset_token's
        self.requests = 0  # attempts sent, retries included
        self.retried = 0

    async def __aenter__(self) -> "MlflowApi":
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.aclose()

    # -- transport -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests in flight at most: max_in_flight, more once the link's round trip is known
        (`in_flight_for`)."""
        return self._slots.limit

    async def request(self, method: str, path: str, *, json: Any = None, content: Any = None,
                      params: Optional[dict] = None, retry: bool = True,
                      headers: Optional[dict] = None, bulk: bool = False) -> httpx.Response:
        """Send one request within the in-flight limit, retrying transient failures with backoff.
        `content` may be a function giving a fresh body (an iterator) for each attempt. `bulk`: a
        metric batch, which waits behind every other request (`_Slots`)."""
        async def attempt() -> httpx.Response:
            body = content() if callable(content) else content
            return await self._http.request(method, path, json=json, content=body, params=params,
                                            headers=headers)
        return await self._retrying(f"{method} {path}", attempt, retry, bulk)

    async def _retrying(self, what: str, attempt, retry: bool = True, bulk: bool = False) -> httpx.Response:
        """Run `attempt` until it gives a non-error answer. Raises ServerError for an error answer,
        RetryableError when retries ran out, and ConnectionFailed when the server cannot be reached
        at all or refuses our credentials."""
        tries = 0
        while True:
            try:
                async with self._slots.slot(bulk):
                    self.requests += 1
                    sent = time.monotonic()
                    resp = await attempt()
                    if self.config.observe:
                        self.config.observe(time.monotonic() - sent)
                    if self.round_trip is None and resp.status_code < 500:
                        self._measured(time.monotonic() - sent)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if not retry or tries >= self.config.retries:
                    raise ConnectionFailed(f"cannot reach the tracking server at {self.url} "
                                           f"({type(exc).__name__}); is it running, and is the URL "
                                           "right?") from None
            except httpx.TransportError as exc:  # dropped connection, read timeout, reset
                if not retry or tries >= self.config.retries:
                    raise RetryableError(f"{what} failed: {type(exc).__name__}", url=self.url) from None
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code in (401, 403):
                    raise ConnectionFailed(
                        f"the tracking server at {self.url} refused our credentials (HTTP "
                        f"{resp.status_code}); set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME "
                        "and MLFLOW_TRACKING_PASSWORD")
                transient = resp.status_code in _RETRY_STATUS or _out_of_connections(resp)
                if not transient or not retry or tries >= self.config.retries:
                    raise self._error(resp, retryable=transient)
            tries += 1
            self.retried += 1
            await asyncio.sleep(self.backoff(tries))

    def _measured(self, seconds: float) -> None:
        """One answer's round trip; after _PROBES of them, the in-flight limit for the link."""
        self._round_trips.append(seconds)
        if len(self._round_trips) >= _PROBES:
            self.round_trip = min(self._round_trips)
            self._slots.grow(in_flight_for(self.config, self.round_trip))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1, 2, ...): doubling up to a cap, with
        jitter, so that requests that failed together do not all come back together."""
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)

    def _error(self, resp: httpx.Response, retryable: bool = False) -> ServerError:
        try:
            body = resp.json()
            code, message = body.get("error_code"), body.get("message", resp.text)
        except ValueError:
            code, message = None, resp.text[:500] or resp.reason_phrase
        cls = RetryableError if retryable else ServerError
        return cls(message, status=resp.status_code, error_code=code,
                   url=f"{self.url}{resp.request.url.path}")

    async def get_body(self, path: str, params: dict, retry: bool = True) -> bytes:
        """The body of a GET, read as a stream so that no Response holds it. httpx's Response and
        its stream refer to each other, so a Response that kept its content (as `request` does)
        is freed only by a full run of the cyclic garbage collector, which a long read of large
        answers (3 MB history pages) rarely triggers: export kept every page and grew 2.5 MB per
        page read."""
        body: list[bytes] = []

        async def attempt() -> httpx.Response:
            async with self._http.stream("GET", path, params=params) as resp:
                if resp.status_code >= 400:
                    await resp.aread()  # for the error message
                    return resp
                body[:] = [b"".join([chunk async for chunk in resp.aiter_bytes()])]
            return resp

        await self._retrying(f"GET {path}", attempt, retry)
        return body[0]

    async def call(self, endpoint: str, body: Optional[dict] = None, *, get: bool = False,
                   **kwargs) -> dict:
        if get:
            resp = await self.request("GET", API + endpoint, params=body, **kwargs)
        else:
            resp = await self.request("POST", API + endpoint, json=body or {}, **kwargs)
        return resp.json() if resp.content else {}

    async def paged(self, endpoint: str, body: dict, field: str, *, get: bool = False) -> AsyncIterator[dict]:
        """Every item of the list `field` of a search or list endpoint, page after page."""
        token = None
        while True:
            page = await self.call(endpoint, {**body, "page_token": token} if token else body, get=get)
            for item in page.get(field, []):
                yield item
            token = page.get("next_page_token")
            if not token:
                return

    # -- endpoints -----------------------------------------------------------------------------

    async def health(self) -> None:
        await self.request("GET", "/health")

    async def experiment_by_name(self, name: str) -> Optional[dict]:
        """The experiment named `name`, active or deleted; None when there is none."""
        try:
            return (await self.call("experiments/get-by-name", {"experiment_name": name}, get=True))["experiment"]
        except ServerError as e:
            if e.error_code in NOT_FOUND:
                return None
            raise

    async def get_or_create_experiment(self, name: str, tags: dict[str, str],
                                       found: Any = _NOT_ASKED) -> tuple[str, bool]:
        """(experiment id, created). Safe when two importers race: the loser reads the winner's.
        `found`: experiment_by_name's answer, when the caller has just asked it. Not asked, the
        lookup and the create go together: one round trip, not two, for a new experiment on a far
        server. For a name that exists the create is refused (some stores take an id from their
        sequence all the same), so a caller that expects the experiment asks first."""
        if found is _NOT_ASKED:
            found, made = await asyncio.gather(self.experiment_by_name(name),
                                               self._create_experiment(name, tags),
                                               return_exceptions=True)
            if isinstance(made, str):
                return made, True
            if isinstance(found, BaseException):
                raise found
            if found is None and isinstance(made, BaseException):
                raise made  # a refusal says nothing when the lookup found it: this user may not create
        elif found is None:
            made = await self._create_experiment(name, tags)
            if made is not None:
                return made, True
        if found is None:  # made by another importer since the lookup
            found = await self.experiment_by_name(name)
            if found is None:
                raise ServerError(f"experiment {name!r} exists and cannot be read", url=self.url)
        if found.get("lifecycle_stage") == "deleted":
            raise ServerError(f"experiment {name!r} is deleted on the server; restore it or "
                              "choose another name", url=self.url)
        return found["experiment_id"], False

    async def _create_experiment(self, name: str, tags: dict[str, str]) -> Optional[str]:
        """The new experiment's id; None when one of that name exists (active or deleted)."""
        body = {"name": name, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        try:
            return (await self.call("experiments/create", body))["experiment_id"]
        except ServerError as e:
            if e.error_code in ALREADY_EXISTS:
                return None
            raise

    async def get_run(self, run_id: str) -> Optional[dict]:
        try:
            return (await self.call("runs/get", {"run_id": run_id}, get=True))["run"]
        except ServerError as e:
            if e.error_code in NOT_FOUND:
                return None
            raise

    async def search_runs(self, experiment_ids: list[str], filter_string: str = "",
                          include_deleted: bool = False) -> AsyncIterator[dict]:
        body = {"experiment_ids": experiment_ids, "filter": filter_string, "max_results": 1000,
                "run_view_type": "ALL" if include_deleted else "ACTIVE_ONLY"}
        async for run in self.paged("runs/search", body, "runs"):
            yield run

    async def create_once(self, endpoint: str, body: dict, field: str, find) -> dict:
        """A create that must not happen twice (a run, a model version): a failed attempt may have
        made the object and lost the answer, so before each new attempt `find()` looks for it
        and returns it if it is there. Returns the object (`field` of the answer)."""
        failure: Optional[Exception] = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff(attempt))
                found = await find()
                if found is not None:
                    return found
            try:
                return (await self.call(endpoint, body, retry=False))[field]
            except ServerError as e:
                if e.status is not None and e.status < 500 and e.status != 429:
                    raise  # the server refused this request: trying again cannot help
                failure = e
            except (ConnectionFailed, RetryableError) as e:  # dropped connection, timeout
                failure = e
        raise failure

    async def log_batch(self, body: bytes | dict) -> None:
        """`body` is either a dict or JSON bytes already built (the metric hot path)."""
        if isinstance(body, dict):
            await self.call("runs/log-batch", body)
        else:
            await self.request("POST", API + "runs/log-batch", content=body,
                               headers={"Content-Type": "application/json"}, bulk=True)

    async def update_run(self, run_id: str, status: str, end_time: Optional[int]) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        await self.call("runs/update", body)

    async def metric_history(self, run_id: str, key: str) -> list[dict]:
        return [m async for page in self.metric_history_pages(run_id, key) for m in page]

    async def metric_history_pages(self, run_id: str, key: str) -> AsyncIterator[list[dict]]:
        """A metric's history page by page, so a long one is never held as JSON objects whole.

        The first page comes from get-history-bulk where the server has it (see `_first_page`):
        the same points in the same order, at about 1.3x the points per second of get-history,
        which builds protobuf messages and pretty-prints them where get-history-bulk dumps dicts.
        Most histories are one page, so that is most of a read."""
        # A page is handed over by `pop`, so that this generator holds no reference to it while
        # the caller works on it (or waits with it: 25,000 points as dicts are about 11 MB).
        token = None
        first = await self._first_page(run_id, key)  # the get-history-bulk answer, or None
        if first is not None:
            if len(first["metrics"]) == HISTORY_PAGE:
                token = offset_token(HISTORY_PAGE)
            yield first.pop("metrics")
            if token is None:
                return
        while True:
            params = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE}
            if token:
                params["page_token"] = token
            page = _loads(await self.get_body(API + "metrics/get-history", params))
            token = page.get("next_page_token")
            yield page.pop("metrics", [])
            if not token:
                return

    async def _first_page(self, run_id: str, key: str) -> Optional[dict]:
        """The first page of a history from get-history-bulk (MLflow's web UI endpoint), as the
        server answered ({"metrics": [...]}), or None where get-history must be read instead. The
        first call finds out whether the server has that endpoint (MLflow 1.x, or a proxy that
        passes only /api/, has not); the others wait for it. It has no paging and cuts its answer
        at max_results, so a full page is used only if get-history's page tokens are offsets as
        `offset_token` writes them (checked by the first call too, against a token of the
        server's own): the rest is then read from there."""
        if self._bulk is None:
            async with self._bulk_probe:
                if self._bulk is None:
                    # A point or two: the others wait for these answers, not for whole pages.
                    try:
                        probe = await self._bulk_page(run_id, key, retry=False, max_results=2)
                        self._bulk = True
                    except (ImporterError, ValueError):  # absent, refused, or not its JSON
                        self._bulk = False
                    # The token check now, before the pages: asked behind them, it held every
                    # long history's second page back. It needs a history of two points or more.
                    if self._bulk and len(probe["metrics"]) == 2:
                        self._offsets = await self._offsets_as_written(run_id, key)
        if not self._bulk:
            return None
        doc = await self._bulk_page(run_id, key)
        if len(doc["metrics"]) == HISTORY_PAGE:
            async with self._bulk_probe:  # once, however many full pages arrive at once
                if self._offsets is None:
                    self._offsets = await self._offsets_as_written(run_id, key)
            if not self._offsets:
                self._bulk = False  # the whole history from get-history, this one included
                return None
        return doc if doc["metrics"] else None  # empty for a metric the run lists: ask get-history

    async def _bulk_page(self, run_id: str, key: str, retry: bool = True, max_results: Optional[int] = None) -> dict:
        params = {"run_id": run_id, "metric_key": key, "max_results": max_results or HISTORY_PAGE}
        doc = _loads(await self.get_body(UI_API + "metrics/get-history-bulk", params, retry))
        if not isinstance(doc, dict) or not isinstance(doc.setdefault("metrics", []), list):
            raise ValueError("not a get-history-bulk answer")
        return doc

    async def _offsets_as_written(self, run_id: str, key: str) -> bool:
        """Whether the server's get-history page token after one point is `offset_token(1)`
        (MLflow says its token format may change; then the bulk endpoint is not used)."""
        page = _loads(await self.get_body(API + "metrics/get-history",
                                          {"run_id": run_id, "metric_key": key, "max_results": 1}))
        return page.get("next_page_token") == offset_token(1)

    async def experiments(self, include_deleted: bool = False) -> AsyncIterator[dict]:
        body = {"max_results": 1000, "view_type": "ALL" if include_deleted else "ACTIVE_ONLY"}
        async for exp in self.paged("experiments/search", body, "experiments"):
            yield exp

    async def search_logged_models(self, experiment_id: str) -> AsyncIterator[dict]:
        """An experiment's (active) MLflow 3 logged models. An MLflow 2 server has none (nor the
        endpoint)."""
        body = {"experiment_ids": [experiment_id], "max_results": 100}  # the server's usual page
        try:
            async for m in self.paged("logged-models/search", body, "models"):
                yield m
        except ServerError as e:
            if e.status != 404:
                raise

    async def model_versions(self, name: str) -> list[dict]:
        """A registered model's versions (deleted ones are not listed)."""
        body = {"filter": "name='{}'".format(name.replace("'", "\\'")), "max_results": 10000}
        return [v async for v in self.paged("model-versions/search", body, "model_versions", get=True)]

    async def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        await self.call("experiments/set-experiment-tag",
                        {"experiment_id": experiment_id, "key": key, "value": value})

    async def delete_run(self, run_id: str) -> None:
        await self.call("runs/delete", {"run_id": run_id})

    async def delete_tag(self, run_id: str, key: str) -> None:
        await self.call("runs/delete-tag", {"run_id": run_id, "key": key})

    async def restore_run(self, run_id: str) -> None:
        await self.call("runs/restore", {"run_id": run_id})

    async def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        for attempt in range(3):
            try:
                return await self.call("runs/log-inputs", {"run_id": run_id, "datasets": datasets})
            except ServerError as e:
                # Two runs logging the same new dataset at once: the server's get-or-create of the
                # experiment's dataset row races and the loser gets a unique-constraint error
                # (a 400); once the row exists the same call succeeds.
                if attempt == 2 or e.status != 400 or not any(
                        s in str(e) for s in ("UNIQUE constraint", "IntegrityError", "Duplicate entry",
                                              "duplicate key")):
                    raise

    async def list_artifacts(self, run_id: str, path: str = "") -> AsyncIterator[dict]:
        """Every file (not folder) under `path` of a run's artifacts, recursively:
        {"path": "a/b.txt", "file_size": 12}."""
        folders = [path]
        while folders:
            folder = folders.pop()
            params = {"run_id": run_id, **({"path": folder} if folder else {})}
            async for f in self.paged("artifacts/list", params, "files", get=True):
                if f.get("is_dir"):
                    folders.append(f["path"])
                else:
                    yield {"path": f["path"], "file_size": int(f.get("file_size") or 0)}

    # -- artifacts through the server's proxy ---------------------------------------------------

    @staticmethod
    def artifact_path(artifact_uri: str, rel: str) -> str:
        """`mlflow-artifacts:/1/<run>/artifacts` + `a/b.txt` -> the proxy's URL path."""
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise ServerError(
                f"the run's artifact location is {artifact_uri!r}; importer uploads only through the "
                "server's artifact proxy (start the server with --serve-artifacts, the default)")
        root = urlsplit(artifact_uri).path.lstrip("/")  # also the mlflow-artifacts://host/ form
        return ARTIFACTS + quote(f"{root}/{rel}")

    async def list_artifact_tree(self, artifact_uri: str) -> AsyncIterator[dict]:
        """Every file under an `mlflow-artifacts:` location (a logged model's), recursively, through
        the proxy's listing: {"path": "a/b.txt", "file_size": 12}, paths relative to the location."""
        self.artifact_path(artifact_uri, "")  # the same check and message as for uploads
        root = urlsplit(artifact_uri).path.strip("/")
        folders = [""]
        while folders:
            folder = folders.pop()
            where = f"{root}/{folder}".rstrip("/")
            page = (await self.request("GET", ARTIFACTS.rstrip("/"), params={"path": where})).json()
            for f in page.get("files", []):
                path = f"{folder}/{f['path']}" if folder else f["path"]
                if f.get("is_dir"):
                    folders.append(path)
                else:
                    yield {"path": path, "file_size": int(f.get("file_size") or 0)}

    async def upload(self, url_path: str, file_chunks) -> None:
        """PUT a file; `file_chunks` is a function returning a fresh chunk iterator (for retries)."""
        await self.request("PUT", url_path, content=file_chunks)

    async def download(self, url_path: str) -> AsyncIterator[bytes]:
        """A stored artifact's bytes, streamed (no retry: a failure mid-way surfaces to the caller,
        which starts over)."""
        async with self._slots.slot():
            async with self._http.stream("GET", url_path) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise self._error(resp)
                async for chunk in resp.aiter_bytes(1 << 20):
                    yield chunk

    async def download_digest(self, url_path: str) -> tuple[str, int]:
        """(SHA-256 hex digest, size) of a stored artifact, streamed."""
        result: list = []

        async def attempt() -> httpx.Response:
            digest, size = hashlib.sha256(), 0
            async with self._http.stream("GET", url_path) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    return resp
                async for chunk in resp.aiter_bytes(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            result[:] = [digest.hexdigest(), size]
            return resp

        await self._retrying(f"GET {url_path}", attempt)
        return result[0], result[1]
